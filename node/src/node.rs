//! A running member: opens storage, starts Raft and its RPC listener, bootstraps or joins, and
//! hands leadership over on shutdown.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use openraft::{Config, ServerState, SnapshotPolicy};

use crate::auth::CredentialStore;
use crate::config::NodeConfig;
use crate::metrics::Metrics;
use crate::raft::health::SnapshotControl;
use crate::raft::{log_store::LogStore, network::NetworkFactory, rpc, state_machine::StateMachine};
use crate::sqlite::reader::ReadPool;
use crate::{MemberInfo, NodeId, Raft};

pub struct Node {
    pub id: NodeId,
    pub info: MemberInfo,
    pub raft: Arc<Raft>,
    pub reads: ReadPool,
    pub metrics: Arc<Metrics>,
    pub config: NodeConfig,
    pub auth: Option<Arc<CredentialStore>>,
    /// Client for calls to other members (forwarding, joins, /nodes).
    pub client: reqwest::Client,
    pub started: SystemTime,
    pub started_at: Instant,
    pub db_path: PathBuf,
    /// Milliseconds since `started_at` when the leader last reached us (any Raft RPC).
    pub leader_contact_ms: Arc<AtomicU64>,
    /// Backups to object storage (`--backup-config`).
    pub backup: Option<Arc<crate::backup::Manager>>,
    /// Snapshot health and requests for full snapshots.
    pub snapshots: Arc<SnapshotControl>,
    /// Serialises membership changes made through this member: Raft allows one at a time, and
    /// members joining together would otherwise see each other's change refused.
    pub membership_lock: tokio::sync::Mutex<()>,
    /// Mutual TLS on the Raft port, when configured.
    pub raft_tls: Option<crate::raft::tls::RaftTls>,
    /// Writes hold it shared; a leadership hand-over holds it exclusively so that the target
    /// can catch up with a log that has stopped growing.
    write_gate: Arc<tokio::sync::RwLock<()>>,
    /// Coalesces statement requests into batch entries.
    pub proposer: crate::raft::propose::Proposer,
    /// Shares one leadership check among the linearizable reads waiting for it.
    pub leadership: Arc<crate::raft::leadership::LeaderCheck>,
    /// Decides when this member calls an election; a hand-over pauses it.
    prevote: Arc<crate::raft::prevote::PreVote>,
}

impl Node {
    pub async fn start(config: NodeConfig) -> anyhow::Result<Arc<Self>> {
        let name = config.node_id.clone();
        let id = crate::raft_id_from_name(&name).with_context(|| {
            format!("--node-id {name:?} must be a positive integer or a name ending in -<ordinal>")
        })?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
        let info = MemberInfo {
            name,
            raft_addr: config.raft_advertise(),
            api_addr: config.api_url(),
        };
        let auth = match &config.auth {
            Some(p) => Some(Arc::new(CredentialStore::load(p)?)),
            None => None,
        };
        let metrics = Arc::new(Metrics::default());
        let db_path = config.data_dir.join("db.sqlite");
        let reads = ReadPool::new(db_path.clone(), 8);
        let log = LogStore::open(&config.data_dir.join("raft.db"), metrics.clone())
            .context("opening the raft log")?;
        let log_view = log.clone();
        let snapshots = Arc::new(SnapshotControl::default());
        let sm = StateMachine::open(
            &db_path,
            config.data_dir.join("snapshots"),
            reads.clone(),
            metrics.clone(),
            snapshots.clone(),
            config.checkpoint_starve_limit,
        )
        .context("opening the database")?;

        let election = config.election_timeout.as_millis() as u64;
        let raft_config = Config {
            cluster_name: "litecluster".into(),
            // Elections are called by pre-vote (raft/prevote.rs), not by openraft's timer.
            enable_elect: false,
            heartbeat_interval: config.heartbeat_interval.as_millis() as u64,
            election_timeout_min: election,
            // Also openraft's leader lease, which pre-vote waits out: kept close to the minimum
            // so a lost leader is replaced quickly.
            election_timeout_max: election * 3 / 2,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_threshold),
            max_in_snapshot_log_to_keep: config.snapshot_trailing_logs,
            install_snapshot_timeout: 30_000,
            // Like AppendEntries: each chunk must arrive and be written well within a heartbeat.
            snapshot_max_chunk_size: 1 << 20,
            max_payload_entries: 512,
            ..Config::default()
        }
        .validate()
        .context(
            "invalid raft timing flags (the election timeout must exceed the heartbeat interval)",
        )?;

