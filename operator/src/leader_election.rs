//! Leader election with a coordination.k8s.io Lease, so several operator replicas can run and
//! only the holder reconciles.
//!
//! Safety rests on two rules, as in client-go's leaderelection:
//! - A candidate never compares the Lease's `renewTime` with its own clock (the clocks of two
//!   machines may disagree). It notes, by its own monotonic clock, when it first saw the
//!   current record, and takes over only once a whole lease duration has passed since then
//!   without a change.
//! - The holder stops acting once it has gone `renew_deadline` (shorter than the lease) without
//!   a successful renewal, counted from the moment it *sent* the last one that succeeded. Any
//!   candidate saw that renewal later than it was sent, so it waits at least until
//!   `sent + lease`, and the margin `lease - renew_deadline` covers clock-rate drift and a
//!   reconcile that is finishing.
//!
//! Writes use the Lease's resourceVersion, so two candidates can never both win a race.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::Result;

/// How long a Lease lasts, how soon the holder gives up on renewing it, and how often it tries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timing {
    pub lease: Duration,
    pub renew_deadline: Duration,
    pub retry: Duration,
}

impl Timing {
    /// client-go's proportions (15 s lease, 10 s renew deadline, 2 s retry) for any lease.
    pub fn for_lease(lease: Duration) -> Self {
        Self {
            lease,
            renew_deadline: lease * 2 / 3,
            retry: (lease * 2 / 15).max(Duration::from_millis(200)),
        }
    }
}

pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    holder: String,
    duration: Duration,
    /// The other holder's record as last seen, and when we first saw it (our clock).
    observed: Mutex<Option<(Observed, Instant)>>,
}

/// What identifies one renewal of a Lease held by someone else.
#[derive(Clone, Debug, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    duration: Option<i32>,
}

