//! WAL checkpoints and how to read their result.
//!
//! `PRAGMA wal_checkpoint(TRUNCATE)` answers `(busy, log, checkpointed)`. rqlite 8.18 reported the
//! incomplete cases as `failed to completely checkpoint WAL (1 ok, 1031 pages, 1031 moved)`; we
//! classify them so the snapshot code can fall back and the operator can see why.

use std::time::Duration;

use rusqlite::Connection;
use serde::Serialize;

/// The triple SQLite returns from a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Checkpoint {
    pub busy: i64,
    pub log: i64,
    pub checkpointed: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every frame moved into the database and the WAL reset.
    Complete,
    /// Frames left in the WAL: a reader still uses an older snapshot of the database.
    FramesLeft,
    /// Every frame moved, but the WAL could not be reset: a reader still has it open.
    NotReset,
}

impl Checkpoint {
    pub fn outcome(&self) -> Outcome {
        if self.busy == 0 && self.log == self.checkpointed {
            Outcome::Complete
        } else if self.checkpointed < self.log {
            Outcome::FramesLeft
        } else {
            Outcome::NotReset
        }
    }

    /// rqlite's wording, so users searching for the familiar message find this.
    pub fn describe(&self) -> String {
        let why = match self.outcome() {
            Outcome::Complete => "complete",
            Outcome::FramesLeft => "frames left behind: a reader holds an older snapshot",
            Outcome::NotReset => "all frames moved but WAL not reset: a reader still has it open",
        };
        format!(
            "failed to completely checkpoint WAL ({} busy, {} pages, {} moved): {why}",
            self.busy, self.log, self.checkpointed
        )
    }
}

/// Runs a TRUNCATE checkpoint, waiting at most `wait` for readers, so that a stuck reader
/// delays the writer thread only briefly.
pub fn truncate(conn: &Connection, wait: Duration) -> rusqlite::Result<Checkpoint> {
    conn.busy_timeout(wait)?;
    let res = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        Ok(Checkpoint {
            busy: r.get(0)?,
            log: r.get(1)?,
            checkpointed: r.get(2)?,
        })
    });
    conn.busy_timeout(Duration::from_secs(5))?;
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let c = |busy, log, checkpointed| {
            Checkpoint {
                busy,
                log,
                checkpointed,
            }
            .outcome()
        };
        assert_eq!(c(0, 0, 0), Outcome::Complete);
        assert_eq!(c(1, 1031, 1031), Outcome::NotReset, "the seed failure");
        assert_eq!(c(1, 1031, 900), Outcome::FramesLeft);
        assert_eq!(c(0, 10, 4), Outcome::FramesLeft);
        assert!(
            Checkpoint {
                busy: 1,
                log: 1031,
                checkpointed: 1031
            }
            .describe()
            .contains("(1 busy, 1031 pages, 1031 moved)")
        );
    }

    #[test]
    fn a_reader_blocks_the_reset_and_its_end_releases_it() {
        let dir = std::env::temp_dir().join(format!("lc-ckpt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db");
        let w = crate::sqlite::open_writer(&path).unwrap();
        w.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
            .unwrap();
        let r = crate::sqlite::open_reader(&path).unwrap();
        r.execute_batch("BEGIN").unwrap();
        let _: i64 = r
            .query_row("SELECT count(*) FROM t", [], |row| row.get(0))
            .unwrap();
        let seed = truncate(&w, Duration::from_millis(50)).unwrap();
        assert_eq!(seed.outcome(), Outcome::NotReset, "{seed:?}");
        w.execute_batch("INSERT INTO t VALUES (2)").unwrap();
        let left = truncate(&w, Duration::from_millis(50)).unwrap();
        assert_eq!(left.outcome(), Outcome::FramesLeft, "{left:?}");
        r.execute_batch("COMMIT").unwrap();
        let done = truncate(&w, Duration::from_millis(50)).unwrap();
        assert_eq!(done.outcome(), Outcome::Complete, "{done:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
