//! The socket side of nf_tables: one NETLINK_NETFILTER socket; batches are
//! sent whole and every message's acknowledgement is awaited; dumps are read
//! back into a [`Picture`] of weft's table. Blocking, with a receive timeout,
//! and cheap: weft's table holds a dozen rules.

use std::io;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

use super::Ruleset;
use super::wire::{self, Message, Picture, msg};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
/// Set on a dump's messages when what was dumped changed meanwhile.
const NLM_F_DUMP_INTR: u16 = 0x10;
const DUMP_TRIES: usize = 5;
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nftables: opening a netlink socket")]
    Open(#[source] io::Error),
    #[error("nftables: {what}")]
    Kernel {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl NftError {
    /// The kernel's errno, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Kernel { source, .. } => source.raw_os_error(),
            NftError::Open(_) => None,
        }
    }
}

/// How weft's table in the kernel compares with the one wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Same,
    /// No table `inet weft`.
    Missing,
    /// Its chains or rules are not the wanted ones (flushed, edited).
    Altered,
    /// Only the allow-list's members differ: this many missing, this many extra.
    Elements {
        added: usize,
        removed: usize,
    },
}

/// What a sync did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// Everything was in place.
    Unchanged,
    /// The table did not exist; it was created.
    Created,
    /// The table existed but differed (a rule, chain or set altered,
    /// removed or added by someone else); it was replaced whole.
    Rewritten,
    /// Only the allow-list's members changed.
    Elements { added: usize, removed: usize },
}

/// A sync's outcome, with the allow-list's drop counter as it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    pub synced: Synced,
    /// Packets the input chain's rules counted before this sync (0 when the
    /// table was missing).
    pub input_drops: u64,
}

/// A netfilter netlink socket.
#[derive(Debug)]
pub struct Nft {
    sock: Socket,
    seq: u32,
}

fn os(what: impl Into<String>) -> impl FnOnce(io::Error) -> NftError {
    let what = what.into();
    move |source| NftError::Kernel { what, source }
}

/// Splits a netlink datagram into its messages: (type, flags, seq, payload
/// after the netlink header). A message whose length runs past the data
/// ends the list.
pub fn split(mut b: &[u8]) -> Vec<(u16, u16, u32, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 16 {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < 16 || len > b.len() {
            break;
        }
        let ty = u16::from_ne_bytes([b[4], b[5]]);
        let flags = u16::from_ne_bytes([b[6], b[7]]);
        let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
        out.push((ty, flags, seq, &b[16..len]));
        b = b.get((len + 3) & !3..).unwrap_or_default();
    }
    out
}

fn errno(payload: &[u8]) -> i32 {
    payload
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(i32::from_ne_bytes)
        .unwrap_or(-EPROTO)
}

/// A truncated error message counts as a protocol error.
const EPROTO: i32 = 71;

