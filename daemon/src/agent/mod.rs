//! The agent: set up once (config, lease, interface, backend, annotations,
//! subnet.env), then keep the kernel in line with the complete peer set,
//! level-triggered: every peer-set change, every contradicting kernel change
//! and every resync tick runs a reconcile against the whole desired state;
//! failures are retried with backoff and never stop the loop. The loop's
//! decisions are [`machine`]'s, its I/O [`driver`]'s.

pub mod driver;
pub mod machine;
#[cfg(test)]
mod serve_tests;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client};

use crate::annotations::{AnnotationError, Names};
use crate::backend::{Backend, BackendError, Local, LocalFamily};
use crate::backoff::Backoff;
pub use crate::chain;
use crate::config::{ConfigError, NetConfig};
use crate::family::{Family, PerFamily};
use crate::files::{FileError, SubnetEnv};
use crate::firewall::Firewall;
use crate::health::{self, HealthError};
use crate::iface::{self, IfaceError};
use crate::lease::judge::{Context, Subnets, not_a_host_address};
use crate::lease::kube::KubeSource;
use crate::lease::kube::node::SlimNode;
use crate::lease::{self, LeaseError, LeaseSource, Publish};
use crate::metrics::Metrics;
use crate::netlink::kernel::Kernel;
use crate::netlink::{Netlink, NetlinkError};
use crate::nft::{self, kernel::NftError};

/// Everything the flags say.
#[derive(Debug, Clone)]
pub struct Options {
    pub subnet_manager: SubnetManager,
    /// This node (etcd: only for the logs).
    pub node: NodeRef,
    pub kubeconfig: Option<PathBuf>,
    /// The API server's URL, over the kubeconfig's or the in-cluster one
    /// (flanneld's `--kube-api-url`).
    pub api_url: Option<String>,
    /// Without a kubeconfig or URL: look for `$KUBECONFIG` and
    /// `~/.kube/config` before the in-cluster configuration (weftd's way),
    /// or take the in-cluster one only (flanneld's, client-go's
    /// `BuildConfigFromFlags`).
    pub kubeconfig_from_env: bool,
    pub net_config_path: PathBuf,
    pub subnet_file: PathBuf,
    pub iface: iface::Selection,
    pub public_ip: Option<IpAddr>,
    pub public_ipv6: Option<IpAddr>,
    pub ip_masq: bool,
    /// Masquerade with fully random source ports.
    pub masq_fully_random: bool,
    /// Accept forwarded traffic from and to the Network.
    pub forward_rules: bool,
    /// Set the Node's NetworkUnavailable condition to False once ready.
    pub set_network_unavailable: bool,
    /// A blackhole route for each of our subnets, put back every
    /// `rules_resync` (flanneld's `--ip-blackhole-route`, for a CNI setup
    /// without the bridge's own route).
    pub blackhole_route: bool,
    pub healthz_addr: Option<SocketAddr>,
    pub annotation_prefix: String,
    pub resync: Duration,
    /// Drop traffic to the backend's UDP port from anything but a peer.
    pub allow_list: bool,
    /// Seconds between reads of weft's nftables table (repairs edits).
    pub rules_resync: Duration,
    /// The udp backend asks the kernel for TUN offload, UDP GSO and GRO.
    pub udp_offload: bool,
    /// Where to write the conflist once ready, and its text (see
    /// `keep_cni_files`).
    pub conflist: Option<(PathBuf, String)>,
    /// The `weft` plugin to keep installed: (the binary shipped with
    /// weftd, where the runtime finds it).
    pub plugin: Option<(PathBuf, PathBuf)>,
}

/// Where leases live: Kubernetes Nodes (flanneld's `--kube-subnet-mgr`)
/// or etcd (flanneld's default).
#[derive(Debug, Clone, PartialEq)]
pub enum SubnetManager {
    Kube,
    Etcd(lease::etcd::EtcdOptions),
}

/// Seconds between full resyncs against the kernel, by default.
pub const DEFAULT_RESYNC_SECONDS: u64 = 300;

