use super::*;

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn run(a: &[&str], env: &[(&str, &str)]) -> Result<Flanneld, FlagError> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match parse(&args(a), |k| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })? {
        Command::Run(f) => Ok(f),
        other => panic!("{a:?}: {other:?}"),
    }
}

fn node() -> NodeRef {
    NodeRef::Name("node-1".into())
}

/// The names flanneld v0.2x defines (main.go's flannelFlags), glog's `v`,
/// `vmodule` and `log_backtrace_at` copied in: the table holds exactly these.
#[test]
fn the_table_holds_exactly_flanneld_s_flags() {
    let mut want = vec![
        "etcd-endpoints",
        "etcd-prefix",
        "etcd-keyfile",
        "etcd-certfile",
        "etcd-cafile",
        "etcd-username",
        "etcd-password",
        "iface",
        "iface-regex",
        "iface-can-reach",
        "subnet-file",
        "public-ip",
        "public-ipv6",
        "subnet-lease-renew-margin",
        "ip-masq",
        "ip-masq-fully-random-disable",
        "kube-subnet-mgr",
        "kube-api-url",
        "kube-annotation-prefix",
        "kubeconfig-file",
        "version",
        "healthz-ip",
        "healthz-port",
        "iptables-resync",
        "iptables-forward-rules",
        "ip-blackhole-route",
        "net-config-path",
        "set-node-network-unavailable",
        "v",
        "vmodule",
        "log_backtrace_at",
    ];
    let mut have: Vec<&str> = FLAGS.iter().map(|f| f.name).collect();
    want.sort_unstable();
    have.sort_unstable();
    assert_eq!(have, want);
    for f in FLAGS {
        if f.kind != Kind::List && !f.default.is_empty() {
            assert!(convert(f, f.default).is_ok(), "{}'s default", f.name);
        }
    }
}

/// kube-flannel.yml's container: `--ip-masq --kube-subnet-mgr`, nothing
/// else, gives flanneld's defaults.
#[test]
fn kube_flannel_yml_args_give_flanneld_s_defaults() {
    let f = run(&["--ip-masq", "--kube-subnet-mgr"], &[]).unwrap();
    let o = f.options(node()).unwrap();
    assert!(o.ip_masq);
    assert!(o.masq_fully_random);
    assert!(o.forward_rules);
    assert!(o.set_network_unavailable);
    assert_eq!(o.healthz_addr, None, "healthz-port 0: off");
    assert_eq!(o.rules_resync, Duration::from_secs(5));
    assert_eq!(o.annotation_prefix, "flannel.alpha.coreos.com");
    assert_eq!(
        o.net_config_path,
        PathBuf::from("/etc/kube-flannel/net-conf.json")
    );
    assert_eq!(o.subnet_file, PathBuf::from("/run/flannel/subnet.env"));
    assert_eq!(o.kubeconfig, None);
    assert_eq!(o.api_url, None);
    assert_eq!(o.public_ip, None);
    assert!(o.iface.ifaces.is_empty() && o.iface.can_reach.is_none());
    assert_eq!(f.verbosity(), 0);
    assert!(f.ignored().is_empty());
}

/// Every spelling Go's flag package takes, in one command line.
const GO_SPELLINGS: [&str; 13] = [
    "-kube-subnet-mgr",
    "-v=2",
    "--iface",
    "eth1",
    "-iface=10.0.0.1",
    "--ip-masq=false",
    "-healthz-port",
    "0x1f90",
    "--healthz-ip=127.0.0.1",
    "-iptables-resync=010",
    "--iptables-forward-rules=F",
    "-ip-masq-fully-random-disable=1",
    "--set-node-network-unavailable=FALSE",
];

