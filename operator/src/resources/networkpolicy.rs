//! NetworkPolicy that keeps the Raft port to the cluster's own members.
//!
//! Whoever reaches a member's Raft port can take part in the protocol (append entries, ask for
//! votes), so only the other members may; the HTTP API stays open to every client (auth and
//! TLS guard it). Enforced only where the cluster's network plugin implements NetworkPolicy.

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{HTTP_PORT, Names, RAFT_PORT, owned_meta, selector_labels};
use crate::crd::SqliteCluster;

pub fn desired_network_policy(c: &SqliteCluster) -> NetworkPolicy {
    let members = LabelSelector {
        match_labels: Some(selector_labels(c)),
        ..Default::default()
    };
    let port = |p: i32| {
        Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::Int(p)),
            protocol: Some("TCP".into()),
            ..Default::default()
        }])
    };
    NetworkPolicy {
        metadata: owned_meta(c, Names::network_policy(c)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(members.clone()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(members),
                        ..Default::default()
                    }]),
                    ports: port(RAFT_PORT),
                },
                // No `from`: any client may reach the API.
                NetworkPolicyIngressRule {
                    from: None,
                    ports: port(HTTP_PORT),
                },
            ]),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::cluster;

    #[test]
    fn raft_port_only_from_members_api_from_anyone() {
        let c = cluster();
        let p = desired_network_policy(&c);
        let spec = p.spec.unwrap();
        let members = Some(selector_labels(&c));
        assert_eq!(spec.pod_selector.unwrap().match_labels, members);
        assert_eq!(spec.policy_types.unwrap(), ["Ingress"]);
        let rules = spec.ingress.unwrap();
        let rule_for = |port: i32| {
            rules
                .iter()
                .find(|r| {
                    r.ports
                        .as_ref()
                        .is_some_and(|ps| ps.iter().any(|p| p.port == Some(IntOrString::Int(port))))
                })
                .unwrap()
                .clone()
        };
        let raft = rule_for(RAFT_PORT);
        let from = raft.from.unwrap();
        assert_eq!(from.len(), 1);
        assert_eq!(from[0].pod_selector.as_ref().unwrap().match_labels, members);
        assert!(
            from[0].namespace_selector.is_none(),
            "members only, this namespace"
        );
        assert!(
            rule_for(HTTP_PORT).from.is_none(),
            "the API is open to clients"
        );
        // Nothing else is admitted: exactly the two rules.
        assert_eq!(rules.len(), 2);
    }
}
