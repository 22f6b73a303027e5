//! Getting our lease from our Node: wait (logging) for its podCIDR, publish
//! flannel's annotations with one strategic merge PATCH on `nodes/status`
//! (all flannel's RBAC allows), and later mark the node's network
//! available.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{Patch, PatchParams};

use super::node::SlimNode;

/// How often to say we are still waiting.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(5);

/// Waits until Node `name` exists and has a podCIDR, logging every few
/// seconds (flanneld exits instead, and crash-loops until IPAM gets to it).
/// An error from the API server (unreachable, RBAC refusing) is a warning
/// and is retried with backoff; "not yet" is polled every 500 ms.
/// `server` says where the API server was looked for.
pub async fn wait_for_pod_cidr(api: &Api<SlimNode>, name: &str, server: &str) -> SlimNode {
    let start = Instant::now();
    let mut last_log: Option<Instant> = None;
    let mut backoff = crate::backoff::Backoff::new();
    loop {
        let (why, failed) = match api.get_opt(name).await {
            Ok(Some(node)) if !node.pod_cidrs().is_empty() => return node,
            Ok(Some(_)) => ("its spec.podCIDR is not assigned yet (is kube-controller-manager running with --allocate-node-cidrs?)".to_string(), false),
            Ok(None) => ("it does not exist yet".to_string(), false),
            Err(e) => (with_hint(answer(&e), server), true),
        };
        let wait = if failed {
            backoff.next_wait()
        } else {
            backoff = crate::backoff::Backoff::new();
            Duration::from_millis(500)
        };
        if last_log.is_none_or(|t| t.elapsed() >= WAIT_LOG_EVERY) {
            let waited_s = start.elapsed().as_secs();
            if failed {
                tracing::warn!(
                    node = name,
                    waited_s,
                    retry_in_ms = wait.as_millis() as u64,
                    "reading node {name} from the API server at {server} failed: {why}"
                );
            } else {
                tracing::info!(node = name, waited_s, "waiting for node {name}: {why}");
            }
            last_log = Some(Instant::now());
        }
        tokio::time::sleep(wait).await;
    }
}

/// What a failed request came back with, in one line: the API server's
/// code, reason and message (kube's own text adds the whole Status), or
/// why there was no answer, down to its root cause (refused, timed out,
/// a certificate not valid for the address).
pub fn answer(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!(
            "the API server answered {} {}: {}",
            s.code, s.reason, s.message
        ),
        e => format!("no answer from the API server: {}", crate::chain(e)),
    }
}

/// `why` with what to do when nothing answered at an in-cluster address:
/// a Service address works only where kube-proxy (or a replacement) runs.
fn with_hint(why: String, server: &str) -> String {
    if why.starts_with("no answer") && server.contains("in-cluster") {
        format!(
            "{why} (that is the `kubernetes` Service's address, reached through kube-proxy; \
             on a cluster without it give the API server's own address as \
             KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT: the chart's apiServer.host \
             and apiServer.port)"
        )
    } else {
        why
    }
}

/// Publishes `wanted` annotations on our Node unless they are all there
/// already. Returns whether it patched.
pub async fn publish(
    api: &Api<SlimNode>,
    node: &SlimNode,
    wanted: &BTreeMap<String, String>,
) -> Result<bool, kube::Error> {
    let current = node.metadata.annotations.clone().unwrap_or_default();
    if wanted.iter().all(|(k, v)| current.get(k) == Some(v)) {
        return Ok(false);
    }
    let body = serde_json::json!({"metadata": {"annotations": wanted}});
    api.patch_status(
        node.name(),
        &PatchParams::default(),
        &Patch::Strategic(&body),
    )
    .await?;
    Ok(true)
}

/// Sets condition NetworkUnavailable=False (strategic merge: the other
/// conditions, Ready among them, are kept).
pub async fn set_network_available(api: &Api<SlimNode>, name: &str) -> Result<(), kube::Error> {
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let body = serde_json::json!({"status": {"conditions": [{
        "type": "NetworkUnavailable",
        "status": "False",
        "reason": "WeftIsUp",
        "message": "weft is running on this node",
        "lastHeartbeatTime": now,
        "lastTransitionTime": now,
    }]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Strategic(&body))
        .await
        .map(drop)
}
