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

use rusqlite::{Connection, OpenFlags, OptionalExtension};

/// Name of the table that records Raft progress inside the user's database. It lives in the
/// database itself so that the applied index commits in the same transaction as the entries (in
/// WAL mode SQLite commits each attached file on its own). The `sqlite_` prefix makes SQLite
/// and tools treat it as SQLite's own, like `sqlite_sequence`: the shell's `.tables` and
/// `.dump`, ORMs and migration tools skip it, and SQLite refuses to drop, alter or index it.
pub const META_TABLE: &str = "sqlite_litecluster";

/// Where earlier versions kept the same rows, in the user's namespace.
pub const LEGACY_META_TABLE: &str = "_litecluster_meta";

/// On-disk format of the node's bookkeeping, stored under the `format` key. A member refuses a
/// database written in a newer format instead of misreading its progress (a downgrade).
pub const FORMAT: u32 = 2;

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
    ensure_meta(&conn)?;
    Ok(conn)
}

/// Makes sure `conn`'s database has the meta table in the current format, in one transaction.
///
/// Rows in the legacy table move over when they are at least as far along as the new table's:
/// during a rolling upgrade an older member may install a newer member's snapshot and go on
/// writing only the legacy table, so the table with the higher applied index is the live one.
pub fn ensure_meta(conn: &Connection) -> rusqlite::Result<()> {
    let exists = |name: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        if !exists(META_TABLE)? {
            // Names starting with sqlite_ are reserved; writable_schema lets the node create its
            // own, and is off again before any user SQL runs.
            conn.execute_batch(&format!(
                "PRAGMA writable_schema = ON;
                 CREATE TABLE {META_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 PRAGMA writable_schema = OFF;"
            ))?;
        }
        if exists(LEGACY_META_TABLE)? {
            let index = |table: &str| -> rusqlite::Result<Option<u64>> {
                let v: Option<String> = conn
                    .query_row(
                        &format!("SELECT value FROM {table} WHERE key = 'applied'"),
                        [],
                        |r| r.get(0),
                    )
                    .optional()?;
                Ok(
                    v.and_then(|v| serde_json::from_str::<Option<crate::LogId>>(&v).ok())
                        .flatten()
                        .map(|l| l.index),
                )
            };
            if index(LEGACY_META_TABLE)? >= index(META_TABLE)? {
                conn.execute_batch(&format!(
                    "DELETE FROM {META_TABLE};
                     INSERT INTO {META_TABLE} (key, value) SELECT key, value FROM {LEGACY_META_TABLE};"
                ))?;
            }
            conn.execute_batch(&format!("DROP TABLE {LEGACY_META_TABLE}"))?;
            tracing::info!(
                from = LEGACY_META_TABLE,
                to = META_TABLE,
                "moved the node's bookkeeping out of the user's tables"
            );
        }
        match read_meta(conn, "format")?.map(|f| f.parse::<u32>()) {
            Some(Ok(f)) if f > FORMAT => Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                Some(format!(
                    "the database was written by a newer litecluster-node (format {f}, this one reads up to {FORMAT}): run that version or newer, or restore a backup"
                )),
            )),
            Some(Ok(f)) if f == FORMAT => Ok(()),
            _ => write_meta(conn, "format", &FORMAT.to_string()),
        }
    })();
    match result {
        Ok(()) => conn.execute_batch("COMMIT"),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Empties the meta table of a copy that leaves the cluster (a backup, a download): SQLite
/// will not drop a `sqlite_` table, and an empty one is as invisible as a missing one.
pub fn clear_meta(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!("DROP TABLE IF EXISTS {LEGACY_META_TABLE}"))?;
    // A plain SQLite file (one never opened by a member) has no bookkeeping at all.
    let ours: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
        [META_TABLE],
        |r| r.get(0),
    )?;
    if ours > 0 {
        conn.execute_batch(&format!("DELETE FROM {META_TABLE}"))?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(index: u64) -> String {
        let id = crate::LogId::new(openraft::CommittedLeaderId::new(1, 0), index);
        serde_json::to_string(&Some(id)).unwrap()
    }

    fn db(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lc-meta-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("db.sqlite")
    }

    fn tables(conn: &Connection) -> Vec<String> {
        // What SQLAlchemy, Django and the sqlite3 shell's .tables ask.
        conn.prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite~_%' ESCAPE '~' ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
    }

    #[test]
    fn bookkeeping_is_hidden_from_table_listings_and_cannot_be_dropped() {
        let path = db("hidden");
        let conn = open_writer(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        write_meta(&conn, "applied", &applied(3)).unwrap();
        assert_eq!(tables(&conn), ["t"]);
        let plain = Connection::open(&path).unwrap();
        for sql in [
            "DROP TABLE sqlite_litecluster",
            "ALTER TABLE sqlite_litecluster RENAME TO x",
            "CREATE INDEX i ON sqlite_litecluster (value)",
        ] {
            assert!(plain.execute_batch(sql).is_err(), "{sql} was allowed");
        }
        // VACUUM rebuilds every table from the schema; ours must come through.
        plain.execute_batch("VACUUM").unwrap();
        assert_eq!(read_meta(&plain, "applied").unwrap(), Some(applied(3)));
        let check: String = plain
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        clear_meta(&plain).unwrap();
        assert_eq!(read_meta(&plain, "applied").unwrap(), None);
        // A file no member ever opened has nothing to clear.
        let never = Connection::open(path.with_file_name("plain.sqlite")).unwrap();
        never.execute_batch("CREATE TABLE t (x)").unwrap();
        clear_meta(&never).unwrap();
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }

    #[test]
    fn legacy_bookkeeping_moves_over_only_when_it_is_the_live_copy() {
        // (legacy index, current index or none) -> the index the member resumes from.
        for (legacy, current, want) in [(5, None, 5), (7, Some(10), 10), (12, Some(10), 12)] {
            let path = db(&format!("legacy-{legacy}"));
            {
                let c = Connection::open(&path).unwrap();
                c.execute_batch(
                    "CREATE TABLE _litecluster_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                     CREATE TABLE t (x); INSERT INTO t VALUES (1);",
                )
                .unwrap();
                c.execute(
                    "INSERT INTO _litecluster_meta VALUES ('applied', ?1)",
                    [applied(legacy)],
                )
                .unwrap();
                if let Some(current) = current {
                    ensure_meta(&c).unwrap();
                    write_meta(&c, "applied", &applied(current)).unwrap();
                    // The old member went on writing its own table after the snapshot.
                    c.execute_batch(
                        "CREATE TABLE IF NOT EXISTS _litecluster_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                    )
                    .unwrap();
                    c.execute(
                        "INSERT OR REPLACE INTO _litecluster_meta VALUES ('applied', ?1)",
                        [applied(legacy)],
                    )
                    .unwrap();
                }
            }
            let conn = open_writer(&path).unwrap();
            assert_eq!(
                read_meta(&conn, "applied").unwrap(),
                Some(applied(want)),
                "legacy {legacy}, current {current:?}"
            );
            assert_eq!(tables(&conn), ["t"]);
            assert_eq!(
                read_meta(&conn, "format").unwrap(),
                Some(FORMAT.to_string())
            );
            std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
        }
    }

    #[test]
    fn a_database_in_a_newer_format_is_refused_with_what_to_do() {
        let path = db("newer");
        let conn = open_writer(&path).unwrap();
        write_meta(&conn, "format", &(FORMAT + 1).to_string()).unwrap();
        write_meta(&conn, "applied", &applied(9)).unwrap();
        drop(conn);
        let err = open_writer(&path).unwrap_err().to_string();
        assert!(err.contains("newer litecluster-node"), "{err}");
        assert!(err.contains("restore a backup"), "{err}");
        // Refusing changed nothing.
        let plain = Connection::open(&path).unwrap();
        assert_eq!(read_meta(&plain, "applied").unwrap(), Some(applied(9)));
        std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
}
