//! The durable Raft log: a SQLite file written by one thread that batches concurrent appends
//! into one transaction and one fsync (group commit).
//!
//! Appended entries are readable at once from an in-memory cache and acknowledged to openraft
//! only after the batch that holds them is fsynced. The cache keeps the newest entries so that
//! replication rarely touches the disk.

// openraft's trait methods return its (large) StorageError; our helpers return the same type.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, RaftLogId, RaftLogReader, Vote};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::io_err;
use crate::{Entry, LogId, NodeId, StorageError, TypeConfig};

/// Flushed entries kept in memory for replication reads: at most this many, and at most
/// [`CACHE_DURABLE_BYTES`] of them (entries of coalesced requests can be a MiB each).
const CACHE_DURABLE_ENTRIES: usize = 8192;
const CACHE_DURABLE_BYTES: usize = 32 << 20;

#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<Mutex<State>>,
    ops: mpsc::Sender<Op>,
    reader: Mutex<Connection>,
}

struct State {
    cache: BTreeMap<u64, Cached>,
    durable_in_cache: usize,
    durable_bytes: usize,
    last_log_id: Option<LogId>,
    last_purged: Option<LogId>,
    vote: Option<Vote<NodeId>>,
    next_seq: u64,
}

struct Cached {
    seq: u64,
    durable: bool,
    /// Its encoded size.
    bytes: usize,
    entry: Entry,
}

impl State {
    /// Accounts for cached entries that leave the cache.
    fn forget<'a>(&mut self, gone: impl IntoIterator<Item = &'a Cached>) {
        for c in gone.into_iter().filter(|c| c.durable) {
            self.durable_in_cache -= 1;
            self.durable_bytes -= c.bytes;
        }
    }
}

enum Op {
    Append {
        seq: u64,
        rows: Vec<(u64, u64, Vec<u8>)>,
        done: LogFlushed<TypeConfig>,
    },
    Truncate {
        from: u64,
        done: oneshot::Sender<rusqlite::Result<()>>,
    },
    Purge {
        upto: LogId,
        done: oneshot::Sender<rusqlite::Result<()>>,
    },
    Vote {
        vote: Vec<u8>,
        done: oneshot::Sender<rusqlite::Result<()>>,
    },
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS log (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, entry BLOB NOT NULL);
         CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);",
    )?;
    Ok(conn)
}

fn get_meta<T: serde::de::DeserializeOwned>(
    conn: &Connection,
    key: &str,
) -> Result<Option<T>, StorageError> {
    let raw: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
        .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))?;
    raw.map(|b| serde_json::from_slice(&b))
        .transpose()
        .map_err(|e| io_err(ErrorSubject::Store, ErrorVerb::Read, e))
}

impl LogStore {
    /// The id of the newest entry appended (durable or not yet), for pre-vote.
    pub fn last_log_id(&self) -> Option<LogId> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_log_id
    }

    /// Opens (or creates) the log at `path` and starts its writer thread.
    pub fn open(path: &Path, metrics: Arc<crate::metrics::Metrics>) -> Result<Self, StorageError> {
        let writer = open(path).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let reader = open(path).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let vote = get_meta(&reader, "vote")?;
        let last_purged: Option<LogId> = get_meta(&reader, "last_purged")?;
        let last_row: Option<Vec<u8>> = reader
            .query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let last_log_id = match last_row {
            Some(b) => Some(*decode(&b)?.get_log_id()),
            None => last_purged,
        };
        let (tx, rx) = mpsc::channel();
        let state = State {
            cache: BTreeMap::new(),
            durable_in_cache: 0,
            durable_bytes: 0,
            last_log_id,
            last_purged,
            vote,
            next_seq: 0,
        };
        let state = Arc::new(Mutex::new(state));
        let (m, shared) = (metrics, state.clone());
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(writer, rx, &shared, &m))
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                state,
                ops: tx,
                reader: Mutex::new(reader),
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, op: Op) -> Result<(), StorageError> {
        self.inner.ops.send(op).map_err(|_| {
            io_err(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                std::io::Error::other("raft log writer stopped"),
            )
        })
    }

    async fn send_wait(
        &self,
        op: impl FnOnce(oneshot::Sender<rusqlite::Result<()>>) -> Op,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.send(op(tx))?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io_err(subject, ErrorVerb::Write, e)),
            Err(_) => Err(io_err(
                subject,
                ErrorVerb::Write,
                std::io::Error::other("raft log writer stopped"),
            )),
        }
    }
}

fn decode(bytes: &[u8]) -> Result<Entry, StorageError> {
    serde_json::from_slice(bytes).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))
}

fn writer_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<Op>,
    state: &Mutex<State>,
    metrics: &crate::metrics::Metrics,
) {
    while let Ok(first) = rx.recv() {
        // Everything queued while the previous fsync ran goes into this one transaction.
        let mut batch = vec![first];
        while let Ok(op) = rx.try_recv() {
            batch.push(op);
        }
        let started = std::time::Instant::now();
        let result = write_batch(&mut conn, &batch);
        let entries: usize = batch
            .iter()
            .map(|op| {
                if let Op::Append { rows, .. } = op {
                    rows.len()
                } else {
                    0
                }
            })
            .sum();
        metrics.log_flush(entries, started.elapsed());
        if result.is_ok() {
            mark_durable(state, &batch);
        }
        for op in batch {
            let res = result
                .as_ref()
                .map(|_| ())
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.to_string().into()));
            match op {
                Op::Append { done, .. } => {
                    done.log_io_completed(res.map_err(std::io::Error::other))
                }
                Op::Truncate { done, .. } | Op::Purge { done, .. } | Op::Vote { done, .. } => {
                    let _ = done.send(res);
                }
            }
        }
    }
}

