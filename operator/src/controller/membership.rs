//! Raft membership decisions: given what is wanted and what is seen, the next single change.
//!
//! Pure functions only; `scale.rs` carries the chosen action out. One change per reconcile keeps
//! every step visible and makes a crash between two steps harmless: the next reconcile sees the
//! half-done state and picks the step that repairs it.
//!
//! Roles follow ordinals: members `0..voters` vote, members `voters..replicas` are learners. The
//! StatefulSet removes the highest ordinals first, so scale-down naturally takes learners first.

use std::fmt;

/// Largest lag (in log entries) behind the leader at which a learner counts as caught up.
pub const CAUGHT_UP_LAG: u64 = 100;

/// What the user asked for (after `effective_voters`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desired {
    pub replicas: u32,
    pub voters: u32,
}

/// A member's place in the Raft configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Voter,
    Learner,
}

/// The pod of a member, as the operator reached it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PodState {
    /// Its `/status` answered.
    pub reachable: bool,
    /// Applied index it reported, when reachable.
    pub applied_index: Option<u64>,
}

/// One ordinal: its pod (if any) and its Raft role (if in the configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub ordinal: u32,
    pub pod: Option<PodState>,
    pub role: Option<Role>,
}

impl Member {
    fn healthy(&self) -> bool {
        self.pod.is_some_and(|p| p.reachable)
    }
}

/// Everything the decision needs to know about the running cluster.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Observed {
    /// Ordinal of the Raft leader, when there is one.
    pub leader: Option<u32>,
    /// Last log index of the leader.
    pub leader_last_log_index: u64,
    /// Every ordinal that has a pod or a Raft membership.
    pub members: Vec<Member>,
}

/// Why a member leaves Raft.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoveReason {
    /// Its ordinal is at or beyond `replicas`.
    ScaleDown,
}

/// The next membership change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Add the member as a learner (`POST /join` with `voter: false`).
    AddLearner(u32),
    /// Make a caught-up learner a voter (`POST /join` with `voter: true`).
    Promote(u32),
    /// Turn a voter into a learner. The node has no demote call, so it is removed from Raft and
    /// a later reconcile adds it back as a learner.
    Demote(u32),
    /// Take the member out of Raft before its pod goes away.
    Remove(u32, RemoveReason),
    /// The member to change leads Raft: hand leadership to another voter first.
    TransferLeadership(u32),
    /// A change is needed but is not safe yet.
    Wait(String),
    /// Membership matches the spec.
    Nothing,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::AddLearner(o) => write!(f, "add member {o} as learner"),
            Action::Promote(o) => write!(f, "promote member {o} to voter"),
            Action::Demote(o) => write!(f, "demote member {o} to learner"),
            Action::Remove(o, RemoveReason::ScaleDown) => {
                write!(f, "remove member {o} (scale down)")
            }
            Action::TransferLeadership(o) => write!(f, "move leadership away from member {o}"),
            Action::Wait(why) => write!(f, "waiting: {why}"),
            Action::Nothing => write!(f, "membership up to date"),
        }
    }
}

