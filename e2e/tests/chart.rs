//! The Helm chart as a user meets it: `helm lint` is clean and the rendered manifests are
//! accepted by a real API server (client-side and server-side dry runs).

use std::io::Write;
use std::process::Stdio;

use litecluster_e2e::{ControlPlane, Options};

fn chart_dir() -> String {
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/litecluster-operator"
    )
    .to_owned()
}

#[test]
fn helm_chart_lints_and_renders_manifests_the_api_server_accepts() {
    let cp = ControlPlane::start(Options::for_test("chart")).expect("control plane starts");
    let lint = cp.helm().args(["lint", &chart_dir()]).output().unwrap();
    assert!(
        lint.status.success(),
        "helm lint failed:\n{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    let rendered = cp
        .helm()
        .args([
            "template",
            "litecluster",
            &chart_dir(),
            "--namespace",
            "litecluster-system",
            "--include-crds",
        ])
        .output()
        .unwrap();
    assert!(
        rendered.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let manifests = rendered.stdout;
    for kind in [
        "CustomResourceDefinition",
        "Deployment",
        "ServiceAccount",
        "ClusterRole",
        "Service",
    ] {
        assert!(
            String::from_utf8_lossy(&manifests).contains(&format!("kind: {kind}")),
            "rendered chart lacks a {kind}"
        );
    }
    cp.kubectl_ok(&["create", "namespace", "litecluster-system"])
        .unwrap();
    for mode in ["client", "server"] {
        let mut child = cp
            .kubectl()
            .args([
                "apply",
                &format!("--dry-run={mode}"),
                "-n",
                "litecluster-system",
                "-f",
                "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&manifests).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "kubectl apply --dry-run={mode} refused the chart:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
