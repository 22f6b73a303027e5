//! Reading and removing another agent's nf_tables objects by name: the
//! chains flanneld's iptables (nf_tables backend) leaves, the rules that
//! jump to them, and flanneld's own nftables tables. Pure: requests out,
//! dumps in.

use super::*;

const DELCHAIN: u16 = 5;
const DELRULE: u16 = 8;
const RULE_HANDLE: u16 = 3;
const VERDICT_CHAIN: u16 = 2;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;

/// A chain of a table of one family.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ChainRef {
    pub family: u8,
    pub table: String,
    pub chain: String,
}

/// A rule (by handle) that jumps to (or goes to) `target`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct JumpRef {
    pub family: u8,
    pub table: String,
    pub chain: String,
    pub handle: u64,
    pub target: String,
}

/// A dump of every table, chain or rule of `family`.
pub fn dump_all(ty: u16, family: u8) -> Message {
    Message {
        ty,
        family,
        flags: flags::DUMP,
        attrs: Attrs::default(),
        what: format!("reading {}", dump_name(ty)),
    }
}

/// The table's name in a table message.
pub fn table_name(payload: &[u8]) -> Option<String> {
    get_str(&attrs(payload), TABLE_NAME_ATTR)
}

/// (table, chain) of a chain message.
pub fn chain_of(payload: &[u8]) -> Option<(String, String)> {
    let a = attrs(payload);
    Some((get_str(&a, CHAIN_TABLE)?, get_str(&a, CHAIN_NAME)?))
}

/// The rule of a rule message if it jumps to (or goes to) a chain `wanted`
/// accepts: (table, chain, handle, target).
pub fn jump_of(
    payload: &[u8],
    wanted: impl Fn(&str) -> bool,
) -> Option<(String, String, u64, String)> {
    let a = attrs(payload);
    let table = get_str(&a, RULE_TABLE)?;
    let chain = get_str(&a, RULE_CHAIN)?;
    let handle = get(&a, RULE_HANDLE)
        .and_then(|v| <[u8; 8]>::try_from(v).ok())
        .map(u64::from_be_bytes)?;
    let exprs = get(&a, RULE_EXPRESSIONS)?;
    let target = attrs(exprs)
        .into_iter()
        .filter(|(t, _)| *t == LIST_ELEM)
        .find_map(|(_, el)| {
            let e = attrs(el);
            if get_str(&e, EXPR_NAME)? != "immediate" {
                return None;
            }
            let data = attrs(get(&e, EXPR_DATA)?);
            let verdict = attrs(get(&data, 2)?);
            let verdict = attrs(get(&verdict, DATA_VERDICT).unwrap_or_default());
            let code = get_u32(&verdict, VERDICT_CODE)? as i32;
            let target = get_str(&verdict, VERDICT_CHAIN)?;
            ((code == NFT_JUMP || code == NFT_GOTO) && wanted(&target)).then_some(target)
        })?;
    Some((table, chain, handle, target))
}

/// The batch that removes `jumps`, then flushes and deletes `chains`,
/// then deletes `tables` ((family, name)).
pub fn removal(jumps: &[JumpRef], chains: &[ChainRef], tables: &[(u8, String)]) -> Vec<Message> {
    let mut out = Vec::new();
    for j in jumps {
        let mut attrs = Attrs::default();
        attrs
            .str(RULE_TABLE, &j.table)
            .str(RULE_CHAIN, &j.chain)
            .u64(RULE_HANDLE, j.handle);
        out.push(Message {
            ty: DELRULE,
            family: j.family,
            flags: 0,
            attrs,
            what: format!(
                "deleting the jump of {} {} to {}",
                j.table, j.chain, j.target
            ),
        });
    }
    for c in chains {
        let mut flush = Attrs::default();
        flush.str(RULE_TABLE, &c.table).str(RULE_CHAIN, &c.chain);
        out.push(Message {
            ty: DELRULE,
            family: c.family,
            flags: 0,
            attrs: flush,
            what: format!("flushing chain {} of table {}", c.chain, c.table),
        });
        let mut del = Attrs::default();
        del.str(CHAIN_TABLE, &c.table).str(CHAIN_NAME, &c.chain);
        out.push(Message {
            ty: DELCHAIN,
            family: c.family,
            flags: 0,
            attrs: del,
            what: format!("deleting chain {} of table {}", c.chain, c.table),
        });
    }
    for (family, name) in tables {
        let mut attrs = Attrs::default();
        attrs.str(TABLE_NAME_ATTR, name);
        out.push(Message {
            ty: msg::DELTABLE,
            family: *family,
            flags: 0,
            attrs,
            what: format!("deleting table {name}"),
        });
    }
    out
}
