//! `weftd cleanup --flannel` against the real kernel, in a private network
//! namespace: flanneld's iptables rules made by iptables itself, as flanneld
//! makes them (nf_tables backend and legacy), and its nftables table, next
//! to another agent's rules and weft's own table. Exactly flanneld's go.
//! Needs root.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use common::{in_private_netns, sh};
use weftd::leftovers;
use weftd::nft::kernel::Nft;
use weftd::nft::{self, Family, RulesetInput};

/// flanneld v0.2x's rules (flannel.md, section 7) through `tool`, and a
/// kube-proxy-like chain and an unrelated FORWARD rule beside them.
fn flannel_and_others(tool: &str, net: &str, sub: &str, mcast: &str) -> String {
    format!(
        "{tool} -t nat -N FLANNEL-POSTRTG
         {tool} -t nat -A POSTROUTING -m comment --comment 'flanneld masq' -j FLANNEL-POSTRTG
         {tool} -t nat -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment 'flanneld masq' -j RETURN
         {tool} -t nat -A FLANNEL-POSTRTG -s {sub} -d {net} -m comment --comment 'flanneld masq' -j RETURN
         {tool} -t nat -A FLANNEL-POSTRTG -s {net} ! -d {mcast} -m comment --comment 'flanneld masq' -j MASQUERADE --random-fully
         {tool} -t filter -N FLANNEL-FWD
         {tool} -t filter -A FORWARD -m comment --comment 'flanneld forward' -j FLANNEL-FWD
         {tool} -t filter -A FLANNEL-FWD -s {net} -m comment --comment 'flanneld forward' -j ACCEPT
         {tool} -t filter -A FLANNEL-FWD -d {net} -m comment --comment 'flanneld forward' -j ACCEPT
         {tool} -t nat -N KUBE-POSTROUTING
         {tool} -t nat -A POSTROUTING -m comment --comment 'kubernetes postrouting rules' -j KUBE-POSTROUTING
         {tool} -t nat -A KUBE-POSTROUTING -j RETURN
         {tool} -t filter -A FORWARD -s {net} -j ACCEPT
"
    )
}

fn weft_table(nft: &mut Nft) {
    let input = RulesetInput {
        families: vec![Family {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
        }],
        ip_masq: true,
        masq_fully_random: true,
        forward_rules: true,
        allow_list: None,
    };
    nft.sync(&nft::build(&input)).unwrap();
}

/// The rules as `save` prints them, without comments and counters.
fn saved(save: &str) -> Vec<String> {
    sh(save)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            if l.starts_with(':') {
                l.split(' ').next().unwrap().to_string()
            } else {
                l.to_string()
            }
        })
        .collect()
}

fn without_flannel(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|l| !l.contains("FLANNEL-"))
        .cloned()
        .collect()
}

#[test]
fn nf_tables_backend_iptables_and_flannel_s_nft_tables_go_and_nothing_else() {
    in_private_netns(|| {
        sh(&flannel_and_others(
            "iptables-nft",
            "10.244.0.0/16",
            "10.244.1.0/24",
            "224.0.0.0/4",
        ));
        sh(&flannel_and_others(
            "ip6tables-nft",
            "fd00:10:244::/48",
            "fd00:10:244:1::/64",
            "ff00::/8",
        ));
        sh("nft add table ip flannel-ipv4
            nft add chain ip flannel-ipv4 postrtg '{ type nat hook postrouting priority srcnat; }'
            nft add rule ip flannel-ipv4 postrtg ip saddr 10.244.0.0/16 masquerade
            nft add table inet other
            nft add chain inet other c '{ type filter hook forward priority 0; }'
            nft add rule inet other c counter");
        let mut nft = Nft::open().unwrap();
        weft_table(&mut nft);
        let before4 = saved("iptables-nft-save");
        let before6 = saved("ip6tables-nft-save");
        let weft_before = sh("nft list table inet weft");

        let found = leftovers::find(&mut nft).unwrap();
        let mut said = found.describe();
        said.sort();
        assert_eq!(
            said,
            [
                "iptables (nf_tables) chain ip filter FLANNEL-FWD",
                "iptables (nf_tables) chain ip nat FLANNEL-POSTRTG",
                "iptables (nf_tables) chain ip6 filter FLANNEL-FWD",
                "iptables (nf_tables) chain ip6 nat FLANNEL-POSTRTG",
                "iptables (nf_tables) rule in ip filter FORWARD jumping to FLANNEL-FWD",
                "iptables (nf_tables) rule in ip nat POSTROUTING jumping to FLANNEL-POSTRTG",
                "iptables (nf_tables) rule in ip6 filter FORWARD jumping to FLANNEL-FWD",
                "iptables (nf_tables) rule in ip6 nat POSTROUTING jumping to FLANNEL-POSTRTG",
                "nftables table ip flannel-ipv4",
            ]
        );
        leftovers::remove(&mut nft, &found).unwrap();

        // Exactly flanneld's lines are gone; every other line is as it was.
        assert_eq!(saved("iptables-nft-save"), without_flannel(&before4));
        assert_eq!(saved("ip6tables-nft-save"), without_flannel(&before6));
        assert!(before4.iter().any(|l| l.contains("FLANNEL-")));
        let tables = sh("nft list tables");
        assert!(!tables.contains("flannel-ipv4"), "{tables}");
        assert!(tables.contains("table inet other"), "{tables}");
        assert_eq!(sh("nft list table inet weft"), weft_before);
        // Nothing left: a second look finds nothing.
        assert!(leftovers::find(&mut nft).unwrap().is_empty());
    });
}

#[test]
fn legacy_iptables_goes_through_iptables_legacy() {
    in_private_netns(|| {
        sh(&flannel_and_others(
            "iptables-legacy",
            "10.244.0.0/16",
            "10.244.1.0/24",
            "224.0.0.0/4",
        ));
        let before = saved("iptables-legacy-save");
        let mut nft = Nft::open().unwrap();
        let found = leftovers::find(&mut nft).unwrap();
        assert_eq!(found.legacy_unknown, None);
        assert_eq!(found.legacy.len(), 4, "{:?}", found.describe());
        assert!(found.chains.is_empty() && found.jumps.is_empty());
        leftovers::remove(&mut nft, &found).unwrap();
        assert_eq!(saved("iptables-legacy-save"), without_flannel(&before));
        assert!(leftovers::find(&mut nft).unwrap().is_empty());
    });
}
