//! Keeps each member pod's `litecluster.io/role` label equal to its role in Raft.
//!
//! The label is what lets Kubernetes objects tell voters from learners: the read-only Service
//! selects learners by it. Roles come from the leader's Raft configuration; without a leader the
//! labels stay as they are (a partial view must not relabel anyone). A pod is patched only when
//! its label differs, so a settled cluster causes no writes.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::info;

use super::membership::Role;
use super::observe::{ObservedCluster, ObservedPod, raft_members};
use super::{Context, MANAGER};
use crate::Result;
use crate::crd::SqliteCluster;
use crate::resources::{LEARNER, ROLE_LABEL, VOTER};

/// The label value of each pod: its Raft role, or None when it is not in the configuration
/// (it has not been added yet, or was removed). Without a leader: the labels as they are.
pub fn desired_roles<'a>(
    cluster: &SqliteCluster,
    observed: &'a ObservedCluster,
) -> Vec<(&'a ObservedPod, Option<&'static str>)> {
    let raft = raft_members(cluster, observed);
    observed
        .pods
        .iter()
        .map(|p| {
            let role = match &raft {
                Some(members) => members
                    .iter()
                    .find(|m| m.0 == p.ordinal)
                    .map(|m| match m.1 {
                        Role::Voter => VOTER,
                        Role::Learner => LEARNER,
                    }),
                None => match p.role_label.as_deref() {
                    Some(VOTER) => Some(VOTER),
                    Some(LEARNER) => Some(LEARNER),
                    _ => None,
                },
            };
            (p, role)
        })
        .collect()
}

/// Pods whose label must change, with the value it must get (None: remove it).
pub fn label_changes<'a>(
    cluster: &SqliteCluster,
    observed: &'a ObservedCluster,
) -> Vec<(&'a ObservedPod, Option<&'static str>)> {
    desired_roles(cluster, observed)
        .into_iter()
        .filter(|(p, role)| p.role_label.as_deref() != *role)
        .collect()
}

/// Whether the read-only Service should narrow to read replicas: some member at an ordinal in
/// `voters..replicas` is a learner in Raft, already carries the learner label and is Ready.
/// Each condition keeps the Service from selecting no ready pod: a learner on its way to
/// promotion (scale-up adds members as learners first) stops being one; one that is not
/// labelled yet would not be selected (labels are patched in this pass, the Service narrows in
/// the next); one that is restarting or still catching up would serve nothing; one beyond
/// `replicas` is leaving. When none is left, the Service widens at once, before any label moves.
pub fn read_replicas(cluster: &SqliteCluster, observed: &ObservedCluster) -> bool {
    let voters = cluster.effective_voters().max(0) as u32;
    let replicas = cluster.spec.replicas.max(0) as u32;
    desired_roles(cluster, observed).iter().any(|(p, role)| {
        *role == Some(LEARNER)
            && p.role_label.as_deref() == Some(LEARNER)
            && p.ready
            && (voters..replicas).contains(&p.ordinal)
    })
}

