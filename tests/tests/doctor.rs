//! `weftd doctor` on a 3-node VXLAN lab, with things broken on purpose: a
//! peer's garbage annotation, then (weftd stopped) a route deleted and
//! weft's nftables table flushed. The doctor names each, exits 1 while
//! anything is wrong and 0 once weftd has repaired it; it changes nothing
//! itself.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use weft_lab::judge::PREFIX;
use weft_lab::probe::{metric, within};
use weft_lab::weftd::find_weftd;
use weft_lab::{Lab, LabConfig, unique_name};

/// Runs `weftd ARGS` on node-1: its exit code and output (stdout, stderr).
fn doctor(lab: &Lab, args: &[&str]) -> (i32, String) {
    let weftd = find_weftd().unwrap();
    let mut c = lab.node_command("node-1", weftd.to_str().unwrap()).unwrap();
    c.args(args);
    let out = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The arguments after the program name of process `pid`.
fn cmdline(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .skip(1)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[test]
fn the_doctor_names_what_was_broken_and_is_content_once_it_is_repaired() {
    let mut lab = Lab::up(&LabConfig::with_weftd(&unique_name("doctor"), 3)).unwrap();
    let published = lab.published().unwrap();

    // A healthy node: nothing to say, with the running weftd's own flags.
    let (code, out) = doctor(&lab, &["doctor"]);
    assert!(
        out.contains("with the flags and environment of weftd"),
        "{out}"
    );
    assert!(out.contains("no problem found"), "{out}");
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ipv4 2 (0 skipped)"), "{out}");

    // A peer's garbage annotation: skipped, and said why.
    let data_key = format!("{PREFIX}/backend-data");
    lab.annotate_node("node-3", &[(&data_key, "{this is not json")])
        .unwrap();
    within(Duration::from_secs(5), "node-3 skipped by weftd", || {
        metric(
            &lab,
            "node-1",
            "weft_skipped_peers{reason=\"bad_backend_data\"}",
        ) == Some(1.0)
    });
    let (code, out) = doctor(&lab, &["doctor"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("node node-3 (ipv4) skipped, bad_backend_data"),
        "{out}"
    );
    assert!(
        out.contains("skipping node node-3"),
        "weftd's own warning among its last errors: {out}"
    );
    let mac = &published["node-3"].vtep_mac;
    lab.annotate_node(
        "node-3",
        &[(&data_key, &format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#))],
    )
    .unwrap();
    within(Duration::from_secs(5), "node-3 a peer again", || {
        metric(&lab, "node-1", "weft_peers{family=\"ipv4\"}") == Some(2.0)
    });

    // weftd stopped; node-2's route deleted and the table flushed.
    let pid = lab.node("node-1").unwrap().weftd_pid.unwrap();
    let mut flags = cmdline(pid);
    flags.push("doctor".into());
    lab.stop_weftd("node-1", nix::sys::signal::Signal::SIGTERM)
        .unwrap();
    let cidr = published["node-2"].pod_cidr.clone();
    lab.run("node-1", &["ip", "route", "del", &cidr, "dev", "flannel.1"])
        .unwrap();
    lab.run("node-1", &["nft", "flush", "table", "inet", "weft"])
        .unwrap();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (code, out) = doctor(&lab, &flags);
    assert_eq!(code, 1, "{out}");
    let gw = cidr.split('/').next().unwrap();
    for expected in [
        "nothing answers at 127.0.0.1:".to_string(),
        format!("route {cidr} via {gw} dev flannel.1 onlink missing or different"),
        "table inet weft's chains or rules were changed".to_string(),
        "3 problems found".to_string(),
    ] {
        assert!(out.contains(&expected), "{expected:?} in:\n{out}");
    }
    // Told, not touched.
    let routes = lab
        .run("node-1", &["ip", "route", "show", "dev", "flannel.1"])
        .unwrap();
    assert!(
        !routes.contains(&cidr),
        "the doctor changed nothing: {routes}"
    );

    // weftd repairs it all; the doctor agrees.
    lab.start_weftd("node-1").unwrap();
    lab.wait_weftd_ready(&["node-1"], Duration::from_secs(30))
        .unwrap();
    within(Duration::from_secs(15), "the doctor content again", || {
        doctor(&lab, &["doctor"]).0 == 0
    });
    let (_, out) = doctor(&lab, &["doctor"]);
    assert!(out.contains("no problem found"), "{out}");
}
