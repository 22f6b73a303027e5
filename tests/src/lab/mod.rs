//! A whole lab: hub namespace with the control plane, N nodes, their Node
//! objects, and the record of it all in `<state>/<name>/lab.json`.
//!
//! `Lab::up` builds everything or, on any failure (and on Ctrl-C), tears down
//! what it had built before returning the error. A `Lab` value tears its lab
//! down when dropped (so a failed test cleans up) unless it was `detach`ed,
//! which is what the CLI's `up` does; `teardown(name)` finds a lab's
//! processes, namespaces and files by name alone.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::cluster::{self, CidrAllocator, ClusterError, NodeRegistration};
use crate::cmd::{self, CmdError};
use crate::control_plane::{self as cp, ControlPlaneError};
use crate::netns::{self, NetnsError};
use crate::node::{self, NodeError, NodeState};
use crate::pki::{self, Pki, PkiError, TokenUser};
use crate::procs;

mod build;
mod churn;
mod exec;
mod real_nodes;
mod teardown;

pub use build::save_state;
use build::{build, start_apiserver};
pub use real_nodes::{Pinger, RealPod, WORKLOAD};
pub use teardown::{Removed, clean_all, lab_netns, teardown};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Marks the process as interrupted (Ctrl-C): `Lab::up` stops at its next
/// step and tears down what it built.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// The lab's underlay segment, the hub's address on it, and the cluster CIDR.
pub const UNDERLAY: &str = "198.51.100.0/24";
pub const HUB_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The `kubernetes` Service's ClusterIP (first of 10.96.0.0/16).
pub const KUBERNETES_SERVICE_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 1);
const HUB_BRIDGE: &str = "br0";
/// A host beyond the underlay's router (the hub routes to it): not a node,
/// with no route to any pod network, so it can reply to a pod only when the
/// pod's traffic was masqueraded to its node's address.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const OUTSIDE_GW: &str = "203.0.113.1/24";
const HUB_MAC: &str = "02:77:65:66:74:01";
const FIRST_NODE_HOST: u32 = 10;

/// Where the lab's weftd nodes keep their leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SubnetManager {
    /// Kubernetes Nodes (podCIDRs from the lab's IPAM).
    #[default]
    Kube,
    /// The hub's etcd, as flannel's etcd subnet manager (the network
    /// configuration written to `/coreos.com/network/config` by the lab).
    Etcd,
}

/// The overlay backend a lab's nodes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Vxlan,
    Udp,
    #[serde(rename = "host-gw")]
    #[value(name = "host-gw")]
    HostGw,
}

impl Backend {
    /// net-conf.json's `Backend.Type`.
    pub fn type_name(self) -> &'static str {
        match self {
            Backend::Vxlan => "vxlan",
            Backend::Udp => "udp",
            Backend::HostGw => "host-gw",
        }
    }

    /// A short name for lab names ("vx", "udp", "hgw").
    pub fn short(self) -> &'static str {
        match self {
            Backend::Vxlan => "vx",
            Backend::Udp => "udp",
            Backend::HostGw => "hgw",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("weft-lab must run as root (it creates network namespaces): try `sudo weft-lab ...`")]
    NotRoot,
    #[error("`{tool}` is not installed: run scripts/setup-host.sh")]
    MissingTool { tool: String },
    #[error("{what} not found (looked at {looked}): build it with {how}")]
    NotBuilt {
        what: String,
        looked: String,
        how: String,
    },
    #[error(
        "invalid lab name {name:?}: use 1-24 characters from a-z, 0-9 and '-', starting with a letter or digit"
    )]
    BadName { name: String },
    #[error("a lab named {name:?} already exists: `weft-lab down --name {name}` first")]
    Exists { name: String },
    #[error("no lab named {name:?} (start one with `weft-lab up --name {name}`)")]
    NotFound { name: String },
    #[error("no node {node:?} in lab {lab:?} (nodes: {known})")]
    NoSuchNode {
        lab: String,
        node: String,
        known: String,
    },
    #[error("no pod {pod:?} in lab {lab:?} (pods: {known})")]
    NoSuchPod {
        lab: String,
        pod: String,
        known: String,
    },
    #[error("the lab can hold at most {max} nodes on its underlay")]
    TooManyNodes { max: usize },
    #[error("weftd on {node} is not ready ({why}); its log {log} ends with:\n{tail}")]
    WeftdNotReady {
        node: String,
        why: &'static str,
        log: PathBuf,
        tail: String,
    },
    #[error("running a container spec on {node}: {reason}")]
    Container { node: String, reason: String },
    #[error("interrupted: the partly built lab was removed")]
    Interrupted,
    #[error("reading or writing lab state {path}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lab state {path} is not valid")]
    StateFormat {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("creating the hub namespace")]
    Hub(#[source] CmdError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    ControlPlane(#[from] ControlPlaneError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Cmd(#[from] CmdError),
}

