//! weftd's inputs: net-conf.json, a peer's Node and annotations, the
//! kernel's nftables dumps, flanneld's command line, flannel's etcd leases.

use std::net::IpAddr;
use std::sync::Arc;

use ipnetwork::IpNetwork;
use serde_json::json;
use weftd::annotations::Names;
use weftd::backend::PeerCodec;
use weftd::config::NetConfig;
use weftd::family::PerFamily;
use weftd::lease::etcd::codec::{Attrs, SubnetKey};
use weftd::lease::judge::{Context, Subnets, judge, not_a_host_address};
use weftd::lease::kube::fields;
use weftd::lease::kube::node::SlimNode;
use weftd::lease::peers;
use weftd::nft::kernel::split;
use weftd::nft::wire::{self, Picture, foreign, msg};

use crate::{entries, parts, text};

/// net-conf.json's text. Checks: an accepted config has masked networks of
/// their family; a subnet range that flannel's rules accept lies inside its
/// network, with min ≤ max and a length no shorter than the network's.
pub fn net_conf(data: &[u8]) {
    let Ok(c) = NetConfig::parse(&text(data)) else {
        return;
    };
    for (v6, f) in [(false, &c.ipv4), (true, &c.ipv6)] {
        let Some(f) = f else { continue };
        assert_eq!(f.network.is_ipv6(), v6);
        assert_eq!(f.network.ip(), f.network.network());
        if let Ok(r) = f.subnet_range() {
            assert!(r.len >= f.network.prefix(), "{r:?} in {}", f.network);
            assert!(
                f.network.contains(r.min) && f.network.contains(r.max),
                "{r:?}"
            );
            assert!(r.min <= r.max, "{r:?}");
        }
    }
    assert!(c.networks().count() >= 1);
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

/// This node, as every peer judgement here sees it.
fn context(codec: Arc<dyn PeerCodec>) -> Context {
    Context {
        fields: fields(&Names::new("flannel.alpha.coreos.com").unwrap()),
        own_name: "self".into(),
        families: PerFamily {
            v4: Some(Subnets {
                network: net("10.244.0.0/16"),
                local_subnet: net("10.244.1.0/24"),
                local_ip: "198.51.100.1".parse().unwrap(),
            }),
            v6: Some(Subnets {
                network: net("fd00:10:244::/56"),
                local_subnet: net("fd00:10:244:1::/64"),
                local_ip: "2001:db8::1".parse().unwrap(),
            }),
        },
        codec,
    }
}

/// A well-formed, older peer that garbage beside it must not disturb.
fn good_node() -> SlimNode {
    serde_json::from_value(json!({
        "metadata": {
            "name": "good",
            "creationTimestamp": "2020-01-01T00:00:00Z",
            "annotations": {
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/public-ip": "198.51.100.2",
                "flannel.alpha.coreos.com/backend-data": "{\"VNI\":1,\"VtepMAC\":\"02:00:00:00:00:02\"}"
            }
        },
        "spec": {"podCIDR": "10.244.2.0/24", "podCIDRs": ["10.244.2.0/24"]}
    }))
    .unwrap()
}

/// A peer's Node: either the whole Node object as the watch would bring
/// it (JSON), or its annotations and podCIDRs field by field (parts:
/// backend-type, public-ip, backend-data, public-ipv6, backend-v6-data,
/// comma-separated podCIDRs, kube-subnet-manager, name). Judged by the
/// vxlan, udp and host-gw codecs. Checks: an entry's subnet is masked,
/// inside Network and of its family, off our subnet; its public IP is of
/// its family, not ours and a host's address; and the well-formed older
/// peer beside it is always kept.
pub fn peer_annotations(data: &[u8]) {
    let names = Names::new("flannel.alpha.coreos.com").unwrap();
    let node = match serde_json::from_slice::<SlimNode>(data) {
        Ok(n) => n,
        Err(_) => {
            let p: Vec<String> = parts(data, 8).into_iter().map(text).collect();
            let key = |k: &str| format!("flannel.alpha.coreos.com/{k}");
            let cidrs: Vec<&str> = p[5].split(',').filter(|c| !c.is_empty()).collect();
            let node = json!({
                "metadata": {
                    "name": if p[7].is_empty() { "fuzzed" } else { p[7].as_str() },
                    "creationTimestamp": "2021-01-01T00:00:00Z",
                    "annotations": {
                        key("backend-type"): p[0],
                        key("public-ip"): p[1],
                        key("backend-data"): p[2],
                        key("public-ipv6"): p[3],
                        key("backend-v6-data"): p[4],
                        key("kube-subnet-manager"): if p[6].is_empty() { "true" } else { p[6].as_str() },
                    }
                },
                "spec": {"podCIDR": cidrs.first().copied().unwrap_or(""), "podCIDRs": cidrs}
            });
            match serde_json::from_value::<SlimNode>(node) {
                Ok(n) => n,
                Err(_) => return,
            }
        }
    };
    let good = good_node();
    let onlink = vec![net("198.51.100.0/24"), net("2001:db8::/64")];
    // The good node is a vxlan node: only the vxlan codec takes it.
    for (codec, takes_good) in [
        (weftd::vxlan::codec(1), true),
        (weftd::udp::codec(), false),
        (weftd::hostgw::codec("eth0", onlink), false),
    ] {
        let ctx = context(codec);
        let record = node.record(&names);
        if let Some(j) = judge(&ctx, &record) {
            for (family, verdict) in j.families.iter() {
                let Some(Ok(peer)) = verdict else { continue };
                let own = ctx.families.get(family).as_ref().unwrap();
                assert_eq!(peer.subnet.is_ipv6(), family.is_v6());
                assert_eq!(peer.subnet.ip(), peer.subnet.network());
                assert!(own.network.contains(peer.subnet.network()));
                assert!(peer.subnet.prefix() >= own.network.prefix());
                assert_eq!(peer.public_ip.is_ipv6(), family.is_v6());
                assert_ne!(peer.public_ip, own.local_ip);
                assert_eq!(not_a_host_address(&peer.public_ip), None);
            }
        }
        let records = [good.record(&names), node.record(&names)];
        let set = peers::derive(&ctx, &records);
        let kept = set.peers.v4.iter().any(|p| {
            p.subnet == net("10.244.2.0/24") && p.public_ip == IpAddr::from([198, 51, 100, 2])
        });
        // Only a younger node yields to it (a Node without a creation time
        // reads as the oldest).
        if node.name() != "good" && node.created() > good.created() {
            assert_eq!(kept, takes_good, "the good peer beside {node:?}");
        }
        for p in set.peers.v4.iter().chain(&set.peers.v6) {
            assert!(!peers::overlaps(&p.subnet, &net("10.244.1.0/24")));
        }
    }
}

/// Netlink datagrams as the kernel answers nftables dumps, one stream:
/// each message of the nftables subsystem goes where weftd's reader and
/// flanneld-leftover finder send it, in the reader's order (tables, chains,
/// rules, sets, set elements). Checks: no panic; rules never make a chain
/// the chain dump did not bring; every set named is in the picture.
pub fn nft_dump(data: &[u8]) {
    let mut by_type: [Vec<&[u8]>; 5] = Default::default();
    for (ty, _, _, payload) in split(data) {
        if ty >> 8 != wire::SUBSYS {
            continue;
        }
        let at = match ty & 0xff {
            msg::NEWTABLE => 0,
            msg::NEWCHAIN => 1,
            msg::NEWRULE => 2,
            msg::NEWSET => 3,
            msg::NEWSETELEM => 4,
            _ => continue,
        };
        by_type[at].push(payload.get(4..).unwrap_or_default());
    }
    let [tables, chains, rules, sets, elements] = by_type;
    let mut pic = Picture::default();
    for t in tables {
        let _ = wire::is_our_table(t);
        let _ = foreign::table_name(t);
    }
    for c in chains {
        wire::add_chain(&mut pic, c);
        let _ = foreign::chain_of(c);
    }
    let names: Vec<String> = pic.chains.keys().cloned().collect();
    for r in rules {
        wire::add_rule(&mut pic, r);
        let _ = foreign::jump_of(r, |c| c.starts_with("FLANNEL"));
    }
    assert_eq!(pic.chains.keys().cloned().collect::<Vec<_>>(), names);
    let mut named = Vec::new();
    for s in sets {
        named.extend(wire::add_set(&mut pic, s));
    }
    for e in elements {
        wire::add_elements(&mut pic, e);
    }
    for name in named {
        assert!(pic.sets.contains_key(&name));
    }
}

/// flanneld's command line: parts are argv (NUL-separated) and the
/// environment (NUL-separated `KEY=VALUE`, for `FLANNELD_*`). Checks: every
/// refusal says something; accepted flags turn into options or an error.
pub fn flanneld_cli(data: &[u8]) {
    use weftd::agent::NodeRef;
    use weftd::flanneld::{Command, parse};
    let p = parts(data, 2);
    let args: Vec<String> = entries(p[0]).map(text).collect();
    let env: Vec<(String, String)> = entries(p[1])
        .filter_map(|e| {
            let t = text(e);
            t.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let lookup = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    match parse(&args, lookup) {
        Err(e) => assert!(!e.to_string().is_empty()),
        Ok(Command::Run(f)) => {
            let _ = f.ignored();
            let _ = f.verbosity();
            if let Err(e) = f.options(NodeRef::Name("node-a".into())) {
                assert!(!e.to_string().is_empty());
            }
        }
        Ok(_) => {}
    }
}

/// flannel's etcd lease: parts are the key's last element and the value.
/// Checks: a key that parses prints back as itself and parses the same; a
/// value that decodes encodes (as flanneld writes it) to one that decodes
/// to the same lease.
pub fn etcd_lease(data: &[u8]) {
    let p = parts(data, 2);
    if let Some(k) = SubnetKey::parse(&text(p[0])) {
        assert_eq!(SubnetKey::parse(&k.text()), Some(k), "{k:?}");
    }
    if let Ok(a) = Attrs::decode(&text(p[1])) {
        let again = Attrs::decode(&a.encode());
        assert_eq!(again.as_ref(), Ok(&a), "{}", a.encode());
    }
}
