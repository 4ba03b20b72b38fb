//! What goes into the Raft log (statements to apply) and what applying them returns.

use serde::{Deserialize, Serialize};

/// A parameter bound to a statement. JSON numbers keep their integer-ness.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ParamValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    /// A JSON array of byte values, bound as a BLOB.
    Bytes(Vec<u8>),
}

// By hand: serde's untagged derive buffers each value and builds an error for every variant it
// rules out, which was a visible share of a follower's CPU.
impl<'de> Deserialize<'de> for ParamValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = ParamValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("null, a boolean, a number, a string or an array of bytes")
            }
            fn visit_unit<E>(self) -> Result<ParamValue, E> {
                Ok(ParamValue::Null)
            }
            fn visit_none<E>(self) -> Result<ParamValue, E> {
                Ok(ParamValue::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<ParamValue, E> {
                Ok(ParamValue::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<ParamValue, E> {
                Ok(ParamValue::Int(i))
            }
            fn visit_u64<E>(self, u: u64) -> Result<ParamValue, E> {
                Ok(i64::try_from(u).map_or(ParamValue::Float(u as f64), ParamValue::Int))
            }
            fn visit_f64<E>(self, f: f64) -> Result<ParamValue, E> {
                Ok(ParamValue::Float(f))
            }
            fn visit_str<E>(self, s: &str) -> Result<ParamValue, E> {
                Ok(ParamValue::Text(s.to_owned()))
            }
            fn visit_string<E>(self, s: String) -> Result<ParamValue, E> {
                Ok(ParamValue::Text(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<ParamValue, A::Error> {
                let mut bytes = Vec::with_capacity(a.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = a.next_element::<u8>()? {
                    bytes.push(b);
                }
                Ok(ParamValue::Bytes(bytes))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parameters of one statement: positional (`?`) or named (`:name`, `@name`, `$name`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum Params {
    #[default]
    None,
    Positional(Vec<ParamValue>),
    Named(Vec<(String, ParamValue)>),
}

/// One SQL statement with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Statement {
    pub sql: String,
    #[serde(default)]
    pub params: Params,
}

impl Statement {
    pub fn new(sql: impl Into<String>) -> Self {
        Self {
            sql: sql.into(),
            params: Params::None,
        }
    }
}

/// How each statement of a request is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    /// `/db/execute`: run for effect, report rows affected and last insert id.
    Execute,
    /// `/db/query`: return rows.
    Query,
    /// `/db/request`: rows for read-only statements, effects for the rest.
    Request,
}

/// The statements of one HTTP request, as one unit of a [`Command::Batch`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub stmts: Vec<Statement>,
    pub transaction: bool,
    pub mode: Mode,
}

/// A Raft log payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Statements from the HTTP API. Reads only enter the log at `level=strong`.
    Statements {
        stmts: Vec<Statement>,
        transaction: bool,
        mode: Mode,
        /// Leader's wall clock when it proposed the entry (ms since the epoch), for
        /// point-in-time recovery; never read when applying. Absent in entries of earlier
        /// versions, which ignore it (serde skips unknown fields).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
    },
    /// Requests that reached the leader together, coalesced into one entry (one pass through
    /// Raft for all of them). Each applies exactly as if it were an entry of its own.
    Batch {
        reqs: Vec<Request>,
        /// As in [`Command::Statements`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
    },
    /// Replace the whole database with the given SQLite file image. Written by earlier
    /// versions; a load is now [`Command::LoadChunk`]s and a [`Command::LoadCommit`].
    Load {
        #[serde(with = "base64_bytes")]
        image: Vec<u8>,
    },
    /// One piece of a database image being loaded (`/db/load`, `--restore-from`), staged inside
    /// the database so that it is part of snapshots and commits with the applied index.
    /// `seq` 0 starts a load and drops any earlier one that never committed.
    LoadChunk {
        load: u64,
        seq: u32,
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// Replace the database with the staged image of `load`, once its pieces check out.
    LoadCommit {
        load: u64,
        chunks: u32,
        len: u64,
        crc32: u32,
        /// As in [`Command::Statements`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
    },
}

/// Wall-clock milliseconds since the epoch, as entries record it (`at_ms`).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Command {
    /// When the leader proposed it, for the entries that change data.
    pub fn at_ms(&self) -> Option<u64> {
        match self {
            Self::Statements { at_ms, .. }
            | Self::Batch { at_ms, .. }
            | Self::LoadCommit { at_ms, .. } => *at_ms,
            Self::Load { .. } | Self::LoadChunk { .. } => None,
        }
    }

    /// Bytes this command takes in the log and on the wire, without building the encoding.
    pub fn encoded_len(&self) -> usize {
        encoded_len(self)
    }
}

/// Bytes of `v`'s log encoding, without building it.
pub fn encoded_len(v: &impl Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// A cell value as rqlite returns it; BLOBs are base64 strings in JSON.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// An INTEGER in a column declared `boolean`.
    Bool(bool),
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine;
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Integer(i) => s.serialize_i64(*i),
            // As rqlite (Go's encoding/json) writes it: `3`, not serde_json's `3.0`, so a
            // client sees the same number type either way.
            Value::Real(f) => match go_float(*f) {
                Some(text) => serde_json::value::RawValue::from_string(text)
                    .map_err(serde::ser::Error::custom)?
                    .serialize(s),
                None => s.serialize_unit(),
            },
            Value::Text(t) => s.serialize_str(t),
            Value::Blob(b) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b)),
        }
    }
}

/// `f` as Go's `encoding/json` writes a float64: the shortest digits that read back as `f`,
/// positional for `1e-6 <= |f| < 1e21` (and zero, `-0` kept), otherwise `d.ddde±N`. `None` for
/// NaN and infinities, which JSON cannot hold.
pub fn go_float(f: f64) -> Option<String> {
    if !f.is_finite() {
        return None;
    }
    let a = f.abs();
    if a != 0.0 && !(1e-6..1e21).contains(&a) {
        let s = format!("{f:e}");
        return Some(match s.split_once('e') {
            Some((m, e)) if !e.starts_with('-') => format!("{m}e+{e}"),
            _ => s,
        });
    }
    Some(format!("{f}"))
}

impl Value {
    /// Roughly what the value holds in memory, to bound results built while applying.
    pub fn held_bytes(&self) -> usize {
        match self {
            Value::Text(t) => t.len() + 24,
            Value::Blob(b) => b.len() + 24,
            _ => 16,
        }
    }
}

/// The result of one statement, in rqlite's shape (fields absent when not set).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StmtResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<Vec<Value>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_insert_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows_affected: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds spent on this statement (only reported with `timings`).
    #[serde(skip)]
    pub time: f64,
}

impl StmtResult {
    pub fn error(msg: impl Into<String>) -> Self {
        Self {
            error: Some(msg.into()),
            ..Self::default()
        }
    }

    pub fn is_query(&self) -> bool {
        self.columns.is_some()
    }
}

/// What applying one log entry produced, returned to the client that proposed it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandResponse {
    #[serde(skip)]
    pub results: Vec<StmtResult>,
    /// For a [`Command::Batch`]: each request's results, in order.
    #[serde(skip)]
    pub batch: Vec<Vec<StmtResult>>,
    /// Set when the entry could not be applied as a whole (e.g. an invalid load image).
    pub error: Option<String>,
}

