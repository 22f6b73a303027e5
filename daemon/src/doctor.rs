//! `weftd doctor`: why can't pod A reach pod B, without reading logs. It
//! takes the node as weftd would (net-conf.json, our Node and every other
//! Node from the API server, the external interface), runs the backend's
//! start and a full reconcile through a [`DryRun`] netlink port (reads the
//! kernel, writes nothing), and reports what weftd would change: kernel
//! entries missing, stale or different; subnet.env; our annotations; weft's
//! nftables table; the peers skipped and why; and, from the running weftd
//! (its health address), whether it is ready, how many peers it has, and
//! the last warnings and errors it logged. Nothing on the node or in the
//! API is changed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use kube::Api;
use kube::api::ListParams;

use crate::agent::{self, Options, SubnetManager};
use crate::annotations::Names;
use crate::backend::{Backend, Local, Pass, PeerCodec};
use crate::config::{BackendConfig, NetConfig};
use crate::family::Family;
use crate::lease::judge::Skip;
use crate::lease::kube::node::SlimNode;
use crate::lease::kube::{self as kube_lease};
use crate::lease::peers::{self, PeerSet};
use crate::lease::{OwnLease, Publish};
use crate::metrics::Metrics;
use crate::netlink::dry::{DryRun, Write};
use crate::netlink::kernel::Kernel;
use crate::netlink::{LinkInfo, Netlink, Op};
use crate::nft::kernel::{Check, Nft};
use crate::{chain, nft, udp};

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Problem,
    /// It could not be checked (something before it failed, or the doctor
    /// cannot see it).
    Unchecked,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub status: Status,
    pub area: &'static str,
    pub text: String,
}

/// Everything the doctor found, in the order it looked.
#[derive(Debug, Default)]
pub struct Report {
    pub node: Option<String>,
    pub findings: Vec<Finding>,
    /// The running weftd's last warnings and errors (time, level, text),
    /// and how many it logged since start.
    pub last_errors: Option<crate::recent::Logged>,
}

/// How many skipped peers and kernel differences are listed one by one.
const LISTED: usize = 25;

impl Report {
    fn add(&mut self, status: Status, area: &'static str, text: impl Into<String>) {
        self.findings.push(Finding {
            status,
            area,
            text: text.into(),
        });
    }

    fn ok(&mut self, area: &'static str, text: impl Into<String>) {
        self.add(Status::Ok, area, text);
    }

    fn problem(&mut self, area: &'static str, text: impl Into<String>) {
        self.add(Status::Problem, area, text);
    }

    fn unchecked(&mut self, area: &'static str, text: impl Into<String>) {
        self.add(Status::Unchecked, area, text);
    }

    /// A step's value, or its error reported as a problem of `area`.
    fn step<T, E: std::error::Error>(
        &mut self,
        area: &'static str,
        res: Result<T, E>,
    ) -> Option<T> {
        res.map_err(|e| self.problem(area, chain(&e))).ok()
    }

    /// How many problems it found.
    pub fn problems(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.status == Status::Problem)
            .count()
    }

    /// The report as printed: one line per finding, the last errors, a
    /// summary.
    pub fn render(&self) -> String {
        let mut s = format!(
            "weftd doctor, node {}\n",
            self.node.as_deref().unwrap_or("(unknown)")
        );
        for f in &self.findings {
            let tag = match f.status {
                Status::Ok => "ok",
                Status::Problem => "PROBLEM",
                Status::Unchecked => "--",
            };
            let _ = writeln!(s, "{tag:<8} {:<12} {}", f.area, f.text);
        }
        if let Some(logged) = &self.last_errors {
            let _ = writeln!(
                s,
                "weftd's last warnings and errors ({} since it started):",
                logged.total
            );
            if logged.lines.is_empty() {
                s.push_str("  none\n");
            }
            for line in &logged.lines {
                let _ = writeln!(s, "  {line}");
            }
        }
        let n = self.problems();
        let _ = match n {
            0 => writeln!(s, "no problem found"),
            1 => writeln!(s, "1 problem found"),
            _ => writeln!(s, "{n} problems found"),
        };
        s
    }
}

