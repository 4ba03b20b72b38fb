//! Applies committed entries' statements on the writer connection, with the semantics of
//! rqlite (one SQLite connection in autocommit mode), identically on every member whatever
//! batch of entries an entry lands in.
//!
//! A batch of entries runs in one SQLite transaction (one commit, one fsync). Inside it:
//! - each entry starts from the same connection state (`last_insert_rowid()` and `changes()`
//!   reset, `random()` seeded from the entry's log index), so batching cannot change a result;
//! - every statement of a string is prepared on its own under the [`guard`](super::guard);
//!   user transaction control is emulated with savepoints (`BEGIN` ... `COMMIT` keeps its
//!   meaning, `COMMIT` with nothing open fails as in SQLite) and never touches our transaction;
//! - `?transaction` wraps the entry in a savepoint: the first error undoes it and stops;
//! - after every statement the transaction is checked: a conflict clause `OR ROLLBACK` (or
//!   `RAISE(ROLLBACK)`, or a column's `ON CONFLICT ROLLBACK`) rolls back the whole SQLite
//!   transaction, which no text check can rule out. Then the earlier entries of the batch are
//!   applied again and committed, and the entry is run again from its start with the rolled-back
//!   statements skipped, which leaves exactly what autocommit SQLite would have kept;
//! - an error that says something about this member rather than the statement (disk full, I/O,
//!   corruption, out of memory) fails the whole apply: reporting it as the statement's result
//!   would make this member differ from the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode};

use super::exec;
use super::guard::{Control, Gate, Verdict};
use super::split;
use crate::command::{Mode, Params, Statement, StmtResult};

/// One entry's statements, as the log holds them.
#[derive(Debug, Clone, Copy)]
pub struct Work<'a> {
    /// Seeds `random()` and `randomblob()` (the entry's log index).
    pub seed: u64,
    pub stmts: &'a [Statement],
    pub transaction: bool,
    pub mode: Mode,
}

/// What applying one entry gave.
#[derive(Debug)]
pub struct Applied {
    pub results: Vec<StmtResult>,
    /// The entries before this one in the batch were re-applied and committed (a statement
    /// rolled the transaction back): the caller's batch now starts at this entry.
    pub committed_prior: bool,
}

pub use crate::error::ApplyError;

type Result<T, E = ApplyError> = std::result::Result<T, E>;

fn internal(context: &'static str) -> impl FnOnce(rusqlite::Error) -> ApplyError {
    move |source| ApplyError::Sqlite { context, source }
}

/// The single read-write connection and the state its statements need.
pub struct Writer {
    conn: Connection,
    gate: Arc<Gate>,
    rng: Arc<AtomicU64>,
}

/// A statement's place in an entry: (statement, statement within its string).
type Pos = (usize, usize);

/// A rolled-back span `[from, to]`; `to` is the statement that rolled it back.
#[derive(Debug, Clone, Copy)]
struct Span {
    from: Pos,
    to: Pos,
    /// `last_insert_rowid()` right after `to` ran: a rollback does not undo it.
    rowid: i64,
}

impl Span {
    fn holds(&self, p: Pos) -> bool {
        self.from <= p && p <= self.to
    }
}

/// A user transaction, as the emulation sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    /// `BEGIN` at this position.
    Begin(Pos),
    /// A `SAVEPOINT` outside any transaction, at this position.
    Savepoint(Pos),
    /// `?transaction`: the whole request.
    Request,
}

#[derive(Default)]
struct Tx {
    open: Option<Open>,
    /// User savepoint names, outermost first; savepoint `k` is `lc_sp_k` in SQLite.
    savepoints: Vec<String>,
}

/// One run of an entry.
struct Run {
    results: Vec<StmtResult>,
    lost: Option<Lost>,
}

/// A statement rolled back the SQLite transaction.
struct Lost {
    span: Span,
    /// `?transaction`: nothing of the entry remains and nothing more runs.
    stop: bool,
}

/// How one statement ended.
enum Step {
    Done(StmtResult),
    /// Its result was recorded by an earlier run of the entry.
    Skipped,
    Lost(StmtResult, Pos),
}

const IN_REQUEST: &str = "transaction control is not supported with ?transaction: the request already runs as one transaction";