        let raft_tls = match (&config.raft_cert, &config.raft_key, &config.raft_ca_cert) {
            (Some(cert), Some(key), Some(ca)) => {
                Some(crate::raft::tls::RaftTls::load(cert, key, ca).context(
                    "loading the Raft TLS files (--raft-cert, --raft-key, --raft-ca-cert)",
                )?)
            }
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(&config.raft_addr)
            .await
            .with_context(|| format!("binding raft address {}", config.raft_addr))?;
        let raft = Arc::new(
            Raft::new(
                id,
                Arc::new(raft_config),
                NetworkFactory::new(raft_tls.clone()),
                log,
                sm,
            )
            .await
            .context("starting raft")?,
        );
        let started_at = Instant::now();
        let leader_contact_ms = Arc::new(AtomicU64::new(0));
        let prevote = crate::raft::prevote::PreVote::new(
            id,
            raft.clone(),
            log_view,
            leader_contact_ms.clone(),
            started_at,
            Duration::from_millis(election * 3 / 2),
            raft_tls.clone(),
        );
        tokio::spawn(rpc::serve(
            listener,
            raft_tls.clone(),
            raft.clone(),
            started_at,
            leader_contact_ms.clone(),
            prevote.clone(),
        ));
        tokio::spawn(prevote.clone().run());

        let backup =
            crate::backup::Manager::for_node(&config).context("loading --backup-config")?;
        let client = http_client(&config)?;
        let write_gate = Arc::new(tokio::sync::RwLock::new(()));
        let proposer = crate::raft::propose::Proposer::start(raft.clone(), write_gate.clone());
        let leadership = crate::raft::leadership::LeaderCheck::new(raft.clone());
        let node = Arc::new(Self {
            id,
            info,
            raft,
            reads,
            metrics,
            config,
            auth,
            client,
            started: SystemTime::now(),
            started_at,
            db_path,
            leader_contact_ms,
            backup,
            snapshots,
            membership_lock: tokio::sync::Mutex::new(()),
            raft_tls,
            write_gate,
            proposer,
            leadership,
            prevote,
        });
        let mut wal_path = node.db_path.clone().into_os_string();
        wal_path.push("-wal");
        tokio::spawn(crate::raft::scheduler::run(
            node.raft.clone(),
            node.snapshots.clone(),
            crate::raft::scheduler::Policy {
                wal_path: wal_path.into(),
                wal_size: node.config.snapshot_wal_size,
                interval: node.config.snapshot_interval,
            },
        ));
        crate::backup::restore::at_start(crate::backup::restore::Member {
            raft: &node.raft,
            writes: &node.proposer,
            id: node.id,
            info: &node.info,
            config: &node.config,
        })
        .await?;
        node.bootstrap_or_join().await?;
        if let Some(m) = node.backup.clone() {
            crate::backup::auto::spawn(m, &node.raft, node.db_path.clone(), node.info.name.clone());
        }
        Ok(node)
    }

    async fn bootstrap_or_join(self: &Arc<Self>) -> anyhow::Result<()> {
        let initialized = self.raft.is_initialized().await?;
        if initialized {
            tracing::info!(id = self.id, "resuming with existing state");
        } else if self.config.bootstrap {
            let members = BTreeMap::from([(self.id, self.info.clone())]);
            self.raft
                .initialize(members)
                .await
                .context("bootstrapping a new cluster")?;
            tracing::info!(id = self.id, "bootstrapped a new single-member cluster");
        }
        if !self.config.join.is_empty() && !self.has_role(!self.config.non_voter) {
            let node = self.clone();
            tokio::spawn(async move { node.join_loop().await });
        } else if !initialized && !self.config.bootstrap {
            tracing::warn!(
                "data dir is empty and neither --bootstrap nor --join was given: waiting to be added by a leader"
            );
        }
        Ok(())
    }

