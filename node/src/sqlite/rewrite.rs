//! Rewrites non-deterministic SQL (`random()`, `randomblob(N)`, `'now'` in date functions) into
//! literals on the leader, so every member applies the same statement.

use std::borrow::Cow;
use std::fmt::Write;

use rand::Rng;

const DATE_FUNCTIONS: [&str; 7] = [
    "date",
    "time",
    "datetime",
    "julianday",
    "unixepoch",
    "strftime",
    "timediff",
];

/// Returns `sql` with non-deterministic calls replaced by literals. `now_unix` is seconds since
/// the Unix epoch. DDL is left alone: a `DEFAULT` or trigger body must stay an expression.
pub fn rewrite<'a>(sql: &'a str, now_unix: f64, rng: &mut impl Rng) -> Cow<'a, str> {
    let trimmed = sql.trim_start();
    if trimmed
        .get(..6)
        .is_some_and(|h| h.eq_ignore_ascii_case("create"))
    {
        return Cow::Borrowed(sql);
    }
    let bytes = sql.as_bytes();
    let mut out = String::new();
    let mut copied = 0; // bytes of `sql` already reflected in `out`
    let mut i = 0;
    let mut depth = 0usize;
    let mut date_depths: Vec<usize> = Vec::new();
    let mut prev_word_order = false;
    let mut in_order_by = false;
    let julian = now_unix / 86_400.0 + 2_440_587.5;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\'' => {
                let end = skip_quoted(bytes, i, b'\'');
                let lit = &sql[i..end];
                if date_depths.last() == Some(&depth) && lit.eq_ignore_ascii_case("'now'") {
                    out.push_str(&sql[copied..i]);
                    let _ = write!(out, "{julian:.10}");
                    copied = end;
                }
                i = end;
            }
            b'"' | b'`' => i = skip_quoted(bytes, i, c),
            b'[' => {
                i = bytes[i..]
                    .iter()
                    .position(|&b| b == b']')
                    .map_or(bytes.len(), |p| i + p + 1)
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(bytes.len(), |p| i + p + 1)
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |p| i + 2 + p + 2)
            }
            b'(' => {
                depth += 1;
                i += 1;
            }
            b')' => {
                if date_depths.last() == Some(&depth) {
                    date_depths.pop();
                }
                depth = depth.saturating_sub(1);
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                    i += 1;
                }
                let word = &sql[start..i];
                if prev_word_order && word.eq_ignore_ascii_case("by") {
                    in_order_by = true;
                }
                prev_word_order = word.eq_ignore_ascii_case("order");
                let after = skip_ws(bytes, i);
                if bytes.get(after) != Some(&b'(') {
                    continue;
                }
                if DATE_FUNCTIONS.iter().any(|f| word.eq_ignore_ascii_case(f)) {
                    date_depths.push(depth + 1);
                } else if !in_order_by && word.eq_ignore_ascii_case("random") {
                    let close = skip_ws(bytes, after + 1);
                    if bytes.get(close) == Some(&b')') {
                        out.push_str(&sql[copied..start]);
                        let _ = write!(out, "{}", rng.gen_range(0..i64::MAX));
                        i = close + 1;
                        copied = i;
                    }
                } else if !in_order_by && word.eq_ignore_ascii_case("randomblob") {
                    let num_start = skip_ws(bytes, after + 1);
                    let mut num_end = num_start;
                    while num_end < bytes.len() && bytes[num_end].is_ascii_digit() {
                        num_end += 1;
                    }
                    let close = skip_ws(bytes, num_end);
                    if num_end > num_start && bytes.get(close) == Some(&b')') {
                        let n: usize = sql[num_start..num_end]
                            .parse()
                            .unwrap_or(1)
                            .clamp(1, 1 << 20);
                        out.push_str(&sql[copied..start]);
                        out.push_str("X'");
                        for _ in 0..n {
                            let _ = write!(out, "{:02X}", rng.r#gen::<u8>());
                        }
                        out.push('\'');
                        i = close + 1;
                        copied = i;
                    }
                }
            }
            _ => i += 1,
        }
    }
    if copied == 0 {
        return Cow::Borrowed(sql);
    }
    out.push_str(&sql[copied..]);
    Cow::Owned(out)
}

