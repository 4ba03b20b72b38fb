//! The disruptive half of a reconcile: snapshot remediation, then the rolling restart, at most
//! one step per pass and none while something else is changing.

use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;

use super::{Context, create, membership, observe, remediation, rollout, status};
use crate::Result;
use crate::crd::{RemediationStatus, SqliteCluster};
use crate::node_client::NodeApi;

/// What the rollout and remediation pass decided, for the status.
#[derive(Clone, Debug, PartialEq)]
pub struct Maintenance {
    pub rollout: rollout::Outcome,
    /// New `status.remediation`.
    pub remediation: Option<RemediationStatus>,
}

impl Maintenance {
    /// Whether something is under way that the next reconcile should look at soon.
    pub(super) fn busy(&self) -> bool {
        self.rollout.rollout.is_some()
            || !matches!(self.rollout.decision, rollout::Decision::UpToDate)
    }
}

/// Snapshot remediation, then the rollout: at most one disruptive step per pass, none while a
/// membership change is under way or the StatefulSet was just rewritten (its status would
/// still describe the old template).
pub(super) async fn maintain(
    cluster: &SqliteCluster,
    ctx: &Context,
    nodes: &dyn NodeApi,
    observed: &observe::ObservedCluster,
    action: &membership::Action,
    sts_written: bool,
    ns: &str,
) -> Result<Maintenance> {
    let settled = matches!(action, membership::Action::Nothing);
    // Any restart loads the Secret as it is now, so an unusable certificate or an unsafe CA
    // change holds every disruptive step back, remediation included.
    let tls_block = observed
        .tls
        .as_ref()
        .and_then(|t| t.unsafe_change.as_deref());
    if let Some(why) = tls_block {
        report_tls_block(cluster, ctx, why).await;
    }
    let blocked = if !settled {
        Some("a membership change is under way")
    } else if sts_written {
        Some("the StatefulSet was just updated")
    } else if tls_block.is_some() {
        Some("the TLS Secret is not safe to restart onto (see the Degraded condition)")
    } else {
        None
    };
    let old_state = cluster.status.as_ref().and_then(|s| s.remediation.clone());
    let rollout_active = rollout::observed_view(cluster, observed, settled, None).active();
    let input = remediation::observed_input(cluster, observed, rollout_active, Timestamp::now());
    let remedy = match blocked {
        None => {
            Some(remediation::reconcile_remediation(cluster, ctx, nodes, observed, &input).await?)
        }
        Some(_) => None,
    };
    let mut state = remedy.as_ref().map_or(old_state, |r| r.state.clone());
    if let Some(at) = remedy.as_ref().and_then(|r| r.restart_all_at.clone()) {
        // The RollingUpgrade step: a new restartedAt annotation gives every pod a new revision.
        create::ensure_statefulset(cluster, ctx, observed, true, Some(at), ns).await?;
    }
    let switched = switchover(cluster, ctx, nodes, observed, ns, blocked).await?;
    let remediation_request = remedy.as_ref().and_then(|r| r.restart_request);
    let user_request = requested_restart(cluster, ctx, observed, ns).await?;
    let restart_request = remediation_request
        .map(|o| (o, rollout::Reason::Remediation))
        .or(user_request.map(|o| (o, rollout::Reason::Requested)));
    let view = rollout::observed_view(cluster, observed, settled, restart_request);
    let blocked = blocked
        .or(remedy
            .as_ref()
            .is_some_and(|r| r.acted)
            .then_some("a remediation step was taken this pass"))
        .or(switched.then_some("leadership was just handed over"));
    let rollout =
        rollout::reconcile_rollout(cluster, ctx, nodes, observed, &view, blocked, ns).await?;
    if let (Some(wanted), Some(done)) = (remediation_request, rollout.restarted)
        && wanted == done
    {
        state = Some(remediation::restarted(cluster, &input, done));
    }
    if let (Some(wanted), Some(done)) = (user_request, rollout.restarted)
        && wanted == done
        && remediation_request.is_none()
    {
        clear_restart_request(cluster, ctx, ns).await?;
    }
    Ok(Maintenance {
        rollout,
        remediation: state,
    })
}

