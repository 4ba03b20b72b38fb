//! The `SqliteCluster` custom resource: what a user asks for (spec) and what the operator saw (status).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Affinity, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// Annotation that stops the operator from reconciling one cluster while it is `"true"`.
pub const PAUSED_ANNOTATION: &str = "litecluster.io/paused";
/// Names one member to restart through the rollout (one at a time, leader handed over first);
/// the operator removes it once done.
pub const RESTART_ANNOTATION: &str = "litecluster.io/restart";
/// Names the voter that should lead; the operator hands leadership to it, then removes this.
pub const SWITCHOVER_ANNOTATION: &str = "litecluster.io/switchover";

/// Image used when `spec.image` is not set.
pub const DEFAULT_IMAGE: &str = "ghcr.io/litecluster/litecluster-node:0.1.0";

/// A replicated SQLite database: `replicas` members, the first `voters` of them vote in Raft,
/// the rest are read-only learners that follow the log.
// Each printcolumn(...) repeats `type_ = ...`; clippy mistakes that for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "litecluster.io",
    version = "v1alpha1",
    kind = "SqliteCluster",
    plural = "sqliteclusters",
    singular = "sqlitecluster",
    shortname = "slc",
    namespaced,
    status = "SqliteClusterStatus",
    derive = "PartialEq",
    doc = "A replicated SQLite database run by litecluster nodes (Raft), with an rqlite-compatible HTTP API.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.readyMembers",
        description = "ready members / desired members"
    ),
    printcolumn(
        name = "Voters",
        type_ = "integer",
        json_path = ".status.voters",
        description = "members that vote in Raft"
    ),
    printcolumn(
        name = "Leader",
        type_ = "string",
        json_path = ".status.leader",
        description = "member that leads Raft"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SqliteClusterSpec {
    /// Number of members (pods), voters and learners together. Scale it with `kubectl scale`
    /// or a HorizontalPodAutoscaler. When it is below `voters`, the cluster runs with the largest
    /// odd number of voters that fits.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = Rule::new("self >= 1").message("replicas must be at least 1"))]
    pub replicas: i32,

    /// Number of members that vote in Raft (quorum is voters/2+1). Must be odd: an even number
    /// tolerates no more failures than the odd number below it. Members beyond it are
    /// read-only learners.
    #[serde(default = "default_voters")]
    #[x_kube(validation = Rule::new("self >= 1 && self % 2 == 1").message("voters must be a positive odd number (1, 3, 5, ...)"))]
    pub voters: i32,

    /// Container image of the litecluster node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// When the kubelet pulls the image: Always, IfNotPresent or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['Always', 'IfNotPresent', 'Never']").message("imagePullPolicy must be Always, IfNotPresent or Never"))]
    pub image_pull_policy: Option<String>,

    /// Persistent volume of each member (Raft log, snapshots and the SQLite database).
    #[serde(default)]
    pub storage: StorageSpec,

    /// CPU and memory requests and limits of the node container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// When members snapshot their state and truncate the Raft log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotSpec>,

    /// Backups to object storage. Storages are tried in order: the first that accepts a backup wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,

    /// How a new cluster starts: empty (the default), or recovered from a backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSpec>,

    /// Labels, annotations and scheduling constraints added to every member pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplateOverlay>,

    /// Secret that turns on authentication. Key `users.json` holds the rqlite-format users file;
    /// keys `username` and `password` are the credentials members and the operator use to manage
    /// the cluster (the user needs the `join`, `remove`, `status` and `leader` permissions, and
    /// `backup` for SqliteBackups).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_secret: Option<SecretReference>,

    /// TLS: mutual TLS between members on the Raft port, and HTTPS on the API unless `tls.api`
    /// is false. On by default: without a `tls.secretName` the operator issues a CA and a
    /// member certificate for the cluster (Secrets `<name>-ca` and `<name>-tls`) and renews the
    /// certificate before it expires. `tls.enabled: false` runs without TLS. TLS cannot be
    /// turned on or off on a running cluster (members with and without it cannot talk to each
    /// other); a cluster created by an operator before TLS became the default stays without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,

    /// The NetworkPolicy that lets only the cluster's own members reach the Raft port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,

    /// How members write their logs: `json` (the default: one object per line, for log
    /// pipelines) or `text`. Changing it restarts the members one at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self in ['text', 'json']").message("logFormat must be text or json"))]
    pub log_format: Option<String>,
}

/// TLS of a cluster: a Secret in cert-manager's layout, or one the operator issues.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.api == oldSelf.api").message("tls.api cannot be changed on an existing cluster: members that disagree on it cannot reach each other"))]
#[x_kube(validation = Rule::new("(has(self.enabled) ? self.enabled : true) == (has(oldSelf.enabled) ? oldSelf.enabled : true)").message("tls.enabled cannot be changed on an existing cluster: members with and without TLS cannot talk to each other"))]
#[x_kube(validation = Rule::new("!has(self.enabled) || self.enabled || !has(self.secretName)").message("tls.secretName needs tls.enabled: a cluster without TLS uses no certificate"))]
pub struct TlsSpec {
    /// Whether members use TLS (default true).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub enabled: bool,

    /// Secret with keys `tls.crt` (certificate chain), `tls.key` (its private key) and `ca.crt`
    /// (the CA that signed every member's certificate), as cert-manager writes it. Leave it out
    /// to have the operator issue one. One certificate serves every member, as server and as
    /// client of the other members, so it needs both the `server auth` and `client auth`
    /// usages and the DNS name `*.<cluster>-headless.<namespace>.svc.<cluster domain>` (each
    /// member's address, for example `*.mydb-headless.default.svc.cluster.local`). With `api`,
    /// clients reach the cluster through its Services, so add `<cluster>.<namespace>.svc`,
    /// `<cluster>-readonly.<namespace>.svc` and their `.<cluster domain>` forms. The operator
    /// restarts members one at a time when `tls.crt` changes (a renewal). Any certificate from
    /// `ca.crt` is admitted on the Raft port, so give each cluster a CA of its own. To change CA,
    /// add the new one to `ca.crt`, then issue from it, then drop the old one: a change the
    /// running members could not follow holds restarts back (condition Degraded=TlsChangeUnsafe).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("tls.secretName must be the name of a Secret"))]
    pub secret_name: Option<String>,

    /// Serve the HTTP API over HTTPS with the same certificate (default true). Clients and
    /// probes then use HTTPS; members and the operator trust `ca.crt`. Turn it off only when the
    /// API is protected some other way: without it, queries and credentials travel in the clear.
    #[serde(default = "default_true")]
    pub api: bool,
}

impl Default for TlsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            secret_name: None,
            api: true,
        }
    }
}

