//! Checks on a cluster's TLS Secret before members restart onto it.
//!
//! A member reads its certificate and CA bundle at startup, so every restart (a rollout step,
//! remediation, or a crash) picks up what the Secret holds now. Two mistakes would then cut
//! members off: a certificate the members cannot use (wrong name, missing usage, another CA),
//! and a CA change the running members do not trust yet. Both are judged here, from the
//! Secret and from what the running pods were started with (hashes in their annotations).

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;

use crate::resources::bytes_hash;

/// Certificates of a PEM bundle, in order.
pub fn pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err("holds no certificate".into());
    }
    Ok(certs)
}

/// Hash of each certificate of a CA bundle, sorted: what a pod records of the CAs it trusts.
pub fn bundle_hashes(certs: &[CertificateDer<'_>]) -> Vec<String> {
    let mut h: Vec<String> = certs.iter().map(|c| bytes_hash(c)).collect();
    h.sort();
    h.dedup();
    h
}

/// Run `verify` now; if it says "not valid yet", again five minutes ahead: a certificate just
/// issued by a machine whose clock runs ahead of ours is fine, and holding restarts back for
/// it would only cause a false alarm.
fn now_or_soon(
    verify: impl Fn(UnixTime) -> Result<(), rustls::Error>,
) -> Result<(), rustls::Error> {
    let now = UnixTime::now();
    match verify(now) {
        Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidYet)) => verify(
            UnixTime::since_unix_epoch(std::time::Duration::from_secs(now.as_secs() + 300)),
        ),
        other => other,
    }
}

