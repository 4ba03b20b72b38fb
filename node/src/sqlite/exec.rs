//! Runs rqlite-style statement lists against a connection and shapes the results.

use std::time::Instant;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode};

use crate::command::{Mode, ParamValue, Params, Statement, StmtResult, Value};

/// Runs read statements (the read pool's path; writes go through `apply`) and returns one
/// result per statement.
pub fn run(conn: &Connection, stmts: &[Statement], mode: Mode) -> Vec<StmtResult> {
    let mut results = Vec::with_capacity(stmts.len());
    for stmt in stmts {
        let started = Instant::now();
        let mut result = match run_one(conn, stmt, mode) {
            Ok(r) => r,
            Err(e) => StmtResult::error(error_message(&e)),
        };
        result.time = started.elapsed().as_secs_f64();
        results.push(result);
    }
    results
}

/// The error text rqlite clients see for a failed statement.
pub fn error_message(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(err, Some(msg))
            if err.code == ErrorCode::OperationInterrupted =>
        {
            format!("query timeout: {msg}")
        }
        rusqlite::Error::SqliteFailure(_, Some(msg)) => msg.clone(),
        rusqlite::Error::SqlInputError { msg, .. } => msg.clone(),
        other => other.to_string(),
    }
}

/// Rejects statements that would fight the node for control of transactions or journaling.
/// Checked textually so that every member reaches the same verdict.
pub fn forbidden(sql: &str) -> Option<&'static str> {
    let head = sql
        .trim_start()
        .get(..12)
        .unwrap_or(sql.trim_start())
        .to_ascii_uppercase();
    let first = head
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    match first {
        "BEGIN" | "COMMIT" | "END" | "ROLLBACK" | "SAVEPOINT" | "RELEASE" => Some(
            "explicit transaction control is not supported: send the statements in one request with ?transaction",
        ),
        _ => {
            let lower = sql.to_ascii_lowercase();
            if lower.contains("pragma")
                && (lower.contains("journal_mode")
                    || lower.contains("wal_autocheckpoint")
                    || lower.contains("locking_mode"))
            {
                Some(
                    "changing the journal is not supported: the node manages WAL mode and checkpoints",
                )
            } else {
                None
            }
        }
    }
}

fn run_one(conn: &Connection, stmt: &Statement, mode: Mode) -> rusqlite::Result<StmtResult> {
    if let Some(msg) = forbidden(&stmt.sql) {
        return Ok(StmtResult::error(msg));
    }
    let mut prepared = match conn.prepare_cached(&stmt.sql) {
        Ok(p) => p,
        // Several statements in one string (a dump, say): run them all, report their combined
        // effect. rusqlite checks the tail by preparing it, so a later statement that needs an
        // earlier one's table fails here with that error rather than `MultipleStatement`; for
        // a single statement the batch just fails again with the same error.
        Err(_) if matches!(stmt.params, Params::None) && mode != Mode::Query => {
            conn.execute_batch(&stmt.sql)?;
            return Ok(execute_result(conn));
        }
        Err(e) => return Err(e),
    };
    bind(&mut prepared, &stmt.params)?;
    step(conn, &mut prepared, mode)
}

/// Steps a prepared (and bound) statement to the end and shapes its result for `mode`.
pub fn step(
    conn: &Connection,
    prepared: &mut rusqlite::Statement<'_>,
    mode: Mode,
) -> rusqlite::Result<StmtResult> {
    let has_rows = prepared.column_count() > 0;
    // A write that returns rows (`INSERT ... RETURNING`) gives its rows, as in rqlite.
    let returning = has_rows && !prepared.readonly();
    let as_query = match mode {
        Mode::Query => true,
        Mode::Execute => returning,
        Mode::Request => has_rows,
    };
    if !as_query {
        let mut rows = prepared.raw_query();
        while rows.next()?.is_some() {}
        drop(rows);
        return Ok(execute_result(conn));
    }
    let columns: Vec<String> = prepared.column_names().map(str::to_owned).collect();
    let decl: Vec<Option<String>> = prepared
        .columns()
        .map(|c| c.decl_type().map(str::to_ascii_lowercase))
        .collect();
    let ncols = columns.len();
    let mut values = Vec::new();
    let mut held = 0usize;
    let mut rows = prepared.raw_query();
    while let Some(row) = rows.next()? {
        let mut out = Vec::with_capacity(ncols);
        for (i, d) in decl.iter().enumerate() {
            let v = convert(row.get_ref(i)?, d.as_deref());
            held += v.held_bytes();
            out.push(v);
        }
        values.push(out);
        if returning && held > MAX_RETURNING_BYTES {
            // Every member builds these rows while applying: past the bound, finish the write
            // and report it as a write (it happened; an error would invite a retry that
            // doubles it).
            while rows.next()?.is_some() {}
            drop(rows);
            return Ok(execute_result(conn));
        }
    }
    // Declared type when there is one; otherwise the storage class of the first row's value.
    let types = decl
        .into_iter()
        .enumerate()
        .map(|(i, d)| match d {
            Some(d) => d,
            None => match values.first().map(|r: &Vec<Value>| &r[i]) {
                Some(Value::Integer(_)) => "integer".into(),
                Some(Value::Real(_)) => "real".into(),
                Some(Value::Text(_)) => "text".into(),
                Some(Value::Blob(_)) => "blob".into(),
                _ => String::new(),
            },
        })
        .collect();
    let values = (!values.is_empty()).then_some(values);
    Ok(StmtResult {
        columns: Some(columns),
        types: Some(types),
        values,
        ..StmtResult::default()
    })
}

