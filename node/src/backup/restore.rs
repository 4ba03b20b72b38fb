//! `--restore-from`: boot an empty member from the newest backup (or `--restore-id`'s), through
//! Raft so every member that joins later gets the same data.

use std::time::Duration;

use anyhow::{Context, bail};

use super::Manager;
use super::archive::Target;
use crate::config::NodeConfig;
use crate::raft::propose::Proposer;
use crate::{MemberInfo, NodeId, Raft};

const PENDING: &str = "restore-pending";
/// What the restore that created this data dir restored ([`super::archive::Restored`]).
pub const RESTORED: &str = "restored.json";

/// What `--restore-from` restored into this data dir, if it was made that way.
pub fn restored(data_dir: &std::path::Path) -> Option<serde_json::Value> {
    let bytes = std::fs::read(data_dir.join(RESTORED)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What a restore at start needs of the member.
pub struct Member<'a> {
    pub raft: &'a Raft,
    pub writes: &'a Proposer,
    pub id: NodeId,
    pub info: &'a MemberInfo,
    pub config: &'a NodeConfig,
}

/// Runs before bootstrap/join. On an empty data dir (or one whose earlier restore did not
/// finish, marked by a `restore-pending` file) it downloads and verifies the newest backup,
/// bootstraps a single-member cluster, proposes the image in pieces, and snapshots.
pub async fn at_start(member: Member<'_>) -> anyhow::Result<()> {
    let Member {
        raft,
        writes,
        id,
        info,
        config,
    } = member;
    let Some(cfg) = config.restore_from.clone() else {
        return Ok(());
    };
    let marker = config.data_dir.join(PENDING);
    let initialized = raft.is_initialized().await?;
    if initialized && !marker.exists() {
        tracing::info!("data dir already holds a cluster's state; --restore-from is not used");
        return Ok(());
    }
    if !config.join.is_empty() && !initialized {
        tracing::warn!(
            "--restore-from with --join: a joining member gets its data from the leader; not restoring"
        );
        return Ok(());
    }
    let manager = Manager::new(&cfg, &config.data_dir, config.backup_status_ttl)
        .with_context(|| format!("loading --restore-from {}", cfg.display()))?;
    let target = Target::from_args(config.restore_to_time.as_deref(), config.restore_to_index)
        .context("--restore-to-time / --restore-to-index")?;
    let (restored, db) = manager
        .restore_to(config.restore_id.as_deref(), target)
        .await
        .with_context(|| match config.restore_id.as_deref() {
            Some(id) => format!("restoring backup {id} (--restore-id)"),
            None => "restoring the newest backup and its archive".to_owned(),
        })?;
    tracing::info!(id = %restored.backup_id, storage = %restored.storage, backup_index = restored.backup_index, index = restored.index, target = ?restored.target, "restoring from backup");
    super::status_cache::write_atomic(&marker, restored.backup_id.as_bytes())
        .context("writing the restore marker")?;
    if !initialized {
        let members = std::collections::BTreeMap::from([(id, info.clone())]);
        raft.initialize(members)
            .await
            .context("bootstrapping the restored cluster")?;
    }
    let mut rx = raft.metrics();
    tokio::time::timeout(
        Duration::from_secs(30),
        rx.wait_for(|m| m.current_leader == Some(id)),
    )
    .await
    .context("this member did not become leader of the restored cluster within 30s")??;
    let resp = crate::raft::loader::propose(writes, &mut db.as_slice(), db.len() as u64)
        .await
        .context("proposing the backup image")?;
    if let Some(e) = resp.data.error {
        bail!("the backup image was refused: {e}");
    }
    let index = resp.log_id.index;
    raft.trigger()
        .snapshot()
        .await
        .context("triggering a snapshot")?;
    let mut rx = raft.metrics();
    let snap = tokio::time::timeout(
        Duration::from_secs(120),
        rx.wait_for(|m| m.snapshot.is_some_and(|s| s.index >= index)),
    )
    .await;
    if snap.is_err() {
        tracing::warn!("snapshot after the restore did not finish within 120s; data is in the log");
    }
    // What was restored, for /status (and the operator's status of a recovered cluster); kept
    // for the life of the data dir.
    let record = serde_json::to_vec_pretty(&restored).unwrap_or_default();
    super::status_cache::write_atomic(&config.data_dir.join(RESTORED), &record)
        .context("recording what was restored")?;
    std::fs::remove_file(&marker).context("removing the restore marker")?;
    tracing::info!(id = %restored.backup_id, index, "restored from backup");
    Ok(())
}
