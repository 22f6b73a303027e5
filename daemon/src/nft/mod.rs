//! weft's nftables ruleset: one table of its own (`inet weft`), built as a
//! pure function of (config, lease, peers), rendered as nft text (for the
//! golden tests, logs and operators) and loaded over netlink in one atomic
//! transaction (`wire` encodes it, `kernel` talks to the kernel): the image
//! needs no `nft` binary, and nothing outside weft's table is ever touched.
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
//! - ingress allow-list: UDP to the backend's port (VXLAN 8472, udp 8285) is
//!   accepted only from the current peers' public IPs; anything else is
//!   counted and dropped.

pub mod kernel;
pub mod wire;

use std::fmt::Write;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

/// The table's family and name.
pub const TABLE: &str = "inet weft";
/// The table's name alone.
pub const TABLE_NAME: &str = "weft";
/// The allow-list sets.
pub const PEERS_V4: &str = "vxlan_peers_v4";
pub const PEERS_V6: &str = "vxlan_peers_v6";

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
    /// Masquerade with fully random source ports (flannel's default; its
    /// `--ip-masq-fully-random-disable` turns it off).
    pub masq_fully_random: bool,
    /// Accept forwarded traffic from and to the Network (flannel's
    /// `--iptables-forward-rules`, on by default).
    pub forward_rules: bool,
    /// The backend's UDP port and the peers allowed to send to it (None: no
    /// allow-list).
    pub allow_list: Option<(u16, Vec<IpAddr>)>,
}

/// Where a base chain hooks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Postrouting,
    Forward,
    Input,
}

impl Hook {
    /// The netfilter hook number (NF_INET_*).
    pub fn number(self) -> u32 {
        match self {
            Hook::Input => 1,
            Hook::Forward => 2,
            Hook::Postrouting => 4,
        }
    }
}

/// A base chain of ours.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    pub name: &'static str,
    /// `nat` or `filter`.
    pub kind: &'static str,
    pub hook: Hook,
    /// Numeric priority (`srcnat` is 100, `filter` 0).
    pub priority: i32,
    pub rules: Vec<Rule>,
}

/// Source or destination address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Src,
    Dst,
}

/// One match of a rule.
#[derive(Debug, Clone, PartialEq)]
pub enum Match {
    /// `meta mark & mask == value`.
    Mark { mask: u32, value: u32 },
    /// `ip[6] saddr|daddr [!=] net`.
    Addr {
        dir: Dir,
        net: IpNetwork,
        negate: bool,
    },
    /// `ip[6] saddr != @set`.
    SrcNotIn { v6: bool, set: &'static str },
    /// `udp dport port`.
    UdpDport(u16),
}

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Return,
    Accept,
    Drop,
    Masquerade,
    MasqueradeFullyRandom,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub counter: bool,
    pub action: Action,
}

/// A set of peer addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct Set {
    pub name: &'static str,
    pub v6: bool,
    /// Sorted, without duplicates.
    pub elements: Vec<IpAddr>,
}

/// The whole table.
#[derive(Debug, Clone, PartialEq)]
pub struct Ruleset {
    pub sets: Vec<Set>,
    pub chains: Vec<Chain>,
}

fn rule(matches: Vec<Match>, action: Action) -> Rule {
    Rule {
        matches,
        counter: false,
        action,
    }
}

fn addr(dir: Dir, net: IpNetwork, negate: bool) -> Match {
    Match::Addr { dir, net, negate }
}

fn multicast(v6: bool) -> IpNetwork {
    let (a, p): (IpAddr, u8) = if v6 {
        (
            IpAddr::V6(std::net::Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)),
            8,
        )
    } else {
        (IpAddr::V4(std::net::Ipv4Addr::new(224, 0, 0, 0)), 4)
    };
    IpNetwork::new(a, p).unwrap_or(IpNetwork::V4(ipnetwork::Ipv4Network::from(
        std::net::Ipv4Addr::UNSPECIFIED,
    )))
}