/// The NetworkPolicy of a cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Keep a NetworkPolicy that admits the Raft port only from the cluster's own member pods
    /// and leaves the HTTP API port open (default true). Turn it off when your own policies
    /// cover the members, or when something else must reach other ports of the pods (a
    /// service-mesh sidecar, say): the policy admits no other port.
    #[serde(default = "default_true")]
    pub enabled: bool,
}

/// Persistent volume of each member.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(oldSelf.storageClassName) || (has(self.storageClassName) && self.storageClassName == oldSelf.storageClassName)").message("storage.storageClassName cannot be changed"))]
pub struct StorageSpec {
    /// Size of each member's volume, as a Kubernetes quantity (for example `1Gi`). It can grow
    /// but never shrink: the operator then asks each member's claim for the new size, which
    /// needs a storage class with `allowVolumeExpansion: true` (a refusal is a
    /// `VolumeExpansionFailed` Event).
    #[serde(default = "default_storage_size")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = Rule::new("isQuantity(self)").message("storage.size must be a quantity such as 1Gi or 500Mi"),
        validation = Rule::new("!isQuantity(self) || !isQuantity(oldSelf) || quantity(self).compareTo(quantity(oldSelf)) >= 0").message("storage.size cannot shrink")
    )]
    pub size: String,

    /// Storage class of the volumes; the cluster default when unset. Cannot be changed later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
        }
    }
}

