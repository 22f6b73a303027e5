//! STATUS and GC reach the delegate when it speaks CNI 1.1, and only then
//! (Debian's 1.0.0 plugins would fail them). GC also drops the saved
//! configs of attachments that are no longer valid.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weft-fwd-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::fs::write(
        d.join("subnet.env"),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .unwrap();
    d
}

/// A stand-in `bridge` speaking `versions` that records each call.
fn fake_bridge(dir: &Path, versions: &str) {
    let script = dir.join("bin/bridge");
    let log = dir.join("calls");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$CNI_COMMAND\" = VERSION ]; then echo '{{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[{versions}]}}'; exit 0; fi\n\
             echo \"$CNI_COMMAND $(cat)\" >> {}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
}

fn weft(dir: &Path, command: &str, conf: &str) -> (bool, String) {
    let path = dir.join("bin").display().to_string();
    let (ok, out, _) = common::run(
        &[("CNI_COMMAND", command), ("CNI_PATH", &path)],
        conf.as_bytes(),
    );
    (ok, out)
}

fn conf(dir: &Path) -> String {
    format!(
        r#"{{"cniVersion":"1.1.0","name":"cbr0","type":"weft","subnetFile":"{}","dataDir":"{}","delegate":{{"hairpinMode":true}},"cni.dev/valid-attachments":[{{"containerID":"keep","ifname":"eth0"}}]}}"#,
        dir.join("subnet.env").display(),
        dir.join("data").display()
    )
}

#[test]
fn status_and_gc_are_handed_on_to_a_delegate_that_speaks_1_1() {
    let dir = scratch("new");
    fake_bridge(&dir, r#""1.0.0","1.1.0""#);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    for id in ["keep", "stale"] {
        std::fs::write(dir.join("data").join(id), "{}").unwrap();
    }
    assert!(weft(&dir, "STATUS", &conf(&dir)).0);
    let (ok, out) = weft(&dir, "GC", &conf(&dir));
    assert!(ok, "{out}");
    let calls = std::fs::read_to_string(dir.join("calls")).unwrap();
    let lines: Vec<&str> = calls.lines().collect();
    assert_eq!(lines.len(), 2, "{calls}");
    assert!(lines[0].starts_with("STATUS {"), "{calls}");
    assert!(
        lines[1].starts_with("GC {") && lines[1].contains("\"containerID\":\"keep\""),
        "{calls}"
    );
    assert!(
        lines[1].contains("\"hairpinMode\":true") && lines[1].contains("\"type\":\"bridge\""),
        "{calls}"
    );
    assert!(
        dir.join("data/keep").exists(),
        "a valid attachment keeps its saved config"
    );
    assert!(!dir.join("data/stale").exists(), "a gone one loses it");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_older_delegate_is_not_asked() {
    let dir = scratch("old");
    fake_bridge(&dir, r#""0.3.1","0.4.0","1.0.0""#);
    assert!(weft(&dir, "STATUS", &conf(&dir)).0);
    assert!(weft(&dir, "GC", &conf(&dir)).0);
    assert!(
        !dir.join("calls").exists(),
        "never called with STATUS or GC"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