/// What to build.
#[derive(Debug, Clone)]
pub struct LabConfig {
    pub name: String,
    pub nodes: usize,
    pub backend: Backend,
    /// Run weftd on every node (and wait until each is ready).
    pub weftd: bool,
    /// Print progress lines on stderr.
    pub verbose: bool,
    /// IPv6 too: an IPv6 underlay address per node, an IPv6 podCIDR per
    /// Node, and weft configured for both families.
    pub dual_stack: bool,
    /// VXLAN with flannel's `DirectRouting` (the lab's nodes share one
    /// underlay subnet, so every peer is routed directly).
    pub direct_routing: bool,
    pub subnet_manager: SubnetManager,
    /// Real nodes: containerd, kubelet and kube-proxy on every node, the
    /// controller-manager and scheduler on the hub, and weft installed by
    /// `kubectl apply` of its manifest (see `real`). `weftd` is ignored:
    /// the DaemonSet runs it.
    pub kubelet: bool,
}

impl LabConfig {
    pub fn new(name: &str, nodes: usize) -> Self {
        LabConfig {
            name: name.to_string(),
            nodes,
            backend: Backend::Vxlan,
            weftd: false,
            verbose: false,
            dual_stack: false,
            direct_routing: false,
            subnet_manager: SubnetManager::Kube,
            kubelet: false,
        }
    }

    /// The same, with weftd running on every node.
    pub fn with_weftd(name: &str, nodes: usize) -> Self {
        LabConfig {
            weftd: true,
            ..LabConfig::new(name, nodes)
        }
    }
}

/// Everything the lab keeps about itself, saved as `lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub dir: PathBuf,
    pub backend: Backend,
    pub hub_netns: String,
    pub hub_ip: Ipv4Addr,
    pub underlay: Ipv4Network,
    pub apiserver_url: String,
    pub etcd_url: String,
    pub etcd_pid: u32,
    pub apiserver_pid: u32,
    pub apiserver_bin: PathBuf,
    pub nodes: Vec<NodeState>,
    /// Pods created through the CNI runtime.
    #[serde(default)]
    pub pods: Vec<crate::runtime::PodRecord>,
    pub cidrs: CidrAllocator,
    pub next_node_index: u32,
    /// IPv6 as well (see `LabConfig::dual_stack`).
    #[serde(default)]
    pub dual_stack: bool,
    /// VXLAN's DirectRouting on.
    #[serde(default)]
    pub direct_routing: bool,
    #[serde(default)]
    pub subnet_manager: SubnetManager,
    /// Real nodes (`LabConfig::kubelet`).
    #[serde(default)]
    pub real_nodes: bool,
    /// Real nodes: seconds from `kubectl apply` of weft's manifest until
    /// it was rolled out.
    #[serde(default)]
    pub weft_rollout_seconds: Option<f64>,
}

/// The hub's IPv6 underlay address (dual-stack labs).
const HUB_IP6: &str = "fd00:198:51:100::1/64";
/// The IPv6 pod network of dual-stack labs.
pub const CLUSTER_CIDR6: &str = "fd00:10:244::/48";

/// A node's IPv6 underlay address, from its IPv4 one.
pub fn underlay_ip6(v4: Ipv4Addr) -> std::net::Ipv6Addr {
    let d = v4.octets()[3];
    std::net::Ipv6Addr::new(0xfd00, 0x198, 0x51, 0x100, 0, 0, 0, u16::from(d))
}

/// A node's IPv6 podCIDR, from its IPv4 one (10.244.N.0/24 →
/// fd00:10:244:N::/64), so both are freed together.
pub fn pod_cidr6(v4: Ipv4Network) -> ipnetwork::Ipv6Network {
    let n = v4.network().octets()[2];
    ipnetwork::Ipv6Network::new(
        std::net::Ipv6Addr::new(0xfd00, 0x10, 0x244, u16::from(n), 0, 0, 0, 0),
        64,
    )
    .unwrap_or_else(|_| ipnetwork::Ipv6Network::from(std::net::Ipv6Addr::UNSPECIFIED))
}

/// The directory all labs keep their state under (`$WEFT_LAB_STATE`, default
/// /var/tmp/weft-lab: outside the directories a node overlays).
pub fn state_root() -> PathBuf {
    PathBuf::from(std::env::var_os("WEFT_LAB_STATE").unwrap_or_else(|| "/var/tmp/weft-lab".into()))
}

fn lab_dir(name: &str) -> PathBuf {
    state_root().join(name)
}

fn netns_name(lab: &str, role: &str) -> String {
    format!("{}{lab}-{role}", netns::PREFIX)
}

