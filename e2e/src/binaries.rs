//! Locating (and building when needed) the control-plane binaries.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

/// The Kubernetes release the control plane is built from. Must match
/// `e2e/k8s/go.mod` and `K8S_VERSION` in `e2e/scripts/build-control-plane.sh`
/// (a unit test checks both).
pub const K8S_VERSION: &str = "v1.33.13";

/// Paths of every program the harness runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The versioned cache directory holding the Go-built binaries.
    pub dir: PathBuf,
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub helm: PathBuf,
    pub kubectl: PathBuf,
}

/// The `e2e/` directory of the source tree this crate was built from.
pub fn e2e_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace root (parent of `e2e/`).
pub fn workspace_root() -> PathBuf {
    e2e_dir().parent().expect("e2e/ has a parent").to_path_buf()
}

/// `e2e/scripts/build-control-plane.sh`.
pub fn build_script() -> PathBuf {
    e2e_dir().join("scripts/build-control-plane.sh")
}

/// Runs the build script (a no-op taking about a second when everything is
/// cached; a cold build of Kubernetes otherwise) and returns the binaries.
/// The script's progress lines go straight to this process's stderr.
pub fn ensure_binaries() -> Result<Binaries> {
    let script = build_script();
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed with {}", script.display(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .context("build script printed no bin directory")?
        .trim();
    eprintln!(
        "[litecluster-e2e] control-plane binaries ready in {:.1}s: {dir}",
        started.elapsed().as_secs_f64()
    );
    from_dir(Path::new(dir))
}

/// The binaries in an already-built cache directory.
pub fn from_dir(dir: &Path) -> Result<Binaries> {
    let bins = Binaries {
        dir: dir.to_path_buf(),
        etcd: etcd_path()?,
        kube_apiserver: dir.join("kube-apiserver"),
        kube_controller_manager: dir.join("kube-controller-manager"),
        kube_scheduler: dir.join("kube-scheduler"),
        helm: dir.join("helm"),
        kubectl: kubectl_path()?,
    };
    for p in [
        &bins.etcd,
        &bins.kube_apiserver,
        &bins.kube_controller_manager,
        &bins.kube_scheduler,
        &bins.helm,
    ] {
        if !p.is_file() {
            bail!("missing binary {}", p.display());
        }
    }
    Ok(bins)
}

/// etcd: `$LITECLUSTER_ETCD` if set, else the binary vendored in the
/// `etcd-bin-vendored` crate.
pub fn etcd_path() -> Result<PathBuf> {
    if let Some(p) = env::var_os("LITECLUSTER_ETCD") {
        return Ok(PathBuf::from(p));
    }
    vendored_etcd()
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn vendored_etcd() -> Result<PathBuf> {
    Ok(etcd_bin_vendored::etcd_bin_path()
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .to_path_buf())
}

#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn vendored_etcd() -> Result<PathBuf> {
    bail!("no vendored etcd for this platform; set LITECLUSTER_ETCD to an etcd binary")
}

/// kubectl: `$LITECLUSTER_KUBECTL` if set, else the first `kubectl` on PATH.
pub fn kubectl_path() -> Result<PathBuf> {
    if let Some(p) = env::var_os("LITECLUSTER_KUBECTL") {
        return Ok(PathBuf::from(p));
    }
    which("kubectl").context("kubectl not found on PATH (set LITECLUSTER_KUBECTL)")
}

fn which(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_version_matches_go_mod_and_script() {
        let minor = K8S_VERSION.replacen("v1.", "v0.", 1);
        let go_mod = std::fs::read_to_string(e2e_dir().join("k8s/go.mod")).unwrap();
        assert!(
            go_mod.contains(&format!("require k8s.io/kubernetes {K8S_VERSION}")),
            "go.mod does not pin {K8S_VERSION}"
        );
        let replaces = go_mod
            .lines()
            .filter(|l| l.contains(" => ") && !l.trim_start().starts_with("//"));
        for line in replaces {
            assert!(line.trim_end().ends_with(&minor), "stale replace: {line}");
        }
        let script = std::fs::read_to_string(build_script()).unwrap();
        assert!(script.contains(&format!("\nK8S_VERSION={K8S_VERSION}\n")));
    }

    #[test]
    fn vendored_etcd_exists() {
        assert!(etcd_path().unwrap().is_file());
    }
}
