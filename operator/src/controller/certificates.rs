//! TLS by default: when a cluster names no certificate Secret, the operator issues a CA of its
//! own for the cluster (Secret `<name>-ca`, never mounted into a pod) and one member
//! certificate from it (Secret `<name>-tls`, cert-manager's layout), and renews the certificate
//! a third of its life before it expires. From there on the cluster is treated exactly as one
//! with `spec.tls.secretName: <name>-tls`: a renewal rolls the members one at a time.
//!
//! TLS never changes on or off under running members (they could not talk to each other): the
//! live StatefulSet says what they run, and a spec that disagrees stops the reconcile with a
//! message. A cluster created before TLS became the default has members without it and no
//! `spec.tls`; it stays without TLS.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Pod, PodSpec, Secret};
use kube::api::PostParams;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::Context;
use crate::crd::{SqliteCluster, TlsSpec};
use crate::resources::statefulset::CONTAINER;
use crate::resources::{Names, bytes_hash, owned_meta};
use crate::{Error, Result};

/// How long an issued CA is valid. Renewing a CA needs every member to trust the new one first;
/// the operator does not do that yet, so it is issued for long.
pub const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long an issued member certificate is valid.
pub const CERT_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// A member certificate with less than this left is renewed.
pub const RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Certificates start an hour back, for members whose clocks run behind the operator's.
const BACKDATE: Duration = Duration::from_secs(3600);

/// When an issued certificate expires, in seconds since the epoch.
pub const NOT_AFTER_ANNOTATION: &str = "litecluster.io/not-after";
/// Hash of the names an issued certificate holds; a change (another cluster domain) reissues.
pub const NAMES_ANNOTATION: &str = "litecluster.io/names-hash";

/// The Secret of the CA the operator issues for a cluster.
pub fn ca_secret_name(c: &SqliteCluster) -> String {
    format!("{}-ca", c.name_any())
}

/// The Secret of the member certificate the operator issues for a cluster.
pub fn tls_secret_name(c: &SqliteCluster) -> String {
    format!("{}-tls", c.name_any())
}

/// The cluster as the rest of the reconcile sees it: `spec.tls` names the Secret members use
/// (issued here when the spec names none), or is off.
/// What the running members were started with: TLS on Raft, HTTPS on the API, and the Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveTls {
    pub tls: bool,
    pub api: bool,
    pub secret: Option<String>,
}

impl LiveTls {
    fn of(spec: &PodSpec) -> Option<LiveTls> {
        let node = spec.containers.iter().find(|c| c.name == CONTAINER)?;
        let args = node.args.as_deref().unwrap_or_default();
        let has = |flag: &str| args.iter().any(|a| a.starts_with(flag));
        let secret = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "tls")
            .and_then(|v| v.secret.as_ref())
            .and_then(|s| s.secret_name.clone());
        Some(LiveTls {
            tls: has("--raft-cert="),
            api: has("--http-cert="),
            secret,
        })
    }

    /// From the live StatefulSet's template, or without one (deleted with `--cascade=orphan`)
    /// from a running member pod.
    pub fn observe(sts: Option<&StatefulSet>, pods: &[Pod]) -> Option<LiveTls> {
        sts.and_then(|s| s.spec.as_ref())
            .and_then(|s| s.template.spec.as_ref())
            .and_then(LiveTls::of)
            .or_else(|| {
                pods.iter()
                    .filter(|p| p.metadata.deletion_timestamp.is_none())
                    .find_map(|p| p.spec.as_ref().and_then(LiveTls::of))
            })
    }
}

