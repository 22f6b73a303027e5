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
    let pod = lab
        .state
        .pods
        .iter()
        .find(|p| p.name == "node-2-pod-1")
        .unwrap()
        .clone();
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
