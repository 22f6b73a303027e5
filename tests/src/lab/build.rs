//! Building a lab: hub, control plane, identities, nodes, weftd.

use super::*;

/// Writes `lab.json` atomically.
pub fn save_state(state: &LabState) -> Result<(), LabError> {
    let path = state.dir.join("lab.json");
    let tmp = state.dir.join("lab.json.tmp");
    let text = serde_json::to_string_pretty(state).map_err(|source| LabError::StateFormat {
        path: path.clone(),
        source,
    })?;
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|source| LabError::State { path, source })
}

/// Starts the lab's kube-apiserver, records its PID and waits until ready.
pub(super) fn start_apiserver(state: &mut LabState) -> Result<(), LabError> {
    let api_log = state.dir.join("logs/kube-apiserver.log");
    let pki = Pki {
        dir: state.dir.join("pki"),
    };
    state.apiserver_pid = cp::start_apiserver(&cp::ApiserverSpec {
        lab: &state.name,
        hub_ns: &state.hub_netns,
        hub_ip: IpAddr::V4(state.hub_ip),
        binary: &state.apiserver_bin,
        pki: &pki,
        log: &api_log,
        real_nodes: state.real_nodes,
    })?;
    save_state(state)?;
    cp::wait_apiserver(
        &state.hub_netns,
        &state.dir.join("admin.kubeconfig"),
        state.apiserver_pid,
        &api_log,
        Duration::from_secs(90),
        &interrupted,
    )?;
    Ok(())
}

pub(super) fn check_interrupt() -> Result<(), LabError> {
    if interrupted() {
        Err(LabError::Interrupted)
    } else {
        Ok(())
    }
}

