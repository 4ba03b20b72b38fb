//! The Helm chart as a user meets it: `helm lint` is clean, the rendered manifests are
//! accepted by a real API server (client-side and server-side dry runs), and `helm upgrade`
//! from the previous chart upgrades the CRD.

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

/// The chart before its CRD became a template (it shipped it in `crds/`, which Helm never
/// upgrades), and the field added since: what a `helm upgrade` from it must make accepted.
const PREVIOUS_CHART_COMMIT: &str = "7208699";
const FIELD_ADDED_SINCE: &str = "logFormat";

/// `helm upgrade` from the previous chart: the documented adoption of the CRD it left behind,
/// then the upgrade, after which a field the CRD gained is accepted (strict validation, so an
/// unknown field is refused rather than pruned).
#[test]
fn helm_upgrade_from_the_previous_chart_upgrades_the_crd() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let old = std::env::temp_dir().join(format!("lc-old-chart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&old);
    std::fs::create_dir_all(&old).unwrap();
    let archive = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "git -C {root} archive {PREVIOUS_CHART_COMMIT} charts/litecluster-operator | tar -x -C {}",
            old.display()
        ))
        .output()
        .unwrap();
    if !archive.status.success() {
        // A shallow clone does not hold the old commit.
        eprintln!(
            "skipping: the previous chart ({PREVIOUS_CHART_COMMIT}) is not in this checkout's history: {}",
            String::from_utf8_lossy(&archive.stderr).trim()
        );
        return;
    }
    let old_chart = old.join("charts/litecluster-operator");
    let cp = ControlPlane::start(Options::for_test("chart-upgrade")).expect("control plane starts");
    let helm = |args: &[&str]| {
        let out = cp.helm().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "helm {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ns = ["--namespace", "litecluster-system", "--create-namespace"];
    let mut install = vec!["install", "lc", old_chart.to_str().unwrap()];
    install.extend(ns);
    helm(&install);

    let cluster = format!(
        "apiVersion: litecluster.io/v1alpha1\nkind: SqliteCluster\nmetadata: {{name: up, namespace: default}}\nspec: {{replicas: 1, voters: 1, {FIELD_ADDED_SINCE}: text}}\n"
    );
    let dry_run = |cp: &ControlPlane| {
        let mut child = cp
            .kubectl()
            .args(["apply", "--dry-run=server", "--validate=strict", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(cluster.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let before = dry_run(&cp);
    assert!(
        !before.status.success(),
        "the old CRD accepted {FIELD_ADDED_SINCE}: this test would prove nothing"
    );

    // The README's adoption step for a CRD installed from the old chart's crds/.
    let crd = "crd/sqliteclusters.litecluster.io";
    cp.kubectl_ok(&[
        "label",
        crd,
        "app.kubernetes.io/managed-by=Helm",
        "--overwrite",
    ])
    .unwrap();
    cp.kubectl_ok(&[
        "annotate",
        crd,
        "meta.helm.sh/release-name=lc",
        "meta.helm.sh/release-namespace=litecluster-system",
        "--overwrite",
    ])
    .unwrap();
    helm(&[
        "upgrade",
        "lc",
        &chart_dir(),
        "--namespace",
        "litecluster-system",
    ]);

    let after = dry_run(&cp);
    assert!(
        after.status.success(),
        "after helm upgrade the CRD still refuses {FIELD_ADDED_SINCE}: {}",
        String::from_utf8_lossy(&after.stderr)
    );
    let keep = cp
        .kubectl_ok(&[
            "get",
            crd,
            "-o",
            "jsonpath={.metadata.annotations.helm\\.sh/resource-policy}",
        ])
        .unwrap();
    assert_eq!(keep, "keep", "the CRD must survive helm uninstall");
    let _ = std::fs::remove_dir_all(&old);
}
