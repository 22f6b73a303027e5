//! Running the real `weftd` binary on lab nodes, as the DaemonSet would:
//! in the node's namespaces, with its real default paths (net-conf.json in
//! `/etc/kube-flannel`, subnet.env in `/run/flannel`), `NODE_NAME` set, and
//! the lab's least-privilege kubeconfig (weft's ServiceAccount identity).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::lab::{Backend, Lab, LabError, save_state};
use crate::{netns, procs};

/// Where weftd serves /healthz, /readyz and /metrics on every node.
pub const HEALTHZ_PORT: u16 = 8081;

/// The weftd binary: `$WEFT_LAB_WEFTD`, else next to the running program
/// (or one directory up, for test binaries under `target/*/deps`).
pub fn find_weftd() -> Result<PathBuf, LabError> {
    if let Some(p) = given("WEFT_LAB_WEFTD")? {
        return Ok(p);
    }
    beside_me("weftd", "cargo build --workspace --bins")
}

/// A path the user hands over in `$var`, made absolute against the
/// caller's working directory: it is used inside a node's namespaces,
/// where a relative path would be read elsewhere.
fn given(var: &str) -> Result<Option<PathBuf>, LabError> {
    let Some(p) = std::env::var_os(var) else {
        return Ok(None);
    };
    std::path::absolute(&p)
        .map(Some)
        .map_err(|source| LabError::State {
            path: PathBuf::from(p),
            source,
        })
}

/// `name` next to the running program, or one directory up.
fn beside_me(name: &str, how: &str) -> Result<PathBuf, LabError> {
    let exe = std::env::current_exe().map_err(|source| LabError::State {
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    let places = [dir.join(name), dir.join("..").join(name)];
    places
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| LabError::NotBuilt {
            what: name.into(),
            looked: places
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            how: how.into(),
        })
}

/// The CNI plugin binary to install: `$WEFT_LAB_PLUGIN`, else the one next
/// to `weftd` (what `weftd install-cni` takes by default), else the one next
/// to the running program.
pub fn find_plugin(weftd: &Path) -> Result<PathBuf, LabError> {
    if let Some(p) = given("WEFT_LAB_PLUGIN")? {
        return Ok(p);
    }
    let beside_weftd = weftd.with_file_name("weft");
    if beside_weftd.is_file() {
        return Ok(beside_weftd);
    }
    beside_me("weft", "scripts/build-plugin")
}

/// flannel's net-conf.json for the lab's cluster CIDR and backend.
pub fn net_conf(backend: Backend, dual_stack: bool, direct_routing: bool) -> String {
    let mut b = serde_json::json!({"Type": backend.type_name()});
    if direct_routing && backend == Backend::Vxlan {
        b["DirectRouting"] = true.into();
    }
    let mut conf = serde_json::json!({
        "Network": crate::lab::CLUSTER_CIDR,
        "EnableNFTables": false,
        "Backend": b,
    });
    if dual_stack {
        conf["EnableIPv6"] = true.into();
        conf["IPv6Network"] = crate::lab::CLUSTER_CIDR6.into();
    }
    conf.to_string()
}

/// A GET of weftd's health server inside a node's namespace.
fn http_get(netns_name: &str, port: u16, path: &str) -> Option<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    netns::run_in(netns_name, || crate::http::get(addr, path).ok())
        .ok()
        .flatten()
}

impl Lab {
    /// Starts weftd on `node` (writing its net-conf.json first, from the
    /// node's settings over the lab's).
    pub fn start_weftd(&mut self, node: &str) -> Result<u32, LabError> {
        self.start_weftd_in(node, None)
    }

