//! Snapshot remediation: a member whose WAL checkpoints keep failing gets a full snapshot, then
//! a restart, then every member a rolling restart; each step only when the one before did not
//! clear the failures within `snapshot.remediationInterval`. Then the operator stops and says so.
//!
//! `decide` is pure. The state (member, step, since, baseline) lives in `status.remediation`,
//! so an operator restart resumes the ladder where it was. One member at a time.
//!
//! Recovery needs evidence: the member reports zero consecutive failures *and* a successful
//! snapshot newer than the one it had when the step was taken. The node keeps its counters in
//! memory, so a restart alone zeroes them; without the second half a restart would always look
//! like a cure and the ladder would never reach its last step.

use std::cmp::Reverse;
use std::fmt;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::events::EventType;
use tracing::{info, warn};

use super::Context;
use super::observe::ObservedCluster;
use crate::Result;
use crate::crd::{RemediationStatus, RemediationStep, SqliteCluster};
use crate::node_client::{NodeApi, SnapshotOutcome};
use crate::resources::{Names, ordinal_of};

/// One reachable member's snapshot health.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Report {
    pub ordinal: u32,
    /// Consecutive incomplete WAL checkpoints.
    pub failures: u64,
    /// `last_success.at` of the member's last *incremental* snapshot: only those end with a
    /// complete checkpoint. A full one proves nothing (it is what a failing member falls back
    /// to, and the first snapshot after a restart), so it must not count as recovery.
    pub last_success: Option<String>,
    /// Its pod is Ready.
    pub ready: bool,
    /// Last failure, for messages: error and checkpoint triple.
    pub last_failure: Option<String>,
}

/// Everything `decide` looks at.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    /// Failures at which remediation starts.
    pub threshold: u64,
    /// Time each step gets to clear the failures.
    pub interval: Duration,
    pub now: Timestamp,
    /// `status.remediation`, with the member as an ordinal.
    pub state: Option<(u32, RemediationStatus)>,
    /// Members that answered `/status` with a snapshot section.
    pub reports: Vec<Report>,
    /// Ordinals that still belong to the cluster (below `replicas`).
    pub members: Vec<u32>,
    /// A rolling restart is under way.
    pub rollout_active: bool,
}

/// The next remediation step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing fails and nothing is being remediated.
    Idle,
    /// Keep the state; nothing to do now.
    Wait(String),
    /// Take `step` for the member now (FullSnapshot, Restart or RollingUpgrade).
    Take { ordinal: u32, step: RemediationStep },
    /// The restart or rolling upgrade is over: the interval starts now.
    Settled,
    /// The member's checkpoints complete again.
    Recovered { ordinal: u32 },
    /// Every step was tried; stop escalating.
    Exhausted { ordinal: u32 },
    /// The member left the cluster; drop the state.
    Forget { ordinal: u32 },
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Idle => write!(f, "snapshots healthy"),
            Decision::Wait(why) => write!(f, "{why}"),
            Decision::Take { ordinal, step } => write!(f, "{step:?} for member {ordinal}"),
            Decision::Settled => write!(f, "step took effect"),
            Decision::Recovered { ordinal } => write!(f, "member {ordinal} recovered"),
            Decision::Exhausted { ordinal } => {
                write!(f, "remediation of member {ordinal} exhausted")
            }
            Decision::Forget { ordinal } => write!(f, "member {ordinal} left the cluster"),
        }
    }
}

/// The step after `step`, or None after the last one.
pub fn next_step(step: RemediationStep) -> Option<RemediationStep> {
    match step {
        RemediationStep::FullSnapshot => Some(RemediationStep::Restart),
        RemediationStep::Restart => Some(RemediationStep::RollingUpgrade),
        RemediationStep::RollingUpgrade | RemediationStep::Exhausted => None,
    }
}

