//! weftd with flannel's etcd subnet manager, against the lab hub's real
//! etcd: leases at flannel's keys with flannel's exact values, subnet.env
//! from them, the pod matrix (vxlan and host-gw), a restarted node keeping
//! its subnet, nodes racing for a nearly full range each getting their
//! own, a short TTL renewed in time, and a node whose lease runs out gone
//! from its peers.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::Signal;
use weft_lab::probe::within;
use weft_lab::{Backend, Lab, LabConfig, SubnetManager, unique_name};

const SUBNETS: &str = "/coreos.com/network/subnets/";

fn etcd_lab(tag: &str, backend: Backend, weftd: bool) -> Lab {
    let cfg = LabConfig {
        backend,
        subnet_manager: SubnetManager::Etcd,
        weftd,
        ..LabConfig::new(&unique_name(tag), 3)
    };
    Lab::up(&cfg).unwrap()
}

/// Every lease in the lab's etcd: key (below subnets/) → value.
fn leases(lab: &Lab) -> BTreeMap<String, String> {
    let out = lab.etcdctl(&["get", "--prefix", SUBNETS]).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .map(|kv| {
            (
                kv[0].trim_start_matches(SUBNETS).to_string(),
                kv[1].to_string(),
            )
        })
        .collect()
}

fn matrix_ok(lab: &mut Lab) {
    for n in ["node-1", "node-2", "node-3"] {
        lab.add_pod(n, &format!("{n}-pod")).unwrap();
    }
    let results = lab.connectivity().unwrap();
    let failed: Vec<_> = results.iter().filter(|r| !r.ok()).collect();
    assert!(failed.is_empty(), "failed pairs: {failed:#?}");
}

/// The lease key flannel makes of a subnet.env's FLANNEL_SUBNET
/// (`10.244.7.1/24` → `10.244.7.0-24`).
fn key_of_subnet_env(env: &str) -> String {
    let sub = env
        .lines()
        .find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))
        .unwrap();
    let (ip, len) = sub.split_once('/').unwrap();
    let mut octets: Vec<&str> = ip.split('.').collect();
    octets[3] = "0";
    format!("{}-{len}", octets.join("."))
}

#[test]
fn etcd_nodes_hold_flannel_s_leases_and_reach_each_other() {
    let mut lab = etcd_lab("etcdvx", Backend::Vxlan, true);
    let before = leases(&lab);
    assert_eq!(before.len(), 3, "{before:?}");
    for (i, n) in ["node-1", "node-2", "node-3"].iter().enumerate() {
        let env = lab.run(n, &["cat", "/run/flannel/subnet.env"]).unwrap();
        let key = key_of_subnet_env(&env);
        let mac = lab
            .run(n, &["cat", "/sys/class/net/flannel.1/address"])
            .unwrap();
        // flanneld's value, byte for byte (Go's json.Marshal of LeaseAttrs).
        let want = format!(
            r#"{{"PublicIP":"198.51.100.1{}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{}"}}}}"#,
            i + 1,
            mac.trim()
        );
        assert_eq!(before.get(&key), Some(&want), "{n}: {before:?}");
        assert!(env.starts_with("FLANNEL_NETWORK=10.244.0.0/16\n"), "{env}");
    }
    // Every lease holds a TTL: an etcd lease of flannel's 24 h.
    let id = lab
        .etcdctl(&[
            "get",
            &format!("{SUBNETS}{}", before.keys().next().unwrap()),
            "-w",
            "json",
        ])
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&id).unwrap();
    let lease = v["kvs"][0]["lease"].as_i64().unwrap();
    let ttl = lab
        .etcdctl(&["lease", "timetolive", &format!("{lease:x}")])
        .unwrap();
    assert!(ttl.contains("granted with TTL(86400s)"), "{ttl}");
    matrix_ok(&mut lab);

    // A restarted node finds its lease by its public IP: same subnet,
    // same value.
    lab.restart_weftd("node-2", Duration::from_secs(30))
        .unwrap();
    assert_eq!(leases(&lab), before);
    let results = lab.connectivity().unwrap();
    assert!(results.iter().all(|r| r.ok()), "{results:#?}");
}

