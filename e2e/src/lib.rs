//! End-to-end harness for litecluster.
//!
//! Brings up a real Kubernetes control plane on loopback: etcd (the official
//! release binary shipped in the `etcd-bin-vendored` crate), and
//! kube-apiserver, kube-controller-manager and kube-scheduler built from the
//! `k8s.io/kubernetes` Go module pinned in `e2e/k8s/go.mod` (see
//! `e2e/scripts/build-control-plane.sh`, which caches the binaries under a
//! versioned directory). kubectl comes from the machine.
//!
//! ```no_run
//! let mut cp = litecluster_e2e::ControlPlane::start(
//!     litecluster_e2e::Options::for_test("example"),
//! )?;
//! cp.kubectl_ok(&["create", "namespace", "demo"])?;
//! cp.stop()?;
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod addons;
pub mod binaries;
pub mod control_plane;
pub mod kubelet;
pub mod network;
pub mod pki;
pub mod pods;
mod process;
pub mod stack;
pub mod weed;

pub use binaries::{Binaries, K8S_VERSION, ensure_binaries};
pub use control_plane::{ControlPlane, Options, down};
