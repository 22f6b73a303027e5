//! The VXLAN backend against the real kernel, in a private network namespace
//! per test (the test thread unshares its own; everything in it vanishes
//! with the thread). Needs root.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{in_private_netns_async as in_private_netns, sh};

use ipnetwork::IpNetwork;
use weftd::annotations::Mac;
use weftd::backend::Outcome;
use weftd::netlink::VxlanSpec;
use weftd::netlink::kernel::Kernel;
use weftd::vxlan::plan::PeerEntry;
use weftd::vxlan::{self, DeviceConfig};

fn json(script: &str) -> serde_json::Value {
    serde_json::from_str(&sh(script)).unwrap()
}

fn peer(n: u8, v6: bool) -> PeerEntry {
    if v6 {
        PeerEntry {
            subnet: format!("fd00:10:244:{n}::/64").parse().unwrap(),
            public_ip: format!("2001:db8::{n}").parse().unwrap(),
            vtep_mac: Mac([0x0a, 6, 0, 0, 0, n]),
        }
    } else {
        PeerEntry {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            public_ip: format!("198.51.100.{}", 10 + n).parse().unwrap(),
            vtep_mac: Mac([0x0a, 4, 0, 0, 0, n]),
        }
    }
}

fn device(v6: bool, underlay: u32) -> DeviceConfig {
    let (local, subnet, network) = if v6 {
        ("2001:db8::1", "fd00:10:244:1::/64", "fd00:10:244::/48")
    } else {
        ("198.51.100.11", "10.244.1.0/24", "10.244.0.0/16")
    };
    DeviceConfig {
        spec: VxlanSpec {
            name: vxlan::device_name(1, v6),
            vni: 1,
            port: 8472,
            local: local.parse().unwrap(),
            underlay,
            learning: false,
            gbp: false,
            mac: Mac([0x0a, if v6 { 6 } else { 4 }, 0, 0, 0, 1]),
            mtu: 1500 - vxlan::overhead(v6),
        },
        subnet: subnet.parse().unwrap(),
        network: network.parse().unwrap(),
    }
}

/// The kernel's neighbours, FDB entries and routes on `dev`, as text sets.
fn kernel_entries(dev: &str, v6: bool) -> (Vec<String>, Vec<String>, Vec<String>) {
    let fam = if v6 { "-6" } else { "-4" };
    let mut neighs: Vec<String> = json(&format!("ip -j {fam} neigh show dev {dev}"))
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            format!(
                "{} {} {}",
                n["dst"].as_str().unwrap(),
                n["lladdr"].as_str().unwrap(),
                n["state"][0].as_str().unwrap()
            )
        })
        .collect();
    let mut fdb: Vec<String> = json(&format!("bridge -j fdb show dev {dev}"))
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["dst"].is_string())
        .map(|f| {
            format!(
                "{} {} {}",
                f["mac"].as_str().unwrap(),
                f["dst"].as_str().unwrap(),
                f["state"].as_str().unwrap_or("")
            )
        })
        .collect();
    let mut routes: Vec<String> = json(&format!("ip -j {fam} route show dev {dev}"))
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["protocol"].as_str() != Some("kernel"))
        .map(|r| {
            format!(
                "{} via {} {:?}",
                r["dst"].as_str().unwrap(),
                r["gateway"].as_str().unwrap_or("-"),
                r["flags"]
            )
        })
        .collect();
    neighs.sort();
    fdb.sort();
    routes.sort();
    (neighs, fdb, routes)
}

fn expected(peers: &[PeerEntry]) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut n: Vec<String> = peers
        .iter()
        .map(|p| format!("{} {} PERMANENT", p.subnet.network(), p.vtep_mac))
        .collect();
    let mut f: Vec<String> = peers
        .iter()
        .map(|p| format!("{} {} permanent", p.vtep_mac, p.public_ip))
        .collect();
    let mut r: Vec<String> = peers
        .iter()
        .map(|p| {
            format!(
                "{} via {} Array [String(\"onlink\")]",
                p.subnet,
                p.subnet.network()
            )
        })
        .collect();
    n.sort();
    f.sort();
    r.sort();
    (n, f, r)
}

