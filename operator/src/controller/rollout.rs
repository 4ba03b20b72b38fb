//! Rolling restarts: members whose pod runs an outdated template are replaced one at a time.
//!
//! The StatefulSet uses `OnDelete`, so a new template reaches a member only when the operator
//! deletes its pod; the StatefulSet controller recreates it at the new revision, the volume keeps
//! the data and the member rejoins Raft by itself. `decide` is pure and picks at most one
//! disruptive step per reconcile: learners first (highest ordinal first), then followers, the
//! leader last after handing leadership over. Every step waits until the cluster has a leader,
//! membership is settled, every other voter is healthy, and the member restarted last is back,
//! Ready and caught up. Which members are done is read from the pods' revision labels and the
//! last restart from `status.lastRestart`, so an operator restart resumes a rollout.

use std::cmp::Reverse;
use std::fmt;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use tracing::info;

use super::Context;
use super::membership::{CAUGHT_UP_LAG, Role};
use super::observe::{ObservedCluster, PodTemplateInfo, raft_members};
use crate::crd::{MemberRestart, RolloutStatus, SqliteCluster};
use crate::node_client::NodeApi;
use crate::resources::Names;
use crate::{Error, Result};

/// Why a pod runs an outdated template. The first check that applies names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outdated {
    /// The node image differs.
    ImageChanged { to: String },
    /// The `restartedAt` annotation changed (snapshot remediation asked for a rolling upgrade).
    RestartRequested,
    /// The TLS certificate changed (renewed); the node loads it only at startup.
    CertificateChanged,
    /// The CA bundle in the TLS Secret changed (a CA rotation step).
    CaChanged,
    /// Something else in the pod template changed (resources, overlay, settings, operator version).
    TemplateChanged,
}

impl fmt::Display for Outdated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outdated::ImageChanged { to } => write!(f, "image changed to {to}"),
            Outdated::RestartRequested => write!(f, "rolling restart requested"),
            Outdated::CertificateChanged => write!(f, "TLS certificate renewed"),
            Outdated::CaChanged => write!(f, "TLS CA bundle changed"),
            Outdated::TemplateChanged => write!(f, "pod template changed"),
        }
    }
}

/// Whether `pod` must be replaced to run `target`, and why.
///
/// A pod is outdated when its revision differs from the StatefulSet's update revision *and*
/// its template hash differs too: a pod whose template matches except for the bootstrap flag
/// (member 0 right after bootstrap) keeps running.
pub fn outdated(pod: &PodTemplateInfo, target: &PodTemplateInfo) -> Option<Outdated> {
    let revision = target.revision.as_ref()?;
    if pod.revision.as_ref() == Some(revision) {
        return None;
    }
    if target.template_hash.is_some() && pod.template_hash == target.template_hash {
        return None;
    }
    Some(match (&pod.image, &target.image) {
        (Some(a), Some(b)) if a != b => Outdated::ImageChanged { to: b.clone() },
        _ if pod.restarted_at != target.restarted_at => Outdated::RestartRequested,
        _ if pod.tls_cert_hash != target.tls_cert_hash => Outdated::CertificateChanged,
        _ if pod.tls_ca_hashes != target.tls_ca_hashes => Outdated::CaChanged,
        _ => Outdated::TemplateChanged,
    })
}

/// A member's pod as the rollout needs it.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PodView {
    pub template: PodTemplateInfo,
    pub ready: bool,
    /// Its `/status` answered.
    pub reachable: bool,
    pub applied_index: Option<u64>,
}

impl PodView {
    fn healthy(&self) -> bool {
        self.ready && self.reachable
    }
}

/// One ordinal: its Raft role (if in the configuration) and its pod (if it exists).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct MemberView {
    pub ordinal: u32,
    pub role: Option<Role>,
    pub pod: Option<PodView>,
}

