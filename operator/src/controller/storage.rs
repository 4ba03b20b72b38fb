//! Grows member volumes when `spec.storage.size` grows.
//!
//! A StatefulSet's claim template cannot change, so the operator patches each member's claim
//! (`data-<cluster>-<n>`) itself; the storage system does the rest (its StorageClass must set
//! `allowVolumeExpansion: true`). Only growth: CEL refuses a shrinking size at admission. A
//! refusal by the API server (the class cannot expand) is reported as a Warning Event and does
//! not stop the reconcile: the database keeps running on the volume it has.

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::{Context, MANAGER};
use crate::Result;
use crate::crd::SqliteCluster;
use crate::resources::{ordinal_of, selector_string};

/// Bytes in a Kubernetes quantity (`10Gi`, `500M`, `1.5e9`, `1073741824`), or None when it is
/// not one. Sizes only: milli and smaller suffixes are not accepted.
pub fn quantity_bytes(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let factor = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        _ => return None,
    };
    let n: f64 = number.parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some(n * factor)
}

/// The storage a claim asks for.
fn requested(pvc: &PersistentVolumeClaim) -> Option<&str> {
    pvc.spec
        .as_ref()?
        .resources
        .as_ref()?
        .requests
        .as_ref()?
        .get("storage")
        .map(|q| q.0.as_str())
}

/// Claims of this cluster's members that ask for less than `size`: (claim, what it asks now).
pub fn claims_to_grow<'a>(
    cluster: &SqliteCluster,
    claims: &'a [PersistentVolumeClaim],
) -> Vec<(&'a PersistentVolumeClaim, String)> {
    let Some(want) = quantity_bytes(&cluster.spec.storage.size) else {
        return vec![];
    };
    let prefix = format!("{}-", crate::resources::statefulset::DATA_VOLUME);
    claims
        .iter()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        // data-<cluster>-<n>: the member's own claim, not another claim that shares the labels.
        .filter(|c| {
            c.name_any()
                .strip_prefix(&prefix)
                .is_some_and(|pod| ordinal_of(cluster, pod).is_some())
        })
        .filter_map(|c| {
            let now = requested(c)?;
            (quantity_bytes(now)? < want).then(|| (c, now.to_string()))
        })
        .collect()
}

/// Ask every member claim that is smaller than `spec.storage.size` for the new size.
pub async fn reconcile_volumes(cluster: &SqliteCluster, ctx: &Context, ns: &str) -> Result<()> {
    let api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns);
    let claims = api
        .list(&ListParams::default().labels(&selector_string(cluster)))
        .await?
        .items;
    let size = &cluster.spec.storage.size;
    for (claim, from) in claims_to_grow(cluster, &claims) {
        let name = claim.name_any();
        let patch = json!({"spec": {"resources": {"requests": {"storage": size}}}});
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        match api.patch(&name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {
                info!(cluster = %cluster.name_any(), claim = %name, %from, to = %size, "volume expansion requested");
                let note = format!("growing {name} from {from} to {size}");
                ctx.publish(
                    cluster,
                    EventType::Normal,
                    "VolumeExpansion",
                    "Resize",
                    note,
                )
                .await;
            }
            // Refused by admission: the claim's class cannot expand (or a quota). Say so and
            // carry on; the next pass tries again, so fixing the class is enough.
            Err(kube::Error::Api(e)) if matches!(e.code, 403 | 422) => {
                warn!(cluster = %cluster.name_any(), claim = %name, error = %e.message, "volume expansion refused");
                let note = format!(
                    "cannot grow {name} from {from} to {size}: {}; its StorageClass must set allowVolumeExpansion: true",
                    e.message
                );
                ctx.publish(
                    cluster,
                    EventType::Warning,
                    "VolumeExpansionFailed",
                    "Resize",
                    note,
                )
                .await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::{ClusterExt, cluster};
    use k8s_openapi::api::core::v1::{PersistentVolumeClaimSpec, VolumeResourceRequirements};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn quantities_parse_as_bytes() {
        assert_eq!(quantity_bytes("1Gi"), Some(1073741824.0));
        assert_eq!(quantity_bytes("1073741824"), Some(1073741824.0));
        assert_eq!(quantity_bytes("1.5Gi"), Some(1.5 * 1073741824.0));
        assert_eq!(quantity_bytes("500M"), Some(5e8));
        assert_eq!(quantity_bytes("2e9"), Some(2e9));
        assert_eq!(quantity_bytes("10k"), Some(1e4));
        assert!(quantity_bytes("1Gi") > quantity_bytes("1G"));
        for bad in ["lots", "", "Gi", "1Xi", "-1Gi", "100m"] {
            assert_eq!(quantity_bytes(bad), None, "{bad}");
        }
    }

    fn claim(name: &str, size: &str) -> PersistentVolumeClaim {
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                resources: Some(VolumeResourceRequirements {
                    requests: Some([("storage".to_string(), Quantity(size.into()))].into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn only_member_claims_smaller_than_the_spec_grow() {
        let c = cluster().with_storage("2Gi", None);
        let claims = [
            claim("data-db-0", "1Gi"),
            claim("data-db-1", "2Gi"),
            claim("data-db-2", "2147483648"),
            claim("data-db-3", "3Gi"),
            claim("data-db-4", "1G"),
            // Shares the labels but is not a member's data claim.
            claim("scratch-db-0", "1Gi"),
            claim("data-other-0", "1Gi"),
        ];
        let grow: Vec<_> = claims_to_grow(&c, &claims)
            .into_iter()
            .map(|(c, from)| (c.name_any(), from))
            .collect();
        assert_eq!(
            grow,
            [
                ("data-db-0".to_string(), "1Gi".to_string()),
                ("data-db-4".to_string(), "1G".to_string())
            ]
        );
        // A size that does not parse never shrinks or grows anything.
        assert!(claims_to_grow(&cluster().with_storage("lots", None), &claims).is_empty());
    }
}
