//! A lab node: a network namespace on the lab underlay plus a mount namespace
//! of its own, held open by a small holder process (like a pod's pause
//! container).
//!
//! Inside the node's mount namespace `/etc`, `/opt`, `/run` and `/var/lib` are
//! overlays whose upper layers are the node's own directories, so weftd, the
//! CNI plugins and the lab's runtime use their real default paths
//! (`/run/flannel/subnet.env`, `/etc/cni/net.d`, `/opt/cni/bin`,
//! `/var/lib/cni`, `/etc/kube-flannel`) and every write lands in
//! `<lab>/nodes/<node>/root/...`, never on the host. `/run/netns` is a fresh
//! tmpfs: the node's pods are namespaces only the node sees, and they vanish
//! with it. `/sys` shows the node's own network namespace.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cmd::{self, CmdError};
use crate::netns::{self, NetnsError};
use crate::procs::{self, ProcError};

/// Directories overlaid in every node's mount namespace.
pub const OVERLAID: [&str; 4] = ["etc", "opt", "run", "var/lib"];

/// Standard directories created inside every node.
const NODE_DIRS: [&str; 6] = [
    "/run/flannel",
    "/etc/cni/net.d",
    "/opt/cni/bin",
    "/var/lib/cni",
    "/etc/kube-flannel",
    "/run/netns",
];

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("wiring node {node} onto the lab underlay")]
    Wire {
        node: String,
        #[source]
        source: CmdError,
    },
    #[error("preparing directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the holder of node {node}")]
    Holder {
        node: String,
        #[source]
        source: ProcError,
    },
    #[error(
        "node {node}'s holder died while mounting its directories; its log {log} says:\n{tail}"
    )]
    HolderDied {
        node: String,
        log: PathBuf,
        tail: String,
    },
    #[error("node {node}'s holder did not finish mounting within 10 s")]
    HolderSlow { node: String },
    #[error("starting a process on node {node}")]
    Spawn {
        node: String,
        #[source]
        source: ProcError,
    },
}

/// A node as the lab records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeState {
    /// The Kubernetes Node name (also the node's hostname).
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// Its address on the lab underlay (device `eth0`).
    pub underlay_ip: Ipv4Addr,
    /// PID of the process holding the node's mount namespace.
    pub holder_pid: u32,
    /// The node's directory on the host.
    pub dir: PathBuf,
    /// PID of the node's weftd, when the lab runs one.
    #[serde(default)]
    pub weftd_pid: Option<u32>,
    /// Extra arguments for the node's weftd (`Lab::set_weftd_args`).
    #[serde(default)]
    pub weftd_args: Vec<String>,
    /// This node's own settings over the lab's (`Lab::set_node`).
    #[serde(default)]
    pub settings: NodeSettings,
}

/// What one node runs where it differs from the rest of the lab, so that a
/// mixed cluster (a node switching backend, or running another agent) is
/// one call. Taken at the agent's next start.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeSettings {
    /// Its backend, over the lab's.
    pub backend: Option<crate::Backend>,
    /// Another agent binary in weftd's place (started with weftd's command
    /// line), e.g. an earlier weftd to compare with.
    pub agent: Option<PathBuf>,
    /// Its net-conf.json as given, over the one derived from the backend.
    pub net_conf: Option<String>,
    /// A DaemonSet container spec to run instead of weft's command line
    /// (its command, args, env and capabilities, as kubelet would; see
    /// `container`): e.g. kube-flannel.yml's, with weftd as its flanneld.
    pub container: Option<k8s_openapi::api::core::v1::Container>,
}

impl NodeState {
    /// Where the node's `path` (an absolute path inside the node) lives on
    /// the host, for files under the overlaid directories.
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.dir.join("root").join(path.trim_start_matches('/'))
    }

    /// A command that runs `program` on this node: in its network, mount and
    /// UTS namespaces, with `NODE_NAME` set as a DaemonSet would.
    pub fn command(&self, lab: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.holder_pid.to_string())
            .args(["-n", "-m", "-u", "--wd=/", "--"])
            .arg(program)
            .env(procs::MARK, lab)
            .env("NODE_NAME", &self.name);
        c
    }
}