/// Everything `decide` looks at.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct View {
    /// Ordinal of the Raft leader.
    pub leader: Option<u32>,
    pub leader_last_log_index: u64,
    /// Every ordinal with a pod or a Raft membership.
    pub members: Vec<MemberView>,
    /// `spec.replicas`: ordinals beyond it are leaving and are not restarted.
    pub replicas: u32,
    /// `membership::decide` returned Nothing (no membership change under way).
    pub membership_settled: bool,
    /// What pods are created from now; None while the StatefulSet controller catches up.
    pub target: Option<PodTemplateInfo>,
    /// The member restarted last and the UID of the pod that was deleted (`status.lastRestart`).
    pub last_restart: Option<(u32, String)>,
    /// A member to restart whatever its template, and why: snapshot remediation, or a user's
    /// request (`litecluster.io/restart`).
    pub restart_request: Option<(u32, Reason)>,
}

/// Why a member is restarted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    Outdated(Outdated),
    /// Snapshot remediation's restart step.
    Remediation,
    /// Asked for with the `litecluster.io/restart` annotation (`kubectl litecluster restart`).
    Requested,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Outdated(o) => o.fmt(f),
            Reason::Remediation => write!(f, "snapshot remediation"),
            Reason::Requested => write!(f, "restart requested"),
        }
    }
}

/// The next rollout step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to restart and the member restarted last is back.
    UpToDate,
    /// Something should restart but it is not safe yet.
    Wait(String),
    /// The member to restart leads Raft: hand leadership to another voter first.
    TransferLeadership(u32),
    /// Delete this pod (precondition: this UID) so it comes back with the current template.
    Restart {
        ordinal: u32,
        uid: String,
        reason: Reason,
    },
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::UpToDate => write!(f, "every member runs the current template"),
            Decision::Wait(why) => write!(f, "waiting: {why}"),
            Decision::TransferLeadership(o) => {
                write!(
                    f,
                    "moving leadership away from member {o} before its restart"
                )
            }
            Decision::Restart {
                ordinal, reason, ..
            } => write!(f, "restarting member {ordinal} ({reason})"),
        }
    }
}

impl View {
    fn member(&self, ordinal: u32) -> Option<&MemberView> {
        self.members.iter().find(|m| m.ordinal == ordinal)
    }

    /// Whether a rolling restart is under way (or cannot be ruled out): the StatefulSet
    /// controller is behind, pods are outdated, or the member restarted last is not back.
    pub fn active(&self) -> bool {
        self.target.is_none() || !self.outdated().is_empty() || self.previous_not_back().is_some()
    }

    /// Members within `replicas` whose pod is outdated, with the reason.
    pub fn outdated(&self) -> Vec<(&MemberView, Outdated)> {
        let Some(target) = &self.target else {
            return vec![];
        };
        self.members
            .iter()
            .filter(|m| m.ordinal < self.replicas)
            .filter_map(|m| Some((m, outdated(&m.pod.as_ref()?.template, target)?)))
            .collect()
    }

    /// Member pods within `replicas` that run the current template.
    pub fn updated(&self) -> usize {
        let outdated = self.outdated().len();
        self.members
            .iter()
            .filter(|m| m.ordinal < self.replicas && m.pod.is_some())
            .count()
            - outdated
    }

    /// Why the member restarted last is not back yet, if it is not.
    fn previous_not_back(&self) -> Option<String> {
        let (o, old_uid) = self.last_restart.as_ref()?;
        if *o >= self.replicas {
            return None; // scaled away
        }
        let Some(pod) = self.member(*o).and_then(|m| m.pod.as_ref()) else {
            return Some(format!("member {o} (restarted) has no pod yet"));
        };
        if pod.template.uid == *old_uid {
            return Some(format!("member {o} still runs the pod that was deleted"));
        }
        if !pod.ready || !pod.reachable {
            return Some(format!("member {o} (restarted) is not Ready yet"));
        }
        let lag = self
            .leader_last_log_index
            .saturating_sub(pod.applied_index.unwrap_or(0));
        if lag > CAUGHT_UP_LAG {
            return Some(format!(
                "member {o} (restarted) is {lag} entries behind the leader"
            ));
        }
        None
    }
}