impl LeaseLock {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        holder: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            holder: holder.into(),
            duration,
            observed: Mutex::new(None),
        }
    }

    /// Take the lease if free or expired, renew it if ours. `Ok(true)` when we hold it now.
    pub async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = Timestamp::now();
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, now)),
            };
            return self
                .write(self.api.create(&PostParams::default(), &lease).await)
                .map(|_| true);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(&self.holder);
        if !ours && !self.expired_for_us(&spec, Instant::now()) {
            return Ok(false);
        }
        let mut next = lease.clone();
        next.spec = Some(self.spec(Some(&spec), now));
        self.write(
            self.api
                .replace(&self.name, &PostParams::default(), &next)
                .await,
        )
    }

    fn spec(&self, old: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let ours = old.is_some_and(|o| o.holder_identity.as_deref() == Some(&self.holder));
        let transitions = old.and_then(|o| o.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
            acquire_time: if ours {
                old.and_then(|o| o.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if ours || old.is_none() {
                transitions
            } else {
                transitions + 1
            }),
            ..Default::default()
        }
    }

    /// A conflict means someone else wrote first: not an error, just not ours.
    fn write<T>(&self, res: kube::Result<T>) -> Result<bool> {
        match res {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Give the lease up on shutdown so a standby takes over without waiting for expiry.
    pub async fn release(&self) -> Result<()> {
        if let Some(mut lease) = self.api.get_opt(&self.name).await?
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(&self.holder)
        {
            spec.holder_identity = None;
            spec.renew_time = None;
            self.write(
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await,
            )?;
        }
        Ok(())
    }
}

impl LeaseLock {
    /// Whether someone else's Lease may be taken: it is released (no holder or no renewal), or
    /// its record has not changed for a whole lease duration by our own clock.
    fn expired_for_us(&self, spec: &LeaseSpec, now: Instant) -> bool {
        let free =
            spec.holder_identity.as_deref().is_none_or(str::is_empty) || spec.renew_time.is_none();
        let seen = Observed {
            holder: spec.holder_identity.clone(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            duration: spec.lease_duration_seconds,
        };
        let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        let since = match observed.as_ref() {
            Some((last, at)) if *last == seen => *at,
            _ => {
                *observed = Some((seen, now));
                now
            }
        };
        if free {
            return true;
        }
        let secs = spec.lease_duration_seconds.map_or(15, |s| s.max(1) as u64);
        now.duration_since(since) >= Duration::from_secs(secs)
    }
}

/// How an elected run ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    /// Asked to stop; the Lease was released for a standby.
    Stopped,
    /// The Lease was lost (taken, or not renewed within the renew deadline).
    Lost,
}

/// Waits for the Lease, runs `lead` while holding it, and stops it when the Lease is lost or on
/// `stop`. `lead` gets a future that resolves when it must stop acting.
pub async fn run_elected<F, Fut>(
    lock: LeaseLock,
    timing: Timing,
    mut stop: watch::Receiver<bool>,
    lead: F,
) -> Result<Ended>
where
    F: FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut sent = loop {
        let sent = Instant::now();
        match lock.try_acquire_or_renew().await {
            Ok(true) => break sent,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "cannot read the leader Lease"),
        }
        tokio::select! {
            _ = tokio::time::sleep(timing.retry) => {}
            _ = wait_stop(stop.clone()) => return Ok(Ended::Stopped),
        }
    };
    info!(holder = %lock.holder, "acquired the leader Lease; reconciling");
    let (lost_tx, lost_rx) = watch::channel(false);
    let renewer = {
        let stop = stop.clone();
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(timing.retry) => {}
                    _ = wait_stop(stop.clone()) => return lock,
                }
                let attempt = Instant::now();
                let left = (sent + timing.renew_deadline).saturating_duration_since(attempt);
                match tokio::time::timeout(left, lock.try_acquire_or_renew()).await {
                    Ok(Ok(true)) => sent = attempt,
                    Ok(Ok(false)) => {
                        error!("the leader Lease was taken by another replica");
                        let _ = lost_tx.send(true);
                        return lock;
                    }
                    Ok(Err(e)) => warn!(error = %e, "cannot renew the leader Lease"),
                    Err(_) => {}
                }
                if sent.elapsed() >= timing.renew_deadline {
                    error!(
                        deadline = ?timing.renew_deadline,
                        "the leader Lease could not be renewed within the renew deadline; stepping down"
                    );
                    let _ = lost_tx.send(true);
                    return lock;
                }
            }
        }
    };
    let renewer = tokio::spawn(renewer);
    let stop_or_lost = {
        let stop = stop.clone();
        Box::pin(async move {
            tokio::select! {
                _ = wait_stop(stop) => {}
                _ = wait_stop(lost_rx) => {}
            }
        })
    };
    lead(stop_or_lost).await;
    let lock = renewer.await.map_err(crate::Error::LeaseRenewer)?;
    if *stop.borrow_and_update() {
        if let Err(e) = lock.release().await {
            warn!(error = %e, "cannot release the leader Lease");
        }
        return Ok(Ended::Stopped);
    }
    Ok(Ended::Lost)
}