/// What is needed to create a node.
#[derive(Debug, Clone)]
pub struct NodeSpec<'a> {
    pub lab: &'a str,
    pub name: &'a str,
    pub netns: &'a str,
    pub hub_ns: &'a str,
    pub hub_bridge: &'a str,
    pub underlay_ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    pub dir: &'a Path,
    /// A real node (kubelet, containerd): see `start_real_holder`.
    pub real: bool,
}

/// Creates the node's namespaces, wires `eth0` onto the hub's bridge with a
/// default route, and mounts its directories.
pub fn create(spec: &NodeSpec<'_>) -> Result<NodeState, NodeError> {
    netns::create(spec.netns)?;
    wire(spec).map_err(|source| NodeError::Wire {
        node: spec.name.to_string(),
        source,
    })?;
    for d in OVERLAID {
        for layer in ["root", "work"] {
            let path = spec.dir.join(layer).join(d);
            std::fs::create_dir_all(&path).map_err(|source| NodeError::Dir { path, source })?;
        }
    }
    let holder_pid = if spec.real {
        start_real_holder(spec)?
    } else {
        start_holder(spec)?
    };
    Ok(NodeState {
        name: spec.name.to_string(),
        netns: spec.netns.to_string(),
        underlay_ip: spec.underlay_ip,
        holder_pid,
        dir: spec.dir.to_path_buf(),
        weftd_pid: None,
        weftd_args: Vec::new(),
        settings: NodeSettings::default(),
    })
}

pub(crate) fn wire(spec: &NodeSpec<'_>) -> Result<(), CmdError> {
    let ip_cidr = format!("{}/{}", spec.underlay_ip, spec.prefix_len);
    let gw = spec.gateway.to_string();
    let hub_side = spec.name;
    cmd::veth_to_eth0(spec.hub_ns, hub_side, spec.netns)?;
    cmd::ip([
        "-n",
        spec.hub_ns,
        "link",
        "set",
        hub_side,
        "master",
        spec.hub_bridge,
        "up",
    ])?;
    cmd::ip(["-n", spec.netns, "addr", "add", &ip_cidr, "dev", "eth0"])?;
    cmd::ip(["-n", spec.netns, "link", "set", "eth0", "up"])?;
    cmd::ip(["-n", spec.netns, "route", "add", "default", "via", &gw])?;
    Ok(())
}

fn start_holder(spec: &NodeSpec<'_>) -> Result<u32, NodeError> {
    let mut script = String::from("set -eu\nhostname \"$WEFT_NODE\"\n");
    for d in OVERLAID {
        script.push_str(&format!(
            "mount -t overlay \"weftlab-$WEFT_LAB\" -o \"lowerdir=/{d},upperdir=$WEFT_NODE_DIR/root/{d},workdir=$WEFT_NODE_DIR/work/{d}\" /{d}\n"
        ));
    }
    script.push_str(
        "mkdir -p /run/netns\nmount -t tmpfs -o mode=0755 \"weftlab-$WEFT_LAB\" /run/netns\n",
    );
    for d in NODE_DIRS {
        script.push_str(&format!("mkdir -p {d}\n"));
    }
    script.push_str(": > \"$WEFT_NODE_DIR/mounted\"\n");
    script.push_str("exec -a \"weft-lab-node $WEFT_LAB/$WEFT_NODE\" sleep infinity\n");

    let mut c = Command::new("ip");
    c.args(["netns", "exec", spec.netns, "unshare", "--uts", "--"])
        .args(["bash", "-c", &script]);
    spawn_holder(spec, c)
}

/// The kubelet's sysctls that are not namespaced, with the values it
/// insists on (`protectKernelDefaults` makes it check instead of write).
/// A real node sees files holding these values in their place, so the
/// host's own settings are never read as wrong nor changed.
pub const KUBELET_SYSCTLS: [(&str, &str); 6] = [
    ("vm/overcommit_memory", "1"),
    ("vm/panic_on_oom", "0"),
    ("kernel/panic", "10"),
    ("kernel/panic_on_oops", "1"),
    ("kernel/keys/root_maxkeys", "1000000"),
    ("kernel/keys/root_maxbytes", "25000000"),
];