/// Decide the next single rollout step.
///
/// Candidates: the member remediation asked for, else outdated members ordered learners (and
/// members not in Raft) first, then followers, then the leader; highest ordinal first within
/// each group, like a scale-down. Gates, in order: the StatefulSet controller knows the
/// template, a Raft leader exists, membership is settled, the member restarted last is back
/// and caught up, every other voter is Ready and answers. The leader is never deleted while
/// leading unless it is the only voter (then a brief outage is unavoidable).
pub fn decide(view: &View) -> Decision {
    let candidate: Option<(u32, Reason)> = match &view.restart_request {
        Some((o, why)) if view.member(*o).is_some_and(|m| m.pod.is_some()) => {
            Some((*o, why.clone()))
        }
        _ => {
            let mut outdated = view.outdated();
            outdated.sort_by_key(|(m, _)| {
                let rank = if Some(m.ordinal) == view.leader {
                    2
                } else if m.role == Some(Role::Voter) {
                    1
                } else {
                    0
                };
                (rank, Reverse(m.ordinal))
            });
            outdated
                .into_iter()
                .next()
                .map(|(m, why)| (m.ordinal, Reason::Outdated(why)))
        }
    };
    let previous = view.previous_not_back();
    let Some((ordinal, reason)) = candidate else {
        if view.target.is_none() {
            // Its status still describes an older template: which pods are outdated is unknown.
            return Decision::Wait(
                "the StatefulSet controller has not caught up with the template".into(),
            );
        }
        return previous.map_or(Decision::UpToDate, Decision::Wait);
    };
    let Some(leader) = view.leader else {
        return Decision::Wait("no Raft leader".into());
    };
    if !view.membership_settled {
        return Decision::Wait("a membership change is under way".into());
    }
    if let Some(why) = previous {
        return Decision::Wait(why);
    }
    let other_voters: Vec<&MemberView> = view
        .members
        .iter()
        .filter(|m| m.role == Some(Role::Voter) && m.ordinal != ordinal)
        .collect();
    if let Some(down) = other_voters
        .iter()
        .find(|v| !v.pod.as_ref().is_some_and(PodView::healthy))
    {
        return Decision::Wait(format!("voter {} is not Ready and reachable", down.ordinal));
    }
    if ordinal == leader && !other_voters.is_empty() {
        return Decision::TransferLeadership(ordinal);
    }
    let uid = view
        .member(ordinal)
        .and_then(|m| m.pod.as_ref())
        .map(|p| p.template.uid.clone())
        .unwrap_or_default();
    Decision::Restart {
        ordinal,
        uid,
        reason,
    }
}

/// The observation reduced to a `View`.
pub fn observed_view(
    cluster: &SqliteCluster,
    observed: &ObservedCluster,
    membership_settled: bool,
    restart_request: Option<(u32, Reason)>,
) -> View {
    let raft = raft_members(cluster, observed).unwrap_or_default();
    let mut ordinals: Vec<u32> = observed
        .pods
        .iter()
        .map(|p| p.ordinal)
        .chain(raft.iter().map(|r| r.0))
        .collect();
    ordinals.sort_unstable();
    ordinals.dedup();
    let members = ordinals
        .into_iter()
        .map(|o| MemberView {
            ordinal: o,
            role: raft.iter().find(|r| r.0 == o).map(|r| r.1),
            pod: observed.pod(o).map(|p| PodView {
                template: p.template.clone(),
                ready: p.ready,
                reachable: p.status.is_ok(),
                applied_index: p.status.as_ref().ok().map(|s| s.store.raft.applied_index),
            }),
        })
        .collect();
    let last_restart = cluster
        .status
        .as_ref()
        .and_then(|s| s.last_restart.as_ref())
        .and_then(|r| {
            Some((
                crate::resources::ordinal_of(cluster, &r.member)?,
                r.pod_uid.clone(),
            ))
        });
    View {
        leader: observed.leader().map(|p| p.ordinal),
        leader_last_log_index: observed
            .leader_status()
            .map_or(0, |s| s.store.raft.last_log_index),
        members,
        replicas: cluster.spec.replicas.max(0) as u32,
        membership_settled,
        target: observed
            .statefulset
            .as_ref()
            .and_then(PodTemplateInfo::of_statefulset),
        last_restart,
        restart_request,
    }
}