/// The ruleset for these inputs (pure).
pub fn build(input: &RulesetInput) -> Ruleset {
    use Action::*;
    use Dir::*;
    let mut sets = Vec::new();
    let mut chains = Vec::new();
    if let Some((_, peers)) = &input.allow_list {
        for (v6, name) in [(false, PEERS_V4), (true, PEERS_V6)] {
            let mut elements: Vec<IpAddr> = peers
                .iter()
                .copied()
                .filter(|p| p.is_ipv6() == v6)
                .collect();
            elements.sort();
            elements.dedup();
            sets.push(Set { name, v6, elements });
        }
    }
    if input.ip_masq {
        let masquerade = if input.masq_fully_random {
            MasqueradeFullyRandom
        } else {
            Masquerade
        };
        let mut rules = vec![rule(
            vec![Match::Mark {
                mask: 0x4000,
                value: 0x4000,
            }],
            Return,
        )];
        for f in &input.families {
            let (net, sub) = (f.network, f.subnet);
            rules.extend([
                rule(vec![addr(Src, sub, false), addr(Dst, net, false)], Return),
                rule(vec![addr(Src, net, false), addr(Dst, sub, false)], Return),
                rule(vec![addr(Src, net, true), addr(Dst, sub, false)], Return),
                rule(
                    vec![
                        addr(Src, net, false),
                        addr(Dst, multicast(net.is_ipv6()), true),
                    ],
                    masquerade,
                ),
                rule(
                    vec![addr(Src, net, true), addr(Dst, net, false)],
                    masquerade,
                ),
            ]);
        }
        chains.push(Chain {
            name: "postrouting",
            kind: "nat",
            hook: Hook::Postrouting,
            priority: 100,
            rules,
        });
    }
    if input.forward_rules {
        let forward = input
            .families
            .iter()
            .flat_map(|f| {
                [
                    rule(vec![addr(Src, f.network, false)], Accept),
                    rule(vec![addr(Dst, f.network, false)], Accept),
                ]
            })
            .collect();
        chains.push(Chain {
            name: "forward",
            kind: "filter",
            hook: Hook::Forward,
            priority: 0,
            rules: forward,
        });
    }
    if let Some((port, _)) = &input.allow_list {
        let rules = [(false, PEERS_V4), (true, PEERS_V6)]
            .into_iter()
            .map(|(v6, set)| Rule {
                matches: vec![Match::SrcNotIn { v6, set }, Match::UdpDport(*port)],
                counter: true,
                action: Drop,
            })
            .collect();
        chains.push(Chain {
            name: "input",
            kind: "filter",
            hook: Hook::Input,
            priority: 0,
            rules,
        });
    }
    Ruleset { sets, chains }
}

fn proto(v6: bool) -> &'static str {
    if v6 { "ip6" } else { "ip" }
}

impl std::fmt::Display for Match {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Match::Mark { mask, value } => write!(f, "meta mark & {mask:#010x} == {value:#010x}"),
            Match::Addr { dir, net, negate } => {
                let field = if *dir == Dir::Src { "saddr" } else { "daddr" };
                let op = if *negate { "!= " } else { "" };
                write!(f, "{} {field} {op}{net}", proto(net.is_ipv6()))
            }
            Match::SrcNotIn { v6, set } => write!(f, "{} saddr != @{set}", proto(*v6)),
            Match::UdpDport(p) => write!(f, "udp dport {p}"),
        }
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for m in &self.matches {
            write!(f, "{m} ")?;
        }
        if self.counter {
            f.write_str("counter ")?;
        }
        f.write_str(match self.action {
            Action::Return => "return",
            Action::Accept => "accept",
            Action::Drop => "drop",
            Action::Masquerade => "masquerade",
            Action::MasqueradeFullyRandom => "masquerade fully-random",
        })
    }
}

