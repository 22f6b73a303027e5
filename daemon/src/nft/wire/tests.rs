//! Golden and round-trip tests of the nf_tables encoding and dump parsing.

use super::*;
use crate::nft::{Family, RulesetInput, build};

fn input() -> RulesetInput {
    RulesetInput {
        families: vec![Family {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.1.0/24".parse().unwrap(),
        }],
        ip_masq: true,
        masq_fully_random: true,
        forward_rules: true,
        allow_list: Some((8472, vec!["198.51.100.12".parse().unwrap()])),
    }
}

#[test]
fn prefixes_load_only_their_bytes_and_mask_the_rest() {
    let rule = Rule {
        matches: vec![
            Match::Addr {
                dir: Dir::Src,
                net: "10.244.0.0/16".parse().unwrap(),
                negate: false,
            },
            Match::Addr {
                dir: Dir::Dst,
                net: "224.0.0.0/4".parse().unwrap(),
                negate: true,
            },
        ],
        counter: false,
        action: Action::Return,
    };
    let e = rule_exprs(&rule, &BTreeMap::new());
    assert_eq!(
        e,
        vec![
            Expr::Meta { key: META_NFPROTO },
            Expr::Cmp {
                neq: false,
                data: vec![2]
            },
            Expr::Payload {
                base: 1,
                offset: 12,
                len: 2
            },
            Expr::Cmp {
                neq: false,
                data: vec![10, 244]
            },
            Expr::Payload {
                base: 1,
                offset: 16,
                len: 4
            },
            Expr::Bitwise {
                len: 4,
                mask: vec![0xf0, 0, 0, 0]
            },
            Expr::Cmp {
                neq: true,
                data: vec![224, 0, 0, 0]
            },
            Expr::Verdict(NFT_RETURN),
        ]
    );
}

#[test]
fn masks_of_unaligned_prefixes() {
    assert_eq!(prefix_mask(4, 1), vec![0xf0]);
    assert_eq!(prefix_mask(20, 3), vec![0xff, 0xff, 0xf0]);
    assert_eq!(prefix_mask(0, 4), vec![0, 0, 0, 0]);
}

#[test]
fn a_batch_parses_back_into_the_expected_picture() {
    let rs = build(&input());
    let msgs = replace(&rs);
    let mut p = Picture::default();
    for m in &msgs {
        match m.ty {
            msg::NEWCHAIN => add_chain(&mut p, &m.attrs.0),
            msg::NEWRULE => add_rule(&mut p, &m.attrs.0),
            msg::NEWSET => {
                add_set(&mut p, &m.attrs.0);
            }
            msg::NEWSETELEM => add_elements(&mut p, &m.attrs.0),
            _ => {}
        }
    }
    assert_eq!(p, expected(&rs));
}

#[test]
fn set_updates_add_and_remove_only_the_difference() {
    let rs = build(&input());
    let mut have = expected(&rs);
    let v4 = have.sets.get_mut("vxlan_peers_v4").unwrap();
    v4.elements.clear();
    v4.elements.insert(vec![198, 51, 100, 99]);
    let (msgs, added, removed) = set_updates(&rs, &have);
    assert_eq!((added, removed, msgs.len()), (1, 1, 2));
    assert_eq!(msgs[0].ty, msg::DELSETELEM);
    assert!(set_updates(&rs, &expected(&rs)).0.is_empty());
}

#[test]
fn thousands_of_peers_are_split_across_messages() {
    let peers: Vec<IpAddr> = (0..5000u32)
        .map(|i| IpAddr::from((0xc612_0000u32 + i).to_be_bytes()))
        .collect();
    let mut inp = input();
    inp.allow_list = Some((8472, peers));
    let msgs = replace(&build(&inp));
    let elems: Vec<&Message> = msgs.iter().filter(|m| m.ty == msg::NEWSETELEM).collect();
    assert_eq!(elems.len(), 3);
    assert!(elems.iter().all(|m| m.attrs.0.len() < 65_000));
    let mut p = Picture::default();
    add_set(&mut p, &msgs[3].attrs.0);
    for m in elems {
        add_elements(&mut p, &m.attrs.0);
    }
    assert_eq!(p.sets["vxlan_peers_v4"].elements.len(), 5000);
}

#[test]
fn garbage_attributes_do_not_panic() {
    for junk in [&[][..], &[1, 0], &[255, 255, 1, 0, 9], &[8, 0, 1, 0, 1, 2]] {
        let mut p = Picture::default();
        add_chain(&mut p, junk);
        add_rule(&mut p, junk);
        add_set(&mut p, junk);
        add_elements(&mut p, junk);
        assert!(!is_our_table(junk));
    }
}
