//! The ServiceAccount the member pods run as (no API access, token not mounted).

use k8s_openapi::api::core::v1::ServiceAccount;

use super::{Names, owned_meta};
use crate::crd::SqliteCluster;

pub fn desired_service_account(c: &SqliteCluster) -> ServiceAccount {
    ServiceAccount {
        metadata: owned_meta(c, Names::service_account(c)),
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::cluster;

    #[test]
    fn service_account_does_not_mount_a_token() {
        let sa = desired_service_account(&cluster());
        assert_eq!(sa.metadata.name.as_deref(), Some("db-node"));
        assert_eq!(sa.automount_service_account_token, Some(false));
    }
}
