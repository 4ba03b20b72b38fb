//! The operator's own high availability: two replicas from the chart, the Lease holder killed in
//! the middle of a rolling restart. The standby takes the Lease, the rollout resumes and
//! finishes, and at no time do two members restart at once or one member restart twice, which
//! is what two operators acting together would do.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use litecluster_e2e::Options;
use litecluster_e2e::stack::{OPERATOR_NS, RELEASE, Stack};

fn member_pods(s: &Stack, ns: &str) -> Result<BTreeMap<String, (String, bool, bool)>> {
    s.member_pods(ns, "ha")
}

fn lease_holder(s: &Stack) -> Result<String> {
    Ok(s.cp
        .kubectl_ok(&[
            "get",
            "lease",
            RELEASE,
            "-n",
            OPERATOR_NS,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])?
        .trim()
        .to_owned())
}

fn scenario(s: &Stack) -> Result<()> {
    let ns = "ha";
    s.cp.kubectl_ok(&["create", "namespace", ns])?;
    s.apply_yaml(
        ns,
        "apiVersion: litecluster.io/v1alpha1\nkind: SqliteCluster\nmetadata:\n  name: ha\nspec:\n  replicas: 3\n  voters: 3\n  storage:\n    size: 1Gi\n",
    )?;
    s.wait_ready(ns, "ha", 3, Duration::from_secs(240))?;
    let first = s.wait_for("a Lease holder", Duration::from_secs(60), || {
        Ok(Some(lease_holder(s)?).filter(|h| !h.is_empty()))
    })?;
    let before = member_pods(s, ns)?;
    let names: Vec<String> = before.keys().cloned().collect();

    s.cp.kubectl_ok(&[
        "patch",
        "slc",
        "ha",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"podTemplate":{"annotations":{"example.com/rollout":"1"}}}}"#,
    ])?;
    // Every sample of the member pods: how many were down, which were replaced (and how often).
    let mut replacements: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut overlaps = Vec::new();
    let mut sample = |s: &Stack| -> Result<usize> {
        let pods = member_pods(s, ns)?;
        let mut down = Vec::new();
        for n in &names {
            match pods.get(n) {
                Some((uid, ready, terminating)) => {
                    if *uid != before[n].0 {
                        replacements
                            .entry(n.clone())
                            .or_default()
                            .insert(uid.clone());
                    }
                    if !ready || *terminating {
                        down.push(n.clone());
                    }
                }
                None => down.push(n.clone()),
            }
        }
        if down.len() > 1 {
            overlaps.push(down);
        }
        Ok(replacements.len())
    };
    // Kill the Lease holder once the rollout has replaced its first member.
    s.wait_for(
        "the first member restarted",
        Duration::from_secs(180),
        || Ok((sample(s)? >= 1).then_some(())),
    )?;
    let killed_at = Instant::now();
    s.cp.kubectl_ok(&[
        "delete",
        "pod",
        &first,
        "-n",
        OPERATOR_NS,
        "--grace-period=0",
        "--force",
    ])?;
    let second = s.wait_for(
        "another replica holding the Lease",
        Duration::from_secs(90),
        || {
            sample(s)?;
            Ok(Some(lease_holder(s)?).filter(|h| !h.is_empty() && *h != first))
        },
    )?;
    eprintln!(
        "Lease moved from {first} to {second} {:.1}s after the kill",
        killed_at.elapsed().as_secs_f64()
    );
    s.wait_for("every member replaced", Duration::from_secs(300), || {
        Ok((sample(s)? == names.len()).then_some(()))
    })?;
    s.wait_for(
        "the rollout finished in status",
        Duration::from_secs(120),
        || {
            sample(s)?;
            let st = s.cluster(ns, "ha")?["status"].clone();
            Ok(
                (st["rollout"].is_null() && st["updatedReplicas"] == 3 && st["readyReplicas"] == 3)
                    .then_some(()),
            )
        },
    )?;
    ensure!(
        overlaps.is_empty(),
        "two members were down at once (two operators acting?): {overlaps:?}"
    );
    for (n, uids) in &replacements {
        ensure!(
            uids.len() == 1,
            "{n} was restarted {} times: {uids:?}",
            uids.len()
        );
    }
    // The one that took over recorded the restarts after the kill.
    let events = s.cp.kubectl_ok(&[
        "get",
        "events.events.k8s.io",
        "-n",
        ns,
        "-o",
        "jsonpath={range .items[*]}{.reportingInstance} {.reason}{\"\\n\"}{end}",
    ])?;
    ensure!(
        events.lines().any(|l| l.starts_with(&second)),
        "no Event from the new Lease holder {second}:\n{events}"
    );
    Ok(())
}

#[test]
fn killing_the_leading_operator_mid_rollout_leaves_one_acting_and_the_rollout_finishes() {
    let s = Stack::up_with(
        Options::for_test("operator-ha"),
        &["replicaCount=2", "leaderElection.leaseSeconds=6"],
    )
    .context("bringing up the stack")
    .unwrap();
    if let Err(e) = scenario(&s) {
        eprintln!("{}", s.diagnostics(Some("ha")));
        panic!("operator HA scenario failed: {e:#}");
    }
}