    /// Whether our membership view has us as a voter (`voter`) or at least a member.
    fn has_role(&self, voter: bool) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        let ms = m.membership_config.membership();
        if voter {
            ms.voter_ids().any(|v| v == self.id)
        } else {
            ms.get_node(&self.id).is_some()
        }
    }

    /// Asks the given members to add us until one of them (or the leader it forwards to) does.
    async fn join_loop(&self) {
        let body = serde_json::json!({
            "id": self.info.name,
            "raft_addr": self.info.raft_addr,
            "api_addr": self.info.api_addr,
            "voter": !self.config.non_voter,
        });
        let mut attempt = 0u32;
        loop {
            for base in &self.config.join {
                let url = format!("{}/join", base.trim_end_matches('/'));
                let mut req = self
                    .client
                    .post(&url)
                    .json(&body)
                    .timeout(Duration::from_secs(60));
                if let Some(h) = self.join_credentials() {
                    req = req.header(reqwest::header::AUTHORIZATION, h);
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        tracing::info!(via = %url, voter = !self.config.non_voter, "joined the cluster");
                        return;
                    }
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        tracing::warn!(via = %url, %status, body = %text.trim(), attempt, "join refused; retrying");
                    }
                    Err(e) => {
                        tracing::warn!(via = %url, error = %e, attempt, "join target unreachable; retrying")
                    }
                }
            }
            // A leader busy with another change may refuse us after adding us as a learner:
            // keep asking until we hold the role we asked for.
            if self.has_role(!self.config.non_voter) {
                tracing::info!("added to the cluster by the leader");
                return;
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt.min(4)))).await;
        }
    }

    /// Basic-auth header for joining, from `LITECLUSTER_JOIN_USER`/`LITECLUSTER_JOIN_PASSWORD`.
    fn join_credentials(&self) -> Option<String> {
        use base64::Engine;
        let user = std::env::var("LITECLUSTER_JOIN_USER").ok()?;
        let pass = std::env::var("LITECLUSTER_JOIN_PASSWORD").unwrap_or_default();
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        ))
    }

    /// Proposes `cmd` to Raft, waiting while a leadership hand-over holds writes back (they
    /// then find a follower and are forwarded to the new leader).
    pub async fn write(
        &self,
        cmd: crate::command::Command,
    ) -> Result<
        openraft::raft::ClientWriteResponse<crate::TypeConfig>,
        openraft::error::RaftError<NodeId, openraft::error::ClientWriteError<NodeId, MemberInfo>>,
    > {
        self.proposer.write(cmd).await
    }

    /// The leader once one is known, waiting at most `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<(NodeId, MemberInfo)> {
        let mut rx = self.raft.metrics();
        tokio::time::timeout(timeout, async {
            loop {
                if let Some(l) = self.leader() {
                    return Some(l);
                }
                rx.changed().await.ok()?;
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// The current leader, if known, with its address.
    pub fn leader(&self) -> Option<(NodeId, MemberInfo)> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let id = m.current_leader?;
        let info = m.membership_config.membership().get_node(&id)?.clone();
        Some((id, info))
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    /// On a leader of several voters that has not heard from a quorum for longer than the
    /// leader lease (it is cut off and a new leader is probably being elected), how long.
    pub fn quorum_silence(&self) -> Option<Duration> {
        let m = self.raft.metrics();
        let m = m.borrow();
        if m.state != ServerState::Leader
            || m.membership_config.membership().voter_ids().count() < 2
        {
            return None;
        }
        let lease = self.config.election_timeout * 3 / 2;
        m.millis_since_quorum_ack
            .map(Duration::from_millis)
            .filter(|d| *d > lease)
    }

    /// Time since the leader last reached this member; zero on the leader itself.
    pub fn since_leader_contact(&self) -> Option<Duration> {
        if self.is_leader() {
            return Some(Duration::ZERO);
        }
        let ms = self.leader_contact_ms.load(Ordering::Relaxed);
        (ms > 0).then(|| {
            self.started_at
                .elapsed()
                .saturating_sub(Duration::from_millis(ms))
        })
    }

    pub fn unix_now() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    /// Hands leadership to the most caught-up voter: once it holds our whole log it is asked
    /// to start an election, and we wait until someone else leads.
    ///
    /// The other voters refuse votes while their leader lease from us holds, so the target's
    /// first campaign may fail; it only makes us step down. Our own elections stay off until
    /// leadership has moved, or we could win the next term back.
    pub async fn transfer_leadership(&self, timeout: Duration) -> anyhow::Result<NodeId> {
        self.prevote.pause(true);
        let res = self.hand_over(timeout).await;
        self.prevote.pause(false);
        res
    }

    async fn hand_over(&self, timeout: Duration) -> anyhow::Result<NodeId> {
        // A `timeout` flag may be up to Go's 292 years: saturate rather than overflow.
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        let (target, info) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            if m.state != ServerState::Leader {
                bail!("this member is not the leader");
            }
            let membership = m.membership_config.membership();
            let matched = m.replication.clone().unwrap_or_default();
            let best = membership
                .voter_ids()
                .filter(|v| *v != self.id)
                .max_by_key(|v| matched.get(v).copied().flatten().map(|l| l.index));
            let Some(best) = best else {
                bail!("no other voter to hand leadership to")
            };
            let info = membership
                .get_node(&best)
                .cloned()
                .context("voter without address")?;
            (best, info)
        };
        // Hold new writes back: if our log kept growing, entries only we hold would make every
        // other member lose its election to the log check, and we are not campaigning.
        let _paused = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            self.write_gate.write(),
        )
        .await
        .context("writes in flight did not finish before the hand-over deadline")?;
        let mut rx = self.raft.metrics();
        let ours = rx.borrow().last_log_index;
        let _ = self.raft.trigger().heartbeat().await;
        let caught_up =
            tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), async {
                loop {
                    {
                        let m = rx.borrow_and_update();
                        let theirs = m
                            .replication
                            .as_ref()
                            .and_then(|r| r.get(&target).copied().flatten())
                            .map(|l| l.index);
                        if m.state != ServerState::Leader || theirs >= ours {
                            return;
                        }
                    }
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            })
            .await;
        if caught_up.is_err() {
            bail!("hand-over target {target} did not catch up within {timeout:?}");
        }
        // Ask once: every request starts a new term. Retry only while it cannot be reached.
        while let Err(e) = crate::raft::network::request_election(
            &info.raft_addr,
            self.raft_tls.clone(),
            Duration::from_secs(2),
        )
        .await
        {
            if Instant::now() >= deadline {
                bail!("hand-over target {target} unreachable: {e}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let moved =
            tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), async {
                loop {
                    {
                        let m = rx.borrow_and_update();
                        if m.state != ServerState::Leader
                            && m.current_leader.is_some_and(|l| l != self.id)
                        {
                            return m.current_leader;
                        }
                    }
                    if rx.changed().await.is_err() {
                        return None;
                    }
                }
            })
            .await;
        if let Ok(Some(new_leader)) = moved {
            return Ok(new_leader);
        }
        bail!("leadership did not move within {timeout:?}")
    }

    /// Stops serving: a leader first hands leadership over so writes pause only briefly.
    pub async fn shutdown(&self) {
        if self.is_leader()
            && self
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .voter_ids()
                .count()
                > 1
        {
            match self.transfer_leadership(self.config.shutdown_timeout).await {
                Ok(to) => tracing::info!(new_leader = to, "leadership handed over before shutdown"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not hand leadership over; shutting down anyway")
                }
            }
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }
}

fn http_client(config: &NodeConfig) -> anyhow::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(64)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = &config.http_ca_cert {
        let pem =
            std::fs::read(ca).with_context(|| format!("reading CA bundle {}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).context("parsing CA bundle")? {
            b = b.add_root_certificate(cert);
        }
    }
    if config.http_insecure {
        b = b.danger_accept_invalid_certs(true);
    }
    b.build().context("building the HTTP client")
}
