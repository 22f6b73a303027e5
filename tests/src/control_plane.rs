//! The lab's control plane: a real etcd and a real kube-apiserver, both inside
//! the lab's hub namespace, bound to the hub's underlay address so every node
//! reaches them over the lab network (and nothing listens on the host's own
//! interfaces). Each lab has its own hub namespace, so the standard ports
//! (2379, 6443) never collide between labs.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::netns::{self, NetnsError};
use crate::pki::Pki;
use crate::procs::{self, ProcError};

/// etcd's client port inside the hub namespace.
pub const ETCD_PORT: u16 = 2379;
/// kube-apiserver's secure port inside the hub namespace.
pub const APISERVER_PORT: u16 = 6443;
/// Namespace and ServiceAccount weftd runs as (the chart's names).
pub const WEFT_NAMESPACE: &str = "kube-weft";
pub const WEFT_SERVICE_ACCOUNT: &str = "weft";
/// The Kubernetes user name of weft's ServiceAccount.
pub fn weft_user() -> String {
    format!("system:serviceaccount:{WEFT_NAMESPACE}:{WEFT_SERVICE_ACCOUNT}")
}

#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error(
        "no kube-apiserver binary under {cache}: run scripts/setup-host.sh (it builds one from Debian's kubernetes source package)"
    )]
    NoApiserver { cache: PathBuf },
    #[error("starting {what}")]
    Start {
        what: &'static str,
        #[source]
        source: ProcError,
    },
    #[error("{what} exited during start-up; its log {log} ends with:\n{tail}")]
    Died {
        what: &'static str,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} not ready after {secs} s; its log {log} ends with:\n{tail}")]
    NotReady {
        what: &'static str,
        secs: u64,
        log: PathBuf,
        tail: String,
    },
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("applying {file}: {why}")]
    Manifest { file: PathBuf, why: String },
    #[error("interrupted")]
    Interrupted,
}

/// Where the cached kube-apiserver binary is: `$WEFT_LAB_APISERVER`, else
/// the newest build under `$WEFT_LAB_CACHE` (default /var/cache/weft-lab).
pub fn find_apiserver() -> Result<PathBuf, ControlPlaneError> {
    if let Some(p) = std::env::var_os("WEFT_LAB_APISERVER") {
        return Ok(PathBuf::from(p));
    }
    let cache = PathBuf::from(
        std::env::var_os("WEFT_LAB_CACHE").unwrap_or_else(|| "/var/cache/weft-lab".into()),
    );
    let mut found: Vec<PathBuf> = std::fs::read_dir(&cache)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("kubernetes-"))
                .map(|e| e.path().join("kube-apiserver"))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().ok_or(ControlPlaneError::NoApiserver { cache })
}

/// The last lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Starts etcd in `hub_ns` with its data under `data_dir`; returns its PID.
pub fn start_etcd(
    lab: &str,
    hub_ns: &str,
    hub_ip: IpAddr,
    data_dir: &Path,
    log: &Path,
) -> Result<u32, ControlPlaneError> {
    let client_urls = format!("http://127.0.0.1:{ETCD_PORT},http://{hub_ip}:{ETCD_PORT}");
    let peer = "http://127.0.0.1:2380";
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", hub_ns, "etcd"])
        .arg("--name=weft-lab")
        .arg(format!("--data-dir={}", data_dir.display()))
        .arg(format!("--listen-client-urls={client_urls}"))
        .arg(format!(
            "--advertise-client-urls=http://{hub_ip}:{ETCD_PORT}"
        ))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster=weft-lab={peer}"))
        .arg("--initial-cluster-state=new")
        .arg("--logger=zap")
        .arg("--log-outputs=stderr");
    procs::spawn(lab, &mut cmd, log).map_err(|source| ControlPlaneError::Start {
        what: "etcd",
        source,
    })
}

