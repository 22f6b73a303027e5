//! The one place backends are chosen: from net-conf.json's `Backend.Type`
//! to a running [`Backend`], and to what `weftd cleanup` removes. A new
//! backend is its module and one line in each match here.

use std::sync::Arc;

use crate::backend::{Backend, BackendError, Local, Teardown, routes};
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
