//! CNI under stress on one lab node, as a container runtime drives it: many
//! pods added and deleted at once through a delegate that fails one call in
//! five, and an ADD on a full `/var/lib/cni`. Judged on what is left: every
//! failure a CNI error JSON, no address leaked in host-local's store, no
//! veth, namespace or saved config of a pod that is gone, no half-written
//! file.

use crate::{Lab, LabError};

/// Debian's bridge plugin, failing every fifth call with a CNI error (the
/// count shared by every call on the node, under a lock).
const FLAKY_BRIDGE: &str = r#"#!/bin/sh
# weft-lab: the bridge plugin, failing one call in five.
exec 9>>/run/weftlab-flaky.lock
flock 9
n=$(cat /run/weftlab-flaky.count 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > /run/weftlab-flaky.count
flock -u 9
if [ $((n % 5)) -eq 0 ]; then
  printf '{"cniVersion":"0.3.1","code":11,"msg":"weft-lab: call %s of the flaky bridge fails"}\n' "$n"
  exit 1
fi
exec /usr/lib/cni/bridge
"#;

/// host-local's store of the lab's network.
const STORE: &str = "/var/lib/cni/networks/cbr0";
/// weft's saved delegate configs (flannel's dataDir).
const SAVED: &str = "/var/lib/cni/flannel";

/// Pods added at once.
const PODS: usize = 50;

/// An error with its causes, in one line.
fn chain(e: LabError) -> String {
    format!("{:#}", anyhow::Error::new(e))
}

/// Whether a failed ADD's text carries a CNI error JSON (code and msg).
fn is_cni_error(text: &str) -> bool {
    text.contains("\"code\":") && text.contains("\"msg\":")
}

/// The files in `dir` on `node` (names), or none when it does not exist.
fn files(lab: &Lab, node: &str, dir: &str) -> Vec<String> {
    lab.run(
        node,
        &["sh", "-c", &format!("ls -A {dir} 2>/dev/null || true")],
    )
    .map(|o| o.lines().map(str::to_string).collect())
    .unwrap_or_default()
}

/// What is left on `node` of pods named `prefix*`, or that was not there
/// `before` (host-local's store): addresses, saved configs, namespaces.
fn leftovers(lab: &Lab, node: &str, prefix: &str, before: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for f in files(lab, node, STORE) {
        if f.parse::<std::net::IpAddr>().is_ok() && !before.contains(&f) {
            out.push(format!("{node}: address {f} leaked in {STORE}"));
        }
    }
    for f in files(lab, node, SAVED) {
        if f.starts_with(prefix) || f.starts_with('.') {
            out.push(format!("{node}: {SAVED}/{f} left behind"));
        }
    }
    for ns in files(lab, node, "/run/netns") {
        if ns.starts_with(prefix) {
            out.push(format!("{node}: namespace {ns} left behind"));
        }
    }
    out
}

/// The veths on `node`.
fn veths(lab: &Lab, node: &str) -> Result<usize, LabError> {
    Ok(lab
        .run(node, &["ip", "-o", "link", "show", "type", "veth"])?
        .lines()
        .count())
}

fn same_veths(
    lab: &Lab,
    node: &str,
    before: usize,
    problems: &mut Vec<String>,
) -> Result<(), LabError> {
    let after = veths(lab, node)?;
    if after != before {
        problems.push(format!("{node}: {after} veths, {before} before"));
    }
    Ok(())
}

/// The churn: [`PODS`] pods added at once through the flaky bridge, each
/// released as kubelet would (DEL retried until it succeeds), whether its
/// ADD succeeded or not; then an ADD on a full `/var/lib/cni`.
pub fn churn(
    lab: &Lab,
    node: &str,
    notes: &mut Vec<String>,
    problems: &mut Vec<String>,
) -> Result<(), LabError> {
    let before = veths(lab, node)?;
    let store = files(lab, node, STORE);
    let bridge_mac = || {
        lab.run(node, &["cat", "/sys/class/net/cni0/address"])
            .map(|m| m.trim().to_string())
            .unwrap_or_default()
    };
    let mac_before = bridge_mac();
    // Written from inside the node: its /opt is an overlay that would not
    // see a file put into its upper directory from outside.
    lab.by_hand(
        node,
        &format!(
            "cat > /opt/cni/bin/bridge <<'EOF'\n{FLAKY_BRIDGE}EOF\nchmod 755 /opt/cni/bin/bridge; rm -f /run/weftlab-flaky.count"
        ),
    )?;
    let results: Vec<(Result<(), String>, Result<u32, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..PODS)
            .map(|i| {
                s.spawn(move || {
                    let pod = format!("churn-{i}");
                    let added = lab.create_pod(node, &pod).map(drop).map_err(chain);
                    let released = lab.release_pod(node, &pod, 10).map_err(chain);
                    (added, released)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or((Err("panicked".into()), Err("panicked".into())))
            })
            .collect()
    });
    lab.by_hand(node, "rm -f /opt/cni/bin/bridge")?;
    let failed_adds: Vec<&String> = results.iter().filter_map(|r| r.0.as_ref().err()).collect();
    for e in &failed_adds {
        if !is_cni_error(e) {
            problems.push(format!("a failed ADD without a CNI error: {e}"));
        }
    }
    for e in results.iter().filter_map(|r| r.1.as_ref().err()) {
        problems.push(format!("DEL never succeeded: {e}"));
    }
    let retried = results
        .iter()
        .filter(|r| matches!(r.1, Ok(a) if a > 1))
        .count();
    notes.push(format!(
        "{PODS} pods at once: {} ADDs failed (each a CNI error), {retried} DELs needed a retry",
        failed_adds.len()
    ));
    let mac_after = bridge_mac();
    if mac_after != mac_before {
        notes.push(format!(
            "cni0's MAC changed from {mac_before} to {mac_after}"
        ));
    }
    problems.extend(leftovers(lab, node, "churn-", &store));
    same_veths(lab, node, before, problems)?;

    // A full /var/lib/cni: a small tmpfs over it, filled up.
    lab.run(
        node,
        &[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=256k",
            "weftlab-full",
            "/var/lib/cni",
        ],
    )?;
    let full = full_disk(lab, node, notes, problems);
    let unmounted = lab.run(node, &["umount", "/var/lib/cni"]);
    full?;
    unmounted?;
    problems.extend(leftovers(lab, node, "full-", &store));
    same_veths(lab, node, before, problems)?;
    Ok(())
}

/// On a filled `/var/lib/cni`: the ADD fails with a CNI error and leaves
/// nothing; with space again, ADD and DEL work.
fn full_disk(
    lab: &Lab,
    node: &str,
    notes: &mut Vec<String>,
    problems: &mut Vec<String>,
) -> Result<(), LabError> {
    lab.by_hand(
        node,
        "dd if=/dev/zero of=/var/lib/cni/filler bs=4k 2>/dev/null || true",
    )?;
    match lab.create_pod(node, "full-1") {
        Ok(_) => problems.push("an ADD on a full /var/lib/cni succeeded".into()),
        Err(e) => {
            let e = chain(e);
            if !is_cni_error(&e) {
                problems.push(format!(
                    "the ADD on a full disk failed without a CNI error: {e}"
                ));
            }
            let why = e
                .split("\"msg\":\"")
                .nth(1)
                .and_then(|m| m.split('"').next())
                .unwrap_or("");
            notes.push(format!("ADD on a full /var/lib/cni: {why}"));
        }
    }
    if let Err(e) = lab.release_pod(node, "full-1", 3) {
        problems.push(format!(
            "DEL after the failed ADD on a full disk: {}",
            chain(e)
        ));
    }
    // Nothing but the filler and empty directories.
    let written = lab.run(
        node,
        &["find", "/var/lib/cni", "-type", "f", "!", "-name", "filler"],
    )?;
    for f in written.lines() {
        problems.push(format!("{node}: {f} written on the full disk and left"));
    }
    lab.run(node, &["rm", "/var/lib/cni/filler"])?;
    match lab.create_pod(node, "full-2") {
        Err(e) => problems.push(format!("ADD with space again failed: {}", chain(e))),
        Ok(_) => {
            if let Err(e) = lab.release_pod(node, "full-2", 3) {
                problems.push(format!("DEL with space again failed: {}", chain(e)));
            }
        }
    }
    let left = files(lab, node, STORE);
    if left.iter().any(|f| f.parse::<std::net::IpAddr>().is_ok()) {
        problems.push(format!("{node}: addresses left in {STORE}: {left:?}"));
    }
    Ok(())
}
