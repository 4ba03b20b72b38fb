//! Builds `status` from the observation and writes it only when something a reader cares about changed.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;

use super::membership::Action;
use super::observe::{ObservedCluster, raft_members};
use super::{Context, Maintenance, rollout};
use crate::Result;
use crate::crd::{
    ArchiveStatus, MemberSnapshotStatus, MemberStatus, RecoveryStatus, RemediationStatus,
    RemediationStep, SqliteCluster, SqliteClusterStatus,
};
use crate::resources::{Names, selector_string};

/// Degraded reason while the TLS Secret would cut restarted members off.
pub const TLS_CHANGE_UNSAFE: &str = "TlsChangeUnsafe";

/// Condition type set while the pause annotation holds the operator back.
pub const PAUSED: &str = "Paused";

/// While paused, the status says so and which generation the operator saw (and left alone);
/// everything else stays as it was. Written only when that changes.
pub async fn reconcile_paused(cluster: &SqliteCluster, ctx: &Context, ns: &str) -> Result<()> {
    let old = cluster.status.clone().unwrap_or_default();
    let new = paused_status(&old, cluster.metadata.generation, Timestamp::now());
    if !differs(&old, &new) {
        return Ok(());
    }
    super::apply_status(ctx, cluster, ns, &new).await
}

/// `old` with a true `Paused` condition for `generation`.
pub fn paused_status(
    old: &SqliteClusterStatus,
    generation: Option<i64>,
    now: Timestamp,
) -> SqliteClusterStatus {
    let mut new = old.clone();
    let paused = condition(
        &old.conditions,
        PAUSED,
        "True",
        "PauseAnnotation",
        format!(
            "{} is \"true\": the operator changes nothing until it is removed",
            crate::crd::PAUSED_ANNOTATION
        ),
        generation,
        now,
    );
    new.conditions.retain(|c| c.type_ != PAUSED);
    new.conditions.push(paused);
    new
}

/// Compute the status and patch it when it differs (applied indexes and timestamps aside).
pub async fn reconcile_status(
    cluster: &SqliteCluster,
    ctx: &Context,
    observed: &ObservedCluster,
    action: &Action,
    bootstrapped: bool,
    maintenance: Option<&Maintenance>,
    ns: &str,
) -> Result<()> {
    let old = cluster.status.clone().unwrap_or_default();
    let new = desired_status(
        cluster,
        observed,
        action,
        bootstrapped,
        maintenance,
        Timestamp::now(),
    );
    if !differs(&old, &new) {
        return Ok(());
    }
    publish_archive_events(cluster, ctx, &old, &new).await;
    super::apply_status(ctx, cluster, ns, &new).await
}

/// Events for what changed in the archive and the recovery.
async fn publish_archive_events(
    cluster: &SqliteCluster,
    ctx: &Context,
    old: &SqliteClusterStatus,
    new: &SqliteClusterStatus,
) {
    use kube::runtime::events::EventType;
    if let (None, Some(r)) = (&old.recovery, &new.recovery) {
        let note = format!(
            "restored backup {} (index {}) and the archive after it up to index {}{}",
            r.backup_id,
            r.backup_index,
            r.index,
            r.time
                .as_ref()
                .map(|t| format!(", last write at {t}"))
                .unwrap_or_default()
        );
        let (type_, note) = match &r.target {
            Some(t) if !r.target_reached => (
                EventType::Warning,
                format!(
                    "{note}; the archive ends before the target {t}: everything archived was restored"
                ),
            ),
            _ => (EventType::Normal, note),
        };
        ctx.publish(cluster, type_, "Recovered", "Recover", note)
            .await;
    }
    let (Some(o), Some(n)) = (
        old.archive.clone().or(Some(ArchiveStatus::default())),
        &new.archive,
    ) else {
        return;
    };
    if n.failover && !o.failover {
        let note = format!(
            "archive segments go to failover storage {:?}: an earlier storage is not writable",
            n.storage.as_deref().unwrap_or("?")
        );
        ctx.publish(
            cluster,
            EventType::Warning,
            "ArchiveFailedOver",
            "Archive",
            note,
        )
        .await;
    }
    if n.last_gap_at.is_some() && n.last_gap_at != o.last_gap_at {
        let note = "the log no longer held entries the archive lacked; a new base backup restarted the archive (point-in-time recovery to the time in between is not possible)".to_owned();
        ctx.publish(cluster, EventType::Warning, "ArchiveGap", "Archive", note)
            .await;
    }
    if let (None, Some(e)) = (&o.last_error, &n.last_error) {
        ctx.publish(
            cluster,
            EventType::Warning,
            "ArchiveFailing",
            "Archive",
            format!("archiving fails: {e}"),
        )
        .await;
    }
}

