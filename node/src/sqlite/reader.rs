//! A pool of read-only connections for queries that do not go through the Raft log.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::Semaphore;

use crate::command::{Mode, Statement, StmtResult};
use crate::error::{Error, Result};

/// Read-only connections, opened lazily and reused. Reads run on the blocking thread pool.
#[derive(Clone)]
pub struct ReadPool {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
    /// Bumped when the database file is replaced; connections from an older epoch are dropped.
    epoch: std::sync::atomic::AtomicU64,
    /// Interrupt handles of reads in flight, for a starved checkpoint.
    active: Mutex<std::collections::HashMap<u64, rusqlite::InterruptHandle>>,
    next_read: std::sync::atomic::AtomicU64,
}

impl ReadPool {
    pub fn new(path: PathBuf, size: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                path,
                idle: Mutex::new(Vec::new()),
                permits: Semaphore::new(size.max(1)),
                epoch: Default::default(),
                active: Mutex::default(),
                next_read: Default::default(),
            }),
        }
    }

    /// Drops idle connections so the next read sees a replaced database file.
    pub fn reset(&self) {
        self.inner
            .epoch
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Interrupts every read in flight; returns how many.
    pub fn interrupt_all(&self) -> usize {
        let active = self.inner.active.lock().unwrap_or_else(|e| e.into_inner());
        for h in active.values() {
            h.interrupt();
        }
        active.len()
    }

    /// Runs read-only statements. `timeout` bounds each statement (rqlite's `db_timeout`), so a
    /// slow reader cannot pin an old WAL snapshot indefinitely.
    pub async fn query(
        &self,
        stmts: Vec<Statement>,
        mode: Mode,
        timeout: Option<Duration>,
    ) -> Result<Vec<StmtResult>> {
        let _permit = self
            .inner
            .permits
            .acquire()
            .await
            .map_err(|_| Error::ShuttingDown)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let epoch = inner.epoch.load(std::sync::atomic::Ordering::SeqCst);
            let conn = inner.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut conn = match conn {
                Some(c) => c,
                None => crate::sqlite::open_reader(&inner.path)?,
            };
            if let Some(deadline) = timeout.and_then(|t| Instant::now().checked_add(t)) {
                conn.progress_handler(1000, Some(move || Instant::now() > deadline))?;
            }
            let id = inner
                .next_read
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            inner
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, conn.get_interrupt_handle());
            // One read transaction so that all statements see the same snapshot.
            let results = read_tx(&conn, &stmts, mode);
            inner
                .active
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            conn.progress_handler(0, None::<fn() -> bool>)?;
            if inner.epoch.load(std::sync::atomic::Ordering::SeqCst) == epoch {
                inner
                    .idle
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(conn);
            }
            results
        })
        .await
        .map_err(|e| Error::Internal(format!("read task failed: {e}")))?
    }
}

fn read_tx(conn: &Connection, stmts: &[Statement], mode: Mode) -> Result<Vec<StmtResult>> {
    conn.execute_batch("BEGIN")?;
    let mut results = crate::sqlite::exec::run(conn, stmts, mode);
    // Read-only connections turn writes into errors; give rqlite's wording.
    for r in &mut results {
        if let Some(e) = &r.error
            && e.contains("readonly database")
        {
            r.error = Some("attempt to change database via query operation".into());
        }
    }
    let _ = conn.execute_batch("COMMIT");
    Ok(results)
}
