//! The `SqliteCluster` reconciler, split by concern: observe, create (owned objects), scale
//! (membership changes), status.

pub mod create;
pub mod membership;
pub mod observe;
pub mod scale;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::{info, warn};

use crate::crd::SqliteCluster;
use crate::metrics::Metrics;
use crate::node_client::NodeApi;
use crate::{Error, Result};

/// Field manager of every server-side apply the operator makes.
pub const MANAGER: &str = "litecluster-operator";

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub nodes: Arc<dyn NodeApi>,
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    /// DNS domain of the Kubernetes cluster (`cluster.local`).
    pub cluster_domain: String,
}

impl Context {
    /// Publish an Event about `cluster`. A failed Event is logged, not fatal: it must not block
    /// the change it describes.
    pub async fn publish(
        &self,
        cluster: &SqliteCluster,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &cluster.object_ref(&())).await {
            warn!(error = %e, reason, "cannot publish event");
        }
    }
}

/// One pass over one cluster: observe, apply owned objects, make at most one membership change,
/// record status. Requeues soon while something is changing, slowly when settled.
pub async fn reconcile(cluster: Arc<SqliteCluster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    if cluster.paused() {
        info!(cluster = %cluster.name_any(), "paused; not reconciling");
        return Ok(Action::await_change());
    }
    if cluster.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove everything; don't re-create it.
        return Ok(Action::await_change());
    }
    let ns = cluster.namespace().ok_or(Error::MissingNamespace)?;
    let nodes = observe::node_api(&cluster, &ctx, &ns).await?;
    let observed = observe::observe(&cluster, &ctx, nodes.as_ref(), &ns).await?;
    let bootstrapped = observe::bootstrapped(&cluster, &observed);

    create::reconcile_resources(&cluster, &ctx, &observed, bootstrapped, &ns).await?;

    let action = if bootstrapped {
        membership::decide(
            observe::desired(&cluster),
            &observe::membership_view(&cluster, &observed),
        )
    } else {
        membership::Action::Wait("bootstrapping the first member".into())
    };
    scale::reconcile_membership(&cluster, &ctx, nodes.as_ref(), &observed, &action).await?;
    status::reconcile_status(&cluster, &ctx, &observed, &action, bootstrapped, &ns).await?;

    Ok(match action {
        membership::Action::Nothing => Action::requeue(Duration::from_secs(60)),
        _ => Action::requeue(Duration::from_secs(5)),
    })
}

/// Count the failure by kind and retry later.
pub fn error_policy(cluster: Arc<SqliteCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(cluster = %cluster.name_any(), error = %error, source = ?std::error::Error::source(error), "reconcile failed");
    ctx.metrics.reconcile_failed(error);
    Action::requeue(Duration::from_secs(15))
}

/// Run the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let clusters = Api::<SqliteCluster>::all(client.clone());
    let member_pods = watcher::Config::default().labels("app.kubernetes.io/name=litecluster");
    Controller::new(clusters, watcher::Config::default().any_semantic())
        .owns(
            Api::<StatefulSet>::all(client.clone()),
            watcher::Config::default(),
        )
        // Pods belong to the StatefulSet, not to us; map them to their cluster so a pod coming
        // up or going away triggers the next membership step at once.
        .watches(Api::<Pod>::all(client), member_pods, |pod| {
            let ns = pod.namespace();
            pod.labels().get("app.kubernetes.io/instance").map(|name| {
                let r = ObjectRef::<SqliteCluster>::new(name);
                match ns {
                    Some(ns) => r.within(&ns),
                    None => r,
                }
            })
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(cluster = %obj, "reconciled"),
                Err(e) => warn!(error = %e, "controller error"),
            }
        })
        .await;
}

#[cfg(test)]
mod tests;