fn scenario(v6: bool) {
    in_private_netns(|| async move {
        let underlay = if v6 {
            "2001:db8::1/64"
        } else {
            "198.51.100.11/24"
        };
        // No dummy driver here: a veth pair stands in for the underlay NIC.
        sh(&format!(
            "ip link add eth0 type veth peer name eth0p
             ip addr add {underlay} dev eth0 nodad
             ip link set eth0p up
             ip link set eth0 up"
        ));
        let eth0 = json("ip -j link show eth0")[0]["ifindex"].as_u64().unwrap() as u32;
        let nl = Kernel::connect().unwrap();
        let cfg = device(v6, eth0);
        let dev = cfg.spec.name.clone();
        let peers = [peer(2, v6), peer(3, v6), peer(4, v6)];

        let first = vxlan::reconcile(&nl, &cfg, &peers).await.unwrap();
        assert!(first.created && first.failed.is_empty(), "{first:?}");
        let link = &json(&format!("ip -j -d link show {dev}"))[0];
        assert_eq!(link["mtu"], cfg.spec.mtu);
        assert_eq!(link["address"], cfg.spec.mac.to_string());
        let info = &link["linkinfo"]["info_data"];
        assert_eq!(info["id"], 1);
        assert_eq!(info["port"], 8472);
        assert_eq!(info["learning"], false);
        assert_eq!(info["link"], "eth0");
        assert!(link["flags"].as_array().unwrap().contains(&"UP".into()));
        let addrs: Vec<String> = json(&format!("ip -j addr show dev {dev}"))[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["scope"] == "global")
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect();
        assert_eq!(addrs, vec![vxlan::device_address(cfg.subnet).to_string()]);
        assert_eq!(kernel_entries(&dev, v6), expected(&peers));

        let second = vxlan::reconcile(&nl, &cfg, &peers).await.unwrap();
        assert_eq!(second, Outcome::default(), "a second pass writes nothing");

        // Stale entries (a node deleted while weftd was down), a changed MAC
        // and a changed public IP are all brought in line.
        let stale = peer(9, v6);
        sh(&format!(
            "ip neigh add {} lladdr {} dev {dev} nud permanent
             bridge fdb append {} dev {dev} dst {} self permanent
             ip route add {} via {} dev {dev} onlink",
            stale.subnet.network(),
            stale.vtep_mac,
            stale.vtep_mac,
            stale.public_ip,
            stale.subnet,
            stale.subnet.network()
        ));
        let mut changed = peers;
        changed[0].vtep_mac.0[5] = 0x42;
        changed[1].public_ip = if v6 {
            "2001:db8::99".parse().unwrap()
        } else {
            "198.51.100.99".parse().unwrap()
        };
        let third = vxlan::reconcile(&nl, &cfg, &changed).await.unwrap();
        assert!(third.failed.is_empty(), "{third:?}");
        assert_eq!(kernel_entries(&dev, v6), expected(&changed));

        // Someone deletes the device: recreated, every peer replayed.
        sh(&format!("ip link del {dev}"));
        let fourth = vxlan::reconcile(&nl, &cfg, &changed).await.unwrap();
        assert!(fourth.created);
        assert_eq!(kernel_entries(&dev, v6), expected(&changed));

        // Other addresses inside the pod network are removed from the device.
        let extra: IpNetwork = if v6 {
            "fd00:10:244:7::5/128".parse().unwrap()
        } else {
            "10.244.7.5/32".parse().unwrap()
        };
        sh(&format!("ip addr add {extra} dev {dev}"));
        vxlan::reconcile(&nl, &cfg, &changed).await.unwrap();
        let out = sh(&format!("ip addr show dev {dev}"));
        assert!(!out.contains(&extra.ip().to_string()), "{out}");
    });
}

#[test]
fn ipv4_device_and_peers_are_programmed_kept_pruned_and_restored() {
    scenario(false);
}

#[test]
fn ipv6_goes_through_the_same_path() {
    scenario(true);
}