    /// [`Lab::start_weftd`], weftd born in the cgroup whose `cgroup.procs`
    /// is given (so that everything it allocates is charged there).
    pub fn start_weftd_in(
        &mut self,
        node: &str,
        cgroup_procs: Option<&Path>,
    ) -> Result<u32, LabError> {
        let weftd = find_weftd()?;
        let n = self.node(node)?.clone();
        let conf = n.host_path("/etc/kube-flannel/net-conf.json");
        let text = match &n.settings.net_conf {
            Some(text) => text.clone(),
            None => net_conf(
                n.settings.backend.unwrap_or(self.state.backend),
                self.state.dual_stack,
                self.state.direct_routing,
            ),
        };
        let own_etcd = n
            .weftd_args
            .iter()
            .any(|a| a.starts_with("--etcd-endpoints"));
        if self.state.subnet_manager == crate::SubnetManager::Etcd && !own_etcd {
            self.etcd_network_config(&text)?;
        }
        std::fs::write(&conf, text).map_err(|source| LabError::State { path: conf, source })?;
        let agent = n.settings.agent.clone().unwrap_or_else(|| weftd.clone());
        // The DaemonSet's init container: plugin binary and conflist.
        // `$WEFT_LAB_PLUGIN` picks another plugin binary (say, the release one).
        let plugin = find_plugin(&weftd)?;
        let install = [
            weftd.to_str().unwrap_or("weftd"),
            "install-cni",
            "--delegate-dir",
            "/usr/lib/cni",
            "--plugin",
            plugin.to_str().unwrap_or("weft"),
        ];
        self.run(node, &install)?;
        if let Some(container) = &n.settings.container {
            let pid = self.start_container(node, container, &agent)?;
            self.update_node(node, |s| s.weftd_pid = Some(pid))?;
            return Ok(pid);
        }
        let args = self.agent_args(&n, &agent);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (pid, _) = self.spawn_on_with(node, "weftd", &args, |c| {
            if let Some(procs) = cgroup_procs {
                *c = in_cgroup(c, procs);
            }
        })?;
        self.update_node(node, |s| s.weftd_pid = Some(pid))?;
        Ok(pid)
    }

