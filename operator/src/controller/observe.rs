//! What the operator sees: the StatefulSet, the member pods, the Secrets it needs, and each
//! reachable member's `/status`.

use std::net::IpAddr;
use std::sync::Arc;

use futures::future::join_all;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::Context;
use super::membership::{self, Desired, Member, PodState, Role};
use crate::crd::SqliteCluster;
use crate::node_client::{Credentials, NodeAccess, NodeApi, NodeStatus};
use crate::resources::statefulset::CONTAINER;
use crate::resources::{
    HTTP_PORT, Names, RESTARTED_AT_ANNOTATION, REVISION_LABEL, ROLE_LABEL,
    TEMPLATE_HASH_ANNOTATION, TLS_CA_HASHES_ANNOTATION, TLS_CERT_HASH_ANNOTATION, bytes_hash,
    ordinal_of, selector_string,
};
use crate::{Error, Result};

/// One member pod and what its node said.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedPod {
    pub name: String,
    pub ordinal: u32,
    /// The pod's Ready condition.
    pub ready: bool,
    /// Base URL of its HTTP API.
    pub url: String,
    /// Its IP, once it has one.
    pub ip: Option<IpAddr>,
    /// Its `litecluster.io/role` label as it is now.
    pub role_label: Option<String>,
    /// Its `/status`, or why it could not be read.
    pub status: Result<NodeStatus, String>,
    /// What the pod runs, for the rollout.
    pub template: PodTemplateInfo,
}

/// Which template a pod (or the StatefulSet) runs: what the rollout compares.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodTemplateInfo {
    /// Pod UID (empty for the StatefulSet).
    pub uid: String,
    /// `controller-revision-hash` label of a pod; `status.updateRevision` of the StatefulSet.
    pub revision: Option<String>,
    /// `litecluster.io/template-hash` annotation.
    pub template_hash: Option<String>,
    /// Image of the node container.
    pub image: Option<String>,
    /// `litecluster.io/restartedAt` annotation.
    pub restarted_at: Option<String>,
    /// `litecluster.io/tls-cert-hash` annotation.
    pub tls_cert_hash: Option<String>,
    /// `litecluster.io/tls-ca-hashes` annotation.
    pub tls_ca_hashes: Option<String>,
}

impl PodTemplateInfo {
    fn of_pod(p: &Pod) -> Self {
        let annotation = |k: &str| p.annotations().get(k).cloned();
        PodTemplateInfo {
            uid: p.uid().unwrap_or_default(),
            revision: p.labels().get(REVISION_LABEL).cloned(),
            template_hash: annotation(TEMPLATE_HASH_ANNOTATION),
            image: node_image(p.spec.as_ref()),
            restarted_at: annotation(RESTARTED_AT_ANNOTATION),
            tls_cert_hash: annotation(TLS_CERT_HASH_ANNOTATION),
            tls_ca_hashes: annotation(TLS_CA_HASHES_ANNOTATION),
        }
    }

    /// What the StatefulSet controller creates pods from now, or None when it has not yet
    /// processed the current spec (its status would describe an older template).
    pub fn of_statefulset(sts: &StatefulSet) -> Option<Self> {
        let status = sts.status.as_ref()?;
        if status.observed_generation < sts.metadata.generation {
            return None;
        }
        let template = &sts.spec.as_ref()?.template;
        let annotation = |k: &str| {
            template
                .metadata
                .as_ref()
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(k))
                .cloned()
        };
        Some(PodTemplateInfo {
            uid: String::new(),
            revision: status.update_revision.clone(),
            template_hash: annotation(TEMPLATE_HASH_ANNOTATION),
            image: node_image(template.spec.as_ref()),
            restarted_at: annotation(RESTARTED_AT_ANNOTATION),
            tls_cert_hash: annotation(TLS_CERT_HASH_ANNOTATION),
            tls_ca_hashes: annotation(TLS_CA_HASHES_ANNOTATION),
        })
    }
}