/// Resolves once `rx` holds `true` (or its sender is gone).
pub async fn wait_stop(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock() -> LeaseLock {
        // Never contacted: `expired_for_us` is pure bookkeeping.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = Client::try_from(config).unwrap();
        LeaseLock::new(client, "ns", "lease", "me", Duration::from_secs(15))
    }

    fn held(by: &str, renewed: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(by.into()),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_lease_expires_a_whole_duration_after_we_saw_it_change_whatever_its_clock_says() {
        let lock = lock();
        let t0 = Instant::now();
        // A renewTime an hour in the past (the holder's clock is behind ours) is not expired:
        // we have only just seen this record.
        let old = held(
            "other",
            Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_hours(1),
        );
        assert!(!lock.expired_for_us(&old, t0));
        assert!(!lock.expired_for_us(&old, t0 + Duration::from_secs(14)));
        assert!(lock.expired_for_us(&old, t0 + Duration::from_secs(15)));
        // A renewal restarts the count from when we see it.
        let renewed = held("other", Timestamp::now());
        assert!(!lock.expired_for_us(&renewed, t0 + Duration::from_secs(16)));
        assert!(!lock.expired_for_us(&renewed, t0 + Duration::from_secs(30)));
        assert!(lock.expired_for_us(&renewed, t0 + Duration::from_secs(31)));
    }

    #[tokio::test]
    async fn a_released_lease_is_free_at_once() {
        let lock = lock();
        let released = LeaseSpec {
            lease_duration_seconds: Some(15),
            ..Default::default()
        };
        assert!(lock.expired_for_us(&released, Instant::now()));
        let empty_holder = LeaseSpec {
            holder_identity: Some(String::new()),
            renew_time: Some(MicroTime(Timestamp::now())),
            ..Default::default()
        };
        assert!(lock.expired_for_us(&empty_holder, Instant::now()));
    }

    #[test]
    fn the_renew_deadline_leaves_a_margin_inside_the_lease() {
        let t = Timing::for_lease(Duration::from_secs(15));
        assert_eq!(t.renew_deadline, Duration::from_secs(10));
        assert_eq!(t.retry, Duration::from_secs(2));
        let short = Timing::for_lease(Duration::from_secs(1));
        assert!(short.retry < short.renew_deadline && short.renew_deadline < short.lease);
    }

    type ApiHandle = tower_test::mock::Handle<
        http::Request<kube::client::Body>,
        http::Response<kube::client::Body>,
    >;

    fn mocked() -> (LeaseLock, ApiHandle) {
        let (service, handle) = tower_test::mock::pair();
        let client = Client::new(service, "ns");
        let lock = LeaseLock::new(client, "ns", "lease", "me", Duration::from_secs(15));
        (lock, handle)
    }

    fn reply(status: u16, body: serde_json::Value) -> http::Response<kube::client::Body> {
        http::Response::builder()
            .status(status)
            .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap()
    }

    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/ns/leases/lease";

    /// Answers the first acquisition: no Lease yet, then the create succeeds.
    async fn grant(api: &mut ApiHandle) {
        let (req, send) = api.next_request().await.expect("a GET of the Lease");
        assert_eq!((req.method().as_str(), req.uri().path()), ("GET", LEASE));
        send.send_response(reply(
            404,
            serde_json::json!({"kind":"Status","apiVersion":"v1",
            "status":"Failure","reason":"NotFound","code":404,"message":"not found"}),
        ));
        let (req, send) = api.next_request().await.expect("a create of the Lease");
        assert_eq!(req.method().as_str(), "POST");
        let body = req.into_body().collect_bytes().await.unwrap();
        let mut lease: serde_json::Value = serde_json::from_slice(&body).unwrap();
        lease["metadata"]["resourceVersion"] = "1".into();
        send.send_response(reply(201, lease));
    }

    /// Runs an election whose leader records when it was told to stop.
    fn elect(
        lock: LeaseLock,
        stop: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<(Result<Ended>, Option<Instant>)> {
        tokio::spawn(async move {
            let told = std::sync::Arc::new(Mutex::new(None));
            let t = told.clone();
            let ended = run_elected(
                lock,
                Timing::for_lease(Duration::from_secs(15)),
                stop,
                |stop| async move {
                    stop.await;
                    *t.lock().unwrap() = Some(Instant::now());
                },
            )
            .await;
            let at = *told.lock().unwrap();
            (ended, at)
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_whose_renewals_hang_stops_acting_within_the_renew_deadline() {
        let (lock, mut api) = mocked();
        let (_stop_tx, stop) = watch::channel(false);
        let run = elect(lock, stop);
        grant(&mut api).await;
        let acquired = Instant::now();
        // Every renewal hangs: the API server is cut off but the connection stays open.
        tokio::spawn(async move {
            let mut hung = Vec::new();
            while let Some(r) = api.next_request().await {
                hung.push(r);
            }
        });
        let (ended, told) = run.await.unwrap();
        assert_eq!(ended.unwrap(), Ended::Lost);
        let told = told.expect("the leader was told to stop");
        assert!(
            told.duration_since(acquired) <= Duration::from_secs(10),
            "stopped acting {:?} after the last renewal, past the 10 s renew deadline",
            told.duration_since(acquired)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_holder_steps_down_at_once_when_another_replica_holds_the_lease() {
        let (lock, mut api) = mocked();
        let (_stop_tx, stop) = watch::channel(false);
        let run = elect(lock, stop);
        grant(&mut api).await;
        let (req, send) = api.next_request().await.expect("a renewal");
        assert_eq!((req.method().as_str(), req.uri().path()), ("GET", LEASE));
        send.send_response(reply(
            200,
            serde_json::json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "lease", "namespace": "ns", "resourceVersion": "2"},
                "spec": {"holderIdentity": "other", "leaseDurationSeconds": 15,
                         "renewTime": "2026-01-01T00:00:00.000000Z"}
            }),
        ));
        let (ended, told) = run.await.unwrap();
        assert_eq!(ended.unwrap(), Ended::Lost);
        assert!(told.is_some());
    }
}
