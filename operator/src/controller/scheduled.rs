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
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};

use super::{Context, MANAGER};
use crate::backup::{
    SCHEDULE_LABEL, SqliteBackup, SqliteBackupSpec, SqliteScheduledBackup,
    SqliteScheduledBackupStatus,
};
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
    let schedule: Schedule = match sched.spec.schedule.parse() {
        Ok(s) => s,
        Err(why) => {
            status.message = Some(format!("{why}; no backups are taken until it is fixed"));
            status.next_schedule_time = None;
            apply(&sched, &ctx, &ns, &status).await?;
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
            Err(e) => return Err(e.into()),
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
        apply(&sched, &ctx, &ns, &status).await?;
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

/// Which of a schedule's backups go: all but the newest `keep`, once finished (one still
/// running is left to finish).
pub fn to_prune(mut owned: Vec<SqliteBackup>, keep: usize) -> Vec<String> {
    owned.sort_by_key(|b| {
        (
            b.meta().creation_timestamp.clone().map(|t| t.0),
            b.name_any(),
        )
    });
    let excess = owned.len().saturating_sub(keep);
    owned
        .into_iter()
        .take(excess)
        .filter(SqliteBackup::finished)
        .map(|b| b.name_any())
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

async fn apply(
    sched: &SqliteScheduledBackup,
    ctx: &Context,
    ns: &str,
    status: &SqliteScheduledBackupStatus,
) -> Result<()> {
    let body = serde_json::json!({
        "apiVersion": SqliteScheduledBackup::api_version(&()),
        "kind": SqliteScheduledBackup::kind(&()),
        "status": status,
    });
    Api::<SqliteScheduledBackup>::namespaced(ctx.client.clone(), ns)
        .patch_status(
            &sched.name_any(),
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await?;
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
    fn the_newest_are_kept_and_a_running_one_is_never_pruned() {
        let owned = vec![
            backup("d", 4, Some("Completed")),
            backup("a", 1, Some("Completed")),
            backup("b", 2, Some("Running")),
            backup("c", 3, Some("Failed")),
        ];
        assert_eq!(to_prune(owned.clone(), 2), ["a"]);
        assert_eq!(to_prune(owned.clone(), 1), ["a", "c"]);
        assert!(to_prune(owned, 4).is_empty());
    }
}