/// When members snapshot their state and truncate the Raft log.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotSpec {
    /// Take a snapshot after this many Raft log entries since the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("snapshot.threshold must be at least 1"))]
    pub threshold: Option<i64>,

    /// Log entries kept after a snapshot so slow followers can catch up without a full snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("snapshot.trailingLogs cannot be negative"))]
    pub trailing_logs: Option<i64>,

    /// Consecutive failed WAL checkpoints on one member after which the operator remediates:
    /// first a full snapshot, then a restart of that member, then a rolling restart of every
    /// member, one step at a time. Default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("snapshot.remediationThreshold must be at least 1"))]
    pub remediation_threshold: Option<i64>,

    /// How long a remediation step is given to clear the failures before the next step, for
    /// example `5m` (the default) or `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("snapshot.remediationInterval must be a duration such as 30s, 5m or 1h"))]
    pub remediation_interval: Option<String>,
}

/// Remediation threshold when `snapshot.remediationThreshold` is unset.
pub const DEFAULT_REMEDIATION_THRESHOLD: u64 = 3;
/// Wait between remediation steps when `snapshot.remediationInterval` is unset.
pub const DEFAULT_REMEDIATION_INTERVAL: Duration = Duration::from_secs(300);

/// Parse a duration such as `90s`, `5m` or `1h30m` (units ms, s, m, h), the format the schema admits.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else {
            return None;
        };
        total = total.checked_add(unit.checked_mul(u32::try_from(n).ok()?)?)?;
        rest = &rest[len..];
    }
    Some(total)
}

/// Backups to object storage.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Storages in order of preference. A backup goes to the first one that accepts it.
    #[schemars(length(max = 8))]
    #[x_kube(
        validation = Rule::new("size(self) >= 1").message("backup.storages needs at least one storage"),
        validation = Rule::new("self.all(s, self.exists_one(t, t.name == s.name))").message("backup.storages names must be unique")
    )]
    pub storages: Vec<BackupStorage>,

    /// Time between automatic backups taken by the leader, for example `30m` or `1h`. A backup
    /// is skipped when nothing changed since the last one.
    #[serde(default = "default_backup_interval")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("backup.interval must be a duration such as 30m or 1h"))]
    pub interval: String,

    /// How many backups to keep in each storage; older ones are deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("backup.retention must keep at least one backup"))]
    pub retention: Option<i32>,

    /// How often the leader ships committed writes to the storages, for point-in-time recovery
    /// (`bootstrap.recovery.targetTime`): the archive trails the cluster by about this much.
    /// `0s` turns archiving off (then only backups can be restored).
    #[serde(default = "default_archive_interval")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')").message("backup.archiveInterval must be a duration such as 5s, or 0s for none"))]
    pub archive_interval: String,
}

/// How a new cluster starts. Read only while it bootstraps; changing it later changes nothing.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("bootstrap cannot change: it describes how the cluster was created"))]
pub struct BootstrapSpec {
    /// Start from a backup: the first member restores it (verifying its checksum) and the
    /// others join and receive it through Raft.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoverySpec>,
}

/// Where the backup to recover from is, and how far to recover.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.targetTime) || !has(self.targetIndex)").message("bootstrap.recovery takes targetTime or targetIndex, not both"),
    validation = Rule::new("has(self.backup) != (has(self.storages) && size(self.storages) > 0)").message("bootstrap.recovery needs either storages or backup (a SqliteBackup's name)"),
    validation = Rule::new("!has(self.backup) || !has(self.backupId)").message("bootstrap.recovery.backup names the backup already; leave backupId out")
)]
pub struct RecoverySpec {
    /// A SqliteBackup in this namespace: its backup, read from the storages of the cluster it
    /// backed up (that cluster must still exist when this one is created). Instead of
    /// `storages` and `backupId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupRef>,

    /// The storages to look in, in the form of `spec.backup.storages` (for example the source
    /// cluster's). Only read: the new cluster backs up to its own `spec.backup`, so give that
    /// another bucket or prefix, or its retention would prune the source cluster's backups.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[x_kube(
        validation = Rule::new("self.all(s, self.exists_one(t, t.name == s.name))").message("bootstrap.recovery.storages names must be unique")
    )]
    pub storages: Vec<BackupStorage>,

    /// The backup to restore: its id, as a SqliteBackup's `status.backupId` or
    /// `litecluster-node backup list` shows it. Default: the newest in any of the storages
    /// (before the target, if one is given), with the archive after it replayed to its end.
    /// Named without a target, that backup is restored as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub backup_id: Option<String>,

    /// Recover to this point in time (RFC 3339 with a zone, e.g. `2026-12-02T18:20:38Z`): the
    /// newest backup taken before it, plus every archived write proposed at or before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.matches('^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$')").message("bootstrap.recovery.targetTime must be an RFC 3339 time with a zone, such as 2026-12-02T18:20:38Z"))]
    pub target_time: Option<String>,

    /// Recover to this Raft index: the newest backup at or before it, plus the archived writes
    /// up to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("bootstrap.recovery.targetIndex must be at least 1"))]
    pub target_index: Option<i64>,
}

