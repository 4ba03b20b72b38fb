//! Query-string flags and rqlite's JSON result shapes (plain and associative).

use std::time::Duration;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::command::{StmtResult, Value};
use crate::config::parse_duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Level {
    None,
    #[default]
    Weak,
    Strong,
    Linearizable,
}

/// Flags from the query string. Presence-only flags are true when the key appears at all.
#[derive(Debug, Default)]
pub struct Flags {
    pub transaction: bool,
    pub timings: bool,
    pub pretty: bool,
    pub redirect: bool,
    pub associative: bool,
    pub blob_array: bool,
    pub compress: bool,
    pub sync: bool,
    pub queue: bool,
    pub wait: bool,
    pub noleader: bool,
    pub nonvoters: bool,
    pub ver2: bool,
    pub level: Level,
    pub freshness: Option<Duration>,
    pub freshness_strict: bool,
    pub db_timeout: Option<Duration>,
    pub timeout: Option<Duration>,
    pub q: Option<String>,
    pub key: Option<String>,
    pub kind: Option<String>,
}

impl Flags {
    pub fn parse(raw: Option<&str>) -> Result<Self, String> {
        let mut f = Flags::default();
        let Some(raw) = raw else { return Ok(f) };
        let mut seen = std::collections::HashSet::new();
        for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
            // As in rqlite, a repeated key keeps its first value.
            if !seen.insert(k.clone()) {
                continue;
            }
            let dur =
                |v: &str| parse_duration(v).map_err(|_| format!("{k} is not a valid duration"));
            match k.as_ref() {
                "transaction" => f.transaction = true,
                "timings" => f.timings = true,
                "pretty" => f.pretty = true,
                "redirect" => f.redirect = true,
                "associative" => f.associative = true,
                "blob_array" => f.blob_array = true,
                "compress" => f.compress = true,
                "sync" => f.sync = true,
                "queue" => f.queue = true,
                "wait" => f.wait = true,
                "noleader" => f.noleader = true,
                "nonvoters" => f.nonvoters = true,
                "ver" => f.ver2 = v == "2",
                "freshness_strict" => f.freshness_strict = true,
                "level" => {
                    f.level = match v.as_ref() {
                        "none" => Level::None,
                        "weak" | "" | "auto" => Level::Weak,
                        "strong" => Level::Strong,
                        "linearizable" => Level::Linearizable,
                        other => {
                            return Err(format!(
                                "invalid level {other:?}: use none, weak, strong, linearizable or auto"
                            ));
                        }
                    }
                }
                "freshness" => f.freshness = Some(dur(&v)?),
                "db_timeout" => f.db_timeout = Some(dur(&v)?),
                "timeout" => f.timeout = Some(dur(&v)?),
                "q" if v.is_empty() => return Err("query parameter not set".into()),
                "q" => f.q = Some(v.into_owned()),
                "key" => f.key = Some(v.into_owned()),
                "type" => f.kind = Some(v.into_owned()),
                // rqlite ignores flags it does not know; so do we.
                _ => {}
            }
        }
        if f.freshness_strict && f.freshness.is_none() {
            return Err("freshness_strict requires freshness".into());
        }
        Ok(f)
    }
}

/// Serializes JSON compactly, or with rqlite's four-space indent for `pretty`.
pub fn to_json<T: Serialize>(value: &T, pretty: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    if pretty {
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
        let _ = value.serialize(&mut ser);
    } else {
        let _ = serde_json::to_writer(&mut out, value);
    }
    out
}

/// The top-level response: `{"results": [...], "error": ..., "time": ...}`.
pub struct Response<'a> {
    pub results: &'a [StmtResult],
    pub error: Option<&'a str>,
    pub time: Option<f64>,
    pub timings: bool,
    pub associative: bool,
    /// BLOBs as arrays of byte values (`?blob_array`) instead of base64.
    pub blob_array: bool,
    /// The statements ran as queries (`/db/query`): an associative error then carries
    /// `"rows":[]`, as rqlite's query results do.
    pub queries: bool,
}

impl Serialize for Response<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("results", &Results(self))?;
        if let Some(e) = self.error {
            m.serialize_entry("error", e)?;
        }
        if let Some(t) = self.time.filter(|_| self.timings) {
            m.serialize_entry("time", &t)?;
        }
        m.end()
    }
}

struct Results<'a>(&'a Response<'a>);

impl Serialize for Results<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.results.len()))?;
        for r in self.0.results {
            seq.serialize_element(&One { r, res: self.0 })?;
        }
        seq.end()
    }
}

struct One<'a> {
    r: &'a StmtResult,
    res: &'a Response<'a>,
}

