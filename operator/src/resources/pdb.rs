//! PodDisruptionBudget that keeps a Raft quorum through voluntary disruptions (drains).

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Names, owned_meta, selector_labels};
use crate::crd::SqliteCluster;

/// At most `voters / 2` members may be evicted at once, so a majority of voters stays up.
/// The budget counts all members (the pod labels do not say who votes), which is conservative:
/// learners share the voters' allowance. A single-voter cluster gets `maxUnavailable: 0`, so a
/// drain must wait for the user (one voter cannot survive its own eviction anyway).
pub fn desired_pdb(c: &SqliteCluster) -> PodDisruptionBudget {
    let max_unavailable = c.effective_voters() / 2;
    PodDisruptionBudget {
        metadata: owned_meta(c, Names::pdb(c)),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(max_unavailable)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(c)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::{ClusterExt, cluster};

    fn max_unavailable(c: &SqliteCluster) -> IntOrString {
        desired_pdb(c).spec.unwrap().max_unavailable.unwrap()
    }

    #[test]
    fn pdb_keeps_quorum() {
        assert_eq!(
            max_unavailable(&cluster().with_replicas(3).with_voters(3)),
            IntOrString::Int(1)
        );
        assert_eq!(
            max_unavailable(&cluster().with_replicas(7).with_voters(5)),
            IntOrString::Int(2)
        );
        assert_eq!(
            max_unavailable(&cluster().with_replicas(1).with_voters(3)),
            IntOrString::Int(0)
        );
        assert_eq!(
            max_unavailable(&cluster().with_replicas(2).with_voters(3)),
            IntOrString::Int(0)
        );
    }
}
