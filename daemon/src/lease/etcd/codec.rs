//! flannel's etcd lease format, byte for byte: the key of a lease
//! (`10.5.52.0-24`, dual-stack `10.5.52.0-24&fc00:0:0:5::-64`) and its
//! value, what Go's `json.Marshal` makes of flannel's `LeaseAttrs`:
//! `{"PublicIP":"…","PublicIPv6":null|"…"` then `BackendType`,
//! `BackendData` and `BackendV6Data` when not empty, no blanks. Reading is
//! Go's too: field names in any case, unknown fields ignored.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde_json::Value;

/// A lease's key below `<prefix>/subnets/`: its subnets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SubnetKey {
    pub v4: Ipv4Network,
    pub v6: Option<Ipv6Network>,
}

impl SubnetKey {
    /// flannel's `MakeSubnetKey`: the addresses as the key holds them (a
    /// key written by hand with host bits set names itself with them, so
    /// that it can be found and deleted).
    pub fn text(&self) -> String {
        let v4 = format!("{}-{}", self.v4.ip(), self.v4.prefix());
        match self.v6 {
            None => v4,
            Some(n) => format!("{v4}&{}-{}", n.ip(), n.prefix()),
        }
    }

    /// flannel's `ParseSubnetKey`: None for anything that is not a lease's
    /// key (an IPv4 prefix of 32 or more, an IPv6 one of 128, upper-case
    /// hex, trailing text).
    pub fn parse(text: &str) -> Option<SubnetKey> {
        let (v4, v6) = match text.split_once('&') {
            Some((a, b)) => (a, Some(b)),
            None => (text, None),
        };
        let (ip, len) = v4.rsplit_once('-')?;
        let ip: Ipv4Addr = ip.parse().ok()?;
        let len = digits(len).filter(|l| *l < 32)?;
        let v4 = Ipv4Network::new(ip, len).ok()?;
        let v6 = match v6 {
            None => None,
            Some(t) => {
                let (ip, len) = t.rsplit_once('-')?;
                if !ip
                    .chars()
                    .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c) || c == ':')
                {
                    return None;
                }
                let ip: Ipv6Addr = ip.parse().ok()?;
                let len = digits(len).filter(|l| *l < 128)?;
                Some(Ipv6Network::new(ip, len).ok()?)
            }
        };
        Some(SubnetKey { v4, v6 })
    }
}

fn digits(s: &str) -> Option<u8> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// flannel's `LeaseAttrs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    pub public_ip: Option<Ipv4Addr>,
    pub public_ipv6: Option<Ipv6Addr>,
    pub backend_type: String,
    /// Raw JSON text, as given.
    pub backend_data: Option<String>,
    pub backend_v6_data: Option<String>,
}

