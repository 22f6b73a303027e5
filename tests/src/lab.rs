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
const HUB_BRIDGE: &str = "br0";
/// A host beyond the underlay's router (the hub routes to it): not a node,
/// with no route to any pod network, so it can reply to a pod only when the
/// pod's traffic was masqueraded to its node's address.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const OUTSIDE_GW: &str = "203.0.113.1/24";
const HUB_MAC: &str = "02:77:65:66:74:01";
const FIRST_NODE_HOST: u32 = 10;

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
    #[error("the lab can hold at most {max} nodes on its underlay")]
    TooManyNodes { max: usize },
    #[error("weftd on {node} is not ready ({why}); its log {log} ends with:\n{tail}")]
    WeftdNotReady {
        node: String,
        why: &'static str,
        log: PathBuf,
        tail: String,
    },
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

    /// A command that runs `program` on node `node`.
    pub fn node_command(&self, node: &str, program: &str) -> Result<Command, LabError> {
        Ok(self.node(node)?.command(&self.state.name, program))
    }

    /// Runs `args` on node `node` and returns its output.
    pub fn exec(&self, node: &str, args: &[&str]) -> Result<Output, LabError> {
        let (prog, rest) = args.split_first().ok_or_else(|| LabError::MissingTool {
            tool: "(empty command)".into(),
        })?;
        let mut c = self.node_command(node, prog)?;
        c.args(rest);
        Ok(cmd::output(&mut c)?)
    }

    /// Runs `args` on node `node`; its stdout, or an error with its stderr.
    pub fn run(&self, node: &str, args: &[&str]) -> Result<String, LabError> {
        let (prog, rest) = args.split_first().ok_or_else(|| LabError::MissingTool {
            tool: "(empty command)".into(),
        })?;
        let mut c = self.node_command(node, prog)?;
        c.args(rest);
        Ok(cmd::run(&mut c)?)
    }

    /// Starts `args` on node `node` in the background, with stdout and
    /// stderr appended to the node's log `<node dir>/logs/<log>.log`.
    /// Returns the PID and the log's path.
    pub fn spawn_on(
        &self,
        node: &str,
        log: &str,
        args: &[&str],
    ) -> Result<(u32, PathBuf), LabError> {
        let (prog, rest) = args.split_first().ok_or_else(|| LabError::MissingTool {
            tool: "(empty command)".into(),
        })?;
        let n = self.node(node)?;
        let dir = n.dir.join("logs");
        std::fs::create_dir_all(&dir).map_err(|source| LabError::State {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(format!("{log}.log"));
        let mut c = n.command(&self.state.name, prog);
        c.args(rest);
        let pid =
            procs::spawn(&self.state.name, &mut c, &path).map_err(|source| NodeError::Spawn {
                node: node.to_string(),
                source,
            })?;
        Ok((pid, path))
    }

    /// Runs the future made by `f` inside the hub namespace, where the API
    /// server and etcd listen.
    pub fn block_on<T, F, Fut>(&self, f: F) -> Result<T, LabError>
    where
        T: Send,
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = T>,
    {
        Ok(netns::block_on_in(&self.state.hub_netns, f)?)
    }

    /// A command running `program` inside the hub namespace.
    /// `program` on the outside host (beyond the hub; not a node).
    pub fn outside_command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &netns_name(&self.state.name, "outside"),
            program,
        ])
        .env(procs::MARK, &self.state.name);
        c
    }

    pub fn hub_command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.state.hub_netns, program])
            .env(procs::MARK, &self.state.name);
        c
    }

    /// `etcdctl ARGS` against the lab's etcd; its stdout.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String, LabError> {
        let mut c = self.hub_command("etcdctl");
        c.arg(format!("--endpoints={}", self.state.etcd_url))
            .args(args)
            .env("ETCDCTL_API", "3");
        Ok(cmd::run(&mut c)?)
    }

    /// A `kubectl` command with the admin kubeconfig, run in the hub.
    pub fn kubectl(&self) -> Command {
        let mut c = self.hub_command("kubectl");
        c.arg(format!(
            "--kubeconfig={}",
            self.admin_kubeconfig().display()
        ));
        c
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

    /// Adds a node: namespaces, underlay, then its Node object with the next
    /// free podCIDR (none when `with_pod_cidr` is false, as before the
    /// controller gets to it).
    pub fn add_node(&mut self, with_pod_cidr: bool) -> Result<NodeState, LabError> {
        let index = self.state.next_node_index;
        let host = FIRST_NODE_HOST + index;
        if host > 250 {
            return Err(LabError::TooManyNodes { max: 240 });
        }
        let name = format!("node-{index}");
        let ns = netns_name(&self.state.name, &name);
        let ip = Ipv4Addr::from(u32::from(self.state.underlay.network()) + host);
        let dir = self.state.dir.join("nodes").join(&name);
        self.say(&format!("creating {name} (netns {ns}, underlay {ip})"));
        let node = node::create(&node::NodeSpec {
            lab: &self.state.name,
            name: &name,
            netns: &ns,
            hub_ns: &self.state.hub_netns,
            hub_bridge: HUB_BRIDGE,
            underlay_ip: ip,
            prefix_len: self.state.underlay.prefix(),
            gateway: self.state.hub_ip,
            dir: &dir,
        })?;
        self.state.next_node_index += 1;
        self.state.nodes.push(node.clone());
        self.save()?;
        let pod_cidr = if with_pod_cidr {
            Some(self.state.cidrs.allocate()?)
        } else {
            None
        };
        if self.state.dual_stack {
            let ip6 = format!("{}/64", underlay_ip6(ip));
            cmd::ip(["-n", &ns, "addr", "add", &ip6, "dev", "eth0", "nodad"])
                .map_err(LabError::Hub)?;
        }
        let reg = NodeRegistration {
            name: name.clone(),
            internal_ip: ip,
            pod_cidr,
            dual_stack: self.state.dual_stack,
        };
        let admin = self.admin_kubeconfig();
        self.block_on(|| async move {
            let client = cluster::client(&admin).await?;
            cluster::register_node(&client, &reg).await
        })??;
        self.save()?;
        Ok(node)
    }

    /// Removes a node: its Node object, processes, namespaces and files.
    pub fn remove_node(&mut self, name: &str) -> Result<(), LabError> {
        let node = self.node(name)?.clone();
        let admin = self.admin_kubeconfig();
        let pod_cidr = self.block_on(|| async {
            let client = cluster::client(&admin).await?;
            let cidr = cluster::list_nodes(&client)
                .await?
                .into_iter()
                .find(|n| n.metadata.name.as_deref() == Some(name))
                .and_then(|n| n.spec?.pod_cidr);
            cluster::delete_node(&client, name).await?;
            Ok::<_, ClusterError>(cidr)
        })??;
        if let Some(cidr) = pod_cidr.and_then(|c| c.parse().ok()) {
            self.state.cidrs.release(cidr);
        }
        procs::terminate(&netns::pids(&node.netns), Duration::from_secs(3));
        procs::terminate(&[node.holder_pid as i32], Duration::from_secs(3));
        netns::delete(&node.netns)?;
        let _ = std::fs::remove_dir_all(&node.dir);
        self.state.nodes.retain(|n| n.name != name);
        self.state.pods.retain(|p| p.node != name);
        self.save()
    }
}

