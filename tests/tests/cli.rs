//! The `weft-lab` command line as a newcomer uses it: up, status, exec,
//! kubectl, down, clean; and what it leaves behind when things go wrong
//! (a second `up`, a killed `up`, Ctrl-C, no root, a missing tool).

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use weft_lab::{lab, netns, procs, unique_name};

fn weft_lab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weft-lab"))
}

fn run(args: &[&str]) -> Output {
    weft_lab().args(args).output().expect("weft-lab runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str]) -> String {
    let o = run(args);
    assert!(
        o.status.success(),
        "weft-lab {args:?} failed: {}",
        stderr(&o)
    );
    stdout(&o)
}

fn host_links() -> Vec<String> {
    let out = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let mut names: Vec<String> = stdout(&out)
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(|s| s.trim().to_string()))
        .collect();
    names.sort();
    names
}

/// Everything a lab named `name` could leave behind.
fn leftovers(name: &str) -> (Vec<String>, Vec<i32>, bool) {
    (
        lab::lab_netns(name),
        procs::marked(Some(name)),
        lab::state_root().join(name).exists(),
    )
}

fn nothing_left(name: &str) {
    assert_eq!(
        leftovers(name),
        (vec![], vec![], false),
        "lab {name} left things behind"
    );
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn_up(name: &str, nodes: &str) -> Child {
    weft_lab()
        .args(["up", "--nodes", nodes, "--name", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Kills the child if the test fails before it is waited for.
struct Reap(Option<Child>);
impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Teardown(String);
impl Drop for Teardown {
    fn drop(&mut self) {
        lab::teardown(&self.0);
    }
}

#[test]
fn up_status_exec_kubectl_down_leave_the_host_as_it_was() {
    let name = unique_name("cli");
    let _guard = Teardown(name.clone());
    let links = host_links();

    // Binaries handed over by relative paths, as the README does it: they
    // are taken from the caller's directory, not the node's namespaces.
    let bin_dir = std::path::Path::new(env!("CARGO_BIN_EXE_weft-lab"))
        .parent()
        .unwrap();
    let up = weft_lab()
        .args(["up", "--nodes", "3", "--name", &name])
        .current_dir(bin_dir)
        .env("WEFT_LAB_WEFTD", "weftd")
        .env("WEFT_LAB_PLUGIN", "./weft")
        .output()
        .unwrap();
    assert!(up.status.success(), "up failed: {}", stderr(&up));
    let table = stdout(&up);
    for (node, ip, cidr) in [
        ("node-1", "198.51.100.11", "10.244.0.0/24"),
        ("node-2", "198.51.100.12", "10.244.1.0/24"),
        ("node-3", "198.51.100.13", "10.244.2.0/24"),
    ] {
        let row = table
            .lines()
            .find(|l| l.starts_with(node))
            .unwrap_or_else(|| panic!("no row for {node} in:\n{table}"));
        assert!(row.contains(ip) && row.contains(cidr), "row {row:?}");
    }

    let status: serde_json::Value =
        serde_json::from_str(&ok(&["status", "--json", "--name", &name])).unwrap();
    let nodes = status["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(
        nodes
            .iter()
            .all(|n| n["ready"] == true && n["running"] == true)
    );

    let again = run(&["up", "--nodes", "1", "--name", &name]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists") && stderr(&again).lines().count() == 1,
        "second up: {}",
        stderr(&again)
    );

    assert_eq!(
        ok(&["exec", "--name", &name, "node-2", "--", "hostname"]).trim(),
        "node-2"
    );
    let route = ok(&[
        "exec", "--name", &name, "node-2", "--", "ip", "route", "show", "default",
    ]);
    assert!(route.contains("via 198.51.100.1 dev eth0"), "{route}");
    let names = ok(&[
        "kubectl", "--name", &name, "--", "get", "nodes", "-o", "name",
    ]);
    assert_eq!(names.trim(), "node/node-1\nnode/node-2\nnode/node-3");

    // A node's standard directories are its own, not the host's.
    ok(&[
        "exec",
        "--name",
        &name,
        "node-1",
        "--",
        "touch",
        "/run/flannel/mine",
    ]);
    assert!(!PathBuf::from("/run/flannel/mine").exists());
    let on_host = lab::state_root()
        .join(&name)
        .join("nodes/node-1/root/run/flannel/mine");
    assert!(on_host.exists(), "{} exists", on_host.display());

    ok(&["down", "--name", &name]);
    nothing_left(&name);
    assert_eq!(host_links(), links, "host links unchanged");
    assert_eq!(
        ok(&["clean", "--lab", &name]).trim(),
        "nothing to clean",
        "clean after a clean run"
    );

    let missing = run(&["status", "--name", &name]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no lab named"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn clean_removes_what_a_killed_up_left_behind() {
    let name = unique_name("killed");
    let _guard = Teardown(name.clone());
    let mut child = Reap(Some(spawn_up(&name, "2")));
    // Kill it once the control plane and the first node exist.
    wait_until("the lab's first node", 60, || {
        netns::list("").contains(&format!("weftlab-{name}-node-1"))
    });
    let c = child.0.as_mut().unwrap();
    c.kill().unwrap();
    c.wait().unwrap();
    child.0 = None;
    let (ns, pids, dir) = leftovers(&name);
    assert!(
        !ns.is_empty() && !pids.is_empty() && dir,
        "a killed up leaves things behind"
    );

    let report = ok(&["clean", "--lab", &name]);
    assert!(
        report.contains(&format!("removed namespace weftlab-{name}-hub")),
        "{report}"
    );
    assert!(report.contains("stopped process"), "{report}");
    nothing_left(&name);
    assert_eq!(ok(&["clean", "--lab", &name]).trim(), "nothing to clean");
}

#[test]
fn ctrl_c_during_up_removes_the_partly_built_lab() {
    let name = unique_name("ctrlc");
    let _guard = Teardown(name.clone());
    let mut child = Reap(Some(spawn_up(&name, "3")));
    wait_until("the hub namespace", 60, || {
        netns::list("").contains(&format!("weftlab-{name}-hub"))
    });
    let c = child.0.take().unwrap();
    kill(Pid::from_raw(c.id() as i32), Signal::SIGINT).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(!out.status.success(), "interrupted up must fail");
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    nothing_left(&name);
}

#[test]
fn refusals_are_one_line_and_build_nothing() {
    let name = unique_name("refuse");
    let _guard = Teardown(name.clone());

    let not_root = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_weft-lab"))
        .args(["up", "--name", &name])
        .output()
        .unwrap();
    assert!(!not_root.status.success());
    let msg = stderr(&not_root);
    assert!(
        msg.contains("must run as root") && msg.lines().count() == 1,
        "{msg}"
    );

    // A PATH with every tool but etcd.
    let bin = std::env::temp_dir().join(format!("{name}-path"));
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["ip", "nsenter", "unshare", "bash", "etcdctl", "mount"] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap())
            .map(|d| d.join(tool))
            .find(|p| p.is_file())
            .unwrap();
        let _ = std::os::unix::fs::symlink(found, bin.join(tool));
    }
    let no_etcd = weft_lab()
        .args(["up", "--name", &name])
        .env("PATH", &bin)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&bin).unwrap();
    assert!(!no_etcd.status.success());
    let msg = stderr(&no_etcd);
    assert!(
        msg.contains("`etcd` is not installed") && msg.lines().count() == 1,
        "{msg}"
    );

    let bad = run(&["up", "--name", "Bad_Name"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("invalid lab name"),
        "{}",
        stderr(&bad)
    );

    let many = run(&["up", "--name", &name, "--nodes", "241"]);
    assert!(!many.status.success());
    assert!(
        stderr(&many).contains("at most 240 nodes") && stderr(&many).lines().count() == 1,
        "{}",
        stderr(&many)
    );
    nothing_left(&name);
}
