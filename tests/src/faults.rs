//! The faults tests inject, in one place: kill an agent, delete a device,
//! flush the ruleset, change a node's routes by hand, stop and start etcd,
//! freeze an agent (stopping the API server is [`Lab::stop_apiserver`]). Each acts inside the lab's own
//! namespaces only.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::pods::Pod;
use crate::probe::ping_run;
use crate::{Lab, LabError};

impl Lab {
    /// Kills `node`'s agent with SIGKILL (a crash: nothing cleaned up).
    pub fn kill_agent(&mut self, node: &str) -> Result<(), LabError> {
        self.stop_weftd(node, Signal::SIGKILL)
    }

    /// `ip link del <link>` on `node`, behind the agent's back.
    pub fn delete_link(&self, node: &str, link: &str) -> Result<(), LabError> {
        self.run(node, &["ip", "link", "del", link]).map(drop)
    }

    /// `nft flush ruleset` on `node`: every table gone, weft's included.
    pub fn flush_rules(&self, node: &str) -> Result<(), LabError> {
        self.run(node, &["nft", "flush", "ruleset"]).map(drop)
    }

    /// A shell command on `node` that changes its tables by hand (`ip
    /// route del ...`, `bridge fdb del ...`).
    pub fn by_hand(&self, node: &str, script: &str) -> Result<(), LabError> {
        self.run(node, &["bash", "-c", script]).map(drop)
    }

    /// Sets annotations on Node `node` as an admin would (a garbage value,
    /// a changed public IP), behind every agent's back.
    pub fn annotate_node(&self, node: &str, annotations: &[(&str, &str)]) -> Result<(), LabError> {
        use kube::api::{Patch, PatchParams};
        let admin = self.admin_kubeconfig();
        let map: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        let body = serde_json::json!({"metadata": {"annotations": map}});
        self.block_on(|| async move {
            let client = crate::cluster::client(&admin).await?;
            let api: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
            api.patch(node, &PatchParams::default(), &Patch::Merge(&body))
                .await
                .map(drop)
                .map_err(|source| crate::cluster::ClusterError::AnnotateNode {
                    name: node.to_string(),
                    source,
                })
        })?
        .map_err(LabError::from)
    }

    /// A crash under load: `from` pings `to` every 10 ms for 4 s while
    /// `node`'s agent is killed (after 1 s), started again and waited for;
    /// the ping's (transmitted, received).
    pub fn crash_and_restart_under_ping(
        &mut self,
        node: &str,
        from: &Pod,
        to: &Pod,
    ) -> Result<(u64, u64), LabError> {
        let during = ping_run(self, from, to, 4, "ping during restart");
        std::thread::sleep(Duration::from_millis(1000));
        self.kill_agent(node)?;
        let t0 = Instant::now();
        self.start_weftd(node)?;
        self.wait_weftd_ready(&[node], Duration::from_secs(30))?;
        eprintln!("weftd on {node} restarted and ready in {:?}", t0.elapsed());
        let (sent, got) = during.join().map_err(|_| LabError::State {
            path: "ping".into(),
            source: std::io::Error::other("the ping thread panicked"),
        })?;
        eprintln!(
            "ping every 10 ms across a SIGKILL + restart: {sent} sent, {} lost",
            sent.saturating_sub(got)
        );
        Ok((sent, got))
    }
}