/// The end of the quoted token starting at `start` (a doubled quote is part of it).
pub(crate) fn skip_quoted(bytes: &[u8], start: usize, quote: u8) -> usize {
    let mut i = start + 1;
    while i < bytes.len() {
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    bytes.len()
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while i < bytes.len() && bytes[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Formats Unix seconds (plus milliseconds) as RFC 3339 UTC, e.g. `2024-01-02T03:04:05Z`.
pub fn rfc3339(secs: i64, millis: u32) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    if millis > 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{millis:03}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    }
}

/// Days since 1970-01-01 to a (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Turns SQLite time text (`2024-01-02 03:04:05.123`, `2024-01-02`) into RFC 3339, as rqlite
/// reports values of `timestamp`, `datetime` and `date` columns.
pub fn sql_time_to_rfc3339(t: &str) -> Option<String> {
    let t = t.trim().trim_end_matches('Z');
    let b = t.as_bytes();
    let digits = |r: std::ops::Range<usize>| {
        b.get(r.clone())
            .is_some_and(|s| s.iter().all(u8::is_ascii_digit))
    };
    if !(digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10))
    {
        return None;
    }
    if b.len() == 10 {
        return Some(format!("{t}T00:00:00Z"));
    }
    if !matches!(b.get(10), Some(b' ' | b'T'))
        || !digits(11..13)
        || b.get(13) != Some(&b':')
        || !digits(14..16)
    {
        return None;
    }
    let rest = &t[16..];
    let secs = if rest.is_empty() { ":00" } else { rest };
    Some(format!("{}T{}{}Z", &t[..10], &t[11..16], secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rw(sql: &str) -> String {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        rewrite(sql, 1_700_000_000.0, &mut rng).into_owned()
    }

    #[test]
    fn random_becomes_a_literal() {
        let out = rw("INSERT INTO t VALUES (random(), RANDOM ( ))");
        assert!(!out.to_lowercase().contains("random"), "{out}");
        assert!(out.starts_with("INSERT INTO t VALUES ("));
    }

    #[test]
    fn randomblob_becomes_hex() {
        let out = rw("INSERT INTO t VALUES (randomblob(4))");
        assert!(
            out.contains("X'") && out.len() == "INSERT INTO t VALUES (X'00000000')".len(),
            "{out}"
        );
    }

    #[test]
    fn now_in_date_functions_only() {
        let out = rw("INSERT INTO t VALUES (datetime('now'), 'now', strftime('%s','now'))");
        assert_eq!(out.matches("'now'").count(), 1, "{out}");
        assert!(out.contains("datetime(2460263.4259259258)"), "{out}");
    }

    #[test]
    fn strings_comments_order_by_and_ddl_untouched() {
        for sql in [
            "SELECT 'random()' FROM t",
            "SELECT * FROM t ORDER BY random()",
            "CREATE TABLE t (x DEFAULT (random()))",
            "SELECT 1 -- random()",
            "SELECT \"random\"()",
        ] {
            assert_eq!(rw(sql), sql);
        }
    }

    #[test]
    fn time_formats() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000, 5), "2023-11-14T22:13:20.005Z");
        assert_eq!(
            sql_time_to_rfc3339("2024-01-02 03:04:05.123").as_deref(),
            Some("2024-01-02T03:04:05.123Z")
        );
        assert_eq!(
            sql_time_to_rfc3339("2024-01-02").as_deref(),
            Some("2024-01-02T00:00:00Z")
        );
        assert_eq!(
            sql_time_to_rfc3339("2024-01-02 03:04").as_deref(),
            Some("2024-01-02T03:04:00Z")
        );
        assert_eq!(sql_time_to_rfc3339("hello"), None);
    }
}
