//! The StatefulSet that runs the members.
//!
//! Decisions:
//! - `updateStrategy: OnDelete`: the operator, not the StatefulSet controller, decides when a
//!   member restarts, so it can go learners first and the leader last after a handover.
//! - `podManagementPolicy: Parallel`: members do not depend on each other to start (the operator
//!   adds them to Raft), so waiting for each pod in turn would only slow scaling down and let one
//!   stuck pod block the rest. Raft-safe order comes from the operator, not from pod order.
//! - Bootstrap: the operator runs the StatefulSet at one replica with `LITECLUSTER_BOOTSTRAP=true`
//!   until member 0 leads a new cluster and `status.bootstrapped` is recorded. From then on the
//!   template never carries the flag, so no member (not even member 0 with a lost volume) can
//!   start a second cluster. Members start without `--join`; the operator adds them with
//!   `POST /join`, which keeps membership changes in one place, one at a time.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec, StatefulSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim, PersistentVolumeClaimSpec,
    PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SeccompProfile, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
    VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::configmap::{
    BACKUP_CONFIG_KEY, RECOVERY_CONFIG_KEY, backup_secret_dir, recovery_secret_dir,
};
use super::{
    DATA_DIR, HTTP_PORT, Names, RAFT_PORT, RESTARTED_AT_ANNOTATION, ROLE_LABEL,
    TEMPLATE_HASH_ANNOTATION, TLS_CA_HASHES_ANNOTATION, TLS_CERT_HASH_ANNOTATION, TLS_DIR,
    owned_meta, selector_labels, spec_hash,
};
use crate::Result;
use crate::crd::SqliteCluster;

/// Name of the volume claim template (PVCs are `data-<cluster>-<n>`).
pub const DATA_VOLUME: &str = "data";
/// Container name of the node.
pub const CONTAINER: &str = "node";
const RUN_AS: i64 = 65532;

/// Inputs of the StatefulSet that come from the operator's observations, not the spec.
#[derive(Clone, Debug, PartialEq)]
pub struct StatefulSetParams {
    /// Replicas decided by `membership::statefulset_replicas` (1 while bootstrapping).
    pub replicas: i32,
    /// Start members with `--bootstrap` (only before the cluster was ever bootstrapped).
    pub bootstrap: bool,
    /// DNS domain of the Kubernetes cluster, for the members' advertised addresses.
    pub cluster_domain: String,
    /// Value of the `litecluster.io/restartedAt` pod annotation; changing it restarts every member.
    pub restarted_at: Option<String>,
    /// Hash of the TLS Secret's `tls.crt`, as a pod annotation: the node reads its certificate
    /// only at startup, so a renewed one must restart the members (one at a time, by the rollout).
    pub tls_cert_hash: Option<String>,
    /// Hashes of the CAs in `ca.crt`, comma-separated, as a pod annotation (restarts too).
    pub tls_ca_hashes: Option<String>,
}

/// Env var that makes member 0 initialise a new cluster (only while bootstrapping).
pub const BOOTSTRAP_ENV: &str = "LITECLUSTER_BOOTSTRAP";
/// With `spec.bootstrap.recovery`, while bootstrapping: the config of the storages to restore from.
pub const RESTORE_FROM_ENV: &str = "LITECLUSTER_RESTORE_FROM";
/// With `spec.bootstrap.recovery.backupId`, while bootstrapping: the backup to restore.
pub const RESTORE_ID_ENV: &str = "LITECLUSTER_RESTORE_ID";
pub const RESTORE_TO_TIME_ENV: &str = "LITECLUSTER_RESTORE_TO_TIME";
pub const ARCHIVE_INTERVAL_ENV: &str = "LITECLUSTER_ARCHIVE_INTERVAL";
pub const ARCHIVE_ID_ENV: &str = "LITECLUSTER_ARCHIVE_ID";
pub const RESTORE_TO_INDEX_ENV: &str = "LITECLUSTER_RESTORE_TO_INDEX";
/// What the template carries only while bootstrapping; the template hash leaves it out.
const BOOTSTRAP_ONLY_ENV: [&str; 5] = [
    BOOTSTRAP_ENV,
    RESTORE_FROM_ENV,
    RESTORE_ID_ENV,
    RESTORE_TO_TIME_ENV,
    RESTORE_TO_INDEX_ENV,
];