/// A JSON string as Go writes it: `<`, `>`, `&`, U+2028 and U+2029 as
/// `\u00XX`/`\u20XX`, control characters escaped.
fn go_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Raw JSON as Go embeds a `json.RawMessage`: compacted, with `<`, `>`
/// and `&` escaped (they can only be inside strings).
fn go_raw(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in raw.chars() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c.is_ascii_whitespace() {
            continue;
        }
        match c {
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out
}

impl Attrs {
    /// The value flanneld writes for these attributes, byte for byte.
    pub fn encode(&self) -> String {
        let mut s = String::from("{\"PublicIP\":");
        s.push_str(&go_string(
            &self.public_ip.unwrap_or(Ipv4Addr::UNSPECIFIED).to_string(),
        ));
        s.push_str(",\"PublicIPv6\":");
        match self.public_ipv6 {
            Some(ip) => s.push_str(&go_string(&ip.to_string())),
            None => s.push_str("null"),
        }
        if !self.backend_type.is_empty() {
            s.push_str(",\"BackendType\":");
            s.push_str(&go_string(&self.backend_type));
        }
        for (name, data) in [
            ("BackendData", &self.backend_data),
            ("BackendV6Data", &self.backend_v6_data),
        ] {
            if let Some(d) = data.as_deref().filter(|d| !d.is_empty()) {
                s.push_str(&format!(",\"{name}\":{}", go_raw(d)));
            }
        }
        s.push('}');
        s
    }

    /// Reads a value as flanneld does; an error names the field.
    pub fn decode(text: &str) -> Result<Attrs, String> {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(o) = v else {
            return Err("not a JSON object".into());
        };
        let get = |key: &str| {
            o.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        };
        let ip = |key: &str| -> Result<Option<String>, String> {
            match get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(format!("{key}: {other} is not a string")),
            }
        };
        let public_ip = match ip("PublicIP")? {
            None => return Err("PublicIP: missing".into()),
            Some(s) => Some(
                s.parse::<Ipv4Addr>()
                    .map_err(|_| format!("PublicIP: {s:?} is not an IPv4 address"))?,
            ),
        };
        let public_ipv6 = match ip("PublicIPv6")? {
            None => None,
            Some(s) => Some(
                s.parse::<Ipv6Addr>()
                    .map_err(|_| format!("PublicIPv6: {s:?} is not an IPv6 address"))?,
            ),
        };
        let backend_type = match get("BackendType") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => return Err(format!("BackendType: {other} is not a string")),
        };
        let raw = |key: &str| get(key).map(Value::to_string);
        Ok(Attrs {
            public_ip,
            public_ipv6,
            backend_type,
            backend_data: raw("BackendData"),
            backend_v6_data: raw("BackendV6Data"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_as_flannel_makes_and_parses_them() {
        let k = SubnetKey {
            v4: "10.5.52.0/24".parse().unwrap(),
            v6: None,
        };
        assert_eq!(k.text(), "10.5.52.0-24");
        assert_eq!(SubnetKey::parse("10.5.52.0-24"), Some(k));
        let d = SubnetKey {
            v4: "10.5.52.0/24".parse().unwrap(),
            v6: Some("fc00:0:0:5::/64".parse().unwrap()),
        };
        assert_eq!(d.text(), "10.5.52.0-24&fc00:0:0:5::-64");
        assert_eq!(SubnetKey::parse("10.5.52.0-24&fc00:0:0:5::-64"), Some(d));
        // A key written by hand with host bits set names itself as it is
        // (found by the fuzzer: it printed as 10.24.0.0-24, another key).
        for odd in ["10.24.0.43-24", "10.24.0.0-24&fc00::5-64"] {
            assert_eq!(
                SubnetKey::parse(odd).map(|k| k.text()).as_deref(),
                Some(odd)
            );
        }
        for bad in [
            "config",
            "10.5.52.0-32",
            "10.5.52.0/24",
            "10.5.52.0-24&FC00::-64",
            "10.5.52.0-24&fc00::-128",
            "10.5.52.0-24x",
            "10.5.52.0-",
        ] {
            assert_eq!(SubnetKey::parse(bad), None, "{bad}");
        }
    }

    /// The two values flannel writes, byte for byte (Go's json.Marshal of
    /// LeaseAttrs, checked against flannel's own code).
    #[test]
    fn values_are_flannel_s_bytes() {
        let mut a = Attrs {
            public_ip: Some("192.168.64.3".parse().unwrap()),
            public_ipv6: None,
            backend_type: "vxlan".into(),
            backend_data: Some(r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#.into()),
            backend_v6_data: None,
        };
        assert_eq!(
            a.encode(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
        assert_eq!(Attrs::decode(&a.encode()).unwrap(), a);
        a.public_ipv6 = Some("fd00::3".parse().unwrap());
        a.backend_v6_data = Some(r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}"#.into());
        assert_eq!(
            a.encode(),
            r#"{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"},"BackendV6Data":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:45"}}"#
        );
        assert_eq!(
            Attrs::default().encode(),
            r#"{"PublicIP":"0.0.0.0","PublicIPv6":null}"#
        );
        // Go compacts raw data and escapes <, > and & in it.
        let odd = Attrs {
            public_ip: Some("10.0.0.1".parse().unwrap()),
            backend_type: "a<b".into(),
            backend_data: Some("{ \"x\" : \"<&>\" }".into()),
            ..Attrs::default()
        };
        assert_eq!(
            odd.encode(),
            r#"{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"a\u003cb","BackendData":{"x":"\u003c\u0026\u003e"}}"#
        );
    }

    #[test]
    fn reading_is_go_s_and_errors_name_the_field() {
        let a = Attrs::decode(
            r#"{"publicip":"10.0.0.1","backendtype":"host-gw","BackendData":null,"Extra":1}"#,
        )
        .unwrap();
        assert_eq!(a.public_ip, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(a.backend_type, "host-gw");
        assert_eq!(a.backend_data.as_deref(), Some("null"));
        for (text, want) in [
            (r#"{"PublicIPv6":null}"#, "PublicIP: missing"),
            (
                r#"{"PublicIP":""}"#,
                "PublicIP: \"\" is not an IPv4 address",
            ),
            (r#"{"PublicIP":7}"#, "PublicIP: 7 is not a string"),
            (
                r#"{"PublicIP":"10.0.0.1","PublicIPv6":"10.0.0.1"}"#,
                "PublicIPv6: \"10.0.0.1\" is not an IPv6 address",
            ),
            ("[]", "not a JSON object"),
        ] {
            assert_eq!(Attrs::decode(text).unwrap_err(), want, "{text}");
        }
    }
}
