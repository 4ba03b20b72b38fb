//! The snapshot store: full SQLite images in `<data>/snapshots`, each with a sidecar that holds
//! its Raft metadata and a CRC32 checksum, written crash-safely and verified before use.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{sync_dir, write_atomic};
use crate::SnapshotMeta;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sidecar {
    pub meta: SnapshotMeta,
    pub size: u64,
    pub crc32: u32,
}

pub struct SnapshotStore {
    dir: PathBuf,
}

impl SnapshotStore {
    pub fn open(dir: PathBuf) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        // Leftovers of an interrupted build or transfer are never valid snapshots.
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path
                .extension()
                .is_some_and(|e| e == "tmp" || e == "partial")
            {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(Self { dir })
    }

    /// A fresh path for a snapshot being built or received; it is not a snapshot until `commit`.
    pub fn temp_path(&self, tag: &str) -> PathBuf {
        self.dir
            .join(format!("{tag}-{}.partial", std::process::id()))
    }

    fn data_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.db"))
    }

    fn sidecar_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Makes the image at `temp` the current snapshot: fsync it, checksum it, rename it into
    /// place, write the sidecar last (its presence marks the snapshot complete), drop older ones.
    pub fn commit(&self, meta: &SnapshotMeta, temp: &Path) -> std::io::Result<()> {
        let (size, crc32) = checksum(temp)?;
        std::fs::File::open(temp)?.sync_all()?;
        let id = &meta.snapshot_id;
        std::fs::rename(temp, self.data_path(id))?;
        sync_dir(&self.dir)?;
        let sidecar = Sidecar {
            meta: meta.clone(),
            size,
            crc32,
        };
        write_atomic(&self.sidecar_path(id), &serde_json::to_vec(&sidecar)?)?;
        self.reap(id)
    }

    /// The newest complete snapshot, checksum verified.
    pub fn current(&self) -> std::io::Result<Option<(Sidecar, PathBuf)>> {
        let mut best: Option<Sidecar> = None;
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Ok(sc) = serde_json::from_slice::<Sidecar>(&bytes) else {
                tracing::warn!(path = %path.display(), "ignoring unreadable snapshot sidecar");
                continue;
            };
            if best
                .as_ref()
                .is_none_or(|b| sc.meta.last_log_id > b.meta.last_log_id)
            {
                best = Some(sc);
            }
        }
        let Some(sc) = best else { return Ok(None) };
        let path = self.data_path(&sc.meta.snapshot_id);
        let (size, crc) = checksum(&path)?;
        if size != sc.size || crc != sc.crc32 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "snapshot {} is corrupt: checksum mismatch (size {size}/{}, crc {crc:08x}/{:08x})",
                    path.display(),
                    sc.size,
                    sc.crc32
                ),
            ));
        }
        Ok(Some((sc, path)))
    }

    fn reap(&self, keep: &str) -> std::io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            let ext = path
                .extension()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            if stem != keep && (ext == "db" || ext == "json") {
                std::fs::remove_file(&path)?;
            }
        }
        sync_dir(&self.dir)
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
