use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use weftd::agent::{self, Options};
use weftd::annotations::DEFAULT_PREFIX;
use weftd::iface::Selection;

/// weft's node agent: flannel-compatible overlay networking for Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "weftd", version = weftd::VERSION)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Where leases live: `kube` (Node objects, flanneld's
    /// --kube-subnet-mgr) or `etcd` (flanneld's etcd subnet manager; the
    /// network configuration is then read from etcd).
    #[arg(long, env = "WEFTD_SUBNET_MANAGER", value_enum, default_value_t = SubnetMgr::Kube)]
    subnet_manager: SubnetMgr,
    /// etcd's endpoints (etcd subnet manager).
    #[arg(
        long,
        env = "WEFTD_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:4001,http://127.0.0.1:2379"
    )]
    etcd_endpoints: Vec<String>,
    /// The etcd key prefix: the configuration at PREFIX/config, leases
    /// below PREFIX/subnets/.
    #[arg(long, env = "WEFTD_ETCD_PREFIX", default_value = weftd::lease::etcd::DEFAULT_PREFIX)]
    etcd_prefix: String,
    /// CA certificate that etcd's serving certificate is checked against.
    #[arg(long, env = "WEFTD_ETCD_CAFILE")]
    etcd_cafile: Option<PathBuf>,
    /// Client certificate for etcd (with --etcd-keyfile).
    #[arg(long, env = "WEFTD_ETCD_CERTFILE")]
    etcd_certfile: Option<PathBuf>,
    /// Client key for etcd.
    #[arg(long, env = "WEFTD_ETCD_KEYFILE")]
    etcd_keyfile: Option<PathBuf>,
    /// etcd user (with --etcd-password).
    #[arg(long, env = "WEFTD_ETCD_USERNAME")]
    etcd_username: Option<String>,
    #[arg(long, env = "WEFTD_ETCD_PASSWORD", hide_env_values = true)]
    etcd_password: Option<String>,
    /// Minutes before the etcd lease runs out that it is renewed (1 to 1439).
    #[arg(long, env = "WEFTD_SUBNET_LEASE_RENEW_MARGIN", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..1440))]
    subnet_lease_renew_margin: u64,
    /// Seconds an etcd lease lives unless renewed (flannel's 24 h; shorter
    /// only to test renewal and expiry).
    #[arg(long, env = "WEFTD_SUBNET_LEASE_TTL", default_value_t = 86400, value_parser = clap::value_parser!(u64).range(1..))]
    subnet_lease_ttl: u64,
    /// Kubeconfig to reach the API server (default: in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The API server's URL, over the kubeconfig's or the in-cluster one.
    #[arg(long, env = "WEFTD_KUBE_API_URL")]
    kube_api_url: Option<String>,
    /// flannel's network configuration.
    #[arg(
        long,
        env = "WEFTD_NET_CONFIG_PATH",
        default_value = "/etc/kube-flannel/net-conf.json"
    )]
    net_config_path: PathBuf,
    /// Where to write flannel's subnet.env.
    #[arg(
        long,
        env = "WEFTD_SUBNET_FILE",
        default_value = "/run/flannel/subnet.env"
    )]
    subnet_file: PathBuf,
    /// External interface, by name or address (repeatable; first found wins).
    #[arg(long, env = "WEFTD_IFACE", value_delimiter = ',')]
    iface: Vec<String>,
    /// Regex over interface names or addresses (repeatable).
    #[arg(long, env = "WEFTD_IFACE_REGEX", value_delimiter = ',')]
    iface_regex: Vec<String>,
    /// Without --iface and --iface-regex: the interface (and source
    /// address) of the route to this IP.
    #[arg(long, env = "WEFTD_IFACE_CAN_REACH")]
    iface_can_reach: Option<IpAddr>,
    /// IPv4 address the VTEP binds and other nodes reach (default: the interface's).
    #[arg(long, env = "WEFTD_PUBLIC_IP")]
    public_ip: Option<IpAddr>,
    /// IPv6 address the VTEP binds and other nodes reach.
    #[arg(long, env = "WEFTD_PUBLIC_IPV6")]
    public_ipv6: Option<IpAddr>,
    /// Masquerade traffic leaving the pod network (written to subnet.env).
    #[arg(long, env = "WEFTD_IP_MASQ")]
    ip_masq: bool,
    /// Masquerade with fully random source ports (`=false`: plain).
    #[arg(long, env = "WEFTD_IP_MASQ_FULLY_RANDOM", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    ip_masq_fully_random: bool,
    /// Accept forwarded traffic from and to the Network in weft's table.
    #[arg(long, env = "WEFTD_FORWARD_RULES", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    forward_rules: bool,
    /// A blackhole route for this node's subnets, put back every
    /// --rules-resync-seconds (for a CNI setup without the bridge's own
    /// route; with it, the bridge's route stays and this adds nothing).
    #[arg(long, env = "WEFTD_IP_BLACKHOLE_ROUTE")]
    ip_blackhole_route: bool,
    /// Set the Node's NetworkUnavailable condition to False once ready.
    #[arg(long, env = "WEFTD_SET_NODE_NETWORK_UNAVAILABLE", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    set_node_network_unavailable: bool,
    /// Address of /healthz, /readyz and /metrics ("" turns them off).
    #[arg(long, env = "WEFTD_HEALTHZ_ADDR", default_value = "0.0.0.0:8081")]
    healthz_addr: String,
    /// Prefix of the node annotations (flannel's by default, for interop).
    #[arg(long, env = "WEFTD_KUBE_ANNOTATION_PREFIX", default_value = DEFAULT_PREFIX)]
    kube_annotation_prefix: String,
    /// Seconds between full resyncs against the kernel (a safety net: changes
    /// to weft's entries are seen and repaired as they happen).
    #[arg(long, env = "WEFTD_RESYNC_SECONDS", default_value_t = agent::DEFAULT_RESYNC_SECONDS)]
    resync_seconds: u64,
    /// Drop packets to the backend's UDP port (VXLAN 8472) that do not come
    /// from a current peer's public IP (counted in
    /// weft_allowlist_dropped_packets_total). `--vxlan-allow-list=false`
    /// turns it off.
    #[arg(long, env = "WEFTD_VXLAN_ALLOW_LIST", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    vxlan_allow_list: bool,
    /// Seconds between reads of weft's nftables table: a flushed, deleted
    /// or edited table is put back within this interval.
    #[arg(long, env = "WEFTD_RULES_RESYNC_SECONDS", default_value_t = 10)]
    rules_resync_seconds: u64,
    /// The udp backend's kernel offloads: TCP super-packets through the TUN
    /// device, UDP GSO sends and GRO receives. `--udp-offload=false` moves
    /// one packet per system call instead (much slower; for a kernel or a
    /// path where an offload misbehaves). An offload the kernel refuses is
    /// done without either way.
    #[arg(long, env = "WEFTD_UDP_OFFLOAD", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    udp_offload: bool,
    /// Write `10-weft.conflist` into this directory once weftd is ready
    /// (subnet.env written, first full reconcile done), and put it back
    /// every --rules-resync-seconds: the container runtime reports the
    /// node's network ready only when weft is. Unset: weftd writes no
    /// conflist (`weftd install-cni` does).
    #[arg(long, env = "WEFTD_CNI_CONF_DIR")]
    cni_conf_dir: Option<PathBuf>,
    /// The conflist to write there instead of the default (weft, portmap).
    #[arg(long, env = "WEFTD_CNI_CONF")]
    cni_conf: Option<PathBuf>,
    /// Where the delegates (bridge, host-local, portmap) are, for the
    /// default conflist's cniVersion.
    #[arg(long, env = "WEFTD_CNI_BIN_DIR", default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    /// More directories holding the delegates, after --cni-bin-dir.
    #[arg(long, env = "WEFTD_CNI_DELEGATE_DIR")]
    cni_delegate_dir: Vec<PathBuf>,
    /// Keep this `weft` plugin binary (the one shipped with weftd)
    /// installed as --cni-bin-dir/weft: checked every
    /// --rules-resync-seconds once weftd is ready, and copied again when
    /// missing or altered. Unset: weftd leaves the plugin to `weftd
    /// install-cni`.
    #[arg(long, env = "WEFTD_CNI_PLUGIN")]
    cni_plugin: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "WEFTD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Compare this node with what weftd would program, and say what
    /// differs: kernel entries, subnet.env, the Node's annotations, weft's
    /// nftables table; which peers are skipped and why; whether the running
    /// weftd is ready, and its last warnings and errors. Changes nothing.
    /// Exit status 1 when a problem is found. Without flags, the flags and
    /// environment of the weftd running in this network namespace are
    /// used (`kubectl exec` into the weft pod and run `weftd doctor`).
    Doctor {
        /// Use this command line's flags and environment even when a weftd
        /// runs here.
        #[arg(long)]
        own_flags: bool,
    },
    /// Install the CNI plugin and conflist on this node (the DaemonSet's
    /// init container): atomic, and only what changed.
    InstallCni {
        /// Where the CNI plugins live.
        #[arg(long, default_value = "/opt/cni/bin")]
        bin_dir: PathBuf,
        /// Where the runtime reads CNI configs.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// A conflist to install instead of the default (weft, portmap).
        #[arg(long)]
        cni_conf: Option<PathBuf>,
        /// The `weft` plugin binary (default: next to weftd).
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// More directories holding the delegates (bridge, host-local, portmap).
        #[arg(long)]
        delegate_dir: Vec<PathBuf>,
        /// Install the plugin only: weftd writes the conflist once it is
        /// ready (its --cni-conf-dir).
        #[arg(long)]
        skip_conflist: bool,
    },
    /// Remove what weftd put on this node, for uninstall: the nftables
    /// table `inet weft`, the backend's devices (with their routes,
    /// neighbour and FDB entries) and those another backend left,
    /// subnet.env, then `10-weft.conflist`, the `weft` plugin (with
    /// --bin-dir) and an unused cni0 once no pod is wired by weft (pods
    /// still running must stay removable).
    Cleanup {
        /// Where the conflist was installed.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
        /// Where the `weft` plugin was installed: it is removed too (once no
        /// pod is wired by weft). Unset: the plugin stays.
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// The weft plugin's data directory: a saved config there is a pod
        /// still wired by weft, and keeps the conflist in place.
        #[arg(long, default_value = "/var/lib/cni/flannel")]
        data_dir: PathBuf,
        /// Then wait until no pod is wired by weft, remove the conflist and
        /// an unused cni0, and keep running until SIGTERM (the chart's
        /// cleanup DaemonSet).
        #[arg(long)]
        wait: bool,
        /// Remove what flanneld left instead (its iptables chains
        /// FLANNEL-POSTRTG and FLANNEL-FWD with the jumps to them, its
        /// nftables tables), and nothing else: for a node switched from
        /// flannel to weft.
        #[arg(long)]
        flannel: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, clap::ValueEnum)]
