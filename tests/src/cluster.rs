//! The lab's Kubernetes side: the parts of kubelet and kube-controller-manager
//! that matter to a network plugin. Registers a Node per lab node (addresses,
//! a Ready condition) and assigns `spec.podCIDR(s)` the way the controller's
//! range allocator does: one /24 per node out of the cluster CIDR, handed out
//! in order, moving on from the last one given (a freed CIDR is reused only
//! after the allocator wraps around).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::{Node, NodeSpec};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("reading kubeconfig {path}")]
    ReadKubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("building a client from kubeconfig {path}")]
    BuildClient {
        path: String,
        #[source]
        source: kube::Error,
    },
    #[error("creating Node {name}")]
    CreateNode {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("patching the status of Node {name}")]
    PatchNodeStatus {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("annotating Node {name}")]
    AnnotateNode {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting Node {name}")]
    DeleteNode {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing Nodes")]
    ListNodes(#[source] kube::Error),
    #[error("the cluster CIDR {cidr} has no free /{len} left")]
    CidrsExhausted { cidr: Ipv4Network, len: u8 },
}

/// A client for the kubeconfig at `path`.
pub async fn client(path: &Path) -> Result<Client, ClusterError> {
    let shown = path.display().to_string();
    let kc = Kubeconfig::read_from(path).map_err(|source| ClusterError::ReadKubeconfig {
        path: shown.clone(),
        source,
    })?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|source| ClusterError::ReadKubeconfig {
            path: shown.clone(),
            source,
        })?;
    Client::try_from(config).map_err(|source| ClusterError::BuildClient {
        path: shown,
        source,
    })
}

/// The node IPAM of kube-controller-manager's range allocator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CidrAllocator {
    pub cluster_cidr: Ipv4Network,
    pub node_prefix: u8,
    next_candidate: u32,
    used: BTreeSet<u32>,
}

impl CidrAllocator {
    pub fn new(cluster_cidr: Ipv4Network, node_prefix: u8) -> Self {
        CidrAllocator {
            cluster_cidr,
            node_prefix,
            next_candidate: 0,
            used: BTreeSet::new(),
        }
    }

    fn capacity(&self) -> u32 {
        1u32 << (self.node_prefix - self.cluster_cidr.prefix())
    }

    fn subnet(&self, index: u32) -> Ipv4Network {
        let size = 1u32 << (32 - self.node_prefix);
        let base = u32::from(self.cluster_cidr.network()) + index * size;
        // A prefix no longer than 32 over an aligned base is always valid.
        Ipv4Network::new(Ipv4Addr::from(base), self.node_prefix).unwrap_or(self.cluster_cidr)
    }

    /// The next free subnet, scanning on from the last one handed out.
    pub fn allocate(&mut self) -> Result<Ipv4Network, ClusterError> {
        let cap = self.capacity();
        for step in 0..cap {
            let idx = (self.next_candidate + step) % cap;
            if self.used.insert(idx) {
                self.next_candidate = (idx + 1) % cap;
                return Ok(self.subnet(idx));
            }
        }
        Err(ClusterError::CidrsExhausted {
            cidr: self.cluster_cidr,
            len: self.node_prefix,
        })
    }

    /// Returns `cidr` to the pool (a CIDR outside the pool is ignored).
    pub fn release(&mut self, cidr: Ipv4Network) {
        let size = 1u32 << (32 - self.node_prefix);
        let offset = u32::from(cidr.network()).wrapping_sub(u32::from(self.cluster_cidr.network()));
        if cidr.prefix() == self.node_prefix && self.cluster_cidr.contains(cidr.network()) {
            self.used.remove(&(offset / size));
        }
    }
}

/// What kubelet would register for a lab node.
#[derive(Debug, Clone)]
pub struct NodeRegistration {
    pub name: String,
    pub internal_ip: Ipv4Addr,
    pub pod_cidr: Option<Ipv4Network>,
    /// Also an IPv6 podCIDR and InternalIP (derived from the IPv4 ones).
    pub dual_stack: bool,
}

