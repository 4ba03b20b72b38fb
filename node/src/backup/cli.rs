//! The one-shot `backup push|list|restore` commands; each runs as a fresh process.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value as Json, json};

use super::archive::Target;
use super::image::Image;
use super::{Error, Manager, Result};
use crate::config::{BackupAction, BackupCommon};

fn manager(c: &BackupCommon) -> Result<Manager> {
    Manager::new(&c.config, &c.data_dir, c.status_ttl)
}

/// Runs one command and returns what it prints on stdout.
pub async fn run(action: BackupAction) -> Result<Json> {
    match action {
        BackupAction::Push(a) => {
            let m = manager(&a.common)?;
            let report = match &a.from_url {
                Some(url) => m.push(from_url(url).await?, &a.node_id).await?,
                None => {
                    m.push_db(&a.common.data_dir.join("db.sqlite"), &a.node_id)
                        .await?
                }
            };
            Ok(serde_json::to_value(report).unwrap_or_default())
        }
        BackupAction::List(c) => {
            let m = manager(&c)?;
            let list = m.list().await?;
            // How far point-in-time recovery reaches from the newest backup.
            let dir =
                super::archive::dir(list.first().and_then(|b| b.manifest.archive_id.as_deref()));
            let cat = m.catalog(&dir, false).await?;
            let archive = list.first().map(|newest| {
                let base = newest.manifest.raft_index;
                json!({
                    "segments": cat.segments.len(),
                    "first_index": cat.segments.keys().next().map(|(first, _)| first),
                    "from_backup": newest.manifest.id,
                    "reaches_index": cat.end_from(base),
                    "hole_before": cat.after_hole(base).map(|(first, _)| first),
                })
            });
            Ok(json!({ "backups": list, "archive": archive }))
        }
        BackupAction::Restore(a) => {
            let target = Target::from_args(a.to_time.as_deref(), a.to_index)?;
            let m = manager(&a.common)?;
            let (restored, db) = m.restore_to(a.id.as_deref(), target).await?;
            write_output(&a.output, &db)?;
            Ok(json!({"restored": restored, "output": a.output}))
        }
    }
}

fn write_output(path: &Path, db: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    super::status_cache::write_atomic(path, db)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// Takes the image from a running node's `/db/backup` (which already drops the meta table);
/// the Raft index comes from its `/status` just before, so it may trail the data slightly.
async fn from_url(url: &str) -> Result<Image> {
    let base = url.trim_end_matches('/');
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .map_err(|e| Error::Source(format!("building HTTP client: {e}")))?;
    let fail = |what: &str, e: reqwest::Error| Error::Source(format!("{what} from {base}: {e}"));
    let status: Json = client
        .get(format!("{base}/status"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| fail("reading /status", e))?
        .json()
        .await
        .map_err(|e| fail("parsing /status", e))?;
    let db = client
        .get(format!("{base}/db/backup"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| fail("downloading /db/backup", e))?
        .bytes()
        .await
        .map_err(|e| fail("downloading /db/backup", e))?;
    Ok(Image {
        db: db.to_vec(),
        raft_index: status["store"]["raft"]["applied_index"]
            .as_u64()
            .unwrap_or(0),
        raft_term: status["store"]["raft"]["term"].as_u64().unwrap_or(0),
    })
}