/// Writes `lab.json` atomically.
pub fn save_state(state: &LabState) -> Result<(), LabError> {
    let path = state.dir.join("lab.json");
    let tmp = state.dir.join("lab.json.tmp");
    let text = serde_json::to_string_pretty(state).map_err(|source| LabError::StateFormat {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| LabError::State { path, source })
}

/// Starts the lab's kube-apiserver, records its PID and waits until ready.
fn start_apiserver(state: &mut LabState) -> Result<(), LabError> {
    let api_log = state.dir.join("logs/kube-apiserver.log");
    let pki = Pki {
        dir: state.dir.join("pki"),
    };
    state.apiserver_pid = cp::start_apiserver(&cp::ApiserverSpec {
        lab: &state.name,
        hub_ns: &state.hub_netns,
        hub_ip: IpAddr::V4(state.hub_ip),
        binary: &state.apiserver_bin,
        pki: &pki,
        log: &api_log,
    })?;
    save_state(state)?;
    cp::wait_apiserver(
        &state.hub_netns,
        &state.dir.join("admin.kubeconfig"),
        state.apiserver_pid,
        &api_log,
        Duration::from_secs(90),
        &interrupted,
    )?;
    Ok(())
}

fn check_interrupt() -> Result<(), LabError> {
    if interrupted() {
        Err(LabError::Interrupted)
    } else {
        Ok(())
    }
}

fn build(cfg: &LabConfig, dir: &Path, apiserver: &Path) -> Result<Lab, LabError> {
    let say = |msg: &str| {
        if cfg.verbose {
            eprintln!("==> {msg}");
        }
    };
    let name = cfg.name.as_str();
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|source| LabError::State {
            path: p.to_path_buf(),
            source,
        })
    };
    mkdir(&dir.join("logs"))?;
    mkdir(&dir.join("nodes"))?;
    let underlay: Ipv4Network = UNDERLAY.parse().map_err(|_| LabError::BadName {
        name: UNDERLAY.into(),
    })?;
    let hub_ns = netns_name(name, "hub");

    say(&format!(
        "creating hub namespace {hub_ns} (bridge {HUB_BRIDGE}, {HUB_IP}/{})",
        underlay.prefix()
    ));
    netns::create(&hub_ns)?;
    let outside_ns = netns_name(name, "outside");
    netns::create(&outside_ns)?;
    let hub_cidr = format!("{HUB_IP}/{}", underlay.prefix());
    (|| {
        // A fixed MAC: a bridge otherwise takes its lowest port's, and
        // changes it when that node leaves, stranding every node's ARP entry
        // for the hub (the API server) until it expires.
        cmd::ip([
            "-n", &hub_ns, "link", "add", HUB_BRIDGE, "address", HUB_MAC, "type", "bridge",
        ])?;
        cmd::ip(["-n", &hub_ns, "addr", "add", &hub_cidr, "dev", HUB_BRIDGE])?;
        cmd::ip(["-n", &hub_ns, "link", "set", HUB_BRIDGE, "up"])?;
        if cfg.dual_stack {
            cmd::ip([
                "-n", &hub_ns, "addr", "add", HUB_IP6, "dev", HUB_BRIDGE, "nodad",
            ])?;
        }
        // The outside host, behind the hub acting as the underlay's router.
        cmd::veth_to_eth0(&hub_ns, "outside", &outside_ns)?;
        cmd::ip(["-n", &hub_ns, "addr", "add", OUTSIDE_GW, "dev", "outside"])?;
        cmd::ip(["-n", &hub_ns, "link", "set", "outside", "up"])?;
        cmd::run(Command::new("ip").args([
            "netns",
            "exec",
            &hub_ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]))?;
        let outside_cidr = format!("{OUTSIDE_IP}/24");
        cmd::ip([
            "-n",
            &outside_ns,
            "addr",
            "add",
            &outside_cidr,
            "dev",
            "eth0",
        ])?;
        cmd::ip(["-n", &outside_ns, "link", "set", "eth0", "up"])?;
        cmd::ip(["-n", &outside_ns, "link", "set", "lo", "up"])?;
        cmd::ip([
            "-n",
            &outside_ns,
            "route",
            "add",
            "default",
            "via",
            "203.0.113.1",
        ])?;
        Ok(())
    })()
    .map_err(LabError::Hub)?;
    check_interrupt()?;

    say("generating CA, serving certificate, tokens and kubeconfigs");
    let hub_ip = IpAddr::V4(HUB_IP);
    let pki = Pki::generate(&dir.join("pki"), &[hub_ip])?;
    let server = format!("https://{HUB_IP}:{}", cp::APISERVER_PORT);
    let ca_pem = std::fs::read_to_string(pki.ca_cert()).map_err(|source| LabError::State {
        path: pki.ca_cert(),
        source,
    })?;
    let admin = TokenUser {
        token: pki::random_token()?,
        user: "weft-lab-admin".into(),
        uid: "weft-lab-admin".into(),
        groups: vec!["system:masters".into()],
    };
    let weft = TokenUser {
        token: pki::random_token()?,
        user: cp::weft_user(),
        uid: "weft-serviceaccount".into(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", cp::WEFT_NAMESPACE),
        ],
    };
    let nobody = TokenUser {
        token: pki::random_token()?,
        user: "weft-lab-nobody".into(),
        uid: "weft-lab-nobody".into(),
        groups: vec![],
    };
    pki::write_token_file(
        &pki.token_file(),
        &[admin.clone(), weft.clone(), nobody.clone()],
    )?;
    for (file, user) in [
        ("admin.kubeconfig", &admin),
        ("weft.kubeconfig", &weft),
        ("nobody.kubeconfig", &nobody),
    ] {
        let kc = pki::kubeconfig(
            &format!("weft-lab-{name}"),
            &server,
            &ca_pem,
            &user.user,
            &user.token,
        );
        pki::write(&dir.join(file), kc.as_bytes())?;
    }
    check_interrupt()?;

    say("starting etcd");
    let etcd_log = dir.join("logs/etcd.log");
    let etcd_pid = cp::start_etcd(name, &hub_ns, hub_ip, &dir.join("etcd"), &etcd_log)?;
    let mut state = LabState {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        backend: cfg.backend,
        dual_stack: cfg.dual_stack,
        direct_routing: cfg.direct_routing,
        hub_netns: hub_ns.clone(),
        hub_ip: HUB_IP,
        underlay,
        apiserver_url: server.clone(),
        etcd_url: format!("http://{HUB_IP}:{}", cp::ETCD_PORT),
        etcd_pid,
        apiserver_pid: 0,
        apiserver_bin: apiserver.to_path_buf(),
        nodes: Vec::new(),
        pods: Vec::new(),
        cidrs: CidrAllocator::new(
            CLUSTER_CIDR.parse().map_err(|_| LabError::BadName {
                name: CLUSTER_CIDR.into(),
            })?,
            24,
        ),
        next_node_index: 1,
    };
    save_state(&state)?;
    cp::wait_etcd(
        &hub_ns,
        etcd_pid,
        &etcd_log,
        Duration::from_secs(30),
        &interrupted,
    )?;

    say(&format!(
        "starting kube-apiserver ({}) on {server}",
        apiserver.display()
    ));
    let api_log = dir.join("logs/kube-apiserver.log");
    state.apiserver_pid = cp::start_apiserver(&cp::ApiserverSpec {
        lab: name,
        hub_ns: &hub_ns,
        hub_ip,
        binary: apiserver,
        pki: &pki,
        log: &api_log,
    })?;
    save_state(&state)?;
    let t0 = Instant::now();
    let admin_kc = dir.join("admin.kubeconfig");
    cp::wait_apiserver(
        &hub_ns,
        &admin_kc,
        state.apiserver_pid,
        &api_log,
        Duration::from_secs(90),
        &interrupted,
    )?;
    say(&format!(
        "kube-apiserver ready after {:.1} s",
        t0.elapsed().as_secs_f64()
    ));

    say("applying weft's manifest (Namespace, ServiceAccount, RBAC, ConfigMap, DaemonSet)");
    cp::apply_manifest(&hub_ns, &admin_kc)?;

    let mut lab = Lab {
        state,
        detached: false,
        verbose: cfg.verbose,
    };
    for _ in 0..cfg.nodes {
        check_interrupt()?;
        // On failure the caller tears the lab down by name; don't do it twice.
        lab.add_node(true).inspect_err(|_| {
            lab.detached = true;
        })?;
    }
    if cfg.weftd {
        let names: Vec<String> = lab.state.nodes.iter().map(|n| n.name.clone()).collect();
        for n in &names {
            check_interrupt()?;
            lab.say(&format!("starting weftd on {n}"));
            lab.start_weftd(n).inspect_err(|_| lab.detached = true)?;
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        lab.wait_weftd_ready(&refs, Duration::from_secs(60))
            .inspect_err(|_| lab.detached = true)?;
        lab.say("weftd is ready on every node");
    }
    lab.say(&format!("lab {name} is up"));
    Ok(lab)
}

