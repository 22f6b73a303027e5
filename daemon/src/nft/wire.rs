//! nf_tables over netlink, the part without a socket: a [`Ruleset`] becomes
//! the messages of one batch, and the kernel's dumps become a [`Picture`]
//! that equals the one computed from the ruleset when nothing was changed
//! behind weft's back. Numbers inside nf_tables attributes are big-endian;
//! register contents are in packet order (addresses, ports) or host order
//! (the mark), as the kernel compares them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{Action, Chain, Dir, Match, Rule, Ruleset, Set, TABLE_NAME};

/// nfnetlink subsystem of nf_tables.
pub const SUBSYS: u16 = 10;
pub const BATCH_BEGIN: u16 = 0x10;
pub const BATCH_END: u16 = 0x11;
/// NFPROTO_INET: the family of `table inet`.
pub const FAMILY_INET: u8 = 1;

/// NFT_MSG_* (nf_tables.h).
pub mod msg {
    pub const NEWTABLE: u16 = 0;
    pub const GETTABLE: u16 = 1;
    pub const DELTABLE: u16 = 2;
    pub const NEWCHAIN: u16 = 3;
    pub const GETCHAIN: u16 = 4;
    pub const NEWRULE: u16 = 6;
    pub const GETRULE: u16 = 7;
    pub const NEWSET: u16 = 9;
    pub const GETSET: u16 = 10;
    pub const NEWSETELEM: u16 = 12;
    pub const GETSETELEM: u16 = 13;
    pub const DELSETELEM: u16 = 14;
}

/// Netlink header flags.
pub mod flags {
    pub const REQUEST: u16 = 0x1;
    pub const ACK: u16 = 0x4;
    pub const DUMP: u16 = 0x300;
    pub const CREATE: u16 = 0x400;
    pub const APPEND: u16 = 0x800;
}

const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const LIST_ELEM: u16 = 1;
/// NFT_REG_VERDICT and NFT_REG_1.
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;

// Attribute numbers, by object.
const TABLE_NAME_ATTR: u16 = 1;
const CHAIN_TABLE: u16 = 1;
const CHAIN_NAME: u16 = 3;
const CHAIN_HOOK: u16 = 4;
const CHAIN_POLICY: u16 = 5;
const CHAIN_TYPE: u16 = 7;
const HOOK_NUM: u16 = 1;
const HOOK_PRIORITY: u16 = 2;
const RULE_TABLE: u16 = 1;
const RULE_CHAIN: u16 = 2;
const RULE_EXPRESSIONS: u16 = 4;
const EXPR_NAME: u16 = 1;
const EXPR_DATA: u16 = 2;
const SET_TABLE: u16 = 1;
const SET_NAME: u16 = 2;
const SET_FLAGS: u16 = 3;
const SET_KEY_TYPE: u16 = 4;
const SET_KEY_LEN: u16 = 5;
const SET_ID: u16 = 10;
const ELEM_LIST_TABLE: u16 = 1;
const ELEM_LIST_SET: u16 = 2;
const ELEM_LIST_ELEMENTS: u16 = 3;
const ELEM_LIST_SET_ID: u16 = 4;
const ELEM_KEY: u16 = 1;
const DATA_VALUE: u16 = 1;
const DATA_VERDICT: u16 = 2;
const VERDICT_CODE: u16 = 1;
/// nft's datatype numbers for the set key types.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;

/// Attributes under construction.
#[derive(Debug, Default, Clone)]
pub struct Attrs(pub Vec<u8>);

impl Attrs {
    fn put(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(data);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }
    fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(ty, &b)
    }
    fn u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }
    fn u64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }
    fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let mut inner = Attrs::default();
        f(&mut inner);
        self.put(ty | NLA_F_NESTED, &inner.0)
    }
}

/// One message of a batch or request.
#[derive(Debug, Clone)]
pub struct Message {
    /// NFT_MSG_*.
    pub ty: u16,
    pub flags: u16,
    pub attrs: Attrs,
    /// What it does, for error messages.
    pub what: String,
}

/// One nf_tables expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Meta {
        key: u32,
    },
    Payload {
        base: u32,
        offset: u32,
        len: u32,
    },
    Bitwise {
        len: u32,
        mask: Vec<u8>,
    },
    Cmp {
        neq: bool,
        data: Vec<u8>,
    },
    Lookup {
        set: String,
        set_id: Option<u32>,
        invert: bool,
    },
    Counter,
    Verdict(i32),
    Masq {
        flags: u32,
    },
}

