//! The delegate configuration, derived exactly as flannel's CNI plugin
//! derives it, so that the saved bytes are the same: compact JSON with sorted
//! keys; defaults (`type` bridge, `ipMasq` = !FLANNEL_IPMASQ, `mtu`,
//! `isGateway` for bridge) only where the user's `delegate` is silent;
//! host-local `ranges` replaced by this node's subnets and `routes` extended
//! with a route to each pod network.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use serde_json::{Map, Value, json};

use crate::error::{CniError, code};
use crate::subnet_env::{SubnetEnv, network_of};

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

/// Builds the delegate config from the plugin's input config `conf`.
pub fn build(conf: &Map<String, Value>, env: &SubnetEnv) -> Result<Value, CniError> {
    let name = conf
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("the network config has no \"name\" string"))?;
    let mut d = match conf.get("delegate") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => {
            return Err(invalid(format!(
                "\"delegate\" must be an object, not {other}"
            )));
        }
    };
    for forbidden in ["name", "ipam"] {
        if d.contains_key(forbidden) {
            return Err(invalid(format!(
                "\"delegate\" must not have a \"{forbidden}\" field: weft sets it"
            )));
        }
    }
    match d.get("type") {
        None => {
            d.insert("type".into(), json!("bridge"));
        }
        Some(Value::String(_)) => {}
        Some(other) => {
            return Err(invalid(format!(
                "\"delegate.type\" must be a string, not {other}"
            )));
        }
    }
    if let Some(rc) = conf.get("runtimeConfig") {
        d.insert("runtimeConfig".into(), rc.clone());
    }
    d.insert("name".into(), json!(name));
    if let Some(v) = conf
        .get("cniVersion")
        .and_then(Value::as_str)
        .filter(|v| !v.is_empty())
    {
        d.insert("cniVersion".into(), json!(v));
    }
    d.entry("ipMasq").or_insert(json!(!env.ip_masq));
    d.entry("mtu").or_insert(json!(env.mtu));
    if d.get("type").and_then(Value::as_str) == Some("bridge") {
        d.entry("isGateway").or_insert(json!(true));
    }

    let mut ipam = match conf.get("ipam") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(other) => return Err(invalid(format!("\"ipam\" must be an object, not {other}"))),
    };
    ipam.entry("type").or_insert(json!("host-local"));
    let mut ranges = Vec::new();
    for sub in [&env.subnet, &env.ipv6_subnet].into_iter().flatten() {
        let net =
            network_of(sub).ok_or_else(|| invalid(format!("subnet {sub:?} is not a CIDR")))?;
        ranges.push(json!([{ "subnet": net }]));
    }
    ipam.insert("ranges".into(), Value::Array(ranges));
    let mut routes = match ipam.get("routes") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(r)) => r.clone(),
        Some(other) => {
            return Err(invalid(format!(
                "\"ipam.routes\" must be an array, not {other}"
            )));
        }
    };
    for net in env.networks.iter().chain(&env.ipv6_networks) {
        routes.push(json!({ "dst": net }));
    }
    ipam.insert("routes".into(), Value::Array(routes));
    d.insert("ipam".into(), Value::Object(ipam));
    Ok(Value::Object(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(text: &str) -> SubnetEnv {
        SubnetEnv::parse(text).unwrap()
    }

    const V4: &str = "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n";

    fn conf(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn golden_flannel_derivation_byte_for_byte() {
        let c = conf(
            json!({"name": "cbr0", "cniVersion": "1.0.0", "type": "weft",
            "delegate": {"hairpinMode": true, "isDefaultGateway": true}}),
        );
        let got = build(&c, &env(V4)).unwrap().to_string();
        assert_eq!(
            got,
            r#"{"cniVersion":"1.0.0","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.244.1.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}"#
        );
        assert_eq!(got.len(), 242);
    }

    #[test]
    fn dual_stack_and_v6_only_add_a_range_set_and_route_per_family() {
        let dual = env(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPV6_NETWORK=fd00:10:244::/48\n\
             FLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
        );
        let c = conf(json!({"name": "cbr0", "cniVersion": "0.3.1"}));
        let got = build(&c, &dual).unwrap();
        assert_eq!(
            got["ipam"],
            json!({"type": "host-local",
                   "ranges": [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:10:244:1::/64"}]],
                   "routes": [{"dst": "10.244.0.0/16"}, {"dst": "fd00:10:244::/48"}]})
        );
        assert_eq!(got["ipMasq"], json!(true));
        let v6 = env(
            "FLANNEL_IPV6_NETWORK=fd00:10:244::/48\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=true\n",
        );
        let got = build(&c, &v6).unwrap();
        assert_eq!(
            got["ipam"]["ranges"],
            json!([[{"subnet": "fd00:10:244:1::/64"}]])
        );
        assert_eq!(got["mtu"], json!(1430));
    }

    #[test]
    fn user_options_pass_through_and_defaults_yield_to_them() {
        let c = conf(json!({"name": "n", "cniVersion": "1.0.0",
            "delegate": {"type": "bridge", "bridge": "br-pods", "mtu": 1400, "ipMasq": true, "isGateway": false, "promiscMode": false},
            "ipam": {"routes": [{"dst": "192.0.2.0/24"}], "dataDir": "/tmp/ipam"},
            "runtimeConfig": {"portMappings": []}}));
        let got = build(&c, &env(V4)).unwrap();
        assert_eq!(got["bridge"], json!("br-pods"));
        assert_eq!(
            (
                got["mtu"].clone(),
                got["ipMasq"].clone(),
                got["isGateway"].clone()
            ),
            (json!(1400), json!(true), json!(false))
        );
        assert_eq!(got["ipam"]["dataDir"], json!("/tmp/ipam"));
        assert_eq!(
            got["ipam"]["routes"],
            json!([{"dst": "192.0.2.0/24"}, {"dst": "10.244.0.0/16"}])
        );
        assert_eq!(got["runtimeConfig"], json!({"portMappings": []}));
        let other = conf(json!({"name": "n", "delegate": {"type": "macvlan"}}));
        assert_eq!(build(&other, &env(V4)).unwrap().get("isGateway"), None);
    }

    #[test]
    fn forbidden_and_mistyped_fields_are_config_errors() {
        for (c, msg) in [
            (
                json!({"name": "n", "delegate": {"name": "x"}}),
                "\"delegate\" must not have a \"name\" field: weft sets it",
            ),
            (
                json!({"name": "n", "delegate": {"ipam": {}}}),
                "\"delegate\" must not have a \"ipam\" field: weft sets it",
            ),
            (
                json!({"name": "n", "delegate": {"type": 3}}),
                "\"delegate.type\" must be a string, not 3",
            ),
            (
                json!({"name": "n", "delegate": []}),
                "\"delegate\" must be an object, not []",
            ),
            (
                json!({"delegate": {}}),
                "the network config has no \"name\" string",
            ),
            (
                json!({"name": "n", "ipam": {"routes": "x"}}),
                "\"ipam.routes\" must be an array, not \"x\"",
            ),
        ] {
            let e = build(&conf(c), &env(V4)).unwrap_err();
            assert_eq!((e.code, e.msg.as_str()), (7, msg));
        }
    }
}