/// What a rollout pass decided and did, for the status.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    pub decision: Decision,
    /// New `status.rollout`.
    pub rollout: Option<RolloutStatus>,
    /// New `status.lastRestart`.
    pub last_restart: Option<MemberRestart>,
    /// Member pods that run the current template.
    pub updated: i32,
    /// Pods still to replace.
    pub pending: i32,
    /// The member whose pod was deleted in this pass.
    pub restarted: Option<u32>,
}

/// `status.rollout` after this pass: kept while pods are outdated or the member restarted last
/// is not back; its start time survives while the revision holds.
pub fn rollout_status(
    old: Option<&RolloutStatus>,
    view: &View,
    now: Timestamp,
) -> Option<RolloutStatus> {
    let Some(target) = &view.target else {
        // Blind while the StatefulSet controller catches up: keep what we had.
        return old.cloned();
    };
    let outdated = view.outdated();
    let still_going = !outdated.is_empty() || (old.is_some() && view.previous_not_back().is_some());
    if !still_going {
        return None;
    }
    let revision = target.revision.clone().unwrap_or_default();
    let reason = outdated
        .first()
        .map(|(_, why)| why.to_string())
        .or_else(|| old.map(|o| o.reason.clone()))
        .unwrap_or_default();
    match old {
        Some(o) if o.revision == revision => Some(RolloutStatus {
            reason,
            ..o.clone()
        }),
        _ => Some(RolloutStatus {
            revision,
            reason,
            started_at: Some(Time(now)),
        }),
    }
}