/// Examines this node as `opts` (weftd's own flags) describe it.
pub async fn examine(opts: &Options) -> Report {
    let mut r = Report::default();
    let weftd = running_weftd(opts.healthz_addr, &mut r).await;
    let Some(cfg) = r.step("config", NetConfig::load(&opts.net_config_path)) else {
        return r;
    };
    r.ok(
        "config",
        format!(
            "{}: {}, backend {}",
            opts.net_config_path.display(),
            networks(&cfg),
            cfg.backend.type_name()
        ),
    );
    if let SubnetManager::Etcd(_) = opts.subnet_manager {
        r.unchecked(
            "lease",
            "the doctor reads leases from Kubernetes Nodes only; the etcd subnet manager is not checked yet",
        );
        return r;
    }
    let Some((names, own, nodes)) = api_view(opts, &mut r).await else {
        return r;
    };
    let Some(nl) = r.step("kernel", Kernel::connect().map(DryRun::new)) else {
        return r;
    };
    let found = agent::interface_and_addresses(&nl, &cfg, opts, &own).await;
    let Some((ext, addresses)) = r.step("interface", found) else {
        return r;
    };
    let Some(local) = r.step(
        "lease",
        agent::local_node(&cfg, opts, &own, ext, &addresses),
    ) else {
        return r;
    };
    r.ok(
        "interface",
        format!(
            "{} (MTU {}), subnets {}",
            local.ext.name,
            local.ext.mtu,
            local
                .families
                .present()
                .map(|(_, l)| format!("{} reached at {}", l.subnet, l.advertised))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    match &cfg.backend {
        BackendConfig::Udp(c) => {
            check_udp(&nl, c, &local, opts, &names, &own, &nodes, weftd, &mut r).await
        }
        other => {
            let metrics = Arc::new(Metrics::default());
            match crate::backends::start(&nl, other, &local, &metrics).await {
                Ok(mut backend) => {
                    let shown = Shown::of(backend.as_ref(), &local);
                    let set = common(&shown, &local, opts, &names, &own, &nodes, weftd, &mut r);
                    backend.reconcile(&nl, &set, Pass::Full, &metrics).await;
                    kernel_writes(&nl, &mut r).await;
                    check_nft(&local, opts, backend.guarded_port(), &set, &mut r);
                }
                Err(e) => r.problem("backend", chain(&e)),
            }
        }
    }
    r
}

/// The Network(s) of net-conf.json, for the report.
fn networks(cfg: &NetConfig) -> String {
    [&cfg.ipv4, &cfg.ipv6]
        .into_iter()
        .flatten()
        .map(|f| format!("Network {}", f.network))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the running weftd says of itself (at its health address, in this
/// network namespace): the peer counts of `/metrics`, by family label.
#[derive(Debug, Clone, Copy, Default)]
struct WeftdView {
    ready: bool,
    peers: [Option<u64>; 2],
}

async fn running_weftd(addr: Option<SocketAddr>, r: &mut Report) -> Option<WeftdView> {
    let Some(mut addr) = addr else {
        r.unchecked(
            "weftd",
            "--healthz-addr is off: the running weftd is not asked",
        );
        return None;
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            IpAddr::from([127, 0, 0, 1])
        } else {
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        });
    }
    let ready = match http_get(addr, "/readyz").await {
        Ok((200, _)) => true,
        Ok((_, body)) => {
            r.problem("weftd", format!("at {addr}: {}", body.trim()));
            false
        }
        Err(e) => {
            r.problem(
                "weftd",
                format!("nothing answers at {addr} ({e}): is weftd running on this node?"),
            );
            return None;
        }
    };
    let mut view = WeftdView {
        ready,
        ..Default::default()
    };
    if let Ok((200, text)) = http_get(addr, "/metrics").await {
        for (i, family) in ["ipv4", "ipv6"].into_iter().enumerate() {
            let key = format!("weft_peers{{family=\"{family}\"}} ");
            view.peers[i] = text
                .lines()
                .find_map(|l| l.strip_prefix(&key)?.trim().parse().ok());
        }
    }
    if ready {
        r.ok("weftd", format!("running and ready at {addr}"));
    }
    if let Ok((200, text)) = http_get(addr, "/debug/errors").await {
        r.last_errors = Some(crate::recent::parse(&text));
    }
    Some(view)
}

/// One GET over HTTP/1.1 (weftd's health server closes each connection):
/// the status code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut conn = tokio::net::TcpStream::connect(addr).await?;
        conn.write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        conn.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP answer: {head:?}"))?;
    Ok((code, body.to_string()))
}

/// Our Node and every Node, from the API server.
async fn api_view(opts: &Options, r: &mut Report) -> Option<(Names, OwnLease, Vec<SlimNode>)> {
    let names = match Names::new(&opts.annotation_prefix) {
        Ok(n) => n,
        Err(e) => {
            r.problem("config", format!("--kube-annotation-prefix: {e}"));
            return None;
        }
    };
    let result = async {
        let (client, server) = agent::kube_client(
            opts.kubeconfig.as_deref(),
            opts.api_url.as_deref(),
            opts.kubeconfig_from_env,
        )
        .await
        .map_err(|e| chain(&e))?;
        let name = agent::node_name(&client, &opts.node)
            .await
            .map_err(|e| chain(&e))?;
        let api: Api<SlimNode> = Api::all(client);
        let mut nodes = Vec::new();
        let mut params = ListParams::default().limit(500);
        loop {
            let page = api.list(&params).await.map_err(|e| {
                format!(
                    "listing Nodes at {server}: {}",
                    kube_lease::acquire::answer(&e)
                )
            })?;
            nodes.extend(page.items);
            match page.metadata.continue_ {
                Some(c) if !c.is_empty() => params = params.continue_token(&c),
                _ => break,
            }
        }
        Ok::<_, String>((name, nodes))
    };
    let (name, nodes) = match tokio::time::timeout(Duration::from_secs(30), result).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            r.problem("api", e);
            return None;
        }
        Err(_) => {
            r.problem("api", "no answer from the API server within 30 s");
            return None;
        }
    };
    r.node = Some(name.clone());
    let Some(node) = nodes.iter().find(|n| n.name() == name) else {
        r.problem("lease", format!("node {name} is not in the API server"));
        return None;
    };
    if node.pod_cidrs().is_empty() {
        r.problem(
            "lease",
            format!(
                "node {name} has no spec.podCIDR (is kube-controller-manager running with --allocate-node-cidrs?)"
            ),
        );
        return None;
    }
    let own = kube_lease::own_lease(node, &names);
    Some((names, own, nodes))
}

