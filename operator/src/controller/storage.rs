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
use crate::crd::SqliteCluster;
use crate::resources::{ordinal_of, selector_string};

/// A Kubernetes quantity exactly, in billionths of its unit (`10Gi`, `8.3G`, `1395864371200m`,
/// `1e9`), or None when it is not one (or too large). Exact because the API server rewrites a
/// quantity into its canonical form (`8.3G` is stored as `8300M`): floats would see those differ
/// and patch the claim on every pass.
pub fn quantity_nanos(q: &str) -> Option<u128> {
    let q = q.trim();
    let q = q.strip_prefix('+').unwrap_or(q);
    let end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.len() + frac.len() == 0 || frac.contains('.') {
        return None;
    }
    let mantissa: u128 = format!("{int}{frac}").parse().ok()?;
    let (exp10, exp2): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        // A decimal exponent: `1e9`, `1E3` (a bare `E` above is exa).
        s if s.starts_with(['e', 'E']) => (s[1..].parse().ok()?, 0),
        _ => return None,
    };
    let value = mantissa.checked_mul(1u128.checked_shl(exp2)?)?;
    let scale = 9 + exp10 - frac.len() as i32;
    if scale >= 0 {
        value.checked_mul(10u128.checked_pow(scale as u32)?)
    } else {
        // Below a billionth: round up, as Kubernetes does.
        Some(value.div_ceil(10u128.checked_pow(scale.unsigned_abs())?))
    }
}

fn storage_of(
    r: Option<
        &std::collections::BTreeMap<
            String,
            k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        >,
    >,
) -> Option<&str> {
    r?.get("storage").map(|q| q.0.as_str())
}

/// The storage a claim asks for.
fn requested(pvc: &PersistentVolumeClaim) -> Option<&str> {
    storage_of(pvc.spec.as_ref()?.resources.as_ref()?.requests.as_ref())
}

/// The storage a claim has.
fn capacity(pvc: &PersistentVolumeClaim) -> Option<&str> {
    storage_of(pvc.status.as_ref()?.capacity.as_ref())
}

/// What the member claims need, from the claims as listed.
#[derive(Debug, Default, PartialEq)]
pub struct VolumePlan<'a> {
    /// Bound member claims that ask for less than the spec: (claim, what it asks now).
    pub grow: Vec<(&'a PersistentVolumeClaim, String)>,
    /// Ordinals whose claim asks for the spec's size but does not have it yet (resizing).
    pub resizing: Vec<u32>,
}

/// Sort the cluster's member claims (`data-<cluster>-<n>`) by what they need.
pub fn plan_volumes<'a>(
    cluster: &SqliteCluster,
    claims: &'a [PersistentVolumeClaim],
) -> VolumePlan<'a> {
    let mut plan = VolumePlan::default();
    let Some(want) = quantity_nanos(&cluster.spec.storage.size) else {
        return plan;
    };
    let prefix = format!("{}-", crate::resources::statefulset::DATA_VOLUME);
    for c in claims {
        if c.metadata.deletion_timestamp.is_some() {
            continue;
        }
        // The member's own claim, not another claim that shares the labels.
        let name = c.name_any();
        let Some(ordinal) = name
            .strip_prefix(&prefix)
            .and_then(|pod| ordinal_of(cluster, pod))
        else {
            continue;
        };
        // An unbound claim cannot be resized; the next pass sees it bound.
        if c.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Bound") {
            continue;
        }
        let (Some(asks), has) = (requested(c), capacity(c)) else {
            continue;
        };
        if quantity_nanos(asks).is_some_and(|n| n < want) {
            plan.grow.push((c, asks.to_string()));
        } else if has.and_then(quantity_nanos).is_some_and(|n| n < want) {
            plan.resizing.push(ordinal);
        }
    }
    plan
}