/// Converts a cell as rqlite (through go-sqlite3) does: booleans and time-typed columns get
/// JSON booleans and RFC 3339 text, which clients such as pyrqlite rely on.
fn convert(v: ValueRef<'_>, decl: Option<&str>) -> Value {
    match (v, decl) {
        (ValueRef::Null, _) => Value::Null,
        (ValueRef::Integer(v), Some("boolean")) => Value::Bool(v > 0),
        (ValueRef::Integer(v), Some("timestamp" | "datetime" | "date")) => {
            let secs = if v.unsigned_abs() > 1_000_000_000_000 {
                v / 1000
            } else {
                v
            };
            Value::Text(crate::sqlite::rewrite::rfc3339(secs, 0))
        }
        (ValueRef::Integer(v), _) => Value::Integer(v),
        (ValueRef::Real(v), _) => Value::Real(v),
        (ValueRef::Text(t), Some("timestamp" | "datetime" | "date")) => {
            let t = String::from_utf8_lossy(t);
            Value::Text(
                crate::sqlite::rewrite::sql_time_to_rfc3339(&t).unwrap_or_else(|| t.into_owned()),
            )
        }
        (ValueRef::Text(t), _) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        // As go-sqlite3 under rqlite: a BLOB from a text-affine column, or from an expression
        // (no declared type), comes back as text.
        (ValueRef::Blob(b), None) => Value::Text(String::from_utf8_lossy(b).into_owned()),
        (ValueRef::Blob(b), Some(d)) if text_affinity(d) => {
            Value::Text(String::from_utf8_lossy(b).into_owned())
        }
        (ValueRef::Blob(b), _) => Value::Blob(b.to_vec()),
    }
}

fn text_affinity(decl: &str) -> bool {
    decl.is_empty()
        || matches!(decl, "text" | "json")
        || [
            "varchar",
            "varying character",
            "nchar",
            "native character",
            "nvarchar",
            "clob",
        ]
        .iter()
        .any(|p| decl.starts_with(p))
}

/// Rows a write's RETURNING clause may hand back, in bytes of values, before they are dropped.
pub const MAX_RETURNING_BYTES: usize = 16 << 20;

/// The connection's `last_insert_rowid()` and `changes()` after a statement, zeros omitted, as
/// rqlite reports them: they stay from the last INSERT, UPDATE or DELETE, so a CREATE after an
/// INSERT repeats its values. Every entry starts them at 0 (`apply.rs`), so they never show the
/// node's own bookkeeping and every member reports the same.
pub fn execute_result(conn: &Connection) -> StmtResult {
    StmtResult {
        last_insert_id: Some(conn.last_insert_rowid()).filter(|&v| v != 0),
        rows_affected: Some(conn.changes()).filter(|&v| v != 0),
        ..StmtResult::default()
    }
}

pub fn bind(stmt: &mut rusqlite::Statement<'_>, params: &Params) -> rusqlite::Result<()> {
    match params {
        Params::None => Ok(()),
        Params::Positional(values) => {
            // Too few in rqlite's (go-sqlite3's) words. rqlite ignores extra ones; they stay
            // an error here: members before this one refused them, and a statement that
            // applies on some members and not on others would split the data.
            let expected = stmt.parameter_count();
            if values.len() != expected {
                let which = if values.len() < expected {
                    "not enough"
                } else {
                    "too many"
                };
                return Err(rusqlite::Error::SqlInputError {
                    error: rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_RANGE),
                    msg: format!(
                        "{which} args to execute query: want {expected} got {}",
                        values.len()
                    ),
                    sql: String::new(),
                    offset: -1,
                });
            }
            for (i, v) in values.iter().enumerate() {
                bind_value(stmt, i + 1, v)?;
            }
            Ok(())
        }
        Params::Named(values) => {
            for (name, v) in values {
                let idx = if name.starts_with([':', '@', '$']) {
                    stmt.parameter_index(name)?
                } else {
                    [':', '@', '$']
                        .iter()
                        .find_map(|p| stmt.parameter_index(&format!("{p}{name}")).ok().flatten())
                };
                let idx = idx.ok_or_else(|| rusqlite::Error::InvalidParameterName(name.clone()))?;
                bind_value(stmt, idx, v)?;
            }
            Ok(())
        }
    }
}

