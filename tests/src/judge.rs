//! Is a VXLAN lab converged? What the API publishes (every Node's podCIDR,
//! VtepMAC and public IP) says what each node's kernel must hold, by
//! DESIGN.md's rules and independently of weftd's own code: per other node a
//! neighbour, an FDB entry and an onlink route on `flannel.1`; the device
//! with VNI 1, port 8472 and the published MAC; the allow-list set holding
//! exactly the other nodes' public IPs; subnet.env naming the node's
//! subnet; the device's local address the published public IP, which the
//! underlay holds, and its MTU (and subnet.env's) the underlay's less 50;
//! weftd ready; no route inside the pod network on the underlay (the lab's
//! VXLAN runs without DirectRouting); the conflist in place and the
//! installed `weft` plugin the lab's own binary. [`Lab::drift`] lists every
//! difference; an empty list is the converged state.
//!
//! Every read that fails is a difference, never an empty list: "nothing
//! there" and "could not look" must not be confused.

use std::collections::BTreeMap;

use crate::{Lab, LabError};

/// The annotation prefix the lab's weftd publishes under (flannel's).
pub const PREFIX: &str = "flannel.alpha.coreos.com";

/// One Node as published in the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub pod_cidr: String,
    pub vtep_mac: String,
    pub public_ip: String,
}

/// `flannel.1`'s neighbours, FDB entries and routes, each a sorted list of
/// lines (`<ip> <mac> PERMANENT`, `<mac> <dst> permanent`, `<cidr> via
/// <gw> onlink=true`).
pub type View = (Vec<String>, Vec<String>, Vec<String>);

impl Lab {
    /// Every Node with weft's annotations: its podCIDR, VtepMAC and public
    /// IP, by name.
    pub fn published(&self) -> Result<BTreeMap<String, Published>, LabError> {
        Ok(self
            .api_nodes()?
            .into_iter()
            .filter_map(|n| {
                let ann = n.metadata.annotations.clone().unwrap_or_default();
                let data: serde_json::Value =
                    serde_json::from_str(ann.get(&format!("{PREFIX}/backend-data"))?).ok()?;
                Some((
                    n.metadata.name.clone()?,
                    Published {
                        pod_cidr: n.spec?.pod_cidr?,
                        vtep_mac: data["VtepMAC"].as_str()?.to_string(),
                        public_ip: ann.get(&format!("{PREFIX}/public-ip"))?.clone(),
                    },
                ))
            })
            .collect())
    }

    /// What `node`'s kernel holds on `flannel.1`; `None` when it cannot be
    /// read (no device, `ip` failing, output that is not JSON).
    pub fn vxlan_view(&self, node: &str) -> Option<View> {
        let s = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
        let mut neighs: Vec<String> = self
            .json_on(
                node,
                &["ip", "-j", "-4", "neigh", "show", "dev", "flannel.1"],
            )?
            .as_array()?
            .iter()
            .map(|n| format!("{} {} {}", s(&n["dst"]), s(&n["lladdr"]), s(&n["state"][0])))
            .collect();
        let mut fdb: Vec<String> = self
            .json_on(node, &["bridge", "-j", "fdb", "show", "dev", "flannel.1"])?
            .as_array()?
            .iter()
            .filter(|f| f["dst"].is_string())
            .map(|f| format!("{} {} {}", s(&f["mac"]), s(&f["dst"]), s(&f["state"])))
            .collect();
        let mut routes: Vec<String> = self
            .json_on(
                node,
                &["ip", "-j", "-4", "route", "show", "dev", "flannel.1"],
            )?
            .as_array()?
            .iter()
            .filter(|r| r["protocol"].as_str() != Some("kernel"))
            .map(|r| {
                format!(
                    "{} via {} onlink={}",
                    s(&r["dst"]),
                    s(&r["gateway"]),
                    r["flags"].to_string().contains("onlink")
                )
            })
            .collect();
        neighs.sort();
        fdb.sort();
        routes.sort();
        Some((neighs, fdb, routes))
    }

    /// `args`' JSON output on `node`; `None` when the command fails or
    /// prints something else.
    fn json_on(&self, node: &str, args: &[&str]) -> Option<serde_json::Value> {
        let o = self.exec(node, args).ok()?;
        if !o.status.success() {
            return None;
        }
        serde_json::from_slice(&o.stdout).ok()
    }