impl Writer {
    /// Opens the writer connection with the guard and the seeded random functions.
    pub fn open(path: &std::path::Path) -> rusqlite::Result<Self> {
        let mut conn = super::open_writer(path)?;
        let gate = Gate::install(&mut conn)?;
        let rng = Arc::new(AtomicU64::new(0));
        // Overrides of the built-ins: the same sequence on every member. The leader rewrites
        // most calls into literals; these cover the rest (column defaults, triggers, ORDER BY).
        let r = rng.clone();
        conn.create_scalar_function("random", 0, FunctionFlags::SQLITE_UTF8, move |_| {
            Ok(next_random(&r) as i64)
        })?;
        let r = rng.clone();
        conn.create_scalar_function("randomblob", 1, FunctionFlags::SQLITE_UTF8, move |ctx| {
            let n = match ctx.get_raw(0) {
                ValueRef::Integer(n) => n,
                ValueRef::Real(f) => f as i64,
                ValueRef::Text(t) => std::str::from_utf8(t)
                    .ok()
                    .and_then(|t| t.trim().parse().ok())
                    .unwrap_or(0),
                _ => 0,
            };
            // SQLite gives one byte below 1, and refuses what exceeds its length limit.
            let n = usize::try_from(n.max(1)).unwrap_or(1);
            if n > 1_000_000_000 {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_TOOBIG),
                    Some("string or blob too big".into()),
                ));
            }
            let mut out = Vec::with_capacity(n);
            while out.len() < n {
                out.extend_from_slice(&next_random(&r).to_le_bytes());
            }
            out.truncate(n);
            Ok(out)
        })?;
        Ok(Self { conn, gate, rng })
    }

    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    pub fn conn_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Internal SQL: never cached, never checked by the guard.
    fn sql(&self, sql: &str, context: &'static str) -> Result<()> {
        self.conn.execute_batch(sql).map_err(internal(context))
    }

    pub fn begin(&self) -> Result<()> {
        self.sql("BEGIN IMMEDIATE", "starting the apply transaction")
    }

    pub fn commit(&self) -> Result<()> {
        self.sql("COMMIT", "committing the apply transaction")
    }

    pub fn rollback(&self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Applies `work` in the open transaction. If a statement rolls the transaction back,
    /// `again` applies the entries before it in this transaction once more and records progress
    /// through them (returning whether there were any); they are committed, so a batch re-applies
    /// an entry at most once.
    pub fn apply(
        &mut self,
        work: Work<'_>,
        again: &mut dyn FnMut(&mut Writer) -> Result<bool>,
    ) -> Result<Applied> {
        let mut skip: Vec<Span> = Vec::new();
        let mut results = Vec::with_capacity(work.stmts.len());
        let mut committed_prior = false;
        loop {
            let run = self.run_entry(&work, &skip, results.len())?;
            results.extend(run.results);
            let Some(lost) = run.lost else {
                return Ok(Applied {
                    results,
                    committed_prior,
                });
            };
            tracing::warn!(
                seed = work.seed,
                statement = lost.span.to.0,
                "a statement rolled back the apply transaction; re-applying what came before it"
            );
            self.begin()?;
            if !committed_prior {
                committed_prior = true;
                if again(self)? {
                    crate::failpoint("apply-after-replay");
                    self.commit()?;
                    self.begin()?;
                }
            }
            if lost.stop {
                return Ok(Applied {
                    results,
                    committed_prior,
                });
            }
            skip.push(lost.span);
        }
    }

    /// Applies an entry again whose results are known. The first entry of a re-applied run may
    /// roll back again, deterministically; any other doing so means a broken promise.
    pub fn reapply(&mut self, work: Work<'_>, first: bool) -> Result<()> {
        if first {
            self.apply(work, &mut |_| Ok(false)).map(drop)
        } else if self.run_entry(&work, &[], usize::MAX)?.lost.is_some() {
            Err(ApplyError::Diverged)
        } else {
            Ok(())
        }
    }

    /// Runs the entry from its start. Statements before `record_from` ran before: their results
    /// are not kept. Spans in `skip` were rolled back and are not run again.
    fn run_entry(&mut self, work: &Work<'_>, skip: &[Span], record_from: usize) -> Result<Run> {
        self.reset_connection_state()?;
        self.rng.store(seed_state(work.seed), Ordering::SeqCst);
        let mut tx = Tx::default();
        if work.transaction {
            self.sql("SAVEPOINT lc_request", "opening the request savepoint")?;
            tx.open = Some(Open::Request);
        }
        let mut results = Vec::new();
        for (i, stmt) in work.stmts.iter().enumerate() {
            let started = Instant::now();
            let step = self.run_statement(i, stmt, work.mode, &mut tx, skip)?;
            let record = i >= record_from;
            let (mut result, lost) = match step {
                Step::Skipped => continue,
                Step::Done(r) => (r, None),
                Step::Lost(r, at) => (r, Some(at)),
            };
            result.time = started.elapsed().as_secs_f64();
            let failed = result.error.is_some();
            if record {
                results.push(result);
            }
            if let Some(at) = lost {
                if !record {
                    // It ran without rolling back before: determinism is broken.
                    return Err(ApplyError::Diverged);
                }
                let from = match tx.open {
                    _ if work.transaction => (0, 0),
                    Some(Open::Begin(p) | Open::Savepoint(p)) => p,
                    _ => at,
                };
                let span = Span {
                    from,
                    to: at,
                    rowid: self.conn.last_insert_rowid(),
                };
                return Ok(Run {
                    results,
                    lost: Some(Lost {
                        span,
                        stop: work.transaction,
                    }),
                });
            }
            if work.transaction && failed {
                // rqlite: the first error undoes the request and later statements do not run.
                self.sql(
                    "ROLLBACK TO lc_request; RELEASE lc_request",
                    "rolling back the request",
                )?;
                return Ok(Run {
                    results,
                    lost: None,
                });
            }
        }
        match tx.open {
            Some(Open::Request) => self.sql("RELEASE lc_request", "ending the request")?,
            Some(open) => {
                // Like a connection closed mid-transaction: roll back, and say so.
                self.close_user_tx(open, true)?;
                if let Some(last) = results.last_mut()
                    && last.error.is_none()
                {
                    last.error = Some(
                        "the request ended inside a transaction, which was rolled back: end it with COMMIT in the same request"
                            .into(),
                    );
                }
            }
            None => {}
        }
        Ok(Run {
            results,
            lost: None,
        })
    }

    /// Every entry starts with `last_insert_rowid()` and `changes()` at 0, as on a member that
    /// has just restarted, so neither depends on what the batch held before.
    fn reset_connection_state(&self) -> Result<()> {
        self.set_connection_state(0)
    }

    /// Sets `last_insert_rowid()` to `rowid` and `changes()` to 0 (what a failed statement
    /// leaves), through a row of our own table.
    fn set_connection_state(&self, rowid: i64) -> Result<()> {
        if self.conn.last_insert_rowid() == rowid && self.conn.changes() == 0 {
            return Ok(());
        }
        let run = |sql: String, rowid: Option<i64>| {
            let mut st = self.conn.prepare_cached(&sql)?;
            match rowid {
                Some(r) => st.execute([r]),
                None => st.execute([]),
            }
        };
        let t = super::META_TABLE;
        let i = super::INTERNAL;
        run(
            format!("{i} INSERT OR REPLACE INTO {t} (rowid, key, value) VALUES (?1, 'reset', '')"),
            Some(rowid),
        )
        .and_then(|_| run(format!("{i} DELETE FROM {t} WHERE 0"), None))
        .map(drop)
        .map_err(internal("setting connection state"))
    }

    fn run_statement(
        &mut self,
        i: usize,
        stmt: &Statement,
        mode: Mode,
        tx: &mut Tx,
        skip: &[Span],
    ) -> Result<Step> {
        let pieces = split::ranges(&stmt.sql);
        let skipped = |pos: Pos| skip.iter().find(|s| s.holds(pos)).copied();
        match pieces.len() {
            0 => Ok(Step::Done(StmtResult::default())),
            1 => {
                if let Some(span) = skipped((i, 0)) {
                    if span.to == (i, 0) {
                        self.set_connection_state(span.rowid)?;
                    }
                    return Ok(Step::Skipped);
                }
                self.run_one((i, 0), &stmt.sql, &stmt.params, mode, tx, true)
            }
            _ if !matches!(stmt.params, Params::None) => Ok(Step::Done(StmtResult::error(
                "parameters need one statement per string: send the statements separately",
            ))),
            _ if mode == Mode::Query => Ok(Step::Done(StmtResult::error(
                "a query string must hold one statement: send the statements separately",
            ))),
            _ => {
                // Autocommit SQLite runs a string's statements in order and stops at the first
                // error; the result is that error, or the connection's values after the last.
                let mut any_skipped = false;
                for (j, range) in pieces.into_iter().enumerate() {
                    if let Some(span) = skipped((i, j)) {
                        any_skipped = true;
                        if span.to == (i, j) {
                            self.set_connection_state(span.rowid)?;
                            break;
                        }
                        continue;
                    }
                    let piece = &stmt.sql[range];
                    match self.run_one((i, j), piece, &Params::None, Mode::Execute, tx, false)? {
                        Step::Done(r) if r.error.is_none() => {}
                        done @ (Step::Done(_) | Step::Lost(..)) => return Ok(done),
                        Step::Skipped => unreachable!("run_one never skips"),
                    }
                }
                if any_skipped {
                    // Part of the string ran before its rollback; its result is already recorded.
                    return Ok(Step::Skipped);
                }
                Ok(Step::Done(exec::execute_result(&self.conn)))
            }
        }
    }

    /// Prepares, checks and runs one statement at `pos`.
    fn run_one(
        &mut self,
        pos: Pos,
        sql: &str,
        params: &Params,
        mode: Mode,
        tx: &mut Tx,
        cache: bool,
    ) -> Result<Step> {
        let gate = self.gate.clone();
        let scope = gate.enter();
        let prepared = if cache && super::cacheable(sql) {
            self.conn.prepare_cached(sql).map(Prepared::Cached)
        } else {
            self.conn.prepare(sql).map(Prepared::Plain)
        };
        let verdict = gate.take_verdict();
        let mut prepared = match (prepared, verdict) {
            (_, Some(Verdict::Refused(msg))) => return Ok(Step::Done(StmtResult::error(msg))),
            (Ok(p), Some(Verdict::Control(c))) => {
                // Compiled to a no-op: never keep it, or a later cache hit would skip the guard.
                p.discard();
                drop(scope);
                // Like any statement, it reports the connection's values (rqlite's COMMIT after
                // an INSERT repeats the INSERT's).
                return self
                    .control(pos, c, tx)
                    .map(|r| Step::Done(r.unwrap_or_else(|| exec::execute_result(&self.conn))));
            }
            (Ok(p), _) => p,
            (Err(e), _) => return statement_error(e).map(Step::Done),
        };
        let outcome = exec::bind(prepared.stmt(), params)
            .and_then(|()| exec::step(&self.conn, prepared.stmt(), mode));
        drop(prepared);
        drop(scope);
        let result = match (outcome, gate.take_verdict()) {
            (Ok(r), _) => r,
            // Re-prepared after a schema change and refused this time.
            (Err(_), Some(Verdict::Refused(msg))) => StmtResult::error(msg),
            (Err(e), _) => statement_error(e)?,
        };
        if self.conn.is_autocommit() {
            return Ok(Step::Lost(result, pos));
        }
        Ok(Step::Done(result))
    }

    /// Emulates user transaction control inside our transaction. `Some(result)` carries the
    /// user's error where SQLite would give one.
    fn control(&self, pos: Pos, c: Control, tx: &mut Tx) -> Result<Option<StmtResult>> {
        let err = |m: &str| Ok(Some(StmtResult::error(m)));
        let find = |tx: &Tx, name: &str| {
            tx.savepoints
                .iter()
                .rposition(|s| s.eq_ignore_ascii_case(name))
        };
        match c {
            Control::Begin => match tx.open {
                Some(_) => return err("cannot start a transaction within a transaction"),
                None => {
                    self.sql("SAVEPOINT lc_begin", "emulating BEGIN")?;
                    tx.open = Some(Open::Begin(pos));
                }
            },
            Control::Commit | Control::Rollback => match tx.open {
                None if c == Control::Commit => {
                    return err("cannot commit - no transaction is active");
                }
                None => return err("cannot rollback - no transaction is active"),
                Some(Open::Request) => return err(IN_REQUEST),
                Some(open) => {
                    self.close_user_tx(open, c == Control::Rollback)?;
                    tx.open = None;
                    tx.savepoints.clear();
                }
            },
            Control::Savepoint(name) => {
                if tx.open.is_none() {
                    tx.open = Some(Open::Savepoint(pos));
                }
                self.sql(
                    &format!("SAVEPOINT lc_sp_{}", tx.savepoints.len()),
                    "emulating SAVEPOINT",
                )?;
                tx.savepoints.push(name);
            }
            Control::Release(name) => {
                let Some(k) = find(tx, &name) else {
                    return err(&format!("no such savepoint: {name}"));
                };
                self.sql(&format!("RELEASE lc_sp_{k}"), "emulating RELEASE")?;
                tx.savepoints.truncate(k);
                if tx.savepoints.is_empty() && matches!(tx.open, Some(Open::Savepoint(_))) {
                    tx.open = None;
                }
            }
            Control::RollbackTo(name) => {
                let Some(k) = find(tx, &name) else {
                    return err(&format!("no such savepoint: {name}"));
                };
                self.sql(&format!("ROLLBACK TO lc_sp_{k}"), "emulating ROLLBACK TO")?;
                tx.savepoints.truncate(k + 1);
            }
        }
        Ok(None)
    }

    fn close_user_tx(&self, open: Open, rollback: bool) -> Result<()> {
        let sp = match open {
            Open::Begin(_) => "lc_begin",
            Open::Savepoint(_) => "lc_sp_0",
            Open::Request => return Ok(()),
        };
        if rollback {
            self.sql(
                &format!("ROLLBACK TO {sp}; RELEASE {sp}"),
                "emulating ROLLBACK",
            )
        } else {
            self.sql(&format!("RELEASE {sp}"), "emulating COMMIT")
        }
    }
}

