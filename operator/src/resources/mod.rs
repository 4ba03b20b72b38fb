//! Pure builders of the Kubernetes objects a `SqliteCluster` owns (`desired_*` functions).

pub mod configmap;
pub mod networkpolicy;
pub mod pdb;
pub mod serviceaccount;
pub mod services;
pub mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use serde::Serialize;

use crate::crd::SqliteCluster;
use crate::{Error, Result};

/// HTTP API port of every member.
pub const HTTP_PORT: i32 = 4001;
/// Raft RPC port of every member.
pub const RAFT_PORT: i32 = 4002;
/// Where the member's volume is mounted.
pub const DATA_DIR: &str = "/var/lib/litecluster";

/// Where the TLS Secret (`tls.crt`, `tls.key`, `ca.crt`) is mounted.
pub const TLS_DIR: &str = "/etc/litecluster/tls";

/// Pod-template annotation: hash of the TLS certificate the members must run with.
pub const TLS_CERT_HASH_ANNOTATION: &str = "litecluster.io/tls-cert-hash";
/// Pod-template annotation: hashes of the CAs in the TLS Secret's `ca.crt`, comma-separated
/// (what a member trusts, so a CA change can be judged before members restart onto it).
pub const TLS_CA_HASHES_ANNOTATION: &str = "litecluster.io/tls-ca-hashes";
/// Pod label: the member's Raft role (`voter` or `learner`), kept by the operator.
pub const ROLE_LABEL: &str = "litecluster.io/role";
/// `ROLE_LABEL` value of a voting member.
pub const VOTER: &str = "voter";
/// `ROLE_LABEL` value of a learner (a read replica that follows the log without voting).
pub const LEARNER: &str = "learner";

/// Pod-template annotation: hash of the template without the bootstrap flag. A pod whose value
/// matches the StatefulSet's differs from it at most by that flag, so it needs no restart.
pub const TEMPLATE_HASH_ANNOTATION: &str = "litecluster.io/template-hash";
/// Pod-template annotation whose change restarts every member (snapshot remediation sets it).
pub const RESTARTED_AT_ANNOTATION: &str = "litecluster.io/restartedAt";
/// Label the StatefulSet controller puts on each pod: the revision it was created from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

/// FNV-1a of the object's JSON: stable across Rust releases (unlike `DefaultHasher`).
pub fn spec_hash<T: Serialize>(obj: &T) -> Result<String> {
    let bytes = serde_json::to_vec(obj).map_err(|source| Error::Serialize {
        what: "owned object",
        source,
    })?;
    Ok(bytes_hash(&bytes))
}

/// FNV-1a of raw bytes, as 16 hex digits. Detects change; not a cryptographic digest.
pub fn bytes_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Names of the objects of one cluster.
pub struct Names;

impl Names {
    pub fn headless(c: &SqliteCluster) -> String {
        format!("{}-headless", c.name_any())
    }
    pub fn client(c: &SqliteCluster) -> String {
        c.name_any()
    }
    pub fn readonly(c: &SqliteCluster) -> String {
        format!("{}-readonly", c.name_any())
    }
    pub fn config(c: &SqliteCluster) -> String {
        format!("{}-config", c.name_any())
    }
    pub fn statefulset(c: &SqliteCluster) -> String {
        c.name_any()
    }
    pub fn pdb(c: &SqliteCluster) -> String {
        c.name_any()
    }
    pub fn network_policy(c: &SqliteCluster) -> String {
        c.name_any()
    }
    pub fn service_account(c: &SqliteCluster) -> String {
        format!("{}-node", c.name_any())
    }
    /// Pod (and Raft node id) of the member with this ordinal.
    pub fn pod(c: &SqliteCluster, ordinal: u32) -> String {
        format!("{}-{ordinal}", c.name_any())
    }
}

/// Ordinal of a pod or member name `<cluster>-<n>`, if it belongs to this cluster.
pub fn ordinal_of(c: &SqliteCluster, name: &str) -> Option<u32> {
    let rest = name.strip_prefix(&c.name_any())?.strip_prefix('-')?;
    if rest.is_empty() || rest.starts_with('+') || (rest.len() > 1 && rest.starts_with('0')) {
        return None;
    }
    rest.parse().ok()
}

/// Labels that select the member pods of a cluster.
pub fn selector_labels(c: &SqliteCluster) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "litecluster".to_string(),
        ),
        ("app.kubernetes.io/instance".to_string(), c.name_any()),
    ])
}

