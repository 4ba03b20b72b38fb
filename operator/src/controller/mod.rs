//! The `SqliteCluster` reconciler, split by concern: observe, create (owned objects), scale
//! (membership changes), labels (pod roles), storage (volume growth), rollout (restarts),
//! remediation (snapshot health), status.

pub mod backups;
pub mod certificates;
pub mod create;
pub mod labels;
pub mod maintenance;
pub mod membership;
pub mod observe;
pub mod recovery;
pub mod remediation;
pub mod rollout;
pub mod scale;
pub mod scheduled;
pub mod status;
pub mod storage;

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

use crate::crd::{RemediationStep, SqliteCluster};
use crate::metrics::Metrics;
use crate::node_client::NodeApi;
use crate::{Error, Result};
pub use maintenance::Maintenance;

/// Field manager of every server-side apply the operator makes.
pub const MANAGER: &str = "litecluster-operator";

/// Server-side apply of an object's whole status: fields this manager stops sending are removed.
pub async fn apply_status<K>(
    ctx: &Context,
    obj: &K,
    ns: &str,
    status: &impl serde::Serialize,
) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    Api::<K>::namespaced(ctx.client.clone(), ns)
        .patch_status(
            &obj.name_any(),
            &kube::api::PatchParams::apply(MANAGER).force(),
            &kube::api::Patch::Apply(&body),
        )
        .await?;
    Ok(())
}

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub nodes: Arc<dyn NodeApi>,
    pub metrics: Arc<Metrics>,
    /// DNS domain of the Kubernetes cluster (`cluster.local`).
    pub cluster_domain: String,
    reporter: Reporter,
    /// Keys of the warnings `publish_once` has sent (this process only).
    published: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl Context {
    pub fn new(
        client: Client,
        nodes: Arc<dyn NodeApi>,
        reporter: Reporter,
        metrics: Arc<Metrics>,
        cluster_domain: String,
    ) -> Self {
        Self {
            reporter,
            client,
            nodes,
            metrics,
            cluster_domain,
            published: Default::default(),
        }
    }

    /// `publish`, once per `key` for the life of this process: for a condition that each pass
    /// sees again (a refused volume expansion) and that one Warning describes.
    pub async fn publish_once(
        &self,
        key: String,
        cluster: &SqliteCluster,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let new = self
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key);
        if new {
            self.publish(cluster, type_, reason, action, note).await;
        }
    }

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
        self.publish_about(cluster.object_ref(&()), type_, reason, action, note)
            .await;
    }

    /// `publish`, about any object.
    pub async fn publish_about(
        &self,
        regarding: k8s_openapi::api::core::v1::ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        // A recorder per Event, not one shared: a shared one folds Events with the same reason
        // into a series and keeps the first note, so "restarted db-1" would hide "restarted db-2".
        // Repeats of one condition go through `publish_once` instead.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&ev, &regarding).await {
            warn!(error = %e, reason, "cannot publish event");
        }
    }
}

