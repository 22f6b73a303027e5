//! `net-conf.json`, flannel's network configuration, read the way flanneld
//! reads it: keys are matched case-insensitively (Go's encoding/json) and
//! unknown keys are ignored. The file is parsed into raw values, then
//! validated into a [`NetConfig`] with every default computed; any problem is
//! an error that names the field and the value.
//!
//! weft takes each node's subnet from its podCIDR (flannel's kube subnet
//! manager), so `SubnetLen`, `SubnetMin` and `SubnetMax` are type-checked but
//! otherwise unused, as in flanneld's kube mode.

use std::path::Path;

use ipnetwork::IpNetwork;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Default VXLAN network identifier (flannel's).
pub const DEFAULT_VNI: u32 = 1;
/// The kernel's and flannel's VXLAN UDP port.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// flannel's udp backend port.
pub const DEFAULT_UDP_PORT: u16 = 8285;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("net-conf.json is not a JSON object: {reason}")]
    NotJson { reason: String },
    #[error("net-conf.json: field {field}: {value} is not valid: {reason}")]
    Field {
        field: String,
        value: String,
        reason: String,
    },
    #[error("net-conf.json: field {field} is required when {because}")]
    Missing { field: String, because: String },
    #[error(
        "net-conf.json: field Backend.Type: {value} is not a backend weft knows (vxlan, udp, host-gw)"
    )]
    UnknownBackend { value: String },
    #[error("net-conf.json: neither IPv4 nor IPv6 is enabled")]
    NoFamily,
}

/// One address family's network.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyConfig {
    /// The whole pod network (masked: host bits cleared).
    pub network: IpNetwork,
}

/// VXLAN backend options.
#[derive(Debug, Clone, PartialEq)]
pub struct VxlanConfig {
    pub vni: u32,
    pub port: u16,
    /// The underlay MTU to assume instead of the external interface's.
    pub mtu: Option<u32>,
    pub direct_routing: bool,
    pub gbp: bool,
    pub learning: bool,
}

/// udp backend options.
#[derive(Debug, Clone, PartialEq)]
pub struct UdpConfig {
    pub port: u16,
}

/// The backend, with its options validated.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendConfig {
    Vxlan(VxlanConfig),
    Udp(UdpConfig),
    /// flannel's host-gw: no options.
    HostGw,
}

impl BackendConfig {
    /// The value of the `backend-type` annotation (flannel's udp sets none).
    pub fn type_name(&self) -> &'static str {
        match self {
            BackendConfig::Vxlan(_) => "vxlan",
            BackendConfig::Udp(_) => "udp",
            BackendConfig::HostGw => "host-gw",
        }
    }
}

/// A validated net-conf.json.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConfig {
    pub ipv4: Option<FamilyConfig>,
    pub ipv6: Option<FamilyConfig>,
    pub enable_nftables: bool,
    pub backend: BackendConfig,
}

