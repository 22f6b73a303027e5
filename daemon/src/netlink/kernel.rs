//! The real kernel, over rtnetlink. Writes are batched: `apply` sends
//! [`batch::CHUNK`] requests per system call on a socket of its own, off
//! the async thread, instead of one round trip per entry (flannel opens a
//! fresh socket and waits for each of its three requests per peer). Dumps
//! are read on that socket too, each answer parsed as it arrives.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use ipnetwork::IpNetwork;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::Handle;

use super::{Change, LinkInfo, Netlink, NetlinkError, Observed, Op, VxlanSpec};

const ENOENT: i32 = 2;
const ESRCH: i32 = 3;
const ENODEV: i32 = 19;
const EEXIST: i32 = 17;
const ENETUNREACH: i32 = 101;
const EHOSTUNREACH: i32 = 113;

mod batch;
mod msg;

/// Up to this many writes go out on the calling thread (see `apply`).
const INLINE_WRITES: usize = 16;

use batch::{Batcher, Request};
use msg::*;

/// The kernel's tables through one rtnetlink socket.
#[derive(Debug, Clone)]
pub struct Kernel {
    handle: Handle,
    /// The batched writes' socket.
    batch: Arc<Mutex<Batcher>>,
}

impl Kernel {
    /// Opens the socket; its connection task runs on the current tokio runtime.
    /// Deletes the link named `name`; whether it existed.
    pub async fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(old) = self.link_by_name(name).await? else {
            return Ok(false);
        };
        let mut m = LinkMessage::default();
        m.header.index = old.index;
        self.ack(
            &format!("delete link {name}"),
            RouteNetlinkMessage::DelLink(m),
            0,
        )
        .await?;
        Ok(true)
    }

    pub fn connect() -> Result<Kernel, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        let batch = Batcher::open().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Kernel {
            handle,
            batch: Arc::new(Mutex::new(batch)),
        })
    }

    /// Sends `msg` and waits for its ack.
    async fn ack(
        &self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<(), NetlinkError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle.clone();
        let mut resp = handle
            .request(req)
            .map_err(|e| request_err(op, e.to_string(), None))?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(e) = m.payload
                && let Some(code) = e.code
            {
                let errno = -code.get();
                return Err(request_err(op, e.to_io().to_string(), Some(errno)));
            }
        }
        Ok(())
    }

    /// Sends a dump request on the batch socket, off the async thread, and
    /// keeps what `keep` makes of each answer as it arrives: a dump of
    /// thousands of routes is never held whole, nor queued.
    async fn dump<T: Send + 'static>(
        &self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        mut keep: impl FnMut(RouteNetlinkMessage) -> Option<T> + Send + 'static,
    ) -> Result<Vec<T>, NetlinkError> {
        let batch = self.batch.clone();
        let dumped = tokio::task::spawn_blocking(move || {
            let mut b = match batch.lock() {
                Ok(b) => b,
                Err(p) => p.into_inner(),
            };
            let mut out = Vec::new();
            b.dump(msg, &mut |m| out.extend(keep(m))).map(|()| out)
        })
        .await;
        match dumped {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(errno)) => Err(request_err(
                op,
                std::io::Error::from_raw_os_error(errno).to_string(),
                Some(errno),
            )),
            Err(e) => Err(request_err(op, e.to_string(), None)),
        }
    }

    /// Sends a request with `flags` and collects the answers.
    async fn collect(
        &self,
        op: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | flags;
        let mut handle = self.handle.clone();
        let resp = handle
            .request(req)
            .map_err(|e| request_err(op, e.to_string(), None))?;
        resp.map(|m| match m.payload {
            NetlinkPayload::InnerMessage(inner) => Ok(Some(inner)),
            NetlinkPayload::Error(e) if e.code.is_some() => Err(request_err(
                op,
                e.to_io().to_string(),
                e.code.map(|c| -c.get()),
            )),
            _ => Ok(None),
        })
        .try_filter_map(|m| async move { Ok(m) })
        .try_collect()
        .await
    }
}

