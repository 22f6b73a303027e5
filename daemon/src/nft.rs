//! weft's nftables ruleset: one table of its own (`inet weft`), rendered as
//! a pure function of (config, lease, peers) and meant to be loaded in one
//! atomic transaction with `nft -f -` (the table is declared, deleted and
//! declared again with its full content, so it is replaced whole and nothing
//! else on the host is touched).
//!
//! - masquerade (with `--ip-masq`), flannel's semantics in flannel's order:
//!   packets marked by kube-proxy (0x4000/0x4000) return; pod subnet →
//!   Network returns; Network → pod subnet returns; non-pod → pod subnet
//!   returns; Network → anything but multicast is masqueraded (fully
//!   random ports); non-pod → Network is masqueraded. (flannel's own nft
//!   mode matches the mark exactly and writes its fourth rule as
//!   `saddr != pod daddr Network return`, which makes the last rule dead;
//!   weft follows the iptables rules, the ones flannel clusters run.)
//! - forwarding: traffic from and to Network is accepted (FLANNEL-FWD).
//! - VXLAN ingress allow-list: UDP to the VXLAN port is accepted only from
//!   the current peers' public IPs and otherwise counted and dropped.
//!
//! This slice renders the ruleset; loading it and the resync come with the
//! rest of the masquerade issue.

use std::fmt::Write;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// The table's family and name.
pub const TABLE: &str = "inet weft";

/// One address family: the pod network and this node's pod subnet.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    pub network: IpNetwork,
    pub subnet: IpNetwork,
}

/// Everything the ruleset depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct RulesetInput {
    pub families: Vec<Family>,
    pub ip_masq: bool,
    /// The VXLAN port and the peers allowed to send to it (None: no allow-list).
    pub vxlan_allow: Option<(u16, Vec<IpAddr>)>,
}

fn proto(n: &IpNetwork) -> &'static str {
    if n.is_ipv4() { "ip" } else { "ip6" }
}

fn multicast(n: &IpNetwork) -> &'static str {
    if n.is_ipv4() {
        "224.0.0.0/4"
    } else {
        "ff00::/8"
    }
}

/// Appends a base chain: its hook line, then its rules.
fn chain(s: &mut String, name: &str, hook: &str, rules: &[String]) {
    let _ = writeln!(s, "\tchain {name} {{");
    let _ = writeln!(s, "\t\t{hook}; policy accept;");
    for r in rules {
        let _ = writeln!(s, "\t\t{r}");
    }
    let _ = writeln!(s, "\t}}");
}