/// Decide and carry out one rollout step; announce starts, restarts and completion. With
/// `blocked` (another disruptive step was taken this pass) it only reports.
pub async fn reconcile_rollout(
    cluster: &SqliteCluster,
    ctx: &Context,
    nodes: &dyn NodeApi,
    observed: &ObservedCluster,
    view: &View,
    blocked: Option<&str>,
    ns: &str,
) -> Result<Outcome> {
    let now = Timestamp::now();
    let status = cluster.status.clone().unwrap_or_default();
    let decision = match (decide(view), blocked) {
        (Decision::TransferLeadership(_) | Decision::Restart { .. }, Some(why)) => {
            Decision::Wait(why.to_string())
        }
        (d, _) => d,
    };
    let rollout = rollout_status(status.rollout.as_ref(), view, now);
    let pending = view.outdated().len() as i32;
    let mut outcome = Outcome {
        decision: decision.clone(),
        rollout: rollout.clone(),
        last_restart: status.last_restart.clone(),
        updated: view.updated() as i32,
        pending,
        restarted: None,
    };
    let name = cluster.name_any();

    match (&status.rollout, &rollout) {
        (old, Some(new)) if old.as_ref().map(|o| &o.revision) != Some(&new.revision) => {
            ctx.publish(
                cluster,
                EventType::Normal,
                "RollingRestart",
                "RollingRestart",
                format!(
                    "{}: restarting {pending} member(s) one at a time onto revision {}, learners first, the leader last",
                    new.reason, new.revision
                ),
            )
            .await;
        }
        (Some(old), None) => {
            ctx.publish(
                cluster,
                EventType::Normal,
                "RolloutComplete",
                "RollingRestart",
                format!(
                    "every member runs revision {} ({})",
                    old.revision, old.reason
                ),
            )
            .await;
        }
        _ => {}
    }

    match &decision {
        Decision::UpToDate | Decision::Wait(_) => {}
        Decision::TransferLeadership(o) => {
            let leader = observed.leader().ok_or_else(|| Error::Node {
                node: Names::pod(cluster, *o),
                url: String::new(),
                what: "leader vanished".into(),
            })?;
            if let Err(e) = nodes.transfer_leadership(&leader.url).await {
                // Nothing was deleted; the next pass looks again (leadership may have moved
                // after all, and then the member restarts as a follower).
                ctx.publish(
                    cluster,
                    EventType::Warning,
                    "LeadershipTransferFailed",
                    "TransferLeadership",
                    format!(
                        "could not move leadership away from {} before restarting it: {e}; will retry",
                        leader.name
                    ),
                )
                .await;
                return Err(e);
            }
            info!(cluster = %name, member = %leader.name, "leadership handed over before restart");
            ctx.publish(
                cluster,
                EventType::Normal,
                "LeadershipTransferred",
                "TransferLeadership",
                format!(
                    "moved leadership away from {} before restarting it",
                    leader.name
                ),
            )
            .await;
        }
        Decision::Restart {
            ordinal,
            uid,
            reason,
        } => {
            let pod = Names::pod(cluster, *ordinal);
            if delete_pod(ctx, ns, &pod, uid).await? {
                info!(cluster = %name, member = %pod, %reason, "member restarted");
                let role = match view.members.iter().find(|m| m.ordinal == *ordinal) {
                    Some(m) if Some(m.ordinal) == view.leader => "the only voter",
                    Some(m) if m.role == Some(Role::Voter) => "follower",
                    Some(m) if m.role == Some(Role::Learner) => "learner",
                    _ => "not in Raft",
                };
                ctx.publish(
                    cluster,
                    EventType::Normal,
                    "MemberRestarted",
                    "Restart",
                    format!("deleted pod {pod} ({role}) so it restarts: {reason}"),
                )
                .await;
                outcome.last_restart = Some(MemberRestart {
                    member: pod,
                    pod_uid: uid.clone(),
                    reason: reason.to_string(),
                    at: Time(now),
                });
                outcome.restarted = Some(*ordinal);
            }
        }
    }
    Ok(outcome)
}

