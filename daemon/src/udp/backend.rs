//! The udp backend behind the backend seam: starts the data path, keeps
//! `flannel0`'s address and route (flannel's layout: our subnet's network
//! address as /32, one route for the whole Network through the device),
//! replaces a device deleted behind weft's back, and hands every complete
//! peer set to the forwarder.

use std::net::IpAddr;
use std::sync::Arc;

use futures::future::LocalBoxFuture;
use ipnetwork::IpNetwork;

use super::{DEVICE, DataPlane, OVERHEAD, UdpSpec};
use crate::backend::{
    Backend, BackendError, Local, Pass, PeerCodec, PeerData, Refusal, Teardown, delete_links,
    pod_mtu,
};
use crate::config::UdpConfig;
use crate::family::Family;
use crate::lease::peers::PeerSet;
use crate::metrics::Metrics;
use crate::netlink::kernel::Kernel;
use crate::netlink::{Change, Netlink, Op, Route};

/// The `backend-type` weft's udp nodes publish. flannel's publish none
/// (`""`); both are taken as udp peers.
pub const TYPE: &str = "udp";

impl From<super::UdpError> for BackendError {
    fn from(e: super::UdpError) -> Self {
        BackendError::Setup(Box::new(e))
    }
}

/// The udp backend on this node: the running data path (`None` while it
/// could not be restarted).
#[derive(Debug)]
pub struct Udp {
    spec: UdpSpec,
    dp: Option<DataPlane>,
    metrics: Arc<Metrics>,
}

/// Judges udp peers: flannel's udp backend sets no type and no data.
#[derive(Debug)]
struct Codec;

impl PeerCodec for Codec {
    fn decode(
        &self,
        _family: Family,
        backend_type: &str,
        _data: Option<&str>,
        _public_ip: Option<IpAddr>,
    ) -> Result<PeerData, Refusal> {
        match backend_type {
            TYPE | "" => Ok(PeerData::None),
            other => Err(Refusal::OtherBackend(format!(
                "is {other:?}, not {TYPE:?} (or \"\", as flannel's udp nodes publish)"
            ))),
        }
    }
}

/// The peer codec of udp nodes.
pub fn codec() -> Arc<dyn PeerCodec> {
    Arc::new(Codec)
}

/// The data path this node's udp backend runs (IPv4 only, as flannel's).
pub fn spec(cfg: &UdpConfig, local: &Local) -> Result<UdpSpec, BackendError> {
    let fam = local
        .families
        .v4
        .as_ref()
        .ok_or(BackendError::Unsupported {
            field: "EnableIPv4 false with Backend.Type udp (flannel's udp backend is IPv4 only)",
        })?;
    let (IpAddr::V4(v4), IpNetwork::V4(subnet), IpNetwork::V4(network)) =
        (fam.public_ip, fam.subnet, fam.network)
    else {
        return Err(BackendError::Unsupported {
            field: "an IPv6 public IP with Backend.Type udp",
        });
    };
    Ok(UdpSpec {
        name: DEVICE.into(),
        local: v4,
        port: cfg.port,
        subnet,
        network,
        mtu: pod_mtu(TYPE, &local.ext, local.ext.mtu, OVERHEAD, "")?,
        offload: local.udp_offload,
    })
}

impl Udp {
    /// Creates `flannel0` and its sockets, address and route (IPv4 only, as
    /// flannel's udp backend).
    pub async fn start<N: Netlink>(
        nl: &N,
        cfg: &UdpConfig,
        local: &Local,
        metrics: &Arc<Metrics>,
    ) -> Result<Udp, BackendError> {
        if local.families.v6.is_some() {
            return Err(BackendError::Unsupported {
                field: "EnableIPv6 with Backend.Type udp (flannel's udp backend is IPv4 only)",
            });
        }
        let spec = spec(cfg, local)?;
        let dp = DataPlane::start(&spec)?;
        ensure_routes(nl, dp.index, &spec).await?;
        metrics.set_udp(dp.counters());
        tracing::info!(device = %spec.name, index = dp.index, subnet = %spec.subnet, local = %spec.local, port = spec.port, "udp data path ready");
        Ok(Udp {
            spec,
            dp: Some(dp),
            metrics: metrics.clone(),
        })
    }

