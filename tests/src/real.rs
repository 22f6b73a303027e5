//! Real nodes (`weft-lab up --kubelet`): every lab node runs its own
//! containerd, kubelet and kube-proxy, the hub runs kube-controller-manager
//! (node IPAM) and kube-scheduler next to etcd and kube-apiserver, and weft
//! arrives only by `kubectl apply` of its manifest: the DaemonSet controller
//! makes its pods, kubelet runs them from weft's image under the manifest's
//! securityContext, and containerd's CRI calls the `weft` plugin through
//! libcni for every pod.
//!
//! What this machine (cgroup v1, PID 1 not systemd, several nodes on one
//! kernel) needs beyond a production node, each kept inside the node:
//! - a cgroup root per node (`weftlab-<lab>-<node>` in every hierarchy),
//!   removed leaf-first at teardown (`remove_cgroups`);
//! - the kubelet's host-wide sysctls shown to it as already set
//!   (`node::KUBELET_SYSCTLS`, with `protectKernelDefaults`);
//! - containerd's `restrict_oom_score_adj`: the capability bounding set here
//!   lacks CAP_SYS_RESOURCE, so a negative oom_score_adj for the sandbox
//!   would fail every pod;
//! - kube-proxy told to leave the (global) conntrack table size alone;
//! - images imported from archives (no registry is reachable).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::cmd;
use crate::lab::LabError;
use crate::node::NodeState;
use crate::pki::TokenUser;
use crate::procs;

/// The Kubernetes components a real-node lab runs, built by
/// `scripts/build-kube.sh`.
pub const COMPONENTS: [&str; 5] = [
    "kube-apiserver",
    "kubelet",
    "kube-proxy",
    "kube-controller-manager",
    "kube-scheduler",
];

/// containerd's CRI socket inside every node.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";
/// The pause image every pod sandbox runs (`scripts/build-lab-images`).
pub const PAUSE_IMAGE: &str = "localhost/pause:3.4.1";
/// The containerd namespace the CRI keeps its images and containers in.
const CRI_NAMESPACE: &str = "k8s.io";

/// The cache directory holding the Kubernetes binaries and lab images.
#[derive(Debug, Clone)]
pub struct KubeBins {
    pub dir: PathBuf,
}

impl KubeBins {
    /// `$WEFT_LAB_KUBE`, else the newest `kubernetes-*` build under
    /// `$WEFT_LAB_CACHE` (default /var/cache/weft-lab) that has `needed`.
    pub fn find(needed: &[&str]) -> Result<KubeBins, LabError> {
        let cache = PathBuf::from(
            std::env::var_os("WEFT_LAB_CACHE").unwrap_or_else(|| "/var/cache/weft-lab".into()),
        );
        let mut dirs: Vec<PathBuf> = match std::env::var_os("WEFT_LAB_KUBE") {
            Some(d) => vec![PathBuf::from(d)],
            None => std::fs::read_dir(&cache)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter(|e| e.file_name().to_string_lossy().starts_with("kubernetes-"))
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default(),
        };
        dirs.sort();
        dirs.into_iter()
            .rev()
            .find(|d| needed.iter().all(|c| d.join(c).is_file()))
            .map(|dir| KubeBins { dir })
            .ok_or_else(|| LabError::NotBuilt {
                what: needed.join(", "),
                looked: format!("{}/kubernetes-*", cache.display()),
                how: "scripts/setup-host.sh (scripts/build-kube.sh and scripts/build-lab-images)"
                    .into(),
            })
    }

    pub fn bin(&self, component: &str) -> PathBuf {
        self.dir.join(component)
    }

    /// A lab image archive (`pause` or `busybox`).
    pub fn image(&self, name: &str) -> PathBuf {
        self.dir.join("images").join(format!("{name}.tar"))
    }
}

/// weft's own image archive: `$WEFT_LAB_IMAGE`, else what
/// `scripts/build-image` writes (`$CARGO_TARGET_DIR` or the checkout's
/// `target`, then `oci/weft-<version>.tar`).
pub fn weft_image() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_LAB_IMAGE") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target
        .join("oci")
        .join(format!("weft-{}.tar", env!("CARGO_PKG_VERSION")))
}