/// `live` is what the running members were started with, if any run.
pub async fn resolve(
    cluster: &SqliteCluster,
    ctx: &Context,
    ns: &str,
    live: Option<&LiveTls>,
) -> Result<SqliteCluster> {
    let spec = cluster.spec.tls.clone();
    let refuse = |what: String| {
        Err(Error::TlsSecret {
            secret: tls_secret_name(cluster),
            what,
        })
    };
    let mut resolved = cluster.clone();
    let want_tls = spec.as_ref().is_none_or(|t| t.enabled);
    match (want_tls, live.map(|l| l.tls)) {
        (false, Some(true)) => {
            return refuse("the members run with TLS and the spec turns it off; members with and without TLS cannot talk to each other, so put tls.enabled back to true (to drop TLS, create a new cluster and load a backup into it)".into());
        }
        (false, _) => return Ok(resolved),
        // Created before TLS was the default: it stays as it runs.
        (true, Some(false)) if spec.is_none() => {
            resolved.spec.tls = Some(TlsSpec {
                enabled: false,
                ..Default::default()
            });
            return Ok(resolved);
        }
        (true, Some(false)) => {
            return refuse("the members run without TLS and spec.tls turns it on; members with and without TLS cannot talk to each other, so set tls.enabled: false (to add TLS, create a new cluster with it and load a backup into it)".into());
        }
        (true, _) => {}
    }
    let tls = spec.unwrap_or_default();
    if let Some(live) = live
        && live.api != tls.api
    {
        return refuse(format!(
            "the members serve their API over {} and the spec now says tls.api: {}; members that disagree cannot reach each other, so put tls.api: {} back",
            if live.api { "HTTPS" } else { "HTTP" },
            tls.api,
            live.api
        ));
    }
    let issued = tls.secret_name.is_none();
    if let Some(live) = live
        && issued
        && let Some(theirs) = live.secret.as_deref()
        && theirs != tls_secret_name(cluster)
    {
        return refuse(format!(
            "the members run with the Secret {theirs} and spec.tls no longer names it; put tls.secretName: {theirs} back (an issued certificate comes from another CA, which the running members do not trust)"
        ));
    }
    if issued {
        issue_if_needed(cluster, ctx, ns).await?;
    }
    resolved.spec.tls = Some(TlsSpec {
        secret_name: Some(
            tls.secret_name
                .clone()
                .unwrap_or_else(|| tls_secret_name(cluster)),
        ),
        ..tls
    });
    Ok(resolved)
}

/// What the issued Secrets need.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    Keep,
    /// A CA and a certificate: the cluster has neither.
    IssueAll,
    /// A new certificate from the existing CA, and why.
    Renew(&'static str),
}

/// Decides from the two Secrets (as read) what to issue. Errors say what the user must fix.
pub fn plan(
    cluster: &SqliteCluster,
    ca: Option<&Secret>,
    tls: Option<&Secret>,
    names_hash: &str,
    now: SystemTime,
) -> std::result::Result<Plan, String> {
    let owned = |s: &Secret| {
        s.owner_references()
            .iter()
            .any(|o| Some(&o.uid) == cluster.metadata.uid.as_ref())
    };
    for s in [ca, tls].into_iter().flatten() {
        if !owned(s) {
            return Err(format!(
                "Secret {} exists and was not issued by the operator for this cluster: {}",
                s.name_any(),
                if s.name_any() == ca_secret_name(cluster) {
                    "rename or delete it so the operator can keep the cluster's CA there, or name your own certificate Secret in spec.tls.secretName"
                } else {
                    "name it in spec.tls.secretName to use it, or delete it so the operator issues its own"
                }
            ));
        }
    }
    let Some(ca) = ca else {
        return match tls {
            None => Ok(Plan::IssueAll),
            Some(_) => Err(format!(
                "Secret {} (the cluster's CA) is missing, so {} cannot be renewed: restore it from a backup of the namespace; a new CA would cut off the running members",
                ca_secret_name(cluster),
                tls_secret_name(cluster)
            )),
        };
    };
    if key(ca, "ca.crt").is_none() || key(ca, "ca.key").is_none() {
        return Err(format!(
            "Secret {} lacks ca.crt or ca.key: restore it",
            ca_secret_name(cluster)
        ));
    }
    let Some(tls) = tls else {
        return Ok(Plan::Renew("there is none yet"));
    };
    let annotation = |k: &str| tls.annotations().get(k).map(String::as_str);
    if key(tls, "tls.crt").is_none() || key(tls, "tls.key").is_none() {
        return Ok(Plan::Renew("the Secret lacks its certificate or key"));
    }
    if key(tls, "ca.crt") != key(ca, "ca.crt") {
        return Ok(Plan::Renew("its ca.crt differs from the CA"));
    }
    if annotation(NAMES_ANNOTATION) != Some(names_hash) {
        return Ok(Plan::Renew("the member names changed"));
    }
    let not_after = annotation(NOT_AFTER_ANNOTATION).and_then(|v| v.parse::<u64>().ok());
    let left = not_after
        .map(|t| UNIX_EPOCH + Duration::from_secs(t))
        .and_then(|t| t.duration_since(now).ok())
        .unwrap_or_default();
    if left < RENEW_BEFORE {
        return Ok(Plan::Renew("it expires within 30 days"));
    }
    Ok(Plan::Keep)
}