fn node_image(spec: Option<&k8s_openapi::api::core::v1::PodSpec>) -> Option<String> {
    spec?
        .containers
        .iter()
        .find(|c| c.name == CONTAINER)
        .and_then(|c| c.image.clone())
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedCluster {
    pub statefulset: Option<StatefulSet>,
    /// Member pods, by ordinal.
    pub pods: Vec<ObservedPod>,
    /// The TLS Secret, when the cluster uses TLS.
    pub tls: Option<ObservedTls>,
}

/// What the operator takes from the TLS Secret.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedTls {
    /// `ca.crt`: the CA the operator trusts when members serve their API over HTTPS.
    pub ca_pem: Vec<u8>,
    /// Hash of the certificate in `tls.crt`; when it changes the members restart to load it.
    pub cert_hash: String,
    /// Hashes of the CAs in `ca.crt`, sorted; when they change the members restart too.
    pub ca_hashes: Vec<String>,
    /// Why members must not restart onto this Secret now (see `crate::tls::judge_change`).
    pub unsafe_change: Option<String>,
}

impl ObservedCluster {
    /// The pod whose node says it leads Raft (highest term wins if several still think so).
    pub fn leader(&self) -> Option<&ObservedPod> {
        self.pods
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .is_ok_and(|s| s.store.raft.state == "Leader")
            })
            .max_by_key(|p| p.status.as_ref().map_or(0, |s| s.store.raft.term))
    }

    pub fn leader_status(&self) -> Option<&NodeStatus> {
        self.leader().and_then(|p| p.status.as_ref().ok())
    }

    pub fn pod(&self, ordinal: u32) -> Option<&ObservedPod> {
        self.pods.iter().find(|p| p.ordinal == ordinal)
    }
}

/// Read a Secret of the cluster's namespace; `error` says which Secret failed.
async fn read_secret(
    ctx: &Context,
    ns: &str,
    name: &str,
    error: impl Fn(String) -> Error,
) -> Result<Secret> {
    Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .get(name)
        .await
        .map_err(|e| error(format!("cannot read: {e}")))
}

fn secret_key<'a>(secret: &'a Secret, key: &str) -> Option<&'a [u8]> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|v| v.0.as_slice())
}

/// The TLS Secret's CA, its hashes, and whether members may restart onto it. Every key the
/// members need must be there and parse: a bad one would only show up as members failing to
/// start. A certificate that parses but would cut members off is not an error: it blocks
/// restarts and is reported in the status (`unsafe_change`).
pub async fn observe_tls(
    cluster: &SqliteCluster,
    ctx: &Context,
    ns: &str,
    pods: &[ObservedPod],
) -> Result<Option<ObservedTls>> {
    let Some(name) = cluster.tls_secret() else {
        return Ok(None);
    };
    let error = |what: String| Error::TlsSecret {
        secret: name.to_owned(),
        what,
    };
    let secret = read_secret(ctx, ns, name, error).await?;
    let key = |k: &str| {
        secret_key(&secret, k)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| error(format!("missing key {k}")))
    };
    key("tls.key")?;
    let ca_pem = key("ca.crt")?.to_vec();
    let bundle = crate::tls::pem_certs(&ca_pem).map_err(|e| error(format!("ca.crt {e}")))?;
    let chain =
        crate::tls::pem_certs(key("tls.crt")?).map_err(|e| error(format!("tls.crt {e}")))?;
    // What the running members were started with, as far as their annotations say; members
    // started alike are judged once.
    let mut running: Vec<crate::tls::Running> = vec![];
    for p in pods {
        let (Some(cert_hash), Some(cas)) = (&p.template.tls_cert_hash, &p.template.tls_ca_hashes)
        else {
            continue;
        };
        let r = crate::tls::Running {
            cert_hash: cert_hash.clone(),
            ca_hashes: cas.split(',').map(String::from).collect(),
        };
        if !running.contains(&r) {
            running.push(r);
        }
    }
    // Every member the spec asks for: a certificate listing names must cover them all.
    let members: Vec<String> = (0..cluster.spec.replicas.max(1) as u32)
        .map(|o| member_host(cluster, &Names::pod(cluster, o), ns, &ctx.cluster_domain))
        .collect();
    Ok(Some(ObservedTls {
        ca_pem,
        cert_hash: bytes_hash(&chain[0]),
        ca_hashes: crate::tls::bundle_hashes(&bundle),
        unsafe_change: crate::tls::judge_change(&running, &chain, &bundle, &members).err(),
    }))
}

