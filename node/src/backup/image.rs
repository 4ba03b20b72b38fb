//! Making and checking backup images: a consistent SQLite copy with its Raft index, gzip
//! compression, and verification against the manifest before anything is restored.

use std::io::{Read, Write};
use std::path::Path;

use super::manifest::{Manifest, sha256_hex};
use super::{Error, Result};

const SQLITE_HEADER: &[u8] = b"SQLite format 3\0";

/// A plain SQLite database file and the Raft position it reflects.
pub struct Image {
    pub db: Vec<u8>,
    pub raft_index: u64,
    pub raft_term: u64,
}

fn scratch(dir: &Path, what: &str) -> std::path::PathBuf {
    dir.join(format!(
        ".backup-{what}-{}-{:08x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// Copies the database at `db` with SQLite's online backup API from a read-only connection
/// (safe while a node writes it), reads the applied index recorded inside the copy (so it
/// matches the data exactly), then drops our bookkeeping table so the copy is a plain database.
pub fn from_db(db: &Path, scratch_dir: &Path) -> Result<Image> {
    if !db.exists() {
        return Err(Error::Source(format!(
            "no database at {}: point --data-dir at a node's data directory",
            db.display()
        )));
    }
    let tmp = scratch(scratch_dir, "copy");
    // A copy taken while a batch entry is committed part way (a statement rolled the apply
    // transaction back; `partial` names the requests done) holds some of entry `applied + 1`:
    // replaying the archive onto it would apply those twice. The state lasts one apply call,
    // so such a copy is taken again.
    let mut attempts = 0;
    let result = loop {
        let copied = copy_once(db, &tmp);
        match copied {
            Ok(None) if attempts < 200 => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok(None) => {
                break Err(Error::Source(
                    "the database stayed part way through a batch for 2 s; retry the backup".into(),
                ));
            }
            Ok(Some(image)) => break Ok(image),
            Err(e) => break Err(e),
        }
    };
    let _ = std::fs::remove_file(&tmp);
    result
}

/// One copy of `db` into `tmp`; `None` when it caught a batch committed part way.
fn copy_once(db: &Path, tmp: &Path) -> Result<Option<Image>> {
    let src = crate::sqlite::open_reader(db)?;
    src.backup(
        rusqlite::MAIN_DB,
        tmp,
        None::<fn(rusqlite::backup::Progress)>,
    )?;
    drop(src);
    let copy = rusqlite::Connection::open(tmp)?;
    copy.pragma_update(None, "journal_mode", "DELETE")?;
    // A database last written by an earlier version keeps its progress in the legacy table.
    crate::sqlite::ensure_meta(&copy)?;
    let meta = |key: &str| crate::sqlite::read_meta(&copy, key).ok().flatten();
    let partial = meta("partial").filter(|p| p != "null");
    if partial.is_some() {
        return Ok(None);
    }
    let applied: Option<crate::LogId> = meta("applied")
        .and_then(|s| serde_json::from_str::<Option<crate::LogId>>(&s).ok())
        .flatten();
    crate::sqlite::clear_meta(&copy)?;
    drop(copy);
    let bytes = std::fs::read(tmp).map_err(|e| Error::io("reading the database copy", e))?;
    Ok(Some(Image {
        db: bytes,
        raft_index: applied.map_or(0, |l| l.index),
        raft_term: applied.map_or(0, |l| l.leader_id.term),
    }))
}

pub fn compress(db: &[u8], level: u32) -> Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(db.len() / 3),
        flate2::Compression::new(level),
    );
    enc.write_all(db)
        .map_err(|e| Error::io("compressing backup", e))?;
    enc.finish().map_err(|e| Error::io("compressing backup", e))
}

/// Checks a downloaded object against its manifest, decompresses it and checks the database
/// inside (checksum, header, `PRAGMA integrity_check`). Any mismatch is `Error::Corrupt`.
pub fn verify(m: &Manifest, object: &[u8], scratch_dir: &Path) -> Result<Vec<u8>> {
    let corrupt = |reason: String| Error::Corrupt {
        id: m.id.clone(),
        storage: m.storage.clone(),
        reason,
    };
    if object.len() as u64 != m.size {
        return Err(corrupt(format!(
            "object is {} bytes, the manifest says {}",
            object.len(),
            m.size
        )));
    }
    let sum = sha256_hex(object);
    if sum != m.sha256 {
        return Err(corrupt(format!(
            "object checksum {sum} does not match the manifest's {}",
            m.sha256
        )));
    }
    if m.compression != "gzip" {
        return Err(corrupt(format!("unknown compression {:?}", m.compression)));
    }
    let mut db = Vec::with_capacity(m.db_size as usize);
    flate2::read::GzDecoder::new(object)
        .read_to_end(&mut db)
        .map_err(|e| corrupt(format!("cannot decompress: {e}")))?;
    let sum = sha256_hex(&db);
    if sum != m.db_sha256 {
        return Err(corrupt(format!(
            "database checksum {sum} does not match the manifest's {}",
            m.db_sha256
        )));
    }
    check_sqlite(&db, scratch_dir).map_err(corrupt)?;
    Ok(db)
}

/// A SQLite file that passes `PRAGMA integrity_check`.
pub fn check_sqlite(db: &[u8], scratch_dir: &Path) -> Result<(), String> {
    if !db.starts_with(SQLITE_HEADER) {
        return Err("not a SQLite database".into());
    }
    let tmp = scratch(scratch_dir, "verify");
    let result = (|| -> Result<(), String> {
        std::fs::write(&tmp, db).map_err(|e| format!("writing a temp copy: {e}"))?;
        let conn =
            rusqlite::Connection::open_with_flags(&tmp, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|e| e.to_string())?;
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| format!("integrity check failed: {e}"))?;
        if check != "ok" {
            return Err(format!("integrity check failed: {check}"));
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_caught_part_way_through_a_batch_is_taken_again() {
        let dir = std::env::temp_dir().join(format!("lc-image-partial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("db.sqlite");
        let conn = crate::sqlite::open_writer(&db).unwrap();
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        let applied = r#"{"leader_id":{"term":2,"node_id":1},"index":7}"#;
        crate::sqlite::write_meta(&conn, "applied", applied).unwrap();
        // Entry 8's first request is in, the rest not yet: a copy now would double it on replay.
        crate::sqlite::write_meta(&conn, "partial", "[8,1]").unwrap();
        let tmp = dir.join("copy");
        assert!(copy_once(&db, &tmp).unwrap().is_none());
        crate::sqlite::write_meta(&conn, "partial", "null").unwrap();
        let image = copy_once(&db, &tmp).unwrap().expect("a settled copy");
        assert_eq!((image.raft_index, image.raft_term), (7, 2));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
