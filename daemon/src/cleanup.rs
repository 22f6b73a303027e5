//! `weftd cleanup`: removes from a node what weftd put there, for uninstall
//! (the chart's uninstall path runs it on every node): weft's nftables
//! table, what the backend put there (its devices, whose routes, neighbour
//! and FDB entries go with them; host-gw's routes) and what other backends
//! left from before a switch, subnet.env, the conflist and (given its
//! directory) the `weft` plugin. Pods still running must remain removable:
//! while any pod on the node is still wired by weft (the plugin's saved
//! configs), the conflist and the plugin stay (the runtime tears a pod
//! down only through a loaded network config); `weftd cleanup --wait`
//! removes them, with the `cni0` bridge and its gateway address, once the
//! last such pod is gone.
//! Everything is attempted; the first failure is reported at the end.

use std::path::Path;

use crate::config::{DEFAULT_VNI, NetConfig};
use crate::netlink::kernel::Kernel;
use crate::nft::kernel::Nft;

/// The conflist `weftd install-cni` writes.
pub const CONFLIST: &str = "10-weft.conflist";

#[derive(Debug, thiserror::Error)]
#[error("cleanup: {what}: {why}")]
pub struct CleanupError {
    what: String,
    why: String,
}

/// The bridge the default conflist's `bridge` delegate makes.
pub const BRIDGE: &str = "cni0";

/// How many pods on this node are still wired by weft: the plugin's saved
/// configs in `data_dir` (one per pod, removed by its DEL).
pub fn wired_pods(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .count()
        })
        .unwrap_or(0)
}