impl Lab {
    /// Stops the lab's etcd (SIGTERM, then waits until it is gone): the
    /// API server loses its store, an etcd-mode weftd its subnet manager.
    pub fn stop_etcd(&mut self) -> Result<(), LabError> {
        let pid = self.state.etcd_pid;
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while crate::procs::alive(pid as i32) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Starts the lab's etcd again on its data, and waits until it is
    /// healthy.
    pub fn start_etcd(&mut self) -> Result<(), LabError> {
        let log = self.state.dir.join("logs/etcd.log");
        let pid = crate::control_plane::start_etcd(
            &self.state.name,
            &self.state.hub_netns,
            std::net::IpAddr::V4(self.state.hub_ip),
            &self.state.dir.join("etcd"),
            &log,
        )?;
        self.state.etcd_pid = pid;
        crate::lab::save_state(&self.state)?;
        crate::control_plane::wait_etcd(
            &self.state.hub_netns,
            pid,
            &log,
            Duration::from_secs(30),
            &|| false,
        )?;
        Ok(())
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) `node`'s weftd: a process that
    /// falls behind without knowing it.
    pub fn freeze_weftd(&self, node: &str, frozen: bool) -> Result<(), LabError> {
        if let Some(pid) = self.node(node)?.weftd_pid {
            let sig = if frozen {
                Signal::SIGSTOP
            } else {
                Signal::SIGCONT
            };
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
        Ok(())
    }
}

impl Lab {
    /// `node`'s underlay link (`eth0`) down or up. Up, the default route
    /// the link lost is put back, as a node's network manager would.
    pub fn set_underlay(&self, node: &str, up: bool) -> Result<(), LabError> {
        let state = if up { "up" } else { "down" };
        self.run(node, &["ip", "link", "set", "eth0", state])?;
        if up {
            let gw = self.state.hub_ip.to_string();
            self.run(node, &["ip", "route", "replace", "default", "via", &gw])?;
        }
        Ok(())
    }

    /// Moves `node`'s underlay address to `new` (same prefix), as a DHCP
    /// renewal or a renumbering would, and updates its Node's InternalIP
    /// as kubelet would. The lab's record follows.
    pub fn move_underlay_address(&mut self, node: &str, new: Ipv4Addr) -> Result<(), LabError> {
        let old = self.node(node)?.underlay_ip;
        let len = self.state.underlay.prefix();
        let gw = self.state.hub_ip;
        self.by_hand(
            node,
            &format!(
                "set -e; ip addr del {old}/{len} dev eth0; ip addr add {new}/{len} dev eth0; ip route replace default via {gw}"
            ),
        )?;
        let patch = serde_json::json!({"status": {"addresses": [
            {"type": "InternalIP", "address": new.to_string()},
            {"type": "Hostname", "address": node},
        ]}});
        crate::cmd::run(
            self.kubectl()
                .args([
                    "patch",
                    "node",
                    node,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                ])
                .arg(patch.to_string()),
        )?;
        if let Some(n) = self.state.nodes.iter_mut().find(|n| n.name == node) {
            n.underlay_ip = new;
        }
        crate::lab::save_state(&self.state)
    }

    /// `ip link set eth0 mtu <mtu>` on `node`.
    pub fn set_underlay_mtu(&self, node: &str, mtu: u32) -> Result<(), LabError> {
        self.run(
            node,
            &["ip", "link", "set", "eth0", "mtu", &mtu.to_string()],
        )
        .map(drop)
    }

    /// Cuts `node` off from the API server (its packets to the API
    /// server's port dropped, in a table of the lab's own in the node's
    /// namespace), or heals the cut. The data plane is untouched.
    pub fn partition_from_apiserver(&self, node: &str, cut: bool) -> Result<(), LabError> {
        let port = self
            .state
            .apiserver_url
            .rsplit(':')
            .next()
            .unwrap_or("6443")
            .trim_end_matches('/')
            .to_string();
        let hub = self.state.hub_ip;
        let script = if cut {
            format!(
                "nft -f - <<'EOF'\ntable inet weftlab_partition {{\n\tchain output {{\n\t\ttype filter hook output priority filter; policy accept;\n\t\tip daddr {hub} tcp dport {port} drop\n\t}}\n\tchain input {{\n\t\ttype filter hook input priority filter; policy accept;\n\t\tip saddr {hub} tcp sport {port} drop\n\t}}\n}}\nEOF\n"
            )
        } else {
            "nft delete table inet weftlab_partition".to_string()
        };
        self.by_hand(node, &script)
    }

    /// Deletes the ClusterRoleBinding weftd runs under (every weftd loses
    /// its rights at once), or applies weft's manifest again to restore it.
    pub fn revoke_rbac(&self, revoked: bool) -> Result<(), LabError> {
        if revoked {
            crate::cmd::run(
                self.kubectl()
                    .args(["delete", "clusterrolebinding", "weft"]),
            )?;
            Ok(())
        } else {
            crate::control_plane::apply_manifest(&self.state.hub_netns, &self.admin_kubeconfig())
                .map_err(LabError::from)
        }
    }

    /// `ip link set flannel.1 address <mac>` on `node`, by hand.
    pub fn set_vtep_mac(&self, node: &str, mac: &str) -> Result<(), LabError> {
        self.run(node, &["ip", "link", "set", "flannel.1", "address", mac])
            .map(drop)
    }

    /// Deletes `flannel.1` on `node` and creates it again by hand with VNI
    /// `vni`, everything else as it was (MAC, local address, port, link):
    /// the kernel cannot change a live device's VNI.
    pub fn recreate_vxlan(&self, node: &str, vni: u32) -> Result<(), LabError> {
        let links = self.run(node, &["ip", "-j", "-d", "link", "show", "flannel.1"])?;
        let v: serde_json::Value = serde_json::from_str(&links).map_err(|e| LabError::State {
            path: "ip -j -d link show flannel.1".into(),
            source: std::io::Error::other(e),
        })?;
        let l = &v[0];
        let data = &l["linkinfo"]["info_data"];
        let mac = l["address"].as_str().unwrap_or_default();
        let local = data["local"].as_str().unwrap_or_default();
        let mtu = l["mtu"].to_string();
        // weftd recreates a deleted device at once: delete and add in one
        // batch, again if weftd's came first.
        let batch = format!(
            "link del flannel.1\nlink add flannel.1 address {mac} mtu {mtu} type vxlan id {vni} local {local} dev eth0 dstport 8472 nolearning\nlink set flannel.1 up\n"
        );
        let mut last = None;
        for _ in 0..10 {
            match self.by_hand(node, &format!("ip -batch - <<'EOF'\n{batch}EOF\n")) {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(last.unwrap_or_else(|| LabError::State {
            path: "ip -batch".into(),
            source: std::io::Error::other("no attempt made"),
        }))
    }
}