const META_MARK: u32 = 3;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
const BASE_NETWORK: u32 = 1;
const BASE_TRANSPORT: u32 = 2;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_RETURN: i32 = -5;
/// NF_NAT_RANGE_PROTO_RANDOM_FULLY.
const RANDOM_FULLY: u32 = 0x10;

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
        Action::MasqueradeFullyRandom => Expr::Masq {
            flags: RANDOM_FULLY,
        },
    });
    out
}

fn addr_bytes(ip: IpAddr) -> (Vec<u8>, usize) {
    match ip {
        IpAddr::V4(a) => (a.octets().to_vec(), 4),
        IpAddr::V6(a) => (a.octets().to_vec(), 16),
    }
}

fn prefix_mask(prefix: usize, len: usize) -> Vec<u8> {
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
            a.u32(1, *flags);
            "masq"
        }
    };
    (name, a)
}

fn expressions(exprs: &[Expr]) -> Attrs {
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

fn table_msg(ty: u16, flags: u16, what: &str) -> Message {
    let mut attrs = Attrs::default();
    attrs.str(TABLE_NAME_ATTR, TABLE_NAME);
    Message {
        ty,
        flags,
        attrs,
        what: what.to_string(),
    }
}

/// Elements per message: a netlink attribute holds at most 64 KiB (2000
/// IPv6 keys take 56 KiB).
const ELEMENTS_PER_MESSAGE: usize = 2000;

/// The messages that add (or remove) `elems`, in chunks.
fn elements_msgs(ty: u16, set: &Set, elems: &[IpAddr], id: Option<u32>) -> Vec<Message> {
    elems
        .chunks(ELEMENTS_PER_MESSAGE)
        .map(|c| elements_msg(ty, set, c, id))
        .collect()
}

fn elements_msg(ty: u16, set: &Set, elems: &[IpAddr], id: Option<u32>) -> Message {
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

fn set_ids(rs: &Ruleset) -> BTreeMap<&'static str, u32> {
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
        let gone: Vec<IpAddr> = cur
            .iter()
            .filter(|c| set.elements.binary_search(c).is_err())
            .copied()
            .collect();
        let new: Vec<IpAddr> = set
            .elements
            .iter()
            .filter(|e| cur.binary_search(e).is_err())
            .copied()
            .collect();
        if !gone.is_empty() {
            removed += gone.len();
            out.extend(elements_msgs(msg::DELSETELEM, set, &gone, None));
        }
        if !new.is_empty() {
            added += new.len();
            out.extend(elements_msgs(msg::NEWSETELEM, set, &new, None));
        }
    }
    (out, added, removed)
}

fn ip_of(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
    }
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
        ty,
        flags: flags::DUMP,
        attrs,
        what: format!("reading {}", dump_name(ty)),
    }
}

fn dump_name(ty: u16) -> &'static str {
    match ty {
        msg::GETTABLE => "tables",
        msg::GETCHAIN => "chains",
        msg::GETRULE => "rules",
        msg::GETSET => "sets",
        _ => "set elements",
    }
}

/// Writes netlink messages (header, nfgenmsg, attributes), numbering them
/// from `seq`; with `batch`, wrapped in BATCH_BEGIN/BATCH_END and every
/// message asks for an acknowledgement.
pub fn encode(msgs: &[Message], seq: u32, batch: bool) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut put = |ty: u16, flags: u16, seq: u32, family: u8, res_id: u16, attrs: &[u8]| {
        let len = 16 + 4 + attrs.len();
        buf.extend_from_slice(&(len as u32).to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.push(family);
        buf.push(0);
        buf.extend_from_slice(&res_id.to_be_bytes());
        buf.extend_from_slice(attrs);
    };
    let n = msgs.len() as u32;
    if batch {
        put(BATCH_BEGIN, flags::REQUEST, seq, 0, SUBSYS, &[]);
    }
    for (i, m) in msgs.iter().enumerate() {
        let ack = if batch { flags::ACK } else { 0 };
        put(
            (SUBSYS << 8) | m.ty,
            flags::REQUEST | ack | m.flags,
            seq + 1 + i as u32,
            FAMILY_INET,
            0,
            &m.attrs.0,
        );
    }
    if batch {
        put(BATCH_END, flags::REQUEST, seq + 1 + n, 0, SUBSYS, &[]);
    }
    buf
}

