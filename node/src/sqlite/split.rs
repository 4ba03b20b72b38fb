//! Splits a string of SQL into its statements the way SQLite's parser ends them, so each one can
//! be prepared, checked and (on replay) skipped on its own.
//!
//! A `;` ends a statement except inside a `CREATE [TEMP] TRIGGER` body, which ends at `END;`.
//! Strings, quoted identifiers and comments are opaque. This is the state machine behind
//! `sqlite3_complete`, written out here because rusqlite does not expose a statement's tail.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Token {
    Semi,
    Space,
    Other,
    Explain,
    Create,
    Temp,
    Trigger,
    End,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Only whitespace so far.
    Start,
    /// Inside an ordinary statement.
    Normal,
    /// After a leading `EXPLAIN`.
    Explain,
    /// After `CREATE` (and maybe `TEMP`).
    Create,
    /// Inside a trigger body.
    Trigger,
    /// After a `;` inside a trigger body.
    TriggerSemi,
    /// After `; END` inside a trigger body.
    TriggerEnd,
}

fn next(state: State, tok: Token) -> State {
    use State::*;
    use Token as T;
    match (state, tok) {
        (Start, T::Semi | T::Space) => Start,
        (Start, T::Explain) => Explain,
        (Start, T::Create) => Create,
        (Start, _) => Normal,
        (Normal, T::Semi) => Start,
        (Normal, _) => Normal,
        (Explain, T::Semi) => Start,
        (Explain, T::Space | T::Other) => Explain,
        (Explain, T::Create) => Create,
        (Explain, _) => Normal,
        (Create, T::Semi) => Start,
        (Create, T::Space | T::Temp) => Create,
        (Create, T::Trigger) => Trigger,
        (Create, _) => Normal,
        (Trigger, T::Semi) => TriggerSemi,
        (Trigger, _) => Trigger,
        (TriggerSemi, T::Semi | T::Space) => TriggerSemi,
        (TriggerSemi, T::End) => TriggerEnd,
        (TriggerSemi, _) => Trigger,
        (TriggerEnd, T::Semi) => Start,
        (TriggerEnd, T::Space) => TriggerEnd,
        (TriggerEnd, _) => Trigger,
    }
}

/// Returns the byte ranges of the statements in `sql`, each including its `;`. Empty statements
/// (only whitespace, comments or `;`) are left out, as SQLite skips them.
pub fn ranges(sql: &str) -> Vec<std::ops::Range<usize>> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut state = State::Start;
    let mut start: Option<usize> = None;
    let mut i = 0;
    while i < b.len() {
        let (tok, end) = token(b, i);
        if tok != Token::Space && tok != Token::Semi && start.is_none() {
            start = Some(i);
        }
        let was = state;
        state = next(state, tok);
        // A `;` in Start (`;;`) ends nothing: there is no statement to run.
        if tok == Token::Semi
            && state == State::Start
            && was != State::Start
            && let Some(s) = start.take()
        {
            out.push(s..end);
        }
        i = end;
    }
    if let Some(s) = start {
        out.push(s..b.len());
    }
    out
}

/// The next token at `i` and where it ends.
fn token(b: &[u8], i: usize) -> (Token, usize) {
    let c = b[i];
    match c {
        b';' => (Token::Semi, i + 1),
        b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => (Token::Space, i + 1),
        b'-' if b.get(i + 1) == Some(&b'-') => {
            let end = b[i..]
                .iter()
                .position(|&x| x == b'\n')
                .map_or(b.len(), |p| i + p + 1);
            (Token::Space, end)
        }
        b'/' if b.get(i + 1) == Some(&b'*') => {
            let end = b[i + 2..]
                .windows(2)
                .position(|w| w == b"*/")
                .map_or(b.len(), |p| i + 2 + p + 2);
            (Token::Space, end)
        }
        b'\'' | b'"' | b'`' => (Token::Other, super::rewrite::skip_quoted(b, i, c)),
        b'[' => {
            let end = b[i..]
                .iter()
                .position(|&x| x == b']')
                .map_or(b.len(), |p| i + p + 1);
            (Token::Other, end)
        }
        c if is_id(c) => {
            let mut end = i;
            while end < b.len() && (is_id(b[end]) || b[end].is_ascii_digit()) {
                end += 1;
            }
            let word = &b[i..end];
            let kw = |k: &str| word.eq_ignore_ascii_case(k.as_bytes());
            let tok = if kw("explain") {
                Token::Explain
            } else if kw("create") {
                Token::Create
            } else if kw("temp") || kw("temporary") {
                Token::Temp
            } else if kw("trigger") {
                Token::Trigger
            } else if kw("end") {
                Token::End
            } else {
                Token::Other
            };
            (tok, end)
        }
        _ => {
            // One character of anything else; keep UTF-8 sequences whole.
            let mut end = i + 1;
            while end < b.len() && (b[end] & 0xC0) == 0x80 {
                end += 1;
            }
            (Token::Other, end)
        }
    }
}

fn is_id(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c == b'$' || c >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(sql: &str) -> Vec<&str> {
        ranges(sql).into_iter().map(|r| &sql[r]).collect()
    }

    #[test]
    fn statements_end_at_semicolons_outside_strings_and_comments() {
        assert_eq!(
            split("INSERT INTO t VALUES(1); COMMIT; INSERT INTO t VALUES(';')"),
            [
                "INSERT INTO t VALUES(1);",
                "COMMIT;",
                "INSERT INTO t VALUES(';')"
            ]
        );
        assert_eq!(
            split("  ;; -- only a comment\n ; /* x; */"),
            Vec::<&str>::new()
        );
        assert_eq!(
            split("SELECT \"a;b\", [c;d], `e;f` -- ;\n FROM t; SELECT 2"),
            ["SELECT \"a;b\", [c;d], `e;f` -- ;\n FROM t;", "SELECT 2"]
        );
        assert_eq!(split("SELECT 'it''s; fine'"), ["SELECT 'it''s; fine'"]);
    }

    #[test]
    fn trigger_bodies_keep_their_semicolons() {
        let sql = "CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN \
                   INSERT INTO u VALUES (CASE WHEN 1 THEN 2 END); DELETE FROM v; END; INSERT INTO t VALUES(1)";
        let parts = split(sql);
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert!(parts[0].ends_with("END;"));
        assert_eq!(parts[1], "INSERT INTO t VALUES(1)");
        // A table named like a keyword does not start a trigger.
        assert_eq!(
            split("CREATE TABLE trigger_log(x); SELECT 1").len(),
            2,
            "CREATE TABLE is not a trigger"
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_ranges_are_ordered() {
        for s in ["'", "\"", "[", "/*", "--", "é;ü", "CREATE TRIGGER", "END;"] {
            let r = ranges(s);
            assert!(r.windows(2).all(|w| w[0].end <= w[1].start));
            for x in r {
                assert!(s.is_char_boundary(x.start) && s.is_char_boundary(x.end));
            }
        }
    }
}