/// `--iface-can-reach`: the interface and source address `ip route get`
/// gives, and no interface when there is no route.
#[test]
fn iface_can_reach_follows_the_kernel_s_route() {
    use weftd::iface::{Selection, select};
    use weftd::netlink::Netlink;
    in_private_netns(|| async {
        sh("ip link add ext0 type veth peer name ext0p && ip link set ext0p up && ip link set ext0 up
            ip addr add 198.51.100.11/24 dev ext0
            ip link add ext1 type veth peer name ext1p && ip link set ext1p up && ip link set ext1 up
            ip addr add 203.0.113.11/24 dev ext1 && ip addr add 203.0.113.12/24 dev ext1
            ip route add 192.0.2.0/24 via 203.0.113.1 src 203.0.113.12
            ip route add default via 198.51.100.1");
        let nl = Kernel::connect().unwrap();
        let reach = |ip: &str| {
            let sel = Selection {
                can_reach: Some(ip.parse().unwrap()),
                ..Selection::default()
            };
            let nl = &nl;
            async move { select(nl, &sel, &[], false).await }
        };
        let e = reach("192.0.2.50").await.unwrap();
        assert_eq!(
            (e.name.as_str(), e.ipv4),
            ("ext1", Some("203.0.113.12".parse().unwrap()))
        );
        let e = reach("8.8.8.8").await.unwrap();
        assert_eq!(
            (e.name.as_str(), e.ipv4),
            ("ext0", Some("198.51.100.11".parse().unwrap()))
        );
        assert_eq!(
            nl.route_to("2001:db8::1".parse().unwrap()).await.unwrap(),
            None
        );
        assert!(reach("2001:db8::1").await.is_err());
    });
}

/// `--ip-blackhole-route`: added once, found the next time; not added
/// over another route of the same prefix (the bridge's), as flanneld's add
/// fails there too.
#[test]
fn blackhole_route_is_added_once_and_yields_to_the_bridge_s_route() {
    use weftd::netlink::Netlink;
    in_private_netns(|| async {
        let nl = Kernel::connect().unwrap();
        let subnet: IpNetwork = "10.244.7.0/24".parse().unwrap();
        assert!(nl.ensure_blackhole(subnet).await.unwrap());
        assert!(!nl.ensure_blackhole(subnet).await.unwrap(), "already there");
        let routes = sh("ip route show type blackhole");
        assert_eq!(routes.trim(), "blackhole 10.244.7.0/24");
        sh("ip route del blackhole 10.244.7.0/24
            ip link add br-t type bridge && ip link set br-t up
            ip addr add 10.244.7.1/24 dev br-t");
        assert!(!nl.ensure_blackhole(subnet).await.unwrap());
        assert_eq!(sh("ip route show type blackhole").trim(), "");
        let v6: IpNetwork = "fd00:10:244:7::/64".parse().unwrap();
        assert!(nl.ensure_blackhole(v6).await.unwrap());
        assert!(sh("ip -6 route show type blackhole").contains("blackhole fd00:10:244:7::/64"));
    });
}

/// Tables of thousands of entries span many datagrams of a dump: every
/// entry is read (a second pass writes nothing), and the blackhole check
/// and the default-route lookup read past them too.
#[test]
fn tables_of_thousands_are_read_whole() {
    in_private_netns(|| async move {
        use weftd::netlink::Netlink;
        sh("ip link add eth0 type veth peer name eth0p
            ip addr add 198.51.100.11/24 dev eth0
            ip link set eth0p up
            ip link set eth0 up
            ip route add default via 198.51.100.1 dev eth0");
        let eth0 = json("ip -j link show eth0")[0]["ifindex"].as_u64().unwrap() as u32;
        let nl = Kernel::connect().unwrap();
        let cfg = device(false, eth0);
        let peers: Vec<PeerEntry> = (32..3032u16)
            .map(|n| PeerEntry {
                subnet: format!("10.244.{}.{}/28", n / 16, (n % 16) * 16)
                    .parse()
                    .unwrap(),
                public_ip: format!("198.18.{}.{}", n / 250, n % 250 + 1)
                    .parse()
                    .unwrap(),
                vtep_mac: Mac([0x0a, 4, 0, 0, (n >> 8) as u8, n as u8]),
            })
            .collect();
        let first = vxlan::reconcile(&nl, &cfg, &peers).await.unwrap();
        assert!(first.failed.is_empty(), "{first:?}");
        assert_eq!(first.writes(), 3 * peers.len() as u64);
        let index = nl
            .link_by_name(&cfg.spec.name)
            .await
            .unwrap()
            .unwrap()
            .index;
        let seen = nl.observe(index, false).await.unwrap();
        assert_eq!(
            (seen.routes.len(), seen.neighs.len(), seen.fdb.len()),
            (peers.len(), peers.len(), peers.len())
        );
        let second = vxlan::reconcile(&nl, &cfg, &peers).await.unwrap();
        assert_eq!(second, Outcome::default(), "a second pass writes nothing");
        assert_eq!(nl.default_route_link(false).await.unwrap(), Some(eth0));
        let blackhole: IpNetwork = "10.244.255.0/24".parse().unwrap();
        assert!(nl.ensure_blackhole(blackhole).await.unwrap(), "added");
        assert!(
            !nl.ensure_blackhole(blackhole).await.unwrap(),
            "found among thousands"
        );
    });
}