/// One attribute as read: its type without flags, its payload.
pub fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        let next = (len + 3) & !3;
        b = b.get(next..).unwrap_or_default();
    }
    out
}

fn get<'a>(a: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    a.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
}

fn get_str(a: &[(u16, &[u8])], ty: u16) -> Option<String> {
    get(a, ty).map(|v| String::from_utf8_lossy(v.split(|c| *c == 0).next().unwrap_or(v)).into())
}

fn get_u32(a: &[(u16, &[u8])], ty: u16) -> Option<u32> {
    get(a, ty)
        .and_then(|v| <[u8; 4]>::try_from(v).ok())
        .map(u32::from_be_bytes)
}

/// Nested attributes rewritten without flag bits (so a value compares
/// equal whether or not the sender set NLA_F_NESTED).
fn canonical(b: &[u8]) -> Vec<u8> {
    let mut a = Attrs::default();
    for (ty, v) in attrs(b) {
        if ty == DATA_VERDICT {
            a.put(ty, &canonical(v));
        } else {
            a.put(ty, v);
        }
    }
    a.0
}

/// An expression as compared: name and attributes, sorted, with counter
/// values and set ids (the kernel does not report them back) left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprPicture {
    pub name: String,
    pub attrs: Vec<(u16, Vec<u8>)>,
}

fn expr_picture(name: &str, data: &[u8]) -> (ExprPicture, Option<u64>) {
    let mut packets = None;
    let mut out = Vec::new();
    for (ty, v) in attrs(data) {
        let keep = match (name, ty) {
            ("counter", 2) => {
                packets = <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes);
                false
            }
            ("counter", _) => false,
            ("lookup", 4) => false,
            _ => true,
        };
        if !keep {
            continue;
        }
        let nested = matches!(
            (name, ty),
            ("cmp", 3) | ("bitwise", 4) | ("bitwise", 5) | ("bitwise", 7) | ("immediate", 2)
        );
        out.push((ty, if nested { canonical(v) } else { v.to_vec() }));
    }
    out.sort();
    (
        ExprPicture {
            name: name.to_string(),
            attrs: out,
        },
        packets,
    )
}

fn rule_picture(exprs_attr: &[u8]) -> (Vec<ExprPicture>, u64) {
    let mut packets = 0;
    let list = attrs(exprs_attr)
        .into_iter()
        .filter(|(t, _)| *t == LIST_ELEM)
        .map(|(_, el)| {
            let a = attrs(el);
            let name = get_str(&a, EXPR_NAME).unwrap_or_default();
            let (p, n) = expr_picture(&name, get(&a, EXPR_DATA).unwrap_or_default());
            packets += n.unwrap_or(0);
            p
        })
        .collect();
    (list, packets)
}

/// A base chain as compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainPicture {
    pub kind: String,
    pub hook: Option<(u32, i32)>,
    pub policy: Option<u32>,
    pub rules: Vec<Vec<ExprPicture>>,
}

/// A set as compared.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SetPicture {
    pub key_type: u32,
    pub key_len: u32,
    pub flags: u32,
    pub elements: BTreeSet<Vec<u8>>,
}

/// weft's table as the kernel holds it (or as the ruleset wants it).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Picture {
    pub chains: BTreeMap<String, ChainPicture>,
    pub sets: BTreeMap<String, SetPicture>,
    /// Packets counted by the rules of the input chain (the allow-list's
    /// drops).
    pub input_drops: u64,
}

impl Picture {
    /// Equal but for the sets' elements (and counters).
    pub fn same_shape(&self, other: &Picture) -> bool {
        let shape = |p: &Picture| -> Vec<(String, u32, u32, u32)> {
            p.sets
                .iter()
                .map(|(n, s)| (n.clone(), s.key_type, s.key_len, s.flags))
                .collect()
        };
        self.chains == other.chains && shape(self) == shape(other)
    }
}

fn chain_picture(c: &Chain, ids: &BTreeMap<&str, u32>) -> ChainPicture {
    ChainPicture {
        kind: c.kind.to_string(),
        hook: Some((c.hook.number(), c.priority)),
        policy: Some(NF_ACCEPT as u32),
        rules: c
            .rules
            .iter()
            .map(|r| rule_picture(&expressions(&rule_exprs(r, ids)).0).0)
            .collect(),
    }
}

