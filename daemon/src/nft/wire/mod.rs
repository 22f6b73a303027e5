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
pub const FAMILY_IPV4: u8 = 2;
pub const FAMILY_IPV6: u8 = 10;

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
    /// The address family of the table it is about (NFPROTO_*).
    pub family: u8,
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

fn ip_of(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => <[u8; 4]>::try_from(b).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(b).ok().map(IpAddr::from),
        _ => None,
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
            m.family,
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

mod dump;
mod encode;
pub mod foreign;
#[cfg(test)]
mod tests;

pub use dump::*;
pub use encode::*;
