//! Each condition says what is true: a test per condition and per reason, on a settled
//! cluster changed in one way.

use super::*;
use crate::controller::status::desired_status;
use crate::crd::SqliteClusterStatus;
use crate::node_client::SnapshotHealth;

/// The status of a bootstrapped 3/3 cluster whose node answers went through `change`.
fn status_with(change: impl FnOnce(&mut FakeNodes)) -> SqliteClusterStatus {
    observe_with(change, |_| {})
}

/// As `status_with`, the observation then going through `seen`.
fn observe_with(
    change: impl FnOnce(&mut FakeNodes),
    seen: impl FnOnce(&mut ObservedCluster),
) -> SqliteClusterStatus {
    let mut fake = nodes(&[0, 1, 2], &[], &[]);
    change(&mut fake);
    let mut obs = observed(&[0, 1, 2], &fake, None);
    seen(&mut obs);
    desired_status(
        &cluster().bootstrapped(),
        &obs,
        &Action::Nothing,
        true,
        Some(&settled()),
        k8s_openapi::jiff::Timestamp::now(),
    )
}

fn get<'a>(s: &'a SqliteClusterStatus, type_: &str) -> (&'a str, &'a str, &'a str) {
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("no {type_} in {:?}", s.conditions));
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

fn sr<'a>(s: &'a SqliteClusterStatus, type_: &str) -> (&'a str, &'a str) {
    let (status, reason, _) = get(s, type_);
    (status, reason)
}

fn snapshots(fake: &mut FakeNodes, health: impl Fn(u32) -> SnapshotHealth) {
    for o in 0..3 {
        fake.statuses.get_mut(&url(o)).unwrap().store.snapshot = Some(health(o));
    }
}

#[test]
fn a_new_cluster_without_snapshots_is_not_reported_as_failing() {
    // What a brand-new member reports: no snapshot yet, so the first must be full.
    let s = status_with(|f| {
        snapshots(f, |_| SnapshotHealth {
            full_needed: true,
            ..Default::default()
        })
    });
    let (status, reason, message) = get(&s, "SnapshotsHealthy");
    assert_eq!(
        (status, reason),
        ("True", "FullSnapshotPending"),
        "{message}"
    );
    assert!(!message.contains("failure on"), "{message}");
    assert_eq!(get(&s, "Degraded").0, "False");
    assert_eq!(get(&s, "Ready").0, "True");
}

#[test]
fn snapshot_failures_name_the_failing_members_only() {
    let s = status_with(|f| {
        snapshots(f, |o| SnapshotHealth {
            consecutive_failures: u64::from(o == 1) * 2,
            full_needed: o == 1,
            ..Default::default()
        })
    });
    let (status, reason, message) = get(&s, "SnapshotsHealthy");
    assert_eq!((status, reason), ("False", "SnapshotFailures"));
    assert_eq!(message, "snapshot failures on db-1");
}

#[test]
fn snapshots_that_succeed_are_healthy() {
    let s = status_with(|f| snapshots(f, |_| SnapshotHealth::default()));
    assert_eq!(sr(&s, "SnapshotsHealthy"), ("True", "SnapshotsSucceeding"));
}

#[test]
fn no_snapshot_reports_is_unknown_not_false() {
    let s = status_with(|_| {});
    assert_eq!(get(&s, "SnapshotsHealthy").0, "Unknown");
}

#[test]
fn ready_says_why_it_is_false() {
    // Every member up but none leads: not "AllMembersReady".
    let s = status_with(|f| {
        for st in f.statuses.values_mut() {
            st.store.leader = None;
            st.store.raft.state = "Follower".into();
        }
    });
    let (status, reason, message) = get(&s, "Ready");
    assert_eq!((status, reason), ("False", "NoLeader"), "{message}");
    assert_eq!(sr(&s, "Degraded"), ("True", "NoLeader"));

    // A member whose pod is not Ready and whose API does not answer.
    let s = observe_with(
        |f| {
            f.statuses.remove(&url(2));
        },
        |o| o.pods[2].ready = false,
    );
    let (status, reason, _) = get(&s, "Ready");
    assert_eq!((status, reason), ("False", "MembersNotReady"));
    assert_eq!(sr(&s, "Degraded"), ("True", "VotersUnreachable"));
}

#[test]
fn a_healthy_cluster_is_ready_settled_and_not_degraded() {
    let s = status_with(|f| snapshots(f, |_| SnapshotHealth::default()));
    assert_eq!(sr(&s, "Ready"), ("True", "AllMembersReady"));
    assert_eq!(sr(&s, "Progressing"), ("False", "Settled"));
    assert_eq!(sr(&s, "Degraded"), ("False", "QuorumHealthy"));
}