/// A SqliteBackup by name, in the cluster's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BackupRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// What `bootstrap.recovery.backup` named, as resolved when the cluster was created.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RecoverySource {
    /// The SqliteBackup.
    #[schemars(length(max = 253))]
    pub backup: String,
    /// Its backup id, and the storages of the cluster it backed up.
    #[schemars(length(max = 253))]
    pub backup_id: String,
    #[schemars(length(max = 8))]
    pub storages: Vec<BackupStorage>,
}

/// One place backups can go.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupStorage {
    /// Name of this storage, unique within the cluster (used in status and metrics).
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self) <= 63").message("backup storage name must be a DNS label"))]
    pub name: String,

    /// S3-compatible endpoint URL, for example `https://s3.eu-west-1.amazonaws.com`.
    pub endpoint: String,

    /// Bucket that receives the backups.
    pub bucket: String,

    /// Key prefix inside the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,

    /// Region of the bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,

    /// Secret with keys `accessKeyId` and `secretAccessKey` for this storage.
    pub credentials_secret: SecretReference,
}

/// Labels, annotations and scheduling constraints added to every member pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplateOverlay {
    /// Extra pod labels. The operator's own labels win on conflict, and `litecluster.io/role`
    /// is the operator's alone (it follows each member's Raft role).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Extra pod annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// Pod affinity and anti-affinity. When unset the operator prefers spreading members over nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// Tolerations of the member pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Node labels a member pod's node must have.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Priority class of the member pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// A Secret in the cluster's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Name of the Secret.
    #[x_kube(validation = Rule::new("size(self) >= 1").message("secret name cannot be empty"))]
    pub name: String,
}

/// What the operator last saw of the cluster.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SqliteClusterStatus {
    /// Human-readable summary, for example "Cluster in healthy state" or "Adding member db-3".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,

    /// Ready, Progressing, Degraded and SnapshotsHealthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// Members (pods) that exist. Read by the scale subresource.
    #[serde(default)]
    pub replicas: i32,

    /// Members whose readiness check passes.
    #[serde(default)]
    pub ready_replicas: i32,

    /// "ready/desired", for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_members: Option<String>,

    /// Members that vote in Raft right now.
    #[serde(default)]
    pub voters: i32,

    /// Label selector of the member pods, for the scale subresource and HorizontalPodAutoscalers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Member that leads Raft.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,

    /// Every member the operator knows of, from the pods and from Raft.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,

    /// True once the first member has initialised the Raft cluster. From then on no member is
    /// ever started with `--bootstrap` again.
    #[serde(default)]
    pub bootstrapped: bool,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Members whose pod runs the current pod template.
    #[serde(default)]
    pub updated_replicas: i32,

    /// The rolling restart in progress, if any: members are replaced one at a time, learners
    /// first, the leader last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,

    /// The last member the operator restarted. The next restart waits until it is back, Ready
    /// and caught up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restart: Option<MemberRestart>,

    /// Snapshot remediation in progress (or given up) for one member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remediation: Option<RemediationStatus>,

    /// Continuous archiving for point-in-time recovery, as the leader reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveStatus>,

    /// What this cluster was recovered from (`spec.bootstrap.recovery`), once it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryStatus>,

    /// The backup and storages `bootstrap.recovery.backup` stood for when the cluster was
    /// created, so that the members' template stays the same if that SqliteBackup goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery_source: Option<RecoverySource>,
}