/// A Warning Event when the TLS Secret starts blocking restarts (not again while it does).
async fn report_tls_block(cluster: &SqliteCluster, ctx: &Context, why: &str) {
    let already = cluster.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Degraded" && c.reason == status::TLS_CHANGE_UNSAFE)
    });
    if !already {
        let note = format!("member restarts held back: {why}");
        ctx.publish(
            cluster,
            EventType::Warning,
            "TlsChangeUnsafe",
            "Restart",
            note,
        )
        .await;
    }
}

/// The member `litecluster.io/restart` names, if it is one of this cluster's. Any other value
/// gets a Warning Event and is cleared, so it cannot linger.
async fn requested_restart(
    cluster: &SqliteCluster,
    ctx: &Context,
    observed: &observe::ObservedCluster,
    ns: &str,
) -> Result<Option<u32>> {
    let Some(member) = cluster.restart_request() else {
        return Ok(None);
    };
    match crate::resources::ordinal_of(cluster, member) {
        Some(o) if observed.pod(o).is_some() => Ok(Some(o)),
        _ => {
            ctx.publish(
                cluster,
                EventType::Warning,
                "RestartRequestInvalid",
                "Restart",
                format!(
                    "{}={member:?} names no member of this cluster; cleared",
                    crate::crd::RESTART_ANNOTATION
                ),
            )
            .await;
            clear_restart_request(cluster, ctx, ns).await?;
            Ok(None)
        }
    }
}

/// `litecluster.io/switchover=<member>`: the leader hands leadership to that voter, then the
/// request is removed. Waits while a membership change is under way; anything but a voter of
/// this cluster gets a Warning Event and is removed. True when leadership was handed over.
async fn switchover(
    cluster: &SqliteCluster,
    ctx: &Context,
    nodes: &dyn NodeApi,
    observed: &observe::ObservedCluster,
    ns: &str,
    blocked: Option<&str>,
) -> Result<bool> {
    use crate::crd::SWITCHOVER_ANNOTATION as KEY;
    let Some(member) = cluster.switchover_request() else {
        return Ok(false);
    };
    let target = crate::resources::ordinal_of(cluster, member);
    let voter = observe::raft_members(cluster, observed).is_some_and(|m| {
        m.iter()
            .any(|(o, role)| Some(*o) == target && *role == membership::Role::Voter)
    });
    let Some(leader) = observed.leader() else {
        return Ok(false);
    };
    if Some(leader.ordinal) == target {
        ctx.publish(
            cluster,
            EventType::Normal,
            "SwitchoverDone",
            "Switchover",
            format!("{member} leads"),
        )
        .await;
        clear_annotation(cluster, ctx, ns, KEY).await?;
        return Ok(false);
    }
    if !voter {
        ctx.publish(
            cluster,
            EventType::Warning,
            "SwitchoverInvalid",
            "Switchover",
            format!("{KEY}={member:?} names no voter of this cluster; cleared"),
        )
        .await;
        clear_annotation(cluster, ctx, ns, KEY).await?;
        return Ok(false);
    }
    if blocked.is_some() {
        return Ok(false);
    }
    match nodes
        .transfer_leadership_to(&leader.url, Some(member))
        .await
    {
        Ok(()) => {
            ctx.publish(
                cluster,
                EventType::Normal,
                "Switchover",
                "Switchover",
                format!("leadership handed from {} to {member}", leader.name),
            )
            .await;
            Ok(true)
        }
        Err(e) => {
            ctx.publish_once(
                format!(
                    "{}/switchover/{member}/{e}",
                    cluster.metadata.uid.as_deref().unwrap_or_default()
                ),
                cluster,
                EventType::Warning,
                "SwitchoverFailed",
                "Switchover",
                format!("handing leadership to {member} failed, retrying: {e}"),
            )
            .await;
            Ok(false)
        }
    }
}

/// Removes `litecluster.io/restart` once its member has been restarted.
async fn clear_restart_request(cluster: &SqliteCluster, ctx: &Context, ns: &str) -> Result<()> {
    clear_annotation(cluster, ctx, ns, crate::crd::RESTART_ANNOTATION).await
}

/// Removes a request annotation from the cluster.
async fn clear_annotation(
    cluster: &SqliteCluster,
    ctx: &Context,
    ns: &str,
    key: &str,
) -> Result<()> {
    use kube::ResourceExt;
    let api = kube::Api::<SqliteCluster>::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({ "metadata": { "annotations": { key: null } } });
    api.patch(
        &cluster.name_any(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}
