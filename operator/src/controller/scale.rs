//! Carries out one membership decision against the nodes and says so with an Event.

use kube::ResourceExt;
use kube::runtime::events::EventType;
use tracing::info;

use super::Context;
use super::membership::Action;
use super::observe::ObservedCluster;
use crate::crd::SqliteCluster;
use crate::node_client::{JoinRequest, NodeApi};
use crate::resources::Names;
use crate::{Error, Result};

/// Execute `action` through the leader. Waiting and settled states change nothing.
pub async fn reconcile_membership(
    cluster: &SqliteCluster,
    ctx: &Context,
    nodes: &dyn NodeApi,
    observed: &ObservedCluster,
    action: &Action,
) -> Result<()> {
    let (Some(leader), Some(_)) = (observed.leader(), observed.leader_status()) else {
        return Ok(());
    };
    let leader_url = leader.url.as_str();
    let name = |o: u32| Names::pod(cluster, o);
    match action {
        Action::Nothing | Action::Wait(_) => return Ok(()),
        Action::AddLearner(o) | Action::Promote(o) => {
            let voter = matches!(action, Action::Promote(_));
            let req = join_request(cluster, observed, *o, voter)?;
            nodes.join(leader_url, &req).await?;
            let (reason, verb) = if voter {
                ("MemberPromoted", "Promote")
            } else {
                ("MemberAdded", "AddLearner")
            };
            ctx.publish(
                cluster,
                EventType::Normal,
                reason,
                verb,
                format!("{action} ({})", req.id),
            )
            .await;
        }
        Action::Demote(o) => {
            // No demote call on the node: remove now, the next reconcile adds it back as a learner.
            nodes.remove(leader_url, &name(*o)).await?;
            ctx.publish(
                cluster,
                EventType::Normal,
                "MemberDemoted",
                "Demote",
                format!("{action}: removed from Raft, rejoins as learner"),
            )
            .await;
        }
        Action::Remove(o, _) => {
            nodes.remove(leader_url, &name(*o)).await?;
            ctx.publish(
                cluster,
                EventType::Normal,
                "ScaleDown",
                "Remove",
                format!("{action}: removed from Raft before its pod goes"),
            )
            .await;
        }
        Action::TransferLeadership(o) => {
            nodes.transfer_leadership(leader_url).await?;
            ctx.publish(
                cluster,
                EventType::Normal,
                "LeadershipTransferred",
                "TransferLeadership",
                format!("{action} ({})", name(*o)),
            )
            .await;
        }
    }
    info!(cluster = %cluster.name_any(), %action, "membership changed");
    Ok(())
}

/// Join body for member `o`, with the addresses its own node advertises.
fn join_request(
    cluster: &SqliteCluster,
    observed: &ObservedCluster,
    o: u32,
    voter: bool,
) -> Result<JoinRequest> {
    let pod = observed.pod(o).ok_or_else(|| Error::Node {
        node: Names::pod(cluster, o),
        url: String::new(),
        what: "pod vanished".into(),
    })?;
    let status = pod.status.as_ref().map_err(|e| Error::Node {
        node: pod.name.clone(),
        url: pod.url.clone(),
        what: e.clone(),
    })?;
    Ok(JoinRequest {
        id: pod.name.clone(),
        raft_addr: status.node.raft_addr.clone(),
        api_addr: status.node.api_addr.clone(),
        voter,
    })
}
