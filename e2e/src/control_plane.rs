//! A real Kubernetes control plane on loopback.

use std::{
    env, fs,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    binaries::{self, Binaries},
    pki::{CertKey, Pki},
    process::{self, Proc},
};

/// How to bring the control plane up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Everything lives here: pki/, etcd data, kubeconfigs, logs/, pids/.
    /// Removed by [`ControlPlane::stop`] (unless `LITECLUSTER_E2E_KEEP=1`).
    pub run_dir: PathBuf,
    /// `--service-cluster-ip-range`; its first address gets a SAN on the
    /// apiserver certificate.
    pub service_cidr: String,
    /// The first IP of `service_cidr` (the `kubernetes` Service).
    pub service_ip: String,
    /// `--cluster-cidr` for the controller manager, which then allocates a
    /// podCIDR to every Node.
    pub cluster_cidr: String,
    /// `--advertise-address` of the apiserver (the `kubernetes` Service's
    /// endpoint). None lets the apiserver pick the host's default-route address.
    pub advertise_address: Option<String>,
    /// How long to wait for every component to become healthy.
    pub ready_timeout: Duration,
    /// Binaries to use; None runs the build script (cached after the first time).
    pub binaries: Option<Binaries>,
    /// Extra `--flag=value` arguments per component.
    pub extra_apiserver_args: Vec<String>,
    pub extra_controller_manager_args: Vec<String>,
    pub extra_scheduler_args: Vec<String>,
    /// Give pods a network (a bridge and a namespace per pod, see
    /// [`crate::network`]); the cluster CIDR and the apiserver's advertise
    /// address then come from the allocated network. Needs root.
    pub pod_network: bool,
    /// Where the kubelets find the programs images map to
    /// (`litecluster-node`, `litecluster-operator`); None: the directory of
    /// the `litecluster-e2e` binary (`$CARGO_TARGET_DIR/<profile>`), or
    /// `$LITECLUSTER_E2E_IMAGE_BIN_DIR`.
    pub image_bin_dir: Option<PathBuf>,
    /// Extra image map entries `REPO=PATH` for the kubelets.
    pub images: Vec<String>,
}

impl Options {
    /// Defaults with the given run directory.
    pub fn new(run_dir: impl Into<PathBuf>) -> Options {
        Options {
            run_dir: run_dir.into(),
            service_cidr: "10.96.0.0/16".into(),
            service_ip: "10.96.0.1".into(),
            cluster_cidr: "10.244.0.0/16".into(),
            advertise_address: None,
            ready_timeout: Duration::from_secs(120),
            binaries: None,
            extra_apiserver_args: Vec::new(),
            extra_controller_manager_args: Vec::new(),
            extra_scheduler_args: Vec::new(),
            pod_network: true,
            image_bin_dir: None,
            images: Vec::new(),
        }
    }

    /// A run directory of its own for a test: `<workspace>/.e2e/<name>-<pid>`
    /// (or under `$LITECLUSTER_E2E_DIR`).
    pub fn for_test(name: &str) -> Options {
        Options::new(runs_root().join(format!("{name}-{}", std::process::id())))
    }
}

/// Stops and removes run directories under [`runs_root`] left by test
/// processes that died without tearing down (e.g. killed by a CI timeout):
/// those named `<name>-<pid>` whose pid is no longer running and that still
/// record processes. Called by
/// [`ControlPlane::start`] before it starts anything.
pub fn reap_stale_runs() {
    let Ok(entries) = fs::read_dir(runs_root()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .rsplit_once('-')
            .and_then(|(_, p)| p.parse::<u32>().ok())
        else {
            continue;
        };
        // Kept directories (LITECLUSTER_E2E_KEEP=1) have no pids/ and stay.
        let has_pids = e.path().join("pids").is_dir();
        if has_pids && pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            log(&format!(
                "reaping stale run directory {}",
                e.path().display()
            ));
            if let Err(err) = down(&e.path()) {
                log(&format!("reaping {}: {err:#}", e.path().display()));
            }
        }
    }
}