/// The node client for this cluster: credentials from its auth Secret, and for HTTPS the CA
/// and the pod IP behind each member's name.
pub async fn node_api(
    cluster: &SqliteCluster,
    ctx: &Context,
    ns: &str,
    tls: Option<&ObservedTls>,
    pods: &[ObservedPod],
) -> Result<Arc<dyn NodeApi>> {
    let credentials = match &cluster.spec.auth_secret {
        None => None,
        Some(secret_ref) => {
            let error = |what: String| Error::AuthSecret {
                secret: secret_ref.name.clone(),
                what,
            };
            let secret = read_secret(ctx, ns, &secret_ref.name, error).await?;
            let field = |key: &str| {
                secret_key(&secret, key)
                    .and_then(|v| String::from_utf8(v.to_vec()).ok())
                    .ok_or_else(|| error(format!("missing key {key}")))
            };
            Some(Credentials {
                username: field("username")?,
                password: field("password")?,
            })
        }
    };
    let api_ca = tls.filter(|_| cluster.api_tls());
    if credentials.is_none() && api_ca.is_none() {
        return Ok(ctx.nodes.clone());
    }
    let access = NodeAccess {
        credentials,
        ca_pem: api_ca.map(|t| t.ca_pem.clone()),
        addresses: match api_ca {
            Some(_) => pods
                .iter()
                .filter_map(|p| {
                    Some((
                        member_host(cluster, &p.name, ns, &ctx.cluster_domain),
                        p.ip?,
                    ))
                })
                .collect(),
            None => vec![],
        },
    };
    ctx.nodes.for_cluster(access)
}

