//! The manifest stored beside each backup object, and the object names of a backup.

use serde::{Deserialize, Serialize};

pub const DIR: &str = "backups";
pub const MANIFEST: &str = "manifest.json";
pub const OBJECT: &str = "db.sqlite.gz";

/// Describes one backup. Written after the data object, so a backup without a manifest is an
/// interrupted upload and is ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub created_at: String,
    pub created_at_ms: u64,
    /// Raft applied index (and its term) the copy was taken at.
    pub raft_index: u64,
    pub raft_term: u64,
    pub node_id: String,
    pub node_version: String,
    /// The storage it was written to.
    pub storage: String,
    pub compression: String,
    pub object: String,
    /// Size and SHA-256 of the stored (compressed) object.
    pub size: u64,
    pub sha256: String,
    /// Size and SHA-256 of the SQLite file inside.
    pub db_size: u64,
    pub db_sha256: String,
    /// The archive (`archive_id` of the config) this backup starts; its segments continue it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_id: Option<String>,
}

impl Manifest {
    pub fn object_name(&self) -> String {
        format!("{DIR}/{}/{}", self.id, self.object)
    }

    pub fn manifest_name(id: &str) -> String {
        format!("{DIR}/{id}/{MANIFEST}")
    }

    /// Newer backups sort greater: by creation time, then by Raft index.
    pub fn order_key(&self) -> (u64, u64, &str) {
        (self.created_at_ms, self.raft_index, &self.id)
    }
}

/// A sortable backup id: `20260102T030405.678Z-i42`.
pub fn new_id(created_at_ms: u64, raft_index: u64) -> String {
    let t = crate::sqlite::rewrite::rfc3339((created_at_ms / 1000) as i64, 0);
    let compact: String = t
        .trim_end_matches('Z')
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    format!("{compact}.{:03}Z-i{raft_index}", created_at_ms % 1000)
}

/// The backup id in an object name `backups/<id>/manifest.json`.
pub fn id_of_manifest(name: &str) -> Option<&str> {
    let rest = name.strip_prefix(DIR)?.strip_prefix('/')?;
    let (id, file) = rest.split_once('/')?;
    (file == MANIFEST).then_some(id)
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time() {
        let a = new_id(1_767_323_045_678, 42);
        assert_eq!(a, "20260102T030405.678Z-i42");
        assert!(new_id(1_767_323_045_679, 1) > a);
        assert_eq!(
            id_of_manifest(&Manifest::manifest_name(&a)),
            Some(a.as_str())
        );
        assert_eq!(id_of_manifest("backups/x/db.sqlite.gz"), None);
    }
}