pub(super) fn build(cfg: &LabConfig, dir: &Path, apiserver: &Path) -> Result<Lab, LabError> {
    let say = |msg: &str| {
        if cfg.verbose {
            eprintln!("==> {msg}");
        }
    };
    let name = cfg.name.as_str();
    let mkdir = |p: &Path| {
        std::fs::create_dir_all(p).map_err(|source| LabError::State {
            path: p.to_path_buf(),
            source,
        })
    };
    mkdir(&dir.join("logs"))?;
    mkdir(&dir.join("nodes"))?;
    let underlay: Ipv4Network = UNDERLAY.parse().map_err(|_| LabError::BadName {
        name: UNDERLAY.into(),
    })?;
    let hub_ns = netns_name(name, "hub");

    say(&format!(
        "creating hub namespace {hub_ns} (bridge {HUB_BRIDGE}, {HUB_IP}/{})",
        underlay.prefix()
    ));
    netns::create(&hub_ns)?;
    let outside_ns = netns_name(name, "outside");
    netns::create(&outside_ns)?;
    let hub_cidr = format!("{HUB_IP}/{}", underlay.prefix());
    (|| {
        // A fixed MAC: a bridge otherwise takes its lowest port's, and
        // changes it when that node leaves, stranding every node's ARP entry
        // for the hub (the API server) until it expires.
        cmd::ip([
            "-n", &hub_ns, "link", "add", HUB_BRIDGE, "address", HUB_MAC, "type", "bridge",
        ])?;
        cmd::ip(["-n", &hub_ns, "addr", "add", &hub_cidr, "dev", HUB_BRIDGE])?;
        cmd::ip(["-n", &hub_ns, "link", "set", HUB_BRIDGE, "up"])?;
        if cfg.dual_stack {
            cmd::ip([
                "-n", &hub_ns, "addr", "add", HUB_IP6, "dev", HUB_BRIDGE, "nodad",
            ])?;
        }
        // The outside host, behind the hub acting as the underlay's router.
        cmd::veth_to_eth0(&hub_ns, "outside", &outside_ns)?;
        cmd::ip(["-n", &hub_ns, "addr", "add", OUTSIDE_GW, "dev", "outside"])?;
        cmd::ip(["-n", &hub_ns, "link", "set", "outside", "up"])?;
        cmd::run(Command::new("ip").args([
            "netns",
            "exec",
            &hub_ns,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]))?;
        let outside_cidr = format!("{OUTSIDE_IP}/24");
        cmd::ip([
            "-n",
            &outside_ns,
            "addr",
            "add",
            &outside_cidr,
            "dev",
            "eth0",
        ])?;
        cmd::ip(["-n", &outside_ns, "link", "set", "eth0", "up"])?;
        cmd::ip(["-n", &outside_ns, "link", "set", "lo", "up"])?;
        cmd::ip([
            "-n",
            &outside_ns,
            "route",
            "add",
            "default",
            "via",
            "203.0.113.1",
        ])?;
        Ok(())
    })()
    .map_err(LabError::Hub)?;
    check_interrupt()?;

    say("generating CA, serving certificate, tokens and kubeconfigs");
    let hub_ip = IpAddr::V4(HUB_IP);
    // The `kubernetes` Service's ClusterIP too: pods reach the API server
    // there through kube-proxy on real nodes.
    let pki = Pki::generate(
        &dir.join("pki"),
        &[hub_ip, IpAddr::V4(KUBERNETES_SERVICE_IP)],
    )?;
    let server = format!("https://{HUB_IP}:{}", cp::APISERVER_PORT);
    let ca_pem = std::fs::read_to_string(pki.ca_cert()).map_err(|source| LabError::State {
        path: pki.ca_cert(),
        source,
    })?;
    let admin = TokenUser {
        token: pki::random_token()?,
        user: "weft-lab-admin".into(),
        uid: "weft-lab-admin".into(),
        groups: vec!["system:masters".into()],
    };
    let weft = TokenUser {
        token: pki::random_token()?,
        user: cp::weft_user(),
        uid: "weft-serviceaccount".into(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", cp::WEFT_NAMESPACE),
        ],
    };
    let nobody = TokenUser {
        token: pki::random_token()?,
        user: "weft-lab-nobody".into(),
        uid: "weft-lab-nobody".into(),
        groups: vec![],
    };
    let mut users = vec![
        ("admin.kubeconfig".to_string(), admin),
        ("weft.kubeconfig".to_string(), weft),
        ("nobody.kubeconfig".to_string(), nobody),
    ];
    if cfg.kubelet {
        let names: Vec<String> = (1..=cfg.nodes).map(|i| format!("node-{i}")).collect();
        for n in &names {
            mkdir(&dir.join("nodes").join(n))?;
        }
        users.extend(crate::real::identities(&names)?);
    }
    let tokens: Vec<TokenUser> = users.iter().map(|(_, u)| u.clone()).collect();
    pki::write_token_file(&pki.token_file(), &tokens)?;
    for (file, user) in &users {
        let kc = pki::kubeconfig(
            &format!("weft-lab-{name}"),
            &server,
            &ca_pem,
            &user.user,
            &user.token,
        );
        pki::write(&dir.join(file), kc.as_bytes())?;
    }
    check_interrupt()?;

    say("starting etcd");
    let etcd_log = dir.join("logs/etcd.log");
    let etcd_pid = cp::start_etcd(name, &hub_ns, hub_ip, &dir.join("etcd"), &etcd_log)?;
    let mut state = LabState {
        name: name.to_string(),
        dir: dir.to_path_buf(),
        backend: cfg.backend,
        dual_stack: cfg.dual_stack,
        direct_routing: cfg.direct_routing,
        subnet_manager: cfg.subnet_manager,
        real_nodes: cfg.kubelet,
        weft_rollout_seconds: None,
        hub_netns: hub_ns.clone(),
        hub_ip: HUB_IP,
        underlay,
        apiserver_url: server.clone(),
        etcd_url: format!("http://{HUB_IP}:{}", cp::ETCD_PORT),
        etcd_pid,
        apiserver_pid: 0,
        apiserver_bin: apiserver.to_path_buf(),
        nodes: Vec::new(),
        pods: Vec::new(),
        cidrs: CidrAllocator::new(
            CLUSTER_CIDR.parse().map_err(|_| LabError::BadName {
                name: CLUSTER_CIDR.into(),
            })?,
            24,
        ),
        next_node_index: 1,
    };
    save_state(&state)?;
    cp::wait_etcd(
        &hub_ns,
        etcd_pid,
        &etcd_log,
        Duration::from_secs(30),
        &interrupted,
    )?;

    say(&format!(
        "starting kube-apiserver ({}) on {server}",
        apiserver.display()
    ));
    let api_log = dir.join("logs/kube-apiserver.log");
    state.apiserver_pid = cp::start_apiserver(&cp::ApiserverSpec {
        lab: name,
        hub_ns: &hub_ns,
        hub_ip,
        binary: apiserver,
        pki: &pki,
        log: &api_log,
        real_nodes: cfg.kubelet,
    })?;
    save_state(&state)?;
    let t0 = Instant::now();
    let admin_kc = dir.join("admin.kubeconfig");
    cp::wait_apiserver(
        &hub_ns,
        &admin_kc,
        state.apiserver_pid,
        &api_log,
        Duration::from_secs(90),
        &interrupted,
    )?;
    say(&format!(
        "kube-apiserver ready after {:.1} s",
        t0.elapsed().as_secs_f64()
    ));

    if cfg.kubelet {
        let mut lab = Lab {
            state,
            detached: false,
            verbose: cfg.verbose,
        };
        // On failure the caller tears the lab down by name; don't do it twice.
        lab.up_real_nodes(cfg.nodes)
            .inspect_err(|_| lab.detached = true)?;
        return Ok(lab);
    }

    say("applying weft's manifest (Namespace, ServiceAccount, RBAC, ConfigMap, DaemonSet)");
    cp::apply_manifest(&hub_ns, &admin_kc)?;

    let mut lab = Lab {
        state,
        detached: false,
        verbose: cfg.verbose,
    };
    for _ in 0..cfg.nodes {
        check_interrupt()?;
        // On failure the caller tears the lab down by name; don't do it twice.
        lab.add_node(true).inspect_err(|_| {
            lab.detached = true;
        })?;
    }
    if cfg.weftd {
        let names: Vec<String> = lab.state.nodes.iter().map(|n| n.name.clone()).collect();
        for n in &names {
            check_interrupt()?;
            lab.say(&format!("starting weftd on {n}"));
            lab.start_weftd(n).inspect_err(|_| lab.detached = true)?;
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        lab.wait_weftd_ready(&refs, Duration::from_secs(60))
            .inspect_err(|_| lab.detached = true)?;
        lab.say("weftd is ready on every node");
    }
    lab.say(&format!("lab {name} is up"));
    Ok(lab)
}
