//! The lease code's table tests: judging nodes, and arbitrating overlaps
//! one node at a time exactly as a full pass does.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::judge::{Context, Judged, Subnets};
use super::kube::node::SlimNode;
use super::peers::{PeerIndex, PeerSet};
use super::{OwnLease, Record, own_subnets};
use crate::annotations::{DEFAULT_PREFIX, Mac, Names};
use crate::backend::{Peer, PeerData};
use crate::config::NetConfig;
use crate::family::PerFamily;

fn names() -> Names {
    Names::new(DEFAULT_PREFIX).unwrap()
}

/// Judges Nodes as the Kubernetes source reads them.
fn derive<'a>(ctx: &Context, nodes: impl IntoIterator<Item = &'a SlimNode>) -> PeerSet {
    let names = names();
    let records: Vec<Record<'_>> = nodes.into_iter().map(|n| n.record(&names)).collect();
    super::peers::derive(ctx, &records)
}

fn judge(ctx: &Context, node: &SlimNode) -> Option<Judged> {
    super::judge::judge(ctx, &node.record(&names()))
}

fn ctx() -> Context {
    Context {
        fields: super::kube::fields(&names()),
        own_name: "me".into(),
        families: PerFamily {
            v4: Some(Subnets {
                network: "10.244.0.0/16".parse().unwrap(),
                local_subnet: "10.244.1.0/24".parse().unwrap(),
                local_ip: "198.51.100.1".parse().unwrap(),
            }),
            v6: None,
        },
        codec: crate::vxlan::codec(1),
    }
}

fn node(name: &str, created: &str, cidr: &str, ip: &str, data: &str) -> SlimNode {
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "creationTimestamp": created,
            "annotations": {
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/public-ip": ip,
                "flannel.alpha.coreos.com/backend-data": data,
            }
        },
        "spec": {"podCIDR": cidr},
    }))
    .unwrap()
}

