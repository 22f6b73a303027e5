//! Pods wired by hand, the way the bridge plugin would wire them, for tests
//! of the overlay before the CNI runtime exists: a `cni0` bridge holding the
//! node's gateway address from `subnet.env`, and per pod a network namespace
//! (visible only inside the node) with a veth onto the bridge.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::lab::{Lab, LabError};

/// A pod's name and address.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    pub node: String,
    pub name: String,
    pub ip: Ipv4Addr,
}

/// FLANNEL_SUBNET and FLANNEL_MTU from a node's subnet.env.
fn subnet_env(lab: &Lab, node: &str) -> Result<(Ipv4Network, u32), LabError> {
    let path = lab.node(node)?.host_path("/run/flannel/subnet.env");
    let text = std::fs::read_to_string(&path).map_err(|source| LabError::State {
        path: path.clone(),
        source,
    })?;
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    let bad = || LabError::State {
        path: path.clone(),
        source: std::io::Error::other("subnet.env lacks FLANNEL_SUBNET or FLANNEL_MTU"),
    };
    let subnet = get("FLANNEL_SUBNET")
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let mtu = get("FLANNEL_MTU")
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((subnet, mtu))
}

impl Lab {
    /// Adds pod `name` on `node` with host number `host` in the node's
    /// subnet (2 and up; 1 is the bridge). Its address is marked taken in
    /// host-local's store, so that pods from the conflist never get it.
    pub fn add_plain_pod(&self, node: &str, name: &str, host: u8) -> Result<Pod, LabError> {
        let (gw_net, mtu) = subnet_env(self, node)?;
        let gw = gw_net.ip();
        let net = Ipv4Network::new(gw_net.network(), gw_net.prefix()).unwrap_or(gw_net);
        let ip = Ipv4Addr::from(u32::from(net.network()) + u32::from(host));
        let prefix = net.prefix();
        let veth = format!(
            "veth{}",
            name.chars()
                .filter(char::is_ascii_alphanumeric)
                .take(10)
                .collect::<String>()
        );
        let script = format!(
            "set -eu
             if ! ip link show cni0 >/dev/null 2>&1; then
               ip link add cni0 type bridge
               # As the bridge plugin does when it gives the bridge its
               # address: the MAC set to itself, so it stays as ports churn.
               ip link set cni0 address $(cat /sys/class/net/cni0/address)
               ip addr add {gw}/{prefix} dev cni0
               ip link set cni0 mtu {mtu} up
               sysctl -qw net.ipv4.ip_forward=1
             fi
             ip netns add {name}
             ip link add {veth} mtu {mtu} type veth peer name eth0 mtu {mtu} netns {name}
             ip link set {veth} master cni0 up
             ip -n {name} link set lo up
             ip -n {name} addr add {ip}/{prefix} dev eth0
             ip -n {name} link set eth0 up
             ip -n {name} route add default via {gw}
             mkdir -p /var/lib/cni/networks/cbr0
             echo {name} > /var/lib/cni/networks/cbr0/{ip}"
        );
        self.run(node, &["bash", "-c", &script])?;
        Ok(Pod {
            node: node.to_string(),
            name: name.to_string(),
            ip,
        })
    }

    /// Runs `args` inside `pod`; its output.
    pub fn pod_exec(&self, pod: &Pod, args: &[&str]) -> Result<std::process::Output, LabError> {
        let mut full = vec!["ip", "netns", "exec", pod.name.as_str()];
        full.extend_from_slice(args);
        self.exec(&pod.node, &full)
    }

    /// Whether `from` reaches `to` with ICMP (`count` pings, 2 s timeout each).
    pub fn pod_pings(&self, from: &Pod, to: &Pod, count: u32) -> Result<bool, LabError> {
        let c = count.to_string();
        let out = self.pod_exec(
            from,
            &[
                "ping",
                "-q",
                "-c",
                &c,
                "-i",
                "0.05",
                "-W",
                "2",
                &to.ip.to_string(),
            ],
        )?;
        Ok(out.status.success())
    }
}
