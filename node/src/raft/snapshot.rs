//! The snapshot store in `<data>/snapshots`: a chain of one full SQLite image followed by WAL
//! increments (the frames written since the previous snapshot), each with a sidecar holding its
//! Raft metadata and a CRC32, written crash-safely and verified before use.
//!
//! Files are numbered by sequence: `00000007.db` (full) or `00000008.wal` (incremental) plus
//! `00000008.json`. The sidecar is written last; a data file without one is not a snapshot.
//! Committing a full snapshot deletes the older chain. A follower that needs the database gets
//! the chain materialised into one image (base + each WAL replayed in order).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::health::Kind;
use super::{sync_dir, write_atomic};
use crate::SnapshotMeta;

/// Incrementals before the next snapshot is full again: bounds restore and transfer work.
pub const MAX_CHAIN: usize = 32;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sidecar {
    pub meta: SnapshotMeta,
    pub kind: Kind,
    pub seq: u64,
    pub size: u64,
    pub crc32: u32,
}

pub struct SnapshotStore {
    dir: PathBuf,
    /// Serialises commits (which reap) against materialisation (which reads the chain).
    lock: Mutex<()>,
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

impl SnapshotStore {
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let store = Self {
            dir,
            lock: Mutex::new(()),
        };
        // Leftovers of an interrupted build, transfer or materialisation are never snapshots.
        for entry in std::fs::read_dir(&store.dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if name.ends_with(".partial")
                || name.ends_with(".tmp")
                || name.starts_with("materialized")
            {
                std::fs::remove_file(&path)?;
            }
        }
        // Data files whose sidecar never got written.
        let known: Vec<u64> = store.sidecars()?.iter().map(|s| s.seq).collect();
        for entry in std::fs::read_dir(&store.dir)? {
            let path = entry?.path();
            let seq = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok());
            if let Some(seq) = seq
                && !known.contains(&seq)
            {
                tracing::warn!(path = %path.display(), "removing snapshot data without a sidecar (interrupted snapshot)");
                std::fs::remove_file(&path)?;
            }
        }
        sync_dir(&store.dir)?;
        Ok(store)
    }

    /// A fresh path for a snapshot being built or received; it is not a snapshot until `commit`.
    pub fn temp_path(&self, tag: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        self.dir.join(format!(
            "{tag}-{}-{}.partial",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ))
    }

    fn data_path(&self, seq: u64, kind: Kind) -> PathBuf {
        let ext = if kind == Kind::Full { "db" } else { "wal" };
        self.dir.join(format!("{seq:08}.{ext}"))
    }

    fn sidecars(&self) -> std::io::Result<Vec<Sidecar>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Sidecar>(&b).map_err(|e| e.to_string()))
            {
                Ok(sc) => out.push(sc),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable snapshot sidecar")
                }
            }
        }
        out.sort_by_key(|s| s.seq);
        Ok(out)
    }

    /// Makes the file at `temp` the newest snapshot: fsync, checksum, rename into place, write
    /// the sidecar, and after a full snapshot delete the older chain.
    pub fn commit(&self, meta: &SnapshotMeta, kind: Kind, temp: &Path) -> std::io::Result<Sidecar> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let (size, crc32) = checksum(temp)?;
        std::fs::File::open(temp)?.sync_all()?;
        let seq = self.sidecars()?.last().map_or(1, |s| s.seq + 1);
        crate::failpoint("snapshot-before-rename");
        std::fs::rename(temp, self.data_path(seq, kind))?;
        sync_dir(&self.dir)?;
        crate::failpoint("snapshot-before-sidecar");
        let sidecar = Sidecar {
            meta: meta.clone(),
            kind,
            seq,
            size,
            crc32,
        };
        write_atomic(
            &self.dir.join(format!("{seq:08}.json")),
            &serde_json::to_vec(&sidecar)?,
        )?;
        if kind == Kind::Full {
            self.reap_before(seq)?;
        }
        Ok(sidecar)
    }

    fn reap_before(&self, seq: u64) -> std::io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let old = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok())
                .is_some_and(|s| s < seq);
            if old {
                std::fs::remove_file(&path)?;
            }
        }
        sync_dir(&self.dir)
    }

    /// The current chain, oldest first: a full snapshot and the increments after it.
    pub fn chain(&self) -> std::io::Result<Vec<(Sidecar, PathBuf)>> {
        let all = self.sidecars()?;
        let Some(base) = all.iter().rposition(|s| s.kind == Kind::Full) else {
            return Ok(Vec::new());
        };
        Ok(all[base..]
            .iter()
            .map(|s| (s.clone(), self.data_path(s.seq, s.kind)))
            .collect())
    }

    /// The newest snapshot's sidecar, without touching data files.
    pub fn latest(&self) -> std::io::Result<Option<Sidecar>> {
        Ok(self.chain()?.pop().map(|(s, _)| s))
    }

    /// Writes the whole database at the newest snapshot to `dest`, verifying every checksum.
    pub fn materialize(&self, dest: &Path) -> std::io::Result<Option<SnapshotMeta>> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let chain = self.chain()?;
        let Some((last, _)) = chain.last() else {
            return Ok(None);
        };
        let meta = last.meta.clone();
        for (sc, path) in &chain {
            let (size, crc) = checksum(path)?;
            if size != sc.size || crc != sc.crc32 {
                return Err(invalid(format!(
                    "snapshot {} is corrupt: checksum mismatch (size {size}/{}, crc {crc:08x}/{:08x})",
                    path.display(),
                    sc.size,
                    sc.crc32
                )));
            }
        }
        let mut wal = dest.as_os_str().to_owned();
        wal.push("-wal");
        let wal = PathBuf::from(wal);
        std::fs::copy(&chain[0].1, dest)?;
        for (_, path) in &chain[1..] {
            std::fs::copy(path, &wal)?;
            let conn = rusqlite::Connection::open(dest)
                .map_err(|e| invalid(format!("replaying {}: {e}", path.display())))?;
            let cp = crate::sqlite::checkpoint::truncate(&conn, std::time::Duration::from_secs(5))
                .map_err(|e| invalid(format!("replaying {}: {e}", path.display())))?;
            if cp.outcome() != crate::sqlite::checkpoint::Outcome::Complete {
                return Err(invalid(format!(
                    "replaying {}: {}",
                    path.display(),
                    cp.describe()
                )));
            }
            drop(conn);
        }
        let _ = std::fs::remove_file(&wal);
        // A replayed image must not be left in WAL mode with side files the receiver lacks.
        let conn = rusqlite::Connection::open(dest).map_err(|e| invalid(e.to_string()))?;
        conn.pragma_update(None, "journal_mode", "DELETE")
            .map_err(|e| invalid(e.to_string()))?;
        drop(conn);
        std::fs::File::open(dest)?.sync_all()?;
        Ok(Some(meta))
    }
}

pub fn checksum(path: &Path) -> std::io::Result<(u64, u32)> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hasher.finalize()))
}