fn good(name: &str, n: u8) -> SlimNode {
    node(
        name,
        &format!("2026-01-01T00:00:{n:02}Z"),
        &format!("10.244.{n}.0/24"),
        &format!("198.51.100.{n}"),
        &format!(r#"{{"VNI":1,"VtepMAC":"0a:00:00:00:00:{n:02x}"}}"#),
    )
}

fn entry_of(n: u8) -> Peer {
    Peer {
        subnet: format!("10.244.{n}.0/24").parse().unwrap(),
        public_ip: format!("198.51.100.{n}").parse().unwrap(),
        data: PeerData::VtepMac(Mac([0x0a, 0, 0, 0, 0, n])),
    }
}

fn reasons(set: &PeerSet) -> Vec<(String, &'static str)> {
    set.skipped
        .iter()
        .map(|s| (s.node.clone(), s.reason.label()))
        .collect()
}

#[test]
fn good_peers_are_taken_and_self_and_unmanaged_nodes_left_out() {
    let mut unmanaged = good("flannel-less", 5);
    unmanaged.metadata.annotations = None;
    let nodes = [good("a", 2), good("b", 3), good("me", 1), unmanaged];
    let set = derive(&ctx(), &nodes);
    assert_eq!(set.peers.v4, vec![entry_of(2), entry_of(3)]);
    assert!(set.skipped.is_empty());
}

#[test]
fn a_udp_node_peers_with_udp_nodes_only_and_needs_no_backend_data() {
    let udp_ctx = Context {
        codec: crate::udp::codec(),
        ..ctx()
    };
    let mut u = node(
        "u",
        "2026-01-01T00:00:04Z",
        "10.244.4.0/24",
        "198.51.100.4",
        "null",
    );
    if let Some(a) = u.metadata.annotations.as_mut() {
        a.insert("flannel.alpha.coreos.com/backend-type".into(), "udp".into());
    }
    let set = derive(&udp_ctx, &[u.clone(), good("v", 2)]);
    assert_eq!(
        set.peers.v4,
        vec![Peer {
            data: PeerData::None,
            ..entry_of(4)
        }]
    );
    assert_eq!(reasons(&set), vec![("v".to_string(), "other_backend_type")]);
    // And a VXLAN node skips the udp one.
    let set = derive(&ctx(), &[u, good("v", 2)]);
    assert_eq!(set.peers.v4, vec![entry_of(2)]);
    assert_eq!(reasons(&set), vec![("u".to_string(), "other_backend_type")]);
}

#[test]
fn each_kind_of_garbage_is_skipped_with_its_reason_and_the_rest_unaffected() {
    let d = |mac: &str| format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#);
    let t = "2026-01-01T00:00:00Z";
    let mut other_backend = good("hostgw", 20);
    other_backend.metadata.annotations.as_mut().unwrap().insert(
        "flannel.alpha.coreos.com/backend-type".into(),
        "host-gw".into(),
    );
    let nodes = [
        good("fine", 2),
        node("badjson", t, "10.244.10.0/24", "198.51.100.10", "{not json"),
        node(
            "badmac",
            t,
            "10.244.11.0/24",
            "198.51.100.11",
            &d("zz:00:00:00:00:01"),
        ),
        node(
            "multicastmac",
            t,
            "10.244.12.0/24",
            "198.51.100.12",
            &d("01:00:5e:00:00:01"),
        ),
        node(
            "badip",
            t,
            "10.244.13.0/24",
            "198.51.100.300",
            &d("0a:00:00:00:00:13"),
        ),
        node(
            "v6ip",
            t,
            "10.244.14.0/24",
            "2001:db8::1",
            &d("0a:00:00:00:00:14"),
        ),
        node(
            "outside",
            t,
            "10.99.0.0/24",
            "198.51.100.15",
            &d("0a:00:00:00:00:15"),
        ),
        node(
            "badcidr",
            t,
            "10.244.16.0/33",
            "198.51.100.16",
            &d("0a:00:00:00:00:16"),
        ),
        node("nocidr", t, "", "198.51.100.17", &d("0a:00:00:00:00:17")),
        node(
            "onme",
            t,
            "10.244.1.0/24",
            "198.51.100.18",
            &d("0a:00:00:00:00:18"),
        ),
        node(
            "vni",
            t,
            "10.244.19.0/24",
            "198.51.100.19",
            r#"{"VNI":2,"VtepMAC":"0a:00:00:00:00:19"}"#,
        ),
        other_backend,
    ];
    let set = derive(&ctx(), &nodes);
    assert_eq!(
        set.peers.v4,
        vec![entry_of(2)],
        "the good peer is unaffected"
    );
    let mut got = reasons(&set);
    got.sort();
    let mut want = vec![
        ("badjson".to_string(), "bad_backend_data"),
        ("badmac".into(), "bad_backend_data"),
        ("multicastmac".into(), "bad_backend_data"),
        ("badip".into(), "bad_public_ip"),
        ("v6ip".into(), "bad_public_ip"),
        ("outside".into(), "pod_cidr_outside_network"),
        ("badcidr".into(), "bad_pod_cidr"),
        ("nocidr".into(), "no_pod_cidr"),
        ("onme".into(), "overlaps_local_subnet"),
        ("vni".into(), "bad_backend_data"),
        ("hostgw".into(), "other_backend_type"),
    ];
    want.sort();
    assert_eq!(got, want);
    let badjson = set.skipped.iter().find(|s| s.node == "badjson").unwrap();
    assert!(
        badjson
            .detail
            .contains("flannel.alpha.coreos.com/backend-data"),
        "{}",
        badjson.detail
    );
}

#[test]
fn of_two_overlapping_peers_the_older_keeps_its_subnet() {
    let older = good("older", 2);
    let mut newer = good("newer", 9);
    newer.spec.pod_cidr = Some("10.244.2.0/23".into());
    newer.metadata.creation_timestamp =
        Some(serde_json::from_value(serde_json::json!("2026-06-01T00:00:00Z")).unwrap());
    let set = derive(&ctx(), &[newer, older]);
    assert_eq!(set.peers.v4, vec![entry_of(2)]);
    assert_eq!(
        reasons(&set),
        vec![("newer".to_string(), "overlaps_peer_subnet")]
    );
}

#[test]
fn of_two_peers_with_one_vtep_mac_the_older_keeps_it_until_it_leaves() {
    let older = good("older", 2);
    let mut newer = good("newer", 9);
    newer.metadata.annotations.as_mut().unwrap().insert(
        "flannel.alpha.coreos.com/backend-data".into(),
        r#"{"VNI":1,"VtepMAC":"0a:00:00:00:00:02"}"#.into(),
    );
    let set = derive(&ctx(), &[newer.clone(), older.clone()]);
    assert_eq!(set.peers.v4, vec![entry_of(2)]);
    assert_eq!(
        reasons(&set),
        vec![("newer".to_string(), "duplicate_vtep_mac")]
    );
    assert!(
        set.skipped[0].detail.contains("older node older"),
        "{:?}",
        set.skipped
    );
    // One node at a time: the newer one comes in once the older leaves.
    let c = ctx();
    let mut idx = PeerIndex::new(c.clone());
    idx.upsert("newer", judge(&c, &newer));
    idx.upsert("older", judge(&c, &older));
    assert_eq!(idx.peer_set(), set);
    idx.remove("older");
    let mut alone = entry_of(9);
    alone.data = PeerData::VtepMac(Mac([0x0a, 0, 0, 0, 0, 2]));
    assert_eq!(idx.peer_set().peers.v4, vec![alone]);
    assert!(idx.peer_set().skipped.is_empty());
}

#[test]
fn one_node_at_a_time_gives_what_a_full_pass_gives() {
    // A deterministic walk of adds, changes (overlaps included) and deletes.
    let c = ctx();
    let mut idx = PeerIndex::new(c.clone());
    let mut all: BTreeMap<String, SlimNode> = BTreeMap::new();
    let mut prev: Option<PeerSet> = None;
    let mut with_changes = 0;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m
    };
    for step in 0..3000 {
        let name = format!("n{}", rnd(40));
        if rnd(5) == 0 {
            all.remove(&name);
            idx.remove(&name);
        } else {
            let n = (rnd(30) + 2) as u8;
            let mut node = good(&name, n);
            if rnd(4) == 0 {
                node.spec.pod_cidr = Some(format!("10.244.{}.0/23", n & !1));
            }
            if rnd(4) == 0 {
                // Another node's VtepMAC (maybe its own).
                let m = rnd(30) + 2;
                node.metadata.annotations.as_mut().unwrap().insert(
                    "flannel.alpha.coreos.com/backend-data".into(),
                    format!(r#"{{"VNI":1,"VtepMAC":"0a:00:00:00:00:{m:02x}"}}"#),
                );
            }
            node.metadata.creation_timestamp = Some(
                serde_json::from_value(serde_json::json!(format!(
                    "2026-01-01T00:{:02}:00Z",
                    rnd(60)
                )))
                .unwrap(),
            );
            idx.upsert(&name, judge(&c, &node));
            all.insert(name, node);
        }
        // Every few steps, as events arriving together are handed on.
        if rnd(3) != 0 {
            continue;
        }
        let set = idx.peer_set();
        assert_eq!(set, derive(&c, all.values()), "step {step}");
        // The changes, applied to the set before, give this one.
        if let (Some(p), Some(ch)) = (&prev, &set.changes) {
            assert_eq!(ch.since, p.generation, "step {step}");
            assert_eq!(
                applied(&p.peers.v4, &ch.removed.v4, &ch.added.v4),
                set.peers.v4,
                "step {step}"
            );
            assert_eq!(
                applied(&p.public_ips(), &ch.ips_removed, &ch.ips_added),
                set.public_ips(),
                "step {step}"
            );
            with_changes += 1;
        }
        prev = Some(set);
    }
    assert!(
        with_changes > 100,
        "most sets carry their changes: {with_changes}"
    );
}

/// `old` without `removed` and with `added` (all sorted), as a consumer
/// applies a peer set's changes.
fn applied<T: Ord + Copy>(old: &[T], removed: &[T], added: &[T]) -> Vec<T> {
    let mut v: Vec<T> = old
        .iter()
        .copied()
        .filter(|x| !removed.contains(x))
        .collect();
    for a in added {
        assert!(!v.contains(a), "an added entry was there already");
    }
    v.extend_from_slice(added);
    v.sort();
    v
}

#[test]
fn a_node_event_that_changes_nothing_hands_on_empty_changes() {
    let c = ctx();
    let mut idx = PeerIndex::new(c.clone());
    let node = good("n1", 2);
    idx.upsert("n1", judge(&c, &node));
    let first = idx.peer_set();
    // A status update: the same Node again.
    idx.upsert("n1", judge(&c, &node));
    let second = idx.peer_set();
    let ch = second.changes.as_ref().expect("changes are known");
    assert_eq!(ch.since, first.generation);
    assert!(ch.is_empty(), "{ch:?}");
    idx.remove("n1");
    let third = idx.peer_set();
    let ch = third.changes.as_ref().expect("changes are known");
    assert_eq!(ch.removed.v4, first.peers.v4);
    assert_eq!(ch.ips_removed, first.public_ips());
    assert!(ch.added.v4.is_empty() && ch.ips_added.is_empty());
    assert_eq!(
        third.changes_since(Some(first.generation)),
        None,
        "not from an older set"
    );
}

#[test]
fn dual_stack_families_are_judged_separately() {
    let mut c = ctx();
    c.families.v6 = Some(Subnets {
        network: "fd00:10:244::/48".parse().unwrap(),
        local_subnet: "fd00:10:244:1::/64".parse().unwrap(),
        local_ip: "2001:db8::1".parse().unwrap(),
    });
    let mut n = good("dual", 2);
    n.spec.pod_cidrs = Some(vec!["10.244.2.0/24".into(), "fd00:10:244:2::/64".into()]);
    let a = n.metadata.annotations.as_mut().unwrap();
    a.insert(
        "flannel.alpha.coreos.com/public-ipv6".into(),
        "2001:db8::2".into(),
    );
    a.insert(
        "flannel.alpha.coreos.com/backend-v6-data".into(),
        r#"{"VNI":1,"VtepMAC":"0a:06:00:00:00:02"}"#.into(),
    );
    let v4only = good("v4only", 3);
    let set = derive(&c, &[n, v4only]);
    assert_eq!(set.peers.v4, vec![entry_of(2), entry_of(3)]);
    assert_eq!(set.peers.v6.len(), 1);
    assert_eq!(
        set.peers.v6[0].public_ip,
        "2001:db8::2".parse::<IpAddr>().unwrap()
    );
    assert_eq!(reasons(&set), vec![("v4only".to_string(), "no_pod_cidr")]);
}

fn own(cidrs: &[&str]) -> OwnLease {
    OwnLease {
        name: "n1".into(),
        pod_cidrs: cidrs.iter().map(|c| c.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn our_pod_cidr_must_lie_inside_network() {
    let cfg =
        NetConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#).unwrap();
    assert_eq!(
        own_subnets(&cfg, &own(&["10.244.3.0/24"])).unwrap(),
        PerFamily {
            v4: Some("10.244.3.0/24".parse().unwrap()),
            v6: None
        }
    );
    for (cidrs, err) in [
        (
            "10.99.3.0/24",
            "node n1's podCIDR 10.99.3.0/24 is outside Network 10.244.0.0/16 of net-conf.json",
        ),
        (
            "fd00::/64",
            "node n1 has no IPv4 podCIDR, but net-conf.json enables IPv4",
        ),
        (
            "nonsense",
            "node n1 has podCIDR \"nonsense\", which is not a CIDR",
        ),
    ] {
        assert_eq!(
            own_subnets(&cfg, &own(&[cidrs])).unwrap_err().to_string(),
            err
        );
    }
}

#[test]
fn dual_stack_takes_one_cidr_per_family() {
    let cfg = NetConfig::parse(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    assert_eq!(
        own_subnets(&cfg, &own(&["10.244.3.0/24", "fd00:10:244:3::/64"])).unwrap(),
        PerFamily {
            v4: Some("10.244.3.0/24".parse().unwrap()),
            v6: Some("fd00:10:244:3::/64".parse().unwrap())
        }
    );
}

#[test]
fn a_public_ip_that_is_no_other_hosts_is_skipped_with_its_reason() {
    let d = |n: u8| format!(r#"{{"VNI":1,"VtepMAC":"0a:00:00:00:00:{n:02x}"}}"#);
    let t = "2026-01-01T00:00:00Z";
    let v4 = [
        ("loopback", "127.0.0.5"),
        ("unspecified", "0.0.0.0"),
        ("multicast", "224.0.0.1"),
        ("broadcast", "255.255.255.255"),
        ("ours", "198.51.100.1"),
    ];
    let mut nodes: Vec<SlimNode> = v4
        .iter()
        .enumerate()
        .map(|(i, (name, ip))| {
            let n = 20 + i as u8;
            node(name, t, &format!("10.244.{n}.0/24"), ip, &d(n))
        })
        .collect();
    nodes.push(good("fine", 2));
    let set = derive(&ctx(), &nodes);
    assert_eq!(
        set.peers.v4,
        vec![entry_of(2)],
        "the good peer is unaffected"
    );
    let mut got = reasons(&set);
    got.sort();
    let mut want: Vec<(String, &str)> = v4
        .iter()
        .map(|(name, _)| (name.to_string(), "unusable_public_ip"))
        .collect();
    want.sort();
    assert_eq!(got, want);
    let ours = set.skipped.iter().find(|s| s.node == "ours").unwrap();
    assert!(ours.detail.contains("own public IP"), "{}", ours.detail);

    // The IPv6 equivalents, on an IPv6-only context.
    let mut c = ctx();
    c.families.v4 = None;
    c.families.v6 = Some(Subnets {
        network: "fd00:10:244::/48".parse().unwrap(),
        local_subnet: "fd00:10:244:1::/64".parse().unwrap(),
        local_ip: "2001:db8::1".parse().unwrap(),
    });
    let v6 = [
        ("loopback", "::1"),
        ("unspecified", "::"),
        ("multicast", "ff02::1"),
        ("linklocal", "fe80::2"),
        ("mapped", "::ffff:198.51.100.7"),
        ("ours", "2001:db8::1"),
        ("fine", "2001:db8::2"),
    ];
    let nodes: Vec<SlimNode> = v6
        .iter()
        .enumerate()
        .map(|(i, (name, ip))| {
            let mut n = good(name, 2 + i as u8);
            n.spec.pod_cidr = None;
            n.spec.pod_cidrs = Some(vec![format!("fd00:10:244:{}::/64", 2 + i)]);
            let a = n.metadata.annotations.as_mut().unwrap();
            a.insert(
                "flannel.alpha.coreos.com/public-ipv6".into(),
                ip.to_string(),
            );
            a.insert(
                "flannel.alpha.coreos.com/backend-v6-data".into(),
                d(2 + i as u8),
            );
            n
        })
        .collect();
    let set = derive(&c, &nodes);
    assert_eq!(set.peers.v6.len(), 1, "{:?}", set.skipped);
    assert_eq!(
        set.peers.v6[0].public_ip,
        "2001:db8::2".parse::<IpAddr>().unwrap()
    );
    assert_eq!(
        reasons(&set)
            .iter()
            .filter(|r| r.1 == "unusable_public_ip")
            .count(),
        6
    );
}