#[test]
fn go_flag_syntax() {
    // A non-bool flag takes the next argument whatever it looks like.
    let f = run(&[&GO_SPELLINGS[..], &["--public-ip", "-5"]].concat(), &[]);
    let e = f.unwrap().options(node()).unwrap_err();
    assert_eq!(
        e,
        FlagError::Invalid {
            flag: "public-ip",
            reason: "\"-5\" is not an IP address".into()
        }
    );
    let f = run(
        &[&GO_SPELLINGS[..], &["--iface-can-reach=192.0.2.1", "--"]].concat(),
        &[],
    )
    .unwrap();
    assert_eq!(f.verbosity(), 2);
    let o = f.options(node()).unwrap();
    assert_eq!(o.iface.ifaces, ["eth1", "10.0.0.1"], "repeated, in order");
    assert!(!o.ip_masq);
    assert_eq!(o.healthz_addr, Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(o.rules_resync, Duration::from_secs(8), "010 is octal");
    assert!(!o.forward_rules && !o.masq_fully_random && !o.set_network_unavailable);
    assert_eq!(o.iface.can_reach, Some("192.0.2.1".parse().unwrap()));
}

#[test]
fn go_integers() {
    for (s, v) in [
        ("42", 42),
        ("052", 42),
        ("0x2a", 42),
        ("0X2A", 42),
        ("0o52", 42),
        ("0b101010", 42),
        ("0x_2a", 42),
        ("-7", -7),
        ("+7", 7),
        ("0", 0),
    ] {
        assert_eq!(parse_int(s), Some(v), "{s}");
    }
    for s in [
        "",
        "4_2",
        "0x",
        "08",
        "1e3",
        "0x2a_",
        "0x__2a",
        "ten",
        "99999999999999999999",
    ] {
        assert_eq!(parse_int(s), None, "{s}");
    }
}

#[test]
fn variables_fill_what_the_command_line_did_not_set() {
    let f = run(
        &["--kube-subnet-mgr", "--iface=eth0"],
        &[
            ("FLANNELD_IFACE", "eth9"),
            ("FLANNELD_IP_MASQ", "true"),
            ("FLANNELD_PUBLIC_IP", ""),
            ("FLANNELD_HEALTHZ_PORT", "8081"),
            ("FLANNELD_KUBE_ANNOTATION_PREFIX", "example.com/net"),
            ("FLANNELD_V", "4"),
        ],
    )
    .unwrap();
    let o = f.options(node()).unwrap();
    assert_eq!(o.iface.ifaces, ["eth0"], "the command line wins");
    assert!(o.ip_masq);
    assert_eq!(o.public_ip, None, "an empty variable is unset");
    assert_eq!(o.healthz_addr, Some("0.0.0.0:8081".parse().unwrap()));
    assert_eq!(o.annotation_prefix, "example.com/net");
    assert_eq!(f.verbosity(), 4);
    assert_eq!(
        f.given("ip-masq"),
        Some(&Source::Env("FLANNELD_IP_MASQ".into()))
    );
    // The subnet manager from the environment alone, as kube-flannel.yml
    // variants do.
    let f = run(&[], &[("FLANNELD_KUBE_SUBNET_MGR", "1")]).unwrap();
    assert!(f.options(node()).is_ok());
}

#[test]
fn bad_input_names_the_flag_or_variable() {
    let e = |a: &[&str], env: &[(&str, &str)]| run(a, env).unwrap_err();
    assert_eq!(
        e(&["--kube-subnet-mgr", "--no-such"], &[]),
        FlagError::Unknown("no-such".into())
    );
    assert_eq!(
        e(&["---iface=eth0"], &[]),
        FlagError::Syntax("---iface=eth0".into())
    );
    assert_eq!(e(&["-=x"], &[]), FlagError::Syntax("-=x".into()));
    assert_eq!(
        e(&["--kube-subnet-mgr", "--iface"], &[]),
        FlagError::NeedsArgument("iface".into())
    );
    assert_eq!(
        e(&["--ip-masq=yes"], &[]),
        FlagError::Value {
            flag: "ip-masq",
            value: "yes".into(),
            reason: "parse error"
        }
    );
    // Go stops at "false" and flanneld would drop it and the rest.
    assert_eq!(
        e(&["--ip-masq", "false", "--kube-subnet-mgr"], &[]),
        FlagError::Positional("false".into())
    );
    assert_eq!(
        e(&["--kube-subnet-mgr", "--", "extra"], &[]),
        FlagError::Positional("extra".into())
    );
    assert_eq!(
        e(
            &["--kube-subnet-mgr"],
            &[("FLANNELD_HEALTHZ_PORT", "eighty")]
        ),
        FlagError::EnvValue {
            var: "FLANNELD_HEALTHZ_PORT".into(),
            flag: "healthz-port",
            value: "eighty".into(),
            reason: "parse error (an integer: 42, 0x2a, 052)"
        }
    );
    let invalid = |a: &[&str]| run(a, &[]).unwrap().options(node()).unwrap_err();
    for (a, flag) in [
        (
            &["--kube-subnet-mgr", "--subnet-lease-renew-margin=0"][..],
            "subnet-lease-renew-margin",
        ),
        (
            &["--kube-subnet-mgr", "--subnet-lease-renew-margin=1440"],
            "subnet-lease-renew-margin",
        ),
        (
            &["--kube-subnet-mgr", "--healthz-port=65536"],
            "healthz-port",
        ),
        (&["--kube-subnet-mgr", "--healthz-port=-1"], "healthz-port"),
        (
            &["--kube-subnet-mgr", "--healthz-port=80", "--healthz-ip=any"],
            "healthz-ip",
        ),
        (
            &["--kube-subnet-mgr", "--iptables-resync=0"],
            "iptables-resync",
        ),
        (
            &["--kube-subnet-mgr", "--public-ipv6=fe80::1%eth0"],
            "public-ipv6",
        ),
        (
            &["--kube-subnet-mgr", "--iface-can-reach=gw"],
            "iface-can-reach",
        ),
    ] {
        match invalid(a) {
            FlagError::Invalid { flag: f, .. } => assert_eq!(f, flag, "{a:?}"),
            other => panic!("{a:?}: {other:?}"),
        }
    }
}

#[test]
fn help_version_and_what_is_ignored() {
    for h in ["-h", "--help", "-help"] {
        assert!(matches!(parse(&args(&[h]), no_env), Ok(Command::Help)));
    }
    assert!(matches!(
        parse(&args(&["--version"]), no_env),
        Ok(Command::Version)
    ));
    // flanneld reads --version before the environment.
    assert!(matches!(
        parse(&args(&[]), |k: &str| (k == "FLANNELD_VERSION")
            .then(|| "true".into())),
        Ok(Command::Run(_))
    ));
    let f = run(
        &["--kube-subnet-mgr", "--vmodule=kube=3", "--etcd-prefix=/x"],
        &[("FLANNELD_LOG_BACKTRACE_AT", "main.go:1")],
    )
    .unwrap();
    let ignored: Vec<String> = f.ignored().into_iter().map(|(what, _)| what).collect();
    assert_eq!(ignored, ["--vmodule", "FLANNELD_LOG_BACKTRACE_AT"]);
    let u = usage();
    for f in FLAGS {
        assert!(u.contains(&format!("  -{}\n", f.name)), "{}", f.name);
    }
}

/// The README's flag table has a row for every flag.
#[test]
fn the_readme_s_table_lists_every_flag() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let readme = std::fs::read_to_string(std::path::Path::new(&dir).join("../README.md")).unwrap();
    let table: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("| flag (and `FLANNELD_*`)"))
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(table.len() > 2, "no flag table in README.md");
    for f in FLAGS {
        let cell = format!("`--{}`", f.name);
        assert!(
            table
                .iter()
                .any(|row| row.split('|').nth(1).is_some_and(|c| c.contains(&cell))),
            "README.md's flanneld table has no row for {cell}"
        );
    }
}

