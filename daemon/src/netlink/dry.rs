//! A netlink port that reads the kernel and writes nothing: every write a
//! backend asks for is kept instead, so running a backend's start and a full
//! reconcile through it tells what weftd would change on this node (the
//! doctor's view of the data plane).

use std::cell::RefCell;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::{Change, LinkInfo, Netlink, NetlinkError, Observed, Op, VxlanSpec};

/// Links a dry run "created" get indexes from here on: far above any the
/// kernel hands out, so reading them finds nothing.
const FIRST_DRY_INDEX: u32 = 0x7fff_0000;

/// One write that was not made.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// A device created (it is missing, or cannot be adopted as it is).
    CreateVxlan(VxlanSpec),
    /// An adopted link's MTU or up state changed.
    SetLink { index: u32, mtu: u32, up: bool },
    /// An address added (`true`) or removed.
    Address {
        index: u32,
        addr: IpNetwork,
        add: bool,
    },
    /// A route, neighbour or FDB entry replaced or deleted.
    Entry(Op),
}

/// Reads through `inner`; keeps writes in [`DryRun::writes`].
#[derive(Debug)]
pub struct DryRun<N> {
    inner: N,
    writes: RefCell<Vec<Write>>,
    created: RefCell<Vec<u32>>,
}

impl<N: Netlink> DryRun<N> {
    pub fn new(inner: N) -> DryRun<N> {
        DryRun {
            inner,
            writes: RefCell::new(Vec::new()),
            created: RefCell::new(Vec::new()),
        }
    }

    /// The port it reads through.
    pub fn inner(&self) -> &N {
        &self.inner
    }

    /// The writes asked for so far, in order.
    pub fn writes(&self) -> Vec<Write> {
        self.writes.borrow().clone()
    }

    fn keep(&self, w: Write) {
        self.writes.borrow_mut().push(w);
    }

    fn is_dry(&self, index: u32) -> bool {
        self.created.borrow().contains(&index)
    }
}

impl<N: Netlink> Netlink for DryRun<N> {
    async fn links(&self) -> Result<Vec<LinkInfo>, NetlinkError> {
        self.inner.links().await
    }

    async fn default_route_link(&self, ipv6: bool) -> Result<Option<u32>, NetlinkError> {
        self.inner.default_route_link(ipv6).await
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        self.inner.link_by_name(name).await
    }

    /// Nothing is added: the doctor does not check blackhole routes.
    async fn ensure_blackhole(&self, _dst: IpNetwork) -> Result<bool, NetlinkError> {
        Ok(false)
    }

    async fn route_to(&self, dst: IpAddr) -> Result<Option<(u32, Option<IpAddr>)>, NetlinkError> {
        self.inner.route_to(dst).await
    }

    async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<LinkInfo, NetlinkError> {
        self.keep(Write::CreateVxlan(spec.clone()));
        let index = FIRST_DRY_INDEX + self.created.borrow().len() as u32;
        self.created.borrow_mut().push(index);
        Ok(LinkInfo {
            index,
            name: spec.name.clone(),
            mac: Some(spec.mac),
            mtu: spec.mtu,
            up: true,
            vxlan: None,
        })
    }

    async fn set_link(&self, index: u32, mtu: u32, up: bool) -> Result<(), NetlinkError> {
        self.keep(Write::SetLink { index, mtu, up });
        Ok(())
    }

    async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>, NetlinkError> {
        if self.is_dry(index) {
            return Ok(Vec::new());
        }
        self.inner.addresses(index).await
    }

    async fn set_address(
        &self,
        index: u32,
        addr: IpNetwork,
        add: bool,
    ) -> Result<(), NetlinkError> {
        self.keep(Write::Address { index, addr, add });
        Ok(())
    }

    async fn observe(&self, index: u32, ipv6: bool) -> Result<Observed, NetlinkError> {
        if self.is_dry(index) {
            return Ok(Observed::default());
        }
        self.inner.observe(index, ipv6).await
    }

    async fn apply(&self, ops: &[Op]) -> Vec<Result<(), NetlinkError>> {
        ops.iter()
            .map(|op| {
                self.keep(Write::Entry(*op));
                Ok(())
            })
            .collect()
    }

    fn watch_changes(
        &self,
        _devices: Vec<String>,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<Change>, NetlinkError> {
        Err(NetlinkError::Request {
            op: "watching kernel changes".into(),
            message: "not in a dry run".into(),
            errno: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::Route;
    use crate::netlink::fake::Fake;
    use crate::testing::{add_eth0, block_on};

    #[test]
    fn writes_are_kept_and_the_kernel_is_left_alone() {
        let nl = Fake::new();
        let eth0 = block_on(add_eth0(&nl));
        let dry = DryRun::new(nl);
        let route = Op::ReplaceRoute(Route {
            link: eth0,
            dst: "10.244.3.0/24".parse().unwrap(),
            gateway: Some("198.51.100.13".parse().unwrap()),
            onlink: false,
        });
        let results = block_on(dry.apply(&[route]));
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(dry.writes(), vec![Write::Entry(route)]);
        let seen = block_on(dry.inner().observe(eth0, false)).unwrap();
        assert!(
            seen.routes.iter().all(|r| r.dst.prefix() == 0),
            "only eth0's default route: {seen:?}"
        );
    }
}
