//! The user's path end to end, against one shared stack (control plane,
//! three process-backed nodes, the operator installed by helm). Each scenario
//! works in a namespace of its own, so they run side by side; the stack is
//! started by the first scenario and stopped when the last one finishes
//! (also on panic). A failing scenario prints the operator's and the
//! members' logs and the Events.
//!
//! `CARGO_TARGET_DIR=target-e2e cargo test -p litecluster-e2e --test scenarios`

use std::{
    collections::BTreeSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use litecluster_e2e::{
    Options,
    stack::{Endpoint, OPERATOR_NS, OPERATOR_SA, Stack, call, http, https},
};

static SHARED: Mutex<(Option<Arc<Stack>>, usize)> = Mutex::new((None, 0));

/// A user of the shared stack; the last one to drop stops it.
struct Lease {
    stack: Arc<Stack>,
    ns: String,
    started: Instant,
}

impl Lease {
    fn get(ns: &str) -> Lease {
        let stack = {
            let mut g = SHARED.lock().unwrap_or_else(|e| e.into_inner());
            if g.0.is_none() {
                let s = Stack::up(Options::for_test("scenarios")).expect("bringing up the stack");
                g.0 = Some(Arc::new(s));
            }
            g.1 += 1;
            g.0.clone().unwrap()
        };
        stack
            .cp
            .kubectl_ok(&["create", "namespace", ns])
            .expect("creating the namespace");
        Lease {
            stack,
            ns: ns.to_string(),
            started: Instant::now(),
        }
    }

    /// Runs the scenario body; on error prints diagnostics and panics.
    fn run(&self, f: impl FnOnce(&Stack, &str) -> Result<()>) {
        let r = f(&self.stack, &self.ns);
        eprintln!(
            "[scenario {}] {} in {:.1}s",
            self.ns,
            if r.is_ok() { "passed" } else { "FAILED" },
            self.started.elapsed().as_secs_f64()
        );
        if let Err(e) = r {
            eprintln!("{}", self.stack.diagnostics(Some(&self.ns)));
            panic!("scenario {} failed: {e:#}", self.ns);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut g = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        g.1 -= 1;
        if g.1 == 0 {
            // Last user: stop everything (processes, namespaces, bridge, run dir).
            g.0 = None;
        }
    }
}

fn cluster_yaml(name: &str, replicas: u32, voters: u32) -> String {
    format!(
        "apiVersion: litecluster.io/v1alpha1\nkind: SqliteCluster\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  voters: {voters}\n  storage:\n    size: 1Gi\n"
    )
}

fn ready_timeout() -> Duration {
    Duration::from_secs(240)
}

/// The API of a member pod `<cluster>-<n>` (HTTPS unless its cluster turned TLS off).
fn member(s: &Stack, ns: &str, pod: &str) -> Result<Endpoint> {
    let cluster = pod
        .rsplit_once('-')
        .map(|(c, _)| c)
        .with_context(|| format!("{pod} is not a member pod name"))?;
    s.endpoint(ns, cluster, pod)
}

fn execute(ep: &Endpoint, body: &str) -> Result<serde_json::Value> {
    let addr = &ep.addr;
    let (code, text) = call(ep, "POST", "/db/execute", Some(body))?;
    ensure!(code == 200, "execute on {addr}: HTTP {code}: {text}");
    let v: serde_json::Value = serde_json::from_str(&text)?;
    if let Some(err) = v["results"]
        .as_array()
        .and_then(|r| r.iter().find_map(|x| x["error"].as_str()))
    {
        bail!("execute on {addr}: {err}");
    }
    Ok(v)
}

/// Single-column integer query result.
fn query_ints(ep: &Endpoint, sql: &str, level: &str) -> Result<Vec<i64>> {
    let addr = &ep.addr;
    let q: String = sql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'*' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (code, text) = call(ep, "GET", &format!("/db/query?level={level}&q={q}"), None)?;
    ensure!(code == 200, "query on {addr}: HTTP {code}: {text}");
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let r = &v["results"][0];
    if let Some(e) = r["error"].as_str() {
        bail!("query on {addr}: {e}");
    }
    Ok(r["values"]
        .as_array()
        .map(|rows| rows.iter().filter_map(|row| row[0].as_i64()).collect())
        .unwrap_or_default())
}

/// Raft members as the leader reports them (`/nodes`): (id, voter).
fn raft_members(ep: &Endpoint) -> Result<Vec<(String, bool)>> {
    let addr = &ep.addr;
    let (code, text) = call(ep, "GET", "/nodes?nonvoters", None)?;
    ensure!(code == 200, "/nodes on {addr}: HTTP {code}: {text}");
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let mut out = Vec::new();
    let mut push = |id: &str, n: &serde_json::Value| {
        out.push((id.to_string(), n["voter"].as_bool().unwrap_or(false)))
    };
    match &v {
        serde_json::Value::Object(m) => m
            .iter()
            .for_each(|(k, n)| push(n["id"].as_str().unwrap_or(k), n)),
        serde_json::Value::Array(a) => a
            .iter()
            .for_each(|n| push(n["id"].as_str().unwrap_or_default(), n)),
        _ => bail!("unexpected /nodes body {text}"),
    }
    out.sort();
    Ok(out)
}

fn create_ready(s: &Stack, ns: &str, name: &str, replicas: u32) -> Result<serde_json::Value> {
    s.apply_yaml(ns, &cluster_yaml(name, replicas, replicas.min(3)))?;
    s.wait_ready(ns, name, replicas.into(), ready_timeout())
}

// ---------------------------------------------------------------- install

#[test]
fn install_example_becomes_ready_3_of_3_with_a_leader() {
    Lease::get("s-install").run(|s, ns| {
        let t = Instant::now();
        let example = litecluster_e2e::binaries::workspace_root().join("examples/minimal.yaml");
        s.apply_file(ns, &example)?;
        let st = s.wait_ready(ns, "mydb", 3, ready_timeout())?;
        eprintln!("mydb Ready 3/3 in {:.1}s", t.elapsed().as_secs_f64());
        let leader = st["leader"].as_str().context("no leader")?;
        ensure!(leader.starts_with("mydb-"), "leader {leader}");
        ensure!(st["voters"].as_i64() == Some(3), "voters {}", st["voters"]);
        ensure!(
            st["readyMembers"].as_str() == Some("3/3"),
            "readyMembers {}",
            st["readyMembers"]
        );
        // The leader's own view agrees.
        let members = raft_members(&member(s, ns, leader)?)?;
        ensure!(
            members.len() == 3 && members.iter().all(|m| m.1),
            "raft members {members:?}"
        );
        Ok(())
    });
}

// ---------------------------------------------------------------- replication

#[test]
fn replication_writes_through_one_member_read_back_from_all() {
    Lease::get("s-replication").run(|s, ns| {
        let st = create_ready(s, ns, "repl", 3)?;
        let leader = st["leader"].as_str().unwrap_or_default().to_string();
        // Write through a follower: it forwards to the leader.
        let follower = (0..3)
            .map(|i| format!("repl-{i}"))
            .find(|p| *p != leader)
            .unwrap();
        let addr = member(s, ns, &follower)?;
        execute(
            &addr,
            r#"["CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"]"#,
        )?;
        let stmts: Vec<String> = (1..=50)
            .map(|i| format!(r#"["INSERT INTO t(id, v) VALUES(?, ?)", {i}, "v{i}"]"#))
            .collect();
        execute(&addr, &format!("[{}]", stmts.join(",")))?;
        let want: Vec<i64> = (1..=50).collect();
        for i in 0..3 {
            let a = member(s, ns, &format!("repl-{i}"))?;
            s.wait_for(
                &format!("50 rows on repl-{i}"),
                Duration::from_secs(30),
                || {
                    Ok(
                        (query_ints(&a, "SELECT id FROM t ORDER BY id", "none")? == want)
                            .then_some(()),
                    )
                },
            )?;
        }
        Ok(())
    });
}

// ---------------------------------------------------------------- failover

#[test]
fn deleting_the_leader_while_writing_loses_no_acknowledged_write() {
    Lease::get("s-failover").run(|s, ns| {
        let st = create_ready(s, ns, "fo", 3)?;
        let old_leader = st["leader"].as_str().unwrap_or_default().to_string();
        let addrs: Vec<Endpoint> = (0..3)
            .map(|i| member(s, ns, &format!("fo-{i}")))
            .collect::<Result<_>>()?;
        execute(&addrs[0], r#"["CREATE TABLE w (id INTEGER PRIMARY KEY)"]"#)?;

        // A writer that tries every member in turn; records acknowledged ids.
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::<i64>::new()));
        let writer = {
            let (stop, acked, addrs) = (stop.clone(), acked.clone(), addrs.clone());
            thread::spawn(move || {
                let mut id = 0i64;
                let mut target = 0usize;
                let mut errors = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    let body = format!(r#"[["INSERT INTO w(id) VALUES(?)", {id}]]"#);
                    match execute(&addrs[target % addrs.len()], &body) {
                        Ok(_) => acked.lock().unwrap().push(id),
                        Err(_) => {
                            errors += 1;
                            target += 1;
                            thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
                errors
            })
        };
        thread::sleep(Duration::from_secs(2));
        let before = acked.lock().unwrap().len();
        s.cp.kubectl_ok(&["delete", "pod", &old_leader, "-n", ns, "--wait=false"])?;
        let t = Instant::now();
        let new_leader = s.wait_for("a new leader in status", Duration::from_secs(90), || {
            let st = s.cluster(ns, "fo")?["status"].clone();
            Ok(st["leader"]
                .as_str()
                .filter(|l| *l != old_leader)
                .map(str::to_string))
        })?;
        eprintln!(
            "new leader {new_leader} in status {:.1}s after deleting {old_leader}",
            t.elapsed().as_secs_f64()
        );
        // Writes continue after the failover.
        let after_failover = acked.lock().unwrap().len();
        s.wait_for(
            "writes acknowledged after the failover",
            Duration::from_secs(30),
            || Ok((acked.lock().unwrap().len() > after_failover + 10).then_some(())),
        )?;
        s.wait_ready(ns, "fo", 3, ready_timeout())?;
        stop.store(true, Ordering::Relaxed);
        let errors = writer
            .join()
            .map_err(|_| anyhow::anyhow!("writer panicked"))?;
        let acked = acked.lock().unwrap().clone();
        ensure!(before > 0, "no write acknowledged before the failover");
        let leader_addr = member(s, ns, &new_leader)?;
        let stored: BTreeSet<i64> = query_ints(&leader_addr, "SELECT id FROM w", "strong")?
            .into_iter()
            .collect();
        let lost: Vec<i64> = acked
            .iter()
            .filter(|i| !stored.contains(i))
            .copied()
            .collect();
        eprintln!(
            "{} writes acknowledged, {errors} failed attempts, {} rows stored",
            acked.len(),
            stored.len()
        );
        ensure!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
        Ok(())
    });
}

// ---------------------------------------------------------------- scaling

#[test]
fn scale_to_5_and_back_to_3_membership_follows_nothing_lost() {
    Lease::get("s-scale").run(|s, ns| {
        create_ready(s, ns, "sc", 3)?;
        let a0 = member(s, ns, "sc-0")?;
        execute(&a0, r#"["CREATE TABLE t (id INTEGER PRIMARY KEY)", "INSERT INTO t(id) VALUES(1)", "INSERT INTO t(id) VALUES(2)"]"#)?;

        s.cp.kubectl_ok(&["scale", "slc/sc", "--replicas=5", "-n", ns])?;
        let st = s.wait_ready(ns, "sc", 5, ready_timeout())?;
        let leader = st["leader"].as_str().unwrap_or_default().to_string();
        let members = s.wait_for("5 Raft members, 3 voters", Duration::from_secs(60), || {
            let m = raft_members(&member(s, ns, &leader)?)?;
            Ok((m.len() == 5 && m.iter().filter(|x| x.1).count() == 3).then_some(m))
        })?;
        for (id, voter) in &members {
            let ordinal: u32 = id.rsplit('-').next().unwrap_or_default().parse().unwrap_or(99);
            ensure!(*voter == (ordinal < 3), "member {id}: voter={voter}; want voters sc-0..2, learners beyond");
        }
        // Pods carry their Raft role, and the read-only Service then selects only the learners.
        s.wait_for("role labels voter x3, learner x2", Duration::from_secs(60), || {
            let roles = role_labels(s, ns, "sc")?;
            let want: Vec<_> = (0..5).map(|i| (format!("sc-{i}"), if i < 3 { "voter" } else { "learner" }.to_string())).collect();
            Ok((roles == want).then_some(()))
        })?;
        s.wait_for("sc-readonly selects learners", Duration::from_secs(60), || {
            Ok((readonly_selector(s, ns, "sc")?.as_deref() == Some("learner")).then_some(()))
        })?;
        execute(&member(s, ns, "sc-4")?, r#"[["INSERT INTO t(id) VALUES(?)", 3]]"#)?;
        for i in 0..5 {
            let a = member(s, ns, &format!("sc-{i}"))?;
            s.wait_for(&format!("rows on sc-{i}"), Duration::from_secs(30), || {
                Ok((query_ints(&a, "SELECT id FROM t ORDER BY id", "none")? == [1, 2, 3]).then_some(()))
            })?;
        }

        s.cp.kubectl_ok(&["scale", "slc/sc", "--replicas=3", "-n", ns])?;
        let st = s.wait_ready(ns, "sc", 3, ready_timeout())?;
        let leader = st["leader"].as_str().unwrap_or_default().to_string();
        s.wait_for("3 Raft members", Duration::from_secs(60), || {
            let m = raft_members(&member(s, ns, &leader)?)?;
            Ok((m.len() == 3 && m.iter().all(|x| x.1)).then_some(()))
        })?;
        s.wait_for("pods sc-3 and sc-4 gone", Duration::from_secs(90), || {
            Ok((s.pod_ip(ns, "sc-3")?.is_none() && s.pod_ip(ns, "sc-4")?.is_none()).then_some(()))
        })?;
        ensure!(
            query_ints(&member(s, ns, &leader)?, "SELECT id FROM t ORDER BY id", "strong")? == [1, 2, 3],
            "rows changed by scaling"
        );
        // No read replicas left: the read-only Service spreads over every member again.
        s.wait_for("sc-readonly selects every member", Duration::from_secs(60), || {
            Ok(readonly_selector(s, ns, "sc")?.is_none().then_some(()))
        })?;
        Ok(())
    });
}

/// `(pod, litecluster.io/role)` of the cluster's pods, by name.
fn role_labels(s: &Stack, ns: &str, cluster: &str) -> Result<Vec<(String, String)>> {
    let out = s.cp.kubectl_ok(&[
        "get", "pods", "-n", ns, "-l", &format!("app.kubernetes.io/instance={cluster}"),
        "-o", r#"jsonpath={range .items[*]}{.metadata.name}={.metadata.labels.litecluster\.io/role}{"\n"}{end}"#,
    ])?;
    let mut roles: Vec<_> = out
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(p, r)| (p.to_string(), r.to_string()))
        .collect();
    roles.sort();
    Ok(roles)
}

/// The `litecluster.io/role` the read-only Service selects, if any.
fn readonly_selector(s: &Stack, ns: &str, cluster: &str) -> Result<Option<String>> {
    let out = s.cp.kubectl_ok(&[
        "get",
        "svc",
        &format!("{cluster}-readonly"),
        "-n",
        ns,
        "-o",
        "json",
    ])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v["spec"]["selector"]["litecluster.io/role"]
        .as_str()
        .map(String::from))
}

// ---------------------------------------------------------------- autoscaling

#[test]
fn hpa_aimed_at_the_cluster_is_accepted_and_resolves_its_scale_target() {
    Lease::get("s-hpa").run(|s, ns| {
        s.apply_yaml(ns, &cluster_yaml("reads", 1, 1))?;
        s.wait_ready(ns, "reads", 1, ready_timeout())?;
        s.apply_yaml(
            ns,
            "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: reads\nspec:\n  \
             scaleTargetRef:\n    apiVersion: litecluster.io/v1alpha1\n    kind: SqliteCluster\n    name: reads\n  \
             minReplicas: 1\n  maxReplicas: 3\n  metrics:\n  - type: Resource\n    resource:\n      name: cpu\n      \
             target:\n        type: Utilization\n        averageUtilization: 70\n",
        )?;
        // The HPA controller read the scale subresource (replicas and selector);
        // with no metrics server it cannot compute a recommendation, which is fine here.
        let cond = s.wait_for("HPA AbleToScale=True", Duration::from_secs(90), || {
            let out = s.cp.kubectl_ok(&["get", "hpa", "reads", "-n", ns, "-o", "json"])?;
            let v: serde_json::Value = serde_json::from_str(&out)?;
            Ok(v["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "AbleToScale" && c["status"] == "True"))
                .cloned())
        })?;
        eprintln!("AbleToScale: {}", cond["reason"]);
        let scale = s.cp.kubectl_ok(&["get", "--raw", &format!("/apis/litecluster.io/v1alpha1/namespaces/{ns}/sqliteclusters/reads/scale")])?;
        let v: serde_json::Value = serde_json::from_str(&scale)?;
        ensure!(v["status"]["replicas"].as_i64() == Some(1), "scale status {v}");
        ensure!(
            v["status"]["selector"].as_str().is_some_and(|sel| sel.contains("app.kubernetes.io/instance=reads")),
            "scale selector {v}"
        );
        Ok(())
    });
}

// ---------------------------------------------------------------- validation

#[test]
fn invalid_clusters_are_rejected_with_the_cel_messages() {
    Lease::get("s-invalid").run(|s, ns| {
        let cases = [
            ("replicas: 0\n  voters: 1", "replicas must be at least 1"),
            ("replicas: 3\n  voters: 2", "voters must be a positive odd number"),
            ("replicas: 3\n  voters: 3\n  imagePullPolicy: Sometimes", "imagePullPolicy must be Always, IfNotPresent or Never"),
        ];
        for (spec, message) in cases {
            let yaml = format!(
                "apiVersion: litecluster.io/v1alpha1\nkind: SqliteCluster\nmetadata:\n  name: bad\nspec:\n  {spec}\n  storage:\n    size: 1Gi\n"
            );
            match s.apply_yaml(ns, &yaml) {
                Ok(out) => bail!("accepted invalid spec {spec:?}: {out}"),
                Err(e) => ensure!(e.to_string().contains(message), "spec {spec:?}: error {e:#} lacks {message:?}"),
            }
        }
        let bad_size = "apiVersion: litecluster.io/v1alpha1\nkind: SqliteCluster\nmetadata:\n  name: bad\nspec:\n  replicas: 1\n  voters: 1\n  storage:\n    size: lots\n";
        let e = s.apply_yaml(ns, bad_size).err().context("accepted storage.size: lots")?;
        ensure!(e.to_string().contains("storage.size must be a quantity"), "{e:#}");
        // Immutable-ish rules on update: size cannot shrink.
        s.apply_yaml(ns, &cluster_yaml("grow", 1, 1))?;
        let shrink = cluster_yaml("grow", 1, 1).replace("1Gi", "500Mi");
        let e = s.apply_yaml(ns, &shrink).err().context("accepted a shrinking storage.size")?;
        ensure!(e.to_string().contains("storage.size cannot shrink"), "{e:#}");
        let tls = |enabled: bool| format!("{}  tls:\n    enabled: {enabled}\n", cluster_yaml("grow", 1, 1));
        s.apply_yaml(ns, &tls(true))?;
        let e = s.apply_yaml(ns, &tls(false)).err().context("accepted turning tls off")?;
        ensure!(e.to_string().contains("tls.enabled cannot be changed"), "{e:#}");
        let plain_with_secret = format!("{}  tls:\n    enabled: false\n    secretName: x\n", cluster_yaml("bad", 1, 1));
        let e = s.apply_yaml(ns, &plain_with_secret).err().context("accepted a secret without tls")?;
        ensure!(e.to_string().contains("tls.secretName needs tls.enabled"), "{e:#}");
        s.cp.kubectl_ok(&["delete", "slc", "grow", "-n", ns, "--wait=false"])?;
        // Every SqliteCluster a user copies from examples/ passes the schema and the CEL rules.
        let examples = litecluster_e2e::binaries::workspace_root().join("examples");
        for entry in std::fs::read_dir(&examples)? {
            let path = entry?.path();
            let text = std::fs::read_to_string(&path)?;
            for doc in text.split("\n---\n").filter(|d| d.contains("kind: Sqlite")) {
                let mut child = s.cp.kubectl()
                    .args(["apply", "--dry-run=server", "-n", ns, "-f", "-"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()?;
                std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, doc.as_bytes())?;
                let out = child.wait_with_output()?;
                ensure!(out.status.success(), "{} rejected: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim());
            }
        }
        Ok(())
    });
}

// ---------------------------------------------------------------- RBAC

#[test]
fn operator_service_account_can_do_its_job_and_nothing_more() {
    Lease::get("s-rbac").run(|s, _ns| {
        let sa = format!("system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}");
        let can = |verb: &str, res: &str, ns: Option<&str>| -> Result<bool> {
            let (res, sub) = res
                .split_once('/')
                .map_or((res, None), |(r, s)| (r, Some(s)));
            let sub = sub.map(|s| format!("--subresource={s}"));
            let mut args = vec!["auth", "can-i", verb, res, "--as", &sa];
            if let Some(s) = &sub {
                args.push(s);
            }
            if let Some(n) = ns {
                args.extend(["-n", n]);
            }
            let out = s.cp.kubectl_output(&args)?;
            Ok(String::from_utf8_lossy(&out.stdout).trim() == "yes")
        };
        for (verb, res) in [
            ("watch", "sqliteclusters.litecluster.io"),
            ("patch", "sqliteclusters.litecluster.io/status"),
            // Only to remove a restart or switchover request once it is done.
            ("patch", "sqliteclusters.litecluster.io"),
            ("patch", "statefulsets.apps"),
            ("list", "pods"),
            ("patch", "services"),
            ("create", "events.events.k8s.io"),
            // Rolling restarts and snapshot remediation delete member pods one at a time.
            ("delete", "pods"),
            // Role labels (voter/learner) on member pods.
            ("patch", "pods"),
            ("delete", "networkpolicies.networking.k8s.io"),
            // Volume growth.
            ("patch", "persistentvolumeclaims"),
            // The CA and member certificate it issues (TLS by default).
            ("create", "secrets"),
            ("update", "secrets"),
        ] {
            ensure!(
                can(verb, res, Some("default"))?,
                "operator cannot {verb} {res}"
            );
        }
        ensure!(
            can("update", "leases.coordination.k8s.io", Some(OPERATOR_NS))?,
            "operator cannot update its Lease"
        );
        for (verb, res, ns) in [
            ("create", "pods", Some("default")),
            ("list", "secrets", Some("default")),
            ("patch", "secrets", Some("default")),
            ("delete", "secrets", Some("default")),
            ("delete", "statefulsets.apps", Some("default")),
            ("create", "sqliteclusters.litecluster.io", Some("default")),
            ("delete", "sqliteclusters.litecluster.io", Some("default")),
            ("update", "sqliteclusters.litecluster.io", Some("default")),
            ("delete", "persistentvolumeclaims", Some("default")),
            (
                "create",
                "clusterrolebindings.rbac.authorization.k8s.io",
                None,
            ),
            ("get", "nodes", None),
            ("update", "leases.coordination.k8s.io", Some("default")),
        ] {
            ensure!(
                !can(verb, res, ns)?,
                "operator may {verb} {res} (should be denied)"
            );
        }
        // And it really works under that account: its pod runs with a projected token.
        let ready = s.cp.kubectl_ok(&[
            "get",
            "deploy",
            OPERATOR_SA,
            "-n",
            OPERATOR_NS,
            "-o",
            "jsonpath={.status.availableReplicas}",
        ])?;
        ensure!(
            ready.trim() == "1",
            "operator Deployment available replicas {ready:?}"
        );
        Ok(())
    });
}

// ---------------------------------------------------------------- pause

#[test]
fn pause_annotation_stops_reconciling() {
    Lease::get("s-pause").run(|s, ns| {
        create_ready(s, ns, "pz", 1)?;
        s.cp.kubectl_ok(&[
            "annotate",
            "slc",
            "pz",
            "-n",
            ns,
            "litecluster.io/paused=true",
        ])?;
        paused_at_generation(s, ns)?;
        s.cp.kubectl_ok(&["delete", "service", "pz-readonly", "-n", ns])?;
        s.cp.kubectl_ok(&[
            "patch",
            "slc",
            "pz",
            "-n",
            ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":2}}"#,
        ])?;
        // The operator saw the new generation (after the Service was deleted) and left both.
        paused_at_generation(s, ns)?;
        let sts = s.cp.kubectl_ok(&[
            "get",
            "sts",
            "pz",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.replicas}",
        ])?;
        ensure!(
            sts.trim() == "1",
            "paused cluster's StatefulSet changed to {sts} replicas"
        );
        ensure!(
            !s.cp
                .kubectl_output(&["get", "service", "pz-readonly", "-n", ns])?
                .status
                .success(),
            "paused cluster's Service was recreated"
        );
        s.cp.kubectl_ok(&["annotate", "slc", "pz", "-n", ns, "litecluster.io/paused-"])?;
        s.wait_for(
            "Service recreated after unpausing",
            Duration::from_secs(60),
            || {
                Ok(s.cp
                    .kubectl_output(&["get", "service", "pz-readonly", "-n", ns])?
                    .status
                    .success()
                    .then_some(()))
            },
        )?;
        s.wait_ready(ns, "pz", 2, ready_timeout())?;
        let conditions = s.cluster(ns, "pz")?["status"]["conditions"].clone();
        ensure!(
            !conditions.to_string().contains("\"Paused\""),
            "a resumed cluster still shows Paused: {conditions}"
        );
        Ok(())
    });
}

/// Waits until the operator has seen the cluster's current generation while paused: its
/// `Paused` condition is true for that generation.
fn paused_at_generation(s: &Stack, ns: &str) -> Result<()> {
    s.wait_for(
        "Paused=True for the current generation",
        Duration::from_secs(60),
        || {
            let c = s.cluster(ns, "pz")?;
            let generation = &c["metadata"]["generation"];
            let seen = c["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter().any(|x| {
                    x["type"] == "Paused"
                        && x["status"] == "True"
                        && &x["observedGeneration"] == generation
                })
            });
            Ok(seen.then_some(()))
        },
    )
}

// ---------------------------------------------------------------- garbage collection

#[test]
fn deleting_the_cluster_garbage_collects_what_it_owned() {
    Lease::get("s-gc").run(|s, ns| {
        create_ready(s, ns, "gc", 1)?;
        let owned = "statefulsets,services,poddisruptionbudgets,networkpolicies,serviceaccounts,configmaps,pods";
        let list = |sel: &str| {
            s.cp.kubectl_ok(&["get", owned, "-n", ns, "-l", sel, "-o", "name"])
        };
        let before = list("app.kubernetes.io/instance=gc")?;
        ensure!(
            before.contains("statefulset.apps/gc")
                && before.contains("service/gc")
                && before.contains("networkpolicy.networking.k8s.io/gc"),
            "owned objects: {before}"
        );
        s.cp.kubectl_ok(&["delete", "slc", "gc", "-n", ns, "--wait=false"])?;
        s.wait_for("owned objects gone", Duration::from_secs(120), || {
            let left = s.cp.kubectl_ok(&[
                "get",
                "statefulsets,services,poddisruptionbudgets,networkpolicies,pods",
                "-n",
                ns,
                "-o",
                "name",
            ])?;
            let sa =
                s.cp.kubectl_output(&["get", "serviceaccount", "gc-node", "-n", ns])?;
            Ok((left.trim().is_empty() && !sa.status.success()).then_some(()))
        })?;
        Ok(())
    });
}

// ---------------------------------------------------------------- rolling restart

/// Member pods of a cluster: name -> (uid, Ready, terminating).
fn member_pods(
    s: &Stack,
    ns: &str,
    name: &str,
) -> Result<std::collections::BTreeMap<String, (String, bool, bool)>> {
    s.member_pods(ns, name)
}

/// Change the pod template of `roll` and watch the members being replaced: returns the order
/// and the time it took. Fails if more than one member was down at once or the leader was not
/// the last one.
fn roll_and_watch(
    s: &Stack,
    ns: &str,
    names: &[String],
    before: &std::collections::BTreeMap<String, (String, bool, bool)>,
    first_leader: &str,
    acked: &Mutex<Vec<i64>>,
) -> Result<(Vec<String>, Duration)> {
    thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    s.cp.kubectl_ok(&[
        "patch",
        "slc",
        "roll",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"podTemplate":{"annotations":{"example.com/rollout":"1"}}}}"#,
    ])?;
    let mut replaced: Vec<String> = Vec::new();
    let mut overlaps: Vec<Vec<String>> = Vec::new();
    s.wait_for("every member replaced", Duration::from_secs(300), || {
        let pods = member_pods(s, ns, "roll")?;
        let mut down = Vec::new();
        for n in names {
            let now = pods.get(n);
            if !replaced.contains(n) && now.is_none_or(|p| p.0 != before[n].0 || p.2) {
                replaced.push(n.clone());
            }
            if now.is_none_or(|p| !p.1 || p.2) {
                down.push(n.clone());
            }
        }
        if down.len() > 1 {
            overlaps.push(down);
        }
        Ok((replaced.len() == names.len()).then_some(()))
    })?;
    s.wait_ready(ns, "roll", 3, ready_timeout())?;
    let took = t.elapsed();
    s.wait_for(
        "rollout finished in status",
        Duration::from_secs(60),
        || {
            let st = s.cluster(ns, "roll")?["status"].clone();
            Ok((st["rollout"].is_null() && st["updatedReplicas"] == 3).then_some(()))
        },
    )?;
    let after = acked.lock().unwrap().len();
    s.wait_for(
        "writes acknowledged after the rollout",
        Duration::from_secs(30),
        || Ok((acked.lock().unwrap().len() > after + 10).then_some(())),
    )?;
    ensure!(
        overlaps.is_empty(),
        "more than one member down at once: {overlaps:?}"
    );
    let last = replaced.last().cloned().unwrap_or_default();
    ensure!(
        last == first_leader,
        "replaced in order {replaced:?}; the leader {first_leader} should be last"
    );
    Ok((replaced, took))
}

#[test]
fn pod_template_change_replaces_members_one_at_a_time_leader_last() {
    Lease::get("s-rollout").run(|s, ns| {
        let st = create_ready(s, ns, "roll", 3)?;
        let first_leader = st["leader"].as_str().unwrap_or_default().to_string();
        let names: Vec<String> = (0..3).map(|i| format!("roll-{i}")).collect();
        execute(
            &member(s, ns, &first_leader)?,
            r#"["CREATE TABLE w (id INTEGER PRIMARY KEY)"]"#,
        )?;
        let before = member_pods(s, ns, "roll")?;

        // A writer that tries each member in turn, finding its current IP after a failure
        // (a replaced pod may come back with another address).
        let stop = AtomicBool::new(false);
        let acked = Mutex::new(Vec::<i64>::new());
        let summary = thread::scope(|scope| -> Result<(Vec<String>, Duration, u32)> {
            let writer = scope.spawn(|| {
                let mut addrs: Vec<Option<Endpoint>> =
                    names.iter().map(|n| member(s, ns, n).ok()).collect();
                let (mut id, mut target, mut errors) = (0i64, 0usize, 0u32);
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    let i = target % addrs.len();
                    let body = format!(r#"[["INSERT INTO w(id) VALUES(?)", {id}]]"#);
                    match addrs[i].as_ref().map(|a| execute(a, &body)) {
                        Some(Ok(_)) => acked.lock().unwrap().push(id),
                        _ => {
                            errors += 1;
                            target += 1;
                            addrs[i] = member(s, ns, &names[i]).ok();
                            thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
                errors
            });
            // The writer stops whatever happens below, so the scope can end.
            let r = roll_and_watch(s, ns, &names, &before, &first_leader, &acked);
            stop.store(true, Ordering::Relaxed);
            let errors = writer
                .join()
                .map_err(|_| anyhow::anyhow!("writer panicked"))?;
            let (replaced, took) = r?;
            Ok((replaced, took, errors))
        })?;
        let (order, took, errors) = summary;
        eprintln!(
            "replaced {order:?} in {:.1}s; {} writes acknowledged, {errors} failed attempts",
            took.as_secs_f64(),
            acked.lock().unwrap().len()
        );

        let leader = s.cluster(ns, "roll")?["status"]["leader"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let stored: BTreeSet<i64> =
            query_ints(&member(s, ns, &leader)?, "SELECT id FROM w", "strong")?
                .into_iter()
                .collect();
        let acked = acked.lock().unwrap().clone();
        let lost: Vec<i64> = acked
            .iter()
            .filter(|i| !stored.contains(i))
            .copied()
            .collect();
        ensure!(!acked.is_empty(), "no write acknowledged");
        ensure!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

        // Each step explained itself.
        let events =
            s.cp.kubectl_ok(&["get", "events", "-n", ns, "-o", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&events)?;
        let reasons: Vec<&str> = v["items"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["reason"].as_str()).collect())
            .unwrap_or_default();
        for want in ["RollingRestart", "MemberRestarted", "RolloutComplete"] {
            ensure!(reasons.contains(&want), "no {want} event among {reasons:?}");
        }
        // The leader was asked to hand over, and its pod was deleted only once it followed.
        // (The node may report a slow hand-over as failed even though it completes: then the
        // operator says so with a Warning and restarts the member once it sees it following.)
        ensure!(
            reasons.contains(&"LeadershipTransferred")
                || reasons.contains(&"LeadershipTransferFailed"),
            "no hand-over attempt among {reasons:?}"
        );
        let message = |e: &serde_json::Value| {
            e["message"]
                .as_str()
                .or(e["note"].as_str())
                .unwrap_or_default()
                .to_string()
        };
        let leader_restart = v["items"]
            .as_array()
            .and_then(|a| {
                a.iter().find(|e| {
                    e["reason"] == "MemberRestarted"
                        && message(e).contains(&format!("pod {first_leader} "))
                })
            })
            .map(message)
            .with_context(|| format!("no MemberRestarted event for {first_leader}"))?;
        ensure!(
            leader_restart.contains("(follower)"),
            "{first_leader} was not following when its pod was deleted: {leader_restart}"
        );
        Ok(())
    });
}

// ---------------------------------------------------------------- TLS

/// Issue a member certificate for cluster `name` from the control plane's CA and store it as
/// the Secret `<name>-tls` (cert-manager's layout). Returns the CA file.
fn member_tls_secret(s: &Stack, ns: &str, name: &str, serial: u32) -> Result<std::path::PathBuf> {
    member_tls_secret_from(s, &s.cp.pki, ns, name, serial)
}

/// `member_tls_secret` with a certificate and CA from `pki`.
fn member_tls_secret_from(
    s: &Stack,
    pki: &litecluster_e2e::pki::Pki,
    ns: &str,
    name: &str,
    serial: u32,
) -> Result<std::path::PathBuf> {
    let sans = [
        format!("DNS:*.{name}-headless.{ns}.svc.cluster.local"),
        format!("DNS:{name}.{ns}.svc"),
        format!("DNS:{name}.{ns}.svc.cluster.local"),
    ];
    let ck = pki.issue(
        &format!("{ns}-{name}-{serial}"),
        &format!("/O=litecluster/CN={name}"),
        "serverAuth,clientAuth",
        &sans,
    )?;
    let ca = pki.ca.cert.clone();
    let file = |k: &str, p: &std::path::Path| format!("--from-file={k}={}", p.display());
    let secret = s.cp.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        &format!("{name}-tls"),
        "-n",
        ns,
        &file("tls.crt", &ck.cert),
        &file("tls.key", &ck.key),
        &file("ca.crt", &ca),
        "--dry-run=client",
        "-o",
        "yaml",
    ])?;
    s.apply_yaml(ns, &secret)?;
    Ok(ca)
}

/// Waits until every pod in `before` (three members of `cluster`) was replaced and is Ready,
/// and fails if more than one was down at any time on the way.
fn wait_rolled_one_at_a_time(
    s: &Stack,
    ns: &str,
    cluster: &str,
    before: &std::collections::BTreeMap<String, (String, bool, bool)>,
    what: &str,
) -> Result<()> {
    let mut most_down = 0;
    s.wait_for(what, Duration::from_secs(300), || {
        let pods = member_pods(s, ns, cluster)?;
        let down = (0..3)
            .filter(|i| {
                pods.get(&format!("{cluster}-{i}"))
                    .is_none_or(|p| !p.1 || p.2)
            })
            .count();
        most_down = most_down.max(down);
        Ok(before
            .iter()
            .all(|(n, b)| pods.get(n).is_some_and(|p| p.0 != b.0 && p.1 && !p.2))
            .then_some(()))
    })?;
    ensure!(
        most_down <= 1,
        "{most_down} members were down at once during the renewal"
    );
    Ok(())
}

/// A Secret of `ns` as JSON.
fn secret_json(s: &Stack, ns: &str, name: &str) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&s.cp.kubectl_ok(&[
        "get", "secret", name, "-n", ns, "-o", "json",
    ])?)?)
}

#[test]
fn a_cluster_without_tls_settings_gets_an_issued_certificate_and_a_renewal_rolls_it() {
    Lease::get("s-autotls").run(|s, ns| {
        let st = create_ready(s, ns, "auto", 3)?;
        let leader = st["leader"].as_str().unwrap_or_default().to_string();
        let follower = if leader == "auto-0" {
            "auto-1"
        } else {
            "auto-0"
        };
        // The operator issued both Secrets, owned by the cluster; pods mount only the
        // certificate, never the CA's key.
        let uid = s.cluster(ns, "auto")?["metadata"]["uid"].clone();
        let ca = secret_json(s, ns, "auto-ca")?;
        let tls = secret_json(s, ns, "auto-tls")?;
        for secret in [&ca, &tls] {
            ensure!(
                secret["metadata"]["ownerReferences"][0]["uid"] == uid,
                "not owned by the cluster: {}",
                secret["metadata"]
            );
        }
        ensure!(tls["type"] == "kubernetes.io/tls" && tls["data"].get("ca.key").is_none());
        let sts =
            s.cp.kubectl_ok(&["get", "sts", "auto", "-n", ns, "-o", "json"])?;
        ensure!(
            sts.contains("\"secretName\": \"auto-tls\"") && !sts.contains("auto-ca"),
            "the StatefulSet mounts the wrong Secrets"
        );
        // HTTPS checked against the issued CA and the member's name; the write goes through a
        // follower, which forwards it to the leader over HTTPS too.
        execute(
            &member(s, ns, follower)?,
            r#"["CREATE TABLE t (id INTEGER PRIMARY KEY)", "INSERT INTO t(id) VALUES(1)"]"#,
        )?;
        let ep = member(s, ns, &leader)?;
        ensure!(ep.tls.is_some(), "{ep:?} is not HTTPS");
        ensure!(query_ints(&ep, "SELECT id FROM t", "strong")? == [1]);
        let plain = http("GET", &ep.addr, "/status", None);
        ensure!(
            !matches!(plain, Ok((200, _))),
            "plain HTTP answered: {plain:?}"
        );

        // A certificate near its end is renewed from the same CA, and the members restart onto
        // it one at a time.
        let before = member_pods(s, ns, "auto")?;
        let cert_before = tls["data"]["tls.crt"].clone();
        let soon = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            + 24 * 3600;
        s.cp.kubectl_ok(&[
            "annotate",
            "secret",
            "auto-tls",
            "-n",
            ns,
            "--overwrite",
            &format!("litecluster.io/not-after={soon}"),
        ])?;
        s.wait_for("the certificate renewed", Duration::from_secs(120), || {
            let now = secret_json(s, ns, "auto-tls")?;
            Ok((now["data"]["tls.crt"] != cert_before).then_some(()))
        })?;
        ensure!(
            secret_json(s, ns, "auto-ca")?["data"] == ca["data"],
            "the CA changed"
        );
        wait_rolled_one_at_a_time(
            s,
            ns,
            "auto",
            &before,
            "every member restarted onto the renewed certificate",
        )?;
        let st = s.wait_ready(ns, "auto", 3, ready_timeout())?;
        let leader = st["leader"].as_str().unwrap_or_default();
        ensure!(query_ints(&member(s, ns, leader)?, "SELECT id FROM t", "strong")? == [1]);
        let notes = event_notes(s, ns, "auto", "CertificateIssued")?;
        ensure!(
            notes.iter().any(|n| n.contains("expires within 30 days")),
            "events: {notes:?}"
        );
        Ok(())
    });
}

#[test]
fn tls_cluster_serves_https_with_mutual_tls_between_members_and_rolls_a_renewed_certificate() {
    Lease::get("s-tls").run(|s, ns| {
        let ca = member_tls_secret(s, ns, "sec", 1)?;
        let yaml = format!(
            "{}  tls:\n    secretName: sec-tls\n",
            cluster_yaml("sec", 3, 3)
        );
        s.apply_yaml(ns, &yaml)?;
        // Ready means the operator reached every member over HTTPS (trusting only ca.crt) and
        // the members formed a cluster over mutual TLS on the Raft port.
        let st = s.wait_ready(ns, "sec", 3, ready_timeout())?;
        let host = |pod: &str| format!("{pod}.sec-headless.{ns}.svc.cluster.local");
        let ip = |pod: &str| -> Result<String> {
            s.pod_ip(ns, pod)?
                .with_context(|| format!("pod {pod} has no IP"))
        };
        let leader = st["leader"].as_str().unwrap_or_default().to_string();
        let follower = if leader == "sec-0" { "sec-1" } else { "sec-0" };
        // A write through a follower is forwarded to the leader over HTTPS.
        for body in [
            r#"["CREATE TABLE t (id INTEGER PRIMARY KEY)"]"#,
            r#"[["INSERT INTO t(id) VALUES(?)", 1], ["INSERT INTO t(id) VALUES(?)", 2]]"#,
        ] {
            let (code, text) = https(
                &ca,
                &host(follower),
                &ip(follower)?,
                "POST",
                "/db/execute",
                Some(body),
            )?;
            ensure!(
                code == 200 && !text.contains("\"error\""),
                "execute over https: {code} {text}"
            );
        }
        let rows = |pod: &str| -> Result<String> {
            let (code, text) = https(
                &ca,
                &host(pod),
                &ip(pod)?,
                "GET",
                "/db/query?level=none&q=SELECT%20id%20FROM%20t%20ORDER%20BY%20id",
                None,
            )?;
            ensure!(code == 200, "query over https on {pod}: {code} {text}");
            let v: serde_json::Value = serde_json::from_str(&text)?;
            Ok(v["results"][0]["values"].to_string())
        };
        for i in 0..3 {
            let pod = format!("sec-{i}");
            s.wait_for(&format!("rows on {pod}"), Duration::from_secs(30), || {
                Ok((rows(&pod)? == "[[1],[2]]").then_some(()))
            })?;
        }
        // Plain HTTP gets no answer from an HTTPS port.
        let plain = http("GET", &format!("{}:4001", ip(&leader)?), "/status", None);
        ensure!(
            !matches!(plain, Ok((200, _))),
            "plain HTTP answered: {plain:?}"
        );

        // Renewal: a new certificate from the same CA restarts the members one at a time.
        let before = member_pods(s, ns, "sec")?;
        member_tls_secret(s, ns, "sec", 2)?;
        wait_rolled_one_at_a_time(
            s,
            ns,
            "sec",
            &before,
            "every member restarted with the renewed certificate",
        )?;
        s.wait_ready(ns, "sec", 3, ready_timeout())?;
        for i in 0..3 {
            let pod = format!("sec-{i}");
            s.wait_for(
                &format!("rows on {pod} after renewal"),
                Duration::from_secs(30),
                || Ok((rows(&pod)? == "[[1],[2]]").then_some(())),
            )?;
        }

        // A CA swap (a new CA and a certificate from it at once) would cut every restarted
        // member off: the operator holds restarts back and says why.
        let degraded = || -> Result<(String, String)> {
            let st = s.cluster(ns, "sec")?;
            let c = st["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Degraded").cloned())
                .unwrap_or_default();
            Ok((
                c["reason"].as_str().unwrap_or_default().into(),
                c["message"].as_str().unwrap_or_default().into(),
            ))
        };
        let other =
            litecluster_e2e::pki::Pki::generate(&s.cp.run_dir.join(format!("{ns}-other-ca")), &[])?;
        let steady = member_pods(s, ns, "sec")?;
        member_tls_secret_from(s, &other, ns, "sec", 3)?;
        let (_, message) =
            s.wait_for("Degraded=TlsChangeUnsafe", Duration::from_secs(150), || {
                let d = degraded()?;
                Ok((d.0 == "TlsChangeUnsafe").then_some(d))
            })?;
        ensure!(
            message.contains("Rotate in steps"),
            "Degraded message: {message}"
        );
        // A pod-template change wants every member restarted; once the operator has seen it
        // (observedGeneration) it must still restart none of them onto the unsafe Secret.
        s.cp.kubectl_ok(&[
            "patch",
            "slc",
            "sec",
            "-n",
            ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"podTemplate":{"annotations":{"e2e.litecluster.io/probe":"1"}}}}"#,
        ])?;
        s.wait_for(
            "the operator to observe the new generation",
            Duration::from_secs(60),
            || {
                let c = s.cluster(ns, "sec")?;
                Ok(
                    (c["status"]["observedGeneration"] == c["metadata"]["generation"])
                        .then_some(()),
                )
            },
        )?;
        let now = member_pods(s, ns, "sec")?;
        ensure!(
            steady
                .iter()
                .all(|(n, p)| now.get(n).is_some_and(|q| q.0 == p.0)),
            "members were restarted onto an unsafe Secret: {steady:?} -> {now:?}"
        );
        ensure!(
            degraded()?.0 == "TlsChangeUnsafe",
            "Degraded changed while the Secret is still unsafe"
        );
        // The members still run their old certificate and serve.
        let leader = s.cluster(ns, "sec")?["status"]["leader"]
            .as_str()
            .unwrap_or("sec-0")
            .to_string();
        ensure!(rows(&leader)? == "[[1],[2]]", "rows after the refused swap");
        // Putting a certificate from the members' CA back clears it.
        member_tls_secret(s, ns, "sec", 4)?;
        s.wait_for("Degraded cleared", Duration::from_secs(150), || {
            Ok((degraded()?.0 != "TlsChangeUnsafe").then_some(()))
        })?;
        Ok(())
    });
}