/// `selector_labels` as a label-selector string (`k=v,k=v`).
pub fn selector_string(c: &SqliteCluster) -> String {
    selector_labels(c)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels on every object the operator creates for a cluster.
pub fn common_labels(c: &SqliteCluster) -> BTreeMap<String, String> {
    let mut l = selector_labels(c);
    l.insert(
        "app.kubernetes.io/managed-by".into(),
        "litecluster-operator".into(),
    );
    l.insert("app.kubernetes.io/component".into(), "database".into());
    l
}

/// Controller owner reference to the cluster, so deleting it deletes everything it owns.
pub fn owner_ref(c: &SqliteCluster) -> OwnerReference {
    // controller_owner_ref is None only without a uid; a cluster read from the API has one.
    c.controller_owner_ref(&())
        .unwrap_or_else(|| OwnerReference {
            api_version: SqliteCluster::api_version(&()).into_owned(),
            kind: SqliteCluster::kind(&()).into_owned(),
            name: c.name_any(),
            uid: c.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        })
}

/// Metadata of an owned object: name, namespace, labels, owner reference.
pub fn owned_meta(c: &SqliteCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: c.namespace(),
        labels: Some(common_labels(c)),
        owner_references: Some(vec![owner_ref(c)]),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Chainable builder of test clusters: `cluster().with_replicas(5).paused()`.

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use crate::crd::{
        SecretReference, SqliteCluster, SqliteClusterSpec, SqliteClusterStatus, StorageSpec,
    };

    /// A cluster without TLS: the tests of everything else make no certificate requests.
    /// `controller/tests/certificates.rs` covers the default (issued TLS).
    pub fn cluster() -> SqliteCluster {
        let spec: SqliteClusterSpec =
            serde_json::from_str(r#"{"tls": {"enabled": false}}"#).expect("defaults");
        let mut c = SqliteCluster::new("db", spec);
        c.metadata = ObjectMeta {
            name: Some("db".into()),
            namespace: Some("ns".into()),
            uid: Some("uid-1".into()),
            generation: Some(1),
            ..Default::default()
        };
        c
    }

    pub trait ClusterExt {
        fn with_replicas(self, n: i32) -> Self;
        fn with_voters(self, n: i32) -> Self;
        fn with_storage(self, size: &str, class: Option<&str>) -> Self;
        fn with_auth(self, secret: &str) -> Self;
        fn with_tls(self, secret: &str) -> Self;
        fn paused(self) -> Self;
        fn bootstrapped(self) -> Self;
        fn with_status(self, status: SqliteClusterStatus) -> Self;
    }

    impl ClusterExt for SqliteCluster {
        fn with_replicas(mut self, n: i32) -> Self {
            self.spec.replicas = n;
            self
        }
        fn with_voters(mut self, n: i32) -> Self {
            self.spec.voters = n;
            self
        }
        fn with_storage(mut self, size: &str, class: Option<&str>) -> Self {
            self.spec.storage = StorageSpec {
                size: size.into(),
                storage_class_name: class.map(Into::into),
            };
            self
        }
        fn with_auth(mut self, secret: &str) -> Self {
            self.spec.auth_secret = Some(SecretReference {
                name: secret.into(),
            });
            self
        }
        fn with_tls(mut self, secret: &str) -> Self {
            self.spec.tls = Some(crate::crd::TlsSpec {
                secret_name: Some(secret.into()),
                ..Default::default()
            });
            self
        }
        fn paused(mut self) -> Self {
            self.metadata
                .annotations
                .get_or_insert_default()
                .insert(crate::crd::PAUSED_ANNOTATION.into(), "true".into());
            self
        }
        fn bootstrapped(mut self) -> Self {
            self.status.get_or_insert_default().bootstrapped = true;
            self
        }
        fn with_status(mut self, status: SqliteClusterStatus) -> Self {
            self.status = Some(status);
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn ordinals_parse_only_for_this_cluster() {
        let c = cluster();
        assert_eq!(ordinal_of(&c, "db-0"), Some(0));
        assert_eq!(ordinal_of(&c, "db-12"), Some(12));
        assert_eq!(ordinal_of(&c, "db-01"), None);
        assert_eq!(ordinal_of(&c, "dbx-1"), None);
        assert_eq!(ordinal_of(&c, "db-headless"), None);
        assert_eq!(ordinal_of(&c, "db-"), None);
    }

    #[test]
    fn owned_objects_point_at_the_cluster() {
        let m = owned_meta(&cluster(), "x".into());
        let o = &m.owner_references.unwrap()[0];
        assert_eq!(
            (
                o.kind.as_str(),
                o.name.as_str(),
                o.uid.as_str(),
                o.controller
            ),
            ("SqliteCluster", "db", "uid-1", Some(true))
        );
        assert_eq!(m.namespace.as_deref(), Some("ns"));
        assert_eq!(
            selector_string(&cluster()),
            "app.kubernetes.io/instance=db,app.kubernetes.io/name=litecluster"
        );
    }
}
