//! The bodies of weft's fuzz targets: one function per target, taking the
//! fuzzer's bytes. cargo-fuzz's binaries (`fuzz/fuzz_targets/`) call them
//! under libFuzzer; `tests/corpora.rs` replays every stored input (the
//! corpora and the regressions) through the same functions in CI.
//!
//! Each target hands hostile bytes to weft's code the way weft meets them
//! (a runtime's environment and stdin, a file, an annotation, a netlink
//! dump, a packet) and checks what must hold whatever the bytes: no panic,
//! and the invariants written at each target. Inputs of several parts are
//! cut at 0xFF bytes, which no UTF-8 text holds ([`parts`]).

#![allow(clippy::unwrap_used)] // a failed invariant is the finding

mod cni;
mod daemon;
mod udp;

pub use cni::{cni_request, subnet_env};
pub use daemon::{etcd_lease, flanneld_cli, net_conf, nft_dump, peer_annotations};
pub use udp::udp_path;

/// A target's body.
pub type Body = fn(&[u8]);

/// Every target: its name (the directory of its corpus) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("cni_request", cni_request),
    ("subnet_env", subnet_env),
    ("net_conf", net_conf),
    ("peer_annotations", peer_annotations),
    ("nft_dump", nft_dump),
    ("udp_path", udp_path),
    ("flanneld_cli", flanneld_cli),
    ("etcd_lease", etcd_lease),
];

/// `data` cut at each 0xFF byte into exactly `n` parts: missing parts are
/// empty, the last part keeps any further 0xFF bytes.
pub fn parts(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(n);
    let mut rest = data;
    while out.len() + 1 < n {
        match rest.iter().position(|&b| b == 0xff) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + 1..];
            }
            None => {
                out.push(rest);
                rest = &[];
            }
        }
    }
    out.push(rest);
    out
}

/// Bytes as text, invalid UTF-8 replaced (the parsers take `&str`).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// NUL-separated entries, empty ones dropped (argv, envp).
pub fn entries(b: &[u8]) -> impl Iterator<Item = &[u8]> {
    b.split(|&c| c == 0).filter(|e| !e.is_empty())
}