    /// Every way `node`'s kernel differs from what `all` (the published
    /// Nodes) prescribes for it; empty when converged.
    pub fn drift(&self, all: &BTreeMap<String, Published>, node: &str) -> Vec<String> {
        let mut out = Vec::new();
        let Some(me) = all.get(node) else {
            return vec![format!("{node}: its Node carries no weft annotations")];
        };
        match self.vxlan_view(node) {
            None => out.push(format!("{node}: flannel.1 cannot be read")),
            Some(have) => {
                let want = expected_view(all, node);
                for (what, have, want) in [
                    ("neighbour", have.0, want.0),
                    ("FDB entry", have.1, want.1),
                    ("route", have.2, want.2),
                ] {
                    diff(&mut out, node, what, &have, &want);
                }
            }
        }
        // The underlay: its MTU and addresses, which the device, subnet.env
        // and the published public IP must agree with.
        let eth0 = self.json_on(node, &["ip", "-j", "-4", "addr", "show", "eth0"]);
        let eth0 = eth0.as_ref().and_then(|v| v.get(0));
        let underlay_mtu = eth0.and_then(|l| l["mtu"].as_u64());
        let underlay_ips: Vec<String> = eth0
            .and_then(|l| l["addr_info"].as_array())
            .into_iter()
            .flatten()
            .filter_map(|a| a["local"].as_str().map(str::to_string))
            .collect();
        if !underlay_ips.contains(&me.public_ip) {
            out.push(format!(
                "{node}: publishes public IP {}, its underlay holds {underlay_ips:?}",
                me.public_ip
            ));
        }
        let want_mtu = underlay_mtu.map(|m| m.saturating_sub(50));
        match self.json_on(node, &["ip", "-j", "-d", "link", "show", "flannel.1"]) {
            None => out.push(format!("{node}: flannel.1's attributes cannot be read")),
            Some(links) => {
                let l = links.get(0).cloned().unwrap_or_default();
                let data = &l["linkinfo"]["info_data"];
                let have = format!(
                    "mac {} vni {} port {} local {} mtu {} {}",
                    l["address"].as_str().unwrap_or("?"),
                    data["id"],
                    data["port"],
                    data["local"].as_str().unwrap_or("?"),
                    l["mtu"],
                    if l["flags"].to_string().contains("\"UP\"") {
                        "up"
                    } else {
                        "down"
                    }
                );
                let want = format!(
                    "mac {} vni 1 port 8472 local {} mtu {} up",
                    me.vtep_mac,
                    me.public_ip,
                    want_mtu.map_or("?".into(), |m| m.to_string())
                );
                if have != want {
                    out.push(format!("{node}: flannel.1 is {have}, not {want}"));
                }
            }
        }
        let set = ["nft", "-j", "list", "set", "inet", "weft", "vxlan_peers_v4"];
        match self.json_on(node, &set) {
            None => out.push(format!(
                "{node}: nftables set inet weft vxlan_peers_v4 cannot be read"
            )),
            Some(v) => {
                let have: Vec<String> = v["nftables"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|o| o["set"]["elem"].as_array())
                    .flatten()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect();
                let want: Vec<String> = all
                    .iter()
                    .filter(|(n, _)| n.as_str() != node)
                    .map(|(_, p)| p.public_ip.clone())
                    .collect();
                diff(&mut out, node, "allow-list element", &have, &want);
            }
        }
        // subnet.env: the node's subnet as flannel writes it (the gateway,
        // first address of the podCIDR, with its length).
        let want = me
            .pod_cidr
            .parse::<ipnetwork::Ipv4Network>()
            .ok()
            .and_then(|c| {
                c.nth(1)
                    .map(|gw| format!("FLANNEL_SUBNET={gw}/{}", c.prefix()))
            });
        match self.exec(node, &["cat", "/run/flannel/subnet.env"]) {
            Ok(o) if o.status.success() => {
                let text = String::from_utf8_lossy(&o.stdout);
                self.underlay_routes(node, &text, &mut out);
                let have = text.lines().find(|l| l.starts_with("FLANNEL_SUBNET="));
                if want.is_none() || have != want.as_deref() {
                    out.push(format!(
                        "{node}: subnet.env says {}, not {}",
                        have.unwrap_or("no FLANNEL_SUBNET"),
                        want.as_deref().unwrap_or("(podCIDR unreadable)")
                    ));
                }
                let mtu = want_mtu.map(|m| format!("FLANNEL_MTU={m}"));
                let have = text.lines().find(|l| l.starts_with("FLANNEL_MTU="));
                if mtu.is_none() || have != mtu.as_deref() {
                    out.push(format!(
                        "{node}: subnet.env says {}, not {}",
                        have.unwrap_or("no FLANNEL_MTU"),
                        mtu.as_deref().unwrap_or("(underlay MTU unreadable)")
                    ));
                }
            }
            _ => out.push(format!("{node}: /run/flannel/subnet.env cannot be read")),
        }
        self.cni_files(node, &mut out);
        out
    }

