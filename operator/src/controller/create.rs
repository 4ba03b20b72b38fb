//! Keeps the objects a cluster owns as the builders describe them, with server-side apply.
//!
//! Steady state must not write. Each desired object carries a hash of itself in an annotation;
//! when the live object has the same hash, nothing is sent. Trade-off: a field changed by hand
//! is not reverted until the spec (and so the hash) changes; the benefit is that no reconcile
//! writes unless the operator really wants something different.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::info;

use super::labels::read_replicas;
use super::membership::statefulset_replicas;
use super::observe::{ObservedCluster, desired, raft_members};
use super::{Context, MANAGER};
use crate::Result;
use crate::crd::SqliteCluster;
pub use crate::resources::spec_hash;
use crate::resources::statefulset::{StatefulSetParams, desired_statefulset};
use crate::resources::{
    Names, RESTARTED_AT_ANNOTATION, configmap, networkpolicy, pdb, serviceaccount, services,
};

/// Annotation holding the hash of what the operator last applied.
pub const HASH_ANNOTATION: &str = "litecluster.io/applied-hash";

/// Apply every owned object that differs from its builder. Returns whether the StatefulSet
/// was written (its status then describes the previous template until its controller catches up).
pub async fn reconcile_resources(
    cluster: &SqliteCluster,
    ctx: &Context,
    observed: &ObservedCluster,
    bootstrapped: bool,
    ns: &str,
) -> Result<bool> {
    let client = &ctx.client;
    ensure(
        &Api::<ServiceAccount>::namespaced(client.clone(), ns),
        serviceaccount::desired_service_account(cluster),
    )
    .await?;
    ensure(
        &Api::<ConfigMap>::namespaced(client.clone(), ns),
        configmap::desired_configmap(cluster)?,
    )
    .await?;
    let svc = Api::<Service>::namespaced(client.clone(), ns);
    ensure(&svc, services::desired_headless_service(cluster)).await?;
    ensure(&svc, services::desired_client_service(cluster)).await?;
    ensure(
        &svc,
        services::desired_readonly_service(cluster, read_replicas(cluster, observed)),
    )
    .await?;
    ensure(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), ns),
        pdb::desired_pdb(cluster),
    )
    .await?;
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), ns);
    if cluster.network_policy_enabled() {
        ensure(&policies, networkpolicy::desired_network_policy(cluster)).await?;
    } else {
        remove_owned(&policies, cluster, &Names::network_policy(cluster)).await?;
    }
    ensure_statefulset(
        cluster,
        ctx,
        observed,
        bootstrapped,
        live_restarted_at(observed),
        ns,
    )
    .await
}

/// Delete `name` if it exists and this cluster controls it (it was turned off in the spec).
/// An object of the same name that someone else made is left alone.
pub async fn remove_owned<K>(api: &Api<K>, cluster: &SqliteCluster, name: &str) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned,
{
    let Some(live) = api.get_opt(name).await? else {
        return Ok(());
    };
    let ours = live
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == cluster.metadata.uid.as_ref());
    if ours {
        info!(kind = %K::kind(&()), %name, "deleting (turned off in the spec)");
        api.delete(name, &Default::default()).await?;
    }
    Ok(())
}

/// Apply the StatefulSet with this `restartedAt` pod annotation. Returns whether it wrote.
pub async fn ensure_statefulset(
    cluster: &SqliteCluster,
    ctx: &Context,
    observed: &ObservedCluster,
    bootstrapped: bool,
    restarted_at: Option<String>,
    ns: &str,
) -> Result<bool> {
    ensure(
        &Api::<StatefulSet>::namespaced(ctx.client.clone(), ns),
        desired_sts(cluster, ctx, observed, bootstrapped, restarted_at)?,
    )
    .await
}

/// The `restartedAt` pod annotation of the live StatefulSet. It is kept as it is: the
/// StatefulSet itself is where it lives, so a lost status cannot drop it and restart everyone.
pub fn live_restarted_at(observed: &ObservedCluster) -> Option<String> {
    observed
        .statefulset
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(RESTARTED_AT_ANNOTATION))
        .cloned()
}

/// The StatefulSet with replicas from the membership rules (one while bootstrapping).
pub fn desired_sts(
    cluster: &SqliteCluster,
    ctx: &Context,
    observed: &ObservedCluster,
    bootstrapped: bool,
    restarted_at: Option<String>,
) -> Result<StatefulSet> {
    let current = observed
        .statefulset
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.replicas)
        .map(|r| r.max(0) as u32);
    let replicas = if bootstrapped {
        let raft: Option<Vec<u32>> =
            raft_members(cluster, observed).map(|m| m.into_iter().map(|(o, _)| o).collect());
        statefulset_replicas(desired(cluster).replicas, current, raft.as_deref())
    } else {
        1
    };
    let (tls_cert_hash, tls_ca_hashes) = template_tls(observed);
    let params = StatefulSetParams {
        replicas: replicas as i32,
        bootstrap: !bootstrapped,
        cluster_domain: ctx.cluster_domain.clone(),
        restarted_at,
        tls_cert_hash,
        tls_ca_hashes,
    };
    let mut sts = desired_statefulset(cluster, &params)?;
    // Volume claim templates are immutable: keep the live ones (volume growth is done on the PVCs).
    if let (Some(live), Some(spec)) = (
        observed.statefulset.as_ref().and_then(|s| s.spec.as_ref()),
        sts.spec.as_mut(),
    ) {
        spec.volume_claim_templates = live.volume_claim_templates.clone();
    }
    Ok(sts)
}

/// The TLS hashes the pod template carries: the Secret's, unless restarting onto it is unsafe;
/// then the live template's, so nothing looks outdated (and no rollout is announced) until the
/// Secret is put right.
fn template_tls(observed: &ObservedCluster) -> (Option<String>, Option<String>) {
    let Some(tls) = &observed.tls else {
        return (None, None);
    };
    if tls.unsafe_change.is_none() {
        return (Some(tls.cert_hash.clone()), Some(tls.ca_hashes.join(",")));
    }
    let live = observed
        .statefulset
        .as_ref()
        .and_then(|s| s.spec.as_ref())
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref());
    let get = |k: &str| live.and_then(|a| a.get(k)).cloned();
    (
        get(crate::resources::TLS_CERT_HASH_ANNOTATION),
        get(crate::resources::TLS_CA_HASHES_ANNOTATION),
    )
}

/// Server-side apply `desired` unless the live object already carries its hash. Returns whether it wrote.
pub async fn ensure<K>(api: &Api<K>, mut desired: K) -> Result<bool>
where
    K: Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned,
{
    let hash = spec_hash(&desired)?;
    desired
        .annotations_mut()
        .insert(HASH_ANNOTATION.into(), hash.clone());
    let name = desired.name_any();
    if let Some(live) = api.get_opt(&name).await?
        && live.annotations().get(HASH_ANNOTATION) == Some(&hash)
    {
        return Ok(false);
    }
    info!(kind = %K::kind(&()), %name, "applying");
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::{ClusterExt, cluster};

    #[test]
    fn hash_changes_with_the_spec_only() {
        let a = services::desired_client_service(&cluster());
        assert_eq!(
            spec_hash(&a).unwrap(),
            spec_hash(&services::desired_client_service(&cluster())).unwrap()
        );
        let b = pdb::desired_pdb(&cluster().with_replicas(5).with_voters(5));
        assert_ne!(
            spec_hash(&pdb::desired_pdb(&cluster())).unwrap(),
            spec_hash(&b).unwrap()
        );
    }
}
