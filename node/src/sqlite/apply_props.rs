//! Property: any sequence of requests gives the same rows and the same responses whatever
//! batches its entries land in, and the same rows as plain autocommit SQLite running the same
//! statements one request at a time on a fresh connection (rqlite's semantics).

use rusqlite::Connection;

use super::apply::{Work, Writer};
use crate::command::{Mode, ParamValue, Params, Statement, StmtResult};
use crate::testing::{self, Gen};

pub(crate) const SCHEMA: &str = "CREATE TABLE k (id INTEGER PRIMARY KEY, v INTEGER NOT NULL); \
    CREATE TABLE r (id INTEGER PRIMARY KEY ON CONFLICT ROLLBACK, v INTEGER); \
    CREATE TABLE g (x INTEGER); \
    CREATE TRIGGER g_guard BEFORE INSERT ON g WHEN new.x < 0 BEGIN SELECT RAISE(ROLLBACK, 'negative'); END; \
    CREATE TABLE s (a INTEGER, b INTEGER)";

const TABLES: [&str; 4] = ["k", "r", "g", "s"];

#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub stmts: Vec<Statement>,
    pub transaction: bool,
}

fn id(g: &mut Gen) -> u64 {
    g.below(6)
}

/// One statement without transaction control.
fn data_stmt(g: &mut Gen) -> String {
    let conflict = *g.pick(&[
        "",
        " OR ROLLBACK",
        " OR ABORT",
        " OR FAIL",
        " OR IGNORE",
        " OR REPLACE",
    ]);
    match g.below(12) {
        0 | 1 => format!(
            "INSERT{conflict} INTO k VALUES({}, {})",
            id(g),
            g.below(100)
        ),
        2 => format!("INSERT INTO r VALUES({}, {})", id(g), g.below(100)),
        3 => format!("INSERT INTO g VALUES({})", g.below(4) as i64 - 1),
        4 => format!("UPDATE k SET v = v + 1 WHERE id = {}", id(g)),
        5 => format!("UPDATE{conflict} k SET id = id + 1 WHERE id >= {}", id(g)),
        6 => format!("DELETE FROM k WHERE id = {}", id(g)),
        7 => format!(
            "INSERT{conflict} INTO k SELECT id + 3, v FROM k WHERE id < {}",
            id(g)
        ),
        8 => format!(
            "INSERT INTO k VALUES({}, {}) RETURNING id",
            id(g) + 10,
            g.below(9)
        ),
        9 => "INSERT INTO nope VALUES(1)".into(),
        10 => "INSERT INTO s VALUES(last_insert_rowid(), changes())".into(),
        _ => "SELECT count(*) FROM k".into(),
    }
}

fn control_stmt(g: &mut Gen) -> String {
    g.pick(&[
        "BEGIN",
        "BEGIN IMMEDIATE",
        "COMMIT",
        "END",
        "ROLLBACK",
        "SAVEPOINT a",
        "SAVEPOINT b",
        "RELEASE a",
        "RELEASE SAVEPOINT b",
        "ROLLBACK TO a",
    ])
    .to_string()
}

fn stmt(g: &mut Gen, control: bool) -> Statement {
    let one = |g: &mut Gen| {
        if control && g.chance(30) {
            control_stmt(g)
        } else {
            data_stmt(g)
        }
    };
    if g.chance(20) {
        let n = 2 + g.below(3);
        let parts: Vec<String> = (0..n).map(|_| one(g)).collect();
        return Statement::new(parts.join("; "));
    }
    if g.chance(15) {
        return Statement {
            sql: "INSERT INTO k VALUES(?, ?)".into(),
            params: Params::Positional(vec![
                ParamValue::Int(id(g) as i64),
                ParamValue::Int(g.below(50) as i64),
            ]),
        };
    }
    Statement::new(one(g))
}

pub(crate) fn requests(g: &mut Gen) -> Vec<Request> {
    let n = 1 + g.below(14);
    (0..n)
        .map(|_| {
            let transaction = g.chance(20);
            let m = 1 + g.below(5);
            Request {
                stmts: (0..m).map(|_| stmt(g, !transaction)).collect(),
                transaction,
            }
        })
        .collect()
}

