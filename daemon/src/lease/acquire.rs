//! Getting our lease: find our Node, wait (logging) for its podCIDR, check it
//! lies inside Network, publish flannel's annotations with one strategic
//! merge PATCH on `nodes/status` (all flannel's RBAC allows), and later mark
//! the node's network available.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use kube::Api;
use kube::api::{Patch, PatchParams};

use super::node::SlimNode;
use crate::config::NetConfig;
use crate::family::{Family, PerFamily};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("node {node} has podCIDR {cidr:?}, which is not a CIDR")]
    BadPodCidr { node: String, cidr: String },
    #[error("node {node} has no IPv{family} podCIDR, but net-conf.json enables IPv{family}")]
    NoPodCidrForFamily { node: String, family: u8 },
    #[error("node {node}'s podCIDR {cidr} is outside Network {network} of net-conf.json")]
    OutsideNetwork {
        node: String,
        cidr: IpNetwork,
        network: IpNetwork,
    },
    #[error("patching the annotations of node {node} (nodes/status)")]
    Publish {
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("setting condition NetworkUnavailable=False on node {node}")]
    Condition {
        node: String,
        #[source]
        source: kube::Error,
    },
}

/// How often to say we are still waiting.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(5);

/// Waits until Node `name` exists and has a podCIDR, logging every few
/// seconds (flanneld exits instead, and crash-loops until IPAM gets to it).
pub async fn wait_for_pod_cidr(api: &Api<SlimNode>, name: &str) -> SlimNode {
    let start = Instant::now();
    let mut last_log: Option<Instant> = None;
    loop {
        let why = match api.get_opt(name).await {
            Ok(Some(node)) if !node.pod_cidrs().is_empty() => return node,
            Ok(Some(_)) => "its spec.podCIDR is not assigned yet (is kube-controller-manager running with --allocate-node-cidrs?)".to_string(),
            Ok(None) => "it does not exist yet".to_string(),
            Err(e) => format!("the API server answered: {e}"),
        };
        if last_log.is_none_or(|t| t.elapsed() >= WAIT_LOG_EVERY) {
            tracing::info!(
                node = name,
                waited_s = start.elapsed().as_secs(),
                "waiting for node {name}: {why}"
            );
            last_log = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Our subnets (IPv4, IPv6) from the node's podCIDRs, one per enabled family.
pub fn own_subnets(
    cfg: &NetConfig,
    node: &SlimNode,
) -> Result<PerFamily<Option<IpNetwork>>, LeaseError> {
    let name = node.name().to_string();
    let mut parsed = Vec::new();
    for c in node.pod_cidrs() {
        let n: IpNetwork = c.parse().map_err(|_| LeaseError::BadPodCidr {
            node: name.clone(),
            cidr: c.to_string(),
        })?;
        parsed.push(IpNetwork::new(n.network(), n.prefix()).unwrap_or(n));
    }
    let mut out = PerFamily::default();
    for (family, fam) in [(Family::V4, &cfg.ipv4), (Family::V6, &cfg.ipv6)] {
        let Some(fam) = fam else { continue };
        let cidr = parsed
            .iter()
            .find(|n| Family::of_net(n) == family)
            .copied()
            .ok_or(LeaseError::NoPodCidrForFamily {
                node: name.clone(),
                family: family.number(),
            })?;
        if !(fam.network.contains(cidr.network()) && cidr.prefix() >= fam.network.prefix()) {
            return Err(LeaseError::OutsideNetwork {
                node: name.clone(),
                cidr,
                network: fam.network,
            });
        }
        *out.get_mut(family) = Some(cidr);
    }
    Ok(out)
}

/// Publishes `wanted` annotations on our Node unless they are all there
/// already. Returns whether it patched.
pub async fn publish(
    api: &Api<SlimNode>,
    node: &SlimNode,
    wanted: &BTreeMap<String, String>,
) -> Result<bool, LeaseError> {
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
    .await
    .map_err(|source| LeaseError::Publish {
        node: node.name().to_string(),
        source,
    })?;
    Ok(true)
}

/// Sets condition NetworkUnavailable=False (strategic merge: the other
/// conditions, Ready among them, are kept).
pub async fn set_network_available(api: &Api<SlimNode>, name: &str) -> Result<(), LeaseError> {
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
        .map_err(|source| LeaseError::Condition {
            node: name.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(cidrs: &[&str]) -> SlimNode {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1"},
            "spec": {"podCIDRs": cidrs},
        }))
        .unwrap()
    }

    #[test]
    fn the_pod_cidr_must_lie_inside_network() {
        let cfg =
            NetConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
        assert_eq!(
            own_subnets(&cfg, &node(&["10.244.3.0/24"])).unwrap(),
            PerFamily {
                v4: Some("10.244.3.0/24".parse().unwrap()),
                v6: None
            }
        );
        assert_eq!(
            own_subnets(&cfg, &node(&["10.99.3.0/24"]))
                .unwrap_err()
                .to_string(),
            "node n1's podCIDR 10.99.3.0/24 is outside Network 10.244.0.0/16 of net-conf.json"
        );
        assert_eq!(
            own_subnets(&cfg, &node(&["fd00::/64"]))
                .unwrap_err()
                .to_string(),
            "node n1 has no IPv4 podCIDR, but net-conf.json enables IPv4"
        );
        assert_eq!(
            own_subnets(&cfg, &node(&["nonsense"]))
                .unwrap_err()
                .to_string(),
            "node n1 has podCIDR \"nonsense\", which is not a CIDR"
        );
    }

    #[test]
    fn dual_stack_takes_one_cidr_per_family() {
        let cfg = NetConfig::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert_eq!(
            own_subnets(&cfg, &node(&["10.244.3.0/24", "fd00:10:244:3::/64"])).unwrap(),
            PerFamily {
                v4: Some("10.244.3.0/24".parse().unwrap()),
                v6: Some("fd00:10:244:3::/64".parse().unwrap())
            }
        );
    }
}