enum Prepared<'c> {
    Cached(rusqlite::CachedStatement<'c>),
    Plain(rusqlite::Statement<'c>),
}

impl<'c> Prepared<'c> {
    fn stmt(&mut self) -> &mut rusqlite::Statement<'c> {
        match self {
            Prepared::Cached(s) => s,
            Prepared::Plain(s) => s,
        }
    }

    fn discard(self) {
        if let Prepared::Cached(s) = self {
            s.discard();
        }
    }
}

/// A statement's error as its result, unless it is about this member rather than the
/// statement: then the apply must fail on this member alone.
fn statement_error(e: rusqlite::Error) -> Result<StmtResult> {
    if is_environmental(&e) {
        return Err(ApplyError::Sqlite {
            context: "applying a statement",
            source: e,
        });
    }
    Ok(StmtResult::error(exec::error_message(&e)))
}

/// Errors whose cause is the member (its disk, memory, files), not the SQL.
pub fn is_environmental(e: &rusqlite::Error) -> bool {
    use ErrorCode as C;
    matches!(
        e.sqlite_error_code(),
        Some(
            C::DatabaseCorrupt
                | C::DiskFull
                | C::SystemIoFailure
                | C::OutOfMemory
                | C::CannotOpen
                | C::DatabaseBusy
                | C::DatabaseLocked
                | C::FileLockingProtocolFailed
                | C::NotADatabase
                | C::OperationInterrupted
                | C::ReadOnly
                | C::PermissionDenied
                | C::InternalMalfunction
                | C::NoLargeFileSupport
        )
    )
}

