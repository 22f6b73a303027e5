//! The agent's side of weft's nftables table: the table follows the peer set
//! (a peer change touches only the allow-list's members) and is read back on
//! every rules resync, so a table someone flushed, deleted or edited is put
//! back within the interval and counted.

use std::net::IpAddr;

use crate::backend;
use crate::lease::peers::PeerSet;
use crate::metrics::Metrics;
use crate::nft::kernel::{Nft, NftError, Synced};
use crate::nft::{self, Ruleset, RulesetInput, wire};

/// weft's table on this node.
#[derive(Debug)]
pub struct Firewall {
    nft: Nft,
    /// Families, masquerade, and the allow-list's port (its peers are filled
    /// in from the peer set).
    base: RulesetInput,
    /// The peers' public IPs, once the first complete peer set is known.
    peers: Option<Vec<IpAddr>>,
    /// What the kernel held after our last successful write or check.
    applied: Option<Ruleset>,
    /// The input chain's counter at the last reading.
    last_drops: u64,
    /// Whether this process has synced the table before.
    synced_once: bool,
    /// The number of the peer set whose public IPs `applied` holds.
    generation: Option<u64>,
}

impl Firewall {
    /// `base.allow_list` is `Some((port, _))` when the allow-list is on.
    pub fn new(base: RulesetInput) -> Result<Firewall, NftError> {
        Ok(Firewall {
            nft: Nft::open()?,
            base,
            peers: None,
            applied: None,
            last_drops: 0,
            synced_once: false,
            generation: None,
        })
    }

    fn want(&self, peers: &[IpAddr]) -> Ruleset {
        let mut input = self.base.clone();
        if let Some((_, allowed)) = &mut input.allow_list {
            *allowed = peers.to_vec();
        }
        nft::build(&input)
    }

    /// The complete peer set changed: bring the table along. Before the
    /// first complete set nothing is written (a table left by an earlier run
    /// keeps the allow-list it had, so a restart drops no peer's traffic).
    pub fn peers_changed(&mut self, set: &PeerSet, m: &Metrics) -> Result<(), NftError> {
        // A Node event: only the public IPs that came or went, when the
        // table holds the set they start from (most events change none).
        if let Some(c) = set.changes_since(self.generation)
            && let Some(applied) = &mut self.applied
        {
            let of = |ips: &[IpAddr], v6: bool| -> Vec<IpAddr> {
                ips.iter()
                    .copied()
                    .filter(|ip| ip.is_ipv6() == v6)
                    .collect()
            };
            // Per set: the addresses gone and new.
            let changes: Vec<(Vec<IpAddr>, Vec<IpAddr>)> = applied
                .sets
                .iter()
                .map(|s| (of(&c.ips_removed, s.v6), of(&c.ips_added, s.v6)))
                .collect();
            let msgs: Vec<_> = applied
                .sets
                .iter()
                .zip(&changes)
                .flat_map(|(s, (gone, new))| wire::element_changes(s, gone, new))
                .collect();
            if msgs.is_empty() {
                self.generation = Some(set.generation);
                return Ok(());
            }
            if self.nft.transact(&msgs).is_ok() {
                for (s, (gone, new)) in applied.sets.iter_mut().zip(&changes) {
                    backend::apply_changes(&mut s.elements, gone, new);
                }
                if let Some(peers) = &mut self.peers {
                    backend::apply_changes(peers, &c.ips_removed, &c.ips_added);
                }
                m.nft_synced("elements", false);
                tracing::debug!(
                    added = c.ips_added.len(),
                    removed = c.ips_removed.len(),
                    "allow-list updated"
                );
                self.generation = Some(set.generation);
                return Ok(());
            }
            // Someone changed the table under us: the whole way, below.
        }
        self.generation = None;
        let peers = set.public_ips();
        let rs = self.want(&peers);
        self.peers = Some(peers);
        let result = match &self.applied {
            Some(old) if *old == rs => Ok(()),
            Some(old) if old.chains == rs.chains => {
                let (msgs, added, removed) = wire::set_updates_from(&rs, |name| {
                    old.sets
                        .iter()
                        .find(|s| s.name == name)
                        .map(|s| s.elements.clone())
                        .unwrap_or_default()
                });
                match self.nft.transact(&msgs) {
                    Ok(()) => {
                        m.nft_synced("elements", false);
                        tracing::debug!(added, removed, "allow-list updated");
                        self.applied = Some(rs);
                        Ok(())
                    }
                    // Someone changed the table under us: read it and repair.
                    Err(e) => {
                        tracing::debug!(error = %e, "updating the allow-list failed; resyncing the table");
                        self.resync(m)
                    }
                }
            }
            _ => self.resync(m),
        };
        if result.is_ok() && self.applied.is_some() {
            self.generation = Some(set.generation);
        }
        result
    }

    /// Reads the table back and repairs whatever differs. Nothing to do
    /// before the first complete peer set.
    pub fn resync(&mut self, m: &Metrics) -> Result<(), NftError> {
        let Some(peers) = &self.peers else {
            return Ok(());
        };
        let rs = self.want(peers);
        let report = match self.nft.sync(&rs) {
            Ok(r) => r,
            Err(e) => {
                m.nft_error();
                self.applied = None;
                return Err(e);
            }
        };
        // The counter restarts from zero whenever the table is rewritten;
        // what an earlier run counted is not this run's.
        let drops = report.input_drops;
        let first = !std::mem::replace(&mut self.synced_once, true);
        if !first {
            m.allowlist_dropped(drops.saturating_sub(self.last_drops));
        }
        let (label, restored) = match report.synced {
            Synced::Unchanged => ("unchanged", false),
            Synced::Elements { .. } => ("elements", false),
            Synced::Created => ("created", !first),
            Synced::Rewritten => ("rewritten", !first),
        };
        self.last_drops = match report.synced {
            Synced::Created | Synced::Rewritten => 0,
            _ => drops,
        };
        m.nft_synced(label, restored);
        match report.synced {
            Synced::Unchanged => {}
            Synced::Elements { added, removed } => {
                tracing::info!(added, removed, "allow-list brought up to date")
            }
            _ if restored => tracing::warn!(
                table = nft::TABLE,
                "nftables table was missing or altered behind weft's back; restored"
            ),
            _ => tracing::info!(table = nft::TABLE, how = label, "nftables table installed"),
        }
        self.applied = Some(rs);
        Ok(())
    }
}
