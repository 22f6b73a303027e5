//! The agent: set up once (config, lease, interface, device, annotations,
//! subnet.env), then keep the kernel in line with the complete peer set,
//! level-triggered: every peer-set change, every deletion of our device and
//! every resync tick runs the same reconcile against the whole desired
//! state; failures are retried with backoff and never stop the loop.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use crate::annotations::{AnnotationError, Mac, Names, VxlanData};
use crate::config::{BackendConfig, ConfigError, NetConfig};
use crate::files::{FileError, SubnetEnv};
use crate::firewall::{self, Firewall};
use crate::health::{self, HealthError};
use crate::iface::{self, IfaceError};
use crate::lease::acquire::{self, LeaseError};
use crate::lease::node::SlimNode;
use crate::lease::peers::{Context, Family, PeerBackend, PeerSet};
use crate::lease::watch;
use crate::metrics::Metrics;
use crate::netlink::kernel::{self, Kernel};
use crate::netlink::{Change, NetlinkError, VxlanSpec};
use crate::nft::{self, kernel::NftError};
use crate::udp::{self, DataPlane, UdpError, UdpSpec};
use crate::vxlan::direct::{self, Direct};
use crate::vxlan::{self, Device, DeviceConfig, VxlanError};

/// The smallest pod MTU weft accepts (IPv4's minimum datagram size).
const MIN_POD_MTU: u32 = 576;