/// Decide the next remediation step.
pub fn decide(input: &Input) -> Decision {
    let Some((ordinal, state)) = &input.state else {
        // Start with the member that fails most (lowest ordinal on a tie).
        return input
            .reports
            .iter()
            .filter(|r| r.failures >= input.threshold)
            .max_by_key(|r| (r.failures, Reverse(r.ordinal)))
            .map_or(Decision::Idle, |r| Decision::Take {
                ordinal: r.ordinal,
                step: RemediationStep::FullSnapshot,
            });
    };
    let ordinal = *ordinal;
    let Some(report) = input.reports.iter().find(|r| r.ordinal == ordinal) else {
        if !input.members.contains(&ordinal) {
            return Decision::Forget { ordinal };
        }
        return Decision::Wait(format!("member {ordinal} does not report yet"));
    };
    if report.failures == 0
        && report.last_success.is_some()
        && report.last_success != state.baseline_success
    {
        return Decision::Recovered { ordinal };
    }
    if state.step == RemediationStep::Exhausted {
        return Decision::Wait(format!(
            "remediation of member {ordinal} exhausted; waiting for its checkpoints to complete"
        ));
    }
    let Some(since) = &state.since else {
        // The disruption of the step is under way; its interval starts when it is over.
        return match state.step {
            RemediationStep::Restart if !report.ready => {
                Decision::Wait(format!("member {ordinal} is restarting"))
            }
            RemediationStep::RollingUpgrade if input.rollout_active => {
                Decision::Wait("rolling upgrade under way".into())
            }
            _ => Decision::Settled,
        };
    };
    let elapsed = input.now.duration_since(since.0).as_secs().max(0) as u64;
    if elapsed < input.interval.as_secs() {
        return Decision::Wait(format!(
            "giving {:?} {}s more to clear member {ordinal}'s failures",
            state.step,
            input.interval.as_secs() - elapsed
        ));
    }
    if report.failures == 0 {
        // Counters reset by a restart, and no snapshot since: no evidence either way.
        return Decision::Wait(format!(
            "no snapshot on member {ordinal} since {:?}; waiting for one to confirm recovery",
            state.step
        ));
    }
    match next_step(state.step) {
        None => Decision::Exhausted { ordinal },
        Some(RemediationStep::RollingUpgrade) if input.rollout_active => {
            Decision::Wait("a rolling restart is under way already".into())
        }
        Some(step) => Decision::Take { ordinal, step },
    }
}

/// The state after taking `step` for the member whose report is `report`. A full snapshot
/// takes effect at once; a restart or rolling upgrade when it is over (`since` unset till then).
pub fn state_for_step(
    member: String,
    step: RemediationStep,
    report: Option<&Report>,
    now: Timestamp,
) -> RemediationStatus {
    RemediationStatus {
        member,
        step,
        since: matches!(
            step,
            RemediationStep::FullSnapshot | RemediationStep::Exhausted
        )
        .then_some(Time(now)),
        failures: report.map_or(0, |r| r.failures),
        baseline_success: report.and_then(|r| r.last_success.clone()),
    }
}

/// The observation reduced to an `Input`.
pub fn observed_input(
    cluster: &SqliteCluster,
    observed: &ObservedCluster,
    rollout_active: bool,
    now: Timestamp,
) -> Input {
    let replicas = cluster.spec.replicas.max(0) as u32;
    let reports = observed
        .pods
        .iter()
        .filter_map(|p| {
            let h = p.status.as_ref().ok()?.store.snapshot.as_ref()?;
            Some(Report {
                ordinal: p.ordinal,
                failures: h.consecutive_failures,
                last_success: h
                    .last_success
                    .as_ref()
                    .filter(|s| s.kind == "incremental")
                    .map(|s| s.at.clone()),
                ready: p.ready,
                last_failure: h.last_failure.as_ref().map(|f| match &f.checkpoint {
                    Some(cp) => format!(
                        "{} (checkpoint busy={} log={} checkpointed={})",
                        f.error, cp.busy, cp.log, cp.checkpointed
                    ),
                    None => f.error.clone(),
                }),
            })
        })
        .collect();
    // Every ordinal the cluster should have, not the pods that exist right now: a member whose
    // pod is being restarted (by this very ladder) has not left.
    let members = (0..replicas).collect();
    let state = cluster
        .status
        .as_ref()
        .and_then(|s| s.remediation.clone())
        .and_then(|r| Some((ordinal_of(cluster, &r.member)?, r)));
    Input {
        threshold: cluster.remediation_threshold(),
        interval: cluster.remediation_interval(),
        now,
        state,
        reports,
        members,
        rollout_active,
    }
}

/// What a remediation pass leaves behind.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub decision: Decision,
    /// New `status.remediation`.
    pub state: Option<RemediationStatus>,
    /// A member the rollout machinery should restart (the Restart step).
    pub restart_request: Option<u32>,
    /// A disruptive or node-side step was taken this pass (at most one per reconcile).
    pub acted: bool,
    /// Bump the `restartedAt` pod annotation to this value (the RollingUpgrade step).
    pub restart_all_at: Option<String>,
}