    /// Keeps the data path whole: on a full pass (or when it is not
    /// running), a `flannel0` that is gone or not ours any more brings a
    /// fresh device and socket; address and route are put back either way.
    async fn ensure<N: Netlink>(&mut self, nl: &N, full: bool) -> Result<(), BackendError> {
        let index = match self.dp.as_ref() {
            Some(_) if !full => return Ok(()),
            Some(dp) => nl
                .link_by_name(&self.spec.name)
                .await?
                .filter(|l| l.index == dp.index)
                .map(|l| l.index),
            None => None,
        };
        let index = match index {
            Some(i) => i,
            None => {
                if let Some(old) = self.dp.take() {
                    tracing::warn!(device = %self.spec.name, "udp backend: device gone; recreating it");
                    // Its threads let go of the socket before a new one binds.
                    let _ = tokio::task::spawn_blocking(move || old.shutdown()).await;
                }
                let dp = DataPlane::start(&self.spec)?;
                self.metrics.set_udp(dp.counters());
                self.metrics.device_created();
                let i = dp.index;
                self.dp = Some(dp);
                i
            }
        };
        ensure_routes(nl, index, &self.spec).await
    }
}

/// flannel's layout on `flannel0`: our subnet's network address as /32 and
/// one route for the whole Network through the device (idempotent).
pub async fn ensure_routes<N: Netlink>(
    nl: &N,
    index: u32,
    spec: &UdpSpec,
) -> Result<(), BackendError> {
    let addr = crate::vxlan::device_address(IpNetwork::V4(spec.subnet));
    if !nl.addresses(index).await?.contains(&addr) {
        nl.set_address(index, addr, true).await?;
    }
    let route = Op::ReplaceRoute(Route {
        link: index,
        dst: IpNetwork::V4(spec.network),
        gateway: None,
        onlink: false,
    });
    for r in nl.apply(&[route]).await {
        r?;
    }
    Ok(())
}

impl<N: Netlink> Backend<N> for Udp {
    fn type_name(&self) -> &'static str {
        TYPE
    }

    fn mtu(&self) -> u32 {
        self.spec.mtu
    }

    /// flannel's udp backend publishes no backend data.
    fn data(&self, _family: Family) -> String {
        "null".into()
    }

    fn codec(&self) -> Arc<dyn PeerCodec> {
        codec()
    }

    fn guarded_port(&self) -> Option<u16> {
        Some(self.spec.port)
    }

    fn devices(&self) -> Vec<String> {
        vec![self.spec.name.clone()]
    }

    fn contradicted_by(&self, change: &Change) -> bool {
        matches!(change, Change::LinkDeleted(n) if *n == self.spec.name)
    }

    fn reconcile<'a>(
        &'a mut self,
        nl: &'a N,
        set: &'a PeerSet,
        pass: Pass,
        _metrics: &'a Metrics,
    ) -> LocalBoxFuture<'a, bool> {
        Box::pin(async move {
            let mut ok = true;
            if pass != Pass::Partial
                && let Err(e) = self.ensure(nl, pass == Pass::Full).await
            {
                tracing::warn!(error = %crate::chain(&e), "udp backend: repairing the data path failed; will retry");
                ok = false;
            }
            if let Some(dp) = &self.dp {
                dp.set_peers(&set.peers.v4);
            }
            ok
        })
    }
}

/// `weftd cleanup`: `flannel0`, if a running weftd still holds it (the TUN
/// device is not persistent: it goes when its process does).
pub async fn teardown(nl: &Kernel) -> Teardown {
    delete_links(nl, &[DEVICE.to_string()]).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weft_and_flannel_udp_nodes_are_both_udp_peers() {
        let ip = "198.51.100.12".parse().unwrap();
        for ty in ["udp", ""] {
            assert_eq!(
                Codec.decode(Family::V4, ty, Some("null"), Some(ip)),
                Ok(PeerData::None),
                "{ty:?}"
            );
        }
        assert!(matches!(
            Codec.decode(Family::V4, "vxlan", None, Some(ip)),
            Err(Refusal::OtherBackend(_))
        ));
    }
}
