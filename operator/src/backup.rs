//! The backup resources: `SqliteBackup`, one backup of a cluster taken now to the cluster's own
//! ordered backup storages (the first that accepts it) and what came of it; and
//! `SqliteScheduledBackup`, which creates SqliteBackups on a cron schedule and keeps the newest.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// An on-demand backup of a SqliteCluster. The operator asks the cluster's leader for it and
/// records the outcome; the object is a record of that backup (deleting it deletes nothing in
/// the storage: the cluster's retention prunes backups there).
// Each printcolumn(...) repeats `type_ = ...`; clippy mistakes that for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "litecluster.io",
    version = "v1alpha1",
    kind = "SqliteBackup",
    plural = "sqlitebackups",
    singular = "sqlitebackup",
    shortname = "slb",
    namespaced,
    status = "SqliteBackupStatus",
    derive = "PartialEq",
    doc = "One backup of a SqliteCluster to its backup storages, and its outcome.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Storage",
        type_ = "string",
        json_path = ".status.storage",
        description = "the storage that holds it"
    ),
    printcolumn(
        name = "Index",
        type_ = "integer",
        json_path = ".status.raftIndex",
        description = "Raft index the backup holds the data up to"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("a SqliteBackup's spec cannot change: create another one"))]
pub struct SqliteBackupSpec {
    /// The SqliteCluster to back up, in this namespace. It needs `spec.backup.storages`.
    #[schemars(length(min = 1, max = 253))]
    pub cluster: String,
}

/// Where a backup is.
pub mod phase {
    /// Waiting for the cluster (it has no leader yet).
    pub const PENDING: &str = "Pending";
    /// The leader was asked for it.
    pub const RUNNING: &str = "Running";
    pub const COMPLETED: &str = "Completed";
    pub const FAILED: &str = "Failed";
}

/// What came of a backup.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SqliteBackupStatus {
    /// Pending, Running, Completed or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// What the operator is waiting for, or why the backup failed and what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The backup's id in its storage (what `litecluster-node backup restore --id` takes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_id: Option<String>,
    /// The storage (by its name in `spec.backup.storages`) that holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// True when a storage listed before `storage` refused it and it went to a failover one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<bool>,
    /// The Raft index the backup holds the data up to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_index: Option<u64>,
    /// Bytes stored (compressed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Bytes of the database it restores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_bytes: Option<u64>,
    /// SHA-256 of the stored object, checked on restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The member that took it (the leader then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// How many times the leader was asked (a retryable failure asks again, up to 5 times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// After a retryable failure: not asked again before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<Time>,
}

impl SqliteBackup {
    /// Completed or Failed: nothing more happens to it.
    pub fn finished(&self) -> bool {
        matches!(
            self.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some(phase::COMPLETED | phase::FAILED)
        )
    }
}

/// Label on the SqliteBackups a schedule created: the schedule's name.
pub const SCHEDULE_LABEL: &str = "litecluster.io/scheduled-backup";

/// SqliteBackups of a cluster on a cron schedule (UTC), the newest `keep` of them kept.
// Each printcolumn(...) repeats `type_ = ...`; clippy mistakes that for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "litecluster.io",
    version = "v1alpha1",
    kind = "SqliteScheduledBackup",
    plural = "sqlitescheduledbackups",
    singular = "sqlitescheduledbackup",
    shortname = "slsb",
    namespaced,
    status = "SqliteScheduledBackupStatus",
    derive = "PartialEq",
    doc = "SqliteBackups of a SqliteCluster on a cron schedule, with a retention.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule"),
    printcolumn(name = "Suspend", type_ = "boolean", json_path = ".spec.suspend"),
    printcolumn(
        name = "Last",
        type_ = "date",
        json_path = ".status.lastScheduleTime",
        description = "when the last backup was created"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SqliteScheduledBackupSpec {
    /// The SqliteCluster to back up, in this namespace.
    #[schemars(length(min = 1, max = 253))]
    pub cluster: String,

    /// When, as a five-field cron schedule in UTC (`minute hour day-of-month month
    /// day-of-week`, for example `0 3 * * *`), or `@hourly`, `@daily`, `@weekly`, `@monthly`.
    /// A run missed while the operator was away is made up once, not once per missed time.
    #[schemars(length(min = 1, max = 100))]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('@') || size(self.split(' ').filter(f, f != '')) == 5").message("schedule must have five fields (minute hour day-of-month month day-of-week), for example \"0 3 * * *\", or be @hourly, @daily, @weekly or @monthly"))]
    pub schedule: String,

    /// Take a backup as soon as the schedule is created, then follow the schedule.
    #[serde(default)]
    pub immediate: bool,

    /// Create no backups while true (the ones there stay).
    #[serde(default)]
    pub suspend: bool,

    /// How many of the SqliteBackups it created to keep, the newest; older finished ones are
    /// deleted (a record only: the stored backups follow the cluster's `backup.retention`).
    #[serde(default = "default_keep")]
    #[x_kube(validation = kube::core::Rule::new("self >= 1").message("keep must be at least 1"))]
    pub keep: u32,
}

fn default_keep() -> u32 {
    7
}

/// What a schedule did.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SqliteScheduledBackupStatus {
    /// The scheduled time of the last backup it created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// When it creates the next one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<Time>,
    /// The SqliteBackup it created last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
    /// Why it cannot run (an invalid schedule), with what to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