#[test]
fn host_gw_over_etcd() {
    let mut lab = etcd_lab("etcdhg", Backend::HostGw, true);
    // flanneld's host-gw writes no BackendData at all.
    for (key, value) in leases(&lab) {
        assert!(
            value.starts_with(r#"{"PublicIP":"198.51.100.1"#)
                && value.ends_with(r#","PublicIPv6":null,"BackendType":"host-gw"}"#),
            "{key}: {value}"
        );
    }
    matrix_ok(&mut lab);
}

/// Three nodes started together for a range of three subnets: each gets
/// its own (a lost creation race is tried again).
#[test]
fn nodes_racing_for_a_nearly_full_range_each_get_their_own() {
    let mut lab = etcd_lab("etcdrace", Backend::Vxlan, false);
    lab.etcdctl(&[
        "put",
        "/coreos.com/network/config",
        r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.7.0","SubnetMax":"10.244.9.0","Backend":{"Type":"vxlan"}}"#,
    ])
    .unwrap();
    for n in ["node-1", "node-2", "node-3"] {
        lab.start_weftd(n).unwrap();
    }
    lab.wait_weftd_ready(&["node-1", "node-2", "node-3"], Duration::from_secs(30))
        .unwrap();
    let keys: Vec<String> = leases(&lab).into_keys().collect();
    assert_eq!(keys, ["10.244.7.0-24", "10.244.8.0-24", "10.244.9.0-24"]);
    matrix_ok(&mut lab);
}

/// A 6 s TTL is renewed in time (every 3 s); a node stopped for good lets
/// its lease run out, and the others forget it.
#[test]
fn a_short_ttl_is_renewed_and_an_expired_lease_leaves_the_peers() {
    let mut lab = etcd_lab("etcdttl", Backend::Vxlan, false);
    for n in ["node-1", "node-2", "node-3"] {
        lab.set_weftd_args(n, &["--subnet-lease-ttl", "6"]).unwrap();
        lab.start_weftd(n).unwrap();
    }
    lab.wait_weftd_ready(&["node-1", "node-2", "node-3"], Duration::from_secs(30))
        .unwrap();
    let before = leases(&lab);
    assert_eq!(before.len(), 3);
    std::thread::sleep(Duration::from_secs(15));
    assert_eq!(leases(&lab), before, "every lease outlived 2.5 TTLs");

    let env = lab
        .run("node-3", &["cat", "/run/flannel/subnet.env"])
        .unwrap();
    let gone = key_of_subnet_env(&env);
    let gone_route = gone.replace('-', "/");
    lab.stop_weftd("node-3", Signal::SIGKILL).unwrap();
    let took = within(Duration::from_secs(15), "node-3's lease expires", || {
        !leases(&lab).contains_key(&gone)
    });
    eprintln!("node-3's lease gone {took:?} after weftd was killed");
    within(Duration::from_secs(5), "node-1 forgets node-3", || {
        let routes = lab
            .run("node-1", &["ip", "route", "show", "dev", "flannel.1"])
            .unwrap();
        !routes.contains(&gone_route)
    });
}

/// A peer lease as flannel writes one, with no etcd lease (a reservation):
/// `10.244.<n>.0/24` at public IP 198.51.100.<n>.
fn ghost(lab: &Lab, n: u8) {
    lab.etcdctl(&[
        "put",
        &format!("{SUBNETS}10.244.{n}.0-24"),
        &format!(
            r#"{{"PublicIP":"198.51.100.{n}","PublicIPv6":null,"BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"0e:00:00:00:00:{n:02x}"}}}}"#
        ),
    ])
    .unwrap();
}

fn has_route(lab: &Lab, node: &str, n: u8) -> bool {
    lab.run(node, &["ip", "route", "show", "dev", "flannel.1"])
        .is_ok_and(|r| r.contains(&format!("10.244.{n}.0/24 via 10.244.{n}.0")))
}

/// etcd gone for a minute: the data plane stays, weftd reconnects and
/// follows again. Then a watch that fell behind a compaction (weftd
/// frozen while etcd restarted, leases changed and the history was
/// compacted): weftd lists again, with no stale and no missing peer.
#[test]
fn etcd_down_for_a_minute_and_a_compaction_past_weftd_s_revision() {
    let mut lab = etcd_lab("etcdflt", Backend::Vxlan, true);
    ghost(&lab, 201);
    within(Duration::from_secs(10), "ghost 201 routed", || {
        has_route(&lab, "node-1", 201)
    });

    lab.stop_etcd().unwrap();
    std::thread::sleep(Duration::from_secs(60));
    // Still wired: pods reach each other with etcd gone.
    matrix_ok(&mut lab);
    lab.start_etcd().unwrap();
    ghost(&lab, 202);
    let took = within(
        Duration::from_secs(20),
        "ghost 202 routed after etcd came back",
        || has_route(&lab, "node-1", 202),
    );
    eprintln!("a lease written after etcd's return reached node-1 in {took:?}");

    lab.freeze_weftd("node-1", true).unwrap();
    lab.stop_etcd().unwrap();
    lab.start_etcd().unwrap();
    ghost(&lab, 203);
    lab.etcdctl(&["del", &format!("{SUBNETS}10.244.201.0-24")])
        .unwrap();
    let status = lab.etcdctl(&["endpoint", "status", "-w", "json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    let rev = v[0]["Status"]["header"]["revision"].as_i64().unwrap();
    lab.etcdctl(&["compact", &rev.to_string()]).unwrap();
    lab.freeze_weftd("node-1", false).unwrap();
    within(
        Duration::from_secs(20),
        "node-1 relists: 203 in, 201 out",
        || has_route(&lab, "node-1", 203) && !has_route(&lab, "node-1", 201),
    );
    assert!(has_route(&lab, "node-1", 202));
    let log =
        std::fs::read_to_string(lab.node("node-1").unwrap().dir.join("logs/weftd.log")).unwrap();
    assert!(
        log.contains("etcd compacted past our revision; listing again"),
        "{log}"
    );
    let results = lab.connectivity().unwrap();
    assert!(results.iter().all(|r| r.ok()), "{results:#?}");
}

/// The files of a TLS etcd and its clients, made with a CA of the test's.
struct EtcdTls {
    dir: std::path::PathBuf,
}

impl EtcdTls {
    fn make(dir: std::path::PathBuf) -> EtcdTls {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name
            .push(DnType::CommonName, "etcd test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca, &ca_key);
        let issue = |names: Vec<String>, cn: &str, server: bool, name: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(names).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            p.extended_key_usages = vec![if server {
                rcgen::ExtendedKeyUsagePurpose::ServerAuth
            } else {
                rcgen::ExtendedKeyUsagePurpose::ClientAuth
            }];
            let cert = p.signed_by(&key, &issuer).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
        };
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        issue(
            vec!["198.51.100.1".into(), "127.0.0.1".into()],
            "etcd",
            true,
            "server",
        );
        // A name etcd knows no user by: a request passes as `weft` only
        // through the password.
        issue(vec![], "weft-node", false, "client");
        EtcdTls { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

const TLS_ETCD: &str = "https://198.51.100.1:2479";

fn tls_etcdctl(
    lab: &Lab,
    tls: &EtcdTls,
    user: Option<&str>,
    args: &[&str],
) -> Result<String, String> {
    let mut c = lab.hub_command("etcdctl");
    c.arg(format!("--endpoints={TLS_ETCD}"))
        .arg(format!("--cacert={}", tls.path("ca.pem")))
        .arg(format!("--cert={}", tls.path("client.pem")))
        .arg(format!("--key={}", tls.path("client-key.pem")));
    if let Some(u) = user {
        c.arg(format!("--user={u}"));
    }
    let out = c.args(args).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// An etcd that wants TLS client certificates and has authentication on:
/// weftd's nodes connect with a client certificate, the CA, and a user and
/// password that may touch `/coreos.com/network/` only.
#[test]
fn tls_client_certificates_and_user_password_against_etcd() {
    let mut lab = etcd_lab("etcdtls", Backend::Vxlan, false);
    let tls = EtcdTls::make(lab.dir().join("etcd-tls"));
    let data = lab.dir().join("etcd-tls/data");
    let mut etcd = lab.hub_command("etcd");
    etcd.args([
        "--name=tls",
        &format!("--data-dir={}", data.display()),
        &format!("--listen-client-urls={TLS_ETCD}"),
        &format!("--advertise-client-urls={TLS_ETCD}"),
        "--listen-peer-urls=http://127.0.0.1:2480",
        "--initial-advertise-peer-urls=http://127.0.0.1:2480",
        "--initial-cluster=tls=http://127.0.0.1:2480",
        &format!("--cert-file={}", tls.path("server.pem")),
        &format!("--key-file={}", tls.path("server-key.pem")),
        &format!("--trusted-ca-file={}", tls.path("ca.pem")),
        "--client-cert-auth",
    ]);
    weft_lab::procs::spawn(
        &lab.state.name,
        &mut etcd,
        &lab.dir().join("logs/etcd-tls.log"),
    )
    .unwrap();
    within(Duration::from_secs(20), "the TLS etcd is healthy", || {
        tls_etcdctl(&lab, &tls, None, &["endpoint", "health"]).is_ok()
    });
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "add", "weft:weftpw"],
        &["role", "add", "weft"],
        &[
            "role",
            "grant-permission",
            "weft",
            "readwrite",
            "--prefix=true",
            "/coreos.com/network/",
        ],
        &["user", "grant-role", "weft", "weft"],
        &["auth", "enable"],
    ] {
        tls_etcdctl(&lab, &tls, None, args).unwrap();
    }
    tls_etcdctl(
        &lab,
        &tls,
        Some("root:rootpw"),
        &[
            "put",
            "/coreos.com/network/config",
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
        ],
    )
    .unwrap();
    // The certificate alone is no user: refused.
    let refused =
        tls_etcdctl(&lab, &tls, None, &["get", "/coreos.com/network/config"]).unwrap_err();
    assert!(
        refused.contains("user name not found") || refused.contains("permission denied"),
        "{refused}"
    );

    let args = [
        "--etcd-endpoints",
        TLS_ETCD,
        "--etcd-cafile",
        &tls.path("ca.pem"),
        "--etcd-certfile",
        &tls.path("client.pem"),
        "--etcd-keyfile",
        &tls.path("client-key.pem"),
        "--etcd-username",
        "weft",
        "--etcd-password",
        "weftpw",
    ];
    for n in ["node-1", "node-2", "node-3"] {
        lab.set_weftd_args(n, &args).unwrap();
        lab.start_weftd(n).unwrap();
    }
    lab.wait_weftd_ready(&["node-1", "node-2", "node-3"], Duration::from_secs(30))
        .unwrap();
    let held = tls_etcdctl(
        &lab,
        &tls,
        Some("root:rootpw"),
        &["get", "--prefix", "--keys-only", SUBNETS],
    )
    .unwrap();
    assert_eq!(held.lines().filter(|l| !l.is_empty()).count(), 3, "{held}");
    assert!(leases(&lab).is_empty(), "nothing in the lab's own etcd");
    matrix_ok(&mut lab);
}

/// Dual-stack over etcd: flannel's two-family keys (`v4&v6`), the IPv6
/// public IP and VTEP in the value, and the matrix over both families.
#[test]
fn dual_stack_leases_over_etcd() {
    let cfg = LabConfig {
        dual_stack: true,
        subnet_manager: SubnetManager::Etcd,
        ..LabConfig::with_weftd(&unique_name("etcdds"), 3)
    };
    let mut lab = Lab::up(&cfg).unwrap();
    let held = leases(&lab);
    assert_eq!(held.len(), 3, "{held:?}");
    for (key, value) in &held {
        let (v4, v6) = key.split_once('&').unwrap_or_else(|| panic!("{key}"));
        assert!(v4.starts_with("10.244.") && v4.ends_with("-24"), "{key}");
        assert!(
            v6.starts_with("fd00:10:244:") && v6.ends_with("::-64"),
            "{key}"
        );
        let v: serde_json::Value = serde_json::from_str(value).unwrap();
        assert!(
            v["PublicIPv6"]
                .as_str()
                .unwrap()
                .starts_with("fd00:198:51:100::"),
            "{value}"
        );
        assert!(v["BackendV6Data"]["VtepMAC"].is_string(), "{value}");
    }
    matrix_ok(&mut lab);
}