fn bind_value(
    stmt: &mut rusqlite::Statement<'_>,
    idx: usize,
    v: &ParamValue,
) -> rusqlite::Result<()> {
    match v {
        ParamValue::Null => stmt.raw_bind_parameter(idx, rusqlite::types::Null),
        ParamValue::Bool(b) => stmt.raw_bind_parameter(idx, *b),
        ParamValue::Int(i) => stmt.raw_bind_parameter(idx, *i),
        ParamValue::Float(f) => stmt.raw_bind_parameter(idx, *f),
        ParamValue::Text(t) => stmt.raw_bind_parameter(idx, t.as_str()),
        ParamValue::Bytes(b) => stmt.raw_bind_parameter(idx, b.as_slice()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT UNIQUE, v REAL, b BLOB)",
        )
        .unwrap();
        c
    }

    fn st(sql: &str, params: Params) -> Statement {
        Statement {
            sql: sql.into(),
            params,
        }
    }

    #[test]
    fn execute_and_query_shapes() {
        let c = conn();
        let r = run(
            &c,
            &[Statement::new("INSERT INTO t(name, v) VALUES ('a', 1.5)")],
            Mode::Execute,
        );
        assert_eq!(r[0].last_insert_id, Some(1));
        assert_eq!(r[0].rows_affected, Some(1));
        let r = run(
            &c,
            &[Statement::new("SELECT id, name, v, count(*) AS n FROM t")],
            Mode::Query,
        );
        assert_eq!(r[0].columns.as_deref().unwrap(), ["id", "name", "v", "n"]);
        assert_eq!(
            r[0].types.as_deref().unwrap(),
            ["integer", "text", "real", "integer"]
        );
        assert_eq!(
            r[0].values.as_ref().unwrap()[0],
            vec![
                Value::Integer(1),
                Value::Text("a".into()),
                Value::Real(1.5),
                Value::Integer(1)
            ]
        );
    }

    #[test]
    fn positional_and_named_params() {
        let c = conn();
        let stmts = [
            st(
                "INSERT INTO t(name, v) VALUES (?, ?)",
                Params::Positional(vec![ParamValue::Text("x".into()), ParamValue::Int(2)]),
            ),
            st(
                "INSERT INTO t(name, b) VALUES (:name, :b)",
                Params::Named(vec![
                    ("name".into(), ParamValue::Text("y".into())),
                    ("b".into(), ParamValue::Bytes(vec![1, 2])),
                ]),
            ),
            st("INSERT INTO t(name) VALUES (?)", Params::Positional(vec![])),
        ];
        let r = run(&c, &stmts, Mode::Execute);
        assert!(r[0].error.is_none() && r[1].error.is_none(), "{r:?}");
        assert!(
            r[2].error.is_some(),
            "wrong parameter count must be an error"
        );
    }

    #[test]
    fn request_mode_picks_per_statement() {
        let c = conn();
        let stmts = [
            Statement::new("INSERT INTO t(name) VALUES ('a')"),
            Statement::new("SELECT name FROM t"),
        ];
        let r = run(&c, &stmts, Mode::Request);
        assert!(!r[0].is_query() && r[0].rows_affected == Some(1));
        let r = run(
            &c,
            &[
                Statement::new("CREATE TABLE z (x)"),
                Statement::new("SELECT * FROM z"),
            ],
            Mode::Request,
        );
        // As rqlite: DDL repeats the connection's values from the last INSERT.
        assert_eq!(
            (r[0].last_insert_id, r[0].rows_affected),
            (Some(1), Some(1))
        );
        assert!(r[1].values.is_none(), "no rows, no values");
        assert!(r[1].is_query());
    }

    #[test]
    fn transaction_control_is_refused() {
        assert!(forbidden("begin transaction").is_some());
        assert!(forbidden("  COMMIT").is_some());
        assert!(forbidden("PRAGMA journal_mode=DELETE").is_some());
        assert!(forbidden("INSERT INTO t VALUES ('begin')").is_none());
        assert!(forbidden("BEGINNING").is_none());
    }
}
