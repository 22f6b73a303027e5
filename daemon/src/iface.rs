//! Choosing the external interface and this node's public IP, as flanneld
//! does: `--iface` (names or addresses, first found wins), else
//! `--iface-regex`, else `--iface-can-reach` (the interface and source
//! address of the route to that IP), else the interface of the default
//! route, else the one holding the node's InternalIP.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use regex::Regex;

use crate::netlink::{LinkInfo, Netlink, NetlinkError};

#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    #[error("reading interfaces and routes")]
    Netlink(#[source] NetlinkError),
    #[error("--iface-regex {pattern:?} is not a regular expression")]
    BadRegex {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("none of --iface {wanted:?} exists on this node")]
    NoneOfIfaces { wanted: Vec<String> },
    #[error("no interface matches --iface-regex {wanted:?}")]
    NoRegexMatch { wanted: Vec<String> },
    #[error("--iface-can-reach {ip}: no route to it through an interface of this node")]
    Unreachable { ip: IpAddr },
    #[error(
        "no external interface: no default route, and no interface holds the node's InternalIP ({internal:?}); set --iface"
    )]
    NoDefault { internal: Vec<IpAddr> },
    #[error(
        "interface {name} has no global IPv{family} address; set --public-ip or choose another --iface"
    )]
    NoAddress { name: String, family: u8 },
}

/// How to choose (the flags).
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub ifaces: Vec<String>,
    pub regexes: Vec<String>,
    pub can_reach: Option<IpAddr>,
}

/// The chosen interface and its addresses.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtIface {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    pub ipv4: Option<IpAddr>,
    pub ipv6: Option<IpAddr>,
}

impl ExtIface {
    /// What differs in `now` from this choice (another interface, another
    /// address of a family in use, another MTU), in words; `None` when
    /// nothing does.
    pub fn changed_to(&self, now: &ExtIface, v4: bool, v6: bool) -> Option<String> {
        if now.index != self.index {
            return Some(format!("interface {} instead of {}", now.name, self.name));
        }
        let show = |ip: &Option<IpAddr>| ip.map_or("none".to_string(), |ip| ip.to_string());
        let families = [
            ("IPv4", v4, &now.ipv4, &self.ipv4),
            ("IPv6", v6, &now.ipv6, &self.ipv6),
        ];
        if let Some((fam, _, is, was)) = families
            .iter()
            .find(|(_, used, is, was)| *used && is != was)
        {
            return Some(format!(
                "{}'s {fam} address is {}, was {}",
                now.name,
                show(is),
                show(was)
            ));
        }
        (now.mtu != self.mtu)
            .then(|| format!("{}'s MTU is {}, was {}", now.name, now.mtu, self.mtu))
    }
}

fn global(a: &IpNetwork) -> bool {
    match a.ip() {
        IpAddr::V4(v) => !v.is_loopback() && !v.is_link_local(),
        IpAddr::V6(v) => !v.is_loopback() && !v.is_unicast_link_local(),
    }
}

/// Chooses the external interface. `internal_ips` are the Node's InternalIP
/// addresses; `prefer_ipv6` picks the default route of IPv6 first (for
/// IPv6-only clusters).
pub async fn select<N: Netlink>(
    nl: &N,
    sel: &Selection,
    internal_ips: &[IpAddr],
    prefer_ipv6: bool,
) -> Result<ExtIface, IfaceError> {
    let links = nl.links().await.map_err(IfaceError::Netlink)?;
    let mut addrs = Vec::with_capacity(links.len());
    for l in &links {
        let a = nl.addresses(l.index).await.map_err(IfaceError::Netlink)?;
        addrs.push(a);
    }
    let by_index = |i: usize, pinned: Option<IpAddr>| build(&links[i], &addrs[i], pinned);
    let holding = |ip: &IpAddr| addrs.iter().position(|a| a.iter().any(|n| n.ip() == *ip));

    if !sel.ifaces.is_empty() {
        for want in &sel.ifaces {
            if let Ok(ip) = want.parse::<IpAddr>() {
                if let Some(i) = holding(&ip) {
                    return Ok(by_index(i, Some(ip)));
                }
            } else if let Some(i) = links.iter().position(|l| &l.name == want) {
                return Ok(by_index(i, None));
            }
        }
        return Err(IfaceError::NoneOfIfaces {
            wanted: sel.ifaces.clone(),
        });
    }
    if !sel.regexes.is_empty() {
        for pattern in &sel.regexes {
            let re = Regex::new(pattern).map_err(|source| IfaceError::BadRegex {
                pattern: pattern.clone(),
                source,
            })?;
            for (i, l) in links.iter().enumerate() {
                if re.is_match(&l.name) {
                    return Ok(by_index(i, None));
                }
                if let Some(a) = addrs[i].iter().find(|a| re.is_match(&a.ip().to_string())) {
                    return Ok(by_index(i, Some(a.ip())));
                }
            }
        }
        return Err(IfaceError::NoRegexMatch {
            wanted: sel.regexes.clone(),
        });
    }
    if let Some(ip) = sel.can_reach {
        let route = nl.route_to(ip).await.map_err(IfaceError::Netlink)?;
        return route
            .and_then(|(index, src)| {
                let i = links.iter().position(|l| l.index == index)?;
                Some(by_index(i, src))
            })
            .ok_or(IfaceError::Unreachable { ip });
    }
    for ipv6 in [prefer_ipv6, !prefer_ipv6] {
        if let Some(index) = nl
            .default_route_link(ipv6)
            .await
            .map_err(IfaceError::Netlink)?
            && let Some(i) = links.iter().position(|l| l.index == index)
        {
            return Ok(by_index(i, None));
        }
    }
    for ip in internal_ips {
        if let Some(i) = holding(ip) {
            return Ok(by_index(i, Some(*ip)));
        }
    }
    Err(IfaceError::NoDefault {
        internal: internal_ips.to_vec(),
    })
}