/// The picture the ruleset should leave in the kernel.
pub fn expected(rs: &Ruleset) -> Picture {
    let ids = set_ids(rs);
    Picture {
        chains: rs
            .chains
            .iter()
            .map(|c| (c.name.to_string(), chain_picture(c, &ids)))
            .collect(),
        sets: rs
            .sets
            .iter()
            .map(|s| {
                (
                    s.name.to_string(),
                    SetPicture {
                        key_type: if s.v6 { TYPE_IP6ADDR } else { TYPE_IPADDR },
                        key_len: if s.v6 { 16 } else { 4 },
                        flags: 0,
                        elements: s.elements.iter().map(|e| addr_bytes(*e).0).collect(),
                    },
                )
            })
            .collect(),
        input_drops: 0,
    }
}

/// Whether a GETTABLE dump message (attributes after the nfgenmsg) is ours.
pub fn is_our_table(payload: &[u8]) -> bool {
    get_str(&attrs(payload), TABLE_NAME_ATTR).as_deref() == Some(TABLE_NAME)
}

/// Adds a chain from a GETCHAIN dump message, if it is in our table.
pub fn add_chain(p: &mut Picture, payload: &[u8]) {
    let a = attrs(payload);
    if get_str(&a, CHAIN_TABLE).as_deref() != Some(TABLE_NAME) {
        return;
    }
    let Some(name) = get_str(&a, CHAIN_NAME) else {
        return;
    };
    let hook = get(&a, CHAIN_HOOK).and_then(|h| {
        let h = attrs(h);
        Some((get_u32(&h, HOOK_NUM)?, get_u32(&h, HOOK_PRIORITY)? as i32))
    });
    p.chains.insert(
        name,
        ChainPicture {
            kind: get_str(&a, CHAIN_TYPE).unwrap_or_default(),
            hook,
            policy: get_u32(&a, CHAIN_POLICY),
            rules: Vec::new(),
        },
    );
}

/// Adds a rule from a GETRULE dump message (in dump order), if ours.
pub fn add_rule(p: &mut Picture, payload: &[u8]) {
    let a = attrs(payload);
    if get_str(&a, RULE_TABLE).as_deref() != Some(TABLE_NAME) {
        return;
    }
    let chain = get_str(&a, RULE_CHAIN).unwrap_or_default();
    let (rule, packets) = rule_picture(get(&a, RULE_EXPRESSIONS).unwrap_or_default());
    if chain == "input" {
        p.input_drops += packets;
    }
    if let Some(c) = p.chains.get_mut(&chain) {
        c.rules.push(rule);
    }
}

/// Adds a set from a GETSET dump message, if ours; its name.
pub fn add_set(p: &mut Picture, payload: &[u8]) -> Option<String> {
    let a = attrs(payload);
    if get_str(&a, SET_TABLE).as_deref() != Some(TABLE_NAME) {
        return None;
    }
    let name = get_str(&a, SET_NAME)?;
    p.sets.insert(
        name.clone(),
        SetPicture {
            key_type: get_u32(&a, SET_KEY_TYPE).unwrap_or(0),
            key_len: get_u32(&a, SET_KEY_LEN).unwrap_or(0),
            flags: get_u32(&a, SET_FLAGS).unwrap_or(0),
            elements: BTreeSet::new(),
        },
    );
    Some(name)
}

/// Adds the elements of a GETSETELEM dump message to their set.
pub fn add_elements(p: &mut Picture, payload: &[u8]) {
    let a = attrs(payload);
    let Some(set) = get_str(&a, ELEM_LIST_SET).and_then(|n| p.sets.get_mut(&n)) else {
        return;
    };
    for (_, el) in attrs(get(&a, ELEM_LIST_ELEMENTS).unwrap_or_default()) {
        if let Some(v) = get(&attrs(el), ELEM_KEY).and_then(|k| get(&attrs(k), DATA_VALUE)) {
            set.elements.insert(v.to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::{Family, RulesetInput, build};

    fn input() -> RulesetInput {
        RulesetInput {
            families: vec![Family {
                network: "10.244.0.0/16".parse().unwrap(),
                subnet: "10.244.1.0/24".parse().unwrap(),
            }],
            ip_masq: true,
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
}