/// Patch the role label of every pod whose label differs from its Raft role.
pub async fn reconcile_role_labels(
    cluster: &SqliteCluster,
    ctx: &Context,
    observed: &ObservedCluster,
    ns: &str,
) -> Result<()> {
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), ns);
    for (pod, role) in label_changes(cluster, observed) {
        // A merge patch, not an apply: it also removes a label someone else set. The UID makes
        // it fail rather than label a pod that replaced the one we judged.
        let patch = json!({"metadata": {"uid": pod.template.uid, "labels": {ROLE_LABEL: role}}});
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        match pods.patch(&pod.name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {}
            // The pod went away or was replaced since we looked: the next pass sees its successor.
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                info!(cluster = %cluster.name_any(), pod = %pod.name, code = e.code, "role label skipped: the pod changed");
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        info!(cluster = %cluster.name_any(), pod = %pod.name, role = role.unwrap_or("none"), "role label set");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::observe::PodTemplateInfo;
    use crate::node_client::{NodeStatus, RaftMember};
    use crate::resources::testing::{ClusterExt, cluster};

    /// Pods `0..n` with these live labels; ordinal 0 leads and reports `voters` and `learners`
    /// as its configuration (no leader at all when `leader` is false).
    fn observed(
        labels: &[Option<&str>],
        voters: &[u32],
        learners: &[u32],
        leader: bool,
    ) -> ObservedCluster {
        let members: Vec<RaftMember> = voters
            .iter()
            .map(|&o| (o, true))
            .chain(learners.iter().map(|&o| (o, false)))
            .map(|(o, voter)| RaftMember {
                id: format!("db-{o}"),
                voter,
                ..Default::default()
            })
            .collect();
        let pods = labels
            .iter()
            .enumerate()
            .map(|(o, label)| {
                let mut status = NodeStatus::default();
                if o == 0 && leader {
                    status.store.raft.state = "Leader".into();
                    status.store.members = members.clone();
                }
                ObservedPod {
                    name: format!("db-{o}"),
                    ordinal: o as u32,
                    ready: true,
                    url: String::new(),
                    ip: None,
                    role_label: label.map(String::from),
                    status: Ok(status),
                    template: PodTemplateInfo::default(),
                }
            })
            .collect();
        ObservedCluster {
            pods,
            ..Default::default()
        }
    }

    fn changes(o: &ObservedCluster) -> Vec<(String, Option<&'static str>)> {
        label_changes(&cluster().with_replicas(5), o)
            .into_iter()
            .map(|(p, r)| (p.name.clone(), r))
            .collect()
    }

    #[test]
    fn labels_follow_raft_roles_and_only_changes_are_patched() {
        // 0 and 1 already right, 2 unlabelled voter, 3 mislabelled learner, 4 not in Raft but labelled.
        let o = observed(
            &[
                Some("voter"),
                Some("voter"),
                None,
                Some("voter"),
                Some("learner"),
            ],
            &[0, 1, 2],
            &[3],
            true,
        );
        assert_eq!(
            changes(&o),
            [
                ("db-2".to_string(), Some("voter")),
                ("db-3".to_string(), Some("learner")),
                ("db-4".to_string(), None),
            ]
        );
    }

    #[test]
    fn settled_labels_need_no_patch() {
        let o = observed(
            &[
                Some("voter"),
                Some("voter"),
                Some("voter"),
                Some("learner"),
                None,
            ],
            &[0, 1, 2],
            &[3],
            true,
        );
        assert!(changes(&o).is_empty());
    }

    #[test]
    fn without_a_leader_labels_stay_as_they_are() {
        let o = observed(&[Some("voter"), None, Some("learner")], &[], &[], false);
        assert!(changes(&o).is_empty());
        assert!(read_replicas(
            &cluster().with_replicas(3).with_voters(1),
            &o
        ));
    }

    #[test]
    fn read_replicas_are_ready_labelled_learners_beyond_the_voter_count() {
        let c = cluster().with_replicas(4).with_voters(3);
        let labels = [Some("voter"), Some("voter"), Some("voter"), Some("learner")];
        // db-3 is a labelled, ready learner that stays one.
        let o = observed(&labels, &[0, 1, 2], &[3], true);
        assert!(read_replicas(&c, &o));
        // Not labelled yet: this pass labels it, the Service narrows in the next one.
        let unlabelled = [Some("voter"), Some("voter"), Some("voter"), None];
        let o = observed(&unlabelled, &[0, 1, 2], &[3], true);
        assert!(!read_replicas(&c, &o));
        // Restarting or catching up: not Ready, so the Service keeps every member.
        let mut o = observed(&labels, &[0, 1, 2], &[3], true);
        o.pods[3].ready = false;
        assert!(!read_replicas(&c, &o));
        // Scaling down to 3: db-3 is leaving, though Raft still lists it.
        let o = observed(&labels, &[0, 1, 2], &[3], true);
        assert!(!read_replicas(
            &cluster().with_replicas(3).with_voters(3),
            &o
        ));
        // Scaling up to three voters: db-1 is a learner only until it is promoted.
        let c = cluster().with_replicas(3).with_voters(3);
        let o = observed(&[Some("voter"), Some("learner"), None], &[0], &[1], true);
        assert!(!read_replicas(&c, &o));
        // Only voters.
        let o = observed(&[Some("voter"); 3], &[0, 1, 2], &[], true);
        assert!(!read_replicas(&c, &o));
    }
}