/// Whether namespace `ns` belongs to lab `lab`.
fn is_lab_netns(ns: &str, lab: &str) -> bool {
    let Some(role) = ns.strip_prefix(&format!("{}{lab}-", netns::PREFIX)) else {
        return false;
    };
    role == "hub"
        || role == "outside"
        || role
            .strip_prefix("node-")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Checks a lab name: it becomes part of paths and namespace names.
pub fn validate_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 24
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(LabError::BadName {
            name: name.to_string(),
        })
    }
}

fn preflight() -> Result<(), LabError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LabError::NotRoot);
    }
    for tool in [
        "ip", "nsenter", "unshare", "bash", "etcd", "etcdctl", "mount",
    ] {
        if !cmd::on_path(tool) {
            return Err(LabError::MissingTool {
                tool: tool.to_string(),
            });
        }
    }
    Ok(())
}

/// A running lab. Dropping it tears the lab down unless it was detached.
#[derive(Debug)]
pub struct Lab {
    pub state: LabState,
    detached: bool,
    verbose: bool,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.detached {
            teardown(&self.state.name);
        }
    }
}

impl Lab {
    /// Builds a lab; on failure, removes whatever was built and returns why.
    pub fn up(cfg: &LabConfig) -> Result<Lab, LabError> {
        validate_name(&cfg.name)?;
        preflight()?;
        let apiserver = cp::find_apiserver()?;
        let dir = lab_dir(&cfg.name);
        if dir.exists() || !lab_netns(&cfg.name).is_empty() {
            return Err(LabError::Exists {
                name: cfg.name.clone(),
            });
        }
        let max = 240usize;
        if cfg.nodes > max {
            return Err(LabError::TooManyNodes { max });
        }
        if cfg.weftd {
            crate::weftd::find_weftd()?;
        }
        let result = build(cfg, &dir, &apiserver);
        match result {
            Ok(lab) => Ok(lab),
            Err(e) => {
                teardown(&cfg.name);
                Err(e)
            }
        }
    }

    /// Opens the lab `name` that an earlier `up` left running.
    pub fn open(name: &str) -> Result<Lab, LabError> {
        validate_name(name)?;
        let path = lab_dir(name).join("lab.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LabError::NotFound {
                    name: name.to_string(),
                });
            }
            Err(source) => return Err(LabError::State { path, source }),
        };
        let state: LabState =
            serde_json::from_str(&text).map_err(|source| LabError::StateFormat { path, source })?;
        Ok(Lab {
            state,
            detached: true,
            verbose: false,
        })
    }

    /// Leaves the lab running when this value is dropped.
    pub fn detach(mut self) {
        self.detached = true;
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn dir(&self) -> &Path {
        &self.state.dir
    }

    /// The admin kubeconfig (group system:masters).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.state.dir.join("admin.kubeconfig")
    }

    /// The kubeconfig a node's weftd uses: weft's ServiceAccount identity,
    /// bound only to weft's ClusterRole.
    pub fn node_kubeconfig(&self) -> PathBuf {
        self.state.dir.join("weft.kubeconfig")
    }

    /// A kubeconfig whose user is authenticated but bound to no role.
    pub fn unbound_kubeconfig(&self) -> PathBuf {
        self.state.dir.join("nobody.kubeconfig")
    }

    /// The lab's PKI files.
    pub fn pki(&self) -> Pki {
        Pki {
            dir: self.state.dir.join("pki"),
        }
    }

    pub fn node(&self, name: &str) -> Result<&NodeState, LabError> {
        self.state
            .nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or_else(|| LabError::NoSuchNode {
                lab: self.state.name.clone(),
                node: name.to_string(),
                known: self
                    .state
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn say(&self, msg: &str) {
        if self.verbose {
            eprintln!("==> {msg}");
        }
    }

    fn save(&self) -> Result<(), LabError> {
        save_state(&self.state)
    }

    /// Stops the API server (SIGTERM, then SIGKILL after 10 s), as an
    /// outage or a control-plane upgrade would.
    pub fn stop_apiserver(&mut self) {
        procs::terminate(&[self.state.apiserver_pid as i32], Duration::from_secs(10));
    }

    /// Starts the API server again (after `stop_apiserver`) and waits until
    /// it is ready.
    pub fn start_apiserver(&mut self) -> Result<(), LabError> {
        start_apiserver(&mut self.state)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_namespaces_are_told_apart_by_exact_role() {
        assert!(is_lab_netns("weftlab-a-hub", "a"));
        assert!(is_lab_netns("weftlab-a-node-12", "a"));
        assert!(is_lab_netns("weftlab-a-outside", "a"));
        assert!(!is_lab_netns("weftlab-a-node-1-hub", "a"));
        assert!(!is_lab_netns("weftlab-a-b-hub", "a"));
        assert!(!is_lab_netns("weftlab-ab-hub", "a"));
        assert!(!is_lab_netns("weftlab-a-node-", "a"));
    }

    #[test]
    fn lab_names_are_checked() {
        for good in ["default", "t1", "kube-watch-3"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "A", "a_b", "a/b", &"x".repeat(25)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
