//! Pods created as a container runtime creates them (the node's conflist:
//! weft → bridge/host-local, then portmap) on a 3-node lab with weftd: the
//! full matrix passes, and DEL frees what ADD took.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use weft_lab::{Lab, LabConfig, unique_name};

#[test]
fn pods_from_the_conflist_reach_each_other_and_del_frees_their_address_and_veth() {
    let mut lab = Lab::up(&LabConfig::with_weftd(&unique_name("cnipods"), 3)).unwrap();
    for n in ["node-1", "node-2", "node-3"] {
        for k in 1..=2 {
            lab.add_pod(n, &format!("{n}-pod-{k}")).unwrap();
        }
    }
    let results = lab.connectivity().unwrap();
    assert_eq!(results.len(), 30);
    let failed: Vec<_> = results.iter().filter(|r| !r.ok()).collect();
    assert!(failed.is_empty(), "failed pairs: {failed:#?}");

    let node = lab.node("node-2").unwrap().clone();
    let pod = lab.pod("node-2-pod-1").unwrap().clone();
    let ip_file = node.host_path(&format!("/var/lib/cni/networks/cbr0/{}", pod.ip));
    let saved = node.host_path("/var/lib/cni/flannel/node-2-pod-1");
    assert!(ip_file.exists(), "host-local holds {}", pod.ip);
    assert!(saved.exists(), "weft saved the delegate config");
    let veths = |lab: &Lab| {
        String::from_utf8_lossy(
            &lab.exec("node-2", &["ip", "-o", "link", "show", "master", "cni0"])
                .unwrap()
                .stdout,
        )
        .lines()
        .count()
    };
    assert_eq!(veths(&lab), 2);

    lab.del_pod("node-2", "node-2-pod-1").unwrap();
    assert!(!ip_file.exists(), "the address is free again");
    assert!(
        !saved.exists(),
        "the saved config is gone after a successful DEL"
    );
    assert_eq!(veths(&lab), 1, "its veth is gone");
    let rest = lab.connectivity().unwrap();
    assert_eq!(rest.len(), 20);
    assert!(rest.iter().all(|r| r.ok()), "{rest:#?}");
}

fn ipam_addresses(lab: &Lab, node: &str) -> Vec<String> {
    let dir = lab
        .node(node)
        .unwrap()
        .host_path("/var/lib/cni/networks/cbr0");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// As a runtime starting a burst of sandboxes: 50 pods on one lab node at
/// once, each through the node's conflist; then 50 DELs at once. Then a
/// delegate whose DEL fails: the saved config stays and the retry cleans up.
#[test]
fn fifty_concurrent_adds_on_a_node_then_fifty_dels_and_a_failed_del_retried() {
    let lab = Lab::up(&LabConfig::with_weftd(&unique_name("cni50"), 1)).unwrap();
    let names: Vec<String> = (0..50).map(|i| format!("burst-{i}")).collect();
    let records: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|n| s.spawn(|| lab.create_pod("node-1", n)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let errors: Vec<String> = records
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert!(
        errors.is_empty(),
        "{} ADDs failed: {errors:#?}",
        errors.len()
    );
    let mut ips: Vec<String> = records
        .iter()
        .map(|r| r.as_ref().unwrap().ip.to_string())
        .collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 50, "50 distinct addresses");
    assert_eq!(ipam_addresses(&lab, "node-1").len(), 50);

    let dels: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|n| s.spawn(|| lab.destroy_pod("node-1", n)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(dels.iter().all(Result::is_ok), "{dels:#?}");
    assert!(
        ipam_addresses(&lab, "node-1").is_empty(),
        "every address is free"
    );
    let saved = lab
        .node("node-1")
        .unwrap()
        .host_path("/var/lib/cni/flannel");
    assert_eq!(
        std::fs::read_dir(&saved).unwrap().count(),
        0,
        "no saved config left"
    );
    let links = lab
        .run("node-1", &["ip", "-o", "link", "show", "master", "cni0"])
        .unwrap();
    assert_eq!(links.lines().count(), 0, "no veth left: {links}");

    // A bridge whose DEL fails, first in CNI_PATH (the node's /opt/cni/bin;
    // written from inside the node: its overlay must see the new file).
    let pod = lab.create_pod("node-1", "flaky").unwrap();
    let wrapper = "#!/bin/sh\n[ \"$CNI_COMMAND\" = DEL ] && { echo '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"try again\"}'; exit 1; }\nexec /usr/lib/cni/bridge \"$@\"\n";
    lab.run(
        "node-1",
        &[
            "sh",
            "-c",
            "printf '%s' \"$0\" > /opt/cni/bin/bridge && chmod 755 /opt/cni/bin/bridge",
            wrapper,
        ],
    )
    .unwrap();
    assert!(lab.destroy_pod("node-1", "flaky").is_err(), "the DEL fails");
    assert!(
        saved.join("flaky").exists(),
        "the saved config stays for the retry"
    );
    assert_eq!(ipam_addresses(&lab, "node-1"), vec![pod.ip.to_string()]);
    lab.run("node-1", &["rm", "/opt/cni/bin/bridge"]).unwrap();
    lab.destroy_pod("node-1", "flaky").unwrap();
    assert!(!saved.join("flaky").exists());
    assert!(
        ipam_addresses(&lab, "node-1").is_empty(),
        "the retry freed the address"
    );
}