/// Creates the Node (spec.podCIDR/podCIDRs when given) and sets its status
/// as kubelet does: InternalIP and Hostname addresses, Ready=True.
pub async fn register_node(client: &Client, reg: &NodeRegistration) -> Result<Node, ClusterError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let labels = [
        ("kubernetes.io/hostname", reg.name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", std::env::consts::ARCH),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let node = Node {
        metadata: ObjectMeta {
            name: Some(reg.name.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            pod_cidr: reg.pod_cidr.map(|c| c.to_string()),
            pod_cidrs: reg.pod_cidr.map(|c| {
                let mut v = vec![c.to_string()];
                if reg.dual_stack {
                    v.push(crate::lab::pod_cidr6(c).to_string());
                }
                v
            }),
            ..Default::default()
        }),
        status: None,
    };
    nodes
        .create(&PostParams::default(), &node)
        .await
        .map_err(|source| ClusterError::CreateNode {
            name: reg.name.clone(),
            source,
        })?;
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let mut addresses =
        vec![serde_json::json!({"type": "InternalIP", "address": reg.internal_ip.to_string()})];
    if reg.dual_stack {
        addresses.push(serde_json::json!({"type": "InternalIP", "address": crate::lab::underlay_ip6(reg.internal_ip).to_string()}));
    }
    addresses.push(serde_json::json!({"type": "Hostname", "address": reg.name}));
    let status = serde_json::json!({
        "status": {
            "addresses": addresses,
            "conditions": [{
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "weft-lab node is posting ready status",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            }],
            "nodeInfo": {
                "architecture": std::env::consts::ARCH,
                "operatingSystem": "linux",
                "kubeletVersion": "v1.20.2",
                "kubeProxyVersion": "v1.20.2",
                "containerRuntimeVersion": "weft-lab://0",
                "kernelVersion": "",
                "osImage": "weft-lab",
                "bootID": "",
                "machineID": "",
                "systemUUID": "",
            },
        }
    });
    nodes
        .patch_status(&reg.name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .map_err(|source| ClusterError::PatchNodeStatus {
            name: reg.name.clone(),
            source,
        })
}

/// Deletes Node `name`; an already missing Node is not an error.
pub async fn delete_node(client: &Client, name: &str) -> Result<(), ClusterError> {
    let nodes: Api<Node> = Api::all(client.clone());
    match nodes.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(source) => Err(ClusterError::DeleteNode {
            name: name.to_string(),
            source,
        }),
    }
}

/// All Nodes.
pub async fn list_nodes(client: &Client) -> Result<Vec<Node>, ClusterError> {
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .map_err(ClusterError::ListNodes)
}

/// Whether `node` carries condition Ready=True.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Network {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_in_order_from_the_start_of_the_cluster_cidr() {
        let mut a = CidrAllocator::new(net("10.244.0.0/16"), 24);
        assert_eq!(a.allocate().unwrap(), net("10.244.0.0/24"));
        assert_eq!(a.allocate().unwrap(), net("10.244.1.0/24"));
        assert_eq!(a.allocate().unwrap(), net("10.244.2.0/24"));
    }

    #[test]
    fn a_released_cidr_is_reused_only_after_wrapping_around() {
        let mut a = CidrAllocator::new(net("10.0.0.0/22"), 24);
        let first = a.allocate().unwrap();
        a.allocate().unwrap();
        a.release(first);
        assert_eq!(a.allocate().unwrap(), net("10.0.2.0/24"));
        assert_eq!(a.allocate().unwrap(), net("10.0.3.0/24"));
        assert_eq!(a.allocate().unwrap(), first);
        assert!(matches!(
            a.allocate(),
            Err(ClusterError::CidrsExhausted { .. })
        ));
    }
}
