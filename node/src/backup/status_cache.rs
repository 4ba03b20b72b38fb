//! The storage status cache: one JSON file in the data dir, shared by the node and by one-shot
//! `backup` commands, so a fresh process does not re-probe every storage.
//!
//! Freshness comes only from the timestamps inside the file (WAL-G measured it from the process
//! start, so a one-shot process never trusted and never wrote its cache). A missing file is
//! normal; a corrupt one is replaced after one warning. Every update is a read-modify-write under
//! an exclusive lock on a sidecar lock file, written to a temp file, fsynced and renamed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Error, Result};

pub const FILE_NAME: &str = "backup-storage-status.json";
const LOCK_NAME: &str = "backup-storage-status.lock";

/// The outcome of one alive check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Unix milliseconds when the check ran.
    pub at_ms: u64,
    pub alive: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Check {
    pub fn now(result: &Result<()>) -> Self {
        Self {
            at_ms: now_ms(),
            alive: result.is_ok(),
            error: result.as_ref().err().map(|e| super::chain(e)),
        }
    }

    /// Whether the check still holds `ttl` after it ran. A timestamp far in the future (clock
    /// jump, hand edit) is not trusted.
    pub fn fresh(&self, now_ms: u64, ttl: Duration) -> bool {
        let ttl = ttl.as_millis() as u64;
        now_ms + 60_000 >= self.at_ms && now_ms.saturating_sub(self.at_ms) < ttl
    }
}

/// Status of one storage, keyed in the file by name and config hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<Check>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<Check>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheFile {
    pub version: u32,
    pub storages: BTreeMap<String, Entry>,
}

impl CacheFile {
    /// Keeps, per check, whichever of ours and theirs is newer (another process may have written
    /// in between).
    fn merge(&mut self, ours: &CacheFile) {
        for (key, mine) in &ours.storages {
            let e = self.storages.entry(key.clone()).or_default();
            e.name.clone_from(&mine.name);
            for (slot, new) in [(&mut e.read, &mine.read), (&mut e.write, &mine.write)] {
                if let Some(new) = new
                    && slot.as_ref().is_none_or(|old| old.at_ms < new.at_ms)
                {
                    *slot = Some(new.clone());
                }
            }
        }
    }
}

pub use crate::command::now_ms;

/// Handle to the cache file of one data dir.
#[derive(Debug)]
pub struct StatusCache {
    path: PathBuf,
    lock_path: PathBuf,
    /// A corrupt file is reported once per process, then replaced at the next write.
    warned: AtomicBool,
}

impl StatusCache {
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(FILE_NAME),
            lock_path: dir.join(LOCK_NAME),
            warned: AtomicBool::new(false),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self, exclusive: bool) -> Result<File> {
        if let Some(dir) = self.lock_path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .read(true)
            .open(&self.lock_path)
            .map_err(|e| Error::io(format!("opening {}", self.lock_path.display()), e))?;
        let locked = if exclusive { f.lock() } else { f.lock_shared() };
        locked.map_err(|e| Error::io(format!("locking {}", self.lock_path.display()), e))?;
        Ok(f)
    }

    /// Reads the file as it is now. Never fails: a missing file is empty, a corrupt one is
    /// reported (once) and treated as empty.
    pub fn read(&self) -> CacheFile {
        let _guard = self.lock(false);
        self.read_unlocked()
    }

    fn read_unlocked(&self) -> CacheFile {
        let raw = match std::fs::read(&self.path) {
            Ok(raw) => raw,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return CacheFile::default(),
            Err(e) => {
                self.warn_once(&format!("cannot read it: {e}"));
                return CacheFile::default();
            }
        };
        match serde_json::from_slice::<CacheFile>(&raw) {
            Ok(f) if f.version == 1 => f,
            Ok(f) => {
                self.warn_once(&format!("unknown version {}", f.version));
                CacheFile::default()
            }
            Err(e) => {
                self.warn_once(&format!("not valid JSON: {e}"));
                CacheFile::default()
            }
        }
    }

    fn warn_once(&self, why: &str) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                path = %self.path.display(),
                reason = why,
                "storage status cache file is corrupt; replacing it (storages will be re-checked)"
            );
        }
    }

    /// Merges `ours` into the file under the exclusive lock and writes it atomically.
    pub fn record(&self, ours: &CacheFile) -> Result<()> {
        let _guard = self.lock(true)?;
        let mut current = self.read_unlocked();
        current.version = 1;
        current.merge(ours);
        let bytes = serde_json::to_vec_pretty(&current)
            .map_err(|e| Error::Internal(format!("serialising status cache: {e}")))?;
        write_atomic(&self.path, &bytes)
            .map_err(|e| Error::io(format!("writing {}", self.path.display()), e))
    }
}

/// temp (unique per process) + fsync + rename + directory fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lc-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn entry(at_ms: u64, alive: bool) -> CacheFile {
        let mut f = CacheFile::default();
        f.storages.insert(
            "p-1".into(),
            Entry {
                name: "p".into(),
                read: None,
                write: Some(Check {
                    at_ms,
                    alive,
                    error: None,
                }),
            },
        );
        f
    }

    #[test]
    fn missing_file_is_empty_and_created_on_record() {
        let d = tmpdir("missing");
        let c = StatusCache::new(&d);
        assert_eq!(c.read(), CacheFile::default());
        assert!(
            !c.warned.load(Ordering::Relaxed),
            "a missing file is not worth a warning"
        );
        c.record(&entry(5, true)).unwrap();
        assert!(d.join(FILE_NAME).exists());
        assert_eq!(
            StatusCache::new(&d).read().storages["p-1"]
                .write
                .as_ref()
                .unwrap()
                .at_ms,
            5
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn corrupt_file_warns_once_and_is_replaced() {
        let d = tmpdir("corrupt");
        std::fs::write(d.join(FILE_NAME), b"{not json").unwrap();
        let c = StatusCache::new(&d);
        assert_eq!(c.read(), CacheFile::default());
        assert!(c.warned.load(Ordering::Relaxed));
        c.record(&entry(7, false)).unwrap();
        let again = StatusCache::new(&d);
        assert_eq!(again.read().storages.len(), 1);
        assert!(!again.warned.load(Ordering::Relaxed));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn newer_checks_win_when_merging() {
        let d = tmpdir("merge");
        let c = StatusCache::new(&d);
        c.record(&entry(10, true)).unwrap();
        c.record(&entry(5, false)).unwrap();
        assert!(c.read().storages["p-1"].write.as_ref().unwrap().alive);
        c.record(&entry(20, false)).unwrap();
        assert!(!c.read().storages["p-1"].write.as_ref().unwrap().alive);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn freshness_is_measured_from_the_file_timestamp() {
        let ttl = Duration::from_secs(30);
        let c = Check {
            at_ms: 1_000_000,
            alive: true,
            error: None,
        };
        assert!(c.fresh(1_000_000 + 29_000, ttl));
        assert!(!c.fresh(1_000_000 + 31_000, ttl));
        assert!(
            !c.fresh(1_000_000 - 120_000, ttl),
            "far-future timestamps are not trusted"
        );
    }
}