/// What a backend shows the cluster: what it publishes, the pods' MTU,
/// how it judges peers.
struct Shown {
    ours: Publish,
    mtu: u32,
    codec: Arc<dyn PeerCodec>,
}

impl Shown {
    fn of<N: Netlink>(backend: &dyn Backend<N>, local: &Local) -> Shown {
        Shown {
            ours: agent::publish_of(backend, local),
            mtu: backend.mtu(),
            codec: backend.codec(),
        }
    }
}

/// What every backend shares: our annotations, subnet.env, the peers (and
/// the running weftd's count of them).
#[allow(clippy::too_many_arguments)]
fn common(
    shown: &Shown,
    local: &Local,
    opts: &Options,
    names: &Names,
    own: &OwnLease,
    nodes: &[SlimNode],
    weftd: Option<WeftdView>,
    r: &mut Report,
) -> PeerSet {
    check_annotations(&shown.ours, names, own, nodes, r);
    check_subnet_env(local, shown.mtu, opts, r);
    let ctx = agent::context(
        kube_lease::fields(names),
        &own.name,
        local,
        shown.codec.clone(),
    );
    let records: Vec<_> = nodes.iter().map(|n| n.record(names)).collect();
    let set = peers::derive(&ctx, &records);
    report_peers(&set, local, weftd, r);
    set
}

fn check_annotations(
    ours: &Publish,
    names: &Names,
    own: &OwnLease,
    nodes: &[SlimNode],
    r: &mut Report,
) {
    let wanted = kube_lease::wanted(names, ours);
    let node = nodes.iter().find(|n| n.name() == own.name);
    let differ: Vec<String> = wanted
        .iter()
        .filter_map(|(k, v)| {
            let have = node.and_then(|n| n.annotation(k));
            (have != Some(v.as_str())).then(|| match have {
                Some(h) => format!("{k} is {h:?}, weftd publishes {v:?}"),
                None => format!("{k} is missing, weftd publishes {v:?}"),
            })
        })
        .collect();
    if differ.is_empty() {
        r.ok(
            "annotations",
            format!("node {} publishes what weftd would", own.name),
        );
    } else {
        for d in differ {
            r.problem("annotations", d);
        }
    }
}

fn check_subnet_env(local: &Local, mtu: u32, opts: &Options, r: &mut Report) {
    let path = &opts.subnet_file;
    let want = agent::subnet_env(local, mtu, opts.ip_masq).render();
    match std::fs::read_to_string(path) {
        Ok(have) if have == want => r.ok(
            "subnet.env",
            format!("{} as weftd writes it", path.display()),
        ),
        Ok(have) => {
            let have: Vec<&str> = have.lines().collect();
            let missing: Vec<&str> = want.lines().filter(|l| !have.contains(l)).collect();
            let extra: Vec<&str> = have
                .iter()
                .copied()
                .filter(|l| !want.lines().any(|w| w == *l))
                .collect();
            r.problem(
                "subnet.env",
                format!(
                    "{} differs: has {extra:?}, weftd writes {missing:?} (pods started now get the wrong subnet or MTU)",
                    path.display()
                ),
            );
        }
        Err(e) => r.problem(
            "subnet.env",
            format!(
                "{}: {e} (every pod ADD on this node fails without it)",
                path.display()
            ),
        ),
    }
}