/// The namespaces that belong to lab `name`.
pub fn lab_netns(name: &str) -> Vec<String> {
    netns::list(netns::PREFIX)
        .into_iter()
        .filter(|ns| is_lab_netns(ns, name))
        .collect()
}

/// What a teardown removed.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Removed {
    pub processes: Vec<String>,
    pub namespaces: Vec<String>,
    pub directories: Vec<PathBuf>,
}

impl Removed {
    pub fn is_empty(&self) -> bool {
        self.processes.is_empty() && self.namespaces.is_empty() && self.directories.is_empty()
    }
}

/// Stops every process of lab `name`, deletes its namespaces and its state
/// directory. Safe to call for a lab that does not (or no longer) exist.
pub fn teardown(name: &str) -> Removed {
    let namespaces = lab_netns(name);
    let mut pids = procs::marked(Some(name));
    for ns in &namespaces {
        pids.extend(netns::pids(ns));
    }
    pids.sort_unstable();
    pids.dedup();
    remove(pids, namespaces, vec![lab_dir(name)])
}

fn remove(pids: Vec<i32>, namespaces: Vec<String>, dirs: Vec<PathBuf>) -> Removed {
    let described: Vec<(i32, String)> = pids.iter().map(|&p| (p, procs::cmdline(p))).collect();
    let killed = procs::terminate(&pids, Duration::from_secs(3));
    let mut removed = Removed {
        processes: described
            .into_iter()
            .filter(|(p, _)| killed.contains(p))
            .map(|(p, c)| format!("{p} {c}"))
            .collect(),
        ..Default::default()
    };
    for ns in namespaces {
        if netns::delete(&ns).is_ok() {
            removed.namespaces.push(ns);
        }
    }
    for d in dirs {
        if d.exists() && std::fs::remove_dir_all(&d).is_ok() {
            removed.directories.push(d);
        }
    }
    removed
}

/// Removes everything any lab left behind: marked processes, `weftlab-*`
/// namespaces and every directory under the state root.
pub fn clean_all() -> Removed {
    let namespaces = netns::list(netns::PREFIX);
    let mut pids = procs::marked(None);
    for ns in &namespaces {
        pids.extend(netns::pids(ns));
    }
    pids.sort_unstable();
    pids.dedup();
    let dirs = std::fs::read_dir(state_root())
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    remove(pids, namespaces, dirs)
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
