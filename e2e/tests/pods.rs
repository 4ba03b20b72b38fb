//! The process kubelet's pod contract, without the operator: env and
//! downward API, the service-account token mount, hosts-file DNS,
//! restartPolicy, security contexts, and the deletion grace period.

use std::{
    fs,
    time::{Duration, Instant},
};

use litecluster_e2e::{ControlPlane, Options, pods::pod_dir};

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn apply(cp: &ControlPlane, yaml: &str) {
    use std::io::Write;
    let mut c = cp
        .kubectl()
        .args(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    assert!(c.wait().unwrap().success(), "kubectl apply failed");
}

#[test]
fn pods_run_as_processes_with_env_token_dns_restarts_and_grace() {
    let mut cp = ControlPlane::start(Options::for_test("pods")).expect("control plane");
    cp.add_nodes(&["node-1"]).expect("node");
    let report = |cp: &ControlPlane| {
        format!(
            "{}\n{}",
            cp.kubectl_ok(&["get", "pods,events", "-o", "wide"])
                .unwrap_or_default(),
            cp.log_tails(30)
        )
    };

    // A pod that prints what it sees and exits 3: OnFailure restarts it.
    apply(
        &cp,
        r#"apiVersion: v1
kind: Pod
metadata: {name: probe, labels: {app: probe}}
spec:
  hostname: probe
  subdomain: sub
  restartPolicy: OnFailure
  containers:
  - name: main
    image: example.com/shell:1
    command: ["/bin/sh", "-c"]
    args: ["echo name=$(POD_NAME) ip=$(POD_IP) 'ref=$$(POD_NAME)'; cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; test -s /var/run/secrets/kubernetes.io/serviceaccount/token && echo token-ok; getent hosts probe.sub.default.svc.cluster.local kubernetes.default.svc.cluster.local; echo api=$KUBERNETES_SERVICE_HOST; exit 3"]
    env:
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
"#,
    );
    let log = pod_dir(&cp.run_dir, "default", "probe").join("main.log");
    wait("probe restarted twice", Duration::from_secs(60), || {
        cp.kubectl_ok(&[
            "get",
            "pod",
            "probe",
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ])
        .is_ok_and(|n| n.trim().parse::<i32>().unwrap_or(0) >= 2)
    });
    let all = fs::read_to_string(&log).unwrap_or_default();
    // Every run sees everything, the first one included: check it alone.
    let end = all
        .find("api=")
        .and_then(|i| all[i..].find('\n').map(|j| i + j))
        .unwrap_or(all.len());
    let text = &all[..end];
    let ip = cp
        .kubectl_ok(&["get", "pod", "probe", "-o", "jsonpath={.status.podIP}"])
        .unwrap();
    let gateway = cp.network.as_ref().unwrap().gateway.clone();
    for want in [
        format!("name=probe ip={ip} ref=$(POD_NAME)"),
        "default".to_string(),
        "token-ok".to_string(),
        ip.to_string(),
        format!("api={gateway}"),
    ] {
        assert!(
            text.contains(&want),
            "first run's log lacks {want:?}:\n{all}\n{}",
            report(&cp)
        );
    }
    assert!(
        text.contains("probe.sub.default.svc.cluster.local")
            && text.contains("kubernetes.default.svc.cluster.local"),
        "names not resolved:\n{text}"
    );

    // The security context is applied: the user, fsGroup on an emptyDir, a read-only root.
    apply(
        &cp,
        r#"apiVersion: v1
kind: Pod
metadata: {name: locked}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, fsGroup: 65532}
  volumes:
  - {name: scratch, emptyDir: {}}
  containers:
  - name: main
    image: example.com/shell:1
    command: ["/bin/sh", "-c"]
    args: ["echo uid=$(id -u) gid=$(id -g); touch /tmp/lc-root-probe-$$ 2>/dev/null && rm -f /tmp/lc-root-probe-$$ && echo root-writable; touch /scratch/f && echo scratch-ok; test -r /var/run/secrets/kubernetes.io/serviceaccount/token && echo token-readable; echo done"]
    securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}
    volumeMounts:
    - {name: scratch, mountPath: /scratch}
"#,
    );
    let llog = pod_dir(&cp.run_dir, "default", "locked").join("main.log");
    wait("locked pod ran", Duration::from_secs(60), || {
        fs::read_to_string(&llog).is_ok_and(|l| l.contains("done"))
    });
    let locked = fs::read_to_string(&llog).unwrap();
    for want in ["uid=65532 gid=65532", "scratch-ok", "token-readable"] {
        assert!(
            locked.contains(want),
            "lacks {want:?}:\n{locked}\n{}",
            report(&cp)
        );
    }
    assert!(
        !locked.contains("root-writable"),
        "the root filesystem was writable:\n{locked}"
    );
    // A program that lives under /tmp (a checkout there) runs in a pod whose emptyDir is
    // mounted at /tmp, as root and as another user: the volume must not hide it.
    let prog_dir = std::env::temp_dir().join(format!("lc-e2e-prog-{}", std::process::id()));
    fs::create_dir_all(&prog_dir).unwrap();
    let prog = prog_dir.join("tmpsh");
    fs::copy("/bin/sh", &prog).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&prog_dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&prog, fs::Permissions::from_mode(0o755)).unwrap();
    }
    for (name, user) in [("tmpvol-root", "0"), ("tmpvol-user", "65532")] {
        apply(
            &cp,
            &format!(
                r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: Never
  securityContext: {{runAsUser: {user}}}
  volumes:
  - {{name: tmp, emptyDir: {{}}}}
  containers:
  - name: main
    image: example.com/shell:1
    command: ["{prog}", "-c", "touch /tmp/x && echo tmp-volume-ok"]
    volumeMounts:
    - {{name: tmp, mountPath: /tmp}}
"#,
                prog = prog.display()
            ),
        );
        let log = pod_dir(&cp.run_dir, "default", name).join("main.log");
        wait(&format!("{name} ran"), Duration::from_secs(60), || {
            fs::read_to_string(&log).is_ok_and(|l| l.contains("tmp-volume-ok"))
        });
    }
    let _ = fs::remove_dir_all(&prog_dir);

    // runAsNonRoot without a user would run as root: refused, as a real kubelet does.
    apply(
        &cp,
        r#"apiVersion: v1
kind: Pod
metadata: {name: rootish}
spec:
  restartPolicy: Never
  securityContext: {runAsNonRoot: true}
  containers:
  - name: main
    image: example.com/shell:1
    command: ["/bin/sh", "-c", "echo ran"]
"#,
    );
    // The kubelet refuses it and says why in the status, as Kubernetes does.
    let mut why = String::new();
    wait("rootish refused", Duration::from_secs(60), || {
        why = cp
            .kubectl_ok(&[
                "get",
                "pod",
                "rootish",
                "-o",
                "jsonpath={.status.containerStatuses[0].state.waiting.reason}: {.status.containerStatuses[0].state.waiting.message}",
            ])
            .unwrap_or_default();
        why.starts_with("CreateContainerConfigError")
    });
    assert!(why.contains("runAsNonRoot"), "refusal: {why}");
    let rlog = pod_dir(&cp.run_dir, "default", "rootish").join("main.log");
    assert!(
        !fs::read_to_string(&rlog)
            .unwrap_or_default()
            .contains("ran"),
        "a runAsNonRoot pod without a user ran as root"
    );

    // A pod that ignores SIGTERM is killed after its grace period, then removed.
    apply(
        &cp,
        r#"apiVersion: v1
kind: Pod
metadata: {name: stubborn}
spec:
  terminationGracePeriodSeconds: 4
  containers:
  - name: main
    image: example.com/shell:1
    command: ["/bin/sh", "-c", "trap 'echo got TERM' TERM; while true; do sleep 0.2; done"]
"#,
    );
    wait("stubborn running", Duration::from_secs(30), || {
        cp.kubectl_ok(&["get", "pod", "stubborn", "-o", "jsonpath={.status.phase}"])
            .is_ok_and(|p| p == "Running")
    });
    let t = Instant::now();
    cp.kubectl_ok(&["delete", "pod", "stubborn", "--wait=true", "--timeout=30s"])
        .unwrap();
    let took = t.elapsed();
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(12),
        "deletion took {took:?}; want the 4 s grace period then SIGKILL\n{}",
        report(&cp)
    );
    let slog = fs::read_to_string(pod_dir(&cp.run_dir, "default", "stubborn").join("main.log"))
        .unwrap_or_default();
    assert!(slog.contains("got TERM"), "no SIGTERM first: {slog}");

    let net = cp.network.clone().unwrap();
    cp.stop().unwrap();
    let netns = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        !netns.contains(&net.netns_prefix()),
        "namespaces left: {netns}"
    );
    assert!(
        !std::path::Path::new(&format!("/sys/class/net/{}", net.bridge)).exists(),
        "bridge {} left",
        net.bridge
    );
}
