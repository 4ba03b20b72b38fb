//! The three Services of a cluster: headless (member DNS), client (read/write), read-only.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{HTTP_PORT, LEARNER, Names, RAFT_PORT, ROLE_LABEL, owned_meta, selector_labels};
use crate::crd::SqliteCluster;

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    }
}

/// Headless Service giving each member a stable DNS name (`db-0.db-headless.ns.svc`). It
/// publishes members before they are ready: a member must be reachable to join and catch up.
pub fn desired_headless_service(c: &SqliteCluster) -> Service {
    Service {
        metadata: owned_meta(c, Names::headless(c)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(c)),
            ports: Some(vec![port("http", HTTP_PORT), port("raft", RAFT_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Client Service for reads and writes: any ready member (followers forward writes to the leader).
pub fn desired_client_service(c: &SqliteCluster) -> Service {
    Service {
        metadata: owned_meta(c, Names::client(c)),
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(c)),
            ports: Some(vec![port("http", HTTP_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Read-only Service for reads at consistency `none`/`weak`. With `read_replicas` (the cluster
/// has learners meant to stay learners) it selects only pods labelled `litecluster.io/role=learner`,
/// so read traffic stays off the voters that carry every write; otherwise every ready member.
pub fn desired_readonly_service(c: &SqliteCluster, read_replicas: bool) -> Service {
    let mut svc = desired_client_service(c);
    svc.metadata.name = Some(Names::readonly(c));
    if read_replicas && let Some(selector) = svc.spec.as_mut().and_then(|s| s.selector.as_mut()) {
        selector.insert(ROLE_LABEL.into(), LEARNER.into());
    }
    svc
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::cluster;

    #[test]
    fn headless_service_publishes_not_ready_members() {
        let s = desired_headless_service(&cluster());
        let spec = s.spec.unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("db-headless"));
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        let ports: Vec<_> = spec.ports.unwrap().iter().map(|p| p.port).collect();
        assert_eq!(ports, [4001, 4002]);
    }

    #[test]
    fn readonly_service_selects_learners_only_when_there_are_read_replicas() {
        let selector = |read_replicas| {
            desired_readonly_service(&cluster(), read_replicas)
                .spec
                .unwrap()
                .selector
                .unwrap()
        };
        let all = selector(false);
        assert_eq!(all, selector_labels(&cluster()));
        let learners = selector(true);
        assert_eq!(learners["litecluster.io/role"], "learner");
        assert_eq!(learners.len(), all.len() + 1, "{learners:?}");
        // The client Service never narrows: writes and consistent reads go to any member.
        assert!(
            !desired_client_service(&cluster())
                .spec
                .unwrap()
                .selector
                .unwrap()
                .contains_key("litecluster.io/role")
        );
    }

    #[test]
    fn client_and_readonly_services_expose_http_only() {
        for (s, name) in [
            (desired_client_service(&cluster()), "db"),
            (desired_readonly_service(&cluster(), true), "db-readonly"),
        ] {
            assert_eq!(s.metadata.name.as_deref(), Some(name));
            let spec = s.spec.unwrap();
            assert_eq!(spec.cluster_ip, None);
            assert_eq!(spec.publish_not_ready_addresses, None);
            assert_eq!(spec.ports.unwrap().len(), 1);
            assert_eq!(
                spec.selector
                    .unwrap()
                    .get("app.kubernetes.io/instance")
                    .map(String::as_str),
                Some("db")
            );
        }
    }
}
