//! The HTTP API seen from clients: the real `pyrqlite` client, bad input, auth and TLS.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pyrqlite_runs_unchanged_against_a_follower() {
    let c = Cluster::start("pyrqlite", 3, &[]).await;
    // Through a follower: writes are forwarded, reads at the default level too.
    let follower = (c.leader().await + 1) % 3;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyrqlite_client.py");
    let port = c.members[follower].http.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .args([script, "127.0.0.1", &port])
            .output()
    })
    .await
    .unwrap()
    .expect("python3 must be installed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'pyrqlite'"),
        "pyrqlite is not installed: run `pip install pyrqlite` (.ci/run does)"
    );
    assert!(
        out.status.success(),
        "pyrqlite sequence failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("all steps passed"));
    // Every member holds what the client wrote.
    for i in 0..3 {
        c.wait_caught_up(i).await;
        assert_eq!(
            c.column(i, "SELECT count(*) FROM people").await[0],
            7,
            "member {i}"
        );
    }
}

async fn post(c: &Cluster, path: &str, body: impl Into<reqwest::Body>) -> (u16, String) {
    let r = c
        .http
        .post(format!("{}{path}", c.url(0)))
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_rqlite_errors_and_changes_nothing() {
    let c = Cluster::start("bad-input", 1, &["--max-body-bytes", "4096"]).await;
    c.execute(0, create_table()).await.unwrap();
    c.execute(0, json!(["INSERT INTO t(v) VALUES('keep')"]))
        .await
        .unwrap();
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "/db/execute",
            "[\"INSERT INTO t(v) VALUES('x')\"".into(),
            400,
            "invalid JSON body",
        ),
        ("/db/execute", "".into(), 400, "invalid JSON body"),
        ("/db/execute", "[]".into(), 400, "no statements"),
        (
            "/db/execute",
            "{\"sql\": \"x\"}".into(),
            400,
            "invalid request",
        ),
        ("/db/execute", "[[42]]".into(), 400, "invalid request"),
        (
            "/db/execute",
            r#"[["INSERT INTO t(v) VALUES(?)", {"a": {"b": 1}}]]"#.into(),
            400,
            "unsupported type",
        ),
        (
            "/db/execute?level=bogus",
            "[\"INSERT INTO t(v) VALUES('x')\"]".into(),
            400,
            "invalid level",
        ),
        (
            "/db/query?level=sometimes",
            "[\"SELECT 1\"]".into(),
            400,
            "invalid level",
        ),
        (
            "/db/execute?timeout=soon",
            "[\"INSERT INTO t(v) VALUES('x')\"]".into(),
            400,
            "not a valid duration",
        ),
        (
            "/db/execute",
            format!("[\"INSERT INTO t(v) VALUES('{}')\"]", "x".repeat(5000)),
            413,
            "",
        ),
        ("/db/load", "not sql at all \u{0}\u{1}".into(), 200, ""),
    ];
    for (path, body, status, text) in cases {
        let (got, resp) = post(&c, path, body).await;
        if path == "/db/load" {
            // SQL text that fails to parse is a statement error, not a changed database.
            assert!(resp.contains("error"), "{path}: {resp}");
            continue;
        }
        assert_eq!(got, status, "{path}: {resp}");
        assert!(resp.contains(text), "{path}: want {text:?} in {resp:?}");
    }
    // Wrong methods: 405 with an empty body, as rqlite.
    for (method, path) in [
        ("GET", "/db/execute"),
        ("PUT", "/db/query"),
        ("GET", "/db/request"),
        ("POST", "/status"),
        ("GET", "/remove"),
    ] {
        let r = c
            .http
            .request(method.parse().unwrap(), format!("{}{path}", c.url(0)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method} {path}");
    }
    // GET /db/query without q runs nothing, as in rqlite; an empty q is a client error.
    let r = c.get(0, "/db/query").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), r#"{"results":[]}"#);
    let r = c.get(0, "/db/query?q=").await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.text().await.unwrap(), "query parameter not set\n");
    // SQL errors are per statement, HTTP 200; a transaction stops at the first error.
    let r = c
        .execute(
            0,
            json!([
                "INSERT INTO t(v) VALUES('tx1')",
                "INSERT INTO nope VALUES(1)",
                "INSERT INTO t(v) VALUES('tx2')"
            ]),
        )
        .await;
    let r = r.unwrap();
    assert_eq!(r["results"][1]["error"], "no such table: nope");
    let r: Value = c
        .http
        .post(format!("{}/db/execute?transaction", c.url(0)))
        .json(&json!([
            "INSERT INTO t(v) VALUES('tx3')",
            "INSERT INTO nope VALUES(1)",
            "INSERT INTO t(v) VALUES('tx4')"
        ]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["results"].as_array().unwrap().len(), 2, "{r}");
    // Explicit transaction control is refused with a clear message.
    let r = c.execute(0, json!(["BEGIN"])).await.unwrap();
    assert!(
        r["results"][0]["error"]
            .as_str()
            .unwrap()
            .contains("transaction"),
        "{r}"
    );
    let mut vs: Vec<Value> = c.column(0, "SELECT v FROM t ORDER BY id").await;
    vs.sort_by_key(|v| v.to_string());
    assert_eq!(
        vs,
        [json!("keep"), json!("tx1"), json!("tx2")],
        "bad input must change nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn basic_auth_enforces_permissions() {
    let mut c = Cluster::empty("auth");
    let auth = c.dir.join("auth.json");
    std::fs::write(
        &auth,
        r#"[{"username":"admin","password":"s3cret","perms":["all"]},
            {"username":"reader","password":"r","perms":["query"]},
            {"username":"*","perms":["status","ready"],"password":""}]"#,
    )
    .unwrap();
    c.add("1", &["--auth", auth.to_str().unwrap()]);
    c.members[0].start(&["--bootstrap".into()]);
    c.wait_ready(0).await;
    let url = c.url(0);
    let exec = |user: Option<(&str, &str)>| {
        let mut r = c
            .http
            .post(format!("{url}/db/execute"))
            .json(&json!(["CREATE TABLE IF NOT EXISTS a (x)"]));
        if let Some((u, p)) = user {
            r = r.basic_auth(u, Some(p));
        }
        r.send()
    };
    assert_eq!(exec(None).await.unwrap().status(), 401);
    assert_eq!(exec(Some(("admin", "wrong"))).await.unwrap().status(), 401);
    assert_eq!(exec(Some(("reader", "r"))).await.unwrap().status(), 401);
    assert_eq!(exec(Some(("admin", "s3cret"))).await.unwrap().status(), 200);
    let q = c
        .http
        .get(format!("{url}/db/query?q=SELECT+1"))
        .basic_auth("reader", Some("r"))
        .send()
        .await
        .unwrap();
    assert_eq!(q.status(), 200);
    assert_eq!(
        c.get(0, "/status").await.unwrap().status(),
        200,
        "anonymous status via the * user"
    );
    assert_eq!(c.get(0, "/db/backup").await.unwrap().status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_api_with_a_private_ca() {
    let mut c = Cluster::empty("tls");
    let (ca, cert, key) = test_certs(&c.dir);
    c.add(
        "1",
        &[
            "--http-cert",
            cert.to_str().unwrap(),
            "--http-key",
            key.to_str().unwrap(),
            "--http-ca-cert",
            ca.to_str().unwrap(),
        ],
    );
    c.members[0].start(&["--bootstrap".into()]);
    let pem = std::fs::read(&ca).unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = format!("https://127.0.0.1:{}", c.members[0].http);
    common::wait_for("https readyz", Duration::from_secs(30), || async {
        https
            .get(format!("{url}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    let r: Value = https
        .post(format!("{url}/db/execute"))
        .json(&json!(["CREATE TABLE s (x)", "INSERT INTO s VALUES (1)"]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["results"][1]["rows_affected"], 1);
    // Plain HTTP to the TLS port gets no successful answer.
    let plain = c
        .http
        .get(format!("http://127.0.0.1:{}/readyz", c.members[0].http))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    let s: Value = https
        .get(format!("{url}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["http"]["tls"]["enabled"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_and_load_round_trip() {
    let c = Cluster::start("backup", 3, &[]).await;
    c.execute(
        0,
        json!([
            "CREATE TABLE b (id INTEGER PRIMARY KEY, v TEXT)",
            "INSERT INTO b(v) VALUES ('one'), ('two')"
        ]),
    )
    .await
    .unwrap();
    let follower = (c.leader().await + 1) % 3;
    let r = c.get(follower, "/db/backup").await.unwrap();
    assert_eq!(r.status(), 200);
    let image = r.bytes().await.unwrap();
    assert!(image.starts_with(b"SQLite format 3\0"));
    c.execute(0, json!(["INSERT INTO b(v) VALUES ('three')"]))
        .await
        .unwrap();
    let r = c
        .http
        .post(format!("{}/db/load", c.url(follower)))
        .body(image)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    for i in 0..3 {
        c.wait_caught_up(i).await;
        assert_eq!(
            c.column(i, "SELECT count(*) FROM b").await[0],
            2,
            "member {i} after load"
        );
        let tables = c
            .column(
                i,
                "SELECT name FROM sqlite_master WHERE type='table' AND name='b'",
            )
            .await;
        assert_eq!(tables.len(), 1);
    }
    // A corrupt image is refused and changes nothing.
    let mut bad = b"SQLite format 3\0".to_vec();
    bad.extend(std::iter::repeat_n(0xAB, 8192));
    let r = c
        .http
        .post(format!("{}/db/load", c.url(0)))
        .body(bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(c.column(0, "SELECT count(*) FROM b").await[0], 2);
}

/// `/db/backup?fmt=sql` gives a dump that `/db/load` takes back: same rows, same types.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_dump_round_trip() {
    let c = Cluster::start("sql-dump", 1, &[]).await;
    c.execute(
        0,
        json!([
            "CREATE TABLE d (id INTEGER PRIMARY KEY AUTOINCREMENT, t TEXT, r REAL, b BLOB)",
            "CREATE INDEX d_t ON d(t)",
            "INSERT INTO d(t, r, b) VALUES ('it''s', 2.0, x'00ff'), (NULL, 0.1, NULL)"
        ]),
    )
    .await
    .unwrap();
    let r = c.get(0, "/db/backup?fmt=sql").await.unwrap();
    assert_eq!(r.status(), 200);
    let dump = r.text().await.unwrap();
    assert!(
        dump.starts_with("PRAGMA foreign_keys=OFF;\nBEGIN TRANSACTION;\n"),
        "{dump}"
    );
    assert!(!dump.contains("_litecluster"), "bookkeeping leaked: {dump}");
    let q = "SELECT id, typeof(r), quote(r), quote(b), quote(t) FROM d ORDER BY id";
    let before = c.query(0, q, "strong").await["results"][0]["values"].clone();

    c.execute(0, json!(["DROP TABLE d"])).await.unwrap();
    let (status, body) = post(&c, "/db/load", dump).await;
    assert_eq!(status, 200, "{body}");
    let after = c.query(0, q, "strong").await["results"][0]["values"].clone();
    assert_eq!(before, after);
    assert_eq!(
        c.column(0, "SELECT count(*) FROM sqlite_master WHERE name = 'd_t'")
            .await[0],
        1
    );

    let r = c.get(0, "/db/backup?fmt=csv").await.unwrap();
    assert_eq!(r.status(), 400);
}