enum SubnetMgr {
    Kube,
    Etcd,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat, default_level: &str) {
    // kube's client logs an ERROR per failed connection attempt (weftd
    // says itself when the API is lost and when it is back); netlink's
    // warns about messages for a subscription weftd closed.
    // $WEFTD_LOG (e.g. the chart's "info") keeps these two quiet unless
    // it names them itself: its directives come after, and win.
    let quiet = "kube_client=off,netlink_proto=error";
    let directives = match std::env::var("WEFTD_LOG") {
        Ok(user) if !user.trim().is_empty() => format!("{default_level},{quiet},{user}"),
        _ => format!("{default_level},{quiet}"),
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!(
            "weftd: WEFTD_LOG={directives:?} is not a valid filter ({e}); using {default_level}"
        );
        tracing_subscriber::EnvFilter::new(format!("{default_level},{quiet}"))
    });
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // The last warnings and errors are kept for the doctor, too.
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(weftd::recent::RecentLayer);
    match format {
        LogFormat::Json => registry.with(fmt.json()).init(),
        LogFormat::Text => registry.with(fmt).init(),
    }
}

fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    let program = argv
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    match program {
        "flanneld" => return as_flanneld(&argv[1..]),
        "install-conf" => return as_install_conf(&argv[1..]),
        _ => {}
    }
    let args = Args::parse();
    if let Some(Sub::Doctor { own_flags }) = &args.command {
        init_logging(args.log_format, "error");
        if !own_flags
            && argv.len() == 2
            && std::env::var_os(DOCTOR_OF).is_none()
            && let Some(code) = doctor_as_running()
        {
            return code;
        }
        return doctor(args);
    }
    init_logging(args.log_format, "info");
    exit(run(args))
}

