//! The faults tests inject, in one place: kill an agent, delete a device,
//! flush the ruleset, change a node's routes by hand (stopping the API
//! server is [`Lab::stop_apiserver`]). Each acts inside the lab's own
//! namespaces only.

use nix::sys::signal::Signal;

use crate::{Lab, LabError};

impl Lab {
    /// Kills `node`'s agent with SIGKILL (a crash: nothing cleaned up).
    pub fn kill_agent(&mut self, node: &str) -> Result<(), LabError> {
        self.stop_weftd(node, Signal::SIGKILL)
    }

    /// `ip link del <link>` on `node`, behind the agent's back.
    pub fn delete_link(&self, node: &str, link: &str) -> Result<(), LabError> {
        self.run(node, &["ip", "link", "del", link]).map(drop)
    }

    /// `nft flush ruleset` on `node`: every table gone, weft's included.
    pub fn flush_rules(&self, node: &str) -> Result<(), LabError> {
        self.run(node, &["nft", "flush", "ruleset"]).map(drop)
    }

    /// A shell command on `node` that changes its tables by hand (`ip
    /// route del ...`, `bridge fdb del ...`).
    pub fn by_hand(&self, node: &str, script: &str) -> Result<(), LabError> {
        self.run(node, &["bash", "-c", script]).map(drop)
    }
}