fn key<'a>(s: &'a Secret, k: &str) -> Option<&'a [u8]> {
    s.data
        .as_ref()?
        .get(k)
        .map(|v| v.0.as_slice())
        .filter(|v| !v.is_empty())
}

/// DNS names of the member certificate: every member on the headless Service, the client and
/// read-only Services in their short and full forms, and `localhost` for `kubectl port-forward`.
pub fn names(cluster: &SqliteCluster, ns: &str, domain: &str) -> Vec<String> {
    let mut out = vec![
        format!("*.{}.{ns}.svc.{domain}", Names::headless(cluster)),
        format!("*.{}.{ns}.svc", Names::headless(cluster)),
    ];
    for svc in [Names::client(cluster), Names::readonly(cluster)] {
        out.extend([
            format!("{svc}.{ns}.svc.{domain}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}"),
            svc,
        ]);
    }
    out.push("localhost".into());
    out
}

async fn issue_if_needed(cluster: &SqliteCluster, ctx: &Context, ns: &str) -> Result<()> {
    let api = Api::<Secret>::namespaced(ctx.client.clone(), ns);
    let tls_name = tls_secret_name(cluster);
    let fail = |what: String| Error::TlsSecret {
        secret: tls_name.clone(),
        what,
    };
    let ca = api.get_opt(&ca_secret_name(cluster)).await?;
    let tls = api.get_opt(&tls_name).await?;
    let names = names(cluster, ns, &ctx.cluster_domain);
    let names_hash = bytes_hash(names.join(",").as_bytes());
    let now = SystemTime::now();
    let plan = plan(cluster, ca.as_ref(), tls.as_ref(), &names_hash, now).map_err(fail)?;
    let (ca_pem, ca_key) = match (&plan, &ca) {
        (Plan::Keep, _) => return Ok(()),
        (Plan::IssueAll, _) => {
            let (pem, key, not_after) = new_ca(cluster, ns, now).map_err(fail)?;
            let mut secret = Secret {
                metadata: owned_meta(cluster, ca_secret_name(cluster)),
                type_: Some("Opaque".into()),
                data: Some(
                    [
                        ("ca.crt".to_string(), ByteString(pem.clone().into_bytes())),
                        ("ca.key".to_string(), ByteString(key.clone().into_bytes())),
                    ]
                    .into(),
                ),
                ..Default::default()
            };
            secret
                .annotations_mut()
                .insert(NOT_AFTER_ANNOTATION.into(), not_after.to_string());
            api.create(&PostParams::default(), &secret).await?;
            (pem, key)
        }
        (Plan::Renew(_), Some(ca)) => {
            let text = |k| String::from_utf8_lossy(key(ca, k).unwrap_or_default()).into_owned();
            (text("ca.crt"), text("ca.key"))
        }
        (Plan::Renew(_), None) => unreachable!("plan renews only with a CA"),
    };
    let (cert, cert_key, not_after) =
        new_member_cert(cluster, ns, &ca_key, &names, now).map_err(fail)?;
    let mut secret = Secret {
        metadata: owned_meta(cluster, tls_name.clone()),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("tls.crt".to_string(), ByteString(cert.into_bytes())),
                ("tls.key".to_string(), ByteString(cert_key.into_bytes())),
                ("ca.crt".to_string(), ByteString(ca_pem.into_bytes())),
            ]
            .into(),
        ),
        ..Default::default()
    };
    let a = secret.annotations_mut();
    a.insert(NOT_AFTER_ANNOTATION.into(), not_after.to_string());
    a.insert(NAMES_ANNOTATION.into(), names_hash);
    let why = match plan {
        Plan::Renew(why) => why,
        _ => "the cluster has no certificate Secret",
    };
    match tls {
        Some(live) => {
            secret.metadata.resource_version = live.resource_version();
            api.replace(&tls_name, &PostParams::default(), &secret)
                .await?;
        }
        None => {
            api.create(&PostParams::default(), &secret).await?;
        }
    }
    tracing::info!(cluster = %cluster.name_any(), secret = %tls_name, reason = why, not_after, "issued a member certificate");
    ctx.publish(
        cluster,
        EventType::Normal,
        "CertificateIssued",
        "IssueCertificate",
        format!(
            "issued {tls_name} from {} ({why}); valid until {}",
            ca_secret_name(cluster),
            rfc3339(not_after)
        ),
    )
    .await;
    Ok(())
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn at(t: SystemTime) -> std::result::Result<time::OffsetDateTime, String> {
    time::OffsetDateTime::from_unix_timestamp(secs(t)).map_err(|e| format!("bad time: {e}"))
}