/// The identities of the hub's controllers and of every node's kubelet and
/// kube-proxy (static tokens; each bound by Kubernetes' own bootstrap RBAC,
/// and the kubelets by the Node authorizer).
pub fn identities(nodes: &[String]) -> Result<Vec<(String, TokenUser)>, LabError> {
    let user = |user: &str, groups: &[&str]| -> Result<TokenUser, LabError> {
        Ok(TokenUser {
            token: crate::pki::random_token()?,
            user: user.to_string(),
            uid: user.replace(':', "-"),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        })
    };
    let mut out = vec![
        (
            "kube-controller-manager.kubeconfig".to_string(),
            user("system:kube-controller-manager", &[])?,
        ),
        (
            "kube-scheduler.kubeconfig".to_string(),
            user("system:kube-scheduler", &[])?,
        ),
        (
            "kube-proxy.kubeconfig".to_string(),
            user("system:kube-proxy", &[])?,
        ),
    ];
    for n in nodes {
        out.push((
            format!("nodes/{n}/kubelet.kubeconfig"),
            user(&format!("system:node:{n}"), &["system:nodes"])?,
        ));
    }
    Ok(out)
}

/// Starts kube-controller-manager in the hub: node IPAM over the lab's
/// cluster CIDR (/24 per node), and the DaemonSet, ReplicaSet, Deployment,
/// ServiceAccount and token controllers, each under its own ServiceAccount.
pub fn start_controller_manager(
    lab: &str,
    hub_ns: &str,
    dir: &Path,
    kube: &KubeBins,
) -> Result<u32, LabError> {
    let pki = dir.join("pki");
    let mut c = Command::new("ip");
    c.args(["netns", "exec", hub_ns])
        .arg(kube.bin("kube-controller-manager"))
        .arg(format!(
            "--kubeconfig={}",
            dir.join("kube-controller-manager.kubeconfig").display()
        ))
        .arg("--allocate-node-cidrs=true")
        .arg(format!("--cluster-cidr={}", crate::lab::CLUSTER_CIDR))
        .arg("--node-cidr-mask-size=24")
        .arg("--service-cluster-ip-range=10.96.0.0/16")
        .arg(format!(
            "--service-account-private-key-file={}",
            pki.join("sa.key").display()
        ))
        .arg(format!("--root-ca-file={}", pki.join("ca.crt").display()))
        .arg("--use-service-account-credentials=true")
        .arg("--leader-elect=false")
        .arg("--secure-port=0")
        .arg("--port=10252")
        .arg("--address=127.0.0.1")
        .arg("--v=1");
    let log = dir.join("logs/kube-controller-manager.log");
    Ok(procs::spawn(lab, &mut c, &log).map_err(|source| {
        crate::control_plane::ControlPlaneError::Start {
            what: "kube-controller-manager",
            source,
        }
    })?)
}

/// Starts kube-scheduler in the hub.
pub fn start_scheduler(
    lab: &str,
    hub_ns: &str,
    dir: &Path,
    kube: &KubeBins,
) -> Result<u32, LabError> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", hub_ns])
        .arg(kube.bin("kube-scheduler"))
        .arg(format!(
            "--kubeconfig={}",
            dir.join("kube-scheduler.kubeconfig").display()
        ))
        .arg("--leader-elect=false")
        .arg("--secure-port=0")
        .arg("--port=10251")
        .arg("--address=127.0.0.1")
        .arg("--v=1");
    let log = dir.join("logs/kube-scheduler.log");
    Ok(procs::spawn(lab, &mut c, &log).map_err(|source| {
        crate::control_plane::ControlPlaneError::Start {
            what: "kube-scheduler",
            source,
        }
    })?)
}

/// The cgroup name of a real node: its kubelet's `--cgroup-root`, and the
/// parent of everything its containers run in.
pub fn cgroup_name(lab: &str, node: &str) -> String {
    format!("{}{lab}-{node}", crate::netns::PREFIX)
}

