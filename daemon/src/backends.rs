//! The one place backends are chosen: from net-conf.json's `Backend.Type`
//! to a running [`Backend`], and to what `weftd cleanup` removes. A new
//! backend is its module and one line in each match here.

use std::sync::Arc;

use crate::backend::{Backend, BackendError, Local, Teardown, delete_links, routes};
use crate::config::{BackendConfig, NetConfig};
use crate::metrics::Metrics;
use crate::netlink::Netlink;
use crate::netlink::kernel::Kernel;
use crate::{hostgw, udp, vxlan};

/// Starts the configured backend: creates or adopts what it needs on the
/// node. The one place backends are chosen.
pub async fn start<N: Netlink + 'static>(
    nl: &N,
    cfg: &BackendConfig,
    local: &Local,
    metrics: &Arc<Metrics>,
) -> Result<Box<dyn Backend<N>>, BackendError> {
    Ok(match cfg {
        BackendConfig::Vxlan(c) => Box::new(vxlan::Vxlan::start(nl, c, local, metrics).await?),
        BackendConfig::Udp(c) => Box::new(udp::Udp::start(nl, c, local, metrics).await?),
        BackendConfig::HostGw => Box::new(hostgw::HostGw::start(nl, local).await?),
    })
}

/// Removes what the configured backend put on this node (`weftd cleanup`);
/// what was removed, one line each, and the failures.
pub async fn teardown(nl: &Kernel, cfg: &NetConfig) -> Teardown {
    match &cfg.backend {
        BackendConfig::Vxlan(c) => vxlan::teardown(nl, c, cfg).await,
        BackendConfig::Udp(_) => udp::teardown(nl).await,
        BackendConfig::HostGw => routes::teardown(nl, cfg).await,
    }
}

/// What backends other than the configured one left on this node, after a
/// cluster switched backend (vxlan to udp or host-gw, or another VNI):
/// their VXLAN devices (the routes, neighbours and FDB entries on them go
/// too), and host-gw's routes where neither host-gw nor DirectRouting runs
/// (on any link but the backend's own devices). Left in place they outrank
/// the running backend's routes: traffic leaves by one backend and comes
/// back by the other. Removed when weftd starts and by `weftd cleanup`.
/// (udp's flannel0 goes with the process holding it.)
pub async fn other_leftovers(nl: &Kernel, cfg: &NetConfig) -> Teardown {
    let mut done = Teardown::default();
    let own_vni = match &cfg.backend {
        BackendConfig::Vxlan(c) => Some(c.vni),
        _ => None,
    };
    match nl.links().await {
        Ok(links) => {
            let stale: Vec<String> = links
                .iter()
                .filter(|l| l.vxlan.is_some())
                .filter(|l| vxlan::vni_of_device(&l.name).is_some_and(|v| Some(v) != own_vni))
                .map(|l| l.name.clone())
                .collect();
            done.extend(delete_links(nl, &stale).await);
        }
        Err(e) => done.failed.push(("listing links".into(), e.to_string())),
    }
    let routes_are_ours = match &cfg.backend {
        BackendConfig::HostGw => true,
        BackendConfig::Vxlan(c) => c.direct_routing,
        BackendConfig::Udp(_) => false,
    };
    if !routes_are_ours {
        let backend_device =
            |name: &str| vxlan::vni_of_device(name).is_some() || name == udp::DEVICE;
        done.extend(routes::teardown_on(nl, cfg, |name| !backend_device(name)).await);
    }
    done
}

/// Logs what [`other_leftovers`] removed and what it could not.
pub async fn remove_other_leftovers(nl: &Kernel, cfg: &NetConfig) {
    let done = other_leftovers(nl, cfg).await;
    for what in &done.removed {
        tracing::info!(
            backend = cfg.backend.type_name(),
            "removed what another backend left: {what}"
        );
    }
    for (what, why) in &done.failed {
        tracing::warn!("removing what another backend left: {what}: {why}");
    }
}