impl Serialize for One<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (r, res) = (self.r, self.res);
        let blobs = res.blob_array;
        let mut m = s.serialize_map(None)?;
        if let Some(e) = &r.error {
            if res.associative && res.queries {
                m.serialize_entry("rows", &[(); 0])?;
            }
            m.serialize_entry("error", e)?;
            return m.end();
        }
        match (&r.columns, res.associative) {
            (Some(cols), true) => {
                let types = r.types.as_deref().unwrap_or_default();
                m.serialize_entry("types", &Assoc { cols, vals: types })?;
                let rows: Vec<AssocRow<'_>> = r
                    .values
                    .iter()
                    .flatten()
                    .map(|row| AssocRow { cols, row, blobs })
                    .collect();
                m.serialize_entry("rows", &rows)?;
            }
            (Some(cols), false) => {
                m.serialize_entry("columns", cols)?;
                m.serialize_entry("types", &r.types)?;
                if let Some(v) = &r.values {
                    m.serialize_entry("values", &Rows(v, blobs))?;
                }
            }
            (None, assoc) => {
                if let Some(id) = r.last_insert_id {
                    m.serialize_entry("last_insert_id", &id)?;
                }
                if let Some(n) = r.rows_affected {
                    m.serialize_entry("rows_affected", &n)?;
                }
                if assoc {
                    // Marks an execute result in an associative /db/request response.
                    m.serialize_entry("rows", &())?;
                }
            }
        }
        if res.timings {
            m.serialize_entry("time", &r.time)?;
        }
        m.end()
    }
}

/// A value, with BLOBs as byte arrays when asked (`?blob_array`).
struct Cell<'a>(&'a Value, bool);

impl Serialize for Cell<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Blob(b) if self.1 => s.collect_seq(b),
            v => v.serialize(s),
        }
    }
}

struct Rows<'a>(&'a [Vec<Value>], bool);

impl Serialize for Rows<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            self.0
                .iter()
                .map(|row| row.iter().map(|v| Cell(v, self.1)).collect::<Vec<_>>()),
        )
    }
}

struct AssocRow<'a> {
    cols: &'a [String],
    row: &'a [Value],
    blobs: bool,
}

impl Serialize for AssocRow<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.cols.len()))?;
        for (c, v) in self.cols.iter().zip(self.row) {
            m.serialize_entry(c, &Cell(v, self.blobs))?;
        }
        m.end()
    }
}

struct Assoc<'a, T> {
    cols: &'a [String],
    vals: &'a [T],
}

impl<T: Serialize> Serialize for Assoc<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.cols.len()))?;
        for (c, v) in self.cols.iter().zip(self.vals) {
            m.serialize_entry(c, v)?;
        }
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query_result() -> StmtResult {
        StmtResult {
            columns: Some(vec!["id".into(), "name".into()]),
            types: Some(vec!["integer".into(), "text".into()]),
            values: Some(vec![vec![Value::Integer(1), Value::Text("fiona".into())]]),
            time: 0.5,
            ..Default::default()
        }
    }

    fn render(results: &[StmtResult], timings: bool, associative: bool) -> String {
        String::from_utf8(to_json(
            &Response {
                results,
                error: None,
                time: Some(1.0),
                timings,
                associative,
                blob_array: false,
                queries: false,
            },
            false,
        ))
        .unwrap()
    }

    #[test]
    fn shapes() {
        let exec = StmtResult {
            last_insert_id: Some(3),
            rows_affected: Some(1),
            ..Default::default()
        };
        assert_eq!(
            render(std::slice::from_ref(&exec), false, false),
            r#"{"results":[{"last_insert_id":3,"rows_affected":1}]}"#
        );
        assert_eq!(
            render(&[query_result()], false, false),
            r#"{"results":[{"columns":["id","name"],"types":["integer","text"],"values":[[1,"fiona"]]}]}"#
        );
        assert_eq!(
            render(&[query_result(), exec], false, true),
            r#"{"results":[{"types":{"id":"integer","name":"text"},"rows":[{"id":1,"name":"fiona"}]},{"last_insert_id":3,"rows_affected":1,"rows":null}]}"#
        );
        assert_eq!(
            render(&[StmtResult::error("boom")], true, false),
            r#"{"results":[{"error":"boom"}],"time":1.0}"#
        );
        assert_eq!(
            render(&[StmtResult::default()], true, false),
            r#"{"results":[{"time":0.0}],"time":1.0}"#
        );
    }

    #[test]
    fn flags() {
        let f = Flags::parse(Some(
            "transaction&timings&level=strong&db_timeout=2s&q=SELECT+1",
        ))
        .unwrap();
        assert!(f.transaction && f.timings && !f.pretty);
        assert_eq!(f.level, Level::Strong);
        assert_eq!(f.db_timeout, Some(Duration::from_secs(2)));
        assert_eq!(f.q.as_deref(), Some("SELECT 1"));
        assert!(
            Flags::parse(Some("level=bogus"))
                .unwrap_err()
                .contains("invalid level")
        );
        assert!(Flags::parse(Some("freshness=xyz")).is_err());
        assert!(Flags::parse(Some("freshness_strict")).is_err());
        assert!(Flags::parse(Some("unknown_flag&x=1")).is_ok());
    }
}