/// Removes the conflist, the `weft` plugin (with `bin_dir`) and, when no
/// port is left on it, the `cni0` bridge (its gateway address would refuse
/// a later podCIDR); what was removed, and the failures.
async fn remove_cni_config(
    conf_dir: &Path,
    bin_dir: Option<&Path>,
) -> (Vec<String>, Vec<(String, String)>) {
    let (mut removed, mut failed) = (Vec::new(), Vec::new());
    let plugin = bin_dir.map(|d| d.join("weft"));
    for file in std::iter::once(conf_dir.join(CONFLIST)).chain(plugin) {
        match std::fs::remove_file(&file) {
            Ok(()) => removed.push(format!("file {}", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => failed.push((format!("removing {}", file.display()), e.to_string())),
        }
    }
    let ports = Path::new("/sys/class/net").join(BRIDGE).join("brif");
    let unused = std::fs::read_dir(&ports).is_ok_and(|mut rd| rd.next().is_none());
    if unused {
        match Kernel::connect() {
            Ok(nl) => {
                let done = crate::backend::delete_links(&nl, &[BRIDGE.to_string()]).await;
                removed.extend(done.removed);
                failed.extend(done.failed);
            }
            Err(e) => failed.push(("opening a netlink socket".into(), e.to_string())),
        }
    }
    (removed, failed)
}

/// How long no pod must have been wired by weft before `finish` removes
/// the conflist: a pod's DEL is not the runtime's last use of it. The
/// kubelet stops the sandbox again, and removes it, within about a second
/// of the first stop, and containerd asks for a loaded network config each
/// time (without one: "cni plugin not initialized", and the pod stays
/// Terminating).
pub const QUIET: std::time::Duration = std::time::Duration::from_secs(10);

/// Pods on `node` whose sandbox the runtime may still stop (and so load
/// the conflist for) in the API's view: not host-network, and deleted but
/// not yet gone, or not finished. The kubelet stops a deleted pod's
/// sandbox again at every sync until the pod object is gone, well after
/// weft's DEL ran.
pub async fn api_pods(client: &kube::Client, node: &str) -> Result<usize, kube::Error> {
    use k8s_openapi::api::core::v1::Pod;
    let pods: kube::Api<Pod> = kube::Api::all(client.clone());
    let lp = kube::api::ListParams::default().fields(&format!("spec.nodeName={node}"));
    let list = pods.list(&lp).await?;
    Ok(list
        .items
        .iter()
        .filter(|p| {
            let spec = p.spec.as_ref();
            let host = spec.and_then(|s| s.host_network).unwrap_or(false);
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            let finished = matches!(phase, Some("Succeeded" | "Failed"));
            !host && (p.metadata.deletion_timestamp.is_some() || !finished)
        })
        .count())
}

/// `weftd cleanup --wait`, after `run`: waits until no pod on the node has
/// been wired by weft and (with `api`: a client and this node's name) the
/// API shows no pod on the node whose sandbox may still be stopped
/// ([`api_pods`]), both for [`QUIET`]; then removes the conflist, the
/// plugin and an unused `cni0`, and returns what it removed (the chart's
/// cleanup DaemonSet then idles until it is deleted). An API that cannot be
/// read is warned about and retried: the conflist stays meanwhile.
pub async fn finish(
    conf_dir: &Path,
    bin_dir: Option<&Path>,
    data_dir: &Path,
    api: Option<(kube::Client, String)>,
) -> Vec<String> {
    let mut said = None;
    let mut api_said: Option<Result<usize, String>> = None;
    let mut none_since: Option<tokio::time::Instant> = None;
    loop {
        let wired = wired_pods(data_dir);
        if said != Some(wired) && wired > 0 {
            tracing::info!(
                pods = wired,
                "waiting for the pods still wired by weft on this node to go before removing {CONFLIST}"
            );
        }
        said = Some(wired);
        let mut left = wired;
        if wired == 0
            && let Some((client, node)) = &api
        {
            let seen = api_pods(client, node).await.map_err(|e| crate::chain(&e));
            if api_said.as_ref() != Some(&seen) {
                match &seen {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        pods = n,
                        "waiting for the pods on this node to be gone from the API before removing {CONFLIST} (the runtime stops their sandboxes until then)"
                    ),
                    Err(e) => tracing::warn!(
                        error = %e,
                        "listing this node's pods failed; {CONFLIST} stays until it succeeds"
                    ),
                }
                api_said = Some(seen.clone());
            }
            left = seen.unwrap_or(1);
        }
        if left > 0 {
            none_since = None;
        } else if none_since
            .get_or_insert_with(tokio::time::Instant::now)
            .elapsed()
            >= QUIET
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let (removed, failed) = remove_cni_config(conf_dir, bin_dir).await;
    for (what, why) in failed {
        tracing::warn!(what, why, "cleanup step failed");
    }
    removed
}

/// Removes weft's state; what was removed, one line each.
pub async fn run(
    net_conf: &Path,
    subnet_file: &Path,
    conf_dir: &Path,
    bin_dir: Option<&Path>,
    data_dir: &Path,
) -> Result<Vec<String>, CleanupError> {
    let mut removed = Vec::new();
    let mut first_err: Option<CleanupError> = None;
    let mut fail = |what: &str, why: String| {
        tracing::warn!(what, why, "cleanup step failed");
        first_err.get_or_insert(CleanupError {
            what: what.into(),
            why,
        });
    };
    match Nft::open().and_then(|mut n| n.delete_table()) {
        Ok(true) => removed.push(format!("nftables table {}", crate::nft::TABLE)),
        Ok(false) => {}
        Err(e) => fail("deleting the nftables table", e.to_string()),
    }
    // What the configured backend put there (with the configuration gone:
    // flannel's default VXLAN devices).
    let cfg = NetConfig::load(net_conf);
    match Kernel::connect() {
        Ok(nl) => {
            let done = match &cfg {
                Ok(cfg) => {
                    let mut done = crate::backends::teardown(&nl, cfg).await;
                    done.extend(crate::backends::other_leftovers(&nl, cfg).await);
                    done
                }
                Err(_) => crate::vxlan::delete_devices(&nl, DEFAULT_VNI).await,
            };
            removed.extend(done.removed);
            for (what, why) in done.failed {
                fail(&what, why);
            }
        }
        Err(e) => fail("opening a netlink socket", e.to_string()),
    }
    match std::fs::remove_file(subnet_file) {
        Ok(()) => removed.push(format!("file {}", subnet_file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => fail(
            &format!("removing {}", subnet_file.display()),
            e.to_string(),
        ),
    }
    let wired = wired_pods(data_dir);
    if wired == 0 {
        let (done, failed) = remove_cni_config(conf_dir, bin_dir).await;
        removed.extend(done);
        for (what, why) in failed {
            fail(&what, why);
        }
    } else {
        tracing::info!(
            pods = wired,
            "{wired} pods on this node are still wired by weft: {CONFLIST} stays so that the runtime can tear them down (`weftd cleanup --wait` removes it once they are gone)"
        );
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(removed),
    }
}

/// `weftd cleanup --flannel`: removes what flanneld left on this node (its
/// iptables chains and the jumps to them, its nftables tables; see
/// [`crate::leftovers`]) and nothing else, weft's own state included; what
/// was removed, one line each.
pub fn flannel() -> Result<Vec<String>, CleanupError> {
    let err = |what: &str| {
        let what = what.to_string();
        move |why: String| CleanupError { what, why }
    };
    let mut nft = Nft::open().map_err(|e| err("opening nftables")(crate::chain(&e)))?;
    let found = crate::leftovers::find(&mut nft)
        .map_err(|e| err("reading flanneld's rules")(crate::chain(&e)))?;
    if let Some(why) = &found.legacy_unknown {
        tracing::warn!("legacy iptables not checked: {why}");
    }
    crate::leftovers::remove(&mut nft, &found).map_err(err("removing flanneld's rules"))?;
    Ok(found.describe())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_conflist_and_plugin_outlive_the_last_wired_pod_by_the_quiet_period() {
        let dir = std::env::temp_dir().join(format!("weftd-finish-{}", std::process::id()));
        let (conf, bin, data) = (dir.join("net.d"), dir.join("bin"), dir.join("flannel"));
        for d in [&conf, &bin, &data] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(conf.join(CONFLIST), "{}").unwrap();
        std::fs::write(bin.join("weft"), "x").unwrap();
        std::fs::write(data.join("a1b2"), "{}").unwrap();
        assert_eq!(wired_pods(&data), 1);
        let t0 = tokio::time::Instant::now();
        let finishing = finish(&conf, Some(&bin), &data, None);
        let script = async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            assert!(conf.join(CONFLIST).exists(), "removed under a wired pod");
            std::fs::remove_file(data.join("a1b2")).unwrap();
            tokio::time::sleep(QUIET - Duration::from_secs(2)).await;
            assert!(
                conf.join(CONFLIST).exists(),
                "removed before the quiet period"
            );
            assert!(bin.join("weft").exists());
        };
        let removed = tokio::select! {
            removed = finishing => removed,
            () = async { script.await; std::future::pending().await } => unreachable!(),
        };
        // Not before the pod went plus the quiet period (so the script's
        // checks all ran), and not much after.
        let took = t0.elapsed();
        assert!(took >= Duration::from_secs(30) + QUIET, "{took:?}");
        assert!(took <= Duration::from_secs(32) + QUIET, "{took:?}");
        assert!(!conf.join(CONFLIST).exists() && !bin.join("weft").exists());
        assert_eq!(removed.len(), 2, "{removed:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
