//! `--restore-from`: boot an empty member from the newest backup (or `--restore-id`'s), through
//! Raft so every member that joins later gets the same data.

use std::time::Duration;

use anyhow::{Context, bail};

use super::Manager;
use crate::config::NodeConfig;
use crate::raft::propose::Proposer;
use crate::{MemberInfo, NodeId, Raft};

const PENDING: &str = "restore-pending";

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
    let (manifest, db) = match config.restore_id.as_deref() {
        None => manager
            .fetch(None)
            .await
            .context("fetching the newest backup")?,
        Some(id) => manager
            .fetch(Some(id))
            .await
            .with_context(|| format!("fetching backup {id} (--restore-id)"))?,
    };
    tracing::info!(id = %manifest.id, storage = %manifest.storage, raft_index = manifest.raft_index, "restoring from backup");
    super::status_cache::write_atomic(&marker, manifest.id.as_bytes())
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
    std::fs::remove_file(&marker).context("removing the restore marker")?;
    tracing::info!(id = %manifest.id, index, "restored from backup");
    Ok(())
}
