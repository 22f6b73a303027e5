//! weftd: the per-node agent of weft.
//!
//! Reads flannel's `net-conf.json`, takes the node's subnet from its Node's
//! podCIDR, publishes flannel's annotations, writes `subnet.env`, and keeps
//! the backend device and its per-peer entries in line with the complete set
//! of peers after every change (level-triggered).

pub mod agent;
pub mod annotations;
pub mod backend;
pub mod backends;
pub mod backoff;
pub mod cleanup;
pub mod config;
pub mod doctor;
pub mod family;
pub mod files;
pub mod firewall;
pub mod flanneld;
pub mod health;
pub mod heap;
pub mod hostgw;
pub mod iface;
pub mod install;
pub mod lease;
pub mod leftovers;
pub mod metrics;
pub mod netlink;
pub mod nft;
#[cfg(test)]
mod planner_props;
pub mod recent;
pub mod single;
#[cfg(test)]
pub(crate) mod testing;
pub mod udp;
pub mod vxlan;

/// The version every weft binary reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The error and its causes, joined.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
