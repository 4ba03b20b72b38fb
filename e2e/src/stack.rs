//! The whole user-facing stack: control plane, three process-backed nodes,
//! `helm install` of `charts/litecluster-operator` (the operator runs as a pod
//! under the chart's RBAC), and helpers the scenarios share: SqliteClusters,
//! pod IPs, the rqlite HTTP API, and failure diagnostics (operator and member
//! logs, Events).

use std::{
    env,
    io::{Read, Write},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{ControlPlane, Options, binaries::workspace_root, pods::pod_dir, process::tail};

/// Namespace and release of the operator.
pub const OPERATOR_NS: &str = "litecluster-system";
pub const RELEASE: &str = "litecluster-operator";
/// The operator's ServiceAccount (the chart's fullname for this release).
pub const OPERATOR_SA: &str = "litecluster-operator";

/// Builds `litecluster-node`, `litecluster-operator` and `kubectl-litecluster` into the directory the
/// kubelets map images to (`$CARGO_TARGET_DIR/<profile>` of the running
/// binary), unless `LITECLUSTER_E2E_SKIP_BUILD=1`. Once per process: stacks
/// that start together share one build, and none relinks a binary another
/// stack runs. `litecluster-e2e` itself is not rebuilt: it is this program, or
/// `cargo test` built it with the tests.
pub fn ensure_workspace_binaries() -> Result<PathBuf> {
    static BUILT: std::sync::OnceLock<std::result::Result<PathBuf, String>> =
        std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| build_workspace_binaries().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_workspace_binaries() -> Result<PathBuf> {
    let exe = env::current_exe()?;
    // target/<profile>/deps/test-binary or target/<profile>/litecluster-e2e
    let profile_dir = exe
        .ancestors()
        .skip(1)
        .find(|d| {
            d.join("litecluster-e2e").is_file()
                || d.file_name()
                    .is_some_and(|n| n == "debug" || n == "release")
        })
        .context("cannot locate the cargo profile directory")?
        .to_path_buf();
    if env::var("LITECLUSTER_E2E_SKIP_BUILD").is_ok_and(|v| v == "1") {
        return Ok(profile_dir);
    }
    let target_dir = profile_dir.parent().context("profile dir without parent")?;
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let t = Instant::now();
    let mut cmd = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root())
        .args([
            "build",
            "--bin",
            "litecluster-node",
            "--bin",
            "litecluster-operator",
            "--bin",
            "kubectl-litecluster",
        ])
        .env("CARGO_TARGET_DIR", target_dir);
    if release {
        cmd.arg("--release");
    }
    let st = cmd.status().context("running cargo build")?;
    if !st.success() {
        bail!("cargo build of the node and operator binaries failed");
    }
    eprintln!(
        "[litecluster-e2e] node and operator binaries ready in {:.1}s ({})",
        t.elapsed().as_secs_f64(),
        profile_dir.display()
    );
    Ok(profile_dir)
}

pub struct Stack {
    pub cp: ControlPlane,
}

impl Stack {
    /// Control plane + nodes node-1..3 + the operator installed with helm
    /// (waits until its Deployment is available).
    pub fn up(opts: Options) -> Result<Stack> {
        Self::up_with(opts, &[])
    }

    /// As [`Stack::up`], with extra `--set` values for the operator's chart.
    pub fn up_with(mut opts: Options, chart_values: &[&str]) -> Result<Stack> {
        let started = Instant::now();
        let bin_dir = ensure_workspace_binaries()?;
        if opts.image_bin_dir.is_none() {
            opts.image_bin_dir = Some(bin_dir);
        }
        let mut cp = ControlPlane::start(opts)?;
        cp.add_nodes(&["node-1", "node-2", "node-3"])?;
        let stack = Stack { cp };
        let t = Instant::now();
        if let Err(e) = stack.install_operator(chart_values) {
            eprintln!("{}", stack.diagnostics(None));
            return Err(e);
        }
        log(&format!(
            "operator installed and available in {:.1}s; stack up in {:.1}s",
            t.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64()
        ));
        Ok(stack)
    }

    fn install_operator(&self, chart_values: &[&str]) -> Result<()> {
        let chart = workspace_root().join("charts/litecluster-operator");
        let out = self
            .cp
            .helm()
            .args(["upgrade", "--install", RELEASE])
            .arg(&chart)
            .args([
                "--namespace",
                OPERATOR_NS,
                "--create-namespace",
                "--wait",
                "--timeout",
                "180s",
            ])
            // Text logs read better in failure reports.
            .args([
                "--set",
                "logFormat=text",
                "--set",
                "logLevel=info\\,litecluster_operator=debug",
            ])
            .args(chart_values.iter().flat_map(|v| ["--set", v]))
            .output()
            .context("running helm")?;
        if !out.status.success() {
            bail!(
                "helm install failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// `kubectl apply -f` of a manifest, in `ns`.
    pub fn apply_file(&self, ns: &str, file: &Path) -> Result<String> {
        self.cp
            .kubectl_ok(&["apply", "-n", ns, "-f", &file.display().to_string()])
    }

    /// `kubectl apply` of YAML text.
    pub fn apply_yaml(&self, ns: &str, yaml: &str) -> Result<String> {
        let out = self
            .cp
            .kubectl()
            .args(["apply", "-n", ns, "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(yaml.as_bytes())?;
                c.wait_with_output()
            })?;
        if !out.status.success() {
            bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The member pods of cluster `name`: (uid, Ready, terminating) by pod name.
    pub fn member_pods(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<std::collections::BTreeMap<String, (String, bool, bool)>> {
        let out = self.cp.kubectl_ok(&[
            "get",
            "pods",
            "-n",
            ns,
            "-l",
            &format!("app.kubernetes.io/instance={name}"),
            "-o",
            "json",
        ])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let mut pods = std::collections::BTreeMap::new();
        for p in v["items"].as_array().cloned().unwrap_or_default() {
            let ready = p["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
            pods.insert(
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                (
                    p["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
                    ready,
                    !p["metadata"]["deletionTimestamp"].is_null(),
                ),
            );
        }
        Ok(pods)
    }

    /// The SqliteCluster as JSON.
    pub fn cluster(&self, ns: &str, name: &str) -> Result<serde_json::Value> {
        let out = self
            .cp
            .kubectl_ok(&["get", "sqlitecluster", name, "-n", ns, "-o", "json"])?;
        Ok(serde_json::from_str(&out)?)
    }

    /// Polls `f` every 500 ms until it returns Some, or fails after `timeout`.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Result<Option<T>>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            match f() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last = Some(e),
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what} (last error: {last:?})");
            }
            thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until the cluster's Ready condition is True with `replicas`
    /// ready members and a leader; returns the status.
    pub fn wait_ready(
        &self,
        ns: &str,
        name: &str,
        replicas: i64,
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        self.wait_for(
            &format!("SqliteCluster {ns}/{name} Ready {replicas}/{replicas}"),
            timeout,
            || {
                let c = self.cluster(ns, name)?;
                let st = &c["status"];
                let ready = st["conditions"].as_array().is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                let ok = ready
                    && st["readyReplicas"].as_i64() == Some(replicas)
                    && st["replicas"].as_i64() == Some(replicas)
                    && st["leader"].as_str().is_some_and(|l| !l.is_empty());
                Ok(ok.then(|| st.clone()))
            },
        )
    }

    /// IP of a pod (None until it has one).
    pub fn pod_ip(&self, ns: &str, pod: &str) -> Result<Option<String>> {
        let out = self.cp.kubectl_output(&[
            "get",
            "pod",
            pod,
            "-n",
            ns,
            "-o",
            "jsonpath={.status.podIP}",
        ])?;
        let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok((out.status.success() && !ip.is_empty()).then_some(ip))
    }

    /// The container log of a pod (kept under the run directory).
    pub fn pod_log(&self, ns: &str, pod: &str, container: &str) -> PathBuf {
        pod_dir(&self.cp.run_dir, ns, pod).join(format!("{container}.log"))
    }

    /// Operator and member logs, pods, clusters and Events: printed when a scenario fails.
    pub fn diagnostics(&self, ns: Option<&str>) -> String {
        let mut s = String::from("\n========== litecluster-e2e diagnostics ==========\n");
        let k = |args: &[&str]| match self.cp.kubectl_output(args) {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("{e:#}"),
        };
        s += &format!(
            "--- kubectl get sqliteclusters,statefulsets,pods,pvc -A -o wide\n{}",
            k(&[
                "get",
                "sqliteclusters,statefulsets,pods,pvc",
                "-A",
                "-o",
                "wide"
            ])
        );
        if let Some(ns) = ns {
            s += &format!(
                "--- sqliteclusters -n {ns} -o yaml (status)\n{}",
                k(&[
                    "get",
                    "sqliteclusters",
                    "-n",
                    ns,
                    "-o",
                    "jsonpath={range .items[*]}{.metadata.name}: {.status}{\"\\n\"}{end}"
                ])
            );
        }
        s += &format!(
            "--- Events\n{}",
            k(&[
                "get",
                "events",
                "-A",
                "--sort-by=.lastTimestamp",
                "-o",
                "custom-columns=NS:.metadata.namespace,LAST:.lastTimestamp,TYPE:.type,REASON:.reason,OBJECT:.involvedObject.name,MESSAGE:.message"
            ])
        );
        // Every pod's container logs: the operator's and the members'.
        let pods_root = self.cp.run_dir.join("pods");
        if let Ok(entries) = std::fs::read_dir(&pods_root) {
            let mut dirs: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            dirs.sort();
            for d in dirs {
                let name = d
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned();
                let relevant = name.starts_with(OPERATOR_NS)
                    || ns.is_none_or(|n| name.starts_with(&format!("{n}_")));
                if !relevant {
                    continue;
                }
                if let Ok(files) = std::fs::read_dir(&d) {
                    for f in files
                        .flatten()
                        .filter(|f| f.path().extension().is_some_and(|e| e == "log"))
                    {
                        s += &format!(
                            "--- log {} (last 60 lines)\n{}\n",
                            f.path().display(),
                            tail(&f.path(), 60)
                        );
                    }
                }
            }
        }
        s += &format!("--- component logs\n{}", self.cp.log_tails(15));
        s
    }
}

/// Runs `f`; on error prints diagnostics first. For scenario bodies.
pub fn with_diagnostics<T>(stack: &Stack, ns: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let r = f();
    if r.is_err() {
        eprintln!("{}", stack.diagnostics(Some(ns)));
    }
    r
}

impl Stack {
    /// Runs the kubectl plugin (`kubectl-litecluster`) against this control plane: its stdout,
    /// or its stderr when it failed.
    pub fn plugin(&self, args: &[&str]) -> Result<std::result::Result<String, String>> {
        let bin = ensure_workspace_binaries()?.join("kubectl-litecluster");
        let out = Command::new(&bin)
            .args(args)
            .env("KUBECONFIG", &self.cp.kubeconfig)
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        Ok(if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        })
    }
}

/// Where a member's API answers.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// `ip:4001`.
    pub addr: String,
    /// Over HTTPS: the DNS name its certificate holds, and the CA file to trust.
    pub tls: Option<(String, PathBuf)>,
}

impl Stack {
    /// The API of member `pod` of `cluster`, over HTTPS when the cluster serves it so (the
    /// default): the CA comes from the cluster's TLS Secret, issued or named in `spec.tls`.
    pub fn endpoint(&self, ns: &str, cluster: &str, pod: &str) -> Result<Endpoint> {
        let ip = self
            .pod_ip(ns, pod)?
            .with_context(|| format!("pod {pod} has no IP"))?;
        let addr = format!("{ip}:4001");
        let tls = &self.cluster(ns, cluster)?["spec"]["tls"];
        if tls["enabled"] == false || tls["api"] == false {
            return Ok(Endpoint { addr, tls: None });
        }
        let secret = tls["secretName"]
            .as_str()
            .map_or_else(|| format!("{cluster}-tls"), String::from);
        let out = self
            .cp
            .kubectl_ok(&["get", "secret", &secret, "-n", ns, "-o", "json"])?;
        let secret_obj: k8s_openapi::api::core::v1::Secret = serde_json::from_str(&out)?;
        let ca = secret_obj
            .data
            .and_then(|d| d.get("ca.crt").map(|b| b.0.clone()))
            .with_context(|| format!("Secret {ns}/{secret} has no ca.crt"))?;
        let dir = std::env::temp_dir().join(format!("litecluster-e2e-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join(format!("{ns}-{secret}-ca.crt"));
        std::fs::write(&file, ca)?;
        let host = format!("{pod}.{cluster}-headless.{ns}.svc.cluster.local");
        Ok(Endpoint {
            addr,
            tls: Some((host, file)),
        })
    }
}

/// One request to a member's API, over HTTPS (curl, checking the certificate against the CA
/// and the member's name) or plain HTTP as `ep` says; returns (status, body).
pub fn call(ep: &Endpoint, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String)> {
    let Some((host, ca)) = &ep.tls else {
        return http(method, &ep.addr, path, body);
    };
    let ip = ep
        .addr
        .rsplit_once(':')
        .map_or(ep.addr.as_str(), |(ip, _)| ip);
    https(ca, host, ip, method, path, body)
}

/// A request over HTTPS with curl to `host`, which `--resolve` points at `ip`; the certificate
/// is checked against `ca` and `host`. Returns (status, body).
pub fn https(
    ca: &Path,
    host: &str,
    ip: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let url = format!("https://{host}:4001{path}");
    let resolve = format!("{host}:4001:{ip}");
    let ca = ca.to_string_lossy();
    let mut args = vec!["-sS", "--max-time", "10", "--cacert", &ca];
    args.extend(["--resolve", &resolve, "-X", method, "-w", "\n%{http_code}"]);
    if let Some(b) = body {
        args.extend(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    args.push(&url);
    let out = std::process::Command::new("curl")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!(
            "curl {url}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((
        code.trim().parse().context("curl status")?,
        body.to_string(),
    ))
}

/// One HTTP/1.1 request to `ip:port` (plain text); returns (status, body).
pub fn http(method: &str, addr: &str, path: &str, body: Option<&str>) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((code, body))
}

fn dechunk(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

fn log(msg: &str) {
    eprintln!("[litecluster-e2e] {msg}");
}