/// Where run directories go: `$LITECLUSTER_E2E_DIR` or `<workspace>/.e2e`.
pub fn runs_root() -> PathBuf {
    env::var_os("LITECLUSTER_E2E_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| binaries::workspace_root().join(".e2e"))
}

/// The default run directory of the CLI: `<runs_root>/run`.
pub fn default_run_dir() -> PathBuf {
    runs_root().join("run")
}

/// A running control plane. Dropping it stops every process and removes the
/// run directory, like [`ControlPlane::stop`]; [`ControlPlane::detach`] leaves
/// it running for a later [`down`].
pub struct ControlPlane {
    pub run_dir: PathBuf,
    pub bins: Binaries,
    pub pki: Pki,
    /// Admin kubeconfig (client certificate in `system:masters`).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    pub etcd_url: String,
    pub service_cidr: String,
    pub cluster_cidr: String,
    /// The pod network (bridge, gateway = the apiserver's address for pods).
    pub network: Option<crate::network::PodNetwork>,
    pub api_port: u16,
    image_bin_dir: Option<PathBuf>,
    images: Vec<String>,
    procs: Vec<Proc>,
    active: bool,
}

const GRACE: Duration = Duration::from_secs(10);

impl ControlPlane {
    /// Builds (or takes from the cache) the binaries, generates certificates,
    /// starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler,
    /// and waits until all are healthy and the `default` ServiceAccount exists.
    pub fn start(opts: Options) -> Result<ControlPlane> {
        let started = Instant::now();
        let bins = match opts.binaries.clone() {
            Some(b) => b,
            None => binaries::ensure_binaries()?,
        };
        reap_stale_runs();
        // A leftover from a killed run: stop what it left and start afresh.
        if opts.run_dir.exists() {
            down(&opts.run_dir)?;
        }
        fs::create_dir_all(&opts.run_dir)?;
        let run_dir = opts.run_dir.canonicalize()?;
        let mut opts = opts;
        let network = if opts.pod_network {
            let net = crate::network::PodNetwork::allocate(&run_dir)?;
            opts.cluster_cidr = net.cidr.clone();
            opts.advertise_address = Some(net.gateway.clone());
            log(&format!(
                "pod network {} on bridge {}",
                net.cidr, net.bridge
            ));
            Some(net)
        } else {
            None
        };
        let t = Instant::now();
        let mut sans = vec![format!("IP:{}", opts.service_ip)];
        if let Some(n) = &network {
            sans.push(format!("IP:{}", n.gateway));
        }
        let pki = match Pki::generate(&run_dir.join("pki"), &sans) {
            Ok(p) => p,
            Err(e) => {
                crate::network::cleanup(&run_dir);
                return Err(e);
            }
        };
        log(&format!(
            "certificates in {:.1}s",
            t.elapsed().as_secs_f64()
        ));

        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let api_port = free_port()?;
        let kcm_port = free_port()?;
        let sched_port = free_port()?;
        let server = format!("https://127.0.0.1:{api_port}");
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");

        let kubeconfig = run_dir.join("admin.kubeconfig");
        write_kubeconfig(&kubeconfig, &server, &pki.ca.cert, "admin", &pki.admin)?;
        let kcm_kubeconfig = run_dir.join("controller-manager.kubeconfig");
        write_kubeconfig(
            &kcm_kubeconfig,
            &server,
            &pki.ca.cert,
            "system:kube-controller-manager",
            &pki.controller_manager,
        )?;
        let sched_kubeconfig = run_dir.join("scheduler.kubeconfig");
        write_kubeconfig(
            &sched_kubeconfig,
            &server,
            &pki.ca.cert,
            "system:kube-scheduler",
            &pki.scheduler,
        )?;

        let mut cp = ControlPlane {
            run_dir: run_dir.clone(),
            bins,
            pki,
            kubeconfig,
            server,
            etcd_url: etcd_url.clone(),
            service_cidr: opts.service_cidr.clone(),
            cluster_cidr: opts.cluster_cidr.clone(),
            network,
            api_port,
            image_bin_dir: opts.image_bin_dir.clone(),
            images: opts.images.clone(),
            procs: Vec::new(),
            active: true,
        };
        let p = |f: &Path| f.display().to_string();

        // etcd
        let peer = format!("http://127.0.0.1:{etcd_peer_port}");
        let etcd_args = vec![
            "--name=litecluster-e2e".to_string(),
            format!("--data-dir={}", p(&run_dir.join("etcd"))),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster=litecluster-e2e={peer}"),
            "--initial-cluster-state=new".into(),
            // Test data: fsync buys nothing and costs a lot on a shared disk.
            "--unsafe-no-fsync=true".into(),
            "--log-level=warn".into(),
        ];
        cp.spawn("etcd", &cp.bins.etcd.clone(), &etcd_args)?;
        let t = Instant::now();
        cp.wait_until("etcd /health", Duration::from_secs(30), |_| {
            Ok(http_get(etcd_port, "/health")?.contains("\"health\":\"true\""))
        })?;
        log(&format!(
            "etcd healthy in {:.1}s",
            t.elapsed().as_secs_f64()
        ));

        // kube-apiserver
        let pki = cp.pki.clone();
        let mut api_args = vec![
            format!("--etcd-servers={etcd_url}"),
            // All addresses: pods reach it on the bridge address.
            format!(
                "--bind-address={}",
                if cp.network.is_some() {
                    "0.0.0.0"
                } else {
                    "127.0.0.1"
                }
            ),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", p(&run_dir.join("apiserver-certs"))),
            format!("--tls-cert-file={}", p(&pki.apiserver.cert)),
            format!("--tls-private-key-file={}", p(&pki.apiserver.key)),
            format!("--client-ca-file={}", p(&pki.ca.cert)),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p(&pki.sa_pub)),
            format!("--service-account-signing-key-file={}", p(&pki.sa_key)),
            format!("--service-cluster-ip-range={}", opts.service_cidr),
            "--authorization-mode=Node,RBAC".into(),
            // No aggregation front proxy, but publishing a request-header CA
            // (for a client name nobody holds) keeps the controller manager and
            // scheduler from logging "missing content for CA bundle" forever.
            format!("--requestheader-client-ca-file={}", p(&pki.ca.cert)),
            "--requestheader-allowed-names=front-proxy-client".into(),
            "--requestheader-username-headers=X-Remote-User".into(),
            "--requestheader-group-headers=X-Remote-Group".into(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
            "--allow-privileged=true".into(),
            "--enable-admission-plugins=NodeRestriction".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        if let Some(addr) = &opts.advertise_address {
            api_args.push(format!("--advertise-address={addr}"));
        }
        api_args.extend(opts.extra_apiserver_args.iter().cloned());
        cp.spawn("kube-apiserver", &cp.bins.kube_apiserver.clone(), &api_args)?;
        let t = Instant::now();
        cp.wait_until("kube-apiserver /readyz", opts.ready_timeout, |cp| {
            Ok(cp
                .kubectl_output(&["get", "--raw", "/readyz"])?
                .status
                .success())
        })?;
        log(&format!(
            "kube-apiserver ready in {:.1}s at {}",
            t.elapsed().as_secs_f64(),
            cp.server
        ));

        // kube-controller-manager
        let kcm = p(&kcm_kubeconfig);
        let mut kcm_args = vec![
            format!("--kubeconfig={kcm}"),
            format!("--authentication-kubeconfig={kcm}"),
            format!("--authorization-kubeconfig={kcm}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={kcm_port}"),
            format!(
                "--cert-dir={}",
                p(&run_dir.join("controller-manager-certs"))
            ),
            format!("--service-account-private-key-file={}", p(&pki.sa_key)),
            format!("--root-ca-file={}", p(&pki.ca.cert)),
            format!("--cluster-signing-cert-file={}", p(&pki.ca.cert)),
            format!("--cluster-signing-key-file={}", p(&pki.ca.key)),
            "--use-service-account-credentials=true".into(),
            "--controllers=*".into(),
            format!("--service-cluster-ip-range={}", opts.service_cidr),
            format!("--cluster-cidr={}", opts.cluster_cidr),
            "--allocate-node-cidrs=true".into(),
            "--leader-elect=false".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        kcm_args.extend(opts.extra_controller_manager_args.iter().cloned());
        cp.spawn(
            "kube-controller-manager",
            &cp.bins.kube_controller_manager.clone(),
            &kcm_args,
        )?;

        // kube-scheduler
        let sched = p(&sched_kubeconfig);
        let mut sched_args = vec![
            format!("--kubeconfig={sched}"),
            format!("--authentication-kubeconfig={sched}"),
            format!("--authorization-kubeconfig={sched}"),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={sched_port}"),
            format!("--cert-dir={}", p(&run_dir.join("scheduler-certs"))),
            "--leader-elect=false".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ];
        sched_args.extend(opts.extra_scheduler_args.iter().cloned());
        cp.spawn(
            "kube-scheduler",
            &cp.bins.kube_scheduler.clone(),
            &sched_args,
        )?;

        // Their own health endpoints: self-signed serving certificates, so
        // no CA check; the admin client certificate keeps kubectl from
        // prompting for a password.
        let health_kubeconfig = run_dir.join("health.kubeconfig");
        fs::write(
            &health_kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    \
                 server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\n\
                 users:\n- name: admin\n  user:\n    client-certificate: {}\n    \
                 client-key: {}\ncontexts:\n- name: c\n  context:\n    \
                 cluster: c\n    user: admin\ncurrent-context: c\n",
                pki.admin.cert.display(),
                pki.admin.key.display()
            ),
        )?;
        let t = Instant::now();
        for (name, port) in [
            ("kube-controller-manager", kcm_port),
            ("kube-scheduler", sched_port),
        ] {
            let server = format!("https://127.0.0.1:{port}");
            let hk = health_kubeconfig.clone();
            cp.wait_until(&format!("{name} /healthz"), opts.ready_timeout, move |cp| {
                let out = Command::new(&cp.bins.kubectl)
                    .arg(format!("--kubeconfig={}", hk.display()))
                    .arg(format!("--server={server}"))
                    .args(["get", "--raw", "/healthz"])
                    .stdin(Stdio::null())
                    .output()?;
                Ok(out.status.success())
            })?;
        }
        // The controller manager is really working once it has made the
        // default ServiceAccount (pods cannot be created before that).
        cp.wait_until("ServiceAccount default/default", opts.ready_timeout, |cp| {
            Ok(cp
                .kubectl_output(&["get", "serviceaccount", "default", "-n", "default"])?
                .status
                .success())
        })?;
        log(&format!(
            "controller-manager and scheduler healthy in {:.1}s",
            t.elapsed().as_secs_f64()
        ));

        cp.write_env()?;
        log(&format!(
            "control plane up in {:.1}s: export KUBECONFIG={}",
            started.elapsed().as_secs_f64(),
            cp.kubeconfig.display()
        ));
        Ok(cp)
    }

    fn spawn(&mut self, name: &str, program: &Path, args: &[String]) -> Result<()> {
        let proc = Proc::spawn(&self.run_dir, name, program, args)?;
        self.procs.push(proc);
        Ok(())
    }

    /// Polls `ready` every 250 ms until it returns true; fails early (with log
    /// tails) if any process has exited, and on timeout.
    fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut ready: impl FnMut(&ControlPlane) -> Result<bool>,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_err = None;
        loop {
            for p in &mut self.procs {
                p.check_alive()
                    .with_context(|| format!("waiting for {what}"))?;
            }
            match ready(self) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last_err = Some(e),
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what} (last error: {last_err:?})\n{}",
                    self.log_tails(30)
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Starts a process-backed kubelet (`litecluster-e2e kubelet`) for each
    /// name, with a client certificate for `system:node:<name>`, and waits
    /// until every Node is Ready. For now the kubelets only register their
    /// Node and keep its Lease and Ready condition fresh; see [`crate::kubelet`].
    pub fn add_nodes(&mut self, names: &[&str]) -> Result<()> {
        let exe = kubelet_exe()?;
        let t = Instant::now();
        let pod_args = match self.network.clone() {
            None => Vec::new(),
            Some(net) => {
                if !self.procs.iter().any(|p| p.name == "addons") {
                    let args = vec![
                        "addons".to_string(),
                        format!("--kubeconfig={}", self.kubeconfig.display()),
                        format!("--run-dir={}", self.run_dir.display()),
                        format!("--api-host={}", net.gateway),
                    ];
                    self.spawn("addons", &exe, &args)?;
                }
                let bin_dir = self
                    .image_bin_dir
                    .clone()
                    .or_else(|| env::var_os("LITECLUSTER_E2E_IMAGE_BIN_DIR").map(PathBuf::from))
                    .or_else(|| exe.parent().map(Path::to_path_buf))
                    .context("no image bin dir")?;
                let mut a = vec![
                    format!("--run-dir={}", self.run_dir.display()),
                    format!("--bridge={}", net.bridge),
                    format!("--gateway={}", net.gateway),
                    format!("--prefix-len={}", net.prefix_len),
                    format!("--api-port={}", self.api_port),
                    format!("--netns-prefix={}", net.netns_prefix()),
                    format!("--bin-dir={}", bin_dir.display()),
                ];
                a.extend(self.images.iter().map(|i| format!("--image={i}")));
                a
            }
        };
        for name in names {
            let cred = self.pki.issue(
                &format!("kubelet-{name}"),
                &format!("/O=system:nodes/CN=system:node:{name}"),
                "clientAuth",
                &[],
            )?;
            let kubeconfig = self.run_dir.join(format!("kubelet-{name}.kubeconfig"));
            write_kubeconfig(
                &kubeconfig,
                &self.server,
                &self.pki.ca.cert,
                &format!("system:node:{name}"),
                &cred,
            )?;
            let args = vec![
                "kubelet".to_string(),
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--node-name={name}"),
            ];
            let mut args = args;
            args.extend(pod_args.iter().cloned());
            self.spawn(&format!("kubelet-{name}"), &exe, &args)?;
        }
        for name in names {
            self.wait_until(
                &format!("Node {name} Ready"),
                Duration::from_secs(60),
                |cp| cp.node_ready(name),
            )?;
        }
        log(&format!(
            "nodes {} Ready in {:.1}s",
            names.join(", "),
            t.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// Whether the Node's Ready condition is True.
    pub fn node_ready(&self, name: &str) -> Result<bool> {
        let out = self.kubectl_output(&[
            "get",
            "node",
            name,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])?;
        Ok(out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "True")
    }

    /// `kubectl --kubeconfig <admin>` ready for more arguments.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(&self.bins.kubectl);
        c.arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        c.stdin(Stdio::null());
        c
    }

    /// Runs kubectl with `args` and returns its output whatever the status.
    pub fn kubectl_output(&self, args: &[&str]) -> Result<Output> {
        self.kubectl()
            .args(args)
            .output()
            .context("running kubectl")
    }

    /// Runs kubectl with `args`; its stdout on success, an error with stderr otherwise.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl_output(args)?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `helm` with `KUBECONFIG` set to the admin kubeconfig.
    pub fn helm(&self) -> Command {
        let mut c = Command::new(&self.bins.helm);
        c.env("KUBECONFIG", &self.kubeconfig);
        c.env("HELM_CACHE_HOME", self.run_dir.join("helm/cache"));
        c.env("HELM_CONFIG_HOME", self.run_dir.join("helm/config"));
        c.env("HELM_DATA_HOME", self.run_dir.join("helm/data"));
        c.stdin(Stdio::null());
        c
    }

    /// The server's `gitVersion` as reported by `kubectl version`.
    pub fn server_version(&self) -> Result<String> {
        let out = self.kubectl_ok(&["version", "-o", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v["serverVersion"]["gitVersion"]
            .as_str()
            .map(str::to_string)
            .context("no serverVersion.gitVersion in kubectl version output")
    }

    /// Log file of a component (`etcd`, `kube-apiserver`, ...).
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.run_dir.join("logs").join(format!("{name}.log"))
    }

    /// The last `lines` lines of every component's log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut s = String::new();
        for p in &self.procs {
            s.push_str(&format!(
                "----- {} ({}) -----\n{}\n",
                p.name,
                p.log.display(),
                process::tail(&p.log, lines)
            ));
        }
        s
    }

    /// Stops one component (e.g. `kubelet-node-1`) as [`ControlPlane::stop`]
    /// would, leaving the others running.
    pub fn stop_component(&mut self, name: &str) -> Result<()> {
        let i = self
            .procs
            .iter()
            .position(|p| p.name == name)
            .with_context(|| format!("no component {name}"))?;
        let mut p = self.procs.remove(i);
        p.stop(GRACE);
        let _ = fs::remove_file(self.run_dir.join("pids").join(format!("{name}.pid")));
        Ok(())
    }

    /// Pids of the running components (for tests that check cleanup).
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.procs
            .iter()
            .map(|p| (p.name.clone(), p.child.id()))
            .collect()
    }

    /// Stops every component (SIGTERM to its process group, SIGKILL after
    /// 10 s) in reverse start order, then removes the run directory unless
    /// `LITECLUSTER_E2E_KEEP=1`.
    pub fn stop(&mut self) -> Result<()> {
        if !self.active {
            return Ok(());
        }
        self.active = false;
        for p in self.procs.iter_mut().rev() {
            p.stop(GRACE);
        }
        self.procs.clear();
        crate::network::cleanup(&self.run_dir);
        remove_run_dir(&self.run_dir)
    }

    /// Leaves the control plane running after this value is dropped; stop it
    /// later with [`down`] on the run directory.
    pub fn detach(mut self) -> PathBuf {
        self.active = false;
        std::mem::take(&mut self.run_dir)
    }

    fn write_env(&self) -> Result<()> {
        fs::write(
            self.run_dir.join("env"),
            format!(
                "export KUBECONFIG={}\nexport LITECLUSTER_BIN_DIR={}\nexport PATH={}:$PATH\n",
                self.kubeconfig.display(),
                self.bins.dir.display(),
                self.bins.dir.display()
            ),
        )?;
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("[litecluster-e2e] stopping control plane: {e:#}");
        }
    }
}

/// The `litecluster-e2e` binary that runs kubelets: `$LITECLUSTER_E2E_BIN`,
/// this executable if it is that binary, or the one cargo built next to the
/// running test (`target/<profile>/litecluster-e2e`).
fn kubelet_exe() -> Result<PathBuf> {
    if let Some(p) = env::var_os("LITECLUSTER_E2E_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = env::current_exe()?;
    if me.file_name().is_some_and(|n| n == "litecluster-e2e") {
        return Ok(me);
    }
    for dir in me.ancestors().skip(1).take(2) {
        let candidate = dir.join("litecluster-e2e");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find the litecluster-e2e binary near {} (set LITECLUSTER_E2E_BIN)",
        me.display()
    )
}

/// Stops whatever was started in `run_dir` (by this or another process) and
/// removes the directory (unless `LITECLUSTER_E2E_KEEP=1`).
pub fn down(run_dir: &Path) -> Result<()> {
    if !run_dir.exists() {
        return Ok(());
    }
    let stopped = process::stop_recorded(run_dir, GRACE);
    if !stopped.is_empty() {
        log(&format!(
            "stopped {} in {}",
            stopped.join(", "),
            run_dir.display()
        ));
    }
    crate::network::cleanup(run_dir);
    remove_run_dir(run_dir)
}

fn remove_run_dir(run_dir: &Path) -> Result<()> {
    if env::var("LITECLUSTER_E2E_KEEP").is_ok_and(|v| v == "1") {
        let _ = fs::remove_dir_all(run_dir.join("pids"));
        log(&format!(
            "kept {} (LITECLUSTER_E2E_KEEP=1)",
            run_dir.display()
        ));
        return Ok(());
    }
    match fs::remove_dir_all(run_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", run_dir.display())),
    }
}

fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &str,
    cred: &CertKey,
) -> Result<()> {
    fs::write(
        path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: litecluster-e2e\n  cluster:\n    \
             server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    \
             client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: litecluster-e2e\n  \
             context:\n    cluster: litecluster-e2e\n    user: {user}\n\
             current-context: litecluster-e2e\n",
            ca = ca.display(),
            cert = cred.cert.display(),
            key = cred.key.display(),
        ),
    )
    .with_context(|| format!("writing {}", path.display()))
}

/// A TCP port on 127.0.0.1 that was free a moment ago, handed out once per process.
///
/// Ports come from below the kernel's ephemeral range (32768+ by default): a port
/// from `bind(:0)` is ephemeral, and before the component binds it an outgoing
/// connection (a client of the API server, say) may take it.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 22_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Spread concurrent processes apart by pid; the bind check covers the rest.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 97) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free TCP port on 127.0.0.1 in {LOW}..{}", LOW + SPAN)
}

/// Plain-HTTP GET on loopback; returns the whole response (headers and body).
fn http_get(port: u16, path: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf)
}

fn log(msg: &str) {
    eprintln!("[litecluster-e2e] {msg}");
}
