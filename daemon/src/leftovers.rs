//! What flanneld leaves on a node that weft does not use, found and (only
//! when asked: `weftd cleanup --flannel`) removed by name: flanneld's
//! iptables chains `FLANNEL-POSTRTG` (nat) and `FLANNEL-FWD` (filter), IPv4
//! and IPv6, with the rules that jump to them from `POSTROUTING` and
//! `FORWARD`, and the tables of flanneld's nftables mode (`ip
//! flannel-ipv4`, `ip6 flannel-ipv6`). flanneld removes none of them on
//! exit; beside weft's table they masquerade and accept the same traffic
//! again. Nothing else is touched: not another chain, not another agent's
//! rule, not a rule in a flannel chain's place.
//!
//! iptables' nf_tables backend (iptables-nft, the default of current
//! distributions) keeps its chains in nf_tables, where weftd reads and
//! removes them itself. The legacy backend keeps them in x_tables: when an
//! `iptables-legacy-save` is at hand its output is read, and
//! `iptables-legacy` removes them; otherwise weft says it cannot look.

use std::process::Command;

use crate::nft::kernel::{Nft, NftError};
use crate::nft::wire::foreign::{self, ChainRef, JumpRef};
use crate::nft::wire::{FAMILY_IPV4, FAMILY_IPV6, msg};

/// flanneld's iptables chains.
pub const CHAINS: [&str; 2] = ["FLANNEL-POSTRTG", "FLANNEL-FWD"];
/// flanneld's nftables tables: (family, name).
const TABLES: [(u8, &str); 2] = [(FAMILY_IPV4, "flannel-ipv4"), (FAMILY_IPV6, "flannel-ipv6")];

fn family_name(f: u8) -> &'static str {
    if f == FAMILY_IPV6 { "ip6" } else { "ip" }
}

/// One legacy iptables rule or chain, as `iptables-legacy-save` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegacyLine {
    /// `iptables-legacy` or `ip6tables-legacy`.
    pub tool: &'static str,
    pub table: String,
    /// The `-A ...` rule or the chain name (for `-N`).
    pub spec: String,
    pub is_chain: bool,
}

/// flanneld's leftovers on this node.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Leftovers {
    pub chains: Vec<ChainRef>,
    pub jumps: Vec<JumpRef>,
    pub tables: Vec<(u8, String)>,
    pub legacy: Vec<LegacyLine>,
    /// Why legacy iptables could not be looked at, if it could not.
    pub legacy_unknown: Option<String>,
}

impl Leftovers {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
            && self.jumps.is_empty()
            && self.tables.is_empty()
            && self.legacy.is_empty()
    }

    /// One line per object.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        for j in &self.jumps {
            out.push(format!(
                "iptables (nf_tables) rule in {} {} {} jumping to {}",
                family_name(j.family),
                j.table,
                j.chain,
                j.target
            ));
        }
        for c in &self.chains {
            out.push(format!(
                "iptables (nf_tables) chain {} {} {}",
                family_name(c.family),
                c.table,
                c.chain
            ));
        }
        for (f, t) in &self.tables {
            out.push(format!("nftables table {} {t}", family_name(*f)));
        }
        for l in &self.legacy {
            let what = if l.is_chain { "chain" } else { "rule" };
            out.push(format!("{} -t {} {what} {}", l.tool, l.table, l.spec));
        }
        out
    }
}

/// Reads flanneld's leftovers in nf_tables (both families) and, through
/// `iptables-legacy-save` when there is one, in legacy iptables.
pub fn find(nft: &mut Nft) -> Result<Leftovers, NftError> {
    let mut l = Leftovers::default();
    for family in [FAMILY_IPV4, FAMILY_IPV6] {
        for t in nft.dump(&foreign::dump_all(msg::GETTABLE, family))? {
            if let Some(name) = foreign::table_name(&t)
                && TABLES.contains(&(family, name.as_str()))
            {
                l.tables.push((family, name));
            }
        }
        for c in nft.dump(&foreign::dump_all(msg::GETCHAIN, family))? {
            if let Some((table, chain)) = foreign::chain_of(&c)
                && CHAINS.contains(&chain.as_str())
                && !l.tables.contains(&(family, table.clone()))
            {
                l.chains.push(ChainRef {
                    family,
                    table,
                    chain,
                });
            }
        }
        for r in nft.dump(&foreign::dump_all(msg::GETRULE, family))? {
            if let Some((table, chain, handle, target)) =
                foreign::jump_of(&r, |t| CHAINS.contains(&t))
                && !l.tables.contains(&(family, table.clone()))
            {
                l.jumps.push(JumpRef {
                    family,
                    table,
                    chain,
                    handle,
                    target,
                });
            }
        }
    }
    match legacy() {
        Ok(lines) => l.legacy = lines,
        Err(why) => l.legacy_unknown = Some(why),
    }
    Ok(l)
}