/// Decide the next single membership change.
///
/// Order: removals beyond `replicas` (learners first, then highest ordinal), demotions of voters
/// beyond `voters`, additions of pods not yet in Raft, promotions of caught-up learners.
/// Shrinking goes first so a scale-down followed by a scale-up never grows quorum needlessly.
pub fn decide(desired: Desired, observed: &Observed) -> Action {
    let Some(leader) = observed.leader else {
        return Action::Wait("no Raft leader".into());
    };
    let members = &observed.members;

    // 1. Members beyond replicas leave Raft, learners first, highest ordinal first.
    let mut leaving: Vec<&Member> = members
        .iter()
        .filter(|m| m.role.is_some() && m.ordinal >= desired.replicas)
        .collect();
    leaving.sort_by_key(|m| (m.role == Some(Role::Voter), std::cmp::Reverse(m.ordinal)));
    if let Some(m) = leaving.first() {
        return remove_safely(
            m,
            leader,
            members,
            Action::Remove(m.ordinal, RemoveReason::ScaleDown),
        );
    }

    // 2. Voters beyond `voters` step down, highest ordinal first.
    let mut demoting: Vec<&Member> = members
        .iter()
        .filter(|m| m.role == Some(Role::Voter) && m.ordinal >= desired.voters)
        .collect();
    demoting.sort_by_key(|m| std::cmp::Reverse(m.ordinal));
    if let Some(m) = demoting.first() {
        return remove_safely(m, leader, members, Action::Demote(m.ordinal));
    }

    // 3. Pods within replicas that are not in Raft join as learners, lowest ordinal first.
    if let Some(m) = members
        .iter()
        .filter(|m| m.role.is_none() && m.ordinal < desired.replicas && m.healthy())
        .min_by_key(|m| m.ordinal)
    {
        return Action::AddLearner(m.ordinal);
    }

    // 4. Learners within voters become voters once caught up and while every voter is healthy.
    let promotable = members
        .iter()
        .filter(|m| m.role == Some(Role::Learner) && m.ordinal < desired.voters)
        .min_by_key(|m| m.ordinal);
    if let Some(m) = promotable {
        let Some(pod) = m.pod.filter(|p| p.reachable) else {
            return Action::Wait(format!(
                "member {} must be reachable before promotion",
                m.ordinal
            ));
        };
        let lag = observed
            .leader_last_log_index
            .saturating_sub(pod.applied_index.unwrap_or(0));
        if lag > CAUGHT_UP_LAG {
            return Action::Wait(format!(
                "member {} is {lag} entries behind the leader",
                m.ordinal
            ));
        }
        if let Some(down) = members
            .iter()
            .find(|v| v.role == Some(Role::Voter) && !v.healthy())
        {
            return Action::Wait(format!(
                "voter {} is unreachable; not changing quorum",
                down.ordinal
            ));
        }
        return Action::Promote(m.ordinal);
    }

    // Pods that should join but are not up yet.
    if let Some(m) = members
        .iter()
        .find(|m| m.role.is_none() && m.ordinal < desired.replicas)
    {
        return Action::Wait(format!("member {} is not reachable yet", m.ordinal));
    }
    let in_raft = members.iter().filter(|m| m.role.is_some()).count() as u32;
    if in_raft < desired.replicas {
        return Action::Wait(format!("{in_raft} of {} members exist", desired.replicas));
    }
    Action::Nothing
}

/// `action` for member `m` when that keeps quorum; otherwise a leadership transfer or a wait.
fn remove_safely(m: &Member, leader: u32, members: &[Member], action: Action) -> Action {
    if m.role != Some(Role::Voter) {
        return action;
    }
    let remaining: Vec<&Member> = members
        .iter()
        .filter(|v| v.role == Some(Role::Voter) && v.ordinal != m.ordinal)
        .collect();
    if remaining.is_empty() {
        return Action::Wait(format!("member {} is the last voter", m.ordinal));
    }
    let healthy = remaining.iter().filter(|v| v.healthy()).count();
    if healthy * 2 <= remaining.len() {
        return Action::Wait(format!(
            "removing voter {} would leave {healthy} of {} voters healthy",
            m.ordinal,
            remaining.len()
        ));
    }
    if m.ordinal == leader {
        return Action::TransferLeadership(m.ordinal);
    }
    action
}

