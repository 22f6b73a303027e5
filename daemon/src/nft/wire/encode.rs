//! A ruleset as the messages of one nf_tables batch.

use super::*;

/// The expressions of one rule, as nft itself would generate them (the
/// protocol check comes once per rule, before the first address of its
/// family; byte-aligned prefixes load only their bytes).
pub fn rule_exprs(rule: &Rule, set_ids: &BTreeMap<&str, u32>) -> Vec<Expr> {
    let mut out = Vec::new();
    let mut family: Option<bool> = None;
    let mut need_family = |v6: bool, out: &mut Vec<Expr>| {
        if family != Some(v6) {
            family = Some(v6);
            out.push(Expr::Meta { key: META_NFPROTO });
            out.push(Expr::Cmp {
                neq: false,
                data: vec![if v6 { 10 } else { 2 }],
            });
        }
    };
    for m in &rule.matches {
        match m {
            Match::Mark { mask, value } => {
                out.push(Expr::Meta { key: META_MARK });
                out.push(Expr::Bitwise {
                    len: 4,
                    mask: mask.to_ne_bytes().to_vec(),
                });
                out.push(Expr::Cmp {
                    neq: false,
                    data: value.to_ne_bytes().to_vec(),
                });
            }
            Match::Addr { dir, net, negate } => {
                let v6 = net.is_ipv6();
                need_family(v6, &mut out);
                let (bytes, full) = addr_bytes(net.network());
                let offset = match (v6, dir) {
                    (false, Dir::Src) => 12,
                    (false, Dir::Dst) => 16,
                    (true, Dir::Src) => 8,
                    (true, Dir::Dst) => 24,
                };
                let prefix = net.prefix() as usize;
                let aligned = prefix.is_multiple_of(8) && prefix > 0;
                // nft reads an unaligned prefix back only from a full load.
                let len = if aligned { prefix / 8 } else { full };
                out.push(Expr::Payload {
                    base: BASE_NETWORK,
                    offset,
                    len: len as u32,
                });
                if !aligned {
                    out.push(Expr::Bitwise {
                        len: len as u32,
                        mask: prefix_mask(prefix, len),
                    });
                }
                out.push(Expr::Cmp {
                    neq: *negate,
                    data: bytes[..len].to_vec(),
                });
            }
            Match::SrcNotIn { v6, set } => {
                need_family(*v6, &mut out);
                out.push(Expr::Payload {
                    base: BASE_NETWORK,
                    offset: if *v6 { 8 } else { 12 },
                    len: if *v6 { 16 } else { 4 },
                });
                out.push(Expr::Lookup {
                    set: set.to_string(),
                    set_id: set_ids.get(set).copied(),
                    invert: true,
                });
            }
            Match::UdpDport(port) => {
                out.push(Expr::Meta { key: META_L4PROTO });
                out.push(Expr::Cmp {
                    neq: false,
                    data: vec![17],
                });
                out.push(Expr::Payload {
                    base: BASE_TRANSPORT,
                    offset: 2,
                    len: 2,
                });
                out.push(Expr::Cmp {
                    neq: false,
                    data: port.to_be_bytes().to_vec(),
                });
            }
        }
    }
    if rule.counter {
        out.push(Expr::Counter);
    }
    out.push(match rule.action {
        Action::Return => Expr::Verdict(NFT_RETURN),
        Action::Accept => Expr::Verdict(NF_ACCEPT),
        Action::Drop => Expr::Verdict(NF_DROP),
        Action::Masquerade => Expr::Masq { flags: 0 },
        Action::MasqueradeFullyRandom => Expr::Masq {
            flags: RANDOM_FULLY,
        },
    });
    out
}

pub(super) fn addr_bytes(ip: IpAddr) -> (Vec<u8>, usize) {
    match ip {
        IpAddr::V4(a) => (a.octets().to_vec(), 4),
        IpAddr::V6(a) => (a.octets().to_vec(), 16),
    }
}

pub(super) fn prefix_mask(prefix: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let bits = prefix.saturating_sub(i * 8).min(8);
            if bits == 0 { 0 } else { 0xffu8 << (8 - bits) }
        })
        .collect()
}