/// The leader's archive of committed writes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveStatus {
    /// The last Raft index the archive (with the base backup before it) holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_index: Option<i64>,

    /// When the last segment was stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived_at: Option<String>,

    /// From a write's proposal to its segment being stored, for the last segment: the data a
    /// lost cluster could have lost then (the recovery point objective met).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_ms: Option<i64>,

    /// Storage the last segment went to, and whether that was a failover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    #[serde(default)]
    pub failover: bool,

    /// When the leader last found a hole the log no longer held and answered it with a new
    /// base backup: recovery to a time inside it is not possible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_gap_at: Option<String>,

    /// The last failure, while archiving fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What a recovered cluster restored.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryStatus {
    /// The backup it started from, and the Raft index that backup holds.
    pub backup_id: String,
    pub backup_index: i64,

    /// The index the restored data reflects (after replaying the archive), and when its last
    /// write was proposed.
    pub index: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,

    /// The target asked for, if any, and whether the archive reached it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default)]
    pub target_reached: bool,
}

/// A rolling restart of the members onto a new pod template.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// StatefulSet revision the members are moving to.
    pub revision: String,

    /// Why the members restart, for example "image changed" or "pod template changed".
    pub reason: String,

    /// When the rolling restart began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
}

/// A member pod the operator deleted so that it restarts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MemberRestart {
    /// Member (pod) name.
    pub member: String,

    /// UID of the deleted pod: the member is back once a pod with another UID is Ready.
    pub pod_uid: String,

    /// Why it was restarted.
    pub reason: String,

    /// When its pod was deleted.
    pub at: Time,
}

/// The steps of snapshot remediation, in the order they are tried.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemediationStep {
    /// A full snapshot was requested from the member.
    FullSnapshot,
    /// The member's pod was restarted.
    Restart,
    /// Every member was restarted, one at a time.
    RollingUpgrade,
    /// Every step was tried and the failures remain; the operator stopped escalating.
    Exhausted,
}

/// Remediation of one member whose WAL checkpoints keep failing.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RemediationStatus {
    /// Member being remediated.
    pub member: String,

    /// Last step taken.
    pub step: RemediationStep,

    /// When the step took effect (for a restart: when the member was back). The next step
    /// comes `snapshot.remediationInterval` after it. Unset while a restart is under way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,

    /// The member's consecutive failures when the step was taken.
    #[serde(default)]
    pub failures: u64,

    /// Time of the member's last successful snapshot when the step was taken, as the member
    /// reported it. Recovery needs a newer success: a restart alone also zeroes the counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline_success: Option<String>,
}

/// One member as seen through its pod and its `/status`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Pod name of the member (also its node id).
    pub name: String,

    /// Voter, Learner, or None when it is not in the Raft configuration.
    pub role: String,

    /// Raft state the member reports: Leader, Follower, Learner, Candidate, or Unknown when unreachable.
    pub raft_state: String,

    /// Whether the pod passes its readiness check.
    #[serde(default)]
    pub ready: bool,

    /// Last Raft log index applied to the member's database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,

    /// Snapshot health of the member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<MemberSnapshotStatus>,
}

/// Snapshot health of one member, from its `/status`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MemberSnapshotStatus {
    /// Log index of the last successful snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_index: Option<u64>,

    /// Snapshot failures since the last success.
    #[serde(default)]
    pub consecutive_failures: u64,

    /// Whether the member's next snapshot must be a full one.
    #[serde(default)]
    pub full_needed: bool,
}

fn default_replicas() -> i32 {
    3
}
fn default_voters() -> i32 {
    3
}
fn default_storage_size() -> String {
    "1Gi".into()
}
fn default_archive_interval() -> String {
    "5s".into()
}

fn default_backup_interval() -> String {
    "1h".into()
}
fn is_true(b: &bool) -> bool {
    *b
}

fn default_true() -> bool {
    true
}

impl SqliteCluster {
    /// The member the restart annotation names, if any.
    pub fn restart_request(&self) -> Option<&str> {
        self.annotation(RESTART_ANNOTATION)
    }

    /// The member the switchover annotation names, if any.
    pub fn switchover_request(&self) -> Option<&str> {
        self.annotation(SWITCHOVER_ANNOTATION)
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
            .filter(|m| !m.is_empty())
    }