    /// weftd's command line on node `n`, `agent` being its binary: under
    /// the DaemonSet's privileges, with the lab's credentials and the
    /// node's own arguments.
    fn agent_args(&self, n: &crate::node::NodeState, agent: &Path) -> Vec<String> {
        let kubeconfig = self.node_kubeconfig();
        let healthz = format!("0.0.0.0:{HEALTHZ_PORT}");
        // With the DaemonSet's privileges: uid 0 with CAP_NET_ADMIN alone
        // and no_new_privs (charts/weft/templates/daemonset.yaml).
        let mut args: Vec<String> = [
            "setpriv",
            "--bounding-set=-all,+net_admin",
            "--inh-caps=-all,+net_admin",
            "--ambient-caps=-all,+net_admin",
            "--no-new-privs",
            "--",
            agent.to_str().unwrap_or("weftd"),
            "--kubeconfig",
            kubeconfig.to_str().unwrap_or(""),
            "--ip-masq",
            "--healthz-addr",
            &healthz,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let etcd_args = [
            "--subnet-manager".to_string(),
            "etcd".into(),
            "--etcd-endpoints".into(),
            self.state.etcd_url.clone(),
        ];
        if self.state.subnet_manager == crate::SubnetManager::Etcd {
            // A node given an etcd of its own (a test's TLS etcd) keeps it.
            let own = n
                .weftd_args
                .iter()
                .any(|a| a.starts_with("--etcd-endpoints"));
            let take = if own { 2 } else { 4 };
            args.extend(etcd_args.iter().take(take).cloned());
        }
        args.extend(n.weftd_args.iter().cloned());
        args
    }

    /// Starts a second weftd on `node` beside the running one, as a
    /// duplicated DaemonSet pod or a hand-started agent would; its PID.
    /// Its output goes to the node's `weftd-second` log.
    pub fn start_second_weftd(&mut self, node: &str) -> Result<u32, LabError> {
        let n = self.node(node)?.clone();
        let agent = n.settings.agent.clone().unwrap_or(find_weftd()?);
        let args = self.agent_args(&n, &agent);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (pid, _) = self.spawn_on(node, "weftd-second", &args)?;
        Ok(pid)
    }

    /// The last lines the second weftd on `node` wrote.
    pub fn second_weftd_said(&self, node: &str) -> String {
        self.node(node)
            .map(|n| crate::control_plane::log_tail(&n.dir.join("logs/weftd-second.log"), 3))
            .unwrap_or_default()
    }

    /// flannel's network configuration in the lab's etcd, at
    /// `/coreos.com/network/config`, unless one is there already (a test's
    /// own stays).
    fn etcd_network_config(&self, text: &str) -> Result<(), LabError> {
        let key = "/coreos.com/network/config";
        if self
            .etcdctl(&["get", "--print-value-only", key])?
            .trim()
            .is_empty()
        {
            self.etcdctl(&["put", key, text])?;
        }
        Ok(())
    }

    /// Extra arguments for `node`'s weftd from its next start on.
    pub fn set_weftd_args(&mut self, node: &str, args: &[&str]) -> Result<(), LabError> {
        self.node(node)?;
        self.update_node(node, |s| {
            s.weftd_args = args.iter().map(|a| a.to_string()).collect();
        })
    }

    /// Changes `node`'s own settings (backend, agent, net-conf.json); they
    /// are taken at its agent's next start.
    pub fn set_node(
        &mut self,
        node: &str,
        change: impl FnOnce(&mut crate::node::NodeSettings),
    ) -> Result<(), LabError> {
        self.node(node)?;
        self.update_node(node, |s| change(&mut s.settings))
    }

    /// Stops `node`'s agent cleanly (SIGTERM: the data plane stays), starts
    /// it again with the node's current settings, and waits until it is
    /// ready.
    pub fn restart_weftd(&mut self, node: &str, timeout: Duration) -> Result<(), LabError> {
        self.stop_weftd(node, Signal::SIGTERM)?;
        self.start_weftd(node)?;
        self.wait_weftd_ready(&[node], timeout)
    }

    /// Changes `node`'s saved state and saves the lab's.
    fn update_node(
        &mut self,
        node: &str,
        change: impl FnOnce(&mut crate::node::NodeState),
    ) -> Result<(), LabError> {
        if let Some(s) = self.state.nodes.iter_mut().find(|s| s.name == node) {
            change(s);
        }
        save_state(&self.state)
    }

    /// Stops weftd on `node` with `signal` (SIGTERM: a clean exit; SIGKILL:
    /// a crash) and waits until it is gone.
    pub fn stop_weftd(&mut self, node: &str, signal: Signal) -> Result<(), LabError> {
        let pid = self.node(node)?.weftd_pid;
        if let Some(pid) = pid {
            let _ = kill(Pid::from_raw(pid as i32), signal);
            let deadline = Instant::now() + Duration::from_secs(10);
            while procs::alive(pid as i32) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            procs::terminate(&[pid as i32], Duration::from_secs(2));
        }
        self.update_node(node, |s| s.weftd_pid = None)
    }

    /// Whether weftd on `node` answers /readyz with 200.
    pub fn weftd_ready(&self, node: &str) -> Result<bool, LabError> {
        let n = self.node(node)?;
        Ok(http_get(&n.netns, HEALTHZ_PORT, "/readyz").is_some_and(|(c, _)| c == 200))
    }

    /// weftd's /metrics on `node`.
    pub fn weftd_metrics(&self, node: &str) -> Result<String, LabError> {
        let n = self.node(node)?;
        Ok(http_get(&n.netns, HEALTHZ_PORT, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default())
    }

    /// Waits until weftd on every listed node is ready; on timeout or if
    /// one exits, an error quoting its log.
    pub fn wait_weftd_ready(&self, nodes: &[&str], timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        for node in nodes {
            loop {
                if self.weftd_ready(node)? {
                    break;
                }
                let n = self.node(node)?;
                let log = n.dir.join("logs/weftd.log");
                let dead = n.weftd_pid.is_none_or(|p| !procs::alive(p as i32));
                if dead || Instant::now() > deadline {
                    return Err(LabError::WeftdNotReady {
                        node: node.to_string(),
                        why: if dead { "it exited" } else { "timed out" },
                        log: log.clone(),
                        tail: crate::control_plane::log_tail(&log, 12),
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

/// `c` run from a shell that first joins the cgroup whose `cgroup.procs`
/// is `procs` (writing "0" there moves the writer), then execs `c`: the
/// process is born in the cgroup.
fn in_cgroup(c: &std::process::Command, procs: &Path) -> std::process::Command {
    let mut w = std::process::Command::new("sh");
    w.args(["-c", "echo 0 > \"$0\" && exec \"$@\""])
        .arg(procs)
        .arg(c.get_program())
        .args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => w.env(k, v),
            None => w.env_remove(k),
        };
    }
    if let Some(d) = c.get_current_dir() {
        w.current_dir(d);
    }
    w
}
