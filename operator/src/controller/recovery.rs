//! `bootstrap.recovery.backup`: a recovery from a SqliteBackup, resolved to the backup's id and
//! the storages of the cluster it backed up. Resolved once, while the cluster bootstraps, and
//! kept in `status.recoverySource`: the members' template (which mounts those storages'
//! Secrets) must not change if the SqliteBackup or its cluster are deleted later.

use kube::{Api, ResourceExt};

use super::Context;
use crate::backup::{SqliteBackup, phase};
use crate::crd::{RecoverySource, SqliteCluster};
use crate::{Error, Result};

/// `cluster` with `bootstrap.recovery.storages` and `backupId` filled in from its `backup`.
pub async fn resolve(cluster: SqliteCluster, ctx: &Context, ns: &str) -> Result<SqliteCluster> {
    let Some(name) = cluster
        .spec
        .bootstrap
        .as_ref()
        .and_then(|b| b.recovery.as_ref())
        .and_then(|r| r.backup.as_ref())
        .map(|b| b.name.clone())
    else {
        return Ok(cluster);
    };
    let status = cluster.status.clone().unwrap_or_default();
    let source = match status.recovery_source {
        Some(s) if s.backup == name => s,
        // Created already; nothing reads the recovery any more.
        _ if status.bootstrapped => return Ok(cluster),
        _ => lookup(&name, ctx, ns).await?,
    };
    Ok(with_source(cluster, source))
}

/// `cluster` recovering from `source`'s storages and backup id.
pub fn with_source(mut cluster: SqliteCluster, source: RecoverySource) -> SqliteCluster {
    if let Some(r) = cluster
        .spec
        .bootstrap
        .as_mut()
        .and_then(|b| b.recovery.as_mut())
    {
        r.storages = source.storages;
        r.backup_id = Some(source.backup_id);
    }
    cluster
}

async fn lookup(name: &str, ctx: &Context, ns: &str) -> Result<RecoverySource> {
    let fail = |msg: String| Error::RecoverySource(msg);
    let backup = Api::<SqliteBackup>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await?
        .ok_or_else(|| {
            fail(format!(
                "SqliteBackup {ns}/{name} not found: create it, or name the storages in bootstrap.recovery.storages instead"
            ))
        })?;
    let st = backup.status.clone().unwrap_or_default();
    match st.phase.as_deref() {
        Some(phase::COMPLETED) => {}
        Some(phase::FAILED) => {
            return Err(fail(format!(
                "SqliteBackup {name} failed ({}): recover from another backup",
                st.message.as_deref().unwrap_or("no message")
            )));
        }
        other => {
            return Err(fail(format!(
                "waiting for SqliteBackup {name} to complete (it is {})",
                other.unwrap_or("new")
            )));
        }
    }
    let backup_id = st.backup_id.ok_or_else(|| {
        fail(format!(
            "SqliteBackup {name} is Completed but has no backupId"
        ))
    })?;
    let source_name = backup.spec.cluster.clone();
    let source = Api::<SqliteCluster>::namespaced(ctx.client.clone(), ns)
        .get_opt(&source_name)
        .await?;
    let storages = source
        .and_then(|c| c.spec.backup)
        .map(|b| b.storages)
        .ok_or_else(|| {
            fail(format!(
                "SqliteCluster {source_name}, which SqliteBackup {name} backed up, is gone or has no spec.backup: name its storages in bootstrap.recovery.storages with backupId {backup_id}"
            ))
        })?;
    tracing::info!(backup = %backup.name_any(), %backup_id, source = %source_name, "recovering from a SqliteBackup");
    Ok(RecoverySource {
        backup: name.to_owned(),
        backup_id,
        storages,
    })
}