/// Read the StatefulSet, the member pods, the Secrets, and every running member's `/status`
/// (concurrently). Returns the node client it used, set up for this cluster.
pub async fn observe(
    cluster: &SqliteCluster,
    ctx: &Context,
    ns: &str,
) -> Result<(SqliteCluster, ObservedCluster, Arc<dyn NodeApi>)> {
    let statefulset = Api::<StatefulSet>::namespaced(ctx.client.clone(), ns)
        .get_opt(&Names::statefulset(cluster))
        .await?;
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default().labels(&selector_string(cluster)))
        .await?;
    // From here on `spec.tls` names the Secret members use, issued or the user's.
    let live = super::certificates::LiveTls::observe(statefulset.as_ref(), &pods.items);
    let resolved = super::certificates::resolve(cluster, ctx, ns, live.as_ref()).await?;
    let resolved = super::recovery::resolve(resolved, ctx, ns).await?;
    let cluster = &resolved;
    // A terminating pod counts as gone: its member is on its way out or being restarted.
    let mut found: Vec<ObservedPod> = pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let name = p.name_any();
            let ordinal = ordinal_of(cluster, &name)?;
            let ip = pod_ip(p);
            Some(ObservedPod {
                url: member_url(cluster, ip, &name, ns, &ctx.cluster_domain),
                ip,
                role_label: p.labels().get(ROLE_LABEL).cloned(),
                name,
                ordinal,
                ready: pod_ready(p),
                status: Err("not asked yet".into()),
                template: PodTemplateInfo::of_pod(p),
            })
        })
        .collect();
    found.sort_by_key(|f| f.ordinal);
    let tls = observe_tls(cluster, ctx, ns, &found).await?;
    let nodes = node_api(cluster, ctx, ns, tls.as_ref(), &found).await?;
    let statuses = join_all(found.iter().map(|p| nodes.status(&p.url))).await;
    let pods = found
        .into_iter()
        .zip(statuses)
        .map(|(pod, status)| ObservedPod {
            status: status.map_err(|e| e.to_string()),
            ..pod
        })
        .collect();
    Ok((
        resolved.clone(),
        ObservedCluster {
            statefulset,
            pods,
            tls,
        },
        nodes,
    ))
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn pod_ip(p: &Pod) -> Option<IpAddr> {
    p.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// A member's stable DNS name under the headless Service: what it advertises, and what its
/// certificate carries.
pub fn member_host(cluster: &SqliteCluster, name: &str, ns: &str, domain: &str) -> String {
    format!("{name}.{}.{ns}.svc.{domain}", Names::headless(cluster))
}

/// Over HTTP the pod IP when it has one (no DNS needed), else its DNS name. Over HTTPS always
/// the DNS name, since that is what the certificate proves; the node client connects to the
/// pod IP for it (see `NodeAccess::addresses`), so DNS is not needed either.
fn member_url(
    cluster: &SqliteCluster,
    ip: Option<IpAddr>,
    name: &str,
    ns: &str,
    domain: &str,
) -> String {
    if cluster.api_tls() {
        return format!(
            "https://{}:{HTTP_PORT}",
            member_host(cluster, name, ns, domain)
        );
    }
    match ip {
        Some(IpAddr::V6(ip)) => format!("http://[{ip}]:{HTTP_PORT}"),
        Some(IpAddr::V4(ip)) => format!("http://{ip}:{HTTP_PORT}"),
        None => format!(
            "http://{}:{HTTP_PORT}",
            member_host(cluster, name, ns, domain)
        ),
    }
}

/// Whether the cluster has ever been initialised. Once true, no member starts with `--bootstrap`.
/// Besides the recorded status, a leader or any sign of more than one member counts, so a lost
/// status never turns bootstrapping back on.
pub fn bootstrapped(cluster: &SqliteCluster, observed: &ObservedCluster) -> bool {
    cluster.status.as_ref().is_some_and(|s| s.bootstrapped)
        || observed.leader().is_some()
        || observed
            .statefulset
            .as_ref()
            .and_then(|s| s.spec.as_ref())
            .and_then(|s| s.replicas)
            .is_some_and(|r| r > 1)
        || observed.pods.iter().any(|p| p.ordinal > 0)
}

pub fn desired(cluster: &SqliteCluster) -> Desired {
    Desired {
        replicas: cluster.spec.replicas.max(0) as u32,
        voters: cluster.effective_voters().max(0) as u32,
    }
}

/// Ordinals in the leader's Raft configuration, with their roles.
pub fn raft_members(
    cluster: &SqliteCluster,
    observed: &ObservedCluster,
) -> Option<Vec<(u32, Role)>> {
    let leader = observed.leader_status()?;
    Some(
        leader
            .store
            .members
            .iter()
            .filter_map(|m| {
                Some((
                    ordinal_of(cluster, &m.id)?,
                    if m.voter { Role::Voter } else { Role::Learner },
                ))
            })
            .collect(),
    )
}

/// The observation reduced to what `membership::decide` needs.
pub fn membership_view(
    cluster: &SqliteCluster,
    observed: &ObservedCluster,
) -> membership::Observed {
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
        .map(|o| {
            let pod = observed.pod(o).map(|p| PodState {
                reachable: p.status.is_ok(),
                applied_index: p.status.as_ref().ok().map(|s| s.store.raft.applied_index),
            });
            Member {
                ordinal: o,
                pod,
                role: raft.iter().find(|r| r.0 == o).map(|r| r.1),
            }
        })
        .collect();
    let leader = observed.leader();
    membership::Observed {
        leader: leader.map(|p| p.ordinal),
        leader_last_log_index: observed
            .leader_status()
            .map_or(0, |s| s.store.raft.last_log_index),
        members,
    }
}