impl Nft {
    /// Opens a socket in the caller's network namespace.
    pub fn open() -> Result<Nft, NftError> {
        let mut sock = Socket::new(NETLINK_NETFILTER).map_err(NftError::Open)?;
        sock.bind_auto().map_err(NftError::Open)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NftError::Open)?;
        let tv = nix::sys::time::TimeVal::new(TIMEOUT.as_secs() as _, 0);
        nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
            .map_err(|e| NftError::Open(e.into()))?;
        // A replace carries every peer; room for ~100k of them (best
        // effort: without CAP_NET_ADMIN the default stays).
        let _ =
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::SndBufForce, &(4 << 20));
        let _ =
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::RcvBufForce, &(4 << 20));
        Ok(Nft { sock, seq: 1 })
    }

    fn seqs(&mut self, n: usize) -> u32 {
        let s = self.seq;
        self.seq = self.seq.wrapping_add(n as u32 + 2);
        s
    }

    fn recv(&self, what: &str) -> Result<Vec<u8>, NftError> {
        self.sock
            .recv_from_full()
            .map(|(b, _)| b)
            .map_err(os(format!("{what}: waiting for the kernel's answer")))
    }

    /// Sends `msgs` as one transaction: all of them take effect, or none.
    pub fn transact(&mut self, msgs: &[Message]) -> Result<(), NftError> {
        if msgs.is_empty() {
            return Ok(());
        }
        let seq = self.seqs(msgs.len());
        let buf = wire::encode(msgs, seq, true);
        self.sock
            .send(&buf, 0)
            .map_err(os("sending a transaction"))?;
        let mut pending = msgs.len();
        while pending > 0 {
            let data = self.recv("transaction")?;
            for (ty, _, s, payload) in split(&data) {
                // Only answers to this batch (an earlier failed one may have
                // left some behind).
                if ty != NLMSG_ERROR || s < seq || s > seq + 1 + msgs.len() as u32 {
                    continue;
                }
                match errno(payload) {
                    0 => pending = pending.saturating_sub(1),
                    e => {
                        let what = s
                            .checked_sub(seq + 1)
                            .and_then(|i| msgs.get(i as usize))
                            .map(|m| m.what.clone())
                            .unwrap_or_else(|| "starting a transaction".into());
                        return Err(NftError::Kernel {
                            what,
                            source: io::Error::from_raw_os_error(-e),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// The payloads (after the nfgenmsg header) of a dump's messages.
    pub fn dump(&mut self, req: &Message) -> Result<Vec<Vec<u8>>, NftError> {
        // A dump the kernel marks interrupted (the ruleset changed while it
        // ran: NLM_F_DUMP_INTR) may miss objects; it is asked again.
        for _ in 0..DUMP_TRIES {
            let (out, interrupted) = self.dump_once(req)?;
            if !interrupted {
                return Ok(out);
            }
            tracing::debug!(what = %req.what, "nftables dump interrupted; reading again");
        }
        Err(NftError::Kernel {
            what: req.what.clone(),
            source: io::Error::other(format!(
                "every one of {DUMP_TRIES} dumps was interrupted by a change"
            )),
        })
    }

    fn dump_once(&mut self, req: &Message) -> Result<(Vec<Vec<u8>>, bool), NftError> {
        let mut interrupted = false;
        let seq = self.seqs(1) + 1;
        let buf = wire::encode(std::slice::from_ref(req), seq - 1, false);
        self.sock.send(&buf, 0).map_err(os(req.what.clone()))?;
        let mut out = Vec::new();
        loop {
            let data = self.recv(&req.what)?;
            for (ty, flags, s, payload) in split(&data) {
                if s != seq {
                    continue;
                }
                interrupted |= flags & NLM_F_DUMP_INTR != 0;
                match ty {
                    NLMSG_DONE => return Ok((out, interrupted)),
                    NLMSG_ERROR => match errno(payload) {
                        0 => return Ok((out, interrupted)),
                        e => {
                            return Err(NftError::Kernel {
                                what: req.what.clone(),
                                source: io::Error::from_raw_os_error(-e),
                            });
                        }
                    },
                    _ if ty >> 8 == wire::SUBSYS => {
                        out.push(payload.get(4..).unwrap_or_default().to_vec());
                    }
                    _ => {}
                }
            }
        }
    }

    /// weft's table as the kernel holds it; None when it does not exist.
    pub fn read(&mut self) -> Result<Option<Picture>, NftError> {
        let tables = self.dump(&wire::dump_request(msg::GETTABLE, None))?;
        if !tables.iter().any(|t| wire::is_our_table(t)) {
            return Ok(None);
        }
        let mut p = Picture::default();
        for c in self.dump(&wire::dump_request(msg::GETCHAIN, None))? {
            wire::add_chain(&mut p, &c);
        }
        for r in self.dump(&wire::dump_request(msg::GETRULE, None))? {
            wire::add_rule(&mut p, &r);
        }
        let mut sets = Vec::new();
        for s in self.dump(&wire::dump_request(msg::GETSET, None))? {
            sets.extend(wire::add_set(&mut p, &s));
        }
        for name in sets {
            for e in self.dump(&wire::dump_request(msg::GETSETELEM, Some(&name)))? {
                wire::add_elements(&mut p, &e);
            }
        }
        Ok(Some(p))
    }

    /// Makes the kernel's table what `rs` says, touching as little as
    /// possible: nothing when it already is; only the allow-list's members
    /// when only they differ; otherwise the whole table, in one transaction.
    pub fn sync(&mut self, rs: &Ruleset) -> Result<SyncReport, NftError> {
        let want = wire::expected(rs);
        let report = match self.read()? {
            None => {
                self.transact(&wire::replace(rs))?;
                SyncReport {
                    synced: Synced::Created,
                    input_drops: 0,
                }
            }
            Some(have) if have.same_shape(&want) => {
                let (msgs, added, removed) = wire::set_updates(rs, &have);
                self.transact(&msgs)?;
                SyncReport {
                    synced: if msgs.is_empty() {
                        Synced::Unchanged
                    } else {
                        Synced::Elements { added, removed }
                    },
                    input_drops: have.input_drops,
                }
            }
            Some(have) => {
                self.transact(&wire::replace(rs))?;
                SyncReport {
                    synced: Synced::Rewritten,
                    input_drops: have.input_drops,
                }
            }
        };
        Ok(report)
    }

    /// Reads weft's table and tells how it differs from `rs`, changing
    /// nothing (the doctor's view; [`sync`](Self::sync) repairs).
    pub fn check(&mut self, rs: &Ruleset) -> Result<Check, NftError> {
        let want = wire::expected(rs);
        Ok(match self.read()? {
            None => Check::Missing,
            Some(have) if have.same_shape(&want) => {
                let (msgs, added, removed) = wire::set_updates(rs, &have);
                if msgs.is_empty() {
                    Check::Same
                } else {
                    Check::Elements { added, removed }
                }
            }
            Some(_) => Check::Altered,
        })
    }

    /// Removes weft's table; whether it existed.
    pub fn delete_table(&mut self) -> Result<bool, NftError> {
        let del = wire::dump_request(msg::GETTABLE, None);
        let exists = self.dump(&del)?.iter().any(|t| wire::is_our_table(t));
        if exists {
            self.transact(&[wire::delete_table()])?;
        }
        Ok(exists)
    }
}
