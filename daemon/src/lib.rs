//! weftd: the per-node agent of weft.
//!
//! The agent (lease from the Node's podCIDR, VXLAN backend, level-triggered
//! reconcile) is built in the issue "weftd: subnet from the Node's podCIDR";
//! this crate currently only carries the version the binaries report.

/// The version every weft binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
