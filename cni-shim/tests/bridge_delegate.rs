//! The plugin with Debian's real `bridge` and `host-local` as delegates, on
//! a private "node" network namespace: ADD wires a pod and saves flannel's
//! delegate config; a failed delegate DEL keeps it so the retry cleans up;
//! 50 concurrent ADDs get 50 distinct addresses and 50 DELs free them all.
//! Needs root.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const DEBIAN_PLUGINS: &str = "/usr/lib/cni";

struct Scratch {
    tag: String,
    dir: PathBuf,
    pods: Vec<String>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.pods {
            let _ = Command::new("ip").args(["netns", "del", p]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("weft-cni-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("subnet.env"),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        Scratch {
            tag: tag.to_string(),
            dir,
            pods: Vec::new(),
        }
    }

    fn pod(&mut self, n: usize) -> String {
        let name = format!("weftcni-{}-{}-p{n}", std::process::id(), self.tag);
        assert!(
            Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .unwrap()
                .success()
        );
        self.pods.push(name.clone());
        name
    }

    fn conf(&self) -> String {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"cbr0","type":"weft","subnetFile":"{}","dataDir":"{}","delegate":{{"hairpinMode":true,"isDefaultGateway":true}},"ipam":{{"dataDir":"{}"}}}}"#,
            self.dir.join("subnet.env").display(),
            self.dir.join("flannel").display(),
            self.dir.join("ipam").display()
        )
    }
}

/// Starts the plugin (in the calling thread's network namespace) with
/// `conf` on stdin.
fn spawn_weft(cmd: &str, id: &str, netns: &str, cni_path: &str, conf: &str) -> std::process::Child {
    let netns = format!("/run/netns/{netns}");
    let env = [
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", cni_path),
    ];
    common::spawn(&env, conf.as_bytes())
}

/// (success, stdout) of a finished plugin run.
fn finish(child: std::process::Child) -> (bool, String) {
    let (ok, out, _) = common::finish(child);
    (ok, out)
}

/// Runs the plugin: (success, stdout).
fn weft(cmd: &str, id: &str, netns: &str, cni_path: &str, conf: &str) -> (bool, String) {
    finish(spawn_weft(cmd, id, netns, cni_path, conf))
}

fn in_private_netns(f: impl FnOnce() + Send) {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("unshare a network namespace (root needed)");
            assert!(
                Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status()
                    .unwrap()
                    .success()
            );
            f();
        })
        .join()
        .unwrap();
    });
}

fn ipam_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("ipam/cbr0"))
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

fn pod_has(pod: &str, ip: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", pod, "-o", "addr", "show", "dev", "eth0"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(ip)
}

#[test]
fn add_saves_flannels_config_and_a_failed_delegate_del_keeps_it_for_the_retry() {
    assert!(
        Path::new(DEBIAN_PLUGINS).join("bridge").exists(),
        "containernetworking-plugins is installed"
    );
    let mut s = Scratch::new("bridge");
    let pod = s.pod(0);
    let conf = s.conf();
    let dir = s.dir.clone();
    in_private_netns(|| {
        let (ok, out) = weft("ADD", "c0", &pod, DEBIAN_PLUGINS, &conf);
        assert!(ok, "ADD: {out}");
        let result: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(result["cniVersion"], "1.0.0");
        assert_eq!(result["ips"][0]["address"], "10.244.1.2/24");
        assert_eq!(result["ips"][0]["gateway"], "10.244.1.1");
        assert!(pod_has(&pod, "10.244.1.2/24"));
        let saved = std::fs::read_to_string(dir.join("flannel/c0")).unwrap();
        assert_eq!(
            saved,
            format!(
                r#"{{"cniVersion":"1.0.0","hairpinMode":true,"ipMasq":false,"ipam":{{"dataDir":"{}","ranges":[[{{"subnet":"10.244.1.0/24"}}]],"routes":[{{"dst":"10.244.0.0/16"}}],"type":"host-local"}},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}}"#,
                dir.join("ipam").display()
            )
        );
        assert_eq!(ipam_files(&dir), vec!["10.244.1.2"]);

        // CHECK does real work: it verifies the saved config against
        // subnet.env, then hands the delegate the saved config with the
        // prevResult (a stand-in delegate records what it got: Debian's
        // bridge 1.1.1 fails CHECK on any route without a gateway, an
        // upstream bug, whatever weft does).
        let recorder = dir.join("recording-bin");
        std::fs::create_dir_all(&recorder).unwrap();
        let script = recorder.join("bridge");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncat > {}\nexit 0\n",
                dir.join("check-stdin").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let check_conf = conf.replace(
            r#""cniVersion":"1.0.0""#,
            &format!(r#""cniVersion":"1.0.0","prevResult":{out}"#),
        );
        let (ok, why) = weft("CHECK", "c0", &pod, recorder.to_str().unwrap(), &check_conf);
        assert!(ok, "CHECK: {why}");
        let handed: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("check-stdin")).unwrap())
                .unwrap();
        assert_eq!(handed["prevResult"], result);
        assert_eq!(
            handed["ipam"]["ranges"],
            serde_json::json!([[{"subnet": "10.244.1.0/24"}]])
        );
        // Once the node's subnet moved under the pod, CHECK says so itself.
        std::fs::write(dir.join("subnet.env"), "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap();
        let (ok, why) = weft("CHECK", "c0", &pod, recorder.to_str().unwrap(), &check_conf);
        assert!(
            !ok && why.contains("\"code\":7") && why.contains("subnet changed"),
            "CHECK after a subnet change: {why}"
        );

        // A delegate whose DEL fails: the saved config stays for the retry.
        let fake = dir.join("failing-bin");
        std::fs::create_dir_all(&fake).unwrap();
        let script = fake.join("bridge");
        std::fs::write(&script, "#!/bin/sh\necho '{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"bridge is busy\"}'\nexit 1\n").unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let (ok, out) = weft("DEL", "c0", &pod, fake.to_str().unwrap(), &conf);
        assert!(!ok);
        let err: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            (err["code"].as_u64(), err["msg"].as_str()),
            (Some(11), Some("bridge is busy")),
            "the delegate's error passes through"
        );
        assert!(dir.join("flannel/c0").exists(), "kept for the retry");
        assert_eq!(ipam_files(&dir), vec!["10.244.1.2"], "the IP is still held");

        // The retry (subnet.env changed meanwhile: DEL does not need it).
        std::fs::remove_file(dir.join("subnet.env")).unwrap();
        let (ok, out) = weft("DEL", "c0", &pod, DEBIAN_PLUGINS, &conf);
        assert!(ok, "DEL retry: {out}");
        assert!(!dir.join("flannel/c0").exists());
        assert!(ipam_files(&dir).is_empty(), "IP freed");
        assert!(!pod_has(&pod, "10.244.1.2"), "veth gone");
        let (ok, out) = weft("DEL", "c0", &pod, DEBIAN_PLUGINS, &conf);
        assert!(ok, "a repeated DEL succeeds: {out}");
    });
}

