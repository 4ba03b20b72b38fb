//! The `SqliteScheduledBackup` reconciler: at each time its cron schedule names, a SqliteBackup
//! of the cluster (the backup reconciler takes it from there); the newest `keep` it created are
//! kept, older finished ones deleted.
//!
//! A backup's name is the schedule's name and the scheduled time, so a pass repeated after a
//! crash creates the same object again (409, taken as done) rather than a second backup.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};

use super::{Context, apply_status};
use crate::backup::{SCHEDULE_LABEL, SqliteBackup, SqliteBackupSpec, SqliteScheduledBackup};
use crate::schedule::Schedule;
use crate::{Error, Result};

/// Longest wait between passes (a schedule edited to fire sooner is seen at once anyway).
const MAX_WAIT: Duration = Duration::from_secs(3600);

pub async fn reconcile(sched: Arc<SqliteScheduledBackup>, ctx: Arc<Context>) -> Result<Action> {
    if sched.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = sched.namespace().ok_or(Error::MissingNamespace)?;
    let name = sched.name_any();
    let mut status = sched.status.clone().unwrap_or_default();
    // Its backups carry the name as a label value, which holds 63 characters.
    let parsed = if name.len() > 63 {
        Err(format!(
            "the schedule's name has {} characters; its backups are labelled with it, and a label holds 63: use a shorter name",
            name.len()
        ))
    } else {
        sched.spec.schedule.parse()
    };
    let schedule: Schedule = match parsed {
        Ok(s) => s,
        Err(why) => {
            status.message = Some(format!("{why}; no backups are taken until it is fixed"));
            status.next_schedule_time = None;
            apply_status(&ctx, sched.as_ref(), &ns, &status).await?;
            publish(&sched, &ctx, EventType::Warning, "InvalidSchedule", why).await;
            return Ok(Action::await_change());
        }
    };
    let backups = Api::<SqliteBackup>::namespaced(ctx.client.clone(), &ns);
    let mut owned = backups
        .list(&ListParams::default().labels(&format!("{SCHEDULE_LABEL}={name}")))
        .await?
        .items;
    let now = Timestamp::now();
    let created = sched
        .meta()
        .creation_timestamp
        .as_ref()
        .map_or(now, |t| t.0);
    let last = status.last_schedule_time.as_ref().map(|t| t.0);
    let due = if sched.spec.suspend {
        None
    } else if sched.spec.immediate && last.is_none() && owned.is_empty() {
        Some(now)
    } else {
        schedule.latest_due(last.unwrap_or(created), now)
    };
    if let Some(at) = due {
        let backup = new_backup(&sched, &ns, at);
        let bname = backup.name_any();
        match backups.create(&PostParams::default(), &backup).await {
            Ok(b) => {
                owned.push(b);
                publish(
                    &sched,
                    &ctx,
                    EventType::Normal,
                    "BackupScheduled",
                    format!("created SqliteBackup {bname} (scheduled for {at})"),
                )
                .await;
            }
            // Made by an earlier pass that did not get to record it.
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => {
                // Say it where the user looks, then retry.
                status.message = Some(format!("cannot create SqliteBackup {bname}: {e}"));
                apply_status(&ctx, sched.as_ref(), &ns, &status).await?;
                return Err(e.into());
            }
        }
        status.last_schedule_time = Some(Time(at));
        status.last_backup = Some(bname);
    }
    prune(&backups, owned, sched.spec.keep as usize).await?;
    let next = (!sched.spec.suspend)
        .then(|| {
            schedule.next_after(
                status
                    .last_schedule_time
                    .as_ref()
                    .map_or(now, |t| t.0)
                    .max(now),
            )
        })
        .flatten();
    status.next_schedule_time = next.map(Time);
    status.message = match (sched.spec.suspend, next) {
        (true, _) => Some("suspended: no backups are taken".into()),
        (false, None) => Some(format!(
            "the schedule {:?} never fires in the next five years",
            sched.spec.schedule
        )),
        (false, Some(_)) => None,
    };
    if sched.status.as_ref() != Some(&status) {
        apply_status(&ctx, sched.as_ref(), &ns, &status).await?;
    }
    Ok(match next {
        Some(t) => {
            let wait = Duration::try_from(t - Timestamp::now()).unwrap_or_default();
            Action::requeue(wait.clamp(Duration::from_secs(1), MAX_WAIT))
        }
        None => Action::await_change(),
    })
}