/// An expression's name and attributes.
pub fn encode_expr(e: &Expr) -> (&'static str, Attrs) {
    let mut a = Attrs::default();
    let data = |a: &mut Attrs, ty: u16, bytes: &[u8]| {
        a.nest(ty, |d| {
            d.put(DATA_VALUE, bytes);
        });
    };
    let name = match e {
        Expr::Meta { key } => {
            a.u32(2, *key).u32(1, REG_1);
            "meta"
        }
        Expr::Payload { base, offset, len } => {
            a.u32(1, REG_1).u32(2, *base).u32(3, *offset).u32(4, *len);
            "payload"
        }
        Expr::Bitwise { len, mask } => {
            a.u32(1, REG_1).u32(2, REG_1).u32(3, *len);
            data(&mut a, 4, mask);
            data(&mut a, 5, &vec![0; mask.len()]);
            a.u32(6, 0);
            "bitwise"
        }
        Expr::Cmp { neq, data: d } => {
            a.u32(1, REG_1).u32(2, u32::from(*neq));
            data(&mut a, 3, d);
            "cmp"
        }
        Expr::Lookup {
            set,
            set_id,
            invert,
        } => {
            a.str(1, set).u32(2, REG_1);
            if let Some(id) = set_id {
                a.u32(4, *id);
            }
            a.u32(5, u32::from(*invert));
            "lookup"
        }
        Expr::Counter => {
            a.u64(1, 0).u64(2, 0);
            "counter"
        }
        Expr::Verdict(code) => {
            a.u32(1, REG_VERDICT);
            a.nest(2, |d| {
                d.nest(DATA_VERDICT, |v| {
                    v.u32(VERDICT_CODE, *code as u32);
                });
            });
            "immediate"
        }
        Expr::Masq { flags } => {
            // The kernel dumps no flags attribute when there are none.
            if *flags != 0 {
                a.u32(1, *flags);
            }
            "masq"
        }
    };
    (name, a)
}

pub(super) fn expressions(exprs: &[Expr]) -> Attrs {
    let mut list = Attrs::default();
    for e in exprs {
        let (name, data) = encode_expr(e);
        list.nest(LIST_ELEM, |el| {
            el.str(EXPR_NAME, name)
                .put(EXPR_DATA | NLA_F_NESTED, &data.0);
        });
    }
    list
}

pub(super) fn table_msg(ty: u16, flags: u16, what: &str) -> Message {
    let mut attrs = Attrs::default();
    attrs.str(TABLE_NAME_ATTR, TABLE_NAME);
    Message {
        family: FAMILY_INET,
        ty,
        flags,
        attrs,
        what: what.to_string(),
    }
}

/// Elements per message: a netlink attribute holds at most 64 KiB (2000
/// IPv6 keys take 56 KiB).
pub(super) const ELEMENTS_PER_MESSAGE: usize = 2000;

/// The messages that add (or remove) `elems`, in chunks.
pub(super) fn elements_msgs(ty: u16, set: &Set, elems: &[IpAddr], id: Option<u32>) -> Vec<Message> {
    elems
        .chunks(ELEMENTS_PER_MESSAGE)
        .map(|c| elements_msg(ty, set, c, id))
        .collect()
}

pub(super) fn elements_msg(ty: u16, set: &Set, elems: &[IpAddr], id: Option<u32>) -> Message {
    let mut attrs = Attrs::default();
    attrs
        .str(ELEM_LIST_TABLE, TABLE_NAME)
        .str(ELEM_LIST_SET, set.name);
    if let Some(id) = id {
        attrs.u32(ELEM_LIST_SET_ID, id);
    }
    attrs.nest(ELEM_LIST_ELEMENTS, |list| {
        for e in elems {
            list.nest(LIST_ELEM, |el| {
                el.nest(ELEM_KEY, |k| {
                    k.put(DATA_VALUE, &addr_bytes(*e).0);
                });
            });
        }
    });
    let verb = if ty == msg::DELSETELEM {
        "removing"
    } else {
        "adding"
    };
    Message {
        family: FAMILY_INET,
        ty,
        flags: if ty == msg::DELSETELEM {
            0
        } else {
            flags::CREATE
        },
        attrs,
        what: format!("{verb} {} element(s) of set {}", elems.len(), set.name),
    }
}

pub(super) fn set_ids(rs: &Ruleset) -> BTreeMap<&'static str, u32> {
    rs.sets
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name, i as u32 + 1))
        .collect()
}

