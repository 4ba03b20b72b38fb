//! Certificates and keys for the control plane, made with the `openssl` CLI.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// A key pair and the certificate for it.
#[derive(Debug, Clone)]
pub struct CertKey {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything the control plane needs, in one directory.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
    pub ca: CertKey,
    /// Serving certificate of kube-apiserver.
    pub apiserver: CertKey,
    /// Service-account token signing key (private) and its public half.
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    /// Client certificates.
    pub admin: CertKey,
    pub controller_manager: CertKey,
    pub scheduler: CertKey,
}

/// Subject alternative names of the apiserver certificate (besides any given
/// to [`Pki::generate`]).
pub const APISERVER_SANS: &[&str] = &[
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
    "IP:127.0.0.1",
];

impl Pki {
    /// Generates a fresh CA and every certificate under `dir`. `extra_sans`
    /// are added to the apiserver certificate (e.g. `"IP:10.96.0.1"`).
    pub fn generate(dir: &Path, extra_sans: &[String]) -> Result<Pki> {
        fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let cnf = dir.join("openssl.cnf");
        fs::write(
            &cnf,
            "[req]\ndistinguished_name = dn\n[dn]\n\
             [v3_ca]\nbasicConstraints = critical,CA:TRUE\n\
             keyUsage = critical,keyCertSign,cRLSign,digitalSignature\n\
             subjectKeyIdentifier = hash\n",
        )?;

        let ca = CertKey {
            cert: dir.join("ca.crt"),
            key: dir.join("ca.key"),
        };
        ec_key(&ca.key)?;
        openssl(&[
            "req",
            "-x509",
            "-new",
            "-sha256",
            "-days",
            "3650",
            "-config",
            s(&cnf),
            "-extensions",
            "v3_ca",
            "-subj",
            "/CN=litecluster-e2e-ca",
            "-key",
            s(&ca.key),
            "-out",
            s(&ca.cert),
        ])?;

        let mut sans: Vec<String> = APISERVER_SANS.iter().map(|s| s.to_string()).collect();
        sans.extend(extra_sans.iter().cloned());
        let apiserver = issue(
            &dir,
            &ca,
            "apiserver",
            "/CN=kube-apiserver",
            "serverAuth",
            &sans,
        )?;
        let admin = issue(
            &dir,
            &ca,
            "admin",
            "/O=system:masters/CN=kubernetes-admin",
            "clientAuth",
            &[],
        )?;
        let controller_manager = issue(
            &dir,
            &ca,
            "controller-manager",
            "/CN=system:kube-controller-manager",
            "clientAuth",
            &[],
        )?;
        let scheduler = issue(
            &dir,
            &ca,
            "scheduler",
            "/CN=system:kube-scheduler",
            "clientAuth",
            &[],
        )?;

        let sa_key = dir.join("sa.key");
        let sa_pub = dir.join("sa.pub");
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            s(&sa_key),
        ])?;
        openssl(&["pkey", "-in", s(&sa_key), "-pubout", "-out", s(&sa_pub)])?;

        Ok(Pki {
            dir,
            ca,
            apiserver,
            sa_key,
            sa_pub,
            admin,
            controller_manager,
            scheduler,
        })
    }

    /// Issues another certificate from this CA (e.g. for a kubelet later).
    /// `subject` is an openssl subject such as `/O=system:nodes/CN=system:node:n1`;
    /// `usage` is `serverAuth`, `clientAuth` or `serverAuth,clientAuth`.
    pub fn issue(
        &self,
        name: &str,
        subject: &str,
        usage: &str,
        sans: &[String],
    ) -> Result<CertKey> {
        issue(&self.dir, &self.ca, name, subject, usage, sans)
    }
}

fn issue(
    dir: &Path,
    ca: &CertKey,
    name: &str,
    subject: &str,
    usage: &str,
    sans: &[String],
) -> Result<CertKey> {
    let ck = CertKey {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    let csr = dir.join(format!("{name}.csr"));
    let ext = dir.join(format!("{name}.ext"));
    ec_key(&ck.key)?;
    openssl(&[
        "req",
        "-new",
        "-config",
        s(&dir.join("openssl.cnf")),
        "-subj",
        subject,
        "-key",
        s(&ck.key),
        "-out",
        s(&csr),
    ])?;
    let mut exts = format!(
        "basicConstraints = critical,CA:FALSE\n\
         keyUsage = critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage = {usage}\n\
         authorityKeyIdentifier = keyid\n"
    );
    if !sans.is_empty() {
        exts.push_str(&format!("subjectAltName = {}\n", sans.join(",")));
    }
    fs::write(&ext, exts)?;
    openssl(&[
        "x509",
        "-req",
        "-sha256",
        "-days",
        "3650",
        "-in",
        s(&csr),
        "-CA",
        s(&ca.cert),
        "-CAkey",
        s(&ca.key),
        "-CAcreateserial",
        "-CAserial",
        s(&dir.join("ca.srl")),
        "-extfile",
        s(&ext),
        "-out",
        s(&ck.cert),
    ])?;
    let _ = fs::remove_file(csr);
    Ok(ck)
}

fn ec_key(path: &Path) -> Result<()> {
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        s(path),
    ])
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running openssl (is the openssl CLI installed?)")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_verifiable_pki() {
        let dir = std::env::temp_dir().join(format!("litecluster-pki-{}", std::process::id()));
        let pki = Pki::generate(&dir, &["IP:10.96.0.1".to_string()]).unwrap();
        for ck in [
            &pki.apiserver,
            &pki.admin,
            &pki.controller_manager,
            &pki.scheduler,
        ] {
            openssl(&["verify", "-CAfile", s(&pki.ca.cert), s(&ck.cert)]).unwrap();
        }
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-text", "-in", s(&pki.apiserver.cert)])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        for want in [
            "IP Address:10.96.0.1",
            "IP Address:127.0.0.1",
            "DNS:kubernetes.default.svc",
        ] {
            assert!(text.contains(want), "apiserver cert lacks {want}:\n{text}");
        }
        let out = Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-in", s(&pki.admin.cert)])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("O = system:masters"));
        fs::remove_dir_all(dir).unwrap();
    }
}