#[test]
fn fifty_concurrent_adds_get_fifty_addresses_and_fifty_dels_free_them() {
    let mut s = Scratch::new("fifty");
    let pods: Vec<String> = (0..50).map(|i| s.pod(i)).collect();
    let conf = s.conf();
    let dir = s.dir.clone();
    in_private_netns(|| {
        let results: Vec<(bool, String)> = std::thread::scope(|sc| {
            let handles: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let conf = &conf;
                    // Threads spawned here would start in the host namespace:
                    // each spawns its plugin process from this thread instead.
                    let child = spawn_weft("ADD", &format!("c{i}"), p, DEBIAN_PLUGINS, conf);
                    sc.spawn(move || finish(child))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut ips: Vec<String> = results
            .iter()
            .map(|(ok, out)| {
                assert!(ok, "ADD: {out}");
                let v: serde_json::Value = serde_json::from_str(out).unwrap();
                v["ips"][0]["address"].as_str().unwrap().to_string()
            })
            .collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 50, "50 distinct addresses");
        assert_eq!(ipam_files(&dir).len(), 50);
        for (i, p) in pods.iter().enumerate() {
            let (ok, out) = weft("DEL", &format!("c{i}"), p, DEBIAN_PLUGINS, &conf);
            assert!(ok, "DEL: {out}");
        }
        assert!(ipam_files(&dir).is_empty(), "every IP freed");
        assert_eq!(
            std::fs::read_dir(dir.join("flannel")).unwrap().count(),
            0,
            "every saved config removed"
        );
    });
}

/// A conflist newer than the delegates (1.1.0; Debian's bridge speaks up to
/// 1.0.0): weft asks the delegate in 1.0.0, saves that, and answers in
/// 1.1.0; an old 0.3.1 list gets its result in 0.3.1's shape. DEL replays.
#[test]
fn results_come_back_in_the_requested_version_even_from_an_older_delegate() {
    let mut s = Scratch::new("versions");
    let pods = [s.pod(0), s.pod(1)];
    let dir = s.dir.clone();
    let base = s.conf();
    in_private_netns(|| {
        for (i, (asked, saved_as, ip_version)) in
            [("1.1.0", "1.0.0", None), ("0.3.1", "0.3.1", Some("4"))]
                .into_iter()
                .enumerate()
        {
            let conf = base.replace(
                r#""cniVersion":"1.0.0""#,
                &format!(r#""cniVersion":"{asked}""#),
            );
            let id = format!("v{i}");
            let (ok, out) = weft("ADD", &id, &pods[i], DEBIAN_PLUGINS, &conf);
            assert!(ok, "ADD {asked}: {out}");
            let result: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert_eq!(result["cniVersion"], asked);
            assert_eq!(result["ips"][0]["version"].as_str(), ip_version, "{out}");
            assert!(
                result["ips"][0]["address"]
                    .as_str()
                    .unwrap()
                    .starts_with("10.244.1.")
            );
            let saved: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(dir.join("flannel").join(&id)).unwrap(),
            )
            .unwrap();
            assert_eq!(saved["cniVersion"], saved_as);
            let (ok, out) = weft("DEL", &id, &pods[i], DEBIAN_PLUGINS, &conf);
            assert!(ok, "DEL {asked}: {out}");
            assert!(!dir.join("flannel").join(&id).exists());
        }
        assert!(ipam_files(&dir).is_empty(), "every address is free again");
    });
}
