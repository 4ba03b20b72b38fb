//! Backups to object storage with ordered failover storages (see `DESIGN.md` beside this file).

pub mod archive;
pub mod auto;
pub mod cli;
pub mod config;
pub mod failover;
pub mod image;
pub mod manifest;
pub mod restore;
pub mod status_cache;
pub mod storage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value as Json, json};

use config::BackupConfig;
use image::Image;
use manifest::Manifest;
use status_cache::{Check, StatusCache, now_ms};
use storage::Storage;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("backup config {}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },
    #[error("storage {storage}: credentials: {what}")]
    Credential { storage: String, what: String },
    #[error(
        "storage {storage}: this build has no {feature} support; rebuild litecluster-node with `--features {feature}` or use another storage type"
    )]
    NotBuilt {
        storage: String,
        feature: &'static str,
    },
    #[error("storage {storage}: {op} failed")]
    Storage {
        storage: String,
        op: &'static str,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("storage {storage}: {op} timed out after {after:?}")]
    Timeout {
        storage: String,
        op: &'static str,
        after: Duration,
    },
    #[error(
        "no {mode} storage ({tried}); check that the storages are up and the credentials are right, then retry"
    )]
    NoStorage { mode: &'static str, tried: String },
    #[error(
        "no backups found in storages {storages}; push one first (`litecluster-node backup push`)"
    )]
    NoBackups { storages: String },
    #[error(
        "backup {id} not found in any readable storage; `litecluster-node backup list` shows what exists"
    )]
    NotFound { id: String },
    #[error(
        "backup {id} on storage {storage} is corrupt: {reason}; refusing to restore it (choose another with --id; `backup list` shows them)"
    )]
    Corrupt {
        id: String,
        storage: String,
        reason: String,
    },
    #[error(
        "archive segment {name} on storage {storage} is corrupt: {reason}; refusing to replay past it (restore to a point before it with --to-index {before}, or the backup alone with --id)"
    )]
    CorruptSegment {
        name: String,
        storage: String,
        reason: String,
        before: u64,
    },
    #[error("backup source: {0}")]
    Source(String),
    #[error("sqlite")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Whether the same operation may succeed later without anyone changing anything.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            Self::Storage { .. } | Self::Timeout { .. } | Self::NoStorage { .. }
        )
    }

    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Config { .. } => "config",
            Self::Credential { .. } => "credential",
            Self::NotBuilt { .. } => "not_built",
            Self::Storage { .. } => "storage",
            Self::Timeout { .. } => "timeout",
            Self::NoStorage { .. } => "no_storage",
            Self::NoBackups { .. } => "no_backups",
            Self::NotFound { .. } => "not_found",
            Self::Corrupt { .. } => "corrupt",
            Self::CorruptSegment { .. } => "corrupt_segment",
            Self::Source(_) => "source",
            Self::Sqlite(_) => "sqlite",
            Self::Io { .. } => "io",
            Self::Internal(_) => "internal",
        }
    }
}

/// The error with its causes, `: `-separated, for logs, JSON and the status cache.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        // Some errors (object_store's) already print their source; don't repeat it.
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

/// What one push did; also the output of `backup push` and `POST /backup`.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    pub id: String,
    pub storage: String,
    pub raft_index: u64,
    pub size: u64,
    pub db_size: u64,
    pub sha256: String,
    pub created_at: String,
    pub took_ms: u64,
    /// True when a storage before `storage` in the config was passed over.
    pub failover: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Backups deleted by retention on `storage`.
    pub deleted: Vec<String>,
}

/// A backup found while listing.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub manifest: Manifest,
    /// Storage the backup was found in (its manifest names where it was first written).
    pub found_in: String,
}

/// Where [`Manager::write_first`] wrote, and the note when it passed a storage over.
pub(crate) struct Written<T> {
    pub index: usize,
    pub value: T,
    pub note: Option<String>,
}

#[derive(Default)]
struct State {
    last_success: Option<PushReport>,
    last_failure: Option<Json>,
    last_index: Option<u64>,
}

#[derive(Default)]
struct Counters {
    pushes: AtomicU64,
    failures: AtomicU64,
    failovers: AtomicU64,
    skipped: AtomicU64,
    bytes: AtomicU64,
}

/// Backup machinery for one config file and one data dir (the status cache lives there).
pub struct Manager {
    pub config: BackupConfig,
    pub config_path: PathBuf,
    pub storages: Vec<Storage>,
    pub cache: StatusCache,
    pub ttl: Duration,
    scratch: PathBuf,
    push_lock: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    archive: Mutex<archive::ArchiveState>,
    counters: Counters,
}