/// The request that carries out `op`.
fn request(op: &Op) -> Request {
    let (msg, flags) = match *op {
        Op::ReplaceNeigh(n) => (
            RouteNetlinkMessage::NewNeighbour(neigh_msg(&n)),
            NLM_F_CREATE | NLM_F_REPLACE,
        ),
        Op::DelNeigh(n) => (RouteNetlinkMessage::DelNeighbour(neigh_msg(&n)), 0),
        Op::ReplaceFdb(f) => (
            RouteNetlinkMessage::NewNeighbour(fdb_msg(&f)),
            NLM_F_CREATE | NLM_F_REPLACE,
        ),
        Op::DelFdb(f) => (RouteNetlinkMessage::DelNeighbour(fdb_msg(&f)), 0),
        Op::ReplaceRoute(r) => (
            RouteNetlinkMessage::NewRoute(route_msg(&r)),
            NLM_F_CREATE | NLM_F_REPLACE,
        ),
        Op::DelRoute(r) => (RouteNetlinkMessage::DelRoute(route_msg(&r)), 0),
    };
    Request { msg, flags }
}

/// `op`'s result from the kernel's answer: deleting what is already gone
/// is fine.
fn outcome(op: &Op, answer: batch::Answer) -> Result<(), NetlinkError> {
    let deletes = matches!(op, Op::DelNeigh(_) | Op::DelFdb(_) | Op::DelRoute(_));
    match answer {
        Ok(()) => Ok(()),
        Err(ENOENT | ESRCH) if deletes => Ok(()),
        Err(errno) => Err(request_err(
            &format!("{op:?}"),
            std::io::Error::from_raw_os_error(errno).to_string(),
            Some(errno),
        )),
    }
}

impl Netlink for Kernel {
    async fn links(&self) -> Result<Vec<LinkInfo>, NetlinkError> {
        let mut links = self
            .dump(
                "dump links",
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                |m| match m {
                    RouteNetlinkMessage::NewLink(l) => Some(link_info(&l)),
                    _ => None,
                },
            )
            .await?;
        links.sort_by_key(|l| l.index);
        Ok(links)
    }

    async fn default_route_link(&self, ipv6: bool) -> Result<Option<u32>, NetlinkError> {
        let mut req = RouteMessage::default();
        req.header.address_family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let oifs = self
            .dump(
                "dump routes",
                RouteNetlinkMessage::GetRoute(req),
                |m| match m {
                    RouteNetlinkMessage::NewRoute(r)
                        if r.header.destination_prefix_length == 0
                            && r.header.table == RouteHeader::RT_TABLE_MAIN =>
                    {
                        r.attributes.iter().find_map(|a| match a {
                            RouteAttribute::Oif(o) => Some(*o),
                            _ => None,
                        })
                    }
                    _ => None,
                },
            )
            .await?;
        Ok(oifs.first().copied())
    }

