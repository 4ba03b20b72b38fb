//! Smoke test of the e2e control plane: builds (or reuses the cached)
//! Kubernetes binaries, starts etcd, kube-apiserver, kube-controller-manager
//! and kube-scheduler on loopback, uses them through kubectl, and checks that
//! teardown leaves no process and no run directory behind.

use std::{path::Path, time::Instant};

use litecluster_e2e::{ControlPlane, K8S_VERSION, Options};

fn alive(pid: u32) -> bool {
    // A zombie would still have /proc/<pid>; stop() reaps, so presence means running.
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn control_plane_up_use_and_down() {
    let t = Instant::now();
    let mut cp =
        ControlPlane::start(Options::for_test("control-plane")).expect("control plane starts");
    eprintln!("bring-up took {:.1}s", t.elapsed().as_secs_f64());
    let run_dir = cp.run_dir.clone();
    let pids = cp.pids();
    assert_eq!(pids.len(), 4, "{pids:?}");

    let result = (|| -> anyhow::Result<()> {
        let readyz = cp.kubectl_ok(&["get", "--raw", "/readyz"])?;
        anyhow::ensure!(readyz.trim() == "ok", "readyz: {readyz}");

        let version = cp.server_version()?;
        anyhow::ensure!(
            version == K8S_VERSION,
            "server version {version}, want {K8S_VERSION}"
        );
        let helm = cp.helm().args(["version", "--short"]).output()?;
        anyhow::ensure!(helm.status.success(), "helm version failed");

        cp.kubectl_ok(&["create", "namespace", "smoke"])?;
        cp.kubectl_ok(&[
            "-n",
            "smoke",
            "create",
            "configmap",
            "greeting",
            "--from-literal=hello=world",
        ])?;
        let got = cp.kubectl_ok(&[
            "-n",
            "smoke",
            "get",
            "configmap",
            "greeting",
            "-o",
            "jsonpath={.data.hello}",
        ])?;
        anyhow::ensure!(got == "world", "configmap data: {got:?}");

        // RBAC is on: an unprivileged ServiceAccount may not list secrets.
        let denied = cp.kubectl_output(&[
            "auth",
            "can-i",
            "list",
            "secrets",
            "-n",
            "smoke",
            "--as=system:serviceaccount:smoke:default",
        ])?;
        let answer = String::from_utf8_lossy(&denied.stdout);
        anyhow::ensure!(answer.trim() == "no", "can-i answered {answer:?}");

        // The controller manager runs: the namespace got its default ServiceAccount
        // and the root CA ConfigMap.
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        while cp
            .kubectl_output(&["-n", "smoke", "get", "configmap", "kube-root-ca.crt"])?
            .status
            .code()
            != Some(0)
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no kube-root-ca.crt in namespace smoke"
            );
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        Ok(())
    })();
    if let Err(e) = &result {
        eprintln!("{}", cp.log_tails(40));
        panic!("smoke test failed: {e:#}");
    }

    let t = Instant::now();
    cp.stop().expect("teardown");
    eprintln!("teardown took {:.1}s", t.elapsed().as_secs_f64());
    for (name, pid) in pids {
        assert!(!alive(pid), "{name} (pid {pid}) still running after stop");
    }
    assert!(!run_dir.exists(), "{} left behind", run_dir.display());
}