impl NetConfig {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<NetConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        NetConfig::parse(&text)
    }

    /// Validates the text of a net-conf.json.
    pub fn parse(text: &str) -> Result<NetConfig, ConfigError> {
        let value: Value = serde_json::from_str(text).map_err(|e| ConfigError::NotJson {
            reason: e.to_string(),
        })?;
        let Value::Object(top) = value else {
            return Err(ConfigError::NotJson {
                reason: format!("found {}", weft_cni::json_kind(&value)),
            });
        };
        let enable_v4 = field::<bool>(&top, "", "EnableIPv4")?.unwrap_or(true);
        let enable_v6 = field::<bool>(&top, "", "EnableIPv6")?.unwrap_or(false);
        let enable_nftables = field::<bool>(&top, "", "EnableNFTables")?.unwrap_or(false);
        let network = cidr(&top, "Network")?;
        let network6 = cidr(&top, "IPv6Network")?;
        // Type-checked only: the node's subnet is its podCIDR.
        field::<u8>(&top, "", "SubnetLen")?;
        field::<u8>(&top, "", "IPv6SubnetLen")?;
        for k in ["SubnetMin", "SubnetMax", "IPv6SubnetMin", "IPv6SubnetMax"] {
            field::<String>(&top, "", k)?;
        }

        let ipv4 = family(
            enable_v4,
            network,
            "Network",
            "EnableIPv4 is true (the default)",
            true,
        )?;
        let ipv6 = family(
            enable_v6,
            network6,
            "IPv6Network",
            "EnableIPv6 is true",
            false,
        )?;
        if ipv4.is_none() && ipv6.is_none() {
            return Err(ConfigError::NoFamily);
        }

        let backend = match lookup(&top, "Backend") {
            None | Some(Value::Null) => BackendConfig::Udp(UdpConfig {
                port: DEFAULT_UDP_PORT,
            }),
            Some(Value::Object(b)) => backend(b)?,
            Some(other) => {
                return Err(ConfigError::Field {
                    field: "Backend".into(),
                    value: other.to_string(),
                    reason: "expected an object".into(),
                });
            }
        };
        Ok(NetConfig {
            ipv4,
            ipv6,
            enable_nftables,
            backend,
        })
    }

    /// The networks of the enabled families, IPv4 first.
    pub fn networks(&self) -> impl Iterator<Item = IpNetwork> + '_ {
        self.ipv4.iter().chain(self.ipv6.iter()).map(|f| f.network)
    }
}

fn family(
    enabled: bool,
    network: Option<IpNetwork>,
    name: &str,
    because: &str,
    want_v4: bool,
) -> Result<Option<FamilyConfig>, ConfigError> {
    if !enabled {
        return Ok(None);
    }
    let network = network.ok_or_else(|| ConfigError::Missing {
        field: name.into(),
        because: because.into(),
    })?;
    if network.is_ipv4() != want_v4 {
        return Err(ConfigError::Field {
            field: name.into(),
            value: format!("\"{network}\""),
            reason: format!("expected an IPv{} network", if want_v4 { 4 } else { 6 }),
        });
    }
    Ok(Some(FamilyConfig { network }))
}

fn backend(b: &Map<String, Value>) -> Result<BackendConfig, ConfigError> {
    let ty = field::<String>(b, "Backend.", "Type")?
        .unwrap_or_else(|| "udp".into())
        .to_ascii_lowercase();
    match ty.as_str() {
        "vxlan" => {
            let vni = field::<u32>(b, "Backend.", "VNI")?.unwrap_or(DEFAULT_VNI);
            if vni >= 1 << 24 {
                return Err(ConfigError::Field {
                    field: "Backend.VNI".into(),
                    value: vni.to_string(),
                    reason: "a VXLAN network identifier has 24 bits (at most 16777215)".into(),
                });
            }
            let port = match field::<u16>(b, "Backend.", "Port")? {
                None | Some(0) => DEFAULT_VXLAN_PORT,
                Some(p) => p,
            };
            let mtu = match field::<u32>(b, "Backend.", "MTU")? {
                None | Some(0) => None,
                Some(m) if m < 1280 => {
                    return Err(ConfigError::Field {
                        field: "Backend.MTU".into(),
                        value: m.to_string(),
                        reason: "an underlay MTU below 1280 leaves no room for VXLAN's 50 bytes and IPv6's minimum".into(),
                    });
                }
                Some(m) => Some(m),
            };
            Ok(BackendConfig::Vxlan(VxlanConfig {
                vni,
                port,
                mtu,
                direct_routing: field::<bool>(b, "Backend.", "DirectRouting")?.unwrap_or(false),
                gbp: field::<bool>(b, "Backend.", "GBP")?.unwrap_or(false),
                learning: field::<bool>(b, "Backend.", "Learning")?.unwrap_or(false),
            }))
        }
        "udp" => {
            let port = match field::<u16>(b, "Backend.", "Port")? {
                None | Some(0) => DEFAULT_UDP_PORT,
                Some(p) => p,
            };
            Ok(BackendConfig::Udp(UdpConfig { port }))
        }
        "host-gw" => Ok(BackendConfig::HostGw),
        _ => Err(ConfigError::UnknownBackend {
            value: format!("\"{ty}\""),
        }),
    }
}

