//! The CNI plugin's inputs: the runtime's environment and stdin, the
//! subnet.env file, the delegate's result.

use serde_json::Value;
use weft_cni::exec::{CniEnv, valid_container_id};
use weft_cni::subnet_env::SubnetEnv;
use weft_cni::sys::Environ;
use weft_cni::{CniError, delegate, plugin, result};

use crate::{entries, parts, text};

/// Every error must print as the spec's JSON with its nonzero code.
fn printable(e: &CniError) {
    let v: Value = serde_json::from_str(&e.to_json()).unwrap();
    assert_eq!(v["code"].as_u64(), Some(u64::from(e.code)), "{e}");
    assert_ne!(e.code, 0, "{e}");
    assert!(!e.msg.is_empty(), "{e:?}");
}

fn spec_name(name: &str) -> bool {
    let mut c = name.chars();
    c.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && c.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// One invocation as everything but its side effects: parts are the
/// environment (NUL-separated `KEY=VALUE`), stdin, subnet.env's text and
/// the delegate's result. Checks: every error is CNI error JSON; an
/// accepted environment has a known command and a container ID that is a
/// safe file name; an accepted config has a spec network name; the
/// delegate config is an object naming the network with IPAM ranges from
/// subnet.env; a converted result is JSON.
pub fn cni_request(data: &[u8]) {
    let p = parts(data, 4);
    match CniEnv::from_environ(Environ::from_entries(entries(p[0]))) {
        Err(e) => printable(&e),
        Ok(env) => {
            assert!(
                ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION"].contains(&env.command.as_str())
            );
            if let Some(id) = &env.container_id {
                assert!(valid_container_id(id) && !id.contains('/'), "{id:?}");
            }
            if matches!(env.command.as_str(), "ADD" | "CHECK") {
                assert!(env.netns.is_some() && env.ifname.is_some());
            }
        }
    }
    let req = match plugin::decode(p[1]) {
        Err(e) => return printable(&e),
        Ok(r) => r,
    };
    let name = req.conf["name"].as_str().unwrap();
    assert!(spec_name(name), "{name:?}");
    assert!(!req.subnet_file().is_empty() && !req.data_dir().is_empty());
    if let Ok(env) = SubnetEnv::parse(&text(p[2])) {
        match delegate::build(&req.conf, &env) {
            Err(e) => printable(&e),
            Ok(d) => {
                assert_eq!(d["name"].as_str(), Some(name));
                assert!(d["type"].is_string());
                let ranges = d["ipam"]["ranges"].as_array().unwrap();
                let subnets = env.subnet.iter().chain(&env.ipv6_subnet).count();
                assert_eq!(ranges.len(), subnets);
            }
        }
    }
    if !req.version.is_empty() {
        match result::as_version(&text(p[3]), &req.version) {
            Err(e) => printable(&e),
            Ok(out) => {
                let v: Value = serde_json::from_str(&out).unwrap();
                assert!(v.is_object());
            }
        }
    }
}

/// subnet.env's text, as the plugin reads it and as weftd reads it back
/// to ask for the same subnets. Checks: the plugin's accepted values are
/// CIDRs where they must be; weftd's subnets are masked and of their key's
/// family.
pub fn subnet_env(data: &[u8]) {
    let t = text(data);
    if let Ok(env) = SubnetEnv::parse(&t) {
        for s in env.subnet.iter().chain(&env.ipv6_subnet) {
            assert!(weft_cni::subnet_env::network_of(s).is_some(), "{s:?}");
        }
    }
    let prev = weftd::files::subnets_in(&t);
    for (family, n) in prev.iter() {
        if let Some(n) = n {
            assert_eq!(n.is_ipv6(), family.is_v6());
            assert_eq!(n.ip(), n.network(), "{n} is not masked");
        }
    }
}
