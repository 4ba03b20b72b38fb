//! The archive and recovery parts of a cluster's status, from what the members report.

use super::*;
use crate::controller::status::{desired_status, differs};
use crate::crd::SqliteClusterStatus;
use crate::node_client::{NodeArchive, NodeFailure, NodeRestored, NodeSegment};

fn with_backup() -> SqliteCluster {
    let mut c = cluster().bootstrapped();
    c.spec.backup = Some(
        serde_json::from_value(json!({"storages": [
            {"name": "main", "endpoint": "http://s3", "bucket": "b", "credentialsSecret": {"name": "s3"}},
            {"name": "spare", "endpoint": "http://s3b", "bucket": "b", "credentialsSecret": {"name": "s3"}}]}))
        .unwrap(),
    );
    c
}

fn status_of(c: &SqliteCluster, change: impl FnOnce(&mut FakeNodes)) -> SqliteClusterStatus {
    let mut fake = nodes(&[0, 1, 2], &[], &[]);
    change(&mut fake);
    let obs = observed(&[0, 1, 2], &fake, None);
    desired_status(
        c,
        &obs,
        &Action::Nothing,
        true,
        Some(&settled()),
        k8s_openapi::jiff::Timestamp::now(),
    )
}

fn archive(index: u64, at: &str, storage: &str, failover: bool) -> NodeArchive {
    NodeArchive {
        enabled: true,
        archived_index: Some(index),
        archived_at: Some(at.into()),
        last_lag_ms: Some(1200),
        active: true,
        last_gap_at: None,
        last_segment: Some(NodeSegment {
            storage: storage.into(),
            failover,
            note: None,
            at: Some(at.into()),
        }),
        last_failure: None,
    }
}

fn set_leader_archive(f: &mut FakeNodes, a: NodeArchive) {
    f.statuses.get_mut(&url(0)).unwrap().backup.archive = Some(a);
}

#[test]
fn the_leaders_archive_is_shown_with_its_failover_and_a_failure_only_while_it_lasts() {
    let c = with_backup();
    let s = status_of(&c, |f| {
        set_leader_archive(f, archive(40, "2026-12-02T10:00:05.000Z", "spare", true));
    });
    let a = s.archive.clone().unwrap();
    assert_eq!(a.archived_index, Some(40));
    assert_eq!(a.lag_ms, Some(1200));
    assert_eq!((a.storage.as_deref(), a.failover), (Some("spare"), true));
    assert_eq!(a.last_error, None);

    let failing = status_of(&c, |f| {
        let mut a = archive(40, "2026-12-02T10:00:05.000Z", "spare", true);
        a.last_failure = Some(NodeFailure {
            at: Some("2026-12-02T10:00:09.000Z".into()),
            error: "no writable storage".into(),
        });
        set_leader_archive(f, a);
    });
    assert_eq!(
        failing.archive.unwrap().last_error.as_deref(),
        Some("no writable storage")
    );
    // No spec.backup, or a leader with archiving off: nothing to show.
    assert!(
        status_of(&cluster().bootstrapped(), |f| set_leader_archive(
            f,
            archive(1, "t", "m", false)
        ))
        .archive
        .is_none()
    );
    let off = status_of(&c, |f| {
        set_leader_archive(f, NodeArchive::default());
    });
    assert!(off.archive.is_none());
    // A leader that has not looked yet leaves the last status as it was.
    let mut later = c.clone();
    later.status = Some(s.clone());
    let fresh = status_of(&later, |f| {
        let mut a = archive(0, "2026-12-02T10:09:00.000Z", "main", false);
        a.active = false;
        a.last_segment = None;
        set_leader_archive(f, a);
    });
    assert_eq!(fresh.archive, s.archive);
}

#[test]
fn a_gap_is_kept_across_leaders_until_a_newer_one() {
    let c = with_backup();
    let gap = |at: Option<&str>| {
        let mut a = archive(50, "2026-12-02T10:00:05.000Z", "main", false);
        a.last_gap_at = at.map(Into::into);
        a
    };
    let s = status_of(&c, |f| {
        set_leader_archive(f, gap(Some("2026-12-02T10:00:00.000Z")))
    });
    let mut later = c.clone();
    later.status = Some(s);
    // A new leader's process has seen no gap, or an older one: the known gap stays.
    for seen in [None, Some("2026-12-02T09:00:00.000Z")] {
        let s = status_of(&later, |f| set_leader_archive(f, gap(seen)));
        assert_eq!(
            s.archive.unwrap().last_gap_at.as_deref(),
            Some("2026-12-02T10:00:00.000Z")
        );
    }
    let newer = status_of(&later, |f| {
        set_leader_archive(f, gap(Some("2026-12-02T11:00:00Z")))
    });
    assert_eq!(
        newer.archive.unwrap().last_gap_at.as_deref(),
        Some("2026-12-02T11:00:00Z")
    );
}

#[test]
fn the_archive_position_alone_is_written_at_most_once_a_minute() {
    let c = with_backup();
    let at =
        |i: u64, t: &str| status_of(&c, |f| set_leader_archive(f, archive(i, t, "main", false)));
    let old = at(10, "2026-12-02T10:00:00.000Z");
    assert!(!differs(&old, &at(20, "2026-12-02T10:00:30.000Z")));
    assert!(differs(&old, &at(90, "2026-12-02T10:01:00.000Z")));
    // A failover is worth a write at once.
    let moved = status_of(&c, |f| {
        set_leader_archive(f, archive(11, "2026-12-02T10:00:01.000Z", "spare", true))
    });
    assert!(differs(&old, &moved));
}

#[test]
fn what_a_member_restored_is_recorded_once_and_kept() {
    let c = with_backup();
    let s = status_of(&c, |f| {
        f.statuses.get_mut(&url(0)).unwrap().restored = Some(NodeRestored {
            backup_id: "b-1".into(),
            backup_index: 7,
            index: 42,
            time: Some("2026-12-02T10:00:00.000Z".into()),
            target: Some("2026-12-02T10:00:00.500Z".into()),
            target_reached: true,
        });
    });
    let r = s.recovery.clone().unwrap();
    assert_eq!(
        (r.backup_id.as_str(), r.backup_index, r.index),
        ("b-1", 7, 42)
    );
    assert!(r.target_reached);
    // Kept when no member reports it any more (the restoring one was replaced).
    let mut later = c.clone();
    later.status = Some(s);
    assert_eq!(status_of(&later, |_| {}).recovery, Some(r));
}