fn report_peers(set: &PeerSet, local: &Local, weftd: Option<WeftdView>, r: &mut Report) {
    let counts: Vec<String> = local
        .families
        .present()
        .map(|(f, _)| format!("{} {}", f.label(), set.peers.get(f).len()))
        .collect();
    r.ok(
        "peers",
        format!("{} ({} skipped)", counts.join(", "), set.skipped.len()),
    );
    for Skip {
        node,
        family,
        reason,
        detail,
    } in set.skipped.iter().take(LISTED)
    {
        r.problem(
            "peers",
            format!(
                "node {node} ({}) skipped, {}: {detail}",
                family.label(),
                reason.label()
            ),
        );
    }
    if set.skipped.len() > LISTED {
        r.problem(
            "peers",
            format!("... and {} more skipped", set.skipped.len() - LISTED),
        );
    }
    let Some(view) = weftd.filter(|v| v.ready) else {
        return;
    };
    for (i, family) in [Family::V4, Family::V6].into_iter().enumerate() {
        if local.families.get(family).is_none() {
            continue;
        }
        let want = set.peers.get(family).len() as u64;
        match view.peers[i] {
            Some(n) if n == want => {}
            Some(n) => r.problem(
                "peers",
                format!(
                    "the running weftd has {n} {} peers, the API server's Nodes give {want} (its watch may be behind or broken)",
                    family.label()
                ),
            ),
            None => {}
        }
    }
}

/// The writes the dry run was asked for, in words.
async fn kernel_writes<N: Netlink>(nl: &DryRun<N>, r: &mut Report) {
    let writes = nl.writes();
    if writes.is_empty() {
        r.ok(
            "kernel",
            "devices, routes, neighbour and FDB entries as weftd programs them",
        );
        return;
    }
    let links: BTreeMap<u32, String> = nl
        .links()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|l: LinkInfo| (l.index, l.name))
        .collect();
    let name = |i: u32| links.get(&i).cloned().unwrap_or_else(|| format!("#{i}"));
    for w in writes.iter().take(LISTED) {
        r.problem("kernel", describe(w, &name));
    }
    if writes.len() > LISTED {
        r.problem(
            "kernel",
            format!("... and {} more differences", writes.len() - LISTED),
        );
    }
}

/// One write weftd would make, as what is wrong now.
fn describe(w: &Write, name: &dyn Fn(u32) -> String) -> String {
    // As `ip route` shows it.
    let route = |rt: &crate::netlink::Route| {
        let mut s = format!("route {}", rt.dst);
        if let Some(g) = rt.gateway {
            let _ = write!(s, " via {g}");
        }
        let _ = write!(s, " dev {}", name(rt.link));
        if rt.onlink {
            s.push_str(" onlink");
        }
        s
    };
    match w {
        Write::CreateVxlan(spec) => format!(
            "device {} is missing or not as weftd makes it (VNI {}, port {}, local {}, MAC {}, MTU {})",
            spec.name, spec.vni, spec.port, spec.local, spec.mac, spec.mtu
        ),
        Write::SetLink { index, mtu, up } => format!(
            "device {} is down or has another MTU (weftd sets MTU {mtu}{})",
            name(*index),
            if *up { ", up" } else { "" }
        ),
        Write::Address { index, addr, add } => match add {
            true => format!("address {addr} missing on {}", name(*index)),
            false => format!("address {addr} on {} is not weftd's", name(*index)),
        },
        Write::Entry(op) => match op {
            Op::ReplaceRoute(rt) => format!("{} missing or different", route(rt)),
            Op::DelRoute(rt) => format!("{} is stale or foreign (weftd deletes it)", route(rt)),
            Op::ReplaceNeigh(n) => format!(
                "neighbour {} lladdr {} dev {} missing or different",
                n.ip,
                n.mac,
                name(n.link)
            ),
            Op::DelNeigh(n) => format!(
                "neighbour {} lladdr {} dev {} is stale (weftd deletes it)",
                n.ip,
                n.mac,
                name(n.link)
            ),
            Op::ReplaceFdb(f) => format!(
                "fdb {} dst {} dev {} missing or different",
                f.mac,
                f.dst,
                name(f.link)
            ),
            Op::DelFdb(f) => format!(
                "fdb {} dst {} dev {} is stale (weftd deletes it)",
                f.mac,
                f.dst,
                name(f.link)
            ),
        },
    }
}