pub fn desired_statefulset(c: &SqliteCluster, p: &StatefulSetParams) -> Result<StatefulSet> {
    let ns = c.namespace().unwrap_or_default();
    let host = format!(
        "$(POD_NAME).{}.{ns}.svc.{}",
        Names::headless(c),
        p.cluster_domain
    );
    let mut args = vec![
        format!("--data-dir={DATA_DIR}"),
        format!("--http-addr=0.0.0.0:{HTTP_PORT}"),
        format!("--http-advertise={host}:{HTTP_PORT}"),
        format!("--raft-addr=0.0.0.0:{RAFT_PORT}"),
        format!("--raft-advertise={host}:{RAFT_PORT}"),
        format!(
            "--log-format={}",
            c.spec.log_format.as_deref().unwrap_or("json")
        ),
    ];
    if let Some(s) = &c.spec.snapshot {
        if let Some(t) = s.threshold {
            args.push(format!("--snapshot-threshold={t}"));
        }
        if let Some(t) = s.trailing_logs {
            args.push(format!("--snapshot-trailing-logs={t}"));
        }
    }

    let field = |path: &str| EnvVarSource {
        field_ref: Some(ObjectFieldSelector {
            field_path: path.into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut env = vec![
        EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(field("metadata.name")),
            ..Default::default()
        },
        // The node id is the pod name: ordinal N is Raft id N+1.
        EnvVar {
            name: "LITECLUSTER_NODE_ID".into(),
            value_from: Some(field("metadata.name")),
            ..Default::default()
        },
    ];
    if p.bootstrap {
        env.push(EnvVar {
            name: BOOTSTRAP_ENV.into(),
            value: Some("true".into()),
            ..Default::default()
        });
    }

    let mut mounts = vec![
        VolumeMount {
            name: DATA_VOLUME.into(),
            mount_path: DATA_DIR.into(),
            ..Default::default()
        },
        VolumeMount {
            name: "tmp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        },
    ];
    let mut volumes = vec![Volume {
        name: "tmp".into(),
        empty_dir: Some(Default::default()),
        ..Default::default()
    }];

    if let Some(auth) = &c.spec.auth_secret {
        args.push("--auth=/etc/litecluster/auth/users.json".into());
        volumes.push(secret_volume("auth", &auth.name));
        mounts.push(VolumeMount {
            name: "auth".into(),
            mount_path: "/etc/litecluster/auth".into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if let Some(secret) = c.tls_secret() {
        // One certificate for both ports: members are servers and clients of each other.
        let file = |key: &str| format!("{TLS_DIR}/{key}");
        args.extend([
            format!("--raft-cert={}", file("tls.crt")),
            format!("--raft-key={}", file("tls.key")),
            format!("--raft-ca-cert={}", file("ca.crt")),
        ]);
        if c.api_tls() {
            args.extend([
                format!("--http-cert={}", file("tls.crt")),
                format!("--http-key={}", file("tls.key")),
                format!("--http-ca-cert={}", file("ca.crt")),
            ]);
        }
        volumes.push(secret_volume("tls", secret));
        mounts.push(VolumeMount {
            name: "tls".into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let recovery = c.spec.bootstrap.as_ref().and_then(|b| b.recovery.as_ref());
    if c.spec.backup.is_some() || recovery.is_some() {
        volumes.push(Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: Names::config(c),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "config".into(),
            mount_path: "/etc/litecluster/config".into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    let mut secret_mount = |vol: String, secret: &str, path: String| {
        volumes.push(secret_volume(&vol, secret));
        mounts.push(VolumeMount {
            name: vol,
            mount_path: path,
            read_only: Some(true),
            ..Default::default()
        });
    };
    if let Some(backup) = &c.spec.backup {
        args.push(format!(
            "--backup-config=/etc/litecluster/config/{BACKUP_CONFIG_KEY}"
        ));
        // Env rather than config lines: a member on an older image ignores them (and does not
        // archive) instead of refusing the config. The UID keeps this cluster's archive apart
        // from any other's in the same storages, a later one of the same name included.
        let archive = [
            (ARCHIVE_INTERVAL_ENV, Some(backup.archive_interval.clone())),
            (ARCHIVE_ID_ENV, c.metadata.uid.clone()),
        ];
        for (name, value) in archive {
            if let Some(value) = value {
                env.push(EnvVar {
                    name: name.into(),
                    value: Some(value),
                    ..Default::default()
                });
            }
        }
        for s in &backup.storages {
            secret_mount(
                format!("backup-{}", s.name),
                &s.credentials_secret.name,
                backup_secret_dir(&s.name),
            );
        }
    }
    if let Some(r) = recovery {
        // Mounted for good (the template stays the same after bootstrap); read only by the
        // bootstrapping member, which the env below points at them.
        // Optional: once the cluster exists nothing reads them, so a source Secret deleted later
        // must not keep members from starting. Named by position: a storage name may be 63
        // characters, and so may a volume's.
        for (i, s) in r.storages.iter().enumerate() {
            volumes.push(Volume {
                secret: Some(SecretVolumeSource {
                    optional: Some(true),
                    ..secret_volume("", &s.credentials_secret.name)
                        .secret
                        .unwrap_or_default()
                }),
                ..secret_volume(&format!("recovery-{i}"), &s.credentials_secret.name)
            });
            mounts.push(VolumeMount {
                name: format!("recovery-{i}"),
                mount_path: recovery_secret_dir(&s.name),
                read_only: Some(true),
                ..Default::default()
            });
        }
        if p.bootstrap {
            env.push(EnvVar {
                name: RESTORE_FROM_ENV.into(),
                value: Some(format!("/etc/litecluster/config/{RECOVERY_CONFIG_KEY}")),
                ..Default::default()
            });
            let targets = [
                (RESTORE_ID_ENV, r.backup_id.clone()),
                (RESTORE_TO_TIME_ENV, r.target_time.clone()),
                (RESTORE_TO_INDEX_ENV, r.target_index.map(|i| i.to_string())),
            ];
            for (name, value) in targets {
                if let Some(value) = value {
                    env.push(EnvVar {
                        name: name.into(),
                        value: Some(value),
                        ..Default::default()
                    });
                }
            }
        }
    }

    let probe = |path: &str, failure_threshold: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            // The kubelet does not verify the certificate of an HTTPS probe; it only has to speak TLS.
            scheme: c.api_tls().then(|| "HTTPS".to_string()),
            ..Default::default()
        }),
        period_seconds: Some(5),
        timeout_seconds: Some(3),
        failure_threshold: Some(failure_threshold),
        ..Default::default()
    };

    let container = Container {
        name: CONTAINER.into(),
        image: Some(c.image().to_string()),
        image_pull_policy: c.spec.image_pull_policy.clone(),
        args: Some(args),
        env: Some(env),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                ..Default::default()
            },
            ContainerPort {
                name: Some("raft".into()),
                container_port: RAFT_PORT,
                ..Default::default()
            },
        ]),
        // Ready means: process up, a leader known, store open. Kubernetes routes clients by it.
        readiness_probe: Some(probe("/readyz", 3)),
        // Alive means only that the process answers: losing the leader is no reason to restart.
        liveness_probe: Some(probe("/readyz?noleader", 6)),
        // The API answers only once the member has opened its store, and a member restoring a
        // backup (recovery) downloads and replicates it first: liveness waits for that, up to
        // an hour, instead of killing a restore after half a minute.
        startup_probe: Some(probe("/readyz?noleader", 720)),
        resources: c.spec.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        ..Default::default()
    };

    let overlay = c.spec.pod_template.clone().unwrap_or_default();
    let mut pod_labels = overlay.labels.clone();
    // The role label follows Raft and is set by the operator on each pod; a user's value in
    // the template would put new pods behind the read-only Service before they have any data.
    pod_labels.remove(ROLE_LABEL);
    pod_labels.extend(selector_labels(c));
    let mut annotations = overlay.annotations.clone();
    if let Some(at) = &p.restarted_at {
        annotations.insert(RESTARTED_AT_ANNOTATION.into(), at.clone());
    }
    if let Some(hash) = &p.tls_cert_hash {
        annotations.insert(TLS_CERT_HASH_ANNOTATION.into(), hash.clone());
    }
    if let Some(hashes) = &p.tls_ca_hashes {
        annotations.insert(TLS_CA_HASHES_ANNOTATION.into(), hashes.clone());
    }

    let pod = PodSpec {
        service_account_name: Some(Names::service_account(c)),
        automount_service_account_token: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        // Leaves time for a leader to hand over and the node to shut down cleanly (--shutdown-timeout 10s).
        termination_grace_period_seconds: Some(30),
        containers: vec![container],
        volumes: Some(volumes),
        affinity: Some(
            overlay
                .affinity
                .clone()
                .unwrap_or_else(|| spread_over_nodes(c)),
        ),
        tolerations: (!overlay.tolerations.is_empty()).then(|| overlay.tolerations.clone()),
        node_selector: (!overlay.node_selector.is_empty()).then(|| overlay.node_selector.clone()),
        priority_class_name: overlay.priority_class_name.clone(),
        ..Default::default()
    };

    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(selector_labels(c)),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: c.spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(c.spec.storage.size.clone()),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    Ok(StatefulSet {
        metadata: owned_meta(c, Names::statefulset(c)),
        spec: Some(StatefulSetSpec {
            replicas: Some(p.replicas),
            service_name: Some(Names::headless(c)),
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                ..Default::default()
            }),
            selector: LabelSelector {
                match_labels: Some(selector_labels(c)),
                ..Default::default()
            },
            template: pod_template(pod_labels, annotations, pod)?,
            volume_claim_templates: Some(vec![claim]),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The pod template, annotated with the hash of itself without the bootstrap flag (and the
/// recovery settings that go with it).
///
/// Why: the operator drops `LITECLUSTER_BOOTSTRAP` from the template right after bootstrap,
/// which gives the StatefulSet a new revision while member 0 still runs the old one. The flag
/// only acts on an empty data directory, so restarting member 0 for it would be pointless; the
/// rollout compares this hash as well as the revision and leaves such a pod alone.
fn pod_template(
    labels: BTreeMap<String, String>,
    mut annotations: BTreeMap<String, String>,
    pod: PodSpec,
) -> Result<PodTemplateSpec> {
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels.clone()),
            annotations: (!annotations.is_empty()).then(|| annotations.clone()),
            ..Default::default()
        }),
        spec: Some(pod),
    };
    let mut unflagged = template.clone();
    for c in unflagged
        .spec
        .iter_mut()
        .flat_map(|s| s.containers.iter_mut())
    {
        if let Some(env) = c.env.as_mut() {
            env.retain(|e| !BOOTSTRAP_ONLY_ENV.contains(&e.name.as_str()));
        }
    }
    annotations.insert(TEMPLATE_HASH_ANNOTATION.into(), spec_hash(&unflagged)?);
    if let Some(meta) = template.metadata.as_mut() {
        meta.annotations = Some(annotations);
    }
    Ok(template)
}

fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Prefer one member per node: losing a node then costs at most one vote.
fn spread_over_nodes(c: &SqliteCluster) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        topology_key: "kubernetes.io/hostname".into(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(c)),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                },
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{PodTemplateOverlay, SnapshotSpec};
    use crate::resources::testing::{ClusterExt, cluster};

    fn params(replicas: i32, bootstrap: bool) -> StatefulSetParams {
        StatefulSetParams {
            replicas,
            bootstrap,
            cluster_domain: "cluster.local".into(),
            restarted_at: None,
            tls_cert_hash: None,
            tls_ca_hashes: None,
        }
    }

    fn container(s: &StatefulSet) -> Container {
        s.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .clone()
    }

    fn env(c: &Container, name: &str) -> Option<EnvVar> {
        c.env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == name)
            .cloned()
    }

    #[test]
    fn statefulset_is_driven_by_the_operator() {
        let s = desired_statefulset(&cluster().with_replicas(5), &params(5, false)).unwrap();
        let spec = s.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(5));
        assert_eq!(
            spec.update_strategy.as_ref().unwrap().type_.as_deref(),
            Some("OnDelete")
        );
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(spec.service_name.as_deref(), Some("db-headless"));
        assert_eq!(s.metadata.owner_references.as_ref().unwrap()[0].name, "db");
    }

    #[test]
    fn a_cluster_with_backups_archives_under_its_uid() {
        let mut c = cluster();
        c.metadata.uid = Some("0f1e2d3c".into());
        c.spec.backup = Some(
            serde_json::from_value(serde_json::json!({"storages": [
                {"name": "main", "endpoint": "http://s3", "bucket": "b", "credentialsSecret": {"name": "s3"}}]}))
            .unwrap(),
        );
        let s = desired_statefulset(&c, &params(1, false)).unwrap();
        let k = container(&s);
        assert_eq!(
            env(&k, ARCHIVE_INTERVAL_ENV).unwrap().value.as_deref(),
            Some("5s")
        );
        assert_eq!(
            env(&k, ARCHIVE_ID_ENV).unwrap().value.as_deref(),
            Some("0f1e2d3c")
        );
        let plain = desired_statefulset(&cluster(), &params(1, false)).unwrap();
        assert!(env(&container(&plain), ARCHIVE_INTERVAL_ENV).is_none());
    }

    #[test]
    fn a_recovering_cluster_restores_while_bootstrapping_and_needs_no_restart_after() {
        let mut c = cluster();
        c.spec.bootstrap = Some(
            serde_json::from_value(serde_json::json!({"recovery": {
                "backupId": "b-1",
                "targetTime": "2026-12-02T18:20:38Z",
                "storages": [{"name": "old", "endpoint": "http://s3", "bucket": "b",
                    "credentialsSecret": {"name": "old-s3"}}]}}))
            .unwrap(),
        );
        let boot = desired_statefulset(&c, &params(1, true)).unwrap();
        let after = desired_statefulset(&c, &params(1, false)).unwrap();
        let b = container(&boot);
        assert_eq!(
            env(&b, RESTORE_FROM_ENV).unwrap().value.as_deref(),
            Some("/etc/litecluster/config/recovery.json")
        );
        assert_eq!(
            env(&b, RESTORE_ID_ENV).unwrap().value.as_deref(),
            Some("b-1")
        );
        assert_eq!(
            env(&b, RESTORE_TO_TIME_ENV).unwrap().value.as_deref(),
            Some("2026-12-02T18:20:38Z")
        );
        assert!(env(&b, RESTORE_TO_INDEX_ENV).is_none());
        let a = container(&after);
        assert!(env(&a, RESTORE_FROM_ENV).is_none() && env(&a, RESTORE_ID_ENV).is_none());
        assert!(env(&a, RESTORE_TO_TIME_ENV).is_none());
        // The credentials stay mounted, and member 0 is not restarted for the change.
        for s in [&boot, &after] {
            let mounts = container(s).volume_mounts.unwrap();
            assert!(
                mounts
                    .iter()
                    .any(|m| m.mount_path == "/etc/litecluster/recovery/old")
            );
        }
        let hash = |s: &StatefulSet| {
            s.spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()[TEMPLATE_HASH_ANNOTATION]
                .clone()
        };
        assert_eq!(hash(&boot), hash(&after));
    }

    #[test]
    fn node_identity_and_addresses_come_from_the_pod_name() {
        let c = container(&desired_statefulset(&cluster(), &params(3, false)).unwrap());
        let id = env(&c, "LITECLUSTER_NODE_ID").unwrap();
        assert_eq!(
            id.value_from.unwrap().field_ref.unwrap().field_path,
            "metadata.name"
        );
        let args = c.args.unwrap();
        assert!(args.contains(
            &"--http-advertise=$(POD_NAME).db-headless.ns.svc.cluster.local:4001".to_string()
        ));
        assert!(args.contains(
            &"--raft-advertise=$(POD_NAME).db-headless.ns.svc.cluster.local:4002".to_string()
        ));
        assert!(args.contains(&"--http-addr=0.0.0.0:4001".to_string()));
        assert!(
            !args
                .iter()
                .any(|a| a.starts_with("--join") || a.starts_with("--bootstrap"))
        );
    }

    #[test]
    fn members_log_json_unless_the_spec_says_text() {
        let c = container(&desired_statefulset(&cluster(), &params(3, false)).unwrap());
        assert!(c.args.unwrap().contains(&"--log-format=json".to_string()));
        let mut text = cluster();
        text.spec.log_format = Some("text".into());
        let c = container(&desired_statefulset(&text, &params(3, false)).unwrap());
        let args = c.args.unwrap();
        assert!(args.contains(&"--log-format=text".to_string()), "{args:?}");
        assert_eq!(
            args.iter()
                .filter(|a| a.starts_with("--log-format"))
                .count(),
            1
        );
    }

    #[test]
    fn bootstrap_flag_only_while_bootstrapping() {
        let c = container(&desired_statefulset(&cluster(), &params(1, true)).unwrap());
        assert_eq!(
            env(&c, "LITECLUSTER_BOOTSTRAP").unwrap().value.as_deref(),
            Some("true")
        );
        let c = container(&desired_statefulset(&cluster(), &params(3, false)).unwrap());
        assert!(env(&c, "LITECLUSTER_BOOTSTRAP").is_none());
    }

    #[test]
    fn pods_are_locked_down() {
        let s = desired_statefulset(&cluster(), &params(3, false)).unwrap();
        let pod = s.spec.unwrap().template.spec.unwrap();
        let psc = pod.security_context.unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(65532));
        let sc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(pod.service_account_name.as_deref(), Some("db-node"));
        assert_eq!(pod.automount_service_account_token, Some(false));
    }

    #[test]
    fn probes_use_readyz() {
        let c = container(&desired_statefulset(&cluster(), &params(3, false)).unwrap());
        let path = |p: Option<Probe>| p.unwrap().http_get.unwrap().path.unwrap();
        assert_eq!(path(c.readiness_probe), "/readyz");
        assert_eq!(path(c.liveness_probe), "/readyz?noleader");
        let startup = c.startup_probe.unwrap();
        assert!(startup.failure_threshold.unwrap() * startup.period_seconds.unwrap() >= 3600);
    }

    #[test]
    fn volume_claim_follows_storage_spec() {
        let s = desired_statefulset(
            &cluster().with_storage("5Gi", Some("fast")),
            &params(3, false),
        )
        .unwrap();
        let claim = &s.spec.unwrap().volume_claim_templates.unwrap()[0];
        let spec = claim.spec.clone().unwrap();
        assert_eq!(claim.metadata.name.as_deref(), Some("data"));
        assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            spec.resources.unwrap().requests.unwrap()["storage"],
            Quantity("5Gi".into())
        );
    }

    #[test]
    fn auth_secret_is_mounted_and_passed() {
        let s = desired_statefulset(&cluster().with_auth("db-auth"), &params(3, false)).unwrap();
        let pod = s.spec.unwrap().template.spec.unwrap();
        assert!(
            pod.containers[0]
                .args
                .as_ref()
                .unwrap()
                .contains(&"--auth=/etc/litecluster/auth/users.json".to_string())
        );
        let vol = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "auth")
            .unwrap();
        assert_eq!(vol.secret.unwrap().secret_name.as_deref(), Some("db-auth"));
    }

    #[test]
    fn snapshot_thresholds_and_overlay_are_applied() {
        let mut c = cluster();
        c.spec.snapshot = Some(SnapshotSpec {
            threshold: Some(100),
            trailing_logs: Some(50),
            ..Default::default()
        });
        c.spec.pod_template = Some(PodTemplateOverlay {
            labels: BTreeMap::from([
                ("team".into(), "a".into()),
                ("app.kubernetes.io/instance".into(), "evil".into()),
                ("litecluster.io/role".into(), "learner".into()),
            ]),
            node_selector: BTreeMap::from([("disk".into(), "ssd".into())]),
            ..Default::default()
        });
        let s = desired_statefulset(&c, &params(3, false)).unwrap();
        let tpl = s.spec.unwrap().template;
        let args = tpl.spec.as_ref().unwrap().containers[0]
            .args
            .clone()
            .unwrap();
        assert!(args.contains(&"--snapshot-threshold=100".to_string()));
        assert!(args.contains(&"--snapshot-trailing-logs=50".to_string()));
        let labels = tpl.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["team"], "a");
        assert_eq!(
            labels["app.kubernetes.io/instance"], "db",
            "operator labels win"
        );
        assert!(
            !labels.contains_key("litecluster.io/role"),
            "the role label is set per pod, never by the template"
        );
        assert_eq!(tpl.spec.unwrap().node_selector.unwrap()["disk"], "ssd");
    }

    fn template_annotations(c: &SqliteCluster, p: &StatefulSetParams) -> BTreeMap<String, String> {
        desired_statefulset(c, p)
            .unwrap()
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap()
    }

    #[test]
    fn template_hash_ignores_only_the_bootstrap_flag() {
        let c = cluster();
        let hash =
            |p: &StatefulSetParams| template_annotations(&c, p)[TEMPLATE_HASH_ANNOTATION].clone();
        // Dropping the bootstrap flag (and growing) must not make member 0 look outdated.
        assert_eq!(hash(&params(1, true)), hash(&params(3, false)));
        // Anything else in the template does.
        let restarted = StatefulSetParams {
            restarted_at: Some("2026-01-01T00:00:00Z".into()),
            ..params(3, false)
        };
        assert_ne!(hash(&params(3, false)), hash(&restarted));
        assert_eq!(
            template_annotations(&c, &restarted)[RESTARTED_AT_ANNOTATION],
            "2026-01-01T00:00:00Z"
        );
        let mut img = cluster();
        img.spec.image = Some("example/node:2".into());
        assert_ne!(
            template_annotations(&img, &params(3, false))[TEMPLATE_HASH_ANNOTATION],
            hash(&params(3, false))
        );
    }
}