fn build(link: &LinkInfo, addrs: &[IpNetwork], pinned: Option<IpAddr>) -> ExtIface {
    let first = |v6: bool| {
        pinned.filter(|p| p.is_ipv6() == v6).or_else(|| {
            addrs
                .iter()
                .find(|a| a.is_ipv6() == v6 && global(a))
                .map(|a| a.ip())
        })
    };
    ExtIface {
        index: link.index,
        name: link.name.clone(),
        mtu: link.mtu,
        ipv4: first(false),
        ipv6: first(true),
    }
}

impl ExtIface {
    /// The interface's address of a family, or an error naming the interface.
    pub fn ip(&self, ipv6: bool) -> Result<IpAddr, IfaceError> {
        if ipv6 { self.ipv6 } else { self.ipv4 }.ok_or_else(|| IfaceError::NoAddress {
            name: self.name.clone(),
            family: if ipv6 { 6 } else { 4 },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::fake::Fake;
    use crate::testing::{add_eth0, block_on};

    /// lo, eth0 (198.51.100.11, default route), eth1 (203.0.113.11).
    fn host() -> (Fake, u32, u32) {
        let nl = Fake::new();
        block_on(async {
            let lo = nl.add_link("lo", 65536);
            nl.set_address(lo, "127.0.0.1/8".parse().unwrap(), true)
                .await
                .unwrap();
            let eth0 = add_eth0(&nl).await;
            nl.set_address(eth0, "fe80::1/64".parse().unwrap(), true)
                .await
                .unwrap();
            let eth1 = nl.add_link("eth1", 9000);
            nl.set_address(eth1, "203.0.113.11/24".parse().unwrap(), true)
                .await
                .unwrap();
            (nl, eth0, eth1)
        })
    }

    fn pick(
        nl: &Fake,
        ifaces: &[&str],
        regexes: &[&str],
        internal: &[&str],
    ) -> Result<ExtIface, IfaceError> {
        let sel = Selection {
            ifaces: ifaces.iter().map(|s| s.to_string()).collect(),
            regexes: regexes.iter().map(|s| s.to_string()).collect(),
            can_reach: None,
        };
        let internal: Vec<IpAddr> = internal.iter().map(|s| s.parse().unwrap()).collect();
        block_on(select(nl, &sel, &internal, false))
    }

    #[test]
    fn the_default_route_interface_is_the_default() {
        let (nl, eth0, _) = host();
        let e = pick(&nl, &[], &[], &[]).unwrap();
        assert_eq!((e.index, e.name.as_str(), e.mtu), (eth0, "eth0", 1500));
        assert_eq!(e.ipv4, Some("198.51.100.11".parse().unwrap()));
        assert_eq!(e.ipv6, None, "link-local addresses are not public");
    }

    #[test]
    fn iface_flags_take_names_or_addresses_first_found_wins() {
        let (nl, _, eth1) = host();
        assert_eq!(pick(&nl, &["eth9", "eth1"], &[], &[]).unwrap().index, eth1);
        let by_ip = pick(&nl, &["203.0.113.11"], &[], &[]).unwrap();
        assert_eq!((by_ip.index, by_ip.mtu), (eth1, 9000));
        assert_eq!(
            pick(&nl, &["eth9"], &[], &[]).unwrap_err().to_string(),
            "none of --iface [\"eth9\"] exists on this node"
        );
    }

    #[test]
    fn iface_regex_matches_names_or_addresses() {
        let (nl, _, eth1) = host();
        assert_eq!(pick(&nl, &[], &["^eth1$"], &[]).unwrap().index, eth1);
        assert_eq!(
            pick(&nl, &[], &[r"^203\.0\.113\."], &[]).unwrap().index,
            eth1
        );
        assert!(matches!(
            pick(&nl, &[], &["("], &[]),
            Err(IfaceError::BadRegex { .. })
        ));
    }

    #[test]
    fn without_a_default_route_the_internal_ip_decides() {
        let nl = Fake::new();
        let eth1 = block_on(async {
            let eth1 = nl.add_link("eth1", 1500);
            nl.set_address(eth1, "203.0.113.11/24".parse().unwrap(), true)
                .await
                .unwrap();
            eth1
        });
        assert_eq!(pick(&nl, &[], &[], &["203.0.113.11"]).unwrap().index, eth1);
        assert!(matches!(
            pick(&nl, &[], &[], &["192.0.2.9"]),
            Err(IfaceError::NoDefault { .. })
        ));
    }

    #[test]
    fn iface_can_reach_takes_the_route_s_interface_and_source() {
        let (nl, eth0, eth1) = host();
        let reach = |ip: &str| {
            let sel = Selection {
                can_reach: Some(ip.parse().unwrap()),
                ..Selection::default()
            };
            block_on(select(&nl, &sel, &[], false))
        };
        let e = reach("203.0.113.200").unwrap();
        assert_eq!(
            (e.index, e.ipv4),
            (eth1, Some("203.0.113.11".parse().unwrap()))
        );
        assert_eq!(
            reach("8.8.8.8").unwrap().index,
            eth0,
            "by the default route"
        );
        assert_eq!(
            reach("2001:db8::1").unwrap_err().to_string(),
            "--iface-can-reach 2001:db8::1: no route to it through an interface of this node"
        );
    }
}
