//! Property: requests coalesced into batch entries give the same rows and the same response per
//! request as the same requests applied one entry each, whatever batches of entries openraft
//! hands the state machine, including statements that roll the transaction back part way
//! through a batch entry.

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, LogId};

use super::StateMachine;
use crate::Entry;
use crate::command::StmtResult;
use crate::command::{Command, Mode, Request};
use crate::raft::health::SnapshotControl;
use crate::sqlite::apply_props::{self, SCHEMA};
use crate::sqlite::reader::ReadPool;
use crate::testing::{self, Gen};

fn entry(index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(cmd),
    }
}

/// Applies `entries` in calls of `calls[i]` entries each; returns rows and per-request results.
fn apply(name: &str, entries: Vec<Entry>, calls: &[usize]) -> (Vec<String>, Vec<Vec<StmtResult>>) {
    let dir = std::env::temp_dir().join(format!("lc-batch-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("db.sqlite");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut sm = StateMachine::open(
        &db,
        dir.join("snapshots"),
        ReadPool::new(db.clone(), 1),
        Arc::default(),
        Arc::new(SnapshotControl::default()),
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    let mut out = Vec::new();
    let mut rest = entries.into_iter();
    for &n in calls {
        let chunk: Vec<Entry> = rest.by_ref().take(n).collect();
        let kinds: Vec<bool> = chunk
            .iter()
            .map(|e| matches!(e.payload, EntryPayload::Normal(Command::Batch { .. })))
            .collect();
        let resps = rt.block_on(sm.apply(chunk)).expect("apply failed");
        for (resp, batch) in resps.into_iter().zip(kinds) {
            if batch {
                out.extend(resp.batch.iter().map(|r| apply_props::shape(r)));
            } else {
                out.push(apply_props::shape(&resp.results));
            }
        }
    }
    drop(sm);
    let conn = rusqlite::Connection::open(&db).unwrap();
    let rows = apply_props::dump(&conn);
    drop(conn);
    let _ = std::fs::remove_dir_all(&dir);
    (rows, out)
}

fn request(r: &apply_props::Request) -> Request {
    Request {
        stmts: r.stmts.clone(),
        transaction: r.transaction,
        mode: Mode::Request,
    }
}

/// Cuts `n` items into random groups; returns the group sizes.
fn groups(g: &mut Gen, n: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut left = n;
    while left > 0 {
        let k = (1 + g.below(5) as usize).min(left);
        sizes.push(k);
        left -= k;
    }
    sizes
}

#[test]
fn coalescing_requests_never_changes_rows_or_responses() {
    testing::run("batch_entries", 60, |g| {
        let reqs = apply_props::requests(g);
        let schema = Command::Statements {
            stmts: vec![crate::command::Statement::new(SCHEMA)],
            transaction: false,
            mode: Mode::Execute,
            at_ms: None,
        };
        // One request per entry, one entry per apply.
        let mut alone = vec![entry(1, schema.clone())];
        alone.extend(reqs.iter().enumerate().map(|(i, r)| {
            let r = request(r);
            entry(
                i as u64 + 2,
                Command::Statements {
                    stmts: r.stmts,
                    transaction: r.transaction,
                    mode: r.mode,
                    at_ms: None,
                },
            )
        }));
        let calls = vec![1; alone.len()];
        let (rows_a, resp_a) = apply("alone", alone, &calls);
        // Coalesced: random batch entries, applied in random groups of entries.
        let mut coalesced = vec![entry(1, schema)];
        let mut next = 0;
        for size in groups(g, reqs.len()) {
            let batch: Vec<Request> = reqs[next..next + size].iter().map(request).collect();
            next += size;
            coalesced.push(entry(
                coalesced.len() as u64 + 1,
                Command::Batch {
                    reqs: batch,
                    at_ms: None,
                },
            ));
        }
        let calls = groups(g, coalesced.len());
        let (rows_b, resp_b) = apply("coalesced", coalesced, &calls);
        let ctx = || format!("requests: {reqs:#?}");
        assert_eq!(rows_a, rows_b, "rows differ when coalesced; {}", ctx());
        // The schema entry's result is the first of both.
        assert_eq!(resp_a, resp_b, "responses differ when coalesced; {}", ctx());
    });
}