/// The table as `nft list table inet weft` shows it (counters as plain
/// `counter`).
pub fn listing(rs: &Ruleset) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "table {TABLE} {{");
    // nft separates the table's sets and chains with a blank line.
    let mut first = true;
    let mut sep = |s: &mut String| {
        if !std::mem::take(&mut first) {
            s.push('\n');
        }
    };
    for set in &rs.sets {
        sep(&mut s);
        let _ = writeln!(s, "\tset {} {{", set.name);
        let _ = writeln!(
            s,
            "\t\ttype {}",
            if set.v6 { "ipv6_addr" } else { "ipv4_addr" }
        );
        if !set.elements.is_empty() {
            let elems: Vec<String> = set.elements.iter().map(|e| e.to_string()).collect();
            let _ = writeln!(s, "\t\telements = {{ {} }}", elems.join(", "));
        }
        let _ = writeln!(s, "\t}}");
    }
    for c in &rs.chains {
        let prio = match (c.kind, c.priority) {
            ("nat", 100) => "srcnat".to_string(),
            ("filter", 0) => "filter".to_string(),
            (_, p) => p.to_string(),
        };
        sep(&mut s);
        let _ = writeln!(s, "\tchain {} {{", c.name);
        let hook = match c.hook {
            Hook::Postrouting => "postrouting",
            Hook::Forward => "forward",
            Hook::Input => "input",
        };
        let _ = writeln!(
            s,
            "\t\ttype {} hook {hook} priority {prio}; policy accept;",
            c.kind
        );
        for r in &c.rules {
            let _ = writeln!(s, "\t\t{r}");
        }
        let _ = writeln!(s, "\t}}");
    }
    let _ = writeln!(s, "}}");
    s
}

/// The text for `nft -f -` that replaces the table whole (what the netlink
/// transaction does, for operators and the `nft -c` test).
pub fn render(input: &RulesetInput) -> String {
    format!(
        "table {TABLE}\ndelete table {TABLE}\n{}",
        listing(&build(input))
    )
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

    fn v6() -> Family {
        Family {
            network: "fd00:10:244::/48".parse().unwrap(),
            subnet: "fd00:10:244:1::/64".parse().unwrap(),
        }
    }

    #[test]
    fn golden_ipv4_ruleset_with_masquerade_and_allow_list() {
        let input = RulesetInput {
            families: vec![v4()],
            ip_masq: true,
            masq_fully_random: true,
            forward_rules: true,
            allow_list: Some((
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
            families: vec![v4(), v6()],
            ip_masq: false,
            masq_fully_random: true,
            forward_rules: true,
            allow_list: None,
        };
        let text = render(&input);
        assert!(!text.contains("postrouting") && !text.contains("vxlan_peers"));
        assert!(text.contains("\t\tip6 saddr fd00:10:244::/48 accept\n"));
        assert!(text.contains("\t\tip daddr 10.244.0.0/16 accept\n"));
    }

    /// flanneld's `--ip-masq-fully-random-disable` and
    /// `--iptables-forward-rules=false`: plain masquerade, no forward chain.
    #[test]
    fn plain_masquerade_and_no_forward_rules() {
        let input = RulesetInput {
            families: vec![v4()],
            ip_masq: true,
            masq_fully_random: false,
            forward_rules: false,
            allow_list: None,
        };
        let text = render(&input);
        assert!(!text.contains("fully-random") && !text.contains("chain forward"));
        assert!(text.contains("\t\tip saddr != 10.244.0.0/16 ip daddr 10.244.0.0/16 masquerade\n"));
    }

    /// The kernel takes the ruleset (checked, not loaded: `nft -c`, and in a
    /// throwaway network namespace, so the host's nftables are never touched).
    #[test]
    fn nft_accepts_the_ruleset() {
        let input = RulesetInput {
            families: vec![v4(), v6()],
            ip_masq: true,
            masq_fully_random: true,
            forward_rules: true,
            allow_list: Some((
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