/// Decide, call the node for a full snapshot when that is the step, and say what changed.
/// The Restart and RollingUpgrade steps are carried out by the caller through the rollout.
pub async fn reconcile_remediation(
    cluster: &SqliteCluster,
    ctx: &Context,
    nodes: &dyn NodeApi,
    observed: &ObservedCluster,
    input: &Input,
) -> Result<Outcome> {
    let decision = decide(input);
    let old = input.state.as_ref().map(|(_, s)| s.clone());
    let name = |o: u32| Names::pod(cluster, o);
    let report = |o: u32| input.reports.iter().find(|r| r.ordinal == o);
    let describe = |o: u32| {
        let r = report(o);
        let failures = r.map_or(0, |r| r.failures);
        match r.and_then(|r| r.last_failure.as_deref()) {
            Some(last) => format!("{failures} consecutive checkpoint failures, last: {last}"),
            None => format!("{failures} consecutive checkpoint failures"),
        }
    };
    let mut out = Outcome {
        decision: decision.clone(),
        state: old.clone(),
        restart_request: None,
        acted: false,
        restart_all_at: None,
    };
    match &decision {
        Decision::Idle | Decision::Wait(_) => {}
        Decision::Take {
            ordinal,
            step: RemediationStep::FullSnapshot,
        } => {
            let pod = observed.pod(*ordinal).map(|p| p.url.clone());
            let Some(url) = pod else {
                return Ok(out);
            };
            let result = nodes.full_snapshot(&url).await?;
            let took = match &result {
                SnapshotOutcome::Taken(h) => format!(
                    "snapshot taken; {} consecutive failures now",
                    h.consecutive_failures
                ),
                SnapshotOutcome::NothingNew => "nothing new to snapshot".into(),
                SnapshotOutcome::StillRunning => "still running".into(),
            };
            info!(cluster = %cluster.name_any(), member = %name(*ordinal), outcome = %took, "full snapshot requested");
            ctx.publish(
                cluster,
                EventType::Normal,
                "FullSnapshotTriggered",
                "FullSnapshot",
                format!(
                    "{}: {}; asked for a full snapshot ({took})",
                    name(*ordinal),
                    describe(*ordinal)
                ),
            )
            .await;
            out.state = Some(state_for_step(
                name(*ordinal),
                RemediationStep::FullSnapshot,
                report(*ordinal),
                input.now,
            ));
            out.acted = true;
        }
        Decision::Take {
            ordinal,
            step: RemediationStep::Restart,
        } => out.restart_request = Some(*ordinal),
        Decision::Take {
            ordinal,
            step: RemediationStep::RollingUpgrade,
        } => {
            ctx.publish(
                cluster,
                EventType::Normal,
                "RollingUpgradeTriggered",
                "RollingUpgrade",
                format!(
                    "{}: {} after a restart; restarting every member one at a time",
                    name(*ordinal),
                    describe(*ordinal)
                ),
            )
            .await;
            out.restart_all_at = Some(input.now.to_string());
            out.state = Some(state_for_step(
                name(*ordinal),
                RemediationStep::RollingUpgrade,
                report(*ordinal),
                input.now,
            ));
            out.acted = true;
        }
        Decision::Take {
            step: RemediationStep::Exhausted,
            ..
        } => {}
        Decision::Settled => {
            out.state = old.map(|s| RemediationStatus {
                since: Some(Time(input.now)),
                ..s
            });
        }
        Decision::Recovered { ordinal } => {
            let step = old.as_ref().map(|s| s.step);
            info!(cluster = %cluster.name_any(), member = %name(*ordinal), ?step, "snapshots recovered");
            ctx.publish(
                cluster,
                EventType::Normal,
                "SnapshotsRecovered",
                "Remediate",
                format!(
                    "{}: WAL checkpoints complete again (after {:?})",
                    name(*ordinal),
                    step.unwrap_or(RemediationStep::FullSnapshot)
                ),
            )
            .await;
            out.state = None;
        }
        Decision::Exhausted { ordinal } => {
            warn!(cluster = %cluster.name_any(), member = %name(*ordinal), "snapshot remediation exhausted");
            ctx.publish(
                cluster,
                EventType::Warning,
                "SnapshotRemediationExhausted",
                "Remediate",
                format!(
                    "{}: {}; a full snapshot, a restart and a rolling restart did not help. Not escalating further: look for a process holding the database open or a full volume",
                    name(*ordinal),
                    describe(*ordinal)
                ),
            )
            .await;
            out.state = Some(state_for_step(
                name(*ordinal),
                RemediationStep::Exhausted,
                report(*ordinal),
                input.now,
            ));
        }
        Decision::Forget { ordinal } => {
            info!(cluster = %cluster.name_any(), member = %name(*ordinal), "member under remediation left the cluster");
            out.state = None;
        }
    }
    Ok(out)
}

