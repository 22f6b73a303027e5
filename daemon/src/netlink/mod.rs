//! The netlink port: the only code that talks to the kernel's tables. It
//! speaks domain values (a neighbour, an FDB entry, a route, a VXLAN device
//! spec); an rtnetlink adapter carries them out, [`fake::Fake`]
//! keeps them in memory for unit tests.

pub mod dry;
#[cfg(test)]
pub mod fake;
pub mod kernel;

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::annotations::Mac;

/// A permanent neighbour entry on a link (`ip neigh replace IP lladdr MAC
/// dev LINK nud permanent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neigh {
    pub link: u32,
    pub ip: IpAddr,
    pub mac: Mac,
}

/// A permanent FDB entry of a VXLAN device (`bridge fdb replace MAC dev LINK
/// dst IP self permanent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fdb {
    pub link: u32,
    pub mac: Mac,
    pub dst: IpAddr,
}

/// A route in the main table (`ip route replace DST via GW dev LINK onlink`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Route {
    pub link: u32,
    pub dst: IpNetwork,
    pub gateway: Option<IpAddr>,
    pub onlink: bool,
}

/// One change to the kernel's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    DelRoute(Route),
    DelNeigh(Neigh),
    DelFdb(Fdb),
    ReplaceNeigh(Neigh),
    ReplaceFdb(Fdb),
    ReplaceRoute(Route),
}

impl Op {
    /// Every kind's metric label.
    pub const KINDS: [&'static str; 6] = [
        "del_route",
        "del_neigh",
        "del_fdb",
        "replace_neigh",
        "replace_fdb",
        "replace_route",
    ];

    /// The metric label of this kind of operation.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::DelRoute(_) => "del_route",
            Op::DelNeigh(_) => "del_neigh",
            Op::DelFdb(_) => "del_fdb",
            Op::ReplaceNeigh(_) => "replace_neigh",
            Op::ReplaceFdb(_) => "replace_fdb",
            Op::ReplaceRoute(_) => "replace_route",
        }
    }
}

/// A change in the kernel's tables (`true`: the entry was deleted).
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    LinkDeleted(String),
    /// A neighbour added or changed (a deleted one carries no MAC).
    Neigh(Neigh),
    NeighDeleted {
        link: u32,
        ip: IpAddr,
    },
    Fdb(Fdb, bool),
    Route(Route, bool),
}

/// What the kernel holds on one link, as far as weft cares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Permanent neighbours of the link's address family.
    pub neighs: Vec<Neigh>,
    /// FDB entries with a remote destination.
    pub fdb: Vec<Fdb>,
    /// Main-table routes through the link that the kernel did not add itself.
    pub routes: Vec<Route>,
}

/// A VXLAN device as weft wants it (`ip link add NAME type vxlan id VNI
/// local LOCAL dev UNDERLAY dstport PORT nolearning`).
#[derive(Debug, Clone, PartialEq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    pub port: u16,
    pub local: IpAddr,
    pub underlay: u32,
    pub learning: bool,
    pub gbp: bool,
    pub mac: Mac,
    pub mtu: u32,
}

/// A link as the kernel reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mac: Option<Mac>,
    pub mtu: u32,
    pub up: bool,
    /// VXLAN attributes, when the link is a VXLAN device.
    pub vxlan: Option<VxlanAttrs>,
}

/// The attributes that decide whether an existing VXLAN device can be adopted.
#[derive(Debug, Clone, PartialEq)]
pub struct VxlanAttrs {
    pub vni: u32,
    pub port: u16,
    pub local: Option<IpAddr>,
    pub underlay: Option<u32>,
    pub learning: bool,
    pub gbp: bool,
}

impl VxlanSpec {
    /// Whether an existing device with `attrs` can be kept as it is (flannel
    /// also compares VNI, port, local IP, underlay and GBP; weft also insists
    /// on nolearning, which the wire contract depends on).
    pub fn matches(&self, attrs: &VxlanAttrs) -> bool {
        attrs.vni == self.vni
            && attrs.port == self.port
            && attrs.local == Some(self.local)
            && attrs.underlay == Some(self.underlay)
            && attrs.learning == self.learning
            && attrs.gbp == self.gbp
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket")]
    Connect(#[source] std::io::Error),
    #[error("{op}: {message}")]
    Request {
        op: String,
        message: String,
        errno: Option<i32>,
    },
}

impl NetlinkError {
    /// The kernel's errno for a refused request, if it was one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { errno, .. } => *errno,
            NetlinkError::Connect(e) => e.raw_os_error(),
        }
    }
}

/// What weftd needs from the kernel's tables.
#[allow(async_fn_in_trait)]
pub trait Netlink {
    /// Every link, in index order.
    async fn links(&self) -> Result<Vec<LinkInfo>, NetlinkError>;
    /// The link of the main table's default route of a family, if any.
    async fn default_route_link(&self, ipv6: bool) -> Result<Option<u32>, NetlinkError>;
    /// The link named `name`, if it exists.
    async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError>;
    /// `ip route add blackhole <dst>` in the main table unless a blackhole
    /// route for exactly `dst` is there; whether it was added (false too
    /// when another route of the same prefix is in the way, as flanneld's
    /// add then fails: the bridge's own route for a node's subnet).
    async fn ensure_blackhole(&self, dst: IpNetwork) -> Result<bool, NetlinkError>;
    /// `ip route get <dst>`: the interface the route to `dst` leaves by
    /// and its preferred source address (None: no route).
    async fn route_to(&self, dst: IpAddr) -> Result<Option<(u32, Option<IpAddr>)>, NetlinkError>;
    /// Creates a VXLAN device (deleting any link of that name first), sets
    /// its MAC and MTU and brings it up.
    async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<LinkInfo, NetlinkError>;
    /// Sets MTU and up state of an adopted link.
    async fn set_link(&self, index: u32, mtu: u32, up: bool) -> Result<(), NetlinkError>;
    /// The addresses of a link.
    async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>, NetlinkError>;
    /// Adds (`add == true`) or deletes an address of a link.
    async fn set_address(&self, index: u32, addr: IpNetwork, add: bool)
    -> Result<(), NetlinkError>;
    /// Neighbours, FDB entries and routes of a link, for one address family.
    async fn observe(&self, index: u32, ipv6: bool) -> Result<Observed, NetlinkError>;
    /// Carries out `ops`, many in flight at once; one result per op, in order.
    async fn apply(&self, ops: &[Op]) -> Vec<Result<(), NetlinkError>>;
    /// From now on, every change to the kernel's tables that may concern
    /// weft: links named in `devices` deleted, neighbour, FDB and route
    /// entries added, changed or deleted on any link (weft's own writes
    /// included: the backend decides what contradicts it).
    fn watch_changes(
        &self,
        devices: Vec<String>,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<Change>, NetlinkError>;
}