/// Ask every member claim that is smaller than `spec.storage.size` for the new size. Returns
/// the ordinals whose volume is still being resized (a new member waits for it before joining:
/// catching up could fill the smaller volume). Nothing here fails the reconcile: the database
/// keeps running on the volumes it has, and each refusal is reported once as a Warning Event.
pub async fn reconcile_volumes(cluster: &SqliteCluster, ctx: &Context, ns: &str) -> Vec<u32> {
    let api = Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), ns);
    let claims = match api
        .list(&ListParams::default().labels(&selector_string(cluster)))
        .await
    {
        Ok(list) => list.items,
        Err(e) => {
            warn!(cluster = %cluster.name_any(), error = %e, "cannot list the member volumes; volume growth skipped");
            return vec![];
        }
    };
    let size = &cluster.spec.storage.size;
    let plan = plan_volumes(cluster, &claims);
    for (claim, from) in plan.grow {
        let name = claim.name_any();
        let patch = json!({"spec": {"resources": {"requests": {"storage": size}}}});
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..Default::default()
        };
        let note = match api.patch(&name, &params, &Patch::Merge(&patch)).await {
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
                continue;
            }
            // Refused by admission: the claim's class cannot expand (or a quota).
            Err(kube::Error::Api(e)) if matches!(e.code, 403 | 422) => format!(
                "cannot grow {name} from {from} to {size}: {}; its StorageClass must set allowVolumeExpansion: true",
                e.message
            ),
            Err(e) => format!("cannot grow {name} from {from} to {size}: {e}"),
        };
        warn!(cluster = %cluster.name_any(), claim = %name, %note, "volume expansion refused");
        // Each pass tries again (fixing the class is enough); one Warning says why.
        let key = format!(
            "VolumeExpansionFailed/{}/{size}",
            claim.uid().unwrap_or(name)
        );
        ctx.publish_once(
            key,
            cluster,
            EventType::Warning,
            "VolumeExpansionFailed",
            "Resize",
            note,
        )
        .await;
    }
    plan.resizing
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing::{ClusterExt, cluster};
    use k8s_openapi::api::core::v1::{
        PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, VolumeResourceRequirements,
    };
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn quantities_parse_exactly() {
        let gi = 1u128 << 30;
        let n = |q| quantity_nanos(q);
        assert_eq!(n("1Gi"), Some(gi * 1_000_000_000));
        assert_eq!(n("1073741824"), n("1Gi"));
        // The API server's canonical forms compare equal to what the user wrote.
        assert_eq!(n("8.3G"), n("8300M"));
        assert_eq!(n("1.07G"), n("1070M"));
        assert_eq!(n("16.6T"), n("16600G"));
        assert_eq!(n("1.3Gi"), n("1395864371200m"));
        assert_eq!(n("1e3"), n("1k"));
        assert_eq!(n("1E3"), n("1k"));
        assert_eq!(n("2E"), n("2e18"));
        assert_eq!(n(".5Ki"), n("512"));
        assert!(n("1Gi") > n("1G"));
        assert_eq!(n("1n"), Some(1));
        for bad in ["lots", "", "Gi", "1Xi", "-1Gi", "1.2.3", ".", "1e", "1e999"] {
            assert_eq!(n(bad), None, "{bad}");
        }
    }

    fn claim(name: &str, asks: &str, has: Option<&str>) -> PersistentVolumeClaim {
        let storage = |q: &str| Some([("storage".to_string(), Quantity(q.into()))].into());
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeClaimSpec {
                resources: Some(VolumeResourceRequirements {
                    requests: storage(asks),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(PersistentVolumeClaimStatus {
                phase: Some(if has.is_some() { "Bound" } else { "Pending" }.into()),
                capacity: has.and_then(storage),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn bound_member_claims_smaller_than_the_spec_grow_and_resizing_ones_are_known() {
        let c = cluster().with_storage("2Gi", None);
        let claims = [
            claim("data-db-0", "1Gi", Some("1Gi")),
            claim("data-db-1", "2Gi", Some("2Gi")),
            claim("data-db-2", "2147483648", Some("1Gi")),
            claim("data-db-3", "3Gi", Some("3Gi")),
            claim("data-db-4", "1G", Some("1G")),
            // Not bound yet: it cannot be resized now.
            claim("data-db-5", "1Gi", None),
            // Share the labels but are not a member's data claim.
            claim("scratch-db-0", "1Gi", Some("1Gi")),
            claim("data-other-0", "1Gi", Some("1Gi")),
        ];
        let plan = plan_volumes(&c, &claims);
        let grow: Vec<_> = plan
            .grow
            .iter()
            .map(|(c, from)| (c.name_any(), from.clone()))
            .collect();
        assert_eq!(
            grow,
            [
                ("data-db-0".to_string(), "1Gi".to_string()),
                ("data-db-4".to_string(), "1G".to_string())
            ]
        );
        assert_eq!(plan.resizing, [2], "db-2 asks for 2Gi and has 1Gi");
        // A size that does not parse never grows anything.
        let none = plan_volumes(&cluster().with_storage("lots", None), &claims);
        assert_eq!(none, VolumePlan::default());
        // The canonical form of the spec's own size is not a reason to patch.
        let c = cluster().with_storage("8.3G", None);
        assert!(
            plan_volumes(&c, &[claim("data-db-0", "8300M", Some("8300M"))])
                .grow
                .is_empty()
        );
    }
}