impl Manager {
    pub fn new(config_path: &Path, data_dir: &Path, ttl: Duration) -> Result<Self> {
        let config = BackupConfig::load(config_path)?;
        let storages = config
            .storages
            .iter()
            .map(|s| Storage::open(s, config.probe_timeout, config.transfer_timeout))
            .collect::<Result<Vec<_>>>()?;
        std::fs::create_dir_all(data_dir)
            .map_err(|e| Error::io(format!("creating data dir {}", data_dir.display()), e))?;
        Ok(Self {
            config,
            config_path: config_path.to_owned(),
            storages,
            cache: StatusCache::new(data_dir),
            ttl,
            scratch: data_dir.to_owned(),
            push_lock: tokio::sync::Mutex::new(()),
            state: Mutex::new(State::default()),
            archive: Mutex::default(),
            counters: Counters::default(),
        })
    }

    /// The manager of a node started with `--backup-config`, if any.
    pub fn for_node(config: &crate::config::NodeConfig) -> Result<Option<Arc<Self>>> {
        let Some(path) = config.backup_config.as_deref() else {
            return Ok(None);
        };
        let mut m = Self::new(path, &config.data_dir, config.backup_status_ttl)?;
        if let Some(every) = config.archive_interval {
            m.config.archive_interval = (!every.is_zero()).then_some(every);
        }
        if let Some(id) = &config.archive_id {
            config::check_archive_id(id).map_err(|msg| Error::Config {
                path: path.to_owned(),
                msg: format!("--archive-id: {msg}"),
            })?;
            m.config.archive_id = Some(id.clone());
        }
        Ok(Some(Arc::new(m)))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn archive(&self) -> std::sync::MutexGuard<'_, archive::ArchiveState> {
        self.archive.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applied index of the last successful push by this process.
    pub fn last_index(&self) -> Option<u64> {
        self.state().last_index
    }

    pub fn count_skip(&self) {
        self.counters.skipped.fetch_add(1, Relaxed);
    }

    /// Copies the database at `db` and pushes it.
    pub async fn push_db(&self, db: &Path, node_id: &str) -> Result<PushReport> {
        let (db, scratch) = (db.to_owned(), self.scratch.clone());
        let image = tokio::task::spawn_blocking(move || image::from_db(&db, &scratch))
            .await
            .map_err(|e| Error::Internal(format!("backup copy task failed: {e}")))?;
        match image {
            Ok(image) => self.push(image, node_id).await,
            Err(e) => {
                self.failed(&e);
                Err(e)
            }
        }
    }

    fn failed(&self, e: &Error) {
        self.counters.failures.fetch_add(1, Relaxed);
        let msg = chain(e);
        tracing::error!(error = %msg, kind = e.metric_label(), "backup failed");
        self.state().last_failure = Some(json!({
            "at": rfc3339_ms(now_ms()), "error": msg, "kind": e.metric_label(),
        }));
    }

    /// Compresses `image` and writes it to the first writable storage, then applies retention
    /// there. A storage that fails the upload is marked dead and the next one is tried.
    pub async fn push(&self, image: Image, node_id: &str) -> Result<PushReport> {
        let _one_at_a_time = self.push_lock.lock().await;
        let result = self.push_locked(image, node_id).await;
        match &result {
            Ok(r) => {
                self.counters.pushes.fetch_add(1, Relaxed);
                self.counters.bytes.fetch_add(r.size, Relaxed);
                if r.failover {
                    self.counters.failovers.fetch_add(1, Relaxed);
                }
                let mut st = self.state();
                st.last_index = Some(r.raft_index);
                st.last_success = Some(r.clone());
            }
            Err(e) => self.failed(e),
        }
        result
    }

    async fn push_locked(&self, image: Image, node_id: &str) -> Result<PushReport> {
        let started = Instant::now();
        let created_at_ms = now_ms();
        let id = manifest::new_id(created_at_ms, image.raft_index);
        let level = self.config.compression_level;
        let (raft_index, raft_term, db_size) =
            (image.raft_index, image.raft_term, image.db.len() as u64);
        let (object, db_sha256) = tokio::task::spawn_blocking(move || {
            let sum = manifest::sha256_hex(&image.db);
            image::compress(&image.db, level).map(|gz| (Bytes::from(gz), sum))
        })
        .await
        .map_err(|e| Error::Internal(format!("compression task failed: {e}")))??;
        let written = self
            .write_first("backup", |s| {
                let m = Manifest {
                    format: 1,
                    id: id.clone(),
                    created_at: rfc3339_ms(created_at_ms),
                    created_at_ms,
                    raft_index,
                    raft_term,
                    node_id: node_id.to_owned(),
                    node_version: env!("CARGO_PKG_VERSION").to_owned(),
                    storage: s.name().to_owned(),
                    compression: "gzip".into(),
                    object: manifest::OBJECT.into(),
                    size: object.len() as u64,
                    sha256: manifest::sha256_hex(&object),
                    db_size,
                    db_sha256: db_sha256.clone(),
                    archive_id: self.config.archive_id.clone(),
                };
                let body = Bytes::from(serde_json::to_vec_pretty(&m).unwrap_or_default());
                // The manifest last: a backup without one is an interrupted upload.
                (
                    vec![
                        (m.object_name(), object.clone()),
                        (Manifest::manifest_name(&m.id), body),
                    ],
                    m,
                )
            })
            .await?;
        let (index, manifest, note) = (written.index, written.value, written.note);
        let s = &self.storages[index];
        let deleted = match self.apply_retention(index, &manifest.id).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(storage = s.name(), error = %chain(&e), "retention failed; old backups were kept");
                Vec::new()
            }
        };
        if !deleted.is_empty() {
            match self.prune_archive().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    segments = n,
                    "archive segments no kept backup needs were deleted"
                ),
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "pruning the archive failed; old segments were kept")
                }
            }
        }
        let report = PushReport {
            id: manifest.id.clone(),
            storage: s.name().to_owned(),
            raft_index,
            size: manifest.size,
            db_size,
            sha256: manifest.sha256.clone(),
            created_at: manifest.created_at.clone(),
            took_ms: started.elapsed().as_millis() as u64,
            failover: note.is_some(),
            note,
            deleted,
        };
        tracing::info!(id = %report.id, storage = %report.storage, raft_index, size = report.size, took_ms = report.took_ms, "backup pushed");
        Ok(report)
    }

    /// Writes objects, in order, to the first writable storage; a storage whose upload fails is
    /// recorded dead and the next one is tried. `make` builds the objects (and a value
    /// returned with them) for the chosen storage.
    pub(crate) async fn write_first<T>(
        &self,
        what: &str,
        make: impl Fn(&Storage) -> (Vec<(String, Bytes)>, T),
    ) -> Result<Written<T>> {
        let mut exclude = Vec::new();
        let mut passed_over: Vec<(String, String)> = Vec::new();
        loop {
            let choice = failover::writable(&self.storages, &self.cache, self.ttl, &exclude).await;
            let choice = match choice {
                Ok(c) => c,
                Err(Error::NoStorage { mode, tried }) => {
                    // Name the storages whose upload failed as well as the ones probed dead.
                    let mut all: Vec<String> = passed_over
                        .iter()
                        .map(|(n, w)| format!("{n}: {w}"))
                        .collect();
                    if !tried.is_empty() {
                        all.push(tried);
                    }
                    return Err(Error::NoStorage {
                        mode,
                        tried: all.join("; "),
                    });
                }
                Err(e) => return Err(e),
            };
            passed_over.extend(choice.passed_over);
            let s = &self.storages[choice.index];
            let (objects, value) = make(s);
            let uploaded = async {
                for (name, bytes) in objects {
                    s.put(&name, bytes).await?;
                }
                Ok::<(), Error>(())
            }
            .await;
            let check = Check::now(
                &uploaded
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| Error::Internal(chain(e))),
            );
            failover::record(&self.cache, &[(s, None, Some(check))]);
            match uploaded {
                Ok(()) => {
                    let note = passed_over.first().map(|(first, why)| {
                        tracing::warn!(storage = s.name(), passed_over = %first, reason = %why, "{what} written to a failover storage");
                        format!(
                            "storage {first:?} is not writable ({why}); {what} written to failover storage {:?}",
                            s.name()
                        )
                    });
                    return Ok(Written {
                        index: choice.index,
                        value,
                        note,
                    });
                }
                Err(e) => {
                    let msg = chain(&e);
                    tracing::warn!(storage = s.name(), error = %msg, "{what} upload failed; trying the next storage");
                    passed_over.push((s.name().to_owned(), msg));
                    exclude.push(choice.index);
                }
            }
        }
    }

    /// Manifests on one storage, newest first. Unreadable manifests are skipped with a warning.
    async fn manifests(&self, i: usize) -> Result<Vec<Manifest>> {
        self.manifests_from(i, false).await
    }

    /// As [`Self::manifests`], but a manifest that cannot be read (as opposed to one that is
    /// not valid) is an error: for pruning, where a missed backup would lose what it needs.
    pub(crate) async fn manifests_strict(&self, i: usize) -> Result<Vec<Manifest>> {
        self.manifests_from(i, true).await
    }

    async fn manifests_from(&self, i: usize, strict: bool) -> Result<Vec<Manifest>> {
        let s = &self.storages[i];
        let names = s.list(manifest::DIR).await?;
        let ids: Vec<String> = names
            .iter()
            .filter_map(|n| manifest::id_of_manifest(n).map(str::to_owned))
            .collect();
        let read: Vec<Result<Option<Manifest>>> = futures::stream::iter(ids)
            .map(|id| async move {
                let name = Manifest::manifest_name(&id);
                match s.get(&name).await.map(|b| serde_json::from_slice::<Manifest>(&b)) {
                    Ok(Ok(m)) if m.id == id => Ok(Some(m)),
                    Ok(Ok(_)) | Ok(Err(_)) => {
                        tracing::warn!(storage = s.name(), backup = %id, "manifest is not valid; ignoring that backup");
                        Ok(None)
                    }
                    Err(e) if strict => Err(e),
                    Err(e) => {
                        tracing::warn!(storage = s.name(), backup = %id, error = %chain(&e), "cannot read manifest; ignoring that backup");
                        Ok(None)
                    }
                }
            })
            .buffer_unordered(8)
            .collect()
            .await;
        let mut found = Vec::new();
        for m in read {
            found.extend(m?);
        }
        found.sort_by(|a, b| b.order_key().cmp(&a.order_key()));
        Ok(found)
    }

    /// Backups across every readable storage, newest first.
    pub async fn list(&self) -> Result<Vec<Listed>> {
        self.list_from(false).await
    }

    /// As [`Self::list`], but a readable storage whose listing then fails is an error rather
    /// than skipped: for callers to whom "no backup" means "take one".
    pub async fn list_strict(&self) -> Result<Vec<Listed>> {
        self.list_from(true).await
    }

    async fn list_from(&self, strict: bool) -> Result<Vec<Listed>> {
        let readable = failover::readable(&self.storages, &self.cache, self.ttl).await?;
        let mut all = Vec::new();
        for i in readable {
            match self.manifests_from(i, strict).await {
                Ok(ms) => all.extend(ms.into_iter().map(|m| Listed {
                    manifest: m,
                    found_in: self.storages[i].name().to_owned(),
                })),
                Err(e) => {
                    tracing::warn!(storage = self.storages[i].name(), error = %chain(&e), "cannot list backups");
                    let check = Check::now(&Err(Error::Internal(chain(&e))));
                    failover::record(&self.cache, &[(&self.storages[i], Some(check), None)]);
                    if strict {
                        return Err(e);
                    }
                }
            }
        }
        all.sort_by(|a, b| b.manifest.order_key().cmp(&a.manifest.order_key()));
        Ok(all)
    }

    /// Downloads a listed backup and verifies it against its manifest.
    async fn download(&self, chosen: &Listed) -> Result<(Manifest, Vec<u8>)> {
        let s = self
            .storages
            .iter()
            .find(|s| s.name() == chosen.found_in)
            .ok_or_else(|| Error::Internal("listed storage vanished".into()))?;
        let object = s.get(&chosen.manifest.object_name()).await?;
        let m = chosen.manifest.clone();
        let scratch = self.scratch.clone();
        let m2 = m.clone();
        let db = tokio::task::spawn_blocking(move || image::verify(&m2, &object, &scratch))
            .await
            .map_err(|e| Error::Internal(format!("verify task failed: {e}")))??;
        tracing::info!(id = %m.id, storage = %s.name(), raft_index = m.raft_index, "backup downloaded and verified");
        Ok((m, db))
    }

    /// Deletes what the retention of storage `i` no longer keeps; `keep_id` and the newest
    /// backup always stay.
    async fn apply_retention(&self, i: usize, keep_id: &str) -> Result<Vec<String>> {
        let r = self.config.retention_for(i).clone();
        if r.keep.is_none() && r.max_age.is_none() {
            return Ok(Vec::new());
        }
        let s = &self.storages[i];
        let now = now_ms();
        let mut deleted = Vec::new();
        for (pos, m) in self.manifests(i).await?.into_iter().enumerate() {
            if pos == 0 || m.id == keep_id {
                continue;
            }
            let too_many = r.keep.is_some_and(|k| pos >= k.max(1));
            let too_old = r
                .max_age
                .is_some_and(|age| now.saturating_sub(m.created_at_ms) > age.as_millis() as u64);
            if too_many || too_old {
                // Manifest first: a half-deleted backup is then ignored, never half-restored.
                s.delete(&Manifest::manifest_name(&m.id)).await?;
                s.delete(&m.object_name()).await?;
                tracing::info!(storage = s.name(), backup = %m.id, too_many, too_old, "old backup deleted by retention");
                deleted.push(m.id);
            }
        }
        Ok(deleted)
    }

    /// The `backup` section of `GET /status`.
    pub fn status_json(&self) -> Json {
        let file = self.cache.read();
        let now = now_ms();
        let storages: Vec<Json> = self
            .storages
            .iter()
            .map(|s| {
                let e = file.storages.get(&s.key);
                let show = |c: Option<&Check>| {
                    c.map(|c| json!({"alive": c.alive, "at": rfc3339_ms(c.at_ms), "fresh": c.fresh(now, self.ttl), "error": c.error}))
                };
                json!({
                    "name": s.name(), "key": s.key, "location": s.config.location(),
                    "read": show(e.and_then(|e| e.read.as_ref())),
                    "write": show(e.and_then(|e| e.write.as_ref())),
                })
            })
            .collect();
        let st = self.state();
        json!({
            "enabled": true,
            "config": self.config_path,
            "interval": self.config.interval.map(|d| format!("{}s", d.as_secs())),
            "status_ttl_ms": self.ttl.as_millis() as u64,
            "last_success": st.last_success,
            "last_failure": st.last_failure,
            "last_index": st.last_index,
            "pushes": self.counters.pushes.load(Relaxed),
            "failures": self.counters.failures.load(Relaxed),
            "failovers": self.counters.failovers.load(Relaxed),
            "skipped": self.counters.skipped.load(Relaxed),
            "storages": storages,
            "archive": self.archive_json(),
        })
    }

    /// Prometheus text for `GET /metrics`.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for (name, help, v) in [
            (
                "litecluster_backup_pushes_total",
                "Backups written to a storage.",
                &self.counters.pushes,
            ),
            (
                "litecluster_backup_failures_total",
                "Backups that failed.",
                &self.counters.failures,
            ),
            (
                "litecluster_backup_failovers_total",
                "Backups written to a failover storage.",
                &self.counters.failovers,
            ),
            (
                "litecluster_backup_skipped_total",
                "Interval backups skipped because nothing changed.",
                &self.counters.skipped,
            ),
            (
                "litecluster_backup_bytes_total",
                "Compressed bytes uploaded.",
                &self.counters.bytes,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        let st = self.state();
        let last = st.last_success.as_ref();
        let _ = writeln!(
            out,
            "# HELP litecluster_backup_last_success_index Raft index of the last successful backup.\n# TYPE litecluster_backup_last_success_index gauge\nlitecluster_backup_last_success_index {}",
            last.map_or(0, |r| r.raft_index)
        );
        drop(st);
        self.archive_metrics(&mut out);
        let file = self.cache.read();
        let _ = writeln!(
            out,
            "# HELP litecluster_backup_storage_alive 1 if the storage passed its last alive check.\n# TYPE litecluster_backup_storage_alive gauge"
        );
        for s in &self.storages {
            let e = file.storages.get(&s.key);
            for (mode, c) in [
                ("read", e.and_then(|e| e.read.as_ref())),
                ("write", e.and_then(|e| e.write.as_ref())),
            ] {
                if let Some(c) = c {
                    let _ = writeln!(
                        out,
                        "litecluster_backup_storage_alive{{storage=\"{}\",mode=\"{mode}\"}} {}",
                        s.name(),
                        u8::from(c.alive)
                    );
                }
            }
        }
        out
    }
}

pub fn rfc3339_ms(ms: u64) -> String {
    crate::sqlite::rewrite::rfc3339((ms / 1000) as i64, (ms % 1000) as u32)
}

/// The `backup` section of `GET /status`.
pub fn status_json(manager: Option<&Manager>) -> Json {
    match manager {
        Some(m) => m.status_json(),
        None => json!({"enabled": false}),
    }
}