/// Set when the doctor runs again with a running weftd's command line.
const DOCTOR_OF: &str = "WEFTD_DOCTOR_OF";

/// `weftd doctor` without flags where a weftd runs in this network
/// namespace: runs the doctor again with that weftd's flags and
/// environment (its pod's, under `kubectl exec`). None when there is none.
fn doctor_as_running() -> Option<ExitCode> {
    let weftd::doctor::Agent { pid, args, env } = weftd::doctor::running_agent()?;
    println!("weftd doctor: with the flags and environment of weftd (pid {pid}) running here");
    let exe = std::env::current_exe().ok()?;
    let status = std::process::Command::new(exe)
        .args(&args)
        .arg("doctor")
        .env_clear()
        .envs(env)
        .env(DOCTOR_OF, pid.to_string())
        .status();
    match status {
        Ok(s) => Some(ExitCode::from(s.code().unwrap_or(2).clamp(0, 255) as u8)),
        Err(e) => {
            eprintln!("weftd doctor: running again as weftd {pid} does: {e}");
            Some(ExitCode::from(2))
        }
    }
}

/// `weftd doctor`: prints the report; 1 when something is wrong, 2 when
/// the flags are.
fn doctor(args: Args) -> ExitCode {
    let opts = match options(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("weftd doctor: {e:#}");
            return ExitCode::from(2);
        }
    };
    let report = match current_thread() {
        Ok(rt) => rt.block_on(weftd::doctor::examine(&opts)),
        Err(e) => {
            eprintln!("weftd doctor: {e}");
            return ExitCode::from(2);
        }
    };
    print!("{}", report.render());
    if report.problems() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// weftd run as `flanneld`: flanneld's command line and variables.