/// The mounted cgroup hierarchies (v1 controllers, named ones and the
/// hybrid v2 one), from /proc/self/mountinfo.
pub fn cgroup_hierarchies() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount_point = left.split_whitespace().nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |source| LabError::State {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates `name` in every hierarchy (the kubelet needs its cgroup root to
/// exist in each); the cpuset one gets its parent's CPUs and memory nodes.
pub fn create_cgroups(name: &str) -> Result<(), LabError> {
    for h in cgroup_hierarchies() {
        let dir = h.join(name);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        for f in ["cpuset.cpus", "cpuset.mems"] {
            let parent = h.join(f);
            if let Ok(v) = std::fs::read_to_string(&parent) {
                let path = dir.join(f);
                std::fs::write(&path, v.trim()).map_err(io_err(&path))?;
            }
        }
    }
    Ok(())
}

/// Every cgroup directory under `dir`, deepest first.
fn cgroup_tree(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(|e| e.ok()) {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                cgroup_tree(&e.path(), out);
            }
        }
    }
    out.push(dir.to_path_buf());
}

/// Kills every process in the cgroups of lab `lab` (any lab's when `None`)
/// and removes those cgroups leaf-first. Returns the removed directories.
pub fn remove_cgroups(lab: Option<&str>) -> Vec<PathBuf> {
    let prefix = match lab {
        Some(l) => format!("{}{l}-", crate::netns::PREFIX),
        None => crate::netns::PREFIX.to_string(),
    };
    let mut dirs = Vec::new();
    for h in cgroup_hierarchies() {
        let Ok(rd) = std::fs::read_dir(&h) else {
            continue;
        };
        for e in rd.filter_map(|e| e.ok()) {
            let owned = e
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix) && n.contains("-node-"));
            if owned && e.file_type().is_ok_and(|t| t.is_dir()) {
                cgroup_tree(&e.path(), &mut dirs);
            }
        }
    }
    let pids_in = |dirs: &[PathBuf]| -> Vec<i32> {
        let mut pids: Vec<i32> = dirs
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let pids = pids_in(&dirs);
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        procs::terminate(&pids, Duration::from_millis(500));
    }
    dirs.into_iter()
        .filter(|d| std::fs::remove_dir(d).is_ok())
        .collect()
}

/// containerd's configuration for one node: its root on the host's disk in
/// the node's directory (overlayfs snapshots need a real filesystem under
/// them, not the node's overlay), its state and socket in the node's
/// private /run, the CRI's CNI paths the node's standard ones.
pub fn containerd_config(node_dir: &Path) -> String {
    let root = node_dir.join("containerd");
    format!(
        r#"version = 2
root = "{root}"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{CONTAINERD_SOCKET}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # This machine's capability bounding set lacks CAP_SYS_RESOURCE: without
  # this, setting the sandbox's oom_score_adj to -998 fails every pod.
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
"#,
        root = root.join("root").display(),
        opt = root.join("opt").display(),
    )
}

/// The kubelet's configuration for one node.
pub fn kubelet_config(cgroup_root: &str, node_ip: Ipv4Addr, ca: &Path) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {node_ip}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
cgroupRoot: /{cgroup_root}
cgroupsPerQOS: true
failSwapOn: false
protectKernelDefaults: true
resolvConf: ""
serializeImagePulls: false
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  imagefs.available: 1%
"#,
        ca = ca.display()
    )
}