/// Without --kube-subnet-mgr, flanneld's etcd subnet manager, with its flags.
#[test]
fn without_kube_subnet_mgr_leases_live_in_etcd() {
    let f = run(
        &[
            "--etcd-endpoints=https://10.0.0.1:2379,https://10.0.0.2:2379",
            "--etcd-prefix=/example.com/net",
            "--etcd-cafile=/etc/etcd/ca.pem",
            "--etcd-certfile=/etc/etcd/c.pem",
            "--etcd-keyfile=/etc/etcd/k.pem",
            "--subnet-lease-renew-margin=30",
        ],
        &[
            ("FLANNELD_ETCD_USERNAME", "flannel"),
            ("FLANNELD_ETCD_PASSWORD", "s3cret"),
        ],
    )
    .unwrap();
    assert!(!f.kube());
    let SubnetManager::Etcd(e) = f.options(node()).unwrap().subnet_manager else {
        panic!("not etcd");
    };
    assert_eq!(
        e.endpoints,
        ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
    );
    assert_eq!(e.prefix, "/example.com/net");
    assert_eq!(e.cafile, Some(PathBuf::from("/etc/etcd/ca.pem")));
    assert_eq!(e.certfile, Some(PathBuf::from("/etc/etcd/c.pem")));
    assert_eq!(e.keyfile, Some(PathBuf::from("/etc/etcd/k.pem")));
    assert_eq!(e.username.as_deref(), Some("flannel"));
    assert_eq!(e.password.as_deref(), Some("s3cret"));
    assert_eq!(e.renew_margin, Duration::from_secs(30 * 60));
    assert_eq!(e.ttl, Duration::from_secs(24 * 3600));
    // flanneld's defaults.
    let SubnetManager::Etcd(d) = run(&[], &[])
        .unwrap()
        .options(node())
        .unwrap()
        .subnet_manager
    else {
        panic!("not etcd");
    };
    assert_eq!(
        d.endpoints,
        ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
    );
    assert_eq!(d.prefix, "/coreos.com/network");
    assert_eq!((d.username, d.certfile), (None, None));
    assert_eq!(d.renew_margin, Duration::from_secs(3600));
}
