//! The kernel's dumps of our table as a [`Picture`], and the picture a
//! ruleset should give.

use super::*;

/// Nested attributes rewritten without flag bits (so a value compares
/// equal whether or not the sender set NLA_F_NESTED).
pub(super) fn canonical(b: &[u8]) -> Vec<u8> {
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

pub(super) fn expr_picture(name: &str, data: &[u8]) -> (ExprPicture, Option<u64>) {
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

pub(super) fn rule_picture(exprs_attr: &[u8]) -> (Vec<ExprPicture>, u64) {
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

pub(super) fn chain_picture(c: &Chain, ids: &BTreeMap<&str, u32>) -> ChainPicture {
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
