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
    let restart_request = remedy.as_ref().and_then(|r| r.restart_request);
    let view = rollout::observed_view(cluster, observed, settled, restart_request);
    let blocked = blocked.or(remedy
        .as_ref()
        .is_some_and(|r| r.acted)
        .then_some("a remediation step was taken this pass"));
    let rollout =
        rollout::reconcile_rollout(cluster, ctx, nodes, observed, &view, blocked, ns).await?;
    if let (Some(wanted), Some(done)) = (restart_request, rollout.restarted)
        && wanted == done
    {
        state = Some(remediation::restarted(cluster, &input, done));
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