pub(crate) fn dump(conn: &Connection) -> Vec<String> {
    let mut out = Vec::new();
    for t in TABLES {
        let mut s = conn
            .prepare(&format!("SELECT * FROM {t} ORDER BY rowid"))
            .unwrap();
        let n = s.column_count();
        let rows = s
            .query_map([], |r| {
                let cells: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                    .collect();
                Ok(format!("{t}: {}", cells.join(",")))
            })
            .unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out
}

/// A response with the timing left out.
pub(crate) fn shape(r: &[StmtResult]) -> Vec<StmtResult> {
    r.iter()
        .map(|x| StmtResult {
            time: 0.0,
            ..x.clone()
        })
        .collect()
}

/// Applies the requests in batches that end after the entries in `cuts`.
fn apply(reqs: &[Request], cuts: &[bool], name: &str) -> (Vec<String>, Vec<Vec<StmtResult>>) {
    let (dir, mut w) = super::apply::tests::writer(name);
    w.conn().pragma_update(None, "synchronous", "OFF").unwrap();
    w.begin().unwrap();
    w.conn().execute_batch(SCHEMA).unwrap();
    w.commit().unwrap();
    let works: Vec<Work<'_>> = reqs
        .iter()
        .enumerate()
        .map(|(i, r)| Work {
            seed: i as u64 + 2,
            stmts: &r.stmts,
            transaction: r.transaction,
            mode: Mode::Request,
        })
        .collect();
    let mut out = Vec::new();
    let mut start = 0;
    w.begin().unwrap();
    for (i, work) in works.iter().enumerate() {
        let prior = works[start..i].to_vec();
        let mut again = |w: &mut Writer| {
            for (k, p) in prior.iter().enumerate() {
                w.reapply(*p, k == 0)?;
            }
            Ok(!prior.is_empty())
        };
        let a = w.apply(*work, &mut again).expect("apply failed");
        if a.committed_prior {
            start = i;
        }
        assert!(!w.conn().is_autocommit(), "the batch transaction was lost");
        out.push(shape(&a.results));
        if cuts[i] {
            w.commit().unwrap();
            w.begin().unwrap();
            start = i + 1;
        }
    }
    w.commit().unwrap();
    let d = dump(w.conn());
    drop(w);
    std::fs::remove_dir_all(dir).unwrap();
    (d, out)
}

/// Plain SQLite in autocommit, a new connection per request (as a member that restarted
/// between entries); `?transaction` as rqlite runs it. Returns rows and, per request, which
/// statements failed.
fn reference(reqs: &[Request], name: &str) -> (Vec<String>, Vec<Vec<bool>>) {
    let dir = std::env::temp_dir().join(format!("lc-ref-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ref.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch(SCHEMA)
        .unwrap();
    let mut errors = Vec::new();
    for req in reqs {
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "synchronous", "OFF").unwrap();
        let mut failed = Vec::new();
        if req.transaction {
            conn.execute_batch("BEGIN").unwrap();
        }
        for st in &req.stmts {
            let ok = run_plain(&conn, st);
            failed.push(!ok);
            if req.transaction && !ok {
                if !conn.is_autocommit() {
                    conn.execute_batch("ROLLBACK").unwrap();
                }
                break;
            }
        }
        if req.transaction && !conn.is_autocommit() {
            conn.execute_batch("COMMIT").unwrap();
        }
        if !conn.is_autocommit() {
            // A request may not leave a transaction open: rolled back, and the last result says so.
            conn.execute_batch("ROLLBACK").unwrap();
            if let Some(last) = failed.last_mut() {
                *last = true;
            }
        }
        errors.push(failed);
    }
    let conn = Connection::open(&path).unwrap();
    let d = dump(&conn);
    drop(conn);
    std::fs::remove_dir_all(dir).unwrap();
    (d, errors)
}

/// Runs one statement as go-sqlite3 would (a string of statements stops at its first error).
fn run_plain(conn: &Connection, st: &Statement) -> bool {
    match &st.params {
        Params::Positional(p) => {
            let vals: Vec<i64> = p
                .iter()
                .map(|v| match v {
                    ParamValue::Int(i) => *i,
                    _ => unreachable!(),
                })
                .collect();
            conn.execute(&st.sql, rusqlite::params_from_iter(vals))
                .is_ok()
        }
        _ if super::split::ranges(&st.sql).len() > 1 => conn.execute_batch(&st.sql).is_ok(),
        _ => {
            let Ok(mut s) = conn.prepare(&st.sql) else {
                return false;
            };
            let mut rows = s.raw_query();
            loop {
                match rows.next() {
                    Ok(Some(_)) => {}
                    Ok(None) => return true,
                    Err(_) => return false,
                }
            }
        }
    }
}

#[test]
fn batching_never_changes_rows_or_responses_and_rows_match_autocommit_sqlite() {
    testing::run("apply_batching", 150, |g| {
        let reqs = requests(g);
        let n = reqs.len();
        let one_batch = vec![false; n];
        let each = vec![true; n];
        let random: Vec<bool> = (0..n).map(|_| g.chance(35)).collect();
        let (rows_a, resp_a) = apply(&reqs, &one_batch, "one-batch");
        let (rows_b, resp_b) = apply(&reqs, &each, "each-alone");
        let (rows_c, resp_c) = apply(&reqs, &random, "random-cuts");
        let ctx = || format!("requests: {reqs:#?}");
        assert_eq!(rows_a, rows_b, "rows differ by batching; {}", ctx());
        assert_eq!(rows_a, rows_c, "rows differ by batching; {}", ctx());
        assert_eq!(resp_a, resp_b, "responses differ by batching; {}", ctx());
        assert_eq!(resp_a, resp_c, "responses differ by batching; {}", ctx());
        let (rows_ref, errors_ref) = reference(&reqs, "reference");
        assert_eq!(
            rows_a,
            rows_ref,
            "rows differ from autocommit SQLite; {}",
            ctx()
        );
        let errors: Vec<Vec<bool>> = resp_a
            .iter()
            .map(|r| r.iter().map(|x| x.error.is_some()).collect())
            .collect();
        assert_eq!(
            errors,
            errors_ref,
            "errors differ from autocommit SQLite; {}",
            ctx()
        );
    });
}