/// Delete the pod if it is still the one with `uid`. False when it is already gone or was
/// replaced meanwhile (our view was stale): then nothing was restarted by us.
async fn delete_pod(ctx: &Context, ns: &str, pod: &str, uid: &str) -> Result<bool> {
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .delete(pod, &params)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => {
            info!(%pod, "pod already gone or replaced; not restarting it");
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: &str = "rev-new";
    const OLD: &str = "rev-old";

    fn target() -> PodTemplateInfo {
        PodTemplateInfo {
            uid: String::new(),
            revision: Some(NEW.into()),
            template_hash: Some("hash-new".into()),
            image: Some("node:2".into()),
            restarted_at: None,
            tls_cert_hash: None,
            tls_ca_hashes: None,
        }
    }

    fn pod_at(ordinal: u32, revision: &str) -> PodView {
        let new = revision == NEW;
        PodView {
            template: PodTemplateInfo {
                uid: format!("uid-{ordinal}-{revision}"),
                revision: Some(revision.into()),
                template_hash: Some(if new { "hash-new" } else { "hash-old" }.into()),
                image: Some(if new { "node:2" } else { "node:1" }.into()),
                restarted_at: None,
                tls_cert_hash: None,
                tls_ca_hashes: None,
            },
            ready: true,
            reachable: true,
            applied_index: Some(1000),
        }
    }

    /// Chainable builder of a rollout view: leader 0, all caught up, membership settled.
    struct Cluster(View);

    fn cluster(replicas: u32) -> Cluster {
        Cluster(View {
            leader: Some(0),
            leader_last_log_index: 1000,
            members: vec![],
            replicas,
            membership_settled: true,
            target: Some(target()),
            last_restart: None,
            restart_request: None,
        })
    }

    impl Cluster {
        fn member(mut self, ordinal: u32, role: Role, revision: &str) -> Self {
            self.0.members.push(MemberView {
                ordinal,
                role: Some(role),
                pod: Some(pod_at(ordinal, revision)),
            });
            self
        }
        fn voter(self, o: u32, rev: &str) -> Self {
            self.member(o, Role::Voter, rev)
        }
        fn learner(self, o: u32, rev: &str) -> Self {
            self.member(o, Role::Learner, rev)
        }
        fn pod(&mut self, o: u32) -> &mut PodView {
            self.0
                .members
                .iter_mut()
                .find(|m| m.ordinal == o)
                .and_then(|m| m.pod.as_mut())
                .unwrap()
        }
        fn leader(mut self, o: u32) -> Self {
            self.0.leader = Some(o);
            self
        }
        fn restarted(mut self, o: u32, old_uid: &str) -> Self {
            self.0.last_restart = Some((o, old_uid.into()));
            self
        }
        fn decide(&self) -> Decision {
            decide(&self.0)
        }
    }

    fn restart(o: u32) -> impl Fn(&Decision) -> bool {
        move |d| matches!(d, Decision::Restart { ordinal, .. } if *ordinal == o)
    }

    #[test]
    fn up_to_date_cluster_does_nothing() {
        let c = cluster(3).voter(0, NEW).voter(1, NEW).voter(2, NEW);
        assert_eq!(c.decide(), Decision::UpToDate);
        assert_eq!(c.0.updated(), 3);
    }

    #[test]
    fn learners_go_first_highest_ordinal_first() {
        let c = cluster(5)
            .voter(0, OLD)
            .voter(1, OLD)
            .voter(2, OLD)
            .learner(3, OLD)
            .learner(4, OLD);
        let d = c.decide();
        assert!(restart(4)(&d), "{d:?}");
        assert_eq!(
            d,
            Decision::Restart {
                ordinal: 4,
                uid: "uid-4-rev-old".into(),
                reason: Reason::Outdated(Outdated::ImageChanged {
                    to: "node:2".into()
                }),
            }
        );
        let c = cluster(5)
            .voter(0, OLD)
            .voter(1, OLD)
            .voter(2, OLD)
            .learner(3, OLD)
            .learner(4, NEW);
        assert!(restart(3)(&c.decide()));
    }

    #[test]
    fn followers_before_the_leader_then_leader_hands_over() {
        let c = cluster(3).voter(0, OLD).voter(1, OLD).voter(2, OLD);
        assert!(restart(2)(&c.decide()));
        let c = cluster(3).voter(0, OLD).voter(1, OLD).voter(2, NEW);
        assert!(restart(1)(&c.decide()));
        // Only the leader is left: it hands over first, and is restarted once it follows.
        let c = cluster(3).voter(0, OLD).voter(1, NEW).voter(2, NEW);
        assert_eq!(c.decide(), Decision::TransferLeadership(0));
        let c = cluster(3)
            .voter(0, OLD)
            .voter(1, NEW)
            .voter(2, NEW)
            .leader(1);
        assert!(restart(0)(&c.decide()));
    }

    #[test]
    fn leader_not_at_ordinal_zero_is_still_last() {
        let c = cluster(3)
            .voter(0, OLD)
            .voter(1, OLD)
            .voter(2, OLD)
            .leader(2);
        assert!(restart(1)(&c.decide()));
    }

    #[test]
    fn only_voter_restarts_without_hand_over() {
        let c = cluster(1).voter(0, OLD);
        assert!(restart(0)(&c.decide()));
    }

    #[test]
    fn every_gate_blocks() {
        let base = || cluster(3).voter(0, OLD).voter(1, OLD).voter(2, OLD);
        // No leader.
        let mut c = base();
        c.0.leader = None;
        assert!(matches!(c.decide(), Decision::Wait(w) if w.contains("leader")));
        // Membership change under way.
        let mut c = base();
        c.0.membership_settled = false;
        assert!(matches!(c.decide(), Decision::Wait(w) if w.contains("membership")));
        // Another voter unreachable, or not Ready.
        let mut c = base();
        c.pod(1).reachable = false;
        assert!(matches!(c.decide(), Decision::Wait(w) if w.contains("voter 1")));
        let mut c = base();
        c.pod(0).ready = false;
        assert!(matches!(c.decide(), Decision::Wait(w) if w.contains("voter 0")));
        // A voter without a pod at all.
        let mut c = base();
        c.0.members[1].pod = None;
        assert!(matches!(c.decide(), Decision::Wait(w) if w.contains("voter 1")));
        // The StatefulSet controller has not caught up with the template.
        let mut c = base();
        c.0.target = None;
        assert!(matches!(c.decide(), Decision::Wait(w) if w.contains("StatefulSet")));
    }

    #[test]
    fn a_broken_outdated_voter_can_be_replaced_while_the_others_are_healthy() {
        // Voter 2 crash-loops on the old template; replacing it is what fixes it.
        let mut c = cluster(3).voter(0, OLD).voter(1, OLD).voter(2, OLD);
        c.pod(2).ready = false;
        c.pod(2).reachable = false;
        assert!(restart(2)(&c.decide()));
    }

    #[test]
    fn waits_for_the_previous_member_to_be_back_ready_and_caught_up() {
        // Member 2 was restarted (old pod uid-2-rev-old); its replacement is at NEW.
        let base = || {
            cluster(3)
                .voter(0, OLD)
                .voter(1, OLD)
                .voter(2, NEW)
                .restarted(2, "uid-2-rev-old")
        };
        let mut c = base();
        c.0.members[2].pod = None;
        assert!(matches!(c.decide(), Decision::Wait(w) if w.contains("member 2")));
        let mut c = base();
        c.pod(2).ready = false;
        assert!(matches!(c.decide(), Decision::Wait(w) if w.contains("not Ready")));
        let mut c = base();
        c.pod(2).applied_index = Some(1000 - CAUGHT_UP_LAG - 1);
        assert!(matches!(c.decide(), Decision::Wait(w) if w.contains("behind")));
        // Still the very pod that was deleted (stale view).
        let mut c = base();
        c.pod(2).template.uid = "uid-2-rev-old".into();
        assert!(matches!(c.decide(), Decision::Wait(w) if w.contains("deleted")));
        // Back and caught up: the next one goes.
        let mut c = base();
        c.pod(2).applied_index = Some(1000 - CAUGHT_UP_LAG);
        assert!(restart(1)(&c.decide()));
    }

    #[test]
    fn rollout_completes_only_when_the_last_member_is_back() {
        let mut c = cluster(3)
            .voter(0, NEW)
            .voter(1, NEW)
            .voter(2, NEW)
            .leader(1)
            .restarted(0, "uid-0-rev-old");
        c.pod(0).ready = false;
        assert!(matches!(c.decide(), Decision::Wait(_)));
        let old = RolloutStatus {
            revision: NEW.into(),
            reason: "image changed".into(),
            started_at: None,
        };
        let now = Timestamp::UNIX_EPOCH;
        assert_eq!(rollout_status(Some(&old), &c.0, now), Some(old.clone()));
        c.pod(0).ready = true;
        assert_eq!(c.decide(), Decision::UpToDate);
        assert_eq!(rollout_status(Some(&old), &c.0, now), None);
    }

    #[test]
    fn resumes_from_pod_labels_and_status_after_an_operator_restart() {
        // A fresh operator sees: 2 and 1 already at NEW (labels), status says 1 was restarted
        // last. It does not start over: it restarts the leader's hand-over next.
        let c = cluster(3)
            .voter(0, OLD)
            .voter(1, NEW)
            .voter(2, NEW)
            .restarted(1, "uid-1-rev-old");
        assert_eq!(c.decide(), Decision::TransferLeadership(0));
        let s = rollout_status(None, &c.0, Timestamp::UNIX_EPOCH).unwrap();
        assert_eq!(s.revision, NEW);
    }

    #[test]
    fn members_beyond_replicas_are_not_restarted() {
        let c = cluster(3)
            .voter(0, NEW)
            .voter(1, NEW)
            .voter(2, NEW)
            .learner(3, OLD);
        assert_eq!(c.decide(), Decision::UpToDate);
    }

    #[test]
    fn bootstrap_flag_removal_does_not_restart_member_zero() {
        // Member 0 was created from the bootstrap template: another revision, same template hash.
        let mut c = cluster(3).voter(0, OLD).voter(1, NEW).voter(2, NEW);
        c.pod(0).template.template_hash = Some("hash-new".into());
        c.pod(0).template.image = Some("node:2".into());
        assert_eq!(c.decide(), Decision::UpToDate);
        assert_eq!(c.0.updated(), 3);
    }

    #[test]
    fn outdated_explains_itself() {
        let t = target();
        let mut p = pod_at(0, OLD).template;
        assert_eq!(
            outdated(&p, &t),
            Some(Outdated::ImageChanged {
                to: "node:2".into()
            })
        );
        p.image = t.image.clone();
        assert_eq!(outdated(&p, &t), Some(Outdated::TemplateChanged));
        p.tls_ca_hashes = Some("ca2".into());
        assert_eq!(outdated(&p, &t), Some(Outdated::CaChanged));
        p.tls_cert_hash = Some("renewed".into());
        assert_eq!(outdated(&p, &t), Some(Outdated::CertificateChanged));
        assert_eq!(
            Outdated::CertificateChanged.to_string(),
            "TLS certificate renewed"
        );
        p.restarted_at = Some("x".into());
        assert_eq!(outdated(&p, &t), Some(Outdated::RestartRequested));
        // Pods from before template hashes existed are judged by revision alone.
        p.template_hash = None;
        assert!(outdated(&p, &t).is_some());
        p.revision = Some(NEW.into());
        assert_eq!(outdated(&p, &t), None);
        // Without an update revision nothing can be judged outdated.
        let blind = PodTemplateInfo {
            revision: None,
            ..target()
        };
        assert_eq!(outdated(&pod_at(0, OLD).template, &blind), None);
    }

    #[test]
    fn remediation_restart_request_uses_the_same_gates_and_hand_over() {
        let mut c = cluster(3).voter(0, NEW).voter(1, NEW).voter(2, NEW);
        c.0.restart_request = Some((1, Reason::Remediation));
        assert_eq!(
            c.decide(),
            Decision::Restart {
                ordinal: 1,
                uid: "uid-1-rev-new".into(),
                reason: Reason::Remediation,
            }
        );
        c.0.restart_request = Some((0, Reason::Remediation));
        assert_eq!(c.decide(), Decision::TransferLeadership(0));
        c.pod(2).reachable = false;
        assert!(matches!(c.decide(), Decision::Wait(w) if w.contains("voter 2")));
    }

    #[test]
    fn a_requested_restart_of_an_up_to_date_member_goes_through_the_same_gates() {
        let mut c = cluster(3).voter(0, NEW).voter(1, NEW).voter(2, NEW);
        assert_eq!(c.decide(), Decision::UpToDate);
        c.0.restart_request = Some((2, Reason::Requested));
        assert_eq!(
            c.decide(),
            Decision::Restart {
                ordinal: 2,
                uid: "uid-2-rev-new".into(),
                reason: Reason::Requested,
            }
        );
        assert_eq!(Reason::Requested.to_string(), "restart requested");
        // The leader hands over first.
        c.0.restart_request = Some((0, Reason::Requested));
        assert_eq!(c.decide(), Decision::TransferLeadership(0));
    }
}