    async fn ensure_blackhole(&self, dst: IpNetwork) -> Result<bool, NetlinkError> {
        let mut req = RouteMessage::default();
        req.header.address_family = if dst.is_ipv6() {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let found = self
            .dump(
                "dump routes",
                RouteNetlinkMessage::GetRoute(req),
                move |m| match m {
                    RouteNetlinkMessage::NewRoute(r)
                        if r.header.kind == RouteType::BlackHole
                            && r.header.table == RouteHeader::RT_TABLE_MAIN
                            && r.header.destination_prefix_length == dst.prefix()
                            && r.attributes.iter().any(|a| {
                                matches!(a, RouteAttribute::Destination(d) if route_ip(d) == Some(dst.network()))
                            }) =>
                    {
                        Some(())
                    }
                    _ => None,
                },
            )
            .await?;
        if !found.is_empty() {
            return Ok(false);
        }
        let desc = format!("add blackhole route {dst}");
        match self
            .ack(
                &desc,
                RouteNetlinkMessage::NewRoute(blackhole_msg(dst)),
                NLM_F_CREATE | NLM_F_EXCL,
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn route_to(&self, dst: IpAddr) -> Result<Option<(u32, Option<IpAddr>)>, NetlinkError> {
        let mut req = RouteMessage::default();
        req.header.address_family = if dst.is_ipv6() {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        req.header.destination_prefix_length = if dst.is_ipv6() { 128 } else { 32 };
        req.attributes
            .push(RouteAttribute::Destination(RouteAddress::from(dst)));
        let op = format!("get route to {dst}");
        let msgs = match self
            .collect(&op, RouteNetlinkMessage::GetRoute(req), 0)
            .await
        {
            Ok(m) => m,
            Err(e) if matches!(e.errno(), Some(ENETUNREACH | EHOSTUNREACH)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(msgs.iter().find_map(|m| match m {
            RouteNetlinkMessage::NewRoute(r) => {
                let oif = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::Oif(o) => Some(*o),
                    _ => None,
                })?;
                let src = r.attributes.iter().find_map(|a| match a {
                    RouteAttribute::PrefSource(s) => route_ip(s),
                    _ => None,
                });
                Some((oif, src))
            }
            _ => None,
        }))
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        let mut req = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match req.try_next().await {
            Ok(Some(m)) => Ok(Some(link_info(&m))),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.is_some_and(|c| -c.get() == ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(request_err(
                &format!("get link {name}"),
                e.to_string(),
                None,
            )),
        }
    }

    async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<LinkInfo, NetlinkError> {
        self.delete_link(&spec.name).await?;
        let mut data = vec![
            InfoVxlan::Id(spec.vni),
            InfoVxlan::Link(spec.underlay),
            match spec.local {
                IpAddr::V4(a) => InfoVxlan::Local(a),
                IpAddr::V6(a) => InfoVxlan::Local6(a),
            },
            InfoVxlan::Port(spec.port),
            InfoVxlan::Learning(spec.learning),
            InfoVxlan::Ttl(0),
            InfoVxlan::Tos(0),
        ];
        if spec.gbp {
            data.push(InfoVxlan::Gbp);
        }
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::IfName(spec.name.clone()));
        m.attributes.push(LinkAttribute::Mtu(spec.mtu));
        m.attributes
            .push(LinkAttribute::Address(spec.mac.0.to_vec()));
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            NlLinkInfo::Kind(InfoKind::Vxlan),
            NlLinkInfo::Data(InfoData::Vxlan(data)),
        ]));
        self.ack(
            &format!("create vxlan device {}", spec.name),
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .await?;
        self.link_by_name(&spec.name).await?.ok_or_else(|| {
            request_err(
                &format!("create vxlan device {}", spec.name),
                "the device is gone right after its creation".into(),
                None,
            )
        })
    }

    async fn set_link(&self, index: u32, mtu: u32, up: bool) -> Result<(), NetlinkError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if up {
            m.header.flags = LinkFlags::Up;
        }
        m.header.change_mask = LinkFlags::Up;
        m.attributes.push(LinkAttribute::Mtu(mtu));
        self.ack(
            &format!("set link {index}"),
            RouteNetlinkMessage::SetLink(m),
            0,
        )
        .await
    }

    async fn addresses(&self, index: u32) -> Result<Vec<IpNetwork>, NetlinkError> {
        self.dump(
            "dump addresses",
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            move |m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    let ip = a.attributes.iter().find_map(|x| match x {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    });
                    let ip = ip.or_else(|| {
                        a.attributes.iter().find_map(|x| match x {
                            AddressAttribute::Address(ip) => Some(*ip),
                            _ => None,
                        })
                    })?;
                    IpNetwork::new(ip, a.header.prefix_len).ok()
                }
                _ => None,
            },
        )
        .await
    }

    async fn set_address(
        &self,
        index: u32,
        addr: IpNetwork,
        add: bool,
    ) -> Result<(), NetlinkError> {
        let mut m = AddressMessage::default();
        m.header.family = family(&addr.ip());
        m.header.prefix_len = addr.prefix();
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.ip()));
        m.attributes.push(AddressAttribute::Address(addr.ip()));
        let op = format!(
            "{} address {addr} on link {index}",
            if add { "add" } else { "delete" }
        );
        if add {
            self.ack(
                &op,
                RouteNetlinkMessage::NewAddress(m),
                NLM_F_CREATE | NLM_F_REPLACE,
            )
            .await
        } else {
            match self.ack(&op, RouteNetlinkMessage::DelAddress(m), 0).await {
                Err(e) if matches!(e.errno(), Some(ENOENT | 99)) => Ok(()),
                other => other,
            }
        }
    }

    async fn observe(&self, index: u32, ipv6: bool) -> Result<Observed, NetlinkError> {
        let fam = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        let mut neigh_req = NeighbourMessage::default();
        neigh_req.header.family = fam;
        let mut fdb_req = NeighbourMessage::default();
        fdb_req.header.family = AddressFamily::Bridge;
        let mut route_req = RouteMessage::default();
        route_req.header.address_family = fam;
        // Only this device's entries are kept, as the answers arrive.
        let neighs = self.dump(
            "dump neighbours",
            RouteNetlinkMessage::GetNeighbour(neigh_req),
            move |m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => parse_neigh(&n).filter(|n| n.link == index),
                _ => None,
            },
        );
        let fdb = self.dump(
            "dump fdb",
            RouteNetlinkMessage::GetNeighbour(fdb_req),
            move |m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => parse_fdb(&n).filter(|f| f.link == index),
                _ => None,
            },
        );
        let routes = self.dump(
            "dump routes",
            RouteNetlinkMessage::GetRoute(route_req),
            move |m| match m {
                RouteNetlinkMessage::NewRoute(r) => parse_route(&r).filter(|r| r.link == index),
                _ => None,
            },
        );
        let (neighs, fdb, routes) = futures::try_join!(neighs, fdb, routes)?;
        Ok(Observed {
            neighs,
            fdb,
            routes,
        })
    }

    async fn apply(&self, ops: &[Op]) -> Vec<Result<(), NetlinkError>> {
        if ops.is_empty() {
            return Vec::new();
        }
        let requests: Vec<Request> = ops.iter().map(request).collect();
        let batch = self.batch.clone();
        let write = move || match batch.lock() {
            Ok(mut b) => b.write(requests),
            Err(p) => p.into_inner().write(requests),
        };
        // A Node event's few writes are done here: the kernel has acked
        // them when `sendmsg` returns, and handing them to another thread
        // and back would cost two wake-ups, each a chance to wait for a
        // busy core.
        let written = if ops.len() <= INLINE_WRITES {
            Ok(write())
        } else {
            tokio::task::spawn_blocking(write).await
        };
        match written {
            Ok(answers) => ops
                .iter()
                .zip(answers)
                .map(|(op, a)| outcome(op, a))
                .collect(),
            Err(e) => ops
                .iter()
                .map(|op| Err(request_err(&format!("{op:?}"), e.to_string(), None)))
                .collect(),
        }
    }

    fn watch_changes(
        &self,
        devices: Vec<String>,
    ) -> Result<tokio::sync::mpsc::UnboundedReceiver<Change>, NetlinkError> {
        watch_changes(devices)
    }
}

