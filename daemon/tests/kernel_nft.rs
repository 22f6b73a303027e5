//! weft's nftables table against the real kernel, over weft's own netlink
//! code, in a private network namespace per test (the host's nftables are
//! never touched). `nft` (the real tool) reads back what weft loaded and
//! plays the operator who flushes or edits the ruleset. Needs root.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{in_private_netns, sh};

use weftd::nft::kernel::{Nft, Synced};
use weftd::nft::{self, Family, RulesetInput};

fn input(peers: &[&str], dual: bool) -> RulesetInput {
    let mut families = vec![Family {
        network: "10.244.0.0/16".parse().unwrap(),
        subnet: "10.244.1.0/24".parse().unwrap(),
    }];
    if dual {
        families.push(Family {
            network: "fd00:10:244::/48".parse().unwrap(),
            subnet: "fd00:10:244:1::/64".parse().unwrap(),
        });
    }
    RulesetInput {
        families,
        ip_masq: true,
        masq_fully_random: true,
        forward_rules: true,
        allow_list: Some((8472, peers.iter().map(|p| p.parse().unwrap()).collect())),
    }
}

/// `nft list table inet weft` with the counters' values taken out.
fn listed() -> String {
    let mut out = String::new();
    for line in sh("nft list table inet weft").lines() {
        let mut words: Vec<&str> = line.split(' ').collect();
        if let Some(i) = words.iter().position(|w| w.ends_with("counter"))
            && words.get(i + 1) == Some(&"packets")
        {
            words.drain(i + 1..i + 5);
        }
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

#[test]
fn the_loaded_table_reads_back_as_the_rendered_text() {
    in_private_netns(|| {
        let mut nft = Nft::open().unwrap();
        // The last two: flanneld's --ip-masq-fully-random-disable and
        // --iptables-forward-rules=false (plain masquerade, no forward chain).
        for (dual, plain) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut inp = input(&["198.51.100.13", "198.51.100.12", "2001:db8::12"], dual);
            inp.masq_fully_random = !plain;
            inp.forward_rules = !plain;
            let rs = nft::build(&inp);
            let r = nft.sync(&rs).unwrap();
            assert!(matches!(r.synced, Synced::Created | Synced::Rewritten));
            assert_eq!(listed(), nft::listing(&rs));
            // Read back, it is exactly what weft wants: nothing to do.
            assert_eq!(nft.sync(&rs).unwrap().synced, Synced::Unchanged);
        }
    });
}

/// A UDP datagram from `from` to 127.0.0.1:8472 (VXLAN's port).
fn send_vxlan_from(from: &str) {
    sh(&format!(
        "python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
         s.bind(('{from}', 0)); s.sendto(b'x'*8, ('127.0.0.1', 8472))\""
    ));
}

#[test]
fn peers_change_only_the_set_and_keep_the_counters() {
    in_private_netns(|| {
        sh("ip link set lo up");
        let mut nft = Nft::open().unwrap();
        let rs = nft::build(&input(&["198.51.100.12", "198.51.100.13"], false));
        nft.sync(&rs).unwrap();
        // Two strangers' datagrams dropped and counted before the change.
        send_vxlan_from("127.0.0.1");
        send_vxlan_from("127.0.0.1");
        assert_eq!(nft.sync(&rs).unwrap().input_drops, 2);
        let handles = sh("nft -a list chain inet weft input");
        let rs2 = nft::build(&input(&["198.51.100.13", "198.51.100.14"], false));
        let r = nft.sync(&rs2).unwrap();
        assert_eq!(
            r.synced,
            Synced::Elements {
                added: 1,
                removed: 1
            }
        );
        assert_eq!(r.input_drops, 2, "the counter kept its count");
        assert_eq!(listed(), nft::listing(&rs2));
        // The rules were not replaced (same handles).
        assert_eq!(sh("nft -a list chain inet weft input"), handles);
        assert_eq!(nft.sync(&rs2).unwrap().synced, Synced::Unchanged);
    });
}

#[test]
fn whatever_an_operator_does_to_the_table_is_undone_and_other_tables_are_left_alone() {
    in_private_netns(|| {
        let mut nft = Nft::open().unwrap();
        let rs = nft::build(&input(&["198.51.100.12"], true));
        sh(
            "nft add table ip other; nft add chain ip other c '{ type filter hook input priority 0; }'; \
            nft add rule ip other c counter accept",
        );
        let other = sh("nft list table ip other");
        nft.sync(&rs).unwrap();
        for (edit, want) in [
            ("nft delete table inet weft", Synced::Created),
            ("nft add rule inet weft forward drop", Synced::Rewritten),
            ("nft flush chain inet weft postrouting", Synced::Rewritten),
            ("nft delete chain inet weft input", Synced::Rewritten),
            (
                "nft 'chain inet weft forward { policy drop; }'",
                Synced::Rewritten,
            ),
            (
                "nft add set inet weft extra '{ type ipv4_addr; }'",
                Synced::Rewritten,
            ),
            (
                "h=$(nft -a list chain inet weft postrouting | awk '/masquerade/{print $NF; exit}'); \
                 nft replace rule inet weft postrouting handle $h ip saddr 10.244.0.0/16 masquerade",
                Synced::Rewritten,
            ),
            (
                "nft flush set inet weft vxlan_peers_v4",
                Synced::Elements {
                    added: 1,
                    removed: 0,
                },
            ),
            // Last: it takes the other table too.
            ("nft flush ruleset", Synced::Created),
        ] {
            sh(edit);
            assert_eq!(nft.sync(&rs).unwrap().synced, want, "after `{edit}`");
            assert_eq!(listed(), nft::listing(&rs), "after `{edit}`");
            if edit != "nft flush ruleset" {
                assert_eq!(
                    sh("nft list table ip other"),
                    other,
                    "the other table after the repair of `{edit}`"
                );
            }
        }
        // Put back what `nft flush ruleset` took; weft's own table alone goes.
        sh(
            "nft add table ip other; nft add chain ip other c '{ type filter hook input priority 0; }'; \
            nft add rule ip other c counter accept",
        );
        nft.sync(&rs).unwrap();
        assert!(nft.delete_table().unwrap());
        assert!(!nft.delete_table().unwrap());
        assert_eq!(sh("nft list tables"), "table ip other\n");
        assert_eq!(sh("nft list table ip other"), other);
    });
}

#[test]
fn the_allow_list_counts_and_drops_vxlan_from_strangers() {
    in_private_netns(|| {
        sh("ip link set lo up");
        let mut nft = Nft::open().unwrap();
        // Only 127.0.0.2 may send; 127.0.0.1 is a stranger.
        let rs = nft::build(&input(&["127.0.0.2"], false));
        nft.sync(&rs).unwrap();
        send_vxlan_from("127.0.0.1");
        send_vxlan_from("127.0.0.1");
        send_vxlan_from("127.0.0.2");
        let r = nft.sync(&rs).unwrap();
        assert_eq!(r.synced, Synced::Unchanged);
        assert_eq!(r.input_drops, 2);
    });
}

#[test]
fn five_thousand_peers_go_in_one_transaction_and_read_back_unchanged() {
    in_private_netns(|| {
        let mut nft = Nft::open().unwrap();
        let peers: Vec<String> = (0..5000u32)
            .map(|i| std::net::Ipv4Addr::from(0xc612_0000u32 + i).to_string())
            .collect();
        let refs: Vec<&str> = peers.iter().map(String::as_str).collect();
        let rs = nft::build(&input(&refs, false));
        assert_eq!(nft.sync(&rs).unwrap().synced, Synced::Created);
        assert_eq!(nft.sync(&rs).unwrap().synced, Synced::Unchanged);
        let n = sh("nft -j list set inet weft vxlan_peers_v4")
            .matches("198.18.")
            .count();
        assert_eq!(n, 5000);
    });
}

/// A peer set's changes, applied by the firewall to the table holding the
/// set before, leave what writing the whole set would; changes from a set
/// the table does not hold are not applied, the whole set is written.
#[test]
fn the_firewall_applies_a_peer_sets_changes_as_a_whole_write_would() {
    use std::net::IpAddr;
    use weftd::annotations::Mac;
    use weftd::backend::{Peer, PeerData};
    use weftd::family::PerFamily;
    use weftd::firewall::Firewall;
    use weftd::lease::peers::{Changes, PeerSet};
    use weftd::metrics::Metrics;

    fn peer(n: u8, ip: &str) -> Peer {
        Peer {
            subnet: format!("10.244.{n}.0/24").parse().unwrap(),
            public_ip: ip.parse().unwrap(),
            data: PeerData::VtepMac(Mac([0x0a, 0, 0, 0, 0, n])),
        }
    }
    fn set(peers: &[Peer]) -> PeerSet {
        let v4 = peers.to_vec();
        PeerSet::new(PerFamily { v4, v6: vec![] }, vec![])
    }
    fn ips(s: &[&str]) -> Vec<IpAddr> {
        s.iter().map(|ip| ip.parse().unwrap()).collect()
    }
    in_private_netns(|| {
        sh("ip link set lo up");
        let m = Metrics::default();
        let mut fw = Firewall::new(input(&[], false)).unwrap();
        let (a, b, c) = (
            peer(2, "198.51.100.12"),
            peer(3, "198.51.100.13"),
            peer(4, "198.51.100.14"),
        );
        let first = set(&[a, b]);
        fw.peers_changed(&first, &m).unwrap();
        assert_eq!(
            listed(),
            nft::listing(&nft::build(&input(
                &["198.51.100.12", "198.51.100.13"],
                false
            )))
        );
        // b leaves, c comes: the changes from `first`.
        let mut second = set(&[a, c]);
        second.changes = Some(Changes {
            since: first.generation,
            removed: PerFamily {
                v4: vec![b],
                v6: vec![],
            },
            added: PerFamily {
                v4: vec![c],
                v6: vec![],
            },
            ips_removed: ips(&["198.51.100.13"]),
            ips_added: ips(&["198.51.100.14"]),
        });
        let handles = sh("nft -a list chain inet weft input");
        fw.peers_changed(&second, &m).unwrap();
        let want = nft::listing(&nft::build(&input(
            &["198.51.100.12", "198.51.100.14"],
            false,
        )));
        assert_eq!(listed(), want);
        assert_eq!(
            sh("nft -a list chain inet weft input"),
            handles,
            "rules untouched"
        );
        // Changes that touch no address (a status update) write nothing;
        // the table's own check then finds nothing to repair.
        let mut third = set(&[a, c]);
        third.changes = Some(Changes {
            since: second.generation,
            ..Changes::default()
        });
        fw.peers_changed(&third, &m).unwrap();
        fw.resync(&m).unwrap();
        assert_eq!(listed(), want);
        // Changes claimed from a set the table never held: the whole set.
        let mut stray = set(&[b]);
        stray.changes = Some(Changes {
            since: first.generation,
            ..Changes::default()
        });
        fw.peers_changed(&stray, &m).unwrap();
        assert_eq!(
            listed(),
            nft::listing(&nft::build(&input(&["198.51.100.13"], false)))
        );
    });
}
