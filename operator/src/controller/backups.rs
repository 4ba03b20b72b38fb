//! The `SqliteBackup` reconciler: asks the cluster's leader for a backup (`POST /backup`, which
//! goes to the first of the cluster's ordered storages that accepts it) and records the outcome
//! in the backup's status, with Events.
//!
//! At least once: `Running` is recorded before the leader is asked, so an operator that dies
//! in between asks again on its next pass. A second copy of a backup costs storage until the
//! cluster's retention prunes it; a lost one would cost a recovery point.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use tracing::info;

use super::{Context, apply_status, observe};
use crate::backup::{SqliteBackup, SqliteBackupStatus, phase};
use crate::crd::SqliteCluster;
use crate::node_client::BackupOutcome;
use crate::{Error, Result};

/// Retryable failures (a storage briefly down everywhere, a leader change) are asked again this
/// many times in all.
pub const MAX_ATTEMPTS: u32 = 5;
/// How long a backup waits for its cluster to have a leader before it fails.
pub const LEADER_WAIT: Duration = Duration::from_secs(600);

/// Seconds between attempts after a retryable failure.
const RETRY_WAIT: Duration = Duration::from_secs(15);

pub async fn reconcile(backup: Arc<SqliteBackup>, ctx: Arc<Context>) -> Result<Action> {
    if backup.finished() || backup.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = backup.namespace().ok_or(Error::MissingNamespace)?;
    // The cache may still hold the Running this controller wrote before it finished the
    // backup (its own status writes trigger the next pass): read it fresh, or a finished
    // backup would be taken again.
    let Some(backup) = Api::<SqliteBackup>::namespaced(ctx.client.clone(), &ns)
        .get_opt(&backup.name_any())
        .await?
    else {
        return Ok(Action::await_change());
    };
    if backup.finished() {
        return Ok(Action::await_change());
    }
    let mut status = backup.status.clone().unwrap_or_default();
    if let Some(at) = &status.next_attempt_at {
        let wait = Duration::try_from(at.0 - Timestamp::now()).unwrap_or_default();
        if !wait.is_zero() {
            return Ok(Action::requeue(wait));
        }
    }
    let name = &backup.spec.cluster;
    let Some(cluster) = Api::<SqliteCluster>::namespaced(ctx.client.clone(), &ns)
        .get_opt(name)
        .await?
    else {
        return fail(
            &backup,
            &ctx,
            &ns,
            status,
            format!("there is no SqliteCluster {name} in namespace {ns}: point spec.cluster at one (create a new SqliteBackup)"),
        )
        .await;
    };
    if cluster.spec.backup.is_none() {
        return fail(
            &backup,
            &ctx,
            &ns,
            status,
            format!("SqliteCluster {name} has no spec.backup.storages: add at least one storage, then create a new SqliteBackup"),
        )
        .await;
    }
    let (_, observed, nodes) = observe::observe(&cluster, &ctx, &ns).await?;
    let Some(leader) = observed.leader() else {
        let waited = backup
            .meta()
            .creation_timestamp
            .as_ref()
            .map_or(Duration::ZERO, |t| {
                Duration::try_from(Timestamp::now() - t.0).unwrap_or_default()
            });
        if waited > LEADER_WAIT {
            return fail(
                &backup,
                &ctx,
                &ns,
                status,
                format!("SqliteCluster {name} has had no leader for {} minutes: see its status and events", LEADER_WAIT.as_secs() / 60),
            )
            .await;
        }
        status.phase = Some(phase::PENDING.into());
        status.message = Some(format!("waiting for SqliteCluster {name} to have a leader"));
        apply_status(&ctx, &backup, &ns, &status).await?;
        return Ok(Action::requeue(Duration::from_secs(10)));
    };
    let attempts = status.attempts.unwrap_or(0) + 1;
    status.phase = Some(phase::RUNNING.into());
    status.message = Some(format!("{} is taking the backup", leader.name));
    status.member = Some(leader.name.clone());
    status.attempts = Some(attempts);
    status
        .started_at
        .get_or_insert_with(|| Time(Timestamp::now()));
    apply_status(&ctx, &backup, &ns, &status).await?;
    if attempts == 1 {
        publish(
            &backup,
            &ctx,
            EventType::Normal,
            "BackupStarted",
            format!("{} of {name} is taking the backup", leader.name),
        )
        .await;
    }
    match nodes.backup(&leader.url).await {
        Ok(BackupOutcome::Done(r)) => {
            info!(backup = %backup.name_any(), cluster = %name, storage = %r.storage, id = %r.id, index = r.raft_index, "backup completed");
            let note = format!(
                "backup {} of {name} at Raft index {} ({} bytes) in storage {}{}",
                r.id,
                r.raft_index,
                r.size,
                r.storage,
                if r.failover {
                    " (a failover: the storages before it refused)"
                } else {
                    ""
                }
            );
            status = SqliteBackupStatus {
                phase: Some(phase::COMPLETED.into()),
                message: Some(note.clone()),
                backup_id: Some(r.id),
                storage: Some(r.storage),
                failover: Some(r.failover),
                raft_index: Some(r.raft_index),
                size_bytes: Some(r.size),
                database_bytes: Some(r.db_size),
                sha256: Some(r.sha256),
                completed_at: Some(Time(Timestamp::now())),
                ..status
            };
            apply_status(&ctx, &backup, &ns, &status).await?;
            ctx.metrics.backup_finished(true);
            let kind = if status.failover == Some(true) {
                EventType::Warning
            } else {
                EventType::Normal
            };
            let reason = if status.failover == Some(true) {
                "BackupFailedOver"
            } else {
                "BackupCompleted"
            };
            publish(&backup, &ctx, kind, reason, note).await;
            Ok(Action::await_change())
        }
        Ok(BackupOutcome::Retry(why)) if attempts < MAX_ATTEMPTS => {
            status.message = Some(format!(
                "attempt {attempts} of {MAX_ATTEMPTS} failed, trying again in {}s: {why}",
                RETRY_WAIT.as_secs()
            ));
            status.next_attempt_at = Timestamp::now()
                .checked_add(
                    k8s_openapi::jiff::SignedDuration::try_from(RETRY_WAIT).unwrap_or_default(),
                )
                .ok()
                .map(Time);
            apply_status(&ctx, &backup, &ns, &status).await?;
            Ok(Action::requeue(RETRY_WAIT))
        }
        Ok(BackupOutcome::Retry(why)) => {
            fail(
                &backup,
                &ctx,
                &ns,
                status,
                format!("{attempts} attempts failed, the last: {why}"),
            )
            .await
        }
        Err(e) => {
            let mut why = e.to_string();
            if why.contains("401") || why.contains("403") {
                why.push_str(" (the user in the cluster's authSecret needs the backup permission)");
            }
            fail(&backup, &ctx, &ns, status, why).await
        }
    }
}

async fn fail(
    backup: &SqliteBackup,
    ctx: &Context,
    ns: &str,
    status: SqliteBackupStatus,
    why: String,
) -> Result<Action> {
    let status = SqliteBackupStatus {
        phase: Some(phase::FAILED.into()),
        message: Some(why.clone()),
        completed_at: Some(Time(Timestamp::now())),
        ..status
    };
    apply_status(ctx, backup, ns, &status).await?;
    ctx.metrics.backup_finished(false);
    publish(backup, ctx, EventType::Warning, "BackupFailed", why).await;
    Ok(Action::await_change())
}

async fn publish(
    backup: &SqliteBackup,
    ctx: &Context,
    type_: EventType,
    reason: &str,
    note: String,
) {
    ctx.publish_about(backup.object_ref(&()), type_, reason, "Backup", note)
        .await;
}

/// Count the failure and retry later.
pub fn error_policy(backup: Arc<SqliteBackup>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(backup = %backup.name_any(), error = %error, "backup reconcile failed");
    ctx.metrics.reconcile_failed(error);
    Action::requeue(Duration::from_secs(15))
}
