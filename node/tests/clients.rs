//! Real rqlite client libraries, unchanged, against 1 and 3 members (through a follower on 3):
//! gorqlite (Go), rqlite-js (Node.js) and SQLAlchemy with sqlalchemy-rqlite (Python). Each
//! client program in `tests/clients/` prints one `ok` line per check and fails on the first
//! miss. A client whose runtime or package is missing is skipped, saying what to install,
//! unless `LITECLUSTER_REQUIRE_CLIENTS=1` (set by CI), which makes that a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Cluster;

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Runs `cmd`; `Err` when its runtime is missing (to skip), panics when the checks fail.
fn run_client(name: &str, mut cmd: Command) -> Result<(), String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let missing = [
        "No module named",
        "Cannot find module",
        "cannot find module",
    ];
    if !out.status.success() && missing.iter().any(|m| stderr.contains(m)) {
        return Err(format!(
            "{name}: {}",
            stderr.lines().last().unwrap_or_default()
        ));
    }
    let passed = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(
        out.status.success(),
        "{name} failed after {passed} checks:\n{stdout}\n{stderr}"
    );
    eprintln!("{name}: {passed} checks passed");
    Ok(())
}

fn skip_or_fail(why: String) {
    if std::env::var("LITECLUSTER_REQUIRE_CLIENTS").is_ok_and(|v| v == "1") {
        panic!("client required but unavailable: {why}");
    }
    eprintln!("skipping: {why}");
}

/// The URL the client talks to: a follower when there are several members, so forwarding
/// is exercised too.
async fn entry(c: &Cluster, n: usize) -> usize {
    if n == 1 {
        0
    } else {
        (c.leader().await + 1) % n
    }
}

async fn gorqlite(n: usize) {
    let c = Cluster::start(&format!("gorqlite-{n}"), n, &[]).await;
    let at = entry(&c, n).await;
    let mut cmd = Command::new("go");
    cmd.args(["run", "."])
        .arg(c.url(at))
        .current_dir(clients_dir().join("gorqlite"))
        .env("GOFLAGS", "-mod=mod");
    if Command::new("go").arg("version").output().is_err() {
        return skip_or_fail("gorqlite: Go is not installed".into());
    }
    if let Err(why) = run_client(&format!("gorqlite on {n}"), cmd) {
        skip_or_fail(why);
    }
}

async fn rqlite_js(n: usize) {
    let modules = std::env::var_os("LITECLUSTER_RQLITE_JS").map_or_else(
        || {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/litecluster/rqlite-js-2.5.7/node_modules")
        },
        PathBuf::from,
    );
    if !modules.join("rqlite-js").is_dir() {
        return skip_or_fail(format!(
            "rqlite-js: not installed in {} (npm install --prefix {} rqlite-js@2.5.7)",
            modules.display(),
            modules.parent().unwrap().display()
        ));
    }
    let c = Cluster::start(&format!("rqlite-js-{n}"), n, &[]).await;
    let at = entry(&c, n).await;
    // The follower first: rqlite-js sends writes to its first host and follows redirects.
    let mut hosts = vec![c.url(at)];
    hosts.extend((0..n).filter(|i| *i != at).map(|i| c.url(i)));
    let mut cmd = Command::new("node");
    cmd.arg(clients_dir().join("rqlite_js.js"))
        .args(&hosts)
        .env("NODE_PATH", &modules);
    if let Err(why) = run_client(&format!("rqlite-js on {n}"), cmd) {
        skip_or_fail(why);
    }
}

async fn sqlalchemy(n: usize) {
    let c = Cluster::start(&format!("sqlalchemy-{n}"), n, &[]).await;
    let at = entry(&c, n).await;
    let mut cmd = Command::new("python3");
    cmd.arg(clients_dir().join("sqlalchemy_client.py"))
        .arg(format!("127.0.0.1:{}", c.members[at].http));
    if let Err(why) = run_client(&format!("sqlalchemy-rqlite on {n}"), cmd) {
        skip_or_fail(why);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gorqlite_on_one_and_three_members() {
    gorqlite(1).await;
    gorqlite(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rqlite_js_on_one_and_three_members() {
    rqlite_js(1).await;
    rqlite_js(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlalchemy_rqlite_on_one_and_three_members() {
    sqlalchemy(1).await;
    sqlalchemy(3).await;
}