/// Case-insensitive key lookup, as Go's encoding/json does it.
fn lookup<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// Field `key` as a `T`; `None` when absent or null.
fn field<T: DeserializeOwned>(
    obj: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<T>, ConfigError> {
    match lookup(obj, key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| ConfigError::Field {
                field: format!("{path}{key}"),
                value: v.to_string(),
                reason: e.to_string(),
            }),
    }
}

fn cidr(obj: &Map<String, Value>, key: &str) -> Result<Option<IpNetwork>, ConfigError> {
    let Some(text) = field::<String>(obj, "", key)? else {
        return Ok(None);
    };
    let bad = |reason: String| ConfigError::Field {
        field: key.into(),
        value: format!("\"{text}\""),
        reason,
    };
    let net: IpNetwork = text
        .parse()
        .map_err(|e: ipnetwork::IpNetworkError| bad(format!("not a CIDR ({e})")))?;
    // flannel masks the network when it parses it.
    let masked = IpNetwork::new(net.network(), net.prefix()).map_err(|e| bad(e.to_string()))?;
    let min_host_bits = if masked.is_ipv4() { 4 } else { 2 };
    let bits = if masked.is_ipv4() { 32 } else { 128 };
    if bits - masked.prefix() < min_host_bits {
        return Err(bad(format!(
            "a pod network needs a prefix of /{} or shorter",
            bits - min_host_bits
        )));
    }
    Ok(Some(masked))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vxlan(vni: u32, port: u16) -> BackendConfig {
        BackendConfig::Vxlan(VxlanConfig {
            vni,
            port,
            mtu: None,
            direct_routing: false,
            gbp: false,
            learning: false,
        })
    }

    fn v4(net: &str) -> Option<FamilyConfig> {
        Some(FamilyConfig {
            network: net.parse().unwrap(),
        })
    }

    #[test]
    fn good_files_validate_with_defaults_computed() {
        let cases: Vec<(&str, NetConfig)> = vec![
            (
                r#"{"Network":"10.244.0.0/16","EnableNFTables":false,"Backend":{"Type":"vxlan"}}"#,
                NetConfig {
                    ipv4: v4("10.244.0.0/16"),
                    ipv6: None,
                    enable_nftables: false,
                    backend: vxlan(1, 8472),
                },
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
                NetConfig {
                    ipv4: v4("10.244.0.0/16"),
                    ipv6: None,
                    enable_nftables: false,
                    backend: BackendConfig::HostGw,
                },
            ),
            (
                // Go's encoding/json: keys are case-insensitive, unknown keys ignored.
                r#"{"network":"10.244.0.0/16","backend":{"type":"VXLAN","vni":4096,"port":4789},"Extra":1}"#,
                NetConfig {
                    ipv4: v4("10.244.0.0/16"),
                    ipv6: None,
                    enable_nftables: false,
                    backend: vxlan(4096, 4789),
                },
            ),
            (
                // Host bits are masked away, as flannel does.
                r#"{"Network":"10.244.3.7/16","Backend":{"Type":"vxlan","Port":0}}"#,
                NetConfig {
                    ipv4: v4("10.244.0.0/16"),
                    ipv6: None,
                    enable_nftables: false,
                    backend: vxlan(1, 8472),
                },
            ),
            (
                // No Backend: flanneld's code defaults to udp.
                r#"{"Network":"10.244.0.0/16"}"#,
                NetConfig {
                    ipv4: v4("10.244.0.0/16"),
                    ipv6: None,
                    enable_nftables: false,
                    backend: BackendConfig::Udp(UdpConfig { port: 8285 }),
                },
            ),
            (
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan","MTU":9000,"GBP":true,"DirectRouting":true}}"#,
                NetConfig {
                    ipv4: None,
                    ipv6: Some(FamilyConfig {
                        network: "fd00:10:244::/56".parse().unwrap(),
                    }),
                    enable_nftables: false,
                    backend: BackendConfig::Vxlan(VxlanConfig {
                        vni: 1,
                        port: 8472,
                        mtu: Some(9000),
                        direct_routing: true,
                        gbp: true,
                        learning: false,
                    }),
                },
            ),
        ];
        for (text, want) in cases {
            assert_eq!(NetConfig::parse(text), Ok(want), "{text}");
        }
    }

    #[test]
    fn bad_files_are_refused_with_the_field_and_value_named() {
        let cases = [
            (
                "",
                "net-conf.json is not a JSON object: EOF while parsing a value at line 1 column 0",
            ),
            ("[1]", "net-conf.json is not a JSON object: found an array"),
            (
                r#"{"Network":"10.244.0.0/33","Backend":{"Type":"vxlan"}}"#,
                "net-conf.json: field Network: \"10.244.0.0/33\" is not valid: not a CIDR (invalid address: 10.244.0.0/33)",
            ),
            (
                r#"{"Network":"banana","Backend":{"Type":"vxlan"}}"#,
                "net-conf.json: field Network: \"banana\" is not valid: not a CIDR (invalid address: banana)",
            ),
            (
                r#"{"Network":10,"Backend":{"Type":"vxlan"}}"#,
                "net-conf.json: field Network: 10 is not valid: invalid type: integer `10`, expected a string",
            ),
            (
                r#"{"Network":"10.0.0.0/30","Backend":{"Type":"vxlan"}}"#,
                "net-conf.json: field Network: \"10.0.0.0/30\" is not valid: a pod network needs a prefix of /28 or shorter",
            ),
            (
                r#"{"Backend":{"Type":"vxlan"}}"#,
                "net-conf.json: field Network is required when EnableIPv4 is true (the default)",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true}"#,
                "net-conf.json: field IPv6Network is required when EnableIPv6 is true",
            ),
            (
                r#"{"Network":"fd00::/48"}"#,
                "net-conf.json: field Network: \"fd00::/48\" is not valid: expected an IPv4 network",
            ),
            (
                r#"{"EnableIPv4":false}"#,
                "net-conf.json: neither IPv4 nor IPv6 is enabled",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#,
                "net-conf.json: field Backend.Type: \"wireguard\" is not a backend weft knows (vxlan, udp, host-gw)",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
                "net-conf.json: field Backend.VNI: 16777216 is not valid: a VXLAN network identifier has 24 bits (at most 16777215)",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":"8472"}}"#,
                "net-conf.json: field Backend.Port: \"8472\" is not valid: invalid type: string \"8472\", expected u16",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#,
                "net-conf.json: field Backend.Port: 70000 is not valid: invalid value: integer `70000`, expected u16",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","MTU":500}}"#,
                "net-conf.json: field Backend.MTU: 500 is not valid: an underlay MTU below 1280 leaves no room for VXLAN's 50 bytes and IPv6's minimum",
            ),
            (
                r#"{"Network":"10.244.0.0/16","Backend":"vxlan"}"#,
                "net-conf.json: field Backend: \"vxlan\" is not valid: expected an object",
            ),
            (
                r#"{"Network":"10.244.0.0/16","EnableIPv4":"yes"}"#,
                "net-conf.json: field EnableIPv4: \"yes\" is not valid: invalid type: string \"yes\", expected a boolean",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetLen":"24"}"#,
                "net-conf.json: field SubnetLen: \"24\" is not valid: invalid type: string \"24\", expected u8",
            ),
        ];
        for (text, want) in cases {
            let got = NetConfig::parse(text).map_err(|e| e.to_string());
            assert_eq!(got, Err(want.to_string()), "{text}");
        }
    }
}