    /// Whether the pause annotation is set to `"true"`.
    pub fn paused(&self) -> bool {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PAUSED_ANNOTATION))
            .is_some_and(|v| v == "true")
    }

    /// Image of the node container.
    pub fn image(&self) -> &str {
        self.spec.image.as_deref().unwrap_or(DEFAULT_IMAGE)
    }

    /// The TLS Secret members mount, once the reconciler has resolved the spec (see
    /// `controller::certificates::resolve`, which names the Secret it issues); `None` without TLS.
    pub fn tls_secret(&self) -> Option<&str> {
        self.spec
            .tls
            .as_ref()
            .filter(|t| t.enabled)
            .and_then(|t| t.secret_name.as_deref())
    }

    /// Whether members serve the HTTP API over HTTPS (a TLS Secret and `tls.api`).
    pub fn api_tls(&self) -> bool {
        self.tls_secret().is_some() && self.spec.tls.as_ref().is_some_and(|t| t.api)
    }

    /// Whether the operator keeps the cluster's NetworkPolicy (the default).
    pub fn network_policy_enabled(&self) -> bool {
        self.spec.network_policy.as_ref().is_none_or(|n| n.enabled)
    }

    /// `snapshot.remediationThreshold` or its default.
    pub fn remediation_threshold(&self) -> u64 {
        self.spec
            .snapshot
            .as_ref()
            .and_then(|s| s.remediation_threshold)
            .and_then(|t| u64::try_from(t).ok())
            .filter(|t| *t >= 1)
            .unwrap_or(DEFAULT_REMEDIATION_THRESHOLD)
    }

    /// `snapshot.remediationInterval` or its default. The schema admits only parseable values.
    pub fn remediation_interval(&self) -> Duration {
        self.spec
            .snapshot
            .as_ref()
            .and_then(|s| s.remediation_interval.as_deref())
            .and_then(parse_duration)
            .unwrap_or(DEFAULT_REMEDIATION_INTERVAL)
    }

    /// Number of voters the cluster runs with: `spec.voters`, capped by `spec.replicas`, rounded
    /// down to an odd number (an even count adds risk without adding fault tolerance).
    pub fn effective_voters(&self) -> i32 {
        effective_voters(self.spec.replicas, self.spec.voters)
    }
}

/// See [`SqliteCluster::effective_voters`].
pub fn effective_voters(replicas: i32, voters: i32) -> i32 {
    let v = voters.min(replicas).max(1);
    if v % 2 == 0 { v - 1 } else { v }
}

