//! SQLite access: connection setup, statement execution, the read pool, and SQL rewriting.

pub mod apply;
#[cfg(test)]
pub(crate) mod apply_props;
pub mod checkpoint;
pub mod dump;
pub mod exec;
pub mod guard;
pub mod load;
pub mod reader;
pub mod rewrite;
pub mod split;

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

/// Name of the table that records Raft progress inside the user's database. It lives in the
/// database itself so that the applied index commits in the same transaction as the entries.
pub const META_TABLE: &str = "_litecluster_meta";

/// Opens the single read-write connection. WAL mode; automatic checkpoints off because snapshots
/// own checkpointing; `synchronous=NORMAL`: commits do not fsync, the Raft log is the durable
/// record and the database is synced before each snapshot (`raft/state_machine/durable.rs`).
pub fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.execute_batch(&format!(
        "CREATE TABLE IF NOT EXISTS {META_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
    ))?;
    Ok(conn)
}

/// Opens a read-only connection for the read pool.
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// Reads a value from the meta table.
pub fn read_meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    use rusqlite::OptionalExtension;
    conn.query_row(
        &format!("SELECT value FROM {META_TABLE} WHERE key = ?1"),
        [key],
        |r| r.get(0),
    )
    .optional()
}

/// The start of every internal statement kept in the statement cache. User SQL that starts
/// with it (after trimming, as the cache's key is trimmed) is never looked up there: a hit would
/// reach a statement the guard never saw.
pub const INTERNAL: &str = "/*litecluster*/";

/// Whether user SQL may use the statement cache.
pub fn cacheable(user_sql: &str) -> bool {
    !user_sql.trim().starts_with(INTERNAL)
}

/// Writes a value to the meta table (inside the caller's transaction).
pub fn write_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(&format!(
        "{INTERNAL} INSERT INTO {META_TABLE} (key, value) VALUES (?1, ?2) \
         ON CONFLICT(key) DO UPDATE SET value = excluded.value"
    ))?
    .execute([key, value])?;
    Ok(())
}