/// flanneld's lines in one `*-legacy-save` output: its chains (`:NAME`)
/// and the rules that are in them or jump to them.
pub fn legacy_lines(tool: &'static str, save: &str) -> Vec<LegacyLine> {
    let mut table = String::new();
    let mut out = Vec::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(c) = line.strip_prefix(':') {
            let name = c.split_whitespace().next().unwrap_or_default();
            if CHAINS.contains(&name) {
                out.push(LegacyLine {
                    tool,
                    table: table.clone(),
                    spec: name.to_string(),
                    is_chain: true,
                });
            }
        } else if line.starts_with("-A ") {
            let words: Vec<&str> = line.split_whitespace().collect();
            let in_chain = words.get(1).is_some_and(|c| CHAINS.contains(c));
            let jumps = words
                .windows(2)
                .any(|w| (w[0] == "-j" || w[0] == "-g") && CHAINS.contains(&w[1]));
            // A flannel chain's own rules go with its flush.
            if jumps && !in_chain {
                out.push(LegacyLine {
                    tool,
                    table: table.clone(),
                    spec: line.to_string(),
                    is_chain: false,
                });
            }
        }
    }
    out
}

/// The words of an `iptables-save` line: blanks separate them, except
/// inside double quotes, where `\"` and `\\` stand for `"` and `\`.
fn save_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut started) = (false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                quoted = !quoted;
                started = true;
            }
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() && !quoted => {
                if started {
                    out.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        out.push(cur);
    }
    out
}

/// The legacy tables' flannel lines, if `iptables-legacy-save` can be run
/// (it is not in weft's image); why not otherwise, when legacy tables are
/// loaded at all.
fn legacy() -> Result<Vec<LegacyLine>, String> {
    // This thread's network namespace (the process's may be another).
    let loaded = [
        "/proc/thread-self/net/ip_tables_names",
        "/proc/thread-self/net/ip6_tables_names",
    ]
    .iter()
    .any(|p| std::fs::read_to_string(p).is_ok_and(|t| !t.trim().is_empty()));
    if !loaded {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (save, tool) in [
        ("iptables-legacy-save", "iptables-legacy"),
        ("ip6tables-legacy-save", "ip6tables-legacy"),
    ] {
        match Command::new(save).output() {
            Ok(o) if o.status.success() => {
                out.extend(legacy_lines(tool, &String::from_utf8_lossy(&o.stdout)));
            }
            Ok(o) => {
                return Err(format!(
                    "{save} failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
            Err(e) => {
                return Err(format!(
                    "legacy iptables tables are loaded, and {save} cannot be run ({e}): look for FLANNEL-POSTRTG and FLANNEL-FWD with iptables-legacy -S"
                ));
            }
        }
    }
    Ok(out)
}

/// Removes what `find` found: the nf_tables part in one transaction, then
/// the legacy rules and chains with `iptables-legacy`.
pub fn remove(nft: &mut Nft, l: &Leftovers) -> Result<(), String> {
    nft.transact(&foreign::removal(&l.jumps, &l.chains, &l.tables))
        .map_err(|e| crate::chain(&e))?;
    let run = |tool: &str, args: &[&str]| -> Result<(), String> {
        let o = Command::new(tool)
            .args(args)
            .output()
            .map_err(|e| format!("{tool}: {e}"))?;
        if o.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&o.stderr).trim()
            ))
        }
    };
    for r in l.legacy.iter().filter(|r| !r.is_chain) {
        let words = save_words(&r.spec);
        let mut args = vec!["-w", "-t", r.table.as_str(), "-D"];
        args.extend(words.iter().skip(1).map(String::as_str));
        run(r.tool, &args)?;
    }
    for c in l.legacy.iter().filter(|r| r.is_chain) {
        run(c.tool, &["-w", "-t", &c.table, "-F", &c.spec])?;
        run(c.tool, &["-w", "-t", &c.table, "-X", &c.spec])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `iptables-legacy-save` prints on a flannel node with kube-proxy.
    const SAVE: &str = "# Generated by iptables-save v1.8.9
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:FLANNEL-POSTRTG - [0:0]
:KUBE-POSTROUTING - [0:0]
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m comment --comment \"flanneld masq\" -j RETURN
COMMIT
*filter
:FORWARD ACCEPT [0:0]
:FLANNEL-FWD - [0:0]
-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT
COMMIT
";

    #[test]
    fn save_lines_split_as_the_shell_would() {
        assert_eq!(
            save_words(r#"-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG"#),
            [
                "-A",
                "POSTROUTING",
                "-m",
                "comment",
                "--comment",
                "flanneld masq",
                "-j",
                "FLANNEL-POSTRTG"
            ]
        );
        assert_eq!(
            save_words(r#"a "b \"c\" d" "" e"#),
            ["a", "b \"c\" d", "", "e"]
        );
    }

    #[test]
    fn legacy_save_output_gives_flannel_s_chains_and_jumps_only() {
        let l = legacy_lines("iptables-legacy", SAVE);
        let got: Vec<(&str, &str, bool)> = l
            .iter()
            .map(|l| (l.table.as_str(), l.spec.as_str(), l.is_chain))
            .collect();
        assert_eq!(
            got,
            [
                ("nat", "FLANNEL-POSTRTG", true),
                (
                    "nat",
                    "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG",
                    false
                ),
                ("filter", "FLANNEL-FWD", true),
                (
                    "filter",
                    "-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD",
                    false
                ),
            ]
        );
    }
}