fn as_flanneld(argv: &[String]) -> ExitCode {
    use weftd::flanneld::{self, Command};
    let f = match flanneld::parse(argv, |k| std::env::var(k).ok()) {
        Ok(Command::Run(f)) => f,
        Ok(Command::Help) => {
            eprint!("{}", flanneld::usage());
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            eprintln!("{}", weftd::VERSION);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // Go's flag package: the error, the usage, exit status 2.
            eprintln!("{e}");
            eprint!("{}", flanneld::usage());
            return ExitCode::from(2);
        }
    };
    let level = match f.verbosity() {
        ..=0 => "info",
        1..=3 => "debug",
        _ => "trace",
    };
    init_logging(LogFormat::Text, level);
    tracing::info!(
        version = weftd::VERSION,
        "weftd started as flanneld: flanneld's flags and FLANNELD_* variables"
    );
    for (what, why) in f.ignored() {
        tracing::warn!("{what} is ignored: {why}");
    }
    exit((|| {
        let opts = f.options(node_ref(!f.kube())?)?;
        serve_agent(opts)
    })())
}

/// weftd run as flannel's `install-conf SRC DEST`, in flannel's words.
fn as_install_conf(argv: &[String]) -> ExitCode {
    let [src, dest] = argv else {
        eprintln!("usage: install-conf <src> <dest>");
        return ExitCode::FAILURE;
    };
    match weftd::install::install_conf(src.as_ref(), dest.as_ref()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error installing {src:?}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `cleanup --wait`'s view of the API: a client made as weftd makes its
/// own and this node's name ($NODE_NAME). None, with a warning, when either
/// is missing: the wait then relies on the node's files alone.
async fn cleanup_api(
    kubeconfig: Option<&std::path::Path>,
    api_url: Option<&str>,
) -> Option<(kube::Client, String)> {
    let Ok(node) = std::env::var("NODE_NAME") else {
        tracing::warn!(
            "NODE_NAME is not set: cleanup --wait cannot ask the API which pods are still on this node, and waits on the node's own files only"
        );
        return None;
    };
    match agent::kube_client(kubeconfig, api_url, true).await {
        Ok((client, _)) => Some((client, node)),
        Err(e) => {
            tracing::warn!(error = %agent::chain(&e), "no API client: cleanup --wait waits on the node's own files only");
            None
        }
    }
}

/// This node, from `NODE_NAME` or the pod weftd runs in; with the etcd
/// subnet manager (where the name only labels the logs) the host's name
/// will do.
fn node_ref(etcd: bool) -> anyhow::Result<agent::NodeRef> {
    if let Some(n) = agent::NodeRef::from_env(|k| std::env::var(k).ok()) {
        return Ok(n);
    }
    if etcd {
        let host = nix::unistd::gethostname()?;
        return Ok(agent::NodeRef::Name(host.to_string_lossy().into_owned()));
    }
    Err(anyhow::anyhow!(
        "no node name: set NODE_NAME (the DaemonSet passes spec.nodeName), or POD_NAME and POD_NAMESPACE to find it from the pod"
    ))
}

fn install_cni(
    bin_dir: PathBuf,
    conf_dir: PathBuf,
    cni_conf: Option<PathBuf>,
    plugin: Option<PathBuf>,
    delegate_dir: Vec<PathBuf>,
    skip_conflist: bool,
) -> anyhow::Result<()> {
    let plugin = match plugin {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("weft"))
            .ok_or_else(|| {
                anyhow::anyhow!("cannot locate the weft plugin next to weftd: pass --plugin")
            })?,
    };
    let install = weftd::install::Install {
        bin_dir,
        conf_dir,
        conf_file: cni_conf,
        plugin,
        delegate_dirs: delegate_dir,
    };
    if skip_conflist {
        let written = install
            .install_plugin()
            .map_err(|e| anyhow::anyhow!(agent::chain(&e)))?;
        tracing::info!(
            plugin_written = written,
            "CNI plugin installed (weftd writes the conflist once ready)"
        );
        return Ok(());
    }
    let done = install
        .run()
        .map_err(|e| anyhow::anyhow!(agent::chain(&e)))?;
    tracing::info!(
        plugin_written = done.plugin_written,
        conflist_written = done.conflist_written,
        cni_version = done.cni_version.as_deref().unwrap_or("-"),
        "CNI plugin and conflist installed"
    );
    Ok(())
}

fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(Sub::InstallCni {
            bin_dir,
            conf_dir,
            cni_conf,
            plugin,
            delegate_dir,
            skip_conflist,
        }) => {
            return install_cni(
                bin_dir,
                conf_dir,
                cni_conf,
                plugin,
                delegate_dir,
                skip_conflist,
            );
        }
        Some(Sub::Cleanup { flannel: true, .. }) => {
            let removed = weftd::cleanup::flannel()?;
            for r in &removed {
                tracing::info!(removed = %r, "cleanup --flannel");
            }
            if removed.is_empty() {
                tracing::info!("cleanup --flannel: nothing of flanneld's was left on this node");
            }
            return Ok(());
        }
        Some(Sub::Cleanup {
            conf_dir,
            bin_dir,
            data_dir,
            wait,
            ..
        }) => {
            let rt = current_thread()?;
            let removed = rt.block_on(weftd::cleanup::run(
                &args.net_config_path,
                &args.subnet_file,
                &conf_dir,
                bin_dir.as_deref(),
                &data_dir,
            ))?;
            for r in &removed {
                tracing::info!(removed = %r, "cleanup");
            }
            if removed.is_empty() {
                tracing::info!("cleanup: nothing of weft's was left on this node");
            }
            if wait {
                let (kubeconfig, api_url) = (args.kubeconfig.clone(), args.kube_api_url.clone());
                rt.block_on(async {
                    let api = cleanup_api(kubeconfig.as_deref(), api_url.as_deref()).await;
                    tokio::select! {
                        removed = weftd::cleanup::finish(&conf_dir, bin_dir.as_deref(), &data_dir, api) => {
                            for r in &removed {
                                tracing::info!(removed = %r, "cleanup");
                            }
                            tracing::info!("cleanup: done; nothing of weft's is left on this node");
                            terminated().await;
                        }
                        () = terminated() => {}
                    }
                });
            }
            return Ok(());
        }
        Some(Sub::Doctor { .. }) | None => {}
    }
    serve_agent(options(args)?)
}

