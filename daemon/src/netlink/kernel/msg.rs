//! rtnetlink messages from weft's domain values, and back: the building
//! and parsing half of the kernel adapter, without a socket.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};

use crate::annotations::Mac;
use crate::netlink::{Fdb, LinkInfo, Neigh, NetlinkError, Route, VxlanAttrs};

pub(super) fn request_err(op: &str, message: String, errno: Option<i32>) -> NetlinkError {
    NetlinkError::Request {
        op: op.to_string(),
        message,
        errno,
    }
}

pub(super) fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

pub(super) fn neigh_addr(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

pub(super) fn neigh_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(a) => Some(IpAddr::V4(*a)),
        NeighbourAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        // AF_BRIDGE (FDB) messages carry the remote as raw bytes.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

pub(super) fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

pub(super) fn mac_of(bytes: &[u8]) -> Option<Mac> {
    <[u8; 6]>::try_from(bytes).ok().map(Mac)
}

/// `ip neigh ... dev LINK nud permanent`
pub(super) fn neigh_msg(n: &Neigh) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family(&n.ip);
    m.header.ifindex = n.link;
    m.header.state = NeighbourState::Permanent;
    m.header.kind = RouteType::Unspec;
    m.attributes
        .push(NeighbourAttribute::Destination(neigh_addr(n.ip)));
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(n.mac.0.to_vec()));
    m
}

/// `bridge fdb ... MAC dev LINK dst IP self permanent`
pub(super) fn fdb_msg(f: &Fdb) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = f.link;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.header.kind = RouteType::Unspec;
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(f.mac.0.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(neigh_addr(f.dst)));
    m
}

/// `ip route ... DST via GW dev LINK [onlink]` in the main table.
pub(super) fn route_msg(r: &Route) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(&r.dst.ip());
    m.header.destination_prefix_length = r.dst.prefix();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    if r.onlink {
        m.header.flags = RouteFlags::Onlink;
    }
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(
            r.dst.network(),
        )));
    if let Some(gw) = r.gateway {
        m.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    m.attributes.push(RouteAttribute::Oif(r.link));
    m
}

/// `ip route add blackhole DST` in the main table.
pub(super) fn blackhole_msg(dst: IpNetwork) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = family(&dst.ip());
    m.header.destination_prefix_length = dst.prefix();
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::BlackHole;
    m.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(
            dst.network(),
        )));
    m
}

pub(super) fn link_info(m: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        vxlan: None,
    };
    let mut is_vxlan = false;
    let mut attrs = VxlanAttrs {
        vni: 0,
        port: 0,
        local: None,
        underlay: None,
        learning: true,
        gbp: false,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Address(b) => info.mac = mac_of(b),
            LinkAttribute::Mtu(mtu) => info.mtu = *mtu,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        NlLinkInfo::Kind(InfoKind::Vxlan) => is_vxlan = true,
                        NlLinkInfo::Data(InfoData::Vxlan(v)) => {
                            for x in v {
                                match x {
                                    InfoVxlan::Id(id) => attrs.vni = *id,
                                    InfoVxlan::Port(p) => attrs.port = *p,
                                    InfoVxlan::Local(a) => attrs.local = Some(IpAddr::V4(*a)),
                                    InfoVxlan::Local6(a) => attrs.local = Some(IpAddr::V6(*a)),
                                    InfoVxlan::Link(l) => attrs.underlay = Some(*l),
                                    InfoVxlan::Learning(l) => attrs.learning = *l,
                                    InfoVxlan::Gbp => attrs.gbp = true,
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if is_vxlan {
        info.vxlan = Some(attrs);
    }
    info
}

pub(super) fn attr_ip(n: &NeighbourMessage) -> Option<IpAddr> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(d) => neigh_ip(d),
        _ => None,
    })
}

pub(super) fn attr_mac(n: &NeighbourMessage) -> Option<Mac> {
    n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(b) => mac_of(b),
        _ => None,
    })
}

/// A permanent IPv4/IPv6 neighbour entry.
pub(super) fn parse_neigh(n: &NeighbourMessage) -> Option<Neigh> {
    if n.header.family == AddressFamily::Bridge || n.header.state != NeighbourState::Permanent {
        return None;
    }
    Some(Neigh {
        link: n.header.ifindex,
        ip: attr_ip(n)?,
        mac: attr_mac(n)?,
    })
}

/// An FDB entry with a unicast MAC and a remote destination.
pub(super) fn parse_fdb(n: &NeighbourMessage) -> Option<Fdb> {
    if n.header.family != AddressFamily::Bridge {
        return None;
    }
    let mac = attr_mac(n).filter(Mac::is_unicast)?;
    Some(Fdb {
        link: n.header.ifindex,
        mac,
        dst: attr_ip(n)?,
    })
}

/// A main-table route through one link that the kernel did not add itself.
pub(super) fn parse_route(r: &RouteMessage) -> Option<Route> {
    let table = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || r.header.protocol == RouteProtocol::Kernel
    {
        return None;
    }
    let link = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(o) => Some(*o),
        _ => None,
    })?;
    let dst = r
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(d) => route_ip(d),
            _ => None,
        })
        .unwrap_or(if r.header.address_family == AddressFamily::Inet6 {
            IpAddr::from([0u16; 8])
        } else {
            IpAddr::from([0u8; 4])
        });
    let gateway = r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(g) => route_ip(g),
        _ => None,
    });
    Some(Route {
        link,
        dst: IpNetwork::new(dst, r.header.destination_prefix_length).ok()?,
        gateway,
        onlink: r.header.flags.contains(RouteFlags::Onlink),
    })
}