/// The batch that replaces weft's table whole: declare it (so the delete
/// cannot fail), delete it, create it again with everything in it.
pub fn replace(rs: &Ruleset) -> Vec<Message> {
    let mut out = vec![
        table_msg(msg::NEWTABLE, flags::CREATE, "declaring table inet weft"),
        table_msg(msg::DELTABLE, 0, "deleting table inet weft"),
        table_msg(msg::NEWTABLE, flags::CREATE, "creating table inet weft"),
    ];
    let ids = set_ids(rs);
    for set in &rs.sets {
        let id = ids.get(set.name).copied().unwrap_or(0);
        let mut attrs = Attrs::default();
        attrs
            .str(SET_TABLE, TABLE_NAME)
            .str(SET_NAME, set.name)
            .u32(SET_FLAGS, 0)
            .u32(
                SET_KEY_TYPE,
                if set.v6 { TYPE_IP6ADDR } else { TYPE_IPADDR },
            )
            .u32(SET_KEY_LEN, if set.v6 { 16 } else { 4 })
            .u32(SET_ID, id);
        out.push(Message {
            family: FAMILY_INET,
            ty: msg::NEWSET,
            flags: flags::CREATE,
            attrs,
            what: format!("creating set {}", set.name),
        });
        if !set.elements.is_empty() {
            out.extend(elements_msgs(msg::NEWSETELEM, set, &set.elements, Some(id)));
        }
    }
    for c in &rs.chains {
        let mut attrs = Attrs::default();
        attrs
            .str(CHAIN_TABLE, TABLE_NAME)
            .str(CHAIN_NAME, c.name)
            .nest(CHAIN_HOOK, |h| {
                h.u32(HOOK_NUM, c.hook.number())
                    .u32(HOOK_PRIORITY, c.priority as u32);
            })
            .u32(CHAIN_POLICY, NF_ACCEPT as u32)
            .str(CHAIN_TYPE, c.kind);
        out.push(Message {
            family: FAMILY_INET,
            ty: msg::NEWCHAIN,
            flags: flags::CREATE,
            attrs,
            what: format!("creating chain {}", c.name),
        });
        for (i, r) in c.rules.iter().enumerate() {
            let mut attrs = Attrs::default();
            attrs
                .str(RULE_TABLE, TABLE_NAME)
                .str(RULE_CHAIN, c.name)
                .put(
                    RULE_EXPRESSIONS | NLA_F_NESTED,
                    &expressions(&rule_exprs(r, &ids)).0,
                );
            out.push(Message {
                family: FAMILY_INET,
                ty: msg::NEWRULE,
                flags: flags::CREATE | flags::APPEND,
                attrs,
                what: format!("adding rule {} of chain {} ({r})", i + 1, c.name),
            });
        }
    }
    out
}

/// The message that deletes weft's table.
pub fn delete_table() -> Message {
    table_msg(msg::DELTABLE, 0, "deleting table inet weft")
}

/// The batch that brings the sets' elements from what the kernel holds
/// (`have`) to `rs` (the rest of the table being as it should).
pub fn set_updates(rs: &Ruleset, have: &Picture) -> (Vec<Message>, usize, usize) {
    set_updates_from(rs, |name| {
        have.sets
            .get(name)
            .map(|s| s.elements.iter().filter_map(|b| ip_of(b)).collect())
            .unwrap_or_default()
    })
}

/// The same, from the elements `current` says each set holds: a merge of
/// sorted lists, cheap enough for every peer change at thousands of nodes.
pub fn set_updates_from(
    rs: &Ruleset,
    current: impl Fn(&str) -> Vec<IpAddr>,
) -> (Vec<Message>, usize, usize) {
    let (mut out, mut added, mut removed) = (Vec::new(), 0, 0);
    for set in &rs.sets {
        let mut cur = current(set.name);
        cur.sort_unstable();
        cur.dedup();
        let (gone, new) = crate::backend::diff(&cur, &set.elements);
        removed += gone.len();
        added += new.len();
        out.extend(element_changes(set, &gone, &new));
    }
    (out, added, removed)
}

/// The messages that delete `gone` from `set` and add `new` to it.
pub fn element_changes(set: &Set, gone: &[IpAddr], new: &[IpAddr]) -> Vec<Message> {
    let mut out = Vec::new();
    if !gone.is_empty() {
        out.extend(elements_msgs(msg::DELSETELEM, set, gone, None));
    }
    if !new.is_empty() {
        out.extend(elements_msgs(msg::NEWSETELEM, set, new, None));
    }
    out
}

/// The request attributes of a dump: the table for chains, rules and sets;
/// table and set for elements.
pub fn dump_request(ty: u16, set: Option<&str>) -> Message {
    let mut attrs = Attrs::default();
    match ty {
        msg::GETTABLE => {}
        msg::GETSETELEM => {
            attrs
                .str(ELEM_LIST_TABLE, TABLE_NAME)
                .str(ELEM_LIST_SET, set.unwrap_or_default());
        }
        _ => {
            attrs.str(1, TABLE_NAME);
        }
    }
    Message {
        family: FAMILY_INET,
        ty,
        flags: flags::DUMP,
        attrs,
        what: format!("reading {}", dump_name(ty)),
    }
}

pub(super) fn dump_name(ty: u16) -> &'static str {
    match ty {
        msg::GETTABLE => "tables",
        msg::GETCHAIN => "chains",
        msg::GETRULE => "rules",
        msg::GETSET => "sets",
        _ => "set elements",
    }
}