    /// Routes on `eth0` whose destination lies inside the pod network
    /// (FLANNEL_NETWORK of `subnet_env`): each one a difference.
    fn underlay_routes(&self, node: &str, subnet_env: &str, out: &mut Vec<String>) {
        let network = subnet_env
            .lines()
            .find_map(|l| l.strip_prefix("FLANNEL_NETWORK="))
            .and_then(|n| n.parse::<ipnetwork::Ipv4Network>().ok());
        let Some(network) = network else {
            out.push(format!("{node}: subnet.env names no FLANNEL_NETWORK"));
            return;
        };
        match self.json_on(node, &["ip", "-j", "-4", "route", "show", "dev", "eth0"]) {
            None => out.push(format!("{node}: eth0's routes cannot be read")),
            Some(routes) => {
                for r in routes.as_array().into_iter().flatten() {
                    let dst = r["dst"].as_str().unwrap_or("");
                    let inside = match dst.parse::<ipnetwork::Ipv4Network>() {
                        Ok(d) => d.prefix() >= network.prefix() && network.contains(d.network()),
                        Err(_) => false,
                    };
                    if inside {
                        out.push(format!(
                            "{node}: route {dst} on eth0 inside the pod network"
                        ));
                    }
                }
            }
        }
    }

    /// `10-weft.conflist` present with weft first, and `/opt/cni/bin/weft`
    /// byte for byte the lab's plugin.
    fn cni_files(&self, node: &str, out: &mut Vec<String>) {
        let Ok(n) = self.node(node) else {
            out.push(format!("{node}: not in the lab"));
            return;
        };
        let conflist = n.host_path("/etc/cni/net.d/10-weft.conflist");
        let first_type = std::fs::read(&conflist)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| v["plugins"][0]["type"].as_str().map(str::to_string));
        if first_type.as_deref() != Some("weft") {
            out.push(format!(
                "{node}: 10-weft.conflist is missing or does not start with weft"
            ));
        }
        let installed = n.host_path("/opt/cni/bin/weft");
        match crate::weftd::find_weftd().and_then(|w| crate::weftd::find_plugin(&w)) {
            Err(e) => out.push(format!("{node}: the lab's plugin cannot be found: {e}")),
            Ok(shipped) => {
                if !same_file_content(&installed, &shipped) {
                    out.push(format!(
                        "{node}: /opt/cni/bin/weft is missing or not the lab's plugin"
                    ));
                }
            }
        }
    }

    /// [`Lab::drift`] on every node of the lab, against the API's view read
    /// once, and every weftd ready; the API being unreachable is a
    /// difference too.
    pub fn drift_all(&self) -> Vec<String> {
        let mut out: Vec<String> = match self.published() {
            Err(e) => vec![format!("the API cannot be read: {e}")],
            Ok(all) => self
                .state
                .nodes
                .iter()
                .flat_map(|n| self.drift(&all, &n.name))
                .collect(),
        };
        for n in &self.state.nodes {
            if !self.weftd_ready(&n.name).unwrap_or(false) {
                out.push(format!("{}: weftd is not ready", n.name));
            }
        }
        out
    }
}

fn diff(out: &mut Vec<String>, node: &str, what: &str, have: &[String], want: &[String]) {
    use std::collections::BTreeSet;
    let (h, w): (BTreeSet<&String>, BTreeSet<&String>) =
        (have.iter().collect(), want.iter().collect());
    for x in w.difference(&h) {
        out.push(format!("{node}: missing {what} {x}"));
    }
    for x in h.difference(&w) {
        out.push(format!("{node}: stale {what} {x}"));
    }
    // Twice the same entry is one too many.
    if h.len() < have.len() {
        out.push(format!("{node}: a {what} is there twice"));
    }
}

/// What DESIGN.md prescribes on `node`'s `flannel.1` toward every other
/// published node.
pub fn expected_view(all: &BTreeMap<String, Published>, node: &str) -> View {
    let mut v: View = Default::default();
    for (name, p) in all {
        if name == node {
            continue;
        }
        let gw = p.pod_cidr.split('/').next().unwrap_or("?");
        v.0.push(format!("{gw} {} PERMANENT", p.vtep_mac));
        v.1.push(format!("{} {} permanent", p.vtep_mac, p.public_ip));
        v.2.push(format!("{} via {gw} onlink=true", p.pod_cidr));
    }
    v.0.sort();
    v.1.sort();
    v.2.sort();
    v
}

/// Whether `a` holds exactly `b`'s bytes; a verdict is remembered per
/// (path, inode, size, mtime) of both, as the judge looks many times a
/// second and a plugin is megabytes.
fn same_file_content(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    use std::sync::Mutex;
    type Key = (std::path::PathBuf, u64, u64, i64, i64);
    static SEEN: Mutex<BTreeMap<(Key, Key), bool>> = Mutex::new(BTreeMap::new());
    let key = |p: &std::path::Path| {
        let m = std::fs::metadata(p).ok()?;
        Some((p.to_path_buf(), m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
    };
    let (Some(ka), Some(kb)) = (key(a), key(b)) else {
        return false;
    };
    if ka.2 != kb.2 {
        return false;
    }
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = seen.get(&(ka.clone(), kb.clone())) {
        return *v;
    }
    let same = matches!((std::fs::read(a), std::fs::read(b)), (Ok(x), Ok(y)) if x == y);
    seen.insert((ka, kb), same);
    same
}