/// Provisions and starts one real node: its cgroups, the standard CNI
/// plugins in its `/opt/cni/bin` (as a distribution's containerd package
/// ships them), containerd with the lab's images imported, the kubelet
/// (which registers the Node) and kube-proxy.
pub fn start_node(
    lab: &str,
    lab_dir: &Path,
    node: &NodeState,
    kube: &KubeBins,
) -> Result<(), LabError> {
    let dir = &node.dir;
    create_cgroups(&cgroup_name(lab, &node.name))?;
    let bin = node.host_path("/opt/cni/bin");
    std::fs::create_dir_all(&bin).map_err(io_err(&bin))?;
    for e in std::fs::read_dir("/usr/lib/cni")
        .map_err(io_err(Path::new("/usr/lib/cni")))?
        .filter_map(|e| e.ok())
    {
        let to = bin.join(e.file_name());
        std::fs::copy(e.path(), &to).map_err(io_err(&to))?;
    }
    let write = |name: &str, text: String| -> Result<PathBuf, LabError> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(io_err(&path))?;
        Ok(path)
    };
    let containerd_toml = write("containerd.toml", containerd_config(dir))?;
    let ca = lab_dir.join("pki/ca.crt");
    let kubelet_yaml = write(
        "kubelet.yaml",
        kubelet_config(&cgroup_name(lab, &node.name), node.underlay_ip, &ca),
    )?;
    let logs = lab_dir.join("logs");
    let spawn = |what: &'static str, c: &mut Command| -> Result<u32, LabError> {
        let log = logs.join(format!("{}-{what}.log", node.name));
        procs::spawn(lab, c, &log).map_err(|source| {
            LabError::ControlPlane(crate::control_plane::ControlPlaneError::Start { what, source })
        })
    };

    let containerd = spawn(
        "containerd",
        node.command(lab, "containerd")
            .arg("--config")
            .arg(&containerd_toml),
    )?;
    wait_containerd(lab, node, containerd, &logs)?;
    for image in [kube.image("pause"), kube.image("busybox"), weft_image()] {
        if !image.is_file() {
            return Err(LabError::NotBuilt {
                what: "image archive".into(),
                looked: image.display().to_string(),
                how: "scripts/build-static weftd weft-cni && scripts/build-image (weft), scripts/build-lab-images (pause, busybox)".into(),
            });
        }
        cmd::run(
            node.command(lab, "ctr")
                .args(["-n", CRI_NAMESPACE, "--address", CONTAINERD_SOCKET])
                .args(["images", "import", "--no-unpack"])
                .arg(&image),
        )?;
    }
    spawn(
        "kubelet",
        node.command(lab, kube.bin("kubelet"))
            .arg(format!("--config={}", kubelet_yaml.display()))
            .arg(format!(
                "--kubeconfig={}",
                dir.join("kubelet.kubeconfig").display()
            ))
            .arg("--container-runtime=remote")
            .arg(format!(
                "--container-runtime-endpoint=unix://{CONTAINERD_SOCKET}"
            ))
            .arg(format!("--node-ip={}", node.underlay_ip))
            .arg(format!("--hostname-override={}", node.name))
            .arg("--root-dir=/var/lib/kubelet")
            .arg("--v=1"),
    )?;
    spawn(
        "kube-proxy",
        node.command(lab, kube.bin("kube-proxy"))
            .arg(format!(
                "--kubeconfig={}",
                lab_dir.join("kube-proxy.kubeconfig").display()
            ))
            .arg(format!("--hostname-override={}", node.name))
            .arg(format!("--bind-address={}", node.underlay_ip))
            .arg(format!("--cluster-cidr={}", crate::lab::CLUSTER_CIDR))
            .arg("--proxy-mode=iptables")
            // The conntrack table's size is global: leave it as it is.
            .arg("--conntrack-max-per-core=0")
            .arg("--conntrack-min=0")
            .arg("--oom-score-adj=0")
            .arg("--metrics-bind-address=127.0.0.1:10249")
            .arg("--healthz-bind-address=127.0.0.1:10256")
            .arg("--v=1"),
    )?;
    Ok(())
}

fn wait_containerd(lab: &str, node: &NodeState, pid: u32, logs: &Path) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up =
            cmd::run(
                node.command(lab, "ctr")
                    .args(["--address", CONTAINERD_SOCKET, "version"]),
            )
            .is_ok();
        if up {
            return Ok(());
        }
        let log = logs.join(format!("{}-containerd.log", node.name));
        if !procs::alive(pid as i32) || Instant::now() > deadline {
            return Err(LabError::Container {
                node: node.name.clone(),
                reason: format!(
                    "containerd did not come up; its log {} ends with:\n{}",
                    log.display(),
                    crate::control_plane::log_tail(&log, 15)
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
