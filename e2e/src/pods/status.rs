//! The pod status the kubelet reports: phase, conditions, container states, and why a pod
//! could not start.

use std::collections::HashMap;

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};

use super::{PodManager, PodRt, log};

pub(super) fn pod_status(rt: &mut PodRt, host_ip: &str, pod: &Pod) -> serde_json::Value {
    let t = |ts: &Timestamp| serde_json::to_value(Time(*ts)).unwrap_or_default();
    let mut statuses = Vec::new();
    let mut any_running = false;
    let mut all_ready = true;
    let mut all_done_ok = true;
    let mut any_pending_restart = false;
    for c in &mut rt.containers {
        let running = c.child.is_some();
        any_running |= running;
        all_ready &= c.ready && running;
        any_pending_restart |= c.restart_at.is_some();
        let term = |(code, reason, s, f): &(i32, String, Timestamp, Timestamp)| serde_json::json!({"terminated": {"exitCode": code, "reason": reason, "startedAt": t(s), "finishedAt": t(f)}});
        let state = if running {
            serde_json::json!({"running": {"startedAt": c.started_at.as_ref().map(t)}})
        } else if c.restart_at.is_some() {
            serde_json::json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off restarting, logs in {}", c.log.display())}})
        } else if let Some(lt) = &c.last_term {
            all_done_ok &= lt.0 == 0;
            term(lt)
        } else {
            serde_json::json!({"waiting": {"reason": "ContainerCreating"}})
        };
        let last_state = match (&c.last_term, running || c.restart_at.is_some()) {
            (Some(lt), true) => term(lt),
            _ => serde_json::json!({}),
        };
        statuses.push(serde_json::json!({
            "name": c.spec.name,
            "image": c.spec.image,
            "imageID": "",
            "containerID": c.child.as_ref().map(|ch| format!("process://{}", ch.id())),
            "ready": c.ready && running,
            "started": running,
            "restartCount": c.restart_count,
            "state": state,
            "lastState": last_state,
        }));
    }
    let phase = if any_running || any_pending_restart || rt.terminating.is_some() {
        "Running"
    } else if all_done_ok {
        "Succeeded"
    } else {
        "Failed"
    };
    let ready = all_ready && rt.terminating.is_none() && any_running;
    let prev: HashMap<String, (String, serde_json::Value)> = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            (
                c.type_.clone(),
                (
                    c.status.clone(),
                    serde_json::to_value(&c.last_transition_time).unwrap_or_default(),
                ),
            )
        })
        .collect();
    let now = t(&Timestamp::now());
    let cond = |ty: &str, ok: bool| {
        let s = if ok { "True" } else { "False" };
        let since = match prev.get(ty) {
            Some((ps, at)) if ps == s && !at.is_null() => at.clone(),
            _ => now.clone(),
        };
        serde_json::json!({"type": ty, "status": s, "lastTransitionTime": since})
    };
    serde_json::json!({
        "phase": phase,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": rt.ip,
        "podIPs": [{"ip": rt.ip}],
        "startTime": t(&rt.started),
        "conditions": [
            cond("PodReadyToStartContainers", true),
            cond("Initialized", true),
            cond("ContainersReady", ready),
            cond("Ready", ready),
            cond("PodScheduled", true),
        ],
        "containerStatuses": statuses,
    })
}

impl PodManager {
    /// Tells the API why a pod cannot start, as the kubelet does: Pending, each container
    /// waiting with `CreateContainerConfigError` and the error. True once written.
    pub(super) async fn report_start_failure(&self, pod: &Pod, message: &str) -> bool {
        let containers: Vec<_> = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .map(|c| {
                serde_json::json!({
                    "name": c.name, "image": c.image, "imageID": "", "ready": false,
                    "restartCount": 0, "started": false,
                    "state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}},
                })
            })
            .collect();
        let status = serde_json::json!({"status": {
            "phase": "Pending",
            "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady"}],
            "containerStatuses": containers,
        }});
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        match api
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Strategic(status),
            )
            .await
        {
            Ok(_) => true,
            Err(e) => {
                log(&self.node, &format!("status of {}: {e}", pod.name_any()));
                false
            }
        }
    }
}