/// Bytes as one base64 string: the log is JSON, where a byte array would take ~3.5x the space.
pub(crate) mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_read_back_as_written() {
        let all = vec![
            ParamValue::Null,
            ParamValue::Bool(true),
            ParamValue::Int(-7),
            ParamValue::Int(i64::MAX),
            ParamValue::Float(2.5),
            ParamValue::Float(-0.0),
            ParamValue::Text("x\u{e9}\"".into()),
            ParamValue::Bytes(vec![0, 255, 7]),
            ParamValue::Bytes(Vec::new()),
        ];
        let json = serde_json::to_string(&all).unwrap();
        assert_eq!(serde_json::from_str::<Vec<ParamValue>>(&json).unwrap(), all);
        // What the derived untagged form gave: a u64 past i64 is a float, 1.0 stays a float.
        assert_eq!(
            serde_json::from_str::<Vec<ParamValue>>("[18446744073709551615, 1.0]").unwrap(),
            vec![
                ParamValue::Float(18446744073709551615.0),
                ParamValue::Float(1.0)
            ]
        );
        assert!(serde_json::from_str::<ParamValue>("[256]").is_err());
        assert!(serde_json::from_str::<ParamValue>("{}").is_err());
    }

    #[test]
    fn load_images_are_compact_in_the_log() {
        let cmd = Command::Load {
            image: vec![0u8, 1, 2, 255],
        };
        let json = serde_json::to_string(&cmd).unwrap();
        assert_eq!(json, r#"{"Load":{"image":"AAEC/w=="}}"#);
        assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), cmd);
    }

    #[test]
    fn reals_are_written_as_go_writes_them() {
        let cases: &[(f64, &str)] = &[
            (3.0, "3"),
            (-0.0, "-0"),
            (0.0, "0"),
            (0.1, "0.1"),
            (1.5, "1.5"),
            (100.0, "100"),
            (1e15, "1000000000000000"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.5e300, "1.5e+300"),
            (123456789e15, "1.23456789e+23"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (9.99e-10, "9.99e-10"),
            (1e-100, "1e-100"),
            (5e-324, "5e-324"),
            (0.1 + 0.2, "0.30000000000000004"),
            (9007199254740992.0, "9007199254740992"),
            (-2.5e-8, "-2.5e-8"),
        ];
        for (f, want) in cases {
            assert_eq!(go_float(*f).as_deref(), Some(*want), "{f:?}");
            assert_eq!(serde_json::to_string(&Value::Real(*f)).unwrap(), *want);
        }
        assert_eq!(go_float(f64::INFINITY), None);
        assert_eq!(
            serde_json::to_string(&Value::Real(f64::NAN)).unwrap(),
            "null"
        );
    }
}