fn write_batch(conn: &mut Connection, batch: &[Op]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert =
            tx.prepare_cached("INSERT OR REPLACE INTO log (idx, term, entry) VALUES (?1, ?2, ?3)")?;
        for op in batch {
            match op {
                Op::Append { rows, .. } => {
                    for (idx, term, entry) in rows {
                        insert.execute(params![*idx as i64, *term as i64, entry])?;
                    }
                }
                Op::Truncate { from, .. } => {
                    tx.execute("DELETE FROM log WHERE idx >= ?1", [*from as i64])?;
                }
                Op::Purge { upto, .. } => {
                    tx.execute("DELETE FROM log WHERE idx <= ?1", [upto.index as i64])?;
                    let v = serde_json::to_vec(upto)
                        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
                    tx.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('last_purged', ?1)",
                        [v],
                    )?;
                }
                Op::Vote { vote, .. } => {
                    tx.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('vote', ?1)",
                        [vote],
                    )?;
                }
            }
        }
    }
    crate::failpoint("log-before-commit");
    tx.commit()?;
    crate::failpoint("log-after-commit");
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        if start >= end {
            return Ok(Vec::new());
        }
        // Cache first, then disk: an entry evicted from the cache in between was durable before
        // it was evicted, so the disk read finds it.
        let (mut found, end): (BTreeMap<u64, Entry>, u64) = {
            let st = self.state();
            let end = end.min(st.last_log_id.map_or(0, |l| l.index + 1));
            (
                st.cache
                    .range(start..end.max(start))
                    .map(|(k, c)| (*k, c.entry.clone()))
                    .collect(),
                end,
            )
        };
        if start >= end {
            return Ok(Vec::new());
        }
        if found.len() as u64 != end - start {
            let conn = self.inner.reader.lock().unwrap_or_else(|e| e.into_inner());
            let mut stmt = conn
                .prepare_cached(
                    "SELECT idx, entry FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
                )
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let rows = stmt
                .query_map([start as i64, end.min(i64::MAX as u64) as i64], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
                })
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            for row in rows {
                let (idx, bytes) =
                    row.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
                if let std::collections::btree_map::Entry::Vacant(v) = found.entry(idx) {
                    v.insert(decode(&bytes)?);
                }
            }
        }
        Ok(found.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let st = self.state();
        Ok(LogState {
            last_purged_log_id: st.last_purged,
            last_log_id: st.last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let bytes = serde_json::to_vec(vote)
            .map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))?;
        self.send_wait(|done| Op::Vote { vote: bytes, done }, ErrorSubject::Vote)
            .await?;
        self.state().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.state().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        let mut st = self.state();
        let seq = st.next_seq;
        st.next_seq += 1;
        for entry in entries {
            let id = *entry.get_log_id();
            let bytes = serde_json::to_vec(&entry)
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            let len = bytes.len();
            rows.push((id.index, id.leader_id.term, bytes));
            if let Some(old) = st.cache.insert(
                id.index,
                Cached {
                    seq,
                    durable: false,
                    bytes: len,
                    entry,
                },
            ) {
                st.forget([&old]);
            }
            st.last_log_id = Some(id);
        }
        drop(st);
        self.send(Op::Append {
            seq,
            rows,
            done: callback,
        })
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        {
            let mut st = self.state();
            let removed = st.cache.split_off(&log_id.index);
            st.forget(removed.values());
        }
        self.send_wait(
            |done| Op::Truncate {
                from: log_id.index,
                done,
            },
            ErrorSubject::Logs,
        )
        .await?;
        let conn_last = {
            let conn = self.inner.reader.lock().unwrap_or_else(|e| e.into_inner());
            conn.query_row("SELECT entry FROM log ORDER BY idx DESC LIMIT 1", [], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .optional()
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?
        };
        let mut st = self.state();
        st.last_log_id = match conn_last {
            Some(b) => Some(*decode(&b)?.get_log_id()),
            None => st.last_purged,
        };
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.send_wait(|done| Op::Purge { upto: log_id, done }, ErrorSubject::Logs)
            .await?;
        let mut st = self.state();
        let keep = st.cache.split_off(&(log_id.index + 1));
        let removed = std::mem::replace(&mut st.cache, keep);
        st.forget(removed.values());
        st.last_purged = Some(log_id);
        if st.last_log_id.is_none_or(|l| l.index < log_id.index) {
            st.last_log_id = Some(log_id);
        }
        Ok(())
    }
}

/// Marks the entries of flushed appends durable and evicts the oldest durable ones beyond the
/// cache budget. An entry re-appended (after a truncation) by a later append keeps its own state.
fn mark_durable(state: &Mutex<State>, batch: &[Op]) {
    let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
    let (mut newly, mut bytes) = (0, 0);
    for op in batch {
        if let Op::Append { seq, rows, .. } = op {
            for (idx, _, _) in rows {
                if let Some(c) = st.cache.get_mut(idx)
                    && c.seq == *seq
                    && !c.durable
                {
                    c.durable = true;
                    newly += 1;
                    bytes += c.bytes;
                }
            }
        }
    }
    st.durable_in_cache += newly;
    st.durable_bytes += bytes;
    while st.durable_in_cache > CACHE_DURABLE_ENTRIES || st.durable_bytes > CACHE_DURABLE_BYTES {
        let Some((&k, c)) = st.cache.first_key_value() else {
            break;
        };
        if !c.durable {
            break;
        }
        if let Some(c) = st.cache.remove(&k) {
            st.forget([&c]);
        }
    }
}