/// Whether `new` says something `old` does not. Applied indexes move with every write and
/// condition times follow their status, so neither alone is worth a write; the archive's
/// position moves every few seconds and is refreshed once a minute.
pub fn differs(old: &SqliteClusterStatus, new: &SqliteClusterStatus) -> bool {
    normalized(old) != normalized(new) || archive_moved(old, new)
}

fn archive_moved(old: &SqliteClusterStatus, new: &SqliteClusterStatus) -> bool {
    let at = |s: &SqliteClusterStatus| {
        s.archive
            .as_ref()
            .and_then(|a| a.archived_at.as_deref())
            .and_then(|t| t.parse::<Timestamp>().ok())
    };
    match (at(old), at(new)) {
        (Some(o), Some(n)) => n.as_millisecond() - o.as_millisecond() >= 60_000,
        (None, Some(_)) => true,
        _ => false,
    }
}

fn normalized(s: &SqliteClusterStatus) -> SqliteClusterStatus {
    let mut s = s.clone();
    for m in &mut s.members {
        m.applied_index = None;
    }
    if let Some(a) = &mut s.archive {
        a.archived_index = None;
        a.archived_at = None;
        a.lag_ms = None;
    }
    for c in &mut s.conditions {
        c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
    }
    s
}

/// The status the cluster should show; condition times carry over while a condition holds.
pub fn desired_status(
    cluster: &SqliteCluster,
    observed: &ObservedCluster,
    action: &Action,
    bootstrapped: bool,
    maintenance: Option<&Maintenance>,
    now: Timestamp,
) -> SqliteClusterStatus {
    let old = cluster.status.clone().unwrap_or_default();
    // Without a maintenance pass (bootstrapping) its parts of the status stay as they were.
    let (updated_replicas, rollout_status, last_restart, remediation) = match maintenance {
        Some(m) => (
            m.rollout.updated,
            m.rollout.rollout.clone(),
            m.rollout.last_restart.clone(),
            m.remediation.clone(),
        ),
        None => (
            old.updated_replicas,
            old.rollout.clone(),
            old.last_restart.clone(),
            old.remediation.clone(),
        ),
    };
    let rolling = maintenance.is_some_and(|m| {
        m.rollout.rollout.is_some()
            || matches!(
                m.rollout.decision,
                rollout::Decision::Restart { .. } | rollout::Decision::TransferLeadership(_)
            )
    });
    let raft = raft_members(cluster, observed).unwrap_or_default();
    let leader = observed.leader().map(|p| p.name.clone());
    let desired = cluster.spec.replicas;

    let mut ordinals: Vec<u32> = observed
        .pods
        .iter()
        .map(|p| p.ordinal)
        .chain(raft.iter().map(|r| r.0))
        .collect();
    ordinals.sort_unstable();
    ordinals.dedup();
    let members: Vec<MemberStatus> = ordinals
        .iter()
        .map(|&o| {
            let pod = observed.pod(o);
            let status = pod.and_then(|p| p.status.as_ref().ok());
            MemberStatus {
                name: Names::pod(cluster, o),
                role: match raft.iter().find(|r| r.0 == o).map(|r| r.1) {
                    Some(super::membership::Role::Voter) => "Voter",
                    Some(super::membership::Role::Learner) => "Learner",
                    None => "None",
                }
                .into(),
                raft_state: status.map_or_else(|| "Unknown".into(), |s| s.store.raft.state.clone()),
                ready: pod.is_some_and(|p| p.ready),
                applied_index: status.map(|s| s.store.raft.applied_index),
                snapshot: status.and_then(|s| s.store.snapshot.as_ref()).map(|h| {
                    MemberSnapshotStatus {
                        last_success_index: h.last_success.as_ref().map(|l| l.index),
                        consecutive_failures: h.consecutive_failures,
                        full_needed: h.full_needed,
                    }
                }),
            }
        })
        .collect();

    let ready = observed
        .pods
        .iter()
        .filter(|p| p.ready && (p.ordinal as i32) < desired)
        .count() as i32;
    let voters = raft
        .iter()
        .filter(|r| r.1 == super::membership::Role::Voter)
        .count() as i32;
    let unreachable_voters: Vec<&str> = members
        .iter()
        .filter(|m| m.role == "Voter" && m.raft_state == "Unknown")
        .map(|m| m.name.as_str())
        .collect();
    let membership_settled =
        matches!(action, Action::Nothing) && observed.pods.len() as i32 == desired;
    let settled = membership_settled && !rolling;

    let phase = if !bootstrapped {
        "Bootstrapping the first member".to_string()
    } else if leader.is_none() {
        "No Raft leader".to_string()
    } else if let (true, Some(m)) = (membership_settled && rolling, maintenance) {
        rollout_phase(cluster, m, desired)
    } else if settled && ready == desired {
        "Cluster in healthy state".to_string()
    } else {
        match action {
            Action::AddLearner(o) => format!("Adding member {}", Names::pod(cluster, *o)),
            Action::Promote(o) => format!("Promoting member {}", Names::pod(cluster, *o)),
            Action::Demote(o) => format!("Demoting member {}", Names::pod(cluster, *o)),
            Action::Remove(o, _) => format!("Removing member {}", Names::pod(cluster, *o)),
            Action::TransferLeadership(o) => {
                format!("Moving leadership away from {}", Names::pod(cluster, *o))
            }
            Action::Wait(why) => format!("Waiting: {why}"),
            Action::Nothing => format!("Waiting for members to be ready ({ready}/{desired})"),
        }
    };

    let snapshot_reports: Vec<&MemberSnapshotStatus> =
        members.iter().filter_map(|m| m.snapshot.as_ref()).collect();
    // A failure is a failed attempt. `fullNeeded` alone is not one: a new member's first
    // snapshot is full, as is the next one after a fallback.
    let failing: Vec<&str> = members
        .iter()
        .filter(|m| {
            m.snapshot
                .as_ref()
                .is_some_and(|s| s.consecutive_failures > 0)
        })
        .map(|m| m.name.as_str())
        .collect();
    let full_pending: Vec<&str> = members
        .iter()
        .filter(|m| {
            m.snapshot
                .as_ref()
                .is_some_and(|s| s.full_needed && s.consecutive_failures == 0)
        })
        .map(|m| m.name.as_str())
        .collect();

    let generation = cluster.meta().generation;
    let cond = |type_: &str, ok: bool, reason: &str, message: String| {
        condition(
            &old.conditions,
            type_,
            if ok { "True" } else { "False" },
            reason,
            message,
            generation,
            now,
        )
    };
    let mut conditions = vec![
        cond(
            "Ready",
            leader.is_some() && ready == desired,
            if ready != desired {
                "MembersNotReady"
            } else if leader.is_none() {
                "NoLeader"
            } else {
                "AllMembersReady"
            },
            if ready == desired && leader.is_none() {
                format!("{ready}/{desired} members ready, but no Raft leader yet")
            } else {
                format!("{ready}/{desired} members ready")
            },
        ),
        cond(
            "Progressing",
            !settled,
            if settled {
                "Settled"
            } else if rolling && membership_settled {
                "RollingRestart"
            } else {
                "Reconciling"
            },
            phase.clone(),
        ),
    ];
    let exhausted = remediation
        .as_ref()
        .filter(|r| r.step == RemediationStep::Exhausted);
    // Degraded is True when something is wrong: `degraded(true, ..)`.
    let degraded =
        |bad: bool, reason: &str, message: String| cond("Degraded", bad, reason, message);
    // An unsafe TLS Secret comes first: with HTTPS it is also why no member answers.
    let tls_unsafe = observed.tls.as_ref().and_then(|t| t.unsafe_change.as_ref());
    conditions.push(if let Some(why) = tls_unsafe {
        degraded(true, TLS_CHANGE_UNSAFE, format!("member restarts held back: {why}"))
    } else if leader.is_none() && bootstrapped {
        degraded(true, "NoLeader", "no Raft leader".into())
    } else if !unreachable_voters.is_empty() {
        degraded(
            true,
            "VotersUnreachable",
            format!("unreachable voters: {}", unreachable_voters.join(", ")),
        )
    } else if let Some(r) = exhausted {
        degraded(
            true,
            "SnapshotRemediationExhausted",
            format!(
                "{}: WAL checkpoints keep failing after a full snapshot, a restart and a rolling restart",
                r.member
            ),
        )
    } else {
        degraded(false, "QuorumHealthy", "every voter answers".into())
    });
    conditions.push(if snapshot_reports.is_empty() {
        condition(
            &old.conditions,
            "SnapshotsHealthy",
            "Unknown",
            "NotReported",
            "no member reports snapshot health".into(),
            generation,
            now,
        )
    } else {
        match &remediation {
            Some(r) => cond(
                "SnapshotsHealthy",
                false,
                if r.step == RemediationStep::Exhausted {
                    "RemediationExhausted"
                } else {
                    "Remediating"
                },
                remediation_message(r),
            ),
            None if !failing.is_empty() => cond(
                "SnapshotsHealthy",
                false,
                "SnapshotFailures",
                format!("snapshot failures on {}", failing.join(", ")),
            ),
            None if !full_pending.is_empty() => cond(
                "SnapshotsHealthy",
                true,
                "FullSnapshotPending",
                format!(
                    "no failures; the next snapshot of {} is a full one (a member's first, or the one after a fallback)",
                    full_pending.join(", ")
                ),
            ),
            None => cond(
                "SnapshotsHealthy",
                true,
                "SnapshotsSucceeding",
                "every member's last snapshot succeeded".into(),
            ),
        }
    });

    SqliteClusterStatus {
        phase: Some(phase),
        conditions,
        replicas: observed.pods.len() as i32,
        ready_replicas: ready,
        ready_members: Some(format!("{ready}/{desired}")),
        voters,
        selector: Some(selector_string(cluster)),
        leader,
        members,
        bootstrapped,
        observed_generation: generation,
        updated_replicas,
        rollout: rollout_status,
        last_restart,
        remediation,
        archive: archive_status(cluster, observed, &old),
        recovery: recovery_status(observed, &old),
        recovery_source: old
            .recovery_source
            .clone()
            .or_else(|| recovery_source(cluster)),
    }
}