/// How weftd learns its node's name, flanneld's way: `NODE_NAME`, else the
/// node its own pod (`POD_NAME` in `POD_NAMESPACE`) is bound to (which
/// takes RBAC's `pods get`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRef {
    Name(String),
    Pod { namespace: String, name: String },
}

impl NodeRef {
    /// From the environment through `env` (an empty variable is unset);
    /// None when neither way is there.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Option<NodeRef> {
        let var = |k: &str| env(k).filter(|v| !v.is_empty());
        if let Some(n) = var("NODE_NAME") {
            return Some(NodeRef::Name(n));
        }
        Some(NodeRef::Pod {
            namespace: var("POD_NAMESPACE")?,
            name: var("POD_NAME")?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("--kube-annotation-prefix")]
    Prefix(#[source] AnnotationError),
    #[error("connecting to the Kubernetes API ({how})")]
    Client {
        how: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("finding this node's name from pod {namespace}/{name} (POD_NAMESPACE, POD_NAME)")]
    PodNode {
        namespace: String,
        name: String,
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
    Backend(#[from] BackendError),
    #[error(transparent)]
    Files(#[from] FileError),
    #[error(transparent)]
    Nft(#[from] NftError),
    #[error(transparent)]
    Lock(#[from] crate::single::LockError),
    #[error("--public-ip{v6} {ip} is not an IPv{n} address", v6 = if family.is_v6() { "v6" } else { "" }, n = family.number())]
    PublicIpFamily { ip: IpAddr, family: Family },
    #[error("{what} {ip} {why}: other nodes could not reach this one there")]
    UnusablePublicIp {
        what: String,
        ip: IpAddr,
        why: &'static str,
    },
}

/// The API client, and where it sends requests (the URL and what chose
/// it), for messages.
async fn client(opts: &Options) -> Result<(Client, String), AgentError> {
    kube_client(
        opts.kubeconfig.as_deref(),
        opts.api_url.as_deref(),
        opts.kubeconfig_from_env,
    )
    .await
}

/// An API client as flanneld makes one: from `kubeconfig`, else the
/// in-cluster credentials (or, with `from_env`, what kube infers:
/// $KUBECONFIG, ~/.kube/config, in-cluster), sent to `api_url` when
/// given; and where it sends requests, for messages.
pub async fn kube_client(
    kubeconfig: Option<&std::path::Path>,
    api_url: Option<&str>,
    from_env: bool,
) -> Result<(Client, String), AgentError> {
    let how = match (kubeconfig, api_url) {
        (Some(path), _) => format!("kubeconfig {}", path.display()),
        (None, Some(url)) => format!("--kube-api-url {url} with the in-cluster credentials"),
        (None, None) if from_env => {
            "$KUBECONFIG, ~/.kube/config or the in-cluster configuration".to_string()
        }
        (None, None) => "the in-cluster configuration".to_string(),
    };
    let in_cluster = kubeconfig.is_none() && api_url.is_none();
    let err = |e: Box<dyn std::error::Error + Send + Sync>| AgentError::Client {
        how: how.clone(),
        source: e,
    };
    let mut cfg = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| err(Box::new(e)))?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| err(Box::new(e)))?
        }
        // flanneld (client-go) with only a URL: the in-cluster credentials
        // if there are any, sent to that URL; else the URL alone.
        None if api_url.is_some() => match kube::Config::incluster() {
            Ok(c) => c,
            Err(_) => kube::Config::new(Default::default()),
        },
        None if from_env => kube::Config::infer().await.map_err(|e| err(Box::new(e)))?,
        None => kube::Config::incluster().map_err(|e| err(Box::new(e)))?,
    };
    if let Some(url) = api_url {
        cfg.cluster_url = url.parse().map_err(|e| err(Box::new(e)))?;
    }
    cfg.read_timeout = Some(crate::lease::kube::watch::READ_TIMEOUT);
    let server = if in_cluster {
        format!(
            "{} (in-cluster: $KUBERNETES_SERVICE_HOST and $KUBERNETES_SERVICE_PORT)",
            cfg.cluster_url
        )
    } else {
        format!("{} ({how})", cfg.cluster_url)
    };
    tracing::info!("API server: {server}");
    let client = Client::try_from(cfg).map_err(|e| err(Box::new(e)))?;
    Ok((client, server))
}

/// This node's name: given, or read from the pod weftd runs in.
pub async fn node_name(client: &Client, node: &NodeRef) -> Result<String, AgentError> {
    let (namespace, name) = match node {
        NodeRef::Name(n) => return Ok(n.clone()),
        NodeRef::Pod { namespace, name } => (namespace, name),
    };
    let err = |source: Box<dyn std::error::Error + Send + Sync>| AgentError::PodNode {
        namespace: namespace.clone(),
        name: name.clone(),
        source,
    };
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    let pod = pods.get(name).await.map_err(|e| err(Box::new(e)))?;
    let node = pod.spec.and_then(|s| s.node_name).unwrap_or_default();
    if node.is_empty() {
        return Err(err("its spec.nodeName is empty (not scheduled yet)".into()));
    }
    tracing::info!(%namespace, pod = %name, node = %node, "node name from this pod's spec.nodeName");
    Ok(node)
}

/// Runs until `shutdown` resolves; leaves the data plane in place.
pub async fn run(opts: Options, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let mut shutdown = std::pin::pin!(shutdown);
    let lock = crate::single::lock_path(&opts.subnet_file);
    let Some(_held) = crate::single::hold(&lock, &mut shutdown).await? else {
        return Ok(());
    };
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = opts.healthz_addr {
        health::serve(addr, metrics.clone()).await?;
    }
    say_flannel_leftovers();
    let nl = Kernel::connect()?;
    let mut rules = Firewall::new;
    match &opts.subnet_manager {
        SubnetManager::Kube => {
            let cfg = NetConfig::load(&opts.net_config_path)?;
            crate::backends::remove_other_leftovers(&nl, &cfg).await;
            let names = Names::new(&opts.annotation_prefix).map_err(AgentError::Prefix)?;
            let mut node: Option<String> = None;
            // Each turn connects afresh: after the external interface
            // changed, a pooled connection may be bound to an address the
            // node no longer has (its next request would hang until the
            // read timeout).
            loop {
                let (client, server) = client(&opts).await?;
                let name = match &node {
                    Some(n) => n.clone(),
                    None => node_name(&client, &opts.node).await?,
                };
                node = Some(name.clone());
                let api: Api<SlimNode> = Api::all(client);
                let source = KubeSource::new(api, names.clone(), name, server);
                let turn = serve_once(
                    &nl,
                    &source,
                    &cfg,
                    &opts,
                    &metrics,
                    &mut rules,
                    shutdown.as_mut(),
                );
                if !again(turn.await?) {
                    return Ok(());
                }
            }
        }
        SubnetManager::Etcd(eo) => {
            let mut backoff = Backoff::new();
            let client = loop {
                match lease::etcd::connect(eo).await {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::warn!(error = %chain(&e), "connecting to etcd; trying again")
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_wait()) => {}
                    () = &mut shutdown => return Ok(()),
                }
            };
            let cfg = tokio::select! {
                c = lease::etcd::config(&client, &eo.prefix) => c,
                () = &mut shutdown => return Ok(()),
            };
            let name = match &opts.node {
                NodeRef::Name(n) => n.clone(),
                NodeRef::Pod { name, .. } => name.clone(),
            };
            crate::backends::remove_other_leftovers(&nl, &cfg).await;
            // One source for the process: its lease renewer runs as long.
            let source = lease::etcd::EtcdSource::new(client, eo.clone(), &cfg, name)?;
            serve(&nl, &source, &cfg, &opts, &metrics, &mut rules, shutdown).await
        }
    }
}

/// Says once, at start, when flanneld's rules are still on this node
/// (a node switched from flannel): they masquerade and accept the same
/// traffic again beside weft's table. Only `weftd cleanup --flannel`
/// removes them: weftd never touches another agent's rules unasked.
fn say_flannel_leftovers() {
    match nft::kernel::Nft::open().and_then(|mut n| crate::leftovers::find(&mut n)) {
        Ok(l) => {
            if !l.is_empty() {
                tracing::warn!(
                    found = ?l.describe(),
                    "flanneld's rules are still on this node beside weft's table; `weftd cleanup --flannel` removes them (and nothing else)"
                );
            }
            if let Some(why) = l.legacy_unknown {
                tracing::info!("flanneld's legacy iptables chains not checked: {why}");
            }
        }
        Err(e) => tracing::warn!(error = %chain(&e), "looking for flanneld's rules failed"),
    }
}

/// Everything after the connections, over the netlink port `nl` and the
/// lease source: our lease, the external interface, the backend, what we
/// publish, subnet.env, then the reconcile loop until `shutdown`.
///
/// When the external interface changes under it (its address, its MTU,
/// another interface chosen), everything from the lease on is set up again
/// from the new facts (flanneld keeps what it found at start until it is
/// restarted): the data plane stays meanwhile and is corrected in place.
pub async fn serve<N, L, R, E>(
    nl: &N,
    source: &L,
    cfg: &NetConfig,
    opts: &Options,
    metrics: &Arc<Metrics>,
    mut rules: impl FnMut(nft::RulesetInput) -> Result<R, E>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError>
where
    N: Netlink + 'static,
    L: LeaseSource,
    R: driver::Rules,
    AgentError: From<E>,
{
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let changed = serve_once(
            nl,
            source,
            cfg,
            opts,
            metrics,
            &mut rules,
            shutdown.as_mut(),
        );
        if !again(changed.await?) {
            return Ok(());
        }
    }
}

/// Whether a turn of [`serve_once`] ended with a change to set up again
/// for (said in the log), rather than with shutdown.
fn again(changed: Option<String>) -> bool {
    match changed {
        None => false,
        Some(why) => {
            tracing::warn!(%why, "the external interface changed; setting up again");
            true
        }
    }
}

/// How often the external interface is looked at again.
const UNDERLAY_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// [`serve`] until shutdown (`None`) or until the external interface is no
/// longer what it was at the start (`Some`: what changed).
async fn serve_once<N, L, R, E>(
    nl: &N,
    source: &L,
    cfg: &NetConfig,
    opts: &Options,
    metrics: &Arc<Metrics>,
    rules: &mut impl FnMut(nft::RulesetInput) -> Result<R, E>,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Result<Option<String>, AgentError>
where
    N: Netlink + 'static,
    L: LeaseSource,
    R: driver::Rules,
    AgentError: From<E>,
{
    let own = tokio::select! {
        l = source.acquire() => l,
        () = &mut shutdown => return Ok(None),
    };
    let prefer_v6 = cfg.ipv4.is_none();
    let (ext, addresses) = interface_and_addresses(nl, cfg, opts, &own).await?;
    let claim = lease::Claim {
        backend_type: cfg.backend.type_name().to_string(),
        public_ip: addresses.map(|_, a| a.map(|(_, advertised)| advertised)),
        previous: crate::files::previous_subnets(&opts.subnet_file),
    };
    let mut own = own;
    let claimed = tokio::select! {
        c = source.claim(&claim) => c?,
        () = &mut shutdown => return Ok(None),
    };
    if let Some(c) = claimed {
        tracing::info!(lease = %c.name, subnets = ?c.pod_cidrs, "lease claimed");
        own.name = c.name;
        own.pod_cidrs = c.pod_cidrs;
        for (family, data) in c.data.iter() {
            if data.is_some() {
                own.stored.get_mut(family).data = data.clone();
            }
        }
    }
    let local = local_node(cfg, opts, &own, ext, &addresses)?;
    let mut backend = crate::backends::start(nl, &cfg.backend, &local, metrics).await?;

    let ours = publish_of(backend.as_ref(), &local);
    let mut backoff = Backoff::new();
    loop {
        match source.publish(&ours).await {
            Ok(patched) => {
                tracing::info!(patched, "lease published");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "publishing our lease; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_wait()) => {}
                    () = &mut shutdown => return Ok(None),
                }
            }
        }
    }
    let env = subnet_env(&local, backend.mtu(), opts.ip_masq);
    env.write(&opts.subnet_file)?;
    tracing::info!(path = %opts.subnet_file.display(), "subnet.env written");
    if opts.set_network_unavailable {
        source.mark_ready();
    }

    let ctx = context(source.fields(), &own.name, &local, backend.codec());
    let mut rules = (*rules)(rules_input(&local, opts, backend.guarded_port()))?;
    let inputs = driver::Inputs {
        peers: source.watch(ctx, metrics.clone()),
        changes: nl.watch_changes(backend.devices())?,
        resync: opts.resync,
        rules_resync: opts.rules_resync,
    };
    let subnets: Vec<ipnetwork::IpNetwork> =
        local.families.present().map(|(_, l)| l.subnet).collect();
    let period = opts.rules_resync;
    // Every rules period: flanneld's blackhole route, when asked for, and
    // subnet.env, which flanneld writes once (deleted or edited, it then
    // fails every pod ADD until a restart); weftd puts it back.
    let every_period = async {
        loop {
            for s in subnets.iter().filter(|_| opts.blackhole_route) {
                match nl.ensure_blackhole(*s).await {
                    Ok(true) => tracing::info!(subnet = %s, "blackhole route added"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(subnet = %s, error = %chain(&e), "adding the blackhole route failed")
                    }
                }
            }
            match env.write(&opts.subnet_file) {
                Ok(true) => {
                    tracing::warn!(path = %opts.subnet_file.display(), "subnet.env was missing or altered; written again");
                    metrics.file_restored("subnet.env");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "writing subnet.env again failed; will retry")
                }
            }
            tokio::time::sleep(period).await;
        }
    };
    let conflist = keep_cni_files(
        opts.conflist.as_ref(),
        opts.plugin.as_ref(),
        metrics,
        period,
    );
    let (v4, v6) = (cfg.ipv4.is_some(), cfg.ipv6.is_some());
    let underlay = async {
        loop {
            tokio::time::sleep(UNDERLAY_POLL).await;
            // An interface that cannot be chosen now (its link down, say)
            // is waited for: only a different choice is a change.
            let Ok(now) = iface::select(nl, &opts.iface, &own.internal_ips, prefer_v6).await else {
                continue;
            };
            if let Some(why) = local.ext.changed_to(&now, v4, v6) {
                return why;
            }
        }
    };
    tokio::select! {
        () = driver::drive(nl, backend.as_mut(), &mut rules, metrics, inputs, shutdown) => Ok(None),
        () = every_period => Ok(None),
        () = conflist => Ok(None),
        why = underlay => Ok(Some(why)),
    }
}

/// The external interface, and per enabled family the address our tunnel
/// binds to and the one we advertise (from the flags, our lease's
/// annotations, the interface): what the agent sets up from, and what the
/// doctor checks against.
pub async fn interface_and_addresses<N: Netlink>(
    nl: &N,
    cfg: &NetConfig,
    opts: &Options,
    own: &lease::OwnLease,
) -> Result<(iface::ExtIface, PerFamily<Option<(IpAddr, IpAddr)>>), AgentError> {
    let prefer_v6 = cfg.ipv4.is_none();
    let ext = iface::select(nl, &opts.iface, &own.internal_ips, prefer_v6).await?;
    tracing::info!(iface = %ext.name, mtu = ext.mtu, "external interface chosen");
    let networks = PerFamily {
        v4: cfg.ipv4.as_ref().map(|f| f.network),
        v6: cfg.ipv6.as_ref().map(|f| f.network),
    };
    let flags = PerFamily {
        v4: opts.public_ip,
        v6: opts.public_ipv6,
    };
    let mut addresses = PerFamily::default();
    for (family, _) in networks.present() {
        let stored = own.stored.get(family);
        let v6 = family.is_v6();
        // flannel's spellings carry the family the same way: "" or "v6".
        let sfx = if v6 { "v6" } else { "" };
        let (given, what) = match (flags.get(family), stored.public_ip) {
            (Some(ip), _) => (Some(*ip), format!("--public-ip{sfx}")),
            (None, Some(ip)) => (
                Some(ip),
                format!("the Node's node-public-ip{sfx} annotation"),
            ),
            (None, None) => (None, "the external interface's address".to_string()),
        };
        let public_ip = match given {
            Some(ip) if !family.holds(&ip) => {
                return Err(AgentError::PublicIpFamily { ip, family });
            }
            Some(ip) => ip,
            None => ext.ip(v6)?,
        };
        let overwrite = stored.overwrite.filter(|ip| family.holds(ip));
        let advertised = overwrite.unwrap_or(public_ip);
        let advertised_from = match overwrite {
            Some(_) => format!("the Node's public-ip{sfx}-overwrite annotation"),
            None => what.clone(),
        };
        for (ip, what) in [(public_ip, what), (advertised, advertised_from)] {
            if let Some(why) = not_a_host_address(&ip) {
                return Err(AgentError::UnusablePublicIp { what, ip, why });
            }
        }
        *addresses.get_mut(family) = Some((public_ip, advertised));
    }
    Ok((ext, addresses))
}

/// Everything the backend starts from: the interface, and per enabled
/// family our Network, subnet (from our lease) and addresses.
pub fn local_node(
    cfg: &NetConfig,
    opts: &Options,
    own: &lease::OwnLease,
    ext: iface::ExtIface,
    addresses: &PerFamily<Option<(IpAddr, IpAddr)>>,
) -> Result<Local, AgentError> {
    let networks = PerFamily {
        v4: cfg.ipv4.as_ref().map(|f| f.network),
        v6: cfg.ipv6.as_ref().map(|f| f.network),
    };
    let subnets = lease::own_subnets(cfg, own)?;
    let mut families = PerFamily::default();
    for (family, subnet) in subnets.present() {
        let (Some(network), Some((public_ip, advertised))) =
            (*networks.get(family), *addresses.get(family))
        else {
            continue;
        };
        *families.get_mut(family) = Some(LocalFamily {
            network,
            subnet: *subnet,
            public_ip,
            advertised,
            stored_data: own.stored.get(family).data.clone(),
        });
    }
    Ok(Local {
        ext,
        families,
        udp_offload: opts.udp_offload,
    })
}

/// What we publish: the backend's type, and per family our advertised
/// address and the backend's data.
pub fn publish_of<N: Netlink>(backend: &dyn Backend<N>, local: &Local) -> Publish {
    Publish {
        backend_type: backend.type_name().to_string(),
        families: local
            .families
            .map(|f, l| l.as_ref().map(|l| (l.advertised, backend.data(f)))),
    }
}

/// subnet.env as weftd writes it.
pub fn subnet_env(local: &Local, mtu: u32, ip_masq: bool) -> SubnetEnv {
    let pair = |f: Family| {
        local
            .families
            .get(f)
            .as_ref()
            .map(|l| (l.network, l.subnet))
    };
    SubnetEnv {
        ipv4: pair(Family::V4),
        ipv6: pair(Family::V6),
        mtu,
        ip_masq,
    }
}

/// How peers are judged on this node.
pub fn context(
    fields: lease::FieldNames,
    own_name: &str,
    local: &Local,
    codec: Arc<dyn crate::backend::PeerCodec>,
) -> Context {
    Context {
        fields,
        own_name: own_name.to_string(),
        families: local.families.map(|_, l| {
            l.as_ref().map(|l| Subnets {
                network: l.network,
                local_subnet: l.subnet,
                local_ip: l.advertised,
            })
        }),
        codec,
    }
}

/// weft's nftables table for this node (the allow-list's peers empty:
/// filled in from the peer set).
pub fn rules_input(local: &Local, opts: &Options, guarded_port: Option<u16>) -> nft::RulesetInput {
    nft::RulesetInput {
        families: local
            .families
            .present()
            .map(|(_, l)| nft::Family {
                network: l.network,
                subnet: l.subnet,
            })
            .collect(),
        ip_masq: opts.ip_masq,
        masq_fully_random: opts.masq_fully_random,
        forward_rules: opts.forward_rules,
        allow_list: guarded_port
            .filter(|_| opts.allow_list)
            .map(|port| (port, Vec::new())),
    }
}

/// Writes the conflist once weftd is ready, and puts it back every
/// `period` when it is missing or altered. Until then the runtime sees no
/// network config, so the node is not network-ready before weft is (with
/// flannel, pods scheduled in that window fail their ADD). With `plugin`,
/// the installed `weft` binary is checked first, each period, and copied
/// again from the one shipped with weftd when it is missing or differs
/// (flannel's plugin, written once by its init container, stays broken).
/// Never returns.
async fn keep_cni_files(
    conflist: Option<&(PathBuf, String)>,
    plugin: Option<&(PathBuf, PathBuf)>,
    metrics: &Metrics,
    period: Duration,
) {
    if conflist.is_none() && plugin.is_none() {
        return std::future::pending().await;
    }
    while !metrics.ready() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut kept_plugin = plugin.map(|(src, dest)| KeptPlugin::new(src, dest));
    let mut first = true;
    loop {
        if let Some(kept) = kept_plugin.as_mut() {
            kept.check(metrics);
        }
        if let Some((dir, text)) = conflist {
            let path = dir.join(crate::cleanup::CONFLIST);
            match crate::install::write_conflist(dir, text) {
                Ok(true) if first => {
                    tracing::info!(path = %path.display(), "conflist written: this node's pod network is ready")
                }
                Ok(true) => {
                    tracing::warn!(path = %path.display(), "the conflist was missing or altered; written again");
                    metrics.file_restored("10-weft.conflist");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "writing the conflist failed; will retry")
                }
            }
        }
        first = false;
        tokio::time::sleep(period).await;
    }
}