/// Replicas the StatefulSet should have. It only shrinks below the highest Raft member once that
/// member is out of Raft (remove from Raft before the pod goes). Without a view of Raft
/// (`raft_ordinals` is None) it may grow but never shrinks.
pub fn statefulset_replicas(
    desired: u32,
    current: Option<u32>,
    raft_ordinals: Option<&[u32]>,
) -> u32 {
    match raft_ordinals {
        Some(ords) => ords.iter().map(|o| o + 1).max().unwrap_or(0).max(desired),
        None => current.unwrap_or(desired).max(desired),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chainable builder of an observed cluster.
    #[derive(Default)]
    struct Cluster(Observed);

    fn cluster() -> Cluster {
        Cluster(Observed {
            leader: Some(0),
            leader_last_log_index: 1000,
            members: vec![],
        })
    }

    impl Cluster {
        fn with(mut self, ordinal: u32, pod: Option<PodState>, role: Option<Role>) -> Self {
            self.0.members.push(Member { ordinal, pod, role });
            self
        }
        /// Running pod, caught up, voting.
        fn voter(self, o: u32) -> Self {
            self.with(o, Some(up(1000)), Some(Role::Voter))
        }
        fn learner(self, o: u32) -> Self {
            self.with(o, Some(up(1000)), Some(Role::Learner))
        }
        /// Running pod that is not in Raft.
        fn pod_only(self, o: u32) -> Self {
            self.with(o, Some(up(0)), None)
        }
        fn leader(mut self, o: Option<u32>) -> Self {
            self.0.leader = o;
            self
        }
        fn decide(&self, replicas: u32, voters: u32) -> Action {
            decide(Desired { replicas, voters }, &self.0)
        }
    }

    fn up(applied: u64) -> PodState {
        PodState {
            reachable: true,
            applied_index: Some(applied),
        }
    }
    fn down() -> PodState {
        PodState {
            reachable: false,
            applied_index: None,
        }
    }

    #[test]
    fn steady_state_does_nothing() {
        assert_eq!(
            cluster().voter(0).voter(1).voter(2).decide(3, 3),
            Action::Nothing
        );
        assert_eq!(
            cluster().voter(0).voter(1).voter(2).learner(3).decide(4, 3),
            Action::Nothing
        );
    }

    #[test]
    fn no_leader_waits() {
        assert!(matches!(
            cluster().voter(0).leader(None).decide(3, 3),
            Action::Wait(_)
        ));
    }

    #[test]
    fn scale_up_adds_learners_one_at_a_time_lowest_first() {
        let c = cluster().voter(0).pod_only(2).pod_only(1);
        assert_eq!(c.decide(3, 3), Action::AddLearner(1));
    }

    #[test]
    fn scale_up_promotes_caught_up_learner_within_voters() {
        assert_eq!(
            cluster().voter(0).learner(1).pod_only(2).decide(3, 3),
            Action::AddLearner(2)
        );
        assert_eq!(
            cluster().voter(0).learner(1).learner(2).decide(3, 3),
            Action::Promote(1)
        );
        assert_eq!(
            cluster().voter(0).voter(1).learner(2).decide(3, 3),
            Action::Promote(2)
        );
    }

    #[test]
    fn members_beyond_voters_stay_learners() {
        assert_eq!(
            cluster()
                .voter(0)
                .voter(1)
                .voter(2)
                .learner(3)
                .learner(4)
                .decide(5, 3),
            Action::Nothing
        );
    }

    #[test]
    fn lagging_learner_is_not_promoted() {
        let c = cluster()
            .voter(0)
            .with(1, Some(up(10)), Some(Role::Learner));
        assert!(matches!(c.decide(3, 3), Action::Wait(w) if w.contains("behind")));
    }

    #[test]
    fn no_promotion_while_a_voter_is_down() {
        let c = cluster()
            .voter(0)
            .with(1, Some(down()), Some(Role::Voter))
            .voter(2)
            .learner(3)
            .learner(4);
        // 5 voters wanted: promoting 3 would change quorum while voter 1 is unreachable.
        assert!(matches!(c.decide(5, 5), Action::Wait(w) if w.contains("voter 1")));
    }

    #[test]
    fn scale_down_removes_learners_first_then_highest_voter() {
        let c = cluster().voter(0).voter(1).voter(2).learner(3).learner(4);
        assert_eq!(c.decide(1, 1), Action::Remove(4, RemoveReason::ScaleDown));
        let c = cluster().voter(0).voter(1).voter(2).learner(3);
        assert_eq!(c.decide(1, 1), Action::Remove(3, RemoveReason::ScaleDown));
        let c = cluster().voter(0).voter(1).voter(2);
        assert_eq!(c.decide(1, 1), Action::Remove(2, RemoveReason::ScaleDown));
    }

    #[test]
    fn scale_down_moves_leadership_before_removing_leader() {
        let c = cluster().voter(0).voter(1).voter(2).leader(Some(2));
        assert_eq!(c.decide(2, 1), Action::TransferLeadership(2));
    }

    #[test]
    fn voter_removal_that_would_lose_quorum_waits() {
        // Voters 0,1,2; 1 is down; removing healthy 2 would leave {0 up, 1 down}: no majority.
        let c = cluster()
            .voter(0)
            .with(1, Some(down()), Some(Role::Voter))
            .voter(2);
        assert!(matches!(c.decide(2, 1), Action::Wait(_)));
    }

    #[test]
    fn removing_an_unreachable_voter_is_allowed() {
        // Voters 0,1,2 with 2 down and beyond replicas: removing it leaves {0,1} both healthy.
        let c = cluster()
            .voter(0)
            .voter(1)
            .with(2, Some(down()), Some(Role::Voter));
        assert_eq!(c.decide(2, 1), Action::Remove(2, RemoveReason::ScaleDown));
    }

    #[test]
    fn lowering_voters_demotes_highest_voter() {
        let c = cluster().voter(0).voter(1).voter(2);
        assert_eq!(c.decide(3, 1), Action::Demote(2));
    }

    #[test]
    fn last_voter_is_never_removed() {
        let c = cluster().voter(0).leader(Some(0));
        assert_eq!(c.decide(1, 1), Action::Nothing);
        // Even if somehow asked to shrink below it.
        assert!(matches!(c.decide(0, 1), Action::Wait(w) if w.contains("last voter")));
    }

    // Crash-in-the-middle repairs.

    #[test]
    fn crash_after_add_learner_before_promote_promotes() {
        assert_eq!(cluster().voter(0).learner(1).decide(2, 1), Action::Nothing);
        assert_eq!(
            cluster().voter(0).learner(1).voter(2).decide(3, 3),
            Action::Promote(1)
        );
    }

    #[test]
    fn crash_after_raft_removal_before_pod_deletion_does_not_readd() {
        // Member 2 already removed from Raft; its pod still runs because the StatefulSet was
        // not shrunk yet. It must not be re-added.
        let c = cluster().voter(0).voter(1).voter(2).pod_only(3);
        assert_eq!(c.decide(3, 3), Action::Nothing);
        assert_eq!(statefulset_replicas(3, Some(4), Some(&[0, 1, 2])), 3);
    }

    #[test]
    fn member_in_raft_without_pod_beyond_replicas_is_removed() {
        // The pod was deleted (e.g. StatefulSet shrunk by hand) while the member stayed in Raft.
        let c = cluster()
            .voter(0)
            .voter(1)
            .voter(2)
            .with(3, None, Some(Role::Learner));
        assert_eq!(c.decide(3, 3), Action::Remove(3, RemoveReason::ScaleDown));
    }

    #[test]
    fn member_in_raft_whose_pod_is_being_recreated_is_kept() {
        // Pod 1 is gone (rescheduling) but within replicas: wait for it, never remove it.
        let c = cluster().voter(0).with(1, None, Some(Role::Voter)).voter(2);
        assert_eq!(c.decide(3, 3), Action::Nothing);
    }

    #[test]
    fn crash_during_demotion_readds_as_learner() {
        // Demote(2) removed voter 2 from Raft; the crash happened before it was re-added.
        let c = cluster().voter(0).pod_only(2).voter(1);
        assert_eq!(c.decide(3, 1), Action::Demote(1));
        let c = cluster().voter(0).pod_only(1).pod_only(2);
        assert_eq!(c.decide(3, 1), Action::AddLearner(1));
    }

    #[test]
    fn pod_not_in_raft_and_unreachable_waits() {
        let c = cluster().voter(0).with(1, Some(down()), None);
        assert!(matches!(c.decide(2, 1), Action::Wait(w) if w.contains("member 1")));
    }

    #[test]
    fn statefulset_shrinks_only_after_raft_removal() {
        assert_eq!(statefulset_replicas(1, Some(3), Some(&[0, 1, 2])), 3);
        assert_eq!(statefulset_replicas(1, Some(3), Some(&[0, 1])), 2);
        assert_eq!(statefulset_replicas(1, Some(3), Some(&[0])), 1);
        assert_eq!(statefulset_replicas(5, Some(3), Some(&[0, 1, 2])), 5);
        // Blind: grow, never shrink.
        assert_eq!(statefulset_replicas(1, Some(3), None), 3);
        assert_eq!(statefulset_replicas(4, Some(3), None), 4);
        assert_eq!(statefulset_replicas(2, None, None), 2);
    }
}