/// The leader's archive; without a leader, what was last seen.
fn archive_status(
    cluster: &SqliteCluster,
    observed: &ObservedCluster,
    old: &SqliteClusterStatus,
) -> Option<ArchiveStatus> {
    cluster.spec.backup.as_ref()?;
    let Some(leader) = observed.leader_status() else {
        return old.archive.clone();
    };
    let a = leader.backup.archive.as_ref().filter(|a| a.enabled)?;
    if !a.active && a.last_failure.is_none() {
        // A new leader that has not looked yet: what the last one reported still holds.
        return old.archive.clone();
    }
    let seg = a.last_segment.as_ref();
    // The node clears its failure after a pass that succeeds. Counters are per process, so
    // the gap time is kept from before when this leader has seen none (or an older one).
    let last_gap_at = match (
        &a.last_gap_at,
        old.archive.as_ref().and_then(|o| o.last_gap_at.clone()),
    ) {
        (Some(new), Some(old)) if parse_ts(&old) >= parse_ts(new) => Some(old),
        (None, old) => old,
        (new, _) => new.clone(),
    };
    Some(ArchiveStatus {
        archived_index: a.archived_index.map(|i| i as i64),
        archived_at: a.archived_at.clone(),
        lag_ms: a.last_lag_ms.map(|l| l as i64),
        storage: seg.map(|s| s.storage.clone()),
        failover: seg.is_some_and(|s| s.failover),
        last_gap_at,
        last_error: a.last_failure.as_ref().map(|f| f.error.clone()),
    })
}