/// The agent's options from weftd's flags.
fn options(args: Args) -> anyhow::Result<Options> {
    let healthz_addr = match args.healthz_addr.as_str() {
        "" => None,
        a => Some(
            a.parse::<SocketAddr>()
                .map_err(|e| anyhow::anyhow!("--healthz-addr {a:?}: {e}"))?,
        ),
    };
    let subnet_manager = match args.subnet_manager {
        SubnetMgr::Kube => agent::SubnetManager::Kube,
        SubnetMgr::Etcd => agent::SubnetManager::Etcd(weftd::lease::etcd::EtcdOptions {
            endpoints: args.etcd_endpoints,
            prefix: args.etcd_prefix,
            cafile: args.etcd_cafile,
            certfile: args.etcd_certfile,
            keyfile: args.etcd_keyfile,
            username: args.etcd_username,
            password: args.etcd_password,
            renew_margin: Duration::from_secs(args.subnet_lease_renew_margin * 60),
            ttl: Duration::from_secs(args.subnet_lease_ttl),
        }),
    };
    let etcd = matches!(subnet_manager, agent::SubnetManager::Etcd(_));
    // The conflist is made (and checked) now: a bad one stops weftd here,
    // with the reason, not at every period.
    let conflist = match args.cni_conf_dir {
        Some(dir) => {
            let (text, _) = weftd::install::Install {
                bin_dir: args.cni_bin_dir.clone(),
                conf_dir: dir.clone(),
                conf_file: args.cni_conf,
                plugin: PathBuf::new(),
                delegate_dirs: args.cni_delegate_dir,
            }
            .conflist()
            .map_err(|e| anyhow::anyhow!(agent::chain(&e)))?;
            Some((dir, text))
        }
        None => None,
    };
    let opts = Options {
        subnet_manager,
        node: node_ref(etcd)?,
        kubeconfig: args.kubeconfig,
        api_url: args.kube_api_url,
        kubeconfig_from_env: true,
        net_config_path: args.net_config_path,
        subnet_file: args.subnet_file,
        iface: Selection {
            ifaces: args.iface,
            regexes: args.iface_regex,
            can_reach: args.iface_can_reach,
        },
        public_ip: args.public_ip,
        public_ipv6: args.public_ipv6,
        ip_masq: args.ip_masq,
        masq_fully_random: args.ip_masq_fully_random,
        forward_rules: args.forward_rules,
        set_network_unavailable: args.set_node_network_unavailable,
        blackhole_route: args.ip_blackhole_route,
        healthz_addr,
        annotation_prefix: args.kube_annotation_prefix,
        resync: Duration::from_secs(args.resync_seconds.max(1)),
        allow_list: args.vxlan_allow_list,
        rules_resync: Duration::from_secs(args.rules_resync_seconds.max(1)),
        udp_offload: args.udp_offload,
        conflist,
        plugin: args
            .cni_plugin
            .map(|src| (src, args.cni_bin_dir.join("weft"))),
    };
    Ok(opts)
}

/// Resolves at SIGTERM or SIGINT.
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// Runs the agent until SIGTERM or SIGINT.
fn serve_agent(opts: Options) -> anyhow::Result<()> {
    current_thread()?.block_on(async {
        agent::run(opts, terminated())
            .await
            .map_err(|e| anyhow::anyhow!(agent::chain(&e)))
    })
}

fn current_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
