//! Whatever arrives, the `weft` binary answers with a CNI error JSON on
//! stdout and a non-zero exit, with the right code, and never panics.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod common;

use std::path::PathBuf;

/// (what, environment, stdin, expected code)
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u64);

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weft-cni-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs the plugin; (exit success, stdout JSON or text, stderr).
fn weft(env: &[(&str, &str)], stdin: &[u8]) -> (bool, String, String) {
    common::run(env, stdin)
}

#[test]
fn every_malformed_request_gets_the_right_code_and_json() {
    let dir = scratch("malformed");
    let good_env = dir.join("subnet.env");
    std::fs::write(&good_env, "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap();
    let garbage_env = dir.join("garbage.env");
    std::fs::write(
        &garbage_env,
        "FLANNEL_NETWORK=10.244.0.0/16\nthis is not a line\n",
    )
    .unwrap();
    let missing_env = dir.join("missing.env");
    let conf = |subnet: &PathBuf, version: &str| {
        format!(
            r#"{{"cniVersion":"{version}","name":"cbr0","type":"weft","subnetFile":"{}","dataDir":"{}"}}"#,
            subnet.display(),
            dir.join("data").display()
        )
    };
    let add = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/run/netns/nope"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/nonexistent"),
    ];
    let huge = format!(r#"{{"name":"x","pad":"{}"}}"#, "a".repeat(2 << 20));
    let cases: Vec<Case> = vec![
        ("empty stdin", add.to_vec(), vec![], 6),
        ("not JSON", add.to_vec(), b"{nope".to_vec(), 6),
        ("a JSON array", add.to_vec(), b"[1,2]".to_vec(), 6),
        ("binary garbage", add.to_vec(), vec![0xff, 0x00, 0xfe, 0x7b], 6),
        ("cniVersion not a string", add.to_vec(), br#"{"name":"x","cniVersion":3}"#.to_vec(), 7),
        ("unknown cniVersion", add.to_vec(), br#"{"name":"x","cniVersion":"9.9.9"}"#.to_vec(), 1),
        ("subnetFile not a string", add.to_vec(), br#"{"name":"x","cniVersion":"1.0.0","subnetFile":5}"#.to_vec(), 7),
        ("huge input", add.to_vec(), huge.into_bytes(), 7),
        ("no network name", add.to_vec(), br#"{"cniVersion":"1.0.0"}"#.to_vec(), 7),
        ("a network name that is not a string", add.to_vec(), br#"{"cniVersion":"1.0.0","name":7}"#.to_vec(), 7),
        ("a network name starting with '-'", add.to_vec(), br#"{"cniVersion":"1.0.0","name":"-cbr0"}"#.to_vec(), 7),
        ("a network name with a '/'", add.to_vec(), br#"{"cniVersion":"1.0.0","name":"a/../b"}"#.to_vec(), 7),
        ("a network name with a space, on DEL", vec![("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "c1"), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/x")], br#"{"cniVersion":"1.0.0","name":"cb r0"}"#.to_vec(), 7),
        ("unknown command", vec![("CNI_COMMAND", "FROB")], conf(&good_env, "1.0.0").into_bytes(), 4),
        ("ADD without CNI_NETNS", add.iter().copied().filter(|(k, _)| *k != "CNI_NETNS").collect(), conf(&good_env, "1.0.0").into_bytes(), 4),
        ("ADD with a path as container ID", add.iter().map(|&(k, v)| if k == "CNI_CONTAINERID" { (k, "../../etc/x") } else { (k, v) }).collect(), conf(&good_env, "1.0.0").into_bytes(), 4),
        ("subnet.env with garbage lines", add.to_vec(), conf(&garbage_env, "1.0.0").into_bytes(), 7),
        ("subnet.env not there yet", add.to_vec(), conf(&missing_env, "1.0.0").into_bytes(), 11),
        ("delegate with a name", add.to_vec(), format!(r#"{{"cniVersion":"1.0.0","name":"n","subnetFile":"{}","delegate":{{"name":"x"}}}}"#, good_env.display()).into_bytes(), 7),
        ("delegate not found in CNI_PATH", add.to_vec(), conf(&good_env, "1.0.0").into_bytes(), 4),
        ("STATUS before weftd is ready", vec![("CNI_COMMAND", "STATUS")], conf(&missing_env, "1.1.0").into_bytes(), 50),
        ("CHECK on a 0.3.1 config", vec![("CNI_COMMAND", "CHECK"), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", "/x"), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/x")], conf(&good_env, "0.3.1").into_bytes(), 1),
    ];
    for (what, env, stdin, want) in cases {
        let (ok, out, err) = weft(&env, &stdin);
        assert!(!ok, "{what}: must fail");
        assert!(!err.contains("panicked"), "{what}: panicked: {err}");
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("{what}: stdout not JSON ({e}): {out:?}"));
        assert_eq!(v["code"].as_u64(), Some(want), "{what}: {v}");
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
        assert!(v["cniVersion"].is_string(), "{what}: {v}");
    }
    let ready = weft(
        &[("CNI_COMMAND", "STATUS")],
        conf(&good_env, "1.1.0").as_bytes(),
    );
    assert!(
        ready.0,
        "STATUS with a valid subnet.env succeeds: {ready:?}"
    );
    let (ok, out, _) = weft(&[("CNI_COMMAND", "VERSION")], b"{}");
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v["supportedVersions"],
        serde_json::json!(["0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    let (ok, out, err) = weft(&[], b"");
    assert!(
        ok && out.is_empty() && err.contains("CNI protocol versions supported"),
        "about text on stderr"
    );
    assert!(
        !dir.join("data").exists()
            || std::fs::read_dir(dir.join("data"))
                .unwrap()
                .next()
                .is_none(),
        "nothing saved by failed requests"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
