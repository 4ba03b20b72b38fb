//! SQL text dump of the user database (`/db/backup?fmt=sql`), in the shape of the sqlite3
//! shell's `.dump`, which rqlite also produces: schema, rows as INSERTs, then indexes, triggers
//! and views, in one transaction. Our bookkeeping table is left out.

use std::fmt::Write;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension};

use super::META_TABLE;

/// Writes the dump of `conn`'s main database to `out`. Run it inside a read transaction for a
/// consistent picture.
pub fn dump(conn: &Connection, out: &mut String) -> crate::Result<()> {
    // Their contents live in shadow tables the module re-creates itself; replaying those as
    // plain tables would fail on load. Refuse rather than hand out a dump that cannot load.
    let virtual_table: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(name) = virtual_table {
        return Err(crate::Error::BadRequest(format!(
            "virtual table {name:?} cannot be dumped as SQL yet: use the binary backup (/db/backup without fmt)"
        )));
    }
    out.push_str("PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n");
    let mut tables = conn.prepare(
        "SELECT name, sql FROM sqlite_schema
         WHERE type = 'table' AND sql IS NOT NULL AND name <> ?1
           AND (name NOT LIKE 'sqlite\\_%' ESCAPE '\\' OR name = 'sqlite_sequence')
         ORDER BY name = 'sqlite_sequence', rowid",
    )?;
    let tables: Vec<(String, String)> = tables
        .query_map([META_TABLE], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (name, sql) in &tables {
        if name == "sqlite_sequence" {
            // Created by the first AUTOINCREMENT table; only its counters are restored.
            out.push_str("DELETE FROM sqlite_sequence;\n");
        } else {
            let _ = writeln!(out, "{sql};");
        }
        rows(conn, name, out)?;
    }
    let mut rest = conn.prepare(
        "SELECT sql FROM sqlite_schema
         WHERE type IN ('index', 'trigger', 'view') AND sql IS NOT NULL AND tbl_name <> ?1
           AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
         ORDER BY type = 'view', type = 'trigger', rowid",
    )?;
    let mut q = rest.query([META_TABLE])?;
    while let Some(r) = q.next()? {
        let sql: String = r.get(0)?;
        let _ = writeln!(out, "{sql};");
    }
    out.push_str("COMMIT;\n");
    Ok(())
}

fn rows(conn: &Connection, table: &str, out: &mut String) -> rusqlite::Result<()> {
    let name = quote_ident(table);
    let mut stmt = conn.prepare(&format!("SELECT * FROM {name}"))?;
    let n = stmt.column_count();
    let mut q = stmt.query([])?;
    while let Some(r) = q.next()? {
        let _ = write!(out, "INSERT INTO {name} VALUES(");
        for i in 0..n {
            if i > 0 {
                out.push(',');
            }
            literal(r.get_ref(i)?, out);
        }
        out.push_str(");\n");
    }
    Ok(())
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A SQL literal that reads back as the same value and storage class.
fn literal(v: ValueRef<'_>, out: &mut String) {
    match v {
        ValueRef::Null => out.push_str("NULL"),
        ValueRef::Integer(i) => {
            let _ = write!(out, "{i}");
        }
        ValueRef::Real(f) if f.is_nan() => out.push_str("NULL"),
        ValueRef::Real(f) if f.is_infinite() => {
            out.push_str(if f > 0.0 { "1e999" } else { "-1e999" })
        }
        // `{:?}` is the shortest text that parses back to the same f64 and keeps a `.0` on
        // whole numbers, so the value stays REAL.
        ValueRef::Real(f) => {
            let _ = write!(out, "{f:?}");
        }
        ValueRef::Text(t) => {
            out.push('\'');
            out.push_str(&String::from_utf8_lossy(t).replace('\'', "''"));
            out.push('\'');
        }
        ValueRef::Blob(b) => {
            out.push_str("X'");
            for byte in b {
                let _ = write!(out, "{byte:02X}");
            }
            out.push('\'');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_restores_the_same_rows_types_and_schema() {
        let src = Connection::open_in_memory().unwrap();
        crate::sqlite::ensure_meta(&src).unwrap();
        src.execute_batch(&format!(
            "INSERT INTO {META_TABLE} VALUES ('applied', '42');
             CREATE TABLE \"odd \"\"name\" (id INTEGER PRIMARY KEY AUTOINCREMENT, t TEXT, r REAL, b BLOB, n);
             INSERT INTO \"odd \"\"name\" (t, r, b, n) VALUES ('it''s', 3.0, x'00ff', NULL);
             INSERT INTO \"odd \"\"name\" (t, r, b, n) VALUES ('línea
dos', 0.1, x'', 7);
             CREATE INDEX i_t ON \"odd \"\"name\"(t);
             CREATE VIEW v AS SELECT t FROM \"odd \"\"name\";
             CREATE TRIGGER tr AFTER INSERT ON \"odd \"\"name\" BEGIN SELECT 1; END;"
        ))
        .unwrap();
        let mut sql = String::new();
        dump(&src, &mut sql).unwrap();
        assert!(!sql.contains(META_TABLE), "bookkeeping leaked: {sql}");

        let dst = Connection::open_in_memory().unwrap();
        dst.execute_batch(&sql).unwrap();
        let all = |c: &Connection| -> Vec<String> {
            let mut s = c
                .prepare("SELECT quote(id), typeof(t), quote(t), typeof(r), quote(r), quote(b), quote(n) FROM \"odd \"\"name\" ORDER BY id")
                .unwrap();
            s.query_map([], |r| {
                Ok((0..7)
                    .map(|i| r.get::<_, String>(i).unwrap())
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect()
        };
        assert_eq!(all(&src), all(&dst));
        let schema = |c: &Connection| -> Vec<String> {
            let mut s = c
                .prepare("SELECT type || ' ' || name FROM sqlite_schema WHERE tbl_name <> ?1 ORDER BY name")
                .unwrap();
            s.query_map([META_TABLE], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        let want: Vec<String> = schema(&src);
        assert_eq!(want, schema(&dst));
        let seq = |c: &Connection| -> i64 {
            c.query_row("SELECT seq FROM sqlite_sequence", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(seq(&src), seq(&dst));
    }

    #[test]
    fn virtual_tables_are_refused_with_a_message() {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch("CREATE VIRTUAL TABLE docs USING fts5(body)")
            .unwrap();
        let err = dump(&c, &mut String::new()).unwrap_err().to_string();
        assert!(err.contains("binary backup"), "{err}");
    }
}