/// The holder of a real node (kubelet, containerd, kube-proxy). Unlike
/// `ip netns exec`, which remounts /sys and loses the cgroup hierarchies
/// under it, it joins the network namespace with nsenter, takes a private
/// mount namespace, mounts a sysfs of that network namespace and binds the
/// host's cgroup hierarchies back under it. `/etc`, `/opt`, `/var/lib` and
/// `/var/log` are overlays on the node's directories; `/run` is a fresh
/// tmpfs (containerd's state and shim sockets, runc's state, the pods'
/// namespace pins, the xtables lock), gone with the node.
fn start_real_holder(spec: &NodeSpec<'_>) -> Result<u32, NodeError> {
    let sysctl_dir = spec.dir.join("sysctl");
    for layer in ["root", "work"] {
        let path = spec.dir.join(layer).join("var/log");
        std::fs::create_dir_all(&path).map_err(|source| NodeError::Dir { path, source })?;
    }
    std::fs::create_dir_all(&sysctl_dir).map_err(|source| NodeError::Dir {
        path: sysctl_dir.clone(),
        source,
    })?;
    let mut script = String::from(
        "set -eu\nhostname \"$WEFT_NODE\"\n\
         mkdir -p \"$WEFT_NODE_DIR/cgroup\"\n\
         mount --rbind /sys/fs/cgroup \"$WEFT_NODE_DIR/cgroup\"\n\
         mount -t sysfs \"weftlab-$WEFT_LAB\" /sys\n\
         mount --rbind \"$WEFT_NODE_DIR/cgroup\" /sys/fs/cgroup\n\
         umount -l \"$WEFT_NODE_DIR/cgroup\"\n",
    );
    for d in OVERLAID.iter().filter(|d| **d != "run").chain(&["var/log"]) {
        script.push_str(&format!(
            "mount -t overlay \"weftlab-$WEFT_LAB\" -o \"lowerdir=/{d},upperdir=$WEFT_NODE_DIR/root/{d},workdir=$WEFT_NODE_DIR/work/{d}\" /{d}\n"
        ));
    }
    script.push_str("mount -t tmpfs -o mode=0755 \"weftlab-$WEFT_LAB\" /run\n");
    for (key, value) in KUBELET_SYSCTLS {
        let file = sysctl_dir.join(key.replace('/', "."));
        std::fs::write(&file, format!("{value}\n")).map_err(|source| NodeError::Dir {
            path: file.clone(),
            source,
        })?;
        script.push_str(&format!(
            "mount --bind '{}' /proc/sys/{key}\n",
            file.display()
        ));
    }
    for d in NODE_DIRS {
        script.push_str(&format!("mkdir -p {d}\n"));
    }
    script.push_str(": > \"$WEFT_NODE_DIR/mounted\"\n");
    script.push_str("exec -a \"weft-lab-node $WEFT_LAB/$WEFT_NODE\" sleep infinity\n");
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns::path(spec.netns).display()))
        .args([
            "--",
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "--",
        ])
        .args(["bash", "-c", &script]);
    spawn_holder(spec, c)
}

/// Starts a holder and waits until its script has mounted everything.
fn spawn_holder(spec: &NodeSpec<'_>, mut c: Command) -> Result<u32, NodeError> {
    let dir = spec.dir;
    let ready = dir.join("mounted");
    let log = dir.join("holder.log");
    let _ = std::fs::remove_file(&ready);
    c.env("WEFT_NODE", spec.name).env("WEFT_NODE_DIR", dir);
    let pid = procs::spawn(spec.lab, &mut c, &log).map_err(|source| NodeError::Holder {
        node: spec.name.to_string(),
        source,
    })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        if !procs::alive(pid as i32) {
            return Err(NodeError::HolderDied {
                node: spec.name.to_string(),
                log: log.clone(),
                tail: crate::control_plane::log_tail(&log, 10),
            });
        }
        if Instant::now() > deadline {
            return Err(NodeError::HolderSlow {
                node: spec.name.to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(pid)
}
