//! The namespace-scoped install: the chart with `watchNamespace` grants the operator a Role in
//! that namespace only, and the operator runs the clusters there and never touches another
//! namespace's.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use litecluster_e2e::Options;
use litecluster_e2e::stack::{OPERATOR_NS, OPERATOR_SA, Stack};

fn cluster(name: &str) -> String {
    format!(
        "apiVersion: litecluster.io/v1alpha1\nkind: SqliteCluster\nmetadata:\n  name: {name}\nspec:\n  replicas: 1\n  voters: 1\n  storage:\n    size: 1Gi\n"
    )
}

fn scenario(s: &Stack) -> Result<()> {
    let sa = format!("system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}");
    let can = |verb: &str, res: &str, ns: &str| -> Result<bool> {
        let out =
            s.cp.kubectl_output(&["auth", "can-i", verb, res, "--as", &sa, "-n", ns])?;
        Ok(String::from_utf8_lossy(&out.stdout).trim() == "yes")
    };
    ensure!(
        can("get", "secrets", OPERATOR_NS)?,
        "no Secret access where it works"
    );
    ensure!(
        !can("get", "secrets", "default")?,
        "reads Secrets outside its namespace"
    );
    ensure!(
        !can("list", "pods", "default")?,
        "lists pods outside its namespace"
    );

    // A cluster outside the namespace first: an operator watching everywhere would take it
    // up before the one created after it is Ready.
    s.apply_yaml("default", &cluster("outside"))?;
    s.apply_yaml(OPERATOR_NS, &cluster("inside"))?;
    s.wait_ready(OPERATOR_NS, "inside", 1, Duration::from_secs(240))?;
    let outside = s.cluster("default", "outside")?;
    ensure!(
        outside.get("status").is_none_or(serde_json::Value::is_null),
        "the cluster outside the watched namespace was reconciled: {}",
        outside["status"]
    );
    let sts =
        s.cp.kubectl_output(&["get", "sts", "outside", "-n", "default"])?;
    ensure!(
        !sts.status.success(),
        "a StatefulSet was made outside the namespace"
    );
    Ok(())
}

#[test]
fn a_namespace_scoped_operator_runs_only_the_clusters_of_its_namespace() {
    let s = Stack::up_with(
        Options::for_test("namespaced"),
        &[&format!("watchNamespace={OPERATOR_NS}")],
    )
    .context("bringing up the stack")
    .unwrap();
    if let Err(e) = scenario(&s) {
        eprintln!("{}", s.diagnostics(Some(OPERATOR_NS)));
        panic!("namespace-scoped scenario failed: {e:#}");
    }
}