/// splitmix64: small, fast and the same on every platform and version.
fn next_random(state: &AtomicU64) -> u64 {
    let s = state
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::SeqCst)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn seed_state(seed: u64) -> u64 {
    seed.wrapping_mul(0xD6E8_FEB8_6659_FD93) ^ 0x6C69_7465_636C_7573
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::command::ParamValue;

    /// A writer on a fresh database in its own directory.
    pub(crate) fn writer(name: &str) -> (std::path::PathBuf, Writer) {
        let dir = std::env::temp_dir().join(format!("lc-apply-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let w = Writer::open(&dir.join("db.sqlite")).unwrap();
        (dir, w)
    }

    fn stmts(sql: &[&str]) -> Vec<Statement> {
        sql.iter().map(|s| Statement::new(*s)).collect()
    }

    /// Applies each request as one entry, all in one transaction.
    fn batch(w: &mut Writer, reqs: &[(&[&str], bool)]) -> Vec<Vec<StmtResult>> {
        let owned: Vec<Vec<Statement>> = reqs.iter().map(|(r, _)| stmts(r)).collect();
        let works: Vec<Work<'_>> = owned
            .iter()
            .zip(reqs)
            .enumerate()
            .map(|(i, (s, (_, tx)))| Work {
                seed: i as u64 + 1,
                stmts: s,
                transaction: *tx,
                mode: Mode::Execute,
            })
            .collect();
        w.begin().unwrap();
        let mut out = Vec::new();
        let mut start = 0;
        for i in 0..works.len() {
            let prior = works[start..i].to_vec();
            let mut again = |w: &mut Writer| {
                for (k, p) in prior.iter().enumerate() {
                    w.reapply(*p, k == 0)?;
                }
                Ok(!prior.is_empty())
            };
            let a = w.apply(works[i], &mut again).unwrap();
            if a.committed_prior {
                start = i;
            }
            out.push(a.results);
        }
        w.commit().unwrap();
        out
    }

    fn one(w: &mut Writer, sql: &[&str]) -> Vec<StmtResult> {
        batch(w, &[(sql, false)]).remove(0)
    }

    fn rows(w: &Writer, sql: &str) -> Vec<i64> {
        let mut s = w.conn().prepare(sql).unwrap();
        s.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    const TABLE: &str = "CREATE TABLE u (id INTEGER PRIMARY KEY, v TEXT)";

    #[test]
    fn or_rollback_keeps_the_rows_autocommit_sqlite_keeps() {
        let (dir, mut w) = writer("or-rollback");
        one(&mut w, &[TABLE]);
        // The issue's request, alone and behind other entries of the same batch.
        let req: &[&str] = &[
            "INSERT INTO u VALUES(1,'a')",
            "INSERT OR ROLLBACK INTO u VALUES(1,'dup')",
            "INSERT INTO u VALUES(2,'b')",
        ];
        let r = batch(
            &mut w,
            &[(&["INSERT INTO u VALUES(5,'e')"], false), (req, false)],
        );
        assert_eq!(r[1][0].rows_affected, Some(1));
        assert_eq!(
            r[1][1].error.as_deref(),
            Some("UNIQUE constraint failed: u.id")
        );
        assert_eq!(r[1][2].rows_affected, Some(1));
        assert_eq!(rows(&w, "SELECT id FROM u ORDER BY id"), [1, 2, 5]);
        // Twice in one entry, and with a later entry in the batch.
        let r = batch(
            &mut w,
            &[
                (
                    &[
                        "INSERT INTO u VALUES(6,'f')",
                        "INSERT OR ROLLBACK INTO u VALUES(6,'dup')",
                        "INSERT INTO u VALUES(7,'g')",
                        "INSERT OR ROLLBACK INTO u VALUES(7,'dup')",
                        "INSERT INTO u VALUES(8,'h')",
                    ],
                    false,
                ),
                (&["INSERT INTO u VALUES(9,'i')"], false),
            ],
        );
        assert_eq!(r[0].len(), 5);
        assert_eq!(
            rows(&w, "SELECT id FROM u ORDER BY id"),
            [1, 2, 5, 6, 7, 8, 9]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn or_rollback_inside_begin_undoes_the_user_transaction_only() {
        let (dir, mut w) = writer("or-rollback-begin");
        one(&mut w, &[TABLE, "INSERT INTO u VALUES(1,'a')"]);
        let r = one(
            &mut w,
            &[
                "INSERT INTO u VALUES(2,'b')",
                "BEGIN",
                "INSERT INTO u VALUES(3,'c')",
                "INSERT OR ROLLBACK INTO u VALUES(1,'dup')",
                "INSERT INTO u VALUES(4,'d')",
                "COMMIT",
            ],
        );
        assert!(r[3].error.is_some());
        assert_eq!(
            r[5].error.as_deref(),
            Some("cannot commit - no transaction is active")
        );
        assert_eq!(rows(&w, "SELECT id FROM u ORDER BY id"), [1, 2, 4]);
        // With ?transaction the whole request goes and nothing after the error runs.
        let r = batch(
            &mut w,
            &[(
                &[
                    "INSERT INTO u VALUES(10,'x')",
                    "INSERT OR ROLLBACK INTO u VALUES(1,'dup')",
                    "INSERT INTO u VALUES(11,'y')",
                ],
                true,
            )],
        );
        assert_eq!(r[0].len(), 2);
        assert_eq!(rows(&w, "SELECT id FROM u ORDER BY id"), [1, 2, 4]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn transaction_control_inside_a_string_behaves_as_in_sqlite() {
        let (dir, mut w) = writer("embedded-commit");
        one(&mut w, &[TABLE]);
        let r = one(
            &mut w,
            &["INSERT INTO u VALUES(10,'x'); COMMIT; INSERT INTO u VALUES(11,'y')"],
        );
        assert_eq!(
            r[0].error.as_deref(),
            Some("cannot commit - no transaction is active")
        );
        assert_eq!(rows(&w, "SELECT id FROM u"), [10]);
        // A dump's own transaction commits; a rolled-back one leaves nothing.
        let r = one(
            &mut w,
            &[
                "BEGIN TRANSACTION; INSERT INTO u VALUES(12,'a'); COMMIT;",
                "BEGIN; INSERT INTO u VALUES(13,'b'); ROLLBACK",
                "SAVEPOINT a; INSERT INTO u VALUES(14,'c'); SAVEPOINT b; INSERT INTO u VALUES(15,'d'); ROLLBACK TO b; RELEASE a",
                "RELEASE nope",
            ],
        );
        assert!(r[..3].iter().all(|x| x.error.is_none()), "{r:?}");
        assert_eq!(r[3].error.as_deref(), Some("no such savepoint: nope"));
        assert_eq!(rows(&w, "SELECT id FROM u ORDER BY id"), [10, 12, 14]);
        // The node's transaction is still open until the batch commits.
        w.begin().unwrap();
        let r = w
            .apply(
                Work {
                    seed: 1,
                    stmts: &stmts(&["COMMIT", "ROLLBACK", "END"]),
                    transaction: false,
                    mode: Mode::Execute,
                },
                &mut |_| Ok(false),
            )
            .unwrap();
        assert!(r.results.iter().all(|x| x.error.is_some()));
        assert!(
            !w.conn().is_autocommit(),
            "user COMMIT ended our transaction"
        );
        w.commit().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_request_that_leaves_a_transaction_open_is_rolled_back_and_told() {
        let (dir, mut w) = writer("open-tx");
        one(&mut w, &[TABLE]);
        let r = one(&mut w, &["BEGIN", "INSERT INTO u VALUES(1,'a')"]);
        assert!(r[1].error.as_deref().unwrap().contains("rolled back"));
        assert!(rows(&w, "SELECT id FROM u").is_empty());
        let r = one(&mut w, &["BEGIN", "BEGIN"]);
        assert_eq!(
            r[1].error.as_deref(),
            Some("cannot start a transaction within a transaction")
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn user_sql_never_reaches_a_cached_internal_statement() {
        let (dir, mut w) = writer("internal-cache");
        // The first entry resets the connection state and records progress through the cache.
        one(&mut w, &[TABLE, "INSERT INTO u VALUES (1, 'a')"]);
        one(&mut w, &["INSERT INTO u VALUES (2, 'b')"]);
        w.begin().unwrap();
        crate::sqlite::write_meta(w.conn(), "applied", "1").unwrap();
        w.commit().unwrap();
        let t = crate::sqlite::META_TABLE;
        let i = crate::sqlite::INTERNAL;
        let same = [
            format!("{i} INSERT OR REPLACE INTO {t} (rowid, key, value) VALUES (?1, 'reset', '')"),
            format!("{i} DELETE FROM {t} WHERE 0"),
            format!(
                "  {i} INSERT INTO {t} (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value "
            ),
        ];
        let r = batch_with(
            &mut w,
            &same,
            &[
                ParamValue::Text("applied".into()),
                ParamValue::Text("x".into()),
            ],
        );
        for (k, x) in r.iter().enumerate() {
            let e = x.error.as_deref().unwrap_or_default();
            assert!(
                e.contains("belongs to litecluster"),
                "statement {k} was not refused: {x:?}"
            );
        }
        let applied: String = w
            .conn()
            .query_row(
                &format!("SELECT value FROM {t} WHERE key = 'applied'"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(applied, "1");
        drop(w);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// One entry of the given statements, each bound to as many of `params` as it takes.
    fn batch_with(w: &mut Writer, sql: &[String], params: &[ParamValue]) -> Vec<StmtResult> {
        let stmts: Vec<Statement> = sql
            .iter()
            .map(|q| Statement {
                sql: q.clone(),
                params: Params::Positional(
                    params[..q.matches('?').count().min(params.len())].to_vec(),
                ),
            })
            .collect();
        w.begin().unwrap();
        let r = w
            .apply(
                Work {
                    seed: 99,
                    stmts: &stmts,
                    transaction: false,
                    mode: Mode::Execute,
                },
                &mut |_| Ok(false),
            )
            .unwrap();
        w.commit().unwrap();
        r.results
    }

    #[test]
    fn statements_that_reach_unreplicated_state_are_refused() {
        let (dir, mut w) = writer("refused");
        one(&mut w, &[TABLE]);
        let attach = format!("ATTACH '{}' AS x", dir.join("x.db").display());
        let r = one(
            &mut w,
            &[
                &attach,
                "CREATE TEMP TABLE t (x)",
                "CREATE TABLE temp.t2 (x)",
                "PRAGMA journal_mode=DELETE",
                "PRAGMA wal_checkpoint",
                "PRAGMA case_sensitive_like=1",
                "SELECT total_changes()",
                "INSERT INTO sqlite_litecluster VALUES ('applied', 'x')",
                "DELETE FROM sqlite_litecluster",
                "DROP TABLE sqlite_litecluster",
                "CREATE TABLE _litecluster_meta (key, value)",
            ],
        );
        for (i, x) in r.iter().enumerate() {
            assert!(x.error.is_some(), "statement {i} was not refused: {x:?}");
        }
        assert!(!dir.join("x.db").exists());
        // A trigger body is checked when it fires.
        w.begin().unwrap();
        crate::sqlite::write_meta(w.conn(), "applied", "1").unwrap();
        w.commit().unwrap();
        let r = one(
            &mut w,
            &[
                "CREATE TABLE v (x)",
                "CREATE TRIGGER tr AFTER INSERT ON v BEGIN DELETE FROM sqlite_litecluster; END",
                "INSERT INTO v VALUES (1)",
            ],
        );
        assert!(
            r[2].error
                .as_deref()
                .unwrap()
                .contains("belongs to litecluster")
        );
        assert_eq!(
            rows(
                &w,
                "SELECT count(*) FROM sqlite_litecluster WHERE key = 'applied'"
            ),
            [1]
        );
        // What a dump or a migration tool does is still fine.
        let r = one(
            &mut w,
            &[
                "PRAGMA foreign_keys=OFF",
                "PRAGMA user_version=7",
                "PRAGMA table_info(u)",
                "PRAGMA journal_mode",
                "SELECT * FROM sqlite_litecluster",
            ],
        );
        assert!(r.iter().all(|x| x.error.is_none()), "{r:?}");
        let v: i64 = w
            .conn()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, 7);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_entry_never_sees_the_connection_state_of_the_one_before() {
        let (dir, mut w) = writer("conn-state");
        one(&mut w, &[TABLE, "CREATE TABLE log (a, b)"]);
        let r = batch(
            &mut w,
            &[
                (&["INSERT INTO u VALUES(41,'x')"], false),
                (
                    &["INSERT INTO log VALUES (last_insert_rowid(), changes())"],
                    false,
                ),
            ],
        );
        assert!(r[1][0].error.is_none());
        let got: (i64, i64) = w
            .conn()
            .query_row("SELECT a, b FROM log", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!(got, (0, 0));
        // Within an entry they carry over, as in rqlite.
        one(
            &mut w,
            &[
                "INSERT INTO u VALUES(42,'y')",
                "INSERT INTO log VALUES (last_insert_rowid(), changes())",
            ],
        );
        let got: (i64, i64) = w
            .conn()
            .query_row("SELECT a, b FROM log WHERE a = 42", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(got, (42, 1));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn random_is_the_same_on_every_member() {
        let sql: &[&str] = &[
            "CREATE TABLE r (a INTEGER DEFAULT (random()), b BLOB DEFAULT (randomblob(8)))",
            "INSERT INTO r DEFAULT VALUES; INSERT INTO r DEFAULT VALUES",
        ];
        let dump = |name: &str| {
            let (dir, mut w) = writer(name);
            one(&mut w, sql);
            let mut s = w.conn().prepare("SELECT a, hex(b) FROM r").unwrap();
            let v: Vec<(i64, String)> = s
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            std::fs::remove_dir_all(dir).unwrap();
            v
        };
        let a = dump("random-a");
        assert_eq!(a, dump("random-b"));
        assert_ne!(a[0], a[1], "two calls gave the same value");
    }

    #[test]
    fn a_string_of_statements_that_build_on_each_other_runs_whole() {
        let (dir, mut w) = writer("multi");
        let sql = "PRAGMA foreign_keys=OFF;\nCREATE TABLE d (id INTEGER PRIMARY KEY, t TEXT);\n\
                   INSERT INTO \"d\" VALUES(1,'x');\nCREATE INDEX d_t ON d(t);\n\
                   CREATE TRIGGER d_tr AFTER INSERT ON d BEGIN UPDATE d SET t = 'y' WHERE id = new.id; END;";
        let r = one(&mut w, &[sql, "INSERT INTO d VALUES(2, 'z')"]);
        assert_eq!(r[0].error, None);
        assert_eq!(rows(&w, "SELECT count(*) FROM d WHERE t = 'y'"), [1]);
        let r = one(&mut w, &["INSERT INTO nope VALUES(1)"]);
        assert_eq!(r[0].error.as_deref(), Some("no such table: nope"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bookkeeping_writes_do_not_leak_into_results() {
        let (dir, mut w) = writer("bookkeeping");
        w.begin().unwrap();
        crate::sqlite::write_meta(w.conn(), "applied", "1").unwrap();
        w.commit().unwrap();
        let r = one(
            &mut w,
            &["CREATE TABLE foo (id INTEGER PRIMARY KEY, name TEXT)"],
        );
        assert_eq!(
            r[0],
            StmtResult {
                time: r[0].time,
                ..StmtResult::default()
            }
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