/// `state` once the rollout carried out the Restart step by deleting the member's pod.
pub fn restarted(cluster: &SqliteCluster, input: &Input, ordinal: u32) -> RemediationStatus {
    state_for_step(
        Names::pod(cluster, ordinal),
        RemediationStep::Restart,
        input.reports.iter().find(|r| r.ordinal == ordinal),
        input.now,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use RemediationStep::*;

    const T0: i64 = 1_800_000_000;
    const MIN: i64 = 60;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(secs).unwrap()
    }

    fn report(ordinal: u32, failures: u64, last_success: &str) -> Report {
        Report {
            ordinal,
            failures,
            last_success: Some(last_success.into()),
            ready: true,
            last_failure: Some("database is locked".into()),
        }
    }

    /// Chainable builder: three healthy members, threshold 3, interval 5 minutes, now T0.
    struct Case(Input);

    fn case() -> Case {
        Case(Input {
            threshold: 3,
            interval: Duration::from_secs(300),
            now: at(T0),
            state: None,
            reports: (0..3).map(|o| report(o, 0, "s0")).collect(),
            members: vec![0, 1, 2],
            rollout_active: false,
        })
    }

    impl Case {
        fn failing(mut self, o: u32, failures: u64, last_success: &str) -> Self {
            let r = self.0.reports.iter_mut().find(|r| r.ordinal == o).unwrap();
            r.failures = failures;
            r.last_success = Some(last_success.into());
            self
        }
        fn state(mut self, o: u32, step: RemediationStep, since: Option<i64>) -> Self {
            self.0.state = Some((
                o,
                RemediationStatus {
                    member: format!("db-{o}"),
                    step,
                    since: since.map(|s| Time(at(s))),
                    failures: 3,
                    baseline_success: Some("s0".into()),
                },
            ));
            self
        }
        fn now(mut self, secs: i64) -> Self {
            self.0.now = at(secs);
            self
        }
        fn decide(&self) -> Decision {
            decide(&self.0)
        }
    }

    #[test]
    fn healthy_cluster_is_idle() {
        assert_eq!(case().decide(), Decision::Idle);
        // Below the threshold: the node's own retries get their chance.
        assert_eq!(case().failing(1, 2, "s0").decide(), Decision::Idle);
    }

    #[test]
    fn threshold_starts_with_a_full_snapshot_of_the_worst_member() {
        let c = case().failing(1, 3, "s0").failing(2, 5, "s0");
        assert_eq!(
            c.decide(),
            Decision::Take {
                ordinal: 2,
                step: FullSnapshot
            }
        );
        let c = case().failing(2, 4, "s0").failing(1, 4, "s0");
        assert_eq!(
            c.decide(),
            Decision::Take {
                ordinal: 1,
                step: FullSnapshot
            }
        );
    }

    #[test]
    fn each_step_waits_for_the_interval_before_escalating() {
        let c = case()
            .failing(1, 4, "s1")
            .state(1, FullSnapshot, Some(T0))
            .now(T0 + 4 * MIN);
        assert!(matches!(c.decide(), Decision::Wait(w) if w.contains("60s more")));
        let c = c.now(T0 + 5 * MIN);
        assert_eq!(
            c.decide(),
            Decision::Take {
                ordinal: 1,
                step: Restart
            }
        );
    }

    #[test]
    fn escalation_goes_full_snapshot_restart_rolling_upgrade_exhausted() {
        let later = T0 + 10 * MIN;
        let step_after = |step| {
            case()
                .failing(1, 1, "s1")
                .state(1, step, Some(T0))
                .now(later)
                .decide()
        };
        assert_eq!(
            step_after(FullSnapshot),
            Decision::Take {
                ordinal: 1,
                step: Restart
            }
        );
        assert_eq!(
            step_after(Restart),
            Decision::Take {
                ordinal: 1,
                step: RollingUpgrade
            }
        );
        assert_eq!(
            step_after(RollingUpgrade),
            Decision::Exhausted { ordinal: 1 }
        );
        // Exhausted stays put: no more steps, however long it fails.
        assert!(matches!(step_after(Exhausted), Decision::Wait(w) if w.contains("exhausted")));
    }

    #[test]
    fn restart_interval_starts_when_the_member_is_back() {
        // Pod deleted: the member does not report at all.
        let mut c = case().state(1, Restart, None);
        c.0.reports.retain(|r| r.ordinal != 1);
        assert!(matches!(c.decide(), Decision::Wait(w) if w.contains("does not report")));
        // Back but not Ready.
        let mut c = case().state(1, Restart, None);
        c.0.reports[1].ready = false;
        c.0.reports[1].last_success = None;
        assert!(matches!(c.decide(), Decision::Wait(w) if w.contains("restarting")));
        // Back and Ready: the interval starts now.
        let mut c = case().state(1, Restart, None);
        c.0.reports[1].last_success = None;
        assert_eq!(c.decide(), Decision::Settled);
    }

    #[test]
    fn rolling_upgrade_interval_starts_when_the_rollout_is_over() {
        let mut c = case().failing(1, 2, "s1").state(1, RollingUpgrade, None);
        c.0.rollout_active = true;
        assert!(matches!(c.decide(), Decision::Wait(w) if w.contains("under way")));
        c.0.rollout_active = false;
        assert_eq!(c.decide(), Decision::Settled);
    }

    #[test]
    fn rolling_upgrade_waits_for_a_rollout_already_running() {
        let mut c = case()
            .failing(1, 1, "s1")
            .state(1, Restart, Some(T0))
            .now(T0 + 6 * MIN);
        c.0.rollout_active = true;
        assert!(matches!(c.decide(), Decision::Wait(w) if w.contains("under way")));
    }

    #[test]
    fn recovery_needs_zero_failures_and_a_new_success() {
        // Cleared by the full snapshot: zero failures, newer success.
        let c = case().failing(1, 0, "s1").state(1, FullSnapshot, Some(T0));
        assert_eq!(c.decide(), Decision::Recovered { ordinal: 1 });
        // Recovery counts at any step, even after giving up.
        let c = case().failing(1, 0, "s1").state(1, Exhausted, Some(T0));
        assert_eq!(c.decide(), Decision::Recovered { ordinal: 1 });
        // A restart zeroed the counter but no snapshot ran since: not evidence of a cure.
        let mut c = case().state(1, Restart, Some(T0)).now(T0 + 6 * MIN);
        c.0.reports[1].last_success = None;
        assert!(matches!(c.decide(), Decision::Wait(w) if w.contains("confirm")));
        // Zero failures but the same success as before the step: still no evidence.
        let c = case()
            .failing(1, 0, "s0")
            .state(1, FullSnapshot, Some(T0))
            .now(T0 + 6 * MIN);
        assert!(matches!(c.decide(), Decision::Wait(_)));
    }

    #[test]
    fn one_member_at_a_time() {
        let c = case()
            .failing(1, 4, "s1")
            .failing(2, 9, "s1")
            .state(1, FullSnapshot, Some(T0))
            .now(T0 + MIN);
        assert!(matches!(c.decide(), Decision::Wait(w) if w.contains("member 1")));
    }

    #[test]
    fn member_that_left_is_forgotten() {
        let mut c = case().state(2, Restart, Some(T0));
        c.0.reports.retain(|r| r.ordinal != 2);
        c.0.members = vec![0, 1];
        assert_eq!(c.decide(), Decision::Forget { ordinal: 2 });
    }

    #[test]
    fn resumes_from_status_after_an_operator_restart() {
        // A fresh operator reads only status: the Restart step settled 6 minutes ago and the
        // member still fails, so the next step is the rolling upgrade, not a new full snapshot.
        let c = case()
            .failing(1, 2, "s2")
            .state(1, Restart, Some(T0))
            .now(T0 + 6 * MIN);
        assert_eq!(
            c.decide(),
            Decision::Take {
                ordinal: 1,
                step: RollingUpgrade
            }
        );
    }

    #[test]
    fn step_state_records_baseline_and_starts_the_clock_only_for_instant_steps() {
        let r = report(1, 4, "s7");
        let s = state_for_step("db-1".into(), FullSnapshot, Some(&r), at(T0));
        assert_eq!(
            (s.since, s.failures, s.baseline_success.as_deref()),
            (Some(Time(at(T0))), 4, Some("s7"))
        );
        let s = state_for_step("db-1".into(), Restart, Some(&r), at(T0));
        assert_eq!(s.since, None);
        let s = state_for_step("db-1".into(), RollingUpgrade, Some(&r), at(T0));
        assert_eq!(s.since, None);
    }
}