/// Every CRD the operator serves: (file name, YAML), one file each as in `crds/`.
pub fn crd_files() -> Result<Vec<(String, String)>, serde_saphyr::ser::Error> {
    [
        SqliteCluster::crd(),
        crate::backup::SqliteBackup::crd(),
        crate::backup::SqliteScheduledBackup::crd(),
    ]
    .into_iter()
    .map(|crd| {
        let yaml = serde_saphyr::to_string(&crd)?;
        let name = crd.metadata.name.unwrap_or_default();
        Ok((
            format!("{name}.yaml"),
            format!("# Generated by `litecluster-operator crd`; do not edit.\n---\n{yaml}"),
        ))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crds_are_up_to_date() {
        // crds/ is the source of truth; the chart carries a copy (Helm reads only its own files).
        for (name, generated) in crd_files().unwrap() {
            for dir in ["crds", "charts/litecluster-operator/files"] {
                let path = format!("{}/../{dir}/{name}", env!("CARGO_MANIFEST_DIR"));
                let committed = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(
                    committed == generated,
                    "{dir}/{name} is stale: run `cargo run -p litecluster-operator -- crd --out crds --out charts/litecluster-operator/files`"
                );
            }
        }
    }

    #[test]
    fn crd_has_subresources_columns_and_rules() {
        let crd = serde_json::to_value(SqliteCluster::crd()).unwrap();
        let v = &crd["spec"]["versions"][0];
        assert_eq!(
            v["subresources"]["scale"]["specReplicasPath"],
            ".spec.replicas"
        );
        assert_eq!(
            v["subresources"]["scale"]["labelSelectorPath"],
            ".status.selector"
        );
        assert!(v["subresources"]["status"].is_object());
        let cols: Vec<_> = v["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(cols, ["Ready", "Voters", "Leader", "Phase", "Age"]);
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "slc");
        let text = crd.to_string();
        for msg in [
            "voters must be a positive odd number",
            "storage.size cannot shrink",
            "replicas must be at least 1",
            "snapshot.remediationThreshold must be at least 1",
            "snapshot.remediationInterval must be a duration",
        ] {
            assert!(text.contains(msg), "missing rule: {msg}");
        }
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(spec["voters"]["default"], 3);
        assert!(
            spec["replicas"]["description"]
                .as_str()
                .unwrap()
                .contains("kubectl scale")
        );
    }

    /// Every SqliteCluster in examples/ parses, and no field is misspelled (a round trip keeps the spec).
    /// The API server estimates each CEL rule's cost from the bounds around it: a rule under an
    /// array without `maxItems` is costed as if the array were endless, and the CRD refused.
    /// Caught on a real API server once (status.recoverySource.storages).
    #[test]
    fn every_rule_sits_under_bounded_arrays() {
        fn walk(v: &serde_json::Value, path: &str, unbounded_array: bool, bad: &mut Vec<String>) {
            let Some(o) = v.as_object() else { return };
            if o.contains_key("x-kubernetes-validations") && unbounded_array {
                bad.push(format!("{path}: a rule under an array without maxItems"));
            }
            if let Some(props) = o.get("properties").and_then(|p| p.as_object()) {
                for (k, p) in props {
                    walk(p, &format!("{path}.{k}"), unbounded_array, bad);
                }
            }
            if let Some(items) = o.get("items") {
                let unbounded = unbounded_array || !o.contains_key("maxItems");
                walk(items, &format!("{path}[]"), unbounded, bad);
            }
        }
        for crd in [
            serde_json::to_value(SqliteCluster::crd()).unwrap(),
            serde_json::to_value(crate::backup::SqliteBackup::crd()).unwrap(),
            serde_json::to_value(crate::backup::SqliteScheduledBackup::crd()).unwrap(),
        ] {
            let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
            let mut bad = Vec::new();
            walk(schema, "", false, &mut bad);
            assert!(bad.is_empty(), "{}: {bad:#?}", crd["metadata"]["name"]);
        }
    }

    #[test]
    fn examples_are_valid_clusters() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for doc in docs.into_iter().filter(|d| d["kind"] == "SqliteCluster") {
                let c: SqliteCluster = serde_json::from_value(doc.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let back = serde_json::to_value(&c.spec).unwrap();
                for (k, v) in doc["spec"].as_object().unwrap() {
                    assert_eq!(
                        &back[k],
                        v,
                        "{}: spec.{k} does not round-trip (misspelled field?)",
                        path.display()
                    );
                }
                seen += 1;
            }
        }
        assert!(seen >= 3);
    }

    #[test]
    fn effective_voters_is_odd_and_fits() {
        assert_eq!(effective_voters(3, 3), 3);
        assert_eq!(effective_voters(5, 3), 3);
        assert_eq!(effective_voters(2, 3), 1);
        assert_eq!(effective_voters(1, 5), 1);
        assert_eq!(effective_voters(4, 5), 3);
        assert_eq!(effective_voters(7, 5), 5);
    }

    #[test]
    fn durations_parse_like_the_schema_admits() {
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        for bad in ["", "5", "m", "5d", "5m3", "-5m", "5 m"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn remediation_settings_default_and_override() {
        let mut c = SqliteCluster::new("db", serde_json::from_str("{}").unwrap());
        assert_eq!(c.remediation_threshold(), 3);
        assert_eq!(c.remediation_interval(), Duration::from_secs(300));
        c.spec.snapshot = Some(SnapshotSpec {
            remediation_threshold: Some(5),
            remediation_interval: Some("30s".into()),
            ..Default::default()
        });
        assert_eq!(c.remediation_threshold(), 5);
        assert_eq!(c.remediation_interval(), Duration::from_secs(30));
    }

    #[test]
    fn spec_defaults_apply_when_fields_are_missing() {
        let spec: SqliteClusterSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(
            (spec.replicas, spec.voters, spec.storage.size.as_str()),
            (3, 3, "1Gi")
        );
    }
}