/// Everything the flags say.
#[derive(Debug, Clone)]
pub struct Options {
    pub node_name: String,
    pub kubeconfig: Option<PathBuf>,
    pub net_config_path: PathBuf,
    pub subnet_file: PathBuf,
    pub iface: iface::Selection,
    pub public_ip: Option<IpAddr>,
    pub public_ipv6: Option<IpAddr>,
    pub ip_masq: bool,
    pub healthz_addr: Option<SocketAddr>,
    pub annotation_prefix: String,
    pub resync: Duration,
    /// Drop traffic to the backend's UDP port from anything but a peer.
    pub allow_list: bool,
    /// Seconds between reads of weft's nftables table (repairs edits).
    pub rules_resync: Duration,
    /// The udp backend asks the kernel for TUN offload, UDP GSO and GRO.
    pub udp_offload: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("net-conf.json: {field} is not supported by this version of weft yet")]
    UnsupportedOption { field: &'static str },
    #[error("--kube-annotation-prefix")]
    Prefix(#[source] AnnotationError),
    #[error("connecting to the Kubernetes API ({how})")]
    Client {
        how: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Health(#[from] HealthError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Iface(#[from] IfaceError),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Vxlan(#[from] VxlanError),
    #[error(transparent)]
    Files(#[from] FileError),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error(transparent)]
    Udp(#[from] UdpError),
    #[error("--public-ip{v6} {ip} is not an IPv{n} address", v6 = if *.ipv6 { "v6" } else { "" }, n = if *.ipv6 { 6 } else { 4 })]
    PublicIpFamily { ip: IpAddr, ipv6: bool },
    #[error(
        "the underlay MTU {mtu} of {iface} leaves no room for VXLAN (pods need at least 576 bytes): set Backend.MTU or choose another --iface"
    )]
    MtuTooSmall { iface: String, mtu: u32 },
    #[error("generating a VTEP MAC")]
    Mac(#[source] std::io::Error),
}

async fn client(opts: &Options) -> Result<Client, AgentError> {
    match &opts.kubeconfig {
        Some(path) => {
            let how = format!("kubeconfig {}", path.display());
            let err = |e: Box<dyn std::error::Error + Send + Sync>| AgentError::Client {
                how: how.clone(),
                source: e,
            };
            let kc = Kubeconfig::read_from(path).map_err(|e| err(Box::new(e)))?;
            let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| err(Box::new(e)))?;
            Client::try_from(cfg).map_err(|e| err(Box::new(e)))
        }
        None => Client::try_default().await.map_err(|e| AgentError::Client {
            how: "in-cluster configuration or $KUBECONFIG".into(),
            source: Box::new(e),
        }),
    }
}

/// Runs until `shutdown` resolves; leaves the data plane in place.
pub async fn run(opts: Options, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let cfg = NetConfig::load(&opts.net_config_path)?;
    // The udp backend runs the same loop with no VXLAN device.
    let (vx, udp_port) = match &cfg.backend {
        BackendConfig::Vxlan(v) => (Some(v.clone()), None),
        BackendConfig::Udp(u) => {
            if cfg.ipv6.is_some() {
                return Err(AgentError::UnsupportedOption {
                    field: "EnableIPv6 with Backend.Type udp (flannel's udp backend is IPv4 only)",
                });
            }
            (None, Some(u.port))
        }
    };
    let names = Names::new(&opts.annotation_prefix).map_err(AgentError::Prefix)?;
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = opts.healthz_addr {
        health::serve(addr, metrics.clone()).await?;
    }
    let api: Api<SlimNode> = Api::all(client(&opts).await?);

    let node = tokio::select! {
        n = acquire::wait_for_pod_cidr(&api, &opts.node_name) => n,
        () = &mut shutdown => return Ok(()),
    };
    let subnets = acquire::own_subnets(&cfg, &node)?;
    let nl = Kernel::connect()?;
    let internal: Vec<IpAddr> = node.internal_ips().filter_map(|s| s.parse().ok()).collect();
    let ext = iface::select(&nl, &opts.iface, &internal, cfg.ipv4.is_none()).await?;
    tracing::info!(iface = %ext.name, mtu = ext.mtu, "external interface chosen");
    // DirectRouting: peers on the external interface's own subnets are
    // reached without VXLAN.
    let mut direct = match &vx {
        Some(v) if v.direct_routing => {
            use crate::netlink::Netlink;
            let onlink: Vec<IpNetwork> = nl
                .addresses(ext.index)
                .await?
                .into_iter()
                .filter_map(|a| IpNetwork::new(a.network(), a.prefix()).ok())
                .collect();
            tracing::info!(iface = %ext.name, ?onlink, "DirectRouting: peers on these prefixes are routed without VXLAN");
            Some(Direct {
                link: ext.index,
                onlink,
                known: BTreeMap::new(),
            })
        }
        _ => None,
    };

    // Per family: the device, and what to publish.
    let mut devices: Vec<Device> = Vec::new();
    // The udp backend: what it needs, and the running data path (None
    // while it could not be restarted).
    let mut udp_spec: Option<UdpSpec> = None;
    let mut udp_dp: Option<DataPlane> = None;
    let mut wanted = BTreeMap::from([
        (
            names.backend_type.clone(),
            if vx.is_some() { "vxlan" } else { "udp" }.to_string(),
        ),
        (names.subnet_manager.clone(), "true".to_string()),
    ]);
    let networks = [&cfg.ipv4, &cfg.ipv6];
    for (i, subnet) in subnets.iter().enumerate() {
        let (Some(subnet), Some(fam)) = (subnet, networks[i]) else {
            continue;
        };
        let ipv6 = i == 1;
        let (flag, node_key, over_key, data_key, ip_key) = if ipv6 {
            (
                opts.public_ipv6,
                &names.node_public_ipv6,
                &names.public_ipv6_overwrite,
                &names.backend_v6_data,
                &names.public_ipv6,
            )
        } else {
            (
                opts.public_ip,
                &names.node_public_ip,
                &names.public_ip_overwrite,
                &names.backend_data,
                &names.public_ip,
            )
        };
        let local = match flag.or_else(|| node.annotation(node_key).and_then(|s| s.parse().ok())) {
            Some(ip) if ip.is_ipv6() != ipv6 => {
                return Err(AgentError::PublicIpFamily { ip, ipv6 });
            }
            Some(ip) => ip,
            None => ext.ip(ipv6)?,
        };
        let advertised = node
            .annotation(over_key)
            .and_then(|s| s.parse::<IpAddr>().ok())
            .filter(|ip| ip.is_ipv6() == ipv6)
            .unwrap_or(local);
        wanted.insert(ip_key.clone(), advertised.to_string());
        let Some(vx) = &vx else {
            // The udp backend (IPv4 only): a TUN device and a socket.
            let (IpAddr::V4(v4), IpNetwork::V4(sub), IpNetwork::V4(net)) =
                (local, *subnet, fam.network)
            else {
                continue;
            };
            let mtu = ext
                .mtu
                .checked_sub(udp::OVERHEAD)
                .filter(|m| *m >= MIN_POD_MTU)
                .ok_or_else(|| AgentError::MtuTooSmall {
                    iface: ext.name.clone(),
                    mtu: ext.mtu,
                })?;
            let spec = UdpSpec {
                name: udp::DEVICE.into(),
                local: v4,
                port: udp_port.unwrap_or(crate::config::DEFAULT_UDP_PORT),
                subnet: sub,
                network: net,
                mtu,
                offload: opts.udp_offload,
            };
            let dp = DataPlane::start(&spec)?;
            ensure_udp_routes(&nl, dp.index, &spec).await?;
            metrics.set_udp(dp.counters());
            tracing::info!(device = %spec.name, index = dp.index, %subnet, %local, port = spec.port, "udp data path ready");
            // flannel's udp backend publishes no backend data.
            wanted.insert(data_key.clone(), "null".into());
            udp_dp = Some(dp);
            udp_spec = Some(spec);
            continue;
        };
        // Keep the VTEP MAC across restarts: peers know us by it.
        let mac = match node
            .annotation(data_key)
            .and_then(|d| VxlanData::decode(d).ok())
        {
            Some(d) if d.vtep_mac.is_unicast() => d.vtep_mac,
            _ => Mac::random().map_err(AgentError::Mac)?,
        };
        let underlay_mtu = vx.mtu.unwrap_or(ext.mtu);
        let mtu = underlay_mtu
            .checked_sub(vxlan::overhead(local.is_ipv6()))
            .filter(|m| *m >= MIN_POD_MTU)
            .ok_or_else(|| AgentError::MtuTooSmall {
                iface: ext.name.clone(),
                mtu: underlay_mtu,
            })?;
        let dc = DeviceConfig {
            spec: VxlanSpec {
                name: vxlan::device_name(vx.vni, ipv6),
                vni: vx.vni,
                port: vx.port,
                local,
                underlay: ext.index,
                learning: vx.learning,
                gbp: vx.gbp,
                mac,
                mtu,
            },
            subnet: *subnet,
            network: fam.network,
        };
        let (link, created) = vxlan::ensure_device(&nl, &dc).await?;
        if created {
            metrics.device_created();
        }
        tracing::info!(device = %dc.spec.name, index = link.index, created, %subnet, %local, %mac, "device ready");
        wanted.insert(
            data_key.clone(),
            VxlanData {
                vni: vx.vni,
                vtep_mac: mac,
            }
            .encode(),
        );
        devices.push(Device::new(dc));
    }

    let mut backoff = Backoff::new();
    loop {
        match acquire::publish(&api, &node, &wanted).await {
            Ok(patched) => {
                tracing::info!(patched, "annotations published");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "publishing annotations; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff.next()) => {}
                    () = &mut shutdown => return Ok(()),
                }
            }
        }
    }
    let env = SubnetEnv {
        ipv4: subnets[0]
            .zip(cfg.ipv4.as_ref())
            .map(|(s, f)| (f.network, s)),
        ipv6: subnets[1]
            .zip(cfg.ipv6.as_ref())
            .map(|(s, f)| (f.network, s)),
        mtu: devices
            .first()
            .map(|d| d.cfg.spec.mtu)
            .or(udp_spec.as_ref().map(|spec| spec.mtu))
            .unwrap_or(ext.mtu),
        ip_masq: opts.ip_masq,
    };
    env.write(&opts.subnet_file)?;
    tracing::info!(path = %opts.subnet_file.display(), "subnet.env written");
    {
        let api = api.clone();
        let name = opts.node_name.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new();
            while let Err(e) = acquire::set_network_available(&api, &name).await {
                tracing::warn!(error = %chain(&e), "setting NetworkUnavailable=False; retrying");
                tokio::time::sleep(backoff.next()).await;
            }
        });
    }

    let fam = |i: usize| {
        subnets[i].zip(networks[i].as_ref()).map(|(s, f)| Family {
            network: f.network,
            local_subnet: s,
        })
    };
    let ctx = Context {
        names,
        own_name: opts.node_name.clone(),
        v4: fam(0),
        v6: fam(1),
        backend: match &vx {
            Some(v) => PeerBackend::Vxlan { vni: v.vni },
            None => PeerBackend::Udp,
        },
    };
    let mut fw = Firewall::new(nft::RulesetInput {
        families: (0..2)
            .filter_map(|i| {
                subnets[i]
                    .zip(networks[i].as_ref())
                    .map(|(s, f)| nft::Family {
                        network: f.network,
                        subnet: s,
                    })
            })
            .collect(),
        ip_masq: opts.ip_masq,
        vxlan_allow: opts.allow_list.then(|| {
            (
                vx.as_ref().map(|v| v.port).or(udp_port).unwrap_or_default(),
                Vec::new(),
            )
        }),
    })?;
    let mut rules_tick = tokio::time::interval(opts.rules_resync);
    rules_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    rules_tick.tick().await;
    let mut peers_rx = watch::spawn(api, ctx, metrics.clone());
    let mut changes = kernel::watch_changes(
        devices
            .iter()
            .map(|d| d.cfg.spec.name.clone())
            .chain(udp_spec.as_ref().map(|spec| spec.name.clone()))
            .collect(),
    )?;
    let mut resync = tokio::time::interval(opts.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut backoff = Backoff::new();
    let mut current: Option<watch::Update> = None;
    loop {
        // A peer-set change plans against the known state; everything else
        // (device deleted, resync, retry) reads the kernel again.
        let full = tokio::select! {
            r = peers_rx.changed() => {
                if r.is_err() { break; }
                current = peers_rx.borrow_and_update().clone();
                false
            }
            Some(first) = changes.recv() => {
                // Take every change already queued (a deleted device brings
                // thousands), and act once if any contradicts what we hold.
                let mut repair = false;
                let mut next = Some(first);
                while let Some(c) = next {
                    // Once a repair is due, the rest is only drained.
                    let udp_gone = matches!(&c, Change::LinkDeleted(n) if udp_spec.as_ref().is_some_and(|spec| *n == spec.name));
                    let direct_undone = direct.as_ref().is_some_and(|d| d.contradicted_by(&c));
                    if !repair && (udp_gone || direct_undone || devices.iter().any(|d| d.contradicted_by(&c))) {
                        match &c {
                            Change::LinkDeleted(name) => tracing::warn!(device = %name, "device deleted; recreating it and replaying every peer"),
                            other => tracing::warn!(change = ?other, "an entry on our device was changed behind our back; repairing"),
                        }
                        repair = true;
                    }
                    next = changes.try_recv().ok();
                }
                if !repair {
                    continue;
                }
                true
            }
            _ = resync.tick() => true,
            _ = rules_tick.tick() => {
                if let Err(e) = fw.resync(&metrics) {
                    tracing::warn!(error = %chain(&e), "checking the nftables table failed; will retry");
                    retry_at.get_or_insert_with(|| tokio::time::Instant::now() + backoff.next());
                }
                continue;
            }
            () = sleep_until(retry_at) => true,
            () = &mut shutdown => break,
        };
        let Some(update) = current.clone() else {
            continue;
        };
        let set = update.set;
        if !update.complete {
            reconcile_all(
                &nl,
                &mut devices,
                direct.as_mut(),
                &set,
                &metrics,
                Pass::Partial,
            )
            .await;
            continue;
        }
        let t0 = Instant::now();
        let pass = if full { Pass::Full } else { Pass::Quick };
        let mut ok = reconcile_all(&nl, &mut devices, direct.as_mut(), &set, &metrics, pass).await;
        if let Some(spec) = &udp_spec {
            if let Err(e) = ensure_udp(&nl, &mut udp_dp, spec, full, &metrics).await {
                tracing::warn!(error = %chain(&e), "udp backend: repairing the data path failed; will retry");
                ok = false;
            }
            if let Some(dp) = &udp_dp {
                dp.set_peers(&set.v4);
            }
        }
        if let Err(e) = fw.peers_changed(firewall::peer_ips(&set), &metrics) {
            tracing::warn!(error = %chain(&e), "writing the nftables table failed; will retry");
            ok = false;
        }
        tracing::debug!(full, us = t0.elapsed().as_micros() as u64, "reconcile pass");
        if ok {
            retry_at = None;
            backoff = Backoff::new();
            if !metrics.ready() {
                metrics.set_ready();
                tracing::info!(
                    peers_v4 = set.v4.len(),
                    peers_v6 = set.v6.len(),
                    "first full reconcile done, nftables table in place: ready"
                );
            }
        } else {
            retry_at = Some(tokio::time::Instant::now() + backoff.next());
        }
    }
    tracing::info!("shutting down; the data plane stays in place");
    Ok(())
}

/// Keeps the udp data path whole: on a full pass (or when it is not
/// running), a `flannel0` that is gone (deleted behind weft's back) or not
/// ours any more brings a fresh device and socket; address and route are
/// put back either way.
async fn ensure_udp(
    nl: &Kernel,
    slot: &mut Option<DataPlane>,
    spec: &UdpSpec,
    full: bool,
    metrics: &Metrics,
) -> Result<(), AgentError> {
    use crate::netlink::Netlink;
    let index = match slot.as_ref() {
        Some(_) if !full => return Ok(()),
        Some(dp) => nl
            .link_by_name(&spec.name)
            .await?
            .filter(|l| l.index == dp.index)
            .map(|l| l.index),
        None => None,
    };
    let index = match index {
        Some(i) => i,
        None => {
            if let Some(old) = slot.take() {
                tracing::warn!(device = %spec.name, "udp backend: device gone; recreating it");
                // Its threads let go of the socket before a new one binds.
                let _ = tokio::task::spawn_blocking(move || old.shutdown()).await;
            }
            let dp = DataPlane::start(spec)?;
            metrics.set_udp(dp.counters());
            metrics.device_created();
            let i = dp.index;
            *slot = Some(dp);
            i
        }
    };
    ensure_udp_routes(nl, index, spec).await
}

/// flannel's layout on `flannel0`: our subnet's network address as /32 and
/// one route for the whole Network through the device (idempotent).
async fn ensure_udp_routes(nl: &Kernel, index: u32, spec: &UdpSpec) -> Result<(), AgentError> {
    use crate::netlink::{Netlink, Op, Route};
    let addr = vxlan::device_address(IpNetwork::V4(spec.subnet));
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

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Which kind of reconcile pass.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pass {
    /// A page of the first list: add what it holds, delete nothing.
    Partial,
    /// A peer-set change: plan against the known state.
    Quick,
    /// Device ensured and the kernel's tables read again.
    Full,
}

/// One pass over every device; whether everything succeeded.
async fn reconcile_all(
    nl: &Kernel,
    devices: &mut [Device],
    mut direct: Option<&mut Direct>,
    set: &PeerSet,
    metrics: &Metrics,
    pass: Pass,
) -> bool {
    let mut ok = true;
    for dev in devices {
        let all = set.family(dev.cfg.subnet.is_ipv6());
        // With DirectRouting, the directly reachable peers leave the device.
        let (near, far) = match direct.as_deref() {
            Some(d) => d.split(all),
            None => (Vec::new(), all.to_vec()),
        };
        let entries = far.as_slice();
        if let Some(d) = direct.as_deref_mut()
            && pass != Pass::Partial
        {
            ok &= reconcile_direct(nl, d, dev.cfg.network, &near, metrics).await;
        }
        let t0 = Instant::now();
        let result = match pass {
            Pass::Partial => dev.add_partial(nl, entries).await,
            Pass::Quick => dev.reconcile(nl, entries, false).await,
            Pass::Full => dev.reconcile(nl, entries, true).await,
        };
        let name = &dev.cfg.spec.name;
        let secs = t0.elapsed().as_secs_f64();
        match result {
            Ok(out) => {
                let failed: Vec<&'static str> =
                    out.failed.iter().map(|(op, _)| op.kind()).collect();
                metrics.reconciled(secs, &out.done, &failed, false, out.created);
                let writes: u64 = out.done.values().sum();
                if pass != Pass::Partial && (writes > 0 || !out.failed.is_empty()) {
                    tracing::info!(device = %name, peers = entries.len(), writes, failed = out.failed.len(), ms = secs * 1e3, "reconciled");
                }
                for (op, why) in out.failed.iter().take(5) {
                    tracing::warn!(device = %name, ?op, error = %why, "kernel refused a write; will retry");
                }
                ok &= out.failed.is_empty();
            }
            Err(e) => {
                metrics.reconciled(secs, &BTreeMap::new(), &[], true, false);
                tracing::warn!(device = %name, error = %chain(&e), "reconcile failed; will retry");
                ok = false;
            }
        }
    }
    ok
}

/// The direct routes of one family; whether everything succeeded.
async fn reconcile_direct(
    nl: &Kernel,
    d: &mut Direct,
    network: IpNetwork,
    near: &[crate::vxlan::plan::PeerEntry],
    metrics: &Metrics,
) -> bool {
    let t0 = Instant::now();
    match direct::reconcile(nl, d, network, near).await {
        Ok((done, failed)) => {
            let mut counts: BTreeMap<&'static str, u64> = BTreeMap::new();
            for op in &done {
                *counts.entry(op.kind()).or_default() += 1;
            }
            let kinds: Vec<&'static str> = failed.iter().map(|(op, _)| op.kind()).collect();
            metrics.reconciled(t0.elapsed().as_secs_f64(), &counts, &kinds, false, false);
            if !done.is_empty() {
                tracing::info!(
                    peers = near.len(),
                    writes = done.len(),
                    "direct routes reconciled"
                );
            }
            for (op, why) in failed.iter().take(5) {
                tracing::warn!(?op, error = %why, "kernel refused a direct route; will retry");
            }
            failed.is_empty()
        }
        Err(e) => {
            tracing::warn!(error = %chain(&e), "direct routes: reconcile failed; will retry");
            false
        }
    }
}

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

/// 200 ms doubling to 10 s.
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(Duration::from_millis(200))
    }
    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(10));
        d
    }
}