/// Watches the kernel's tables for changes that may concern weft: links
/// deleted (by name), and neighbour, FDB and route entries added, changed or
/// deleted on any link (the reconcile loop decides whether one is its own).
/// weft thus repairs what someone else changed at once, without polling.
fn watch_changes(
    names: Vec<String>,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<Change>, NetlinkError> {
    use rtnetlink::constants::{RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH};
    use rtnetlink::sys::{AsyncSocket, SocketAddr};
    let (mut conn, _handle, mut messages) =
        rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
    let groups = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;
    conn.socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, groups))
        .map_err(NetlinkError::Connect)?;
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let change = match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(l)) => {
                    let name = link_info(&l).name;
                    names.contains(&name).then_some(Change::LinkDeleted(name))
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)) => {
                    parse_route(&r).map(|r| Change::Route(r, false))
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r)) => {
                    parse_route(&r).map(|r| Change::Route(r, true))
                }
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(n)) => parse_fdb(&n)
                    .map(|f| Change::Fdb(f, false))
                    .or_else(|| parse_neigh(&n).map(Change::Neigh)),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelNeighbour(n)) => {
                    // A deleted neighbour comes without its MAC (the kernel
                    // marks it failed before telling).
                    parse_fdb(&n).map(|f| Change::Fdb(f, true)).or_else(|| {
                        (n.header.family != AddressFamily::Bridge).then_some(())?;
                        Some(Change::NeighDeleted {
                            link: n.header.ifindex,
                            ip: attr_ip(&n)?,
                        })
                    })
                }
                _ => None,
            };
            if let Some(c) = change
                && tx.send(c).is_err()
            {
                return;
            }
        }
    });
    Ok(rx)
}