/// The text for `nft -f -`.
pub fn render(input: &RulesetInput) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table {TABLE}");
    let _ = writeln!(s, "delete table {TABLE}");
    let _ = writeln!(s, "table {TABLE} {{");
    if let Some((_, peers)) = &input.vxlan_allow {
        for (v6, ty) in [(false, "ipv4_addr"), (true, "ipv6_addr")] {
            let mut elems: Vec<String> = peers
                .iter()
                .filter(|p| p.is_ipv6() == v6)
                .map(|p| p.to_string())
                .collect();
            elems.sort();
            let _ = writeln!(s, "\tset vxlan_peers_v{} {{", if v6 { 6 } else { 4 });
            let _ = writeln!(s, "\t\ttype {ty}");
            if !elems.is_empty() {
                let _ = writeln!(s, "\t\telements = {{ {} }}", elems.join(", "));
            }
            let _ = writeln!(s, "\t}}");
        }
    }
    if input.ip_masq {
        let mut rules = vec!["meta mark & 0x00004000 == 0x00004000 return".to_string()];
        for f in &input.families {
            let (p, net, sub, mc) = (
                proto(&f.network),
                f.network,
                f.subnet,
                multicast(&f.network),
            );
            rules.extend([
                format!("{p} saddr {sub} {p} daddr {net} return"),
                format!("{p} saddr {net} {p} daddr {sub} return"),
                format!("{p} saddr != {net} {p} daddr {sub} return"),
                format!("{p} saddr {net} {p} daddr != {mc} masquerade fully-random"),
                format!("{p} saddr != {net} {p} daddr {net} masquerade fully-random"),
            ]);
        }
        chain(
            &mut s,
            "postrouting",
            "type nat hook postrouting priority srcnat",
            &rules,
        );
    }
    let forward: Vec<String> = input
        .families
        .iter()
        .flat_map(|f| {
            let (p, net) = (proto(&f.network), f.network);
            [
                format!("{p} saddr {net} accept"),
                format!("{p} daddr {net} accept"),
            ]
        })
        .collect();
    chain(
        &mut s,
        "forward",
        "type filter hook forward priority filter",
        &forward,
    );
    if let Some((port, _)) = &input.vxlan_allow {
        let rules = [
            format!("ip saddr != @vxlan_peers_v4 udp dport {port} counter drop"),
            format!("ip6 saddr != @vxlan_peers_v6 udp dport {port} counter drop"),
        ];
        chain(
            &mut s,
            "input",
            "type filter hook input priority filter",
            &rules,
        );
    }
    let _ = writeln!(s, "}}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4() -> Family {
        Family {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
        }
    }

    #[test]
    fn golden_ipv4_ruleset_with_masquerade_and_allow_list() {
        let input = RulesetInput {
            families: vec![v4()],
            ip_masq: true,
            vxlan_allow: Some((
                8472,
                vec![
                    "198.51.100.13".parse().unwrap(),
                    "198.51.100.12".parse().unwrap(),
                ],
            )),
        };
        assert_eq!(
            render(&input),
            "table inet weft
delete table inet weft
table inet weft {
\tset vxlan_peers_v4 {
\t\ttype ipv4_addr
\t\telements = { 198.51.100.12, 198.51.100.13 }
\t}
\tset vxlan_peers_v6 {
\t\ttype ipv6_addr
\t}
\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\tmeta mark & 0x00004000 == 0x00004000 return
\t\tip saddr 10.244.1.0/24 ip daddr 10.244.0.0/16 return
\t\tip saddr 10.244.0.0/16 ip daddr 10.244.1.0/24 return
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.1.0/24 return
\t\tip saddr 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random
\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade fully-random
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tip saddr 10.244.0.0/16 accept
\t\tip daddr 10.244.0.0/16 accept
\t}
\tchain input {
\t\ttype filter hook input priority filter; policy accept;
\t\tip saddr != @vxlan_peers_v4 udp dport 8472 counter drop
\t\tip6 saddr != @vxlan_peers_v6 udp dport 8472 counter drop
\t}
}
"
        );
    }

    #[test]
    fn dual_stack_without_masquerade_or_allow_list() {
        let input = RulesetInput {
            families: vec![
                v4(),
                Family {
                    network: "fd00:10:244::/48".parse().unwrap(),
                    subnet: "fd00:10:244:1::/64".parse().unwrap(),
                },
            ],
            ip_masq: false,
            vxlan_allow: None,
        };
        let text = render(&input);
        assert!(!text.contains("postrouting") && !text.contains("vxlan_peers"));
        assert!(text.contains("\t\tip6 saddr fd00:10:244::/48 accept\n"));
        assert!(text.contains("\t\tip daddr 10.244.0.0/16 accept\n"));
    }

    /// The kernel takes the ruleset (checked, not loaded: `nft -c`, and in a
    /// throwaway network namespace, so the host's nftables are never touched).
    #[test]
    fn nft_accepts_the_ruleset() {
        let input = RulesetInput {
            families: vec![
                v4(),
                Family {
                    network: "fd00:10:244::/48".parse().unwrap(),
                    subnet: "fd00:10:244:1::/64".parse().unwrap(),
                },
            ],
            ip_masq: true,
            vxlan_allow: Some((
                8472,
                vec![
                    "198.51.100.12".parse().unwrap(),
                    "2001:db8::12".parse().unwrap(),
                ],
            )),
        };
        let mut child = std::process::Command::new("unshare")
            .args(["-n", "nft", "-c", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("nft is installed (scripts/setup-host.sh)");
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), render(&input).as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "nft -c: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
