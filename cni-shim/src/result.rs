//! Converting a delegate's result to the version the runtime asked for, as
//! libcni's `GetAsVersion` does for flannel's plugin. Three shapes exist:
//! 1.x (`ips` without `version`), 0.3.x/0.4.0 (`ips` with `version` "4" or
//! "6"), and the legacy 0.1.0/0.2.0 (`ip4`/`ip6` objects).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde_json::{Map, Value, json};

use crate::error::{CniError, code};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Legacy,
    Versioned,
    Current,
}

fn shape(version: &str) -> Option<Shape> {
    match version {
        "0.1.0" | "0.2.0" => Some(Shape::Legacy),
        "0.3.0" | "0.3.1" | "0.4.0" => Some(Shape::Versioned),
        "1.0.0" | "1.1.0" => Some(Shape::Current),
        _ => None,
    }
}

fn is_v6(ip: &Value) -> bool {
    ip["address"].as_str().is_some_and(|a| a.contains(':'))
}

/// The result in 1.x form.
fn to_current(mut r: Map<String, Value>, from: Shape) -> Map<String, Value> {
    match from {
        Shape::Current => {}
        Shape::Versioned => {
            if let Some(ips) = r.get_mut("ips").and_then(Value::as_array_mut) {
                for ip in ips {
                    if let Some(m) = ip.as_object_mut() {
                        m.remove("version");
                    }
                }
            }
        }
        Shape::Legacy => {
            let (mut ips, mut routes) = (Vec::new(), Vec::new());
            for key in ["ip4", "ip6"] {
                if let Some(Value::Object(f)) = r.remove(key) {
                    let mut ip = Map::new();
                    if let Some(a) = f.get("ip") {
                        ip.insert("address".into(), a.clone());
                    }
                    if let Some(g) = f.get("gateway") {
                        ip.insert("gateway".into(), g.clone());
                    }
                    ips.push(Value::Object(ip));
                    if let Some(Value::Array(rs)) = f.get("routes") {
                        routes.extend(rs.iter().cloned());
                    }
                }
            }
            r.insert("ips".into(), Value::Array(ips));
            if !routes.is_empty() {
                r.insert("routes".into(), Value::Array(routes));
            }
        }
    }
    r
}

/// From 1.x form to `to`'s shape.
fn from_current(mut r: Map<String, Value>, to: Shape) -> Map<String, Value> {
    match to {
        Shape::Current => {}
        Shape::Versioned => {
            if let Some(ips) = r.get_mut("ips").and_then(Value::as_array_mut) {
                for ip in ips {
                    let v = if is_v6(ip) { "6" } else { "4" };
                    if let Some(m) = ip.as_object_mut() {
                        m.insert("version".into(), json!(v));
                    }
                }
            }
        }
        Shape::Legacy => {
            let ips = r
                .remove("ips")
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default();
            let routes = r
                .remove("routes")
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default();
            r.remove("interfaces");
            for (key, v6) in [("ip4", false), ("ip6", true)] {
                let Some(ip) = ips.iter().find(|i| is_v6(i) == v6) else {
                    continue;
                };
                let mut f = Map::new();
                f.insert("ip".into(), ip["address"].clone());
                if let Some(g) = ip.get("gateway") {
                    f.insert("gateway".into(), g.clone());
                }
                let mine: Vec<Value> = routes
                    .iter()
                    .filter(|rt| rt["dst"].as_str().is_some_and(|d| d.contains(':')) == v6)
                    .cloned()
                    .collect();
                if !mine.is_empty() {
                    f.insert("routes".into(), Value::Array(mine));
                }
                r.insert(key.into(), Value::Object(f));
            }
        }
    }
    r
}

/// `text` (a delegate's result) as version `to`: unchanged, byte for byte,
/// when it already is that version.
pub fn as_version(text: &str, to: &str) -> Result<String, CniError> {
    let bad = |why: String| CniError::new(code::DECODE, format!("the delegate's result {why}"));
    let r: Map<String, Value> = match serde_json::from_str(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(bad("is not a JSON object".into())),
        Err(e) => return Err(bad(format!("is not JSON: {e}"))),
    };
    let from = r
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or(to)
        .to_string();
    if from == to {
        return Ok(text.to_string());
    }
    let (Some(fs), Some(ts)) = (shape(&from), shape(to)) else {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("cannot convert a result from version {from} to {to}"),
        ));
    };
    let mut out = from_current(to_current(r, fs), ts);
    out.insert("cniVersion".into(), json!(to));
    Ok(Value::Object(out).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"cniVersion":"1.0.0","interfaces":[{"name":"cni0","mac":"aa:bb:cc:dd:ee:ff"}],"ips":[{"address":"10.244.1.2/24","gateway":"10.244.1.1","interface":0},{"address":"fd00::2/64","gateway":"fd00::1"}],"routes":[{"dst":"10.244.0.0/16"},{"dst":"fd00::/48"}],"dns":{}}"#;

    fn parse(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn the_same_version_passes_through_untouched() {
        assert_eq!(as_version(V1, "1.0.0").unwrap(), V1);
    }

    #[test]
    fn one_zero_to_one_one_changes_only_the_version() {
        let mut want = parse(V1);
        want["cniVersion"] = json!("1.1.0");
        assert_eq!(parse(&as_version(V1, "1.1.0").unwrap()), want);
    }

    #[test]
    fn down_to_0_3_1_adds_the_ip_versions_and_back_removes_them() {
        let old = as_version(V1, "0.3.1").unwrap();
        let v = parse(&old);
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        assert_eq!(v["ips"][0]["interface"], 0);
        let back = parse(&as_version(&old, "1.0.0").unwrap());
        assert_eq!(back, parse(V1));
    }

    #[test]
    fn legacy_0_2_0_both_ways() {
        let legacy = parse(&as_version(V1, "0.2.0").unwrap());
        assert_eq!(
            legacy,
            json!({"cniVersion":"0.2.0","dns":{},
                   "ip4":{"ip":"10.244.1.2/24","gateway":"10.244.1.1","routes":[{"dst":"10.244.0.0/16"}]},
                   "ip6":{"ip":"fd00::2/64","gateway":"fd00::1","routes":[{"dst":"fd00::/48"}]}})
        );
        let up = parse(&as_version(&legacy.to_string(), "1.0.0").unwrap());
        assert_eq!(up["ips"][0]["address"], "10.244.1.2/24");
        assert_eq!(up["routes"].as_array().unwrap().len(), 2);
        assert!(up.get("ip4").is_none());
    }

    #[test]
    fn garbage_and_unknown_versions_are_cni_errors() {
        assert_eq!(
            as_version("not json", "1.0.0").unwrap_err().code,
            code::DECODE
        );
        assert_eq!(as_version("[1]", "1.0.0").unwrap_err().code, code::DECODE);
        let e = as_version(r#"{"cniVersion":"9.9.9"}"#, "1.0.0").unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
    }
}
