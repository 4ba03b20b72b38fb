//! Replacing the whole database with an image (`/db/load`, `--restore-from`), in pieces small
//! enough for any Raft frame.
//!
//! Pieces are staged in a table of the database itself: they commit with the applied index, are
//! part of every snapshot, and a member that restarts or installs a snapshot mid-load still has
//! them. The commit assembles the image, checks it, writes the node's progress into it and copies
//! it over the database with SQLite's backup API: one write transaction, so a crash leaves the
//! old database or the new one, each with its own applied index.

use std::io::Write;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, params};

/// Table holding the pieces of a load in progress.
pub const STAGING_TABLE: &str = "_litecluster_load";

/// Size of one piece: small enough that an AppendEntries of one piece is sent, written and
/// fsynced well within a heartbeat.
pub const CHUNK_BYTES: usize = 1 << 20;

/// Why a load did not replace the database.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The image is at fault: the client is told, nothing changes.
    #[error("{0}")]
    Invalid(String),
    /// This member could not do the work (disk, I/O): the apply fails here.
    #[error("{context}: {source}")]
    Member {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn member<E: std::error::Error + Send + Sync + 'static>(
    context: &'static str,
) -> impl FnOnce(E) -> LoadError {
    move |e| LoadError::Member {
        context,
        source: Box::new(e),
    }
}

/// Stages one piece, inside the caller's transaction.
pub fn stage(conn: &Connection, load: u64, seq: u32, data: &[u8]) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {STAGING_TABLE} (load INTEGER NOT NULL, seq INTEGER NOT NULL, \
         data BLOB NOT NULL, PRIMARY KEY (load, seq))"
    ))?;
    if seq == 0 {
        // One load at a time: a new one drops what an abandoned one left.
        conn.execute(&format!("DELETE FROM {STAGING_TABLE}"), [])?;
    }
    conn.execute(
        &format!("INSERT OR REPLACE INTO {STAGING_TABLE} (load, seq, data) VALUES (?1, ?2, ?3)"),
        params![load as i64, seq, data],
    )?;
    Ok(())
}

/// Drops the staged pieces (inside the caller's transaction).
pub fn clear(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!("DROP TABLE IF EXISTS {STAGING_TABLE}"))
}

/// What the commit entry says the image is.
#[derive(Debug, Clone, Copy)]
pub struct Expect {
    pub load: u64,
    pub chunks: u32,
    pub len: u64,
    pub crc32: u32,
}

/// Writes the staged image of `expect.load` to `dest` and checks it is complete.
pub fn assemble(conn: &Connection, expect: Expect, dest: &Path) -> Result<(), LoadError> {
    let exists: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [STAGING_TABLE],
            |r| r.get::<_, i64>(0),
        )
        .map_err(member("looking for staged load pieces"))?
        > 0;
    if !exists {
        return Err(LoadError::Invalid(
            "load has no staged pieces (a newer load replaced it): retry the load".into(),
        ));
    }
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(dest).map_err(member("creating the load image"))?,
    );
    let mut stmt = conn
        .prepare(&format!(
            "SELECT seq, data FROM {STAGING_TABLE} WHERE load = ?1 ORDER BY seq"
        ))
        .map_err(member("reading staged load pieces"))?;
    let mut rows = stmt
        .query([expect.load as i64])
        .map_err(member("reading staged load pieces"))?;
    let (mut n, mut len, mut crc) = (0u32, 0u64, crc32fast::Hasher::new());
    while let Some(row) = rows.next().map_err(member("reading staged load pieces"))? {
        let seq: u32 = row.get(0).map_err(member("reading staged load pieces"))?;
        if seq != n {
            break;
        }
        let data = row
            .get_ref(1)
            .and_then(|v| v.as_blob().map_err(Into::into))
            .map_err(member("reading staged load pieces"))?;
        crc.update(data);
        len += data.len() as u64;
        file.write_all(data)
            .map_err(member("writing the load image"))?;
        n += 1;
    }
    file.flush().map_err(member("writing the load image"))?;
    let crc = crc.finalize();
    if n != expect.chunks || len != expect.len || crc != expect.crc32 {
        return Err(LoadError::Invalid(format!(
            "load is incomplete: {n} of {} pieces, {len} of {} bytes, crc32 {crc:08x} (want {:08x}); retry the load",
            expect.chunks, expect.len, expect.crc32
        )));
    }
    Ok(())
}

/// Checks the image at `image`, makes `meta` its only bookkeeping rows, and copies it over
/// `dest` in one transaction. The image may be a user's file or another cluster's copy: rows it
/// carries (another cluster's progress) never survive.
pub fn replace(
    dest: &mut Connection,
    image: &Path,
    meta: &[(&str, &str)],
) -> Result<(), LoadError> {
    {
        let src = Connection::open_with_flags(
            image,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| LoadError::Invalid(format!("not a SQLite database: {e}")))?;
        let invalid = |e: rusqlite::Error| LoadError::Invalid(format!("invalid SQLite data: {e}"));
        // A WAL-mode image would leave frames in a side file; fold it into one file.
        src.query_row("PRAGMA journal_mode=DELETE", [], |_| Ok(()))
            .map_err(invalid)?;
        let check: String = src
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(invalid)?;
        if check != "ok" {
            return Err(LoadError::Invalid(format!(
                "image failed integrity check: {check}"
            )));
        }
        // The backup API into a WAL database needs the same page size.
        let page = |c: &Connection| c.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0));
        let want = page(dest).map_err(member("reading the page size"))?;
        if page(&src).map_err(invalid)? != want {
            src.execute_batch(&format!("PRAGMA page_size={want}; VACUUM"))
                .map_err(invalid)?;
        }
        super::ensure_meta(&src).map_err(invalid)?;
        src.execute_batch(&format!("BEGIN; DROP TABLE IF EXISTS {STAGING_TABLE};"))
            .map_err(invalid)?;
        super::clear_meta(&src).map_err(invalid)?;
        let format = super::FORMAT.to_string();
        for (k, v) in meta.iter().chain([&("format", format.as_str())]) {
            super::write_meta(&src, k, v).map_err(invalid)?;
        }
        src.execute_batch("COMMIT").map_err(invalid)?;
    }
    let src = Connection::open_with_flags(image, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(member("reopening the load image"))?;
    let backup = rusqlite::backup::Backup::new(&src, dest).map_err(member("starting the copy"))?;
    // All pages in one step: one write transaction on the destination.
    match backup
        .step(-1)
        .map_err(member("copying the image into the database"))?
    {
        rusqlite::backup::StepResult::Done => Ok(()),
        other => Err(LoadError::Member {
            context: "copying the image into the database",
            source: format!("the copy stopped: {other:?}").into(),
        }),
    }
}

/// CRC32 of a whole image, as the commit entry records it.
pub fn crc32(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    h.finalize()
}