/// Whether `chain` (leaf first) is a certificate a member can use: issued by one of
/// `anchors`, valid now for every name in `names`, for both server and client authentication
/// (members are servers and clients of each other).
pub fn verify_member(
    chain: &[CertificateDer<'static>],
    anchors: &[CertificateDer<'static>],
    names: &[String],
) -> Result<(), String> {
    let (leaf, intermediates) = chain.split_first().ok_or("holds no certificate")?;
    let mut roots = RootCertStore::empty();
    for a in anchors {
        roots.add(a.clone()).map_err(|e| format!("CA: {e}"))?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    for name in names {
        let server_name = ServerName::try_from(name.clone()).map_err(|e| e.to_string())?;
        now_or_soon(|t| {
            server
                .verify_server_cert(leaf, intermediates, &server_name, &[], t)
                .map(|_| ())
        })
        .map_err(|e| format!("not valid as the server {name}: {e}"))?;
    }
    let client = WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .map_err(|e| e.to_string())?;
    now_or_soon(|t| {
        client
            .verify_client_cert(leaf, intermediates, t)
            .map(|_| ())
    })
    .map_err(|e| format!("not valid as a client: {e}"))?;
    Ok(())
}

/// What a running member was started with.
#[derive(Clone, Debug, PartialEq)]
pub struct Running {
    pub cert_hash: String,
    pub ca_hashes: Vec<String>,
}

/// Whether members may restart onto the Secret's `chain` and `bundle` while members started
/// with `running` keep running. Err says why not, in words for the cluster's status.
///
/// A restarted member must trust the others and be trusted by them. Safe cases: the CA bundle
/// is unchanged (a renewal); the certificate is unchanged and still valid under the new bundle
/// (a CA was added or one no longer used was dropped); or the new bundle keeps every CA the
/// running members trust and the new certificate comes from one of those (the middle step of a
/// CA rotation).
pub fn judge_change(
    running: &[Running],
    chain: &[CertificateDer<'static>],
    bundle: &[CertificateDer<'static>],
    member_names: &[String],
) -> Result<(), String> {
    verify_member(chain, bundle, member_names)
        .map_err(|e| format!("tls.crt is not usable under ca.crt: {e}"))?;
    let cert_hash = bytes_hash(&chain[0]);
    let new_hashes = bundle_hashes(bundle);
    for r in running {
        if r.ca_hashes == new_hashes || r.cert_hash == cert_hash {
            continue;
        }
        if !r.ca_hashes.iter().all(|h| new_hashes.contains(h)) {
            return Err("ca.crt no longer holds a CA the running members trust, and tls.crt changed too: restarted members could not reach the others. Rotate in steps: add the new CA to ca.crt, then issue from it, then drop the old CA".into());
        }
        let old_anchors: Vec<_> = bundle
            .iter()
            .filter(|c| r.ca_hashes.contains(&bytes_hash(c)))
            .cloned()
            .collect();
        verify_member(chain, &old_anchors, member_names).map_err(|e| {
            format!("tls.crt comes from a CA the running members do not trust yet ({e}): put the new CA in ca.crt and let the members restart onto it first")
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pem(name: &str) -> Vec<CertificateDer<'static>> {
        let path = format!("{}/testdata/{name}.crt", env!("CARGO_MANIFEST_DIR"));
        pem_certs(&std::fs::read(path).unwrap()).unwrap()
    }

    fn bundle(names: &[&str]) -> Vec<CertificateDer<'static>> {
        names.iter().flat_map(|n| pem(n)).collect()
    }

    fn running(cert: &str, cas: &[&str]) -> Running {
        Running {
            cert_hash: bytes_hash(&pem(cert)[0]),
            ca_hashes: bundle_hashes(&bundle(cas)),
        }
    }

    fn members() -> Vec<String> {
        (0..3)
            .map(|o| format!("db-{o}.db-headless.ns.svc.cluster.local"))
            .collect()
    }

    #[test]
    fn a_member_certificate_needs_the_name_both_usages_and_the_ca() {
        let ca1 = bundle(&["ca1"]);
        assert_eq!(verify_member(&pem("member1"), &ca1, &members()), Ok(()));
        let e = verify_member(&pem("othername"), &ca1, &members()).unwrap_err();
        assert!(e.contains("server db-0.db-headless"), "{e}");
        let e = verify_member(&pem("serveronly"), &ca1, &members()).unwrap_err();
        assert!(e.contains("client"), "{e}");
        assert!(verify_member(&pem("member2"), &ca1, &members()).is_err());
        assert!(pem_certs(b"not a pem").is_err());
    }

    #[test]
    fn renewals_and_stepwise_ca_rotation_are_safe_a_swap_is_not() {
        let check = |run: Running, cert: &str, cas: &[&str]| {
            judge_change(&[run], &pem(cert), &bundle(cas), &members())
        };
        // Renewal from the same CA.
        assert_eq!(
            check(running("member1", &["ca1"]), "member1b", &["ca1"]),
            Ok(())
        );
        // Rotation, step 1: the new CA joins the bundle, the certificate stays.
        assert_eq!(
            check(running("member1", &["ca1"]), "member1", &["ca1", "ca2"]),
            Ok(())
        );
        // Step 2: a certificate from the new CA, every running member trusts both.
        assert_eq!(
            check(
                running("member1", &["ca1", "ca2"]),
                "member2",
                &["ca2", "ca1"]
            ),
            Ok(())
        );
        // Step 3: the old CA goes; the certificate in use is from the new one.
        assert_eq!(
            check(running("member2", &["ca1", "ca2"]), "member2", &["ca2"]),
            Ok(())
        );

        // A swap: new CA and new certificate at once.
        let e = check(running("member1", &["ca1"]), "member2", &["ca2"]).unwrap_err();
        assert!(e.contains("Rotate in steps"), "{e}");
        // The new CA added and used in one go: members still on ca1 alone would refuse it.
        let e = check(running("member1", &["ca1"]), "member2", &["ca1", "ca2"]).unwrap_err();
        assert!(e.contains("do not trust yet"), "{e}");
        // Dropping the CA of the certificate still in use.
        assert!(check(running("member1", &["ca1", "ca2"]), "member1", &["ca2"]).is_err());
        // Whatever runs, a certificate that is not valid for the members is refused.
        let e = check(running("member1", &["ca1"]), "serveronly", &["ca1"]).unwrap_err();
        assert!(e.starts_with("tls.crt is not usable under ca.crt"), "{e}");
        // Nothing running yet (a new cluster): only the certificate itself is judged.
        assert_eq!(
            judge_change(&[], &pem("member2"), &bundle(&["ca2"]), &members()),
            Ok(())
        );
    }
}