fn check_nft(
    local: &Local,
    opts: &Options,
    guarded_port: Option<u16>,
    set: &PeerSet,
    r: &mut Report,
) {
    let mut input = agent::rules_input(local, opts, guarded_port);
    if let Some((_, allowed)) = &mut input.allow_list {
        *allowed = set.public_ips();
    }
    let rs = nft::build(&input);
    let table = nft::TABLE;
    match Nft::open().and_then(|mut n| n.check(&rs)) {
        Ok(Check::Same) => r.ok("nftables", format!("table {table} as weftd writes it")),
        Ok(Check::Missing) => r.problem(
            "nftables",
            format!("table {table} is missing (no masquerade, no forward accept, no allow-list)"),
        ),
        Ok(Check::Altered) => r.problem(
            "nftables",
            format!("table {table}'s chains or rules were changed (flushed or edited)"),
        ),
        Ok(Check::Elements { added, removed }) => r.problem(
            "nftables",
            format!(
                "the allow-list lacks {added} peers' addresses and holds {removed} that are not peers (their VXLAN packets are dropped)"
            ),
        ),
        Err(e) => r.problem("nftables", chain(&e)),
    }
}

/// udp: the peers live in weftd's memory; the kernel holds `flannel0`,
/// its address and the Network's route.
#[allow(clippy::too_many_arguments)]
async fn check_udp<N: Netlink>(
    nl: &DryRun<N>,
    cfg: &crate::config::UdpConfig,
    local: &Local,
    opts: &Options,
    names: &Names,
    own: &OwnLease,
    nodes: &[SlimNode],
    weftd: Option<WeftdView>,
    r: &mut Report,
) {
    let spec = match udp::backend::spec(cfg, local) {
        Ok(s) => s,
        Err(e) => {
            r.problem("backend", chain(&e));
            return;
        }
    };
    let ours = Publish {
        backend_type: udp::backend::TYPE.to_string(),
        families: local
            .families
            .map(|_, l| l.as_ref().map(|l| (l.advertised, "null".to_string()))),
    };
    let shown = Shown {
        ours,
        mtu: spec.mtu,
        codec: udp::backend::codec(),
    };
    let set = common(&shown, local, opts, names, own, nodes, weftd, r);
    match nl.link_by_name(&spec.name).await {
        Ok(Some(link)) => {
            if link.mtu != spec.mtu || !link.up {
                r.problem(
                    "kernel",
                    format!(
                        "device {} has MTU {}{}, weftd makes it MTU {}, up",
                        spec.name,
                        link.mtu,
                        if link.up { "" } else { ", down" },
                        spec.mtu
                    ),
                );
            }
            match udp::backend::ensure_routes(nl, link.index, &spec).await {
                Ok(()) => kernel_writes(nl, r).await,
                Err(e) => r.problem("kernel", chain(&e)),
            }
        }
        Ok(None) => r.problem(
            "kernel",
            format!("device {} is missing (is weftd running?)", spec.name),
        ),
        Err(e) => r.problem("kernel", chain(&e)),
    }
    r.unchecked(
        "kernel",
        "udp keeps its peer table in weftd's memory: compared through weft_peers above",
    );
    check_nft(local, opts, Some(spec.port), &set, r);
}

/// A weftd agent process.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub pid: u32,
    /// Its arguments after the program name.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// The weftd agent running in this network namespace (another process
/// named `weftd`, with no subcommand). None when there is none, or more
/// than one.
pub fn running_agent() -> Option<Agent> {
    let own_ns = std::fs::read_link("/proc/self/ns/net").ok()?;
    let me = std::process::id();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if pid == me || comm.trim() != "weftd" {
            continue;
        }
        if std::fs::read_link(dir.join("ns/net")).ok().as_ref() != Some(&own_ns) {
            continue;
        }
        let split = |raw: Vec<u8>| -> Vec<String> {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        };
        let argv = split(std::fs::read(dir.join("cmdline")).unwrap_or_default());
        let agent = !argv
            .iter()
            .skip(1)
            .any(|a| ["doctor", "cleanup", "install-cni", "help"].contains(&a.as_str()));
        if argv.is_empty() || !agent {
            continue;
        }
        let env = split(std::fs::read(dir.join("environ")).unwrap_or_default())
            .into_iter()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect();
        found.push(Agent {
            pid,
            args: argv[1..].to_vec(),
            env,
        });
    }
    match found.len() {
        1 => found.pop(),
        _ => None,
    }
}