/// Waits until etcd in `hub_ns` reports `"health":"true"`.
pub fn wait_etcd(
    hub_ns: &str,
    pid: u32,
    log: &Path,
    timeout: Duration,
    interrupted: &dyn Fn() -> bool,
) -> Result<(), ControlPlaneError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], ETCD_PORT));
    let deadline = Instant::now() + timeout;
    loop {
        let healthy = netns::run_in(hub_ns, || crate::http::get(addr, "/health"))?
            .map(|(_, body)| body.contains("\"health\":\"true\""))
            .unwrap_or(false);
        if healthy {
            return Ok(());
        }
        check_alive("etcd", pid, log)?;
        if interrupted() {
            return Err(ControlPlaneError::Interrupted);
        }
        if Instant::now() > deadline {
            return Err(ControlPlaneError::NotReady {
                what: "etcd",
                secs: timeout.as_secs(),
                log: log.to_path_buf(),
                tail: log_tail(log, 15),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check_alive(what: &'static str, pid: u32, log: &Path) -> Result<(), ControlPlaneError> {
    if procs::alive(pid as i32) {
        Ok(())
    } else {
        Err(ControlPlaneError::Died {
            what,
            log: log.to_path_buf(),
            tail: log_tail(log, 15),
        })
    }
}

/// Everything kube-apiserver needs from the lab.
#[derive(Debug, Clone)]
pub struct ApiserverSpec<'a> {
    pub lab: &'a str,
    pub hub_ns: &'a str,
    pub hub_ip: IpAddr,
    pub binary: &'a Path,
    pub pki: &'a Pki,
    pub log: &'a Path,
    /// Kubelets will run (`weft-lab up --kubelet`): the `kubernetes`
    /// Service's endpoint is kept (kube-proxy leads pods to it), the API
    /// server reaches kubelets by InternalIP with its client certificate,
    /// and NodeRestriction limits each kubelet to its own Node.
    pub real_nodes: bool,
}

/// Starts kube-apiserver (TLS, token authentication, Node,RBAC authorization).
pub fn start_apiserver(spec: &ApiserverSpec<'_>) -> Result<u32, ControlPlaneError> {
    let pki = spec.pki;
    let p = |path: PathBuf| path.display().to_string();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", spec.hub_ns])
        .arg(spec.binary)
        .arg(format!("--etcd-servers=http://127.0.0.1:{ETCD_PORT}"))
        .arg(format!("--bind-address={}", spec.hub_ip))
        .arg(format!("--advertise-address={}", spec.hub_ip))
        .arg(format!("--secure-port={APISERVER_PORT}"))
        .arg("--insecure-port=0")
        .arg(format!("--tls-cert-file={}", p(pki.server_cert())))
        .arg(format!("--tls-private-key-file={}", p(pki.server_key())))
        .arg(format!("--client-ca-file={}", p(pki.ca_cert())))
        .arg(format!("--token-auth-file={}", p(pki.token_file())))
        .arg(format!("--service-account-key-file={}", p(pki.sa_pub())))
        .arg(format!(
            "--service-account-signing-key-file={}",
            p(pki.sa_key())
        ))
        .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
        .arg("--api-audiences=https://kubernetes.default.svc.cluster.local")
        .arg("--service-cluster-ip-range=10.96.0.0/16")
        // Nodes with an IPv4 and an IPv6 podCIDR (alpha in 1.20).
        .arg("--feature-gates=IPv6DualStack=true")
        .arg("--authorization-mode=Node,RBAC")
        .arg("--anonymous-auth=false")
        .arg("--allow-privileged=true")
        .arg("--profiling=false")
        .arg("--v=1");
    if spec.real_nodes {
        cmd.arg("--enable-admission-plugins=NodeRestriction")
            .arg("--kubelet-preferred-address-types=InternalIP")
            .arg(format!(
                "--kubelet-client-certificate={}",
                p(pki.kubelet_client_cert())
            ))
            .arg(format!(
                "--kubelet-client-key={}",
                p(pki.kubelet_client_key())
            ));
    } else {
        cmd.arg("--endpoint-reconciler-type=none");
    }
    procs::spawn(spec.lab, &mut cmd, spec.log).map_err(|source| ControlPlaneError::Start {
        what: "kube-apiserver",
        source,
    })
}

/// Waits until the API server answers `/readyz` with `ok` for the admin.
pub fn wait_apiserver(
    hub_ns: &str,
    admin_kubeconfig: &Path,
    pid: u32,
    log: &Path,
    timeout: Duration,
    interrupted: &dyn Fn() -> bool,
) -> Result<(), ControlPlaneError> {
    let deadline = Instant::now() + timeout;
    loop {
        let ready = netns::block_on_in(hub_ns, || async {
            let Ok(client) = crate::cluster::client(admin_kubeconfig).await else {
                return false;
            };
            let req = http::Request::get("/readyz").body(Vec::new());
            match req {
                Ok(req) => client
                    .request_text(req)
                    .await
                    .map(|t| t.trim() == "ok")
                    .unwrap_or(false),
                Err(_) => false,
            }
        })?;
        if ready {
            return Ok(());
        }
        check_alive("kube-apiserver", pid, log)?;
        if interrupted() {
            return Err(ControlPlaneError::Interrupted);
        }
        if Instant::now() > deadline {
            return Err(ControlPlaneError::NotReady {
                what: "kube-apiserver",
                secs: timeout.as_secs(),
                log: log.to_path_buf(),
                tail: log_tail(log, 15),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The manifest users `kubectl apply`: `$WEFT_LAB_MANIFEST`, else the
/// checkout's `manifests/weft.yaml` (the checkout cargo runs from, when it
/// does: a cached binary may have been built in another one).
pub fn manifest() -> PathBuf {
    std::env::var_os("WEFT_LAB_MANIFEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let dir = std::env::var_os("CARGO_MANIFEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
            dir.join("../manifests/weft.yaml")
        })
}

/// Applies weft's own manifest as its users do: a server-side dry run of
/// the whole file first, then for real. Its Namespace, ServiceAccount,
/// ClusterRole and ClusterRoleBinding are what the lab's weftd runs under:
/// the RBAC weft ships is the RBAC the tests exercise. (Its ConfigMap and
/// DaemonSet are stored too; no kubelet runs their pods in the lab.)
pub fn apply_manifest(hub_ns: &str, admin_kubeconfig: &Path) -> Result<(), ControlPlaneError> {
    let file = manifest();
    let err = |why: String| ControlPlaneError::Manifest {
        file: file.clone(),
        why,
    };
    let text = std::fs::read_to_string(&file).map_err(|e| err(e.to_string()))?;
    // A dry run cannot create the namespace its other objects go into: the
    // Namespace document goes first, for real.
    let namespace = text
        .split("\n---\n")
        .find(|doc| doc.lines().any(|l| l == "kind: Namespace"))
        .ok_or_else(|| err("it has no Namespace".into()))?;
    for (what, stdin, dry) in [
        ("Namespace", Some(namespace), false),
        ("--dry-run=server", None, true),
        ("", None, false),
    ] {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", hub_ns, "kubectl"])
            .arg(format!("--kubeconfig={}", admin_kubeconfig.display()))
            .args(["apply", "-f"]);
        match stdin {
            Some(_) => c.arg("-"),
            None => c.arg(&file),
        };
        if dry {
            c.arg("--dry-run=server");
        }
        crate::cmd::run_with_stdin(&mut c, stdin.unwrap_or("").as_bytes())
            .map_err(|e| err(format!("kubectl apply {what}: {e}")))?;
    }
    Ok(())
}
