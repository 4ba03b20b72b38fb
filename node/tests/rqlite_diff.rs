//! Differential test against real rqlite: every request of `tests/rqlite_corpus.txt` goes to a
//! fresh single-member litecluster and to a fresh `rqlited` (v8.43.4, built from
//! `../shared/peers` when Go is there, or `$RQLITED`), in order, and the answers must agree:
//! status, content type and body, with time fields left out. A case marked `differs:` is a
//! deliberate difference (listed in the README); it must still differ, so a mark cannot
//! outlive its reason. Skips, saying why, when no rqlited can be had.

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::{Cluster, free_port, wait_for};

const CORPUS: &str = include_str!("rqlite_corpus.txt");

/// How two answers are compared.
#[derive(Debug, Clone, PartialEq)]
enum Compare {
    /// Status, content type and body (JSON parsed, time fields dropped).
    Exact,
    /// Status, and that both bodies hold these `.`-separated JSON paths.
    Keys(Vec<String>),
    /// Status, content type, and the bodies after gunzip.
    Gzip,
    /// Status only.
    Status,
}

#[derive(Debug)]
struct Case {
    name: String,
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
    compare: Compare,
    /// Response headers that must agree too.
    check_headers: Vec<String>,
    differs: Option<String>,
}

fn parse_corpus(text: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut blocks = text.split("\n=== ");
    let _preamble = blocks.next();
    for block in blocks {
        let mut lines = block.lines();
        let name = lines.next().unwrap().trim().to_owned();
        let mut case = Case {
            name: name.clone(),
            method: String::new(),
            path: String::new(),
            headers: Vec::new(),
            body: String::new(),
            compare: Compare::Exact,
            check_headers: Vec::new(),
            differs: None,
        };
        let mut body = Vec::new();
        let mut in_body = false;
        for line in lines {
            if in_body {
                body.push(line);
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if let Some(v) = line.strip_prefix("differs: ") {
                case.differs = Some(v.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("compare: ") {
                let mut words = v.split_whitespace();
                case.compare = match words.next() {
                    Some("keys") => Compare::Keys(words.map(str::to_owned).collect()),
                    Some("gzip") => Compare::Gzip,
                    Some("status") => Compare::Status,
                    other => panic!("case {name}: unknown compare {other:?}"),
                };
            } else if let Some(v) = line.strip_prefix("header: ") {
                let (k, v) = v.split_once(':').expect("header: NAME: VALUE");
                case.headers
                    .push((k.trim().to_owned(), v.trim().to_owned()));
            } else if let Some(v) = line.strip_prefix("check-header: ") {
                case.check_headers.push(v.trim().to_ascii_lowercase());
            } else if case.method.is_empty() {
                let (m, p) = line.split_once(' ').expect("METHOD PATH");
                case.method = m.to_owned();
                case.path = p.trim().to_owned();
                in_body = true;
            } else {
                panic!("case {name}: unexpected line {line:?}");
            }
        }
        case.body = body.join("\n").trim().to_owned();
        assert!(!case.method.is_empty(), "case {name} has no request line");
        cases.push(case);
    }
    cases
}

/// An `rqlited` binary: `$RQLITED`, the peers cache, or built by `../shared/peers`.
fn rqlited() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("RQLITED") {
        return Ok(PathBuf::from(p));
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cache = std::env::var_os("RQLITE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/litecluster-peers"))
        .join("rqlite-v8.43.4/rqlited");
    if cache.is_file() {
        return Ok(cache);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/peers/build-rqlite.sh");
    if !script.is_file() {
        return Err(format!(
            "no rqlited: set RQLITED, or provide {}",
            script.display()
        ));
    }
    if Command::new("go").arg("version").output().is_err() {
        return Err("no rqlited and no Go to build one".into());
    }
    eprintln!(
        "building rqlite v8.43.4 with {} (cached after the first time)",
        script.display()
    );
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed", script.display()));
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok(PathBuf::from(dir).join("rqlited"))
}

struct Rqlited {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Drop for Rqlited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_rqlited(bin: &Path, dir: PathBuf) -> Rqlited {
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (http, raft) = (free_port(), free_port());
    let log = std::fs::File::create(dir.with_extension("log")).unwrap();
    let child = Command::new(bin)
        .args(["-node-id", "1"])
        .args(["-http-addr", &format!("127.0.0.1:{http}")])
        .args(["-raft-addr", &format!("127.0.0.1:{raft}")])
        .args(["-http-allow-origin", "*"])
        .arg(dir.join("data"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn rqlited");
    let r = Rqlited {
        child,
        url: format!("http://127.0.0.1:{http}"),
        dir,
    };
    let http = common::client();
    wait_for("rqlited ready", Duration::from_secs(60), || async {
        http.get(format!("{}/readyz", r.url))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    r
}

struct Answer {
    status: u16,
    content_type: String,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

async fn send(http: &reqwest::Client, base: &str, case: &Case) -> Answer {
    let method = reqwest::Method::from_bytes(case.method.as_bytes()).unwrap();
    let mut req = http.request(method, format!("{base}{}", case.path));
    for (k, v) in &case.headers {
        req = req.header(k, v);
    }
    if !case.body.is_empty() {
        req = req.body(case.body.clone());
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("case {}: {e}", case.name));
    let headers = r.headers().clone();
    Answer {
        status: r.status().as_u16(),
        content_type: headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .unwrap_or("")
            .trim()
            .to_owned(),
        headers,
        body: r.bytes().await.unwrap().to_vec(),
    }
}

/// JSON with the fields that hold times (and so always differ) left out.
fn normalized(body: &[u8]) -> Result<Value, String> {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.retain(|k, _| k != "time" && k != "time_s");
                m.values_mut().for_each(strip);
            }
            Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: Value = serde_json::from_slice(body).map_err(|_| text(body))?;
    strip(&mut v);
    Ok(v)
}

fn text(body: &[u8]) -> String {
    String::from_utf8_lossy(body).trim_end().to_owned()
}

fn gunzip(body: &[u8]) -> Result<String, String> {
    let mut out = String::new();
    flate2::read::GzDecoder::new(body)
        .read_to_string(&mut out)
        .map_err(|e| format!("not gzip text: {e}"))?;
    Ok(out)
}

fn has_path(v: &Value, path: &str) -> bool {
    let mut cur = v;
    for part in path.split('.') {
        match cur.get(part) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    true
}

/// `None` when the answers agree, else what differs.
fn difference(case: &Case, ours: &Answer, theirs: &Answer) -> Option<String> {
    let mut diffs = Vec::new();
    if ours.status != theirs.status {
        diffs.push(format!(
            "status {} vs rqlite {}",
            ours.status, theirs.status
        ));
    }
    for h in &case.check_headers {
        let (a, b) = (ours.headers.get(h), theirs.headers.get(h));
        if a != b {
            diffs.push(format!("header {h}: {a:?} vs rqlite {b:?}"));
        }
    }
    let content_type = || {
        (ours.content_type != theirs.content_type).then(|| {
            format!(
                "content type {:?} vs rqlite {:?}",
                ours.content_type, theirs.content_type
            )
        })
    };
    match &case.compare {
        Compare::Status => {}
        Compare::Exact => {
            diffs.extend(content_type());
            match (normalized(&ours.body), normalized(&theirs.body)) {
                (Ok(a), Ok(b)) if a == b => {}
                (Err(a), Err(b)) if a == b => {}
                (a, b) => diffs.push(format!(
                    "body\n      ours:   {}\n      rqlite: {}",
                    a.map_or_else(|t| t, |v| v.to_string()),
                    b.map_or_else(|t| t, |v| v.to_string())
                )),
            }
        }
        Compare::Keys(paths) => {
            let (a, b) = (normalized(&ours.body), normalized(&theirs.body));
            match (a, b) {
                (Ok(a), Ok(b)) => {
                    for p in paths {
                        if has_path(&a, p) != has_path(&b, p) {
                            diffs.push(format!(
                                "key {p}: ours {} rqlite {}",
                                has_path(&a, p),
                                has_path(&b, p)
                            ));
                        }
                    }
                }
                (a, b) => diffs.push(format!("not JSON: {:?} / {:?}", a.err(), b.err())),
            }
        }
        Compare::Gzip => {
            diffs.extend(content_type());
            match (gunzip(&ours.body), gunzip(&theirs.body)) {
                (Ok(a), Ok(b)) if a == b => {}
                (a, b) => diffs.push(format!(
                    "gunzipped body\n      ours:   {a:?}\n      rqlite: {b:?}"
                )),
            }
        }
    }
    (!diffs.is_empty()).then(|| diffs.join("\n    "))
}

#[test]
fn the_corpus_parses_and_every_mark_has_a_reason() {
    let cases = parse_corpus(CORPUS);
    assert!(cases.len() > 30, "{} cases", cases.len());
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "case names must be unique");
    for c in &cases {
        if let Some(why) = &c.differs {
            assert!(why.len() > 10, "case {}: say why it differs", c.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_agree_with_real_rqlite() {
    let bin = match rqlited() {
        Ok(b) => b,
        Err(why) => {
            eprintln!("skipping the rqlite differential test: {why}");
            return;
        }
    };
    let cases = parse_corpus(CORPUS);
    let ours = Cluster::start("rqlite-diff", 1, &["--http-allow-origin", "*"]).await;
    let theirs = start_rqlited(
        &bin,
        std::env::temp_dir().join(format!("lc-rqlited-{}", std::process::id())),
    )
    .await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut failures = Vec::new();
    for case in &cases {
        let a = send(&http, &ours.url(0), case).await;
        let b = send(&http, &theirs.url, case).await;
        match (difference(case, &a, &b), &case.differs) {
            (None, None) => {}
            (Some(d), Some(why)) => {
                eprintln!("{}: differs as documented ({why}):\n    {d}", case.name)
            }
            (Some(d), None) => failures.push(format!("{}:\n    {d}", case.name)),
            (None, Some(why)) => failures.push(format!(
                "{}: marked as a deliberate difference ({why}) but now agrees: remove the mark",
                case.name
            )),
        }
    }
    eprintln!("{} cases compared with {}", cases.len(), bin.display());
    assert!(
        failures.is_empty(),
        "{} of {} cases disagree with rqlite:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