// ---------------------------------------------------------------- volume growth

/// `spec.resources.requests.storage` and `status.capacity.storage` of a claim.
fn claim_sizes(s: &Stack, ns: &str, claim: &str) -> Result<(String, String)> {
    let out =
        s.cp.kubectl_ok(&["get", "pvc", claim, "-n", ns, "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let get = |p: &str| {
        v.pointer(p)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    Ok((
        get("/spec/resources/requests/storage"),
        get("/status/capacity/storage"),
    ))
}

/// Notes of the cluster's Events with this reason.
fn event_notes(s: &Stack, ns: &str, cluster: &str, reason: &str) -> Result<Vec<String>> {
    let out =
        s.cp.kubectl_ok(&["get", "events.events.k8s.io", "-n", ns, "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|e| e["reason"] == reason && e["regarding"]["name"] == cluster)
                .filter_map(|e| e["note"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default())
}

#[test]
fn growing_storage_size_expands_member_claims_or_says_why_it_cannot() {
    Lease::get("s-volumes").run(|s, ns| {
        // An expandable class (the e2e provisioner serves every claim and resizes its volumes).
        s.apply_yaml(
            ns,
            "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: e2e-expandable\n\
             provisioner: litecluster.dev/e2e-hostpath\nallowVolumeExpansion: true\n",
        )?;
        let grow = cluster_yaml("grow", 1, 1).replace(
            "size: 1Gi\n",
            "size: 1Gi\n    storageClassName: e2e-expandable\n",
        );
        s.apply_yaml(ns, &grow)?;
        // A class-less claim: the API server refuses to resize it.
        s.apply_yaml(ns, &cluster_yaml("fixed", 1, 1))?;
        s.wait_ready(ns, "grow", 1, ready_timeout())?;
        s.wait_ready(ns, "fixed", 1, ready_timeout())?;
        let a = member(s, ns, "grow-0")?;
        execute(
            &a,
            r#"["CREATE TABLE t (id INTEGER PRIMARY KEY)", "INSERT INTO t(id) VALUES(7)"]"#,
        )?;

        for name in ["grow", "fixed"] {
            s.cp.kubectl_ok(&[
                "patch",
                "slc",
                name,
                "-n",
                ns,
                "--type=merge",
                "-p",
                r#"{"spec":{"storage":{"size":"2Gi"}}}"#,
            ])?;
        }
        s.wait_for("data-grow-0 grown to 2Gi", Duration::from_secs(90), || {
            Ok((claim_sizes(s, ns, "data-grow-0")? == ("2Gi".into(), "2Gi".into())).then_some(()))
        })?;
        let notes = event_notes(s, ns, "grow", "VolumeExpansion")?;
        ensure!(
            notes
                .iter()
                .any(|n| n == "growing data-grow-0 from 1Gi to 2Gi"),
            "events: {notes:?}"
        );
        let refused = s.wait_for(
            "VolumeExpansionFailed on fixed",
            Duration::from_secs(90),
            || {
                Ok(event_notes(s, ns, "fixed", "VolumeExpansionFailed")?
                    .into_iter()
                    .next())
            },
        )?;
        ensure!(
            refused.contains("allowVolumeExpansion"),
            "refusal note: {refused}"
        );
        ensure!(
            claim_sizes(s, ns, "data-fixed-0")?.0 == "1Gi",
            "a refused claim changed"
        );
        // Both keep serving; the grown one kept its data.
        ensure!(
            query_ints(&a, "SELECT id FROM t", "strong")? == [7],
            "rows changed by the resize"
        );
        s.wait_ready(ns, "fixed", 1, ready_timeout())?;
        // A member added now gets a claim from the template (1Gi): it is grown, and the member
        // joins once it has 2Gi, then catches up.
        s.cp.kubectl_ok(&["scale", "slc/grow", "--replicas=2", "-n", ns])?;
        s.wait_ready(ns, "grow", 2, ready_timeout())?;
        ensure!(
            claim_sizes(s, ns, "data-grow-1")? == ("2Gi".into(), "2Gi".into()),
            "the new member's claim: {:?}",
            claim_sizes(s, ns, "data-grow-1")?
        );
        let a1 = member(s, ns, "grow-1")?;
        s.wait_for("the row on grow-1", Duration::from_secs(30), || {
            Ok((query_ints(&a1, "SELECT id FROM t", "none")? == [7]).then_some(()))
        })?;
        s.cp.kubectl_ok(&["delete", "storageclass", "e2e-expandable", "--wait=false"])?;
        Ok(())
    });
}

// ---------------------------------------------------------------- kubectl plugin

/// `kubectl-litecluster` (the plugin) with the stack's kubeconfig: stdout, or an error with
/// its stderr.
fn plugin(s: &Stack, args: &[&str]) -> Result<std::result::Result<String, String>> {
    s.plugin(args)
}

#[test]
fn the_kubectl_plugin_shows_status_and_acts_through_the_operator() {
    Lease::get("s-plugin").run(|s, ns| {
        create_ready(s, ns, "kp", 3)?;
        let annotation = |key: &str| -> Result<String> {
            s.cp.kubectl_ok(&[
                "get",
                "slc",
                "kp",
                "-n",
                ns,
                "-o",
                &format!(
                    "jsonpath={{.metadata.annotations.{}}}",
                    key.replace('.', "\\.")
                ),
            ])
        };

        let status = plugin(s, &["status", "kp", "-n", ns])?.map_err(anyhow::Error::msg)?;
        for want in [
            "kp-0",
            "kp-1",
            "kp-2",
            "Leader",
            "CONDITION",
            "Ready",
            "Rollout: none",
        ] {
            ensure!(status.contains(want), "status lacks {want:?}:\n{status}");
        }

        // Switchover to a follower: it leads, and the request is gone.
        let leader = s.cluster(ns, "kp")?["status"]["leader"]
            .as_str()
            .context("no leader")?
            .to_owned();
        let target = ["kp-0", "kp-1", "kp-2"]
            .into_iter()
            .find(|m| *m != leader)
            .unwrap();
        plugin(s, &["switchover", "kp", target, "-n", ns])?.map_err(anyhow::Error::msg)?;
        s.wait_for(
            &format!("{target} leading"),
            Duration::from_secs(120),
            || {
                let st = s.cluster(ns, "kp")?["status"].clone();
                Ok(
                    (st["leader"] == target && annotation("litecluster.io/switchover")?.is_empty())
                        .then_some(()),
                )
            },
        )?;

        // Restart one member: only its pod is replaced, and the request is gone.
        let before = member_pods(s, ns, "kp")?;
        let victim = ["kp-0", "kp-1", "kp-2"]
            .into_iter()
            .find(|m| *m != target)
            .unwrap();
        plugin(s, &["restart", "kp", victim, "-n", ns])?.map_err(anyhow::Error::msg)?;
        s.wait_for(
            &format!("{victim} restarted"),
            Duration::from_secs(180),
            || {
                let now = member_pods(s, ns, "kp")?;
                let replaced = now
                    .get(victim)
                    .is_some_and(|p| p.0 != before[victim].0 && p.1);
                Ok((replaced && annotation("litecluster.io/restart")?.is_empty()).then_some(()))
            },
        )?;
        let now = member_pods(s, ns, "kp")?;
        for (n, p) in &before {
            if n != victim {
                ensure!(now[n].0 == p.0, "{n} was restarted too");
            }
        }

        // Pause shows in the status; resume clears it.
        plugin(s, &["pause", "kp", "-n", ns])?.map_err(anyhow::Error::msg)?;
        s.wait_for("Paused=True", Duration::from_secs(60), || {
            let c = s.cluster(ns, "kp")?;
            Ok(c["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|x| x["type"] == "Paused" && x["status"] == "True")
                })
                .then_some(()))
        })?;
        let shown = plugin(s, &["status", "kp", "-n", ns])?.map_err(anyhow::Error::msg)?;
        ensure!(
            shown.contains("PAUSED"),
            "status of a paused cluster:\n{shown}"
        );
        plugin(s, &["resume", "kp", "-n", ns])?.map_err(anyhow::Error::msg)?;
        s.wait_for("Paused gone", Duration::from_secs(60), || {
            let c = s.cluster(ns, "kp")?;
            Ok((!c["status"]["conditions"].to_string().contains("\"Paused\"")).then_some(()))
        })?;

        // A member that does not exist is refused by the plugin, saying which exist.
        let err = plugin(s, &["switchover", "kp", "kp-9", "-n", ns])?
            .err()
            .context("a switchover to kp-9 was accepted")?;
        ensure!(
            err.contains("not a member") && err.contains("kp-0"),
            "{err}"
        );
        Ok(())
    });
}
