//! `weftd cleanup`: removes from a node what weftd put there, for uninstall
//! (the chart's uninstall path runs it on every node): weft's nftables
//! table, what the backend put there (its devices, whose routes, neighbour
//! and FDB entries go with them; host-gw's routes), subnet.env and the
//! conflist. The `weft` plugin binary and the
//! plugin's saved configs stay: pods still running must remain removable.
//! Everything is attempted; the first failure is reported at the end.

use std::path::Path;

use crate::config::{DEFAULT_VNI, NetConfig};
use crate::netlink::kernel::Kernel;
use crate::nft::kernel::Nft;

/// The conflist `weftd install-cni` writes.
pub const CONFLIST: &str = "10-weft.conflist";

#[derive(Debug, thiserror::Error)]
#[error("cleanup: {what}: {why}")]
pub struct CleanupError {
    what: String,
    why: String,
}

/// Removes weft's state; what was removed, one line each.
pub async fn run(
    net_conf: &Path,
    subnet_file: &Path,
    conf_dir: &Path,
) -> Result<Vec<String>, CleanupError> {
    let mut removed = Vec::new();
    let mut first_err: Option<CleanupError> = None;
    let mut fail = |what: &str, why: String| {
        tracing::warn!(what, why, "cleanup step failed");
        first_err.get_or_insert(CleanupError {
            what: what.into(),
            why,
        });
    };
    match Nft::open().and_then(|mut n| n.delete_table()) {
        Ok(true) => removed.push(format!("nftables table {}", crate::nft::TABLE)),
        Ok(false) => {}
        Err(e) => fail("deleting the nftables table", e.to_string()),
    }
    // What the configured backend put there (with the configuration gone:
    // flannel's default VXLAN devices).
    let cfg = NetConfig::load(net_conf);
    match Kernel::connect() {
        Ok(nl) => {
            let done = match &cfg {
                Ok(cfg) => crate::backends::teardown(&nl, cfg).await,
                Err(_) => crate::vxlan::delete_devices(&nl, DEFAULT_VNI).await,
            };
            removed.extend(done.removed);
            for (what, why) in done.failed {
                fail(&what, why);
            }
        }
        Err(e) => fail("opening a netlink socket", e.to_string()),
    }
    for file in [subnet_file.to_path_buf(), conf_dir.join(CONFLIST)] {
        match std::fs::remove_file(&file) {
            Ok(()) => removed.push(format!("file {}", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => fail(&format!("removing {}", file.display()), e.to_string()),
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

/// `weftd cleanup --flannel`: removes what flanneld left on this node (its
/// iptables chains and the jumps to them, its nftables tables; see
/// [`crate::leftovers`]) and nothing else, weft's own state included; what
/// was removed, one line each.
pub fn flannel() -> Result<Vec<String>, CleanupError> {
    let err = |what: &str| {
        let what = what.to_string();
        move |why: String| CleanupError { what, why }
    };
    let mut nft = Nft::open().map_err(|e| err("opening nftables")(crate::chain(&e)))?;
    let found = crate::leftovers::find(&mut nft)
        .map_err(|e| err("reading flanneld's rules")(crate::chain(&e)))?;
    if let Some(why) = &found.legacy_unknown {
        tracing::warn!("legacy iptables not checked: {why}");
    }
    crate::leftovers::remove(&mut nft, &found).map_err(err("removing flanneld's rules"))?;
    Ok(found.describe())
}
