//! Security contexts: user and group (container over pod), runAsNonRoot, read-only root.

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Container;

/// The parts of a container's security context the process kubelet applies.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Security {
    pub(super) uid: Option<u32>,
    pub(super) gid: Option<u32>,
    pub(super) read_only_root: bool,
}

impl Security {
    /// Container settings win over the pod's, as in Kubernetes.
    pub(super) fn of(
        spec: &k8s_openapi::api::core::v1::PodSpec,
        c: &Container,
    ) -> Result<Security> {
        let pod = spec.security_context.as_ref();
        let ctr = c.security_context.as_ref();
        let uid = ctr
            .and_then(|s| s.run_as_user)
            .or_else(|| pod.and_then(|s| s.run_as_user));
        let gid = ctr
            .and_then(|s| s.run_as_group)
            .or_else(|| pod.and_then(|s| s.run_as_group))
            .or_else(|| pod.and_then(|s| s.fs_group));
        let non_root = ctr
            .and_then(|s| s.run_as_non_root)
            .or_else(|| pod.and_then(|s| s.run_as_non_root))
            .unwrap_or(false);
        if non_root && uid.unwrap_or(0) == 0 {
            // Our "images" have no USER: without runAsUser they would run as root.
            bail!(
                "container {} has runAsNonRoot but no non-zero runAsUser: it would run as root",
                c.name
            );
        }
        let id = |v: Option<i64>, what: &str| -> Result<Option<u32>> {
            v.map(|v| u32::try_from(v).with_context(|| format!("{what} {v} is out of range")))
                .transpose()
        };
        Ok(Security {
            uid: id(uid, "runAsUser")?,
            gid: id(gid, "runAsGroup")?,
            read_only_root: ctr
                .and_then(|s| s.read_only_root_filesystem)
                .unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_context_container_over_pod_and_non_root_enforced() {
        use k8s_openapi::api::core::v1::{PodSecurityContext, PodSpec, SecurityContext};
        let spec = PodSpec {
            security_context: Some(PodSecurityContext {
                run_as_user: Some(65532),
                fs_group: Some(65533),
                run_as_non_root: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut c = Container {
            name: "db".into(),
            security_context: Some(SecurityContext {
                read_only_root_filesystem: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            Security::of(&spec, &c).unwrap(),
            Security {
                uid: Some(65532),
                gid: Some(65533),
                read_only_root: true
            }
        );
        c.security_context.as_mut().unwrap().run_as_user = Some(0);
        let err = Security::of(&spec, &c).unwrap_err().to_string();
        assert!(err.contains("runAsNonRoot"), "{err}");
    }
}