/// The SqliteBackup for the run scheduled at `at`, owned by the schedule.
fn new_backup(sched: &SqliteScheduledBackup, ns: &str, at: Timestamp) -> SqliteBackup {
    let name = format!("{}-{}", sched.name_any(), at.strftime("%Y%m%d%H%M%S"));
    let mut b = SqliteBackup::new(
        &name,
        SqliteBackupSpec {
            cluster: sched.spec.cluster.clone(),
        },
    );
    b.metadata.namespace = Some(ns.to_owned());
    b.metadata.labels = Some([(SCHEDULE_LABEL.to_string(), sched.name_any())].into());
    b.metadata.owner_references = sched.controller_owner_ref(&()).map(|o| vec![o]);
    b
}

/// Which of a schedule's backups go: completed ones beyond the newest `keep` completed, and
/// failed ones older than the oldest kept or beyond the newest `keep` failed (a failed one
/// says what went wrong until a newer backup succeeded). Failures never push a good backup's
/// record out; a running one stays.
pub fn to_prune(mut owned: Vec<SqliteBackup>, keep: usize) -> Vec<String> {
    use crate::backup::phase;
    owned.sort_by_key(|b| {
        (
            b.meta().creation_timestamp.clone().map(|t| t.0),
            b.name_any(),
        )
    });
    let phase_of = |b: &SqliteBackup| b.status.as_ref().and_then(|s| s.phase.clone());
    let completed: Vec<usize> = (0..owned.len())
        .filter(|&i| phase_of(&owned[i]).as_deref() == Some(phase::COMPLETED))
        .collect();
    let failed: Vec<usize> = (0..owned.len())
        .filter(|&i| phase_of(&owned[i]).as_deref() == Some(phase::FAILED))
        .collect();
    // Index of the oldest of the newest `keep` (0 when there are none: nothing is older).
    let oldest_of_newest = |v: &[usize]| v.get(v.len().saturating_sub(keep)).copied().unwrap_or(0);
    let oldest_kept = oldest_of_newest(&completed);
    // Failures are bounded too: a schedule failing every minute keeps only the newest `keep`.
    let oldest_failure_kept = oldest_of_newest(&failed);
    owned
        .iter()
        .enumerate()
        .filter(|(i, b)| match phase_of(b).as_deref() {
            Some(phase::COMPLETED) => *i < oldest_kept,
            Some(phase::FAILED) => *i < oldest_kept || *i < oldest_failure_kept,
            _ => false,
        })
        .map(|(_, b)| b.name_any())
        .collect()
}

async fn prune(api: &Api<SqliteBackup>, owned: Vec<SqliteBackup>, keep: usize) -> Result<()> {
    for name in to_prune(owned, keep) {
        match api.delete(&name, &Default::default()).await {
            Ok(_) => tracing::info!(backup = %name, "pruned by its schedule's keep"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

async fn publish(
    sched: &SqliteScheduledBackup,
    ctx: &Context,
    type_: EventType,
    reason: &str,
    note: String,
) {
    ctx.publish_about(sched.object_ref(&()), type_, reason, "Schedule", note)
        .await;
}

/// Count the failure and retry later.
pub fn error_policy(sched: Arc<SqliteScheduledBackup>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(schedule = %sched.name_any(), error = %error, "scheduled backup reconcile failed");
    ctx.metrics.reconcile_failed(error);
    Action::requeue(Duration::from_secs(15))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::SqliteBackupStatus;

    fn backup(name: &str, minute: u32, phase: Option<&str>) -> SqliteBackup {
        let mut b = SqliteBackup::new(
            name,
            SqliteBackupSpec {
                cluster: "db".into(),
            },
        );
        b.metadata.creation_timestamp = Some(Time(
            format!("2026-12-02T10:{minute:02}:00Z").parse().unwrap(),
        ));
        b.status = phase.map(|p| SqliteBackupStatus {
            phase: Some(p.into()),
            ..Default::default()
        });
        b
    }

    #[test]
    fn the_newest_completed_are_kept_and_failures_never_push_them_out() {
        let owned = vec![
            backup("d", 4, Some("Completed")),
            backup("a", 1, Some("Completed")),
            backup("b", 2, Some("Running")),
            backup("c", 3, Some("Failed")),
            backup("e", 5, Some("Failed")),
            backup("f", 6, Some("Failed")),
        ];
        // Keeping 2: a and d stay; of the failures only the newest two.
        assert_eq!(to_prune(owned.clone(), 2), ["c"]);
        // Keeping 1: d stays, a goes; of the failures only f (c is older than d anyway).
        assert_eq!(to_prune(owned.clone(), 1), ["a", "c", "e"]);
        assert!(to_prune(vec![backup("x", 1, Some("Failed"))], 1).is_empty());
        // Only failures: the newest `keep` of them stay.
        let failing = vec![
            backup("p", 1, Some("Failed")),
            backup("q", 2, Some("Failed")),
        ];
        assert_eq!(to_prune(failing, 1), ["p"]);
    }
}