/// The installed `weft` plugin, compared with the shipped one only when
/// its size, mtime or inode moved since it was last found right (a
/// plugin is megabytes: not read every period).
struct KeptPlugin {
    src: PathBuf,
    dest: PathBuf,
    /// The installed file's stamp when last found right (none before the
    /// first check: what that one writes is an install, not a repair).
    right: Option<FileStamp>,
}

type FileStamp = (u64, u64, i64, i64);

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.ino(), m.len(), m.mtime(), m.mtime_nsec()))
}

impl KeptPlugin {
    fn new(src: &std::path::Path, dest: &std::path::Path) -> KeptPlugin {
        KeptPlugin {
            src: src.to_path_buf(),
            dest: dest.to_path_buf(),
            right: None,
        }
    }

    fn check(&mut self, metrics: &Metrics) {
        let now = stamp(&self.dest);
        if now.is_some() && now == self.right {
            return;
        }
        let bytes = match std::fs::read(&self.src) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %self.src.display(), error = %e, "reading the weft plugin to keep installed failed; will retry");
                return;
            }
        };
        match crate::files::write_atomic(&self.dest, &bytes, 0o755) {
            Ok(written) => {
                if written && self.right.is_some() {
                    tracing::warn!(path = %self.dest.display(), "the weft plugin was missing or altered; installed again");
                    metrics.file_restored("weft");
                } else if written {
                    tracing::info!(path = %self.dest.display(), "weft plugin installed");
                }
                self.right = stamp(&self.dest);
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "installing the weft plugin again failed; will retry")
            }
        }
    }
}