/// One pass over one cluster: observe, apply owned objects, make at most one membership change,
/// then at most one restart or remediation step, record status. Requeues soon while something
/// is changing, slowly when settled.
pub async fn reconcile(cluster: Arc<SqliteCluster>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    if cluster.paused() {
        info!(cluster = %cluster.name_any(), "paused; not reconciling");
        let ns = cluster.namespace().ok_or(Error::MissingNamespace)?;
        status::reconcile_paused(&cluster, &ctx, &ns).await?;
        return Ok(Action::await_change());
    }
    if cluster.metadata.deletion_timestamp.is_some() {
        // Owner references let the garbage collector remove everything; don't re-create it.
        return Ok(Action::await_change());
    }
    let ns = cluster.namespace().ok_or(Error::MissingNamespace)?;
    let (cluster, observed, nodes) = match observe::observe(&cluster, &ctx, &ns).await {
        Ok((resolved, o, n)) => (Arc::new(resolved), o, n),
        // A Secret the cluster names is unusable: nothing can be reconciled until it is fixed.
        // Say so where `kubectl describe` shows it, once per problem.
        Err(e @ Error::RecoverySource(_)) => {
            let note = format!("{e}; the cluster is created once it can be");
            let key = format!("RecoveryWaiting/{ns}/{}/{e}", cluster.name_any());
            ctx.publish_once(
                key,
                &cluster,
                EventType::Warning,
                "RecoveryWaiting",
                "Reconcile",
                note,
            )
            .await;
            return Err(e);
        }
        Err(e @ (Error::TlsSecret { .. } | Error::AuthSecret { .. })) => {
            let note = format!("{e}; nothing is reconciled until the Secret is fixed");
            let key = format!("SecretInvalid/{ns}/{}/{e}", cluster.name_any());
            ctx.publish_once(
                key,
                &cluster,
                EventType::Warning,
                "SecretInvalid",
                "Reconcile",
                note,
            )
            .await;
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let bootstrapped = observe::bootstrapped(&cluster, &observed);

    // Labels before the objects: the read-only Service may start selecting learners in this
    // pass, and they should carry the label by then.
    labels::reconcile_role_labels(&cluster, &ctx, &observed, &ns).await?;

    let sts_written =
        create::reconcile_resources(&cluster, &ctx, &observed, bootstrapped, &ns).await?;
    let resizing = storage::reconcile_volumes(&cluster, &ctx, &ns).await;

    let action = if bootstrapped {
        hold_back_join(
            &cluster,
            &observed,
            &resizing,
            membership::decide(
                observe::desired(&cluster),
                &observe::membership_view(&cluster, &observed),
            ),
        )
    } else {
        membership::Action::Wait("bootstrapping the first member".into())
    };
    scale::reconcile_membership(&cluster, &ctx, nodes.as_ref(), &observed, &action).await?;
    let maintenance = if bootstrapped {
        Some(
            maintenance::maintain(
                &cluster,
                &ctx,
                nodes.as_ref(),
                &observed,
                &action,
                sts_written,
                &ns,
            )
            .await?,
        )
    } else {
        None
    };
    status::reconcile_status(
        &cluster,
        &ctx,
        &observed,
        &action,
        bootstrapped,
        maintenance.as_ref(),
        &ns,
    )
    .await?;

    let remediating = maintenance
        .as_ref()
        .and_then(|m| m.remediation.as_ref())
        .is_some_and(|r| r.step != RemediationStep::Exhausted);
    Ok(match action {
        membership::Action::Nothing if maintenance.as_ref().is_some_and(Maintenance::busy) => {
            Action::requeue(Duration::from_secs(5))
        }
        // Remediation waits minutes between steps; look often enough to notice recovery.
        membership::Action::Nothing if remediating => Action::requeue(Duration::from_secs(15)),
        membership::Action::Nothing => Action::requeue(Duration::from_secs(60)),
        _ => Action::requeue(Duration::from_secs(5)),
    })
}

/// A new member joins only when it can keep what it receives: its volume has the spec's size
/// (catching up could fill a smaller one), and the TLS Secret it started with is one the
/// members can talk over.
fn hold_back_join(
    cluster: &SqliteCluster,
    observed: &observe::ObservedCluster,
    resizing: &[u32],
    action: membership::Action,
) -> membership::Action {
    match action {
        membership::Action::AddLearner(o) if resizing.contains(&o) => {
            membership::Action::Wait(format!(
                "the volume of {} is growing to {}",
                crate::resources::Names::pod(cluster, o),
                cluster.spec.storage.size
            ))
        }
        membership::Action::AddLearner(_)
            if observed
                .tls
                .as_ref()
                .is_some_and(|t| t.unsafe_change.is_some()) =>
        {
            membership::Action::Wait(
                "the TLS Secret is not safe for a new member (see the Degraded condition)".into(),
            )
        }
        other => other,
    }
}

/// Count the failure by kind and retry later.
pub fn error_policy(cluster: Arc<SqliteCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(cluster = %cluster.name_any(), error = %error, source = ?std::error::Error::source(error), "reconcile failed");
    ctx.metrics.reconcile_failed(error);
    Action::requeue(Duration::from_secs(15))
}

/// Which SqliteClusters the operator watches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every namespace (a ClusterRole).
    Cluster,
    /// One namespace (a Role there): for users who grant no cluster-wide Secret access.
    Namespace(String),
}

impl Scope {
    /// From `--watch-namespace`: empty means every namespace.
    pub fn from_arg(ns: &str) -> Self {
        match ns.trim() {
            "" => Scope::Cluster,
            ns => Scope::Namespace(ns.to_owned()),
        }
    }

    fn api<K>(&self, client: &Client) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match self {
            Scope::Cluster => Api::all(client.clone()),
            Scope::Namespace(ns) => Api::namespaced(client.clone(), ns),
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Cluster => f.write_str("every namespace"),
            Scope::Namespace(ns) => write!(f, "namespace {ns}"),
        }
    }
}

/// Run the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    scope: Scope,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    use futures::FutureExt;
    let shutdown = shutdown.shared();
    let client = ctx.client.clone();
    let clusters = scope.api::<SqliteCluster>(&client);
    let member_pods = watcher::Config::default().labels("app.kubernetes.io/name=litecluster");
    let cluster_controller = Controller::new(clusters, watcher::Config::default().any_semantic())
        .owns(
            scope.api::<StatefulSet>(&client),
            watcher::Config::default(),
        )
        // Pods belong to the StatefulSet, not to us; map them to their cluster so a pod coming
        // up or going away triggers the next membership step at once.
        .watches(scope.api::<Pod>(&client), member_pods, |pod| {
            let ns = pod.namespace();
            pod.labels().get("app.kubernetes.io/instance").map(|name| {
                let r = ObjectRef::<SqliteCluster>::new(name);
                match ns {
                    Some(ns) => r.within(&ns),
                    None => r,
                }
            })
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(cluster = %obj, "reconciled"),
                Err(e) => warn!(error = %e, "controller error"),
            }
        });
    let backup_controller = Controller::new(
        scope.api::<crate::backup::SqliteBackup>(&client),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown.clone())
    .run(backups::reconcile, backups::error_policy, ctx.clone())
    .for_each(|res| async move {
        match res {
            Ok((obj, _)) => tracing::debug!(backup = %obj, "reconciled"),
            Err(e) => warn!(error = %e, "backup controller error"),
        }
    });
    let schedule_controller = Controller::new(
        scope.api::<crate::backup::SqliteScheduledBackup>(&client),
        watcher::Config::default(),
    )
    // A backup it created finishing may let an older one go.
    .owns(
        scope.api::<crate::backup::SqliteBackup>(&client),
        watcher::Config::default(),
    )
    .graceful_shutdown_on(shutdown)
    .run(scheduled::reconcile, scheduled::error_policy, ctx)
    .for_each(|res| async move {
        match res {
            Ok((obj, _)) => tracing::debug!(schedule = %obj, "reconciled"),
            Err(e) => warn!(error = %e, "scheduled backup controller error"),
        }
    });
    futures::join!(cluster_controller, backup_controller, schedule_controller);
}

#[cfg(test)]
mod tests;