/// What `bootstrap.recovery.backup` was resolved to (`controller/recovery.rs`), to keep.
fn recovery_source(cluster: &SqliteCluster) -> Option<crate::crd::RecoverySource> {
    let r = cluster.spec.bootstrap.as_ref()?.recovery.as_ref()?;
    let backup = r.backup.as_ref()?;
    (!r.storages.is_empty()).then(|| crate::crd::RecoverySource {
        backup: backup.name.clone(),
        backup_id: r.backup_id.clone().unwrap_or_default(),
        storages: r.storages.clone(),
    })
}

fn parse_ts(t: &str) -> Option<Timestamp> {
    t.parse().ok()
}

/// What a member restored when the cluster was created from a backup; kept once seen.
fn recovery_status(
    observed: &ObservedCluster,
    old: &SqliteClusterStatus,
) -> Option<RecoveryStatus> {
    if old.recovery.is_some() {
        return old.recovery.clone();
    }
    let r = observed
        .pods
        .iter()
        .find_map(|p| p.status.as_ref().ok()?.restored.as_ref())?;
    Some(RecoveryStatus {
        backup_id: r.backup_id.clone(),
        backup_index: r.backup_index as i64,
        index: r.index as i64,
        time: r.time.clone(),
        target: r.target.clone(),
        target_reached: r.target_reached,
    })
}