fn rfc3339(unix: i64) -> String {
    k8s_openapi::jiff::Timestamp::from_second(unix)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| unix.to_string())
}

/// The CA's parameters. A renewal signs with the stored key under the same name, so these are
/// rebuilt the same way each time (rcgen issues from parameters and a key, not from a PEM).
fn ca_params(cluster: &SqliteCluster, ns: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "litecluster");
    dn.push(
        DnType::CommonName,
        format!("litecluster CA {ns}/{}", cluster.name_any()),
    );
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// A new CA: (certificate PEM, key PEM, not-after in seconds since the epoch).
fn new_ca(
    cluster: &SqliteCluster,
    ns: &str,
    now: SystemTime,
) -> std::result::Result<(String, String, i64), String> {
    let e = |e: rcgen::Error| format!("cannot issue a CA: {e}");
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(e)?;
    let mut p = ca_params(cluster, ns);
    p.not_before = at(now - BACKDATE)?;
    p.not_after = at(now + CA_LIFETIME)?;
    let cert = p.self_signed(&key).map_err(e)?;
    Ok((cert.pem(), key.serialize_pem(), secs(now + CA_LIFETIME)))
}

/// A member certificate from the CA key: (certificate PEM, key PEM, not-after).
fn new_member_cert(
    cluster: &SqliteCluster,
    ns: &str,
    ca_key_pem: &str,
    names: &[String],
    now: SystemTime,
) -> std::result::Result<(String, String, i64), String> {
    let e = |e: rcgen::Error| format!("cannot issue a member certificate: {e}");
    let ca_key = KeyPair::from_pem(ca_key_pem).map_err(e)?;
    let issuer = Issuer::new(ca_params(cluster, ns), ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(e)?;
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "litecluster");
    dn.push(DnType::CommonName, format!("{}.{ns}", cluster.name_any()));
    p.distinguished_name = dn;
    p.subject_alt_names = names
        .iter()
        .map(|n| {
            n.clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|_| format!("{n} is not a DNS name"))
        })
        .collect::<std::result::Result<_, _>>()?;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    p.not_before = at(now - BACKDATE)?;
    p.not_after = at(now + CERT_LIFETIME)?;
    let cert = p.signed_by(&key, &issuer).map_err(e)?;
    Ok((cert.pem(), key.serialize_pem(), secs(now + CERT_LIFETIME)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::cluster;
    use crate::tls::{pem_certs, verify_member};

    fn with_owner(c: &SqliteCluster, mut s: Secret) -> Secret {
        s.metadata.owner_references = Some(vec![crate::resources::owner_ref(c)]);
        s
    }

    fn secret(data: &[(&str, &str)], annotations: &[(&str, &str)]) -> Secret {
        let mut s = Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        s.metadata.name = Some("x".into());
        for (k, v) in annotations {
            s.annotations_mut().insert(k.to_string(), v.to_string());
        }
        s
    }

    #[test]
    fn an_issued_certificate_verifies_for_every_member_as_server_and_client() {
        let c = cluster();
        let now = SystemTime::now();
        let (ca, ca_key, ca_after) = new_ca(&c, "ns", now).unwrap();
        let names = names(&c, "ns", "cluster.local");
        let (cert, _key, after) = new_member_cert(&c, "ns", &ca_key, &names, now).unwrap();
        assert!(after < ca_after);
        let chain = pem_certs(cert.as_bytes()).unwrap();
        let anchors = pem_certs(ca.as_bytes()).unwrap();
        let members: Vec<String> = (0..5)
            .map(|o| format!("db-{o}.db-headless.ns.svc.cluster.local"))
            .chain([
                "db.ns.svc".into(),
                "db-readonly.ns.svc.cluster.local".into(),
            ])
            .collect();
        verify_member(&chain, &anchors, &members).unwrap();
        // A renewal from the stored key is trusted under the same CA certificate.
        let (again, _, _) =
            new_member_cert(&c, "ns", &ca_key, &names, now + Duration::from_secs(60)).unwrap();
        verify_member(&pem_certs(again.as_bytes()).unwrap(), &anchors, &members).unwrap();
        // And not under another cluster's CA.
        let (other, _, _) = new_ca(&c, "ns", now).unwrap();
        assert!(verify_member(&chain, &pem_certs(other.as_bytes()).unwrap(), &members).is_err());
    }

    #[test]
    fn plan_issues_renews_and_refuses_what_it_does_not_own() {
        let c = cluster();
        let now = SystemTime::now();
        let later = |d: Duration| (secs(now + d)).to_string();
        let ca = with_owner(&c, secret(&[("ca.crt", "C"), ("ca.key", "K")], &[]));
        let good = |not_after: String, names: &str| {
            with_owner(
                &c,
                secret(
                    &[("tls.crt", "T"), ("tls.key", "K"), ("ca.crt", "C")],
                    &[
                        (NOT_AFTER_ANNOTATION, &not_after),
                        (NAMES_ANNOTATION, names),
                    ],
                ),
            )
        };
        let p = |ca: Option<&Secret>, tls: Option<&Secret>| plan(&c, ca, tls, "h", now);
        assert_eq!(p(None, None), Ok(Plan::IssueAll));
        assert!(matches!(p(Some(&ca), None), Ok(Plan::Renew(_))));
        let fresh = good(later(CERT_LIFETIME), "h");
        assert_eq!(p(Some(&ca), Some(&fresh)), Ok(Plan::Keep));
        let old = good(later(RENEW_BEFORE - Duration::from_secs(60)), "h");
        assert_eq!(
            p(Some(&ca), Some(&old)),
            Ok(Plan::Renew("it expires within 30 days"))
        );
        let moved = good(later(CERT_LIFETIME), "other");
        assert_eq!(
            p(Some(&ca), Some(&moved)),
            Ok(Plan::Renew("the member names changed"))
        );
        // The user's own Secret under our name is never overwritten.
        let mut foreign = fresh.clone();
        foreign.metadata.owner_references = None;
        let err = p(Some(&ca), Some(&foreign)).unwrap_err();
        assert!(err.contains("spec.tls.secretName"), "{err}");
        // Without its CA a running cluster's certificate is not replaced by one they distrust.
        let err = p(None, Some(&fresh)).unwrap_err();
        assert!(err.contains("is missing"), "{err}");
    }
}
