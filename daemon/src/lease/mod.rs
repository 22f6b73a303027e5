//! The Kubernetes lease source: our Node's podCIDR is our subnet; every
//! other Node with flannel's annotations is a peer.

pub mod acquire;
pub mod judge;
pub mod node;
pub mod peers;
pub mod watch;

#[cfg(test)]
mod tests;