/// "Rolling restart (1/3 updated): restarting member db-2 (image changed to ...)".
fn rollout_phase(cluster: &SqliteCluster, m: &Maintenance, desired: i32) -> String {
    let r = &m.rollout;
    let step = match &r.decision {
        rollout::Decision::Restart {
            ordinal, reason, ..
        } => format!(
            "restarting member {} ({reason})",
            Names::pod(cluster, *ordinal)
        ),
        rollout::Decision::TransferLeadership(o) => format!(
            "moving leadership away from {} before its restart",
            Names::pod(cluster, *o)
        ),
        rollout::Decision::Wait(why) => format!("waiting: {why}"),
        rollout::Decision::UpToDate => "finishing".into(),
    };
    format!("Rolling restart ({}/{desired} updated): {step}", r.updated)
}

/// What remediation is doing, for the SnapshotsHealthy condition.
fn remediation_message(r: &RemediationStatus) -> String {
    let step = match r.step {
        RemediationStep::FullSnapshot => "a full snapshot was requested",
        RemediationStep::Restart => "the member was restarted",
        RemediationStep::RollingUpgrade => "every member is restarted one at a time",
        RemediationStep::Exhausted => {
            "a full snapshot, a restart and a rolling restart did not help; not escalating further"
        }
    };
    format!(
        "{}: {} consecutive WAL checkpoint failures; {step}",
        r.member, r.failures
    )
}

/// A condition whose transition time stays put while its status does.
fn condition(
    old: &[Condition],
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let since = old
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: since,
    }
}
