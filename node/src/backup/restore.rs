//! `--restore-from`: boot an empty member from the newest backup, through Raft so every member
//! that joins later gets the same data.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use super::Manager;
use crate::node::Node;

const PENDING: &str = "restore-pending";

/// Runs before bootstrap/join. On an empty data dir (or one whose earlier restore did not
/// finish, marked by a `restore-pending` file) it downloads and verifies the newest backup,
/// bootstraps a single-member cluster, proposes the image in pieces, and snapshots.
pub async fn at_start(node: &Arc<Node>) -> anyhow::Result<()> {
    let Some(cfg) = node.config.restore_from.clone() else {
        return Ok(());
    };
    let marker = node.config.data_dir.join(PENDING);
    let initialized = node.raft.is_initialized().await?;
    if initialized && !marker.exists() {
        tracing::info!("data dir already holds a cluster's state; --restore-from is not used");
        return Ok(());
    }
    if !node.config.join.is_empty() && !initialized {
        tracing::warn!(
            "--restore-from with --join: a joining member gets its data from the leader; not restoring"
        );
        return Ok(());
    }
    let manager = Manager::new(&cfg, &node.config.data_dir, node.config.backup_status_ttl)
        .with_context(|| format!("loading --restore-from {}", cfg.display()))?;
    let (manifest, db) = manager
        .fetch(None)
        .await
        .context("fetching the newest backup")?;
    tracing::info!(id = %manifest.id, storage = %manifest.storage, raft_index = manifest.raft_index, "restoring from backup");
    super::status_cache::write_atomic(&marker, manifest.id.as_bytes())
        .context("writing the restore marker")?;
    if !initialized {
        let members = std::collections::BTreeMap::from([(node.id, node.info.clone())]);
        node.raft
            .initialize(members)
            .await
            .context("bootstrapping the restored cluster")?;
    }
    let mut rx = node.raft.metrics();
    tokio::time::timeout(
        Duration::from_secs(30),
        rx.wait_for(|m| m.current_leader == Some(node.id)),
    )
    .await
    .context("this member did not become leader of the restored cluster within 30s")??;
    let resp = crate::loader::propose(node, &mut db.as_slice(), db.len() as u64)
        .await
        .context("proposing the backup image")?;
    if let Some(e) = resp.data.error {
        bail!("the backup image was refused: {e}");
    }
    let index = resp.log_id.index;
    node.raft
        .trigger()
        .snapshot()
        .await
        .context("triggering a snapshot")?;
    let mut rx = node.raft.metrics();
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
