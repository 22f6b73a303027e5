//! `net-conf.json`, flannel's network configuration, read the way flanneld
//! reads it: keys are matched case-insensitively (Go's encoding/json) and
//! unknown keys are ignored. The file is parsed into raw values, then
//! validated into a [`NetConfig`] with every default computed; any problem is
//! an error that names the field and the value.
//!
//! With the Kubernetes subnet manager each node's subnet is its podCIDR, so
//! `SubnetLen`, `SubnetMin` and `SubnetMax` are type-checked but otherwise
//! unused, as in flanneld's kube mode; the etcd subnet manager allocates
//! from [`FamilyConfig::subnet_range`].

use std::net::IpAddr;
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
    /// `SubnetLen`, `SubnetMin`, `SubnetMax` (or the IPv6 ones) as given:
    /// only a subnet manager that allocates (etcd) uses them, through
    /// [`FamilyConfig::subnet_range`].
    pub subnet_len: Option<u8>,
    pub subnet_min: Option<IpAddr>,
    pub subnet_max: Option<IpAddr>,
}

/// The subnets a node may be given out of one family's Network: flannel's
/// `CheckNetworkConfig`, its defaults included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetRange {
    pub len: u8,
    /// The first and the last subnet's network address.
    pub min: IpAddr,
    pub max: IpAddr,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v6: bool, v: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(v.into())
    } else {
        IpAddr::V4(u32::try_from(v).unwrap_or(u32::MAX).into())
    }
}

impl FamilyConfig {
    /// The subnet range with flannel's defaults: SubnetLen /24 for a
    /// Network of /22 or wider, else two bits more than the Network (IPv6:
    /// /64 for /62 or wider); SubnetMin the Network's second subnet,
    /// SubnetMax its last. Errors name the field, in flannel's words.
    pub fn subnet_range(&self) -> Result<SubnetRange, ConfigError> {
        let v6 = self.network.is_ipv6();
        let bits: u8 = if v6 { 128 } else { 32 };
        let pre = if v6 { "IPv6" } else { "" };
        let net_name = if v6 { "IPv6Network" } else { "Network" };
        let prefix = self.network.prefix();
        let bad = |field: String, value: String, reason: String| ConfigError::Field {
            field,
            value,
            reason,
        };
        let len = match self.subnet_len {
            Some(l) if l > bits - 2 => {
                return Err(bad(
                    format!("{pre}SubnetLen"),
                    l.to_string(),
                    format!("SubnetLen must be less than /{}", bits - 1),
                ));
            }
            Some(l) if u16::from(l) < u16::from(prefix) + 2 => {
                return Err(bad(
                    format!("{pre}SubnetLen"),
                    l.to_string(),
                    format!(
                        "network must be able to accommodate at least four subnets (the {net_name} is /{prefix})"
                    ),
                ));
            }
            Some(l) => l,
            None if prefix > bits - 4 => {
                return Err(bad(
                    net_name.into(),
                    format!("\"{}\"", self.network),
                    format!(
                        "{net_name} is too small. Minimum useful network prefix is /{}",
                        bits - 4
                    ),
                ));
            }
            None if v6 && prefix <= 62 => 64,
            None if !v6 && prefix <= 22 => 24,
            None => prefix + 2,
        };
        let size: u128 = 1 << (bits - len);
        let base = to_u128(self.network.network());
        let end = base + (1u128 << (bits - prefix)) - 1;
        let check = |name: &str, given: Option<IpAddr>, default: u128| {
            let field = format!("{pre}{name}");
            let Some(ip) = given else {
                return Ok(default);
            };
            let v = to_u128(ip);
            if ip.is_ipv6() != v6 || v < base || v > end {
                return Err(bad(
                    field.clone(),
                    format!("\"{ip}\""),
                    format!("{field} is not in the range of the {net_name}"),
                ));
            }
            if !v.is_multiple_of(size) {
                return Err(bad(
                    field.clone(),
                    format!("\"{ip}\""),
                    format!("{field} is not on a SubnetLen boundary (/{len})"),
                ));
            }
            Ok(v)
        };
        let min = check("SubnetMin", self.subnet_min, base + size)?;
        let max = check("SubnetMax", self.subnet_max, end + 1 - size)?;
        if min > max {
            return Err(bad(
                format!("{pre}SubnetMin"),
                format!("\"{}\"", from_u128(v6, min)),
                format!(
                    "{pre}SubnetMin is above {pre}SubnetMax ({})",
                    from_u128(v6, max)
                ),
            ));
        }
        Ok(SubnetRange {
            len,
            min: from_u128(v6, min),
            max: from_u128(v6, max),
        })
    }
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
        let mut ipv4 = family(
            enable_v4,
            network,
            "Network",
            "EnableIPv4 is true (the default)",
            true,
        )?;
        let mut ipv6 = family(
            enable_v6,
            network6,
            "IPv6Network",
            "EnableIPv6 is true",
            false,
        )?;
        // Checked for their types here; a Kubernetes node's subnet is its
        // podCIDR, so only etcd's allocator uses them (subnet_range).
        for (fam, pre, v6) in [(&mut ipv4, "", false), (&mut ipv6, "IPv6", true)] {
            let len = field::<u8>(&top, "", &format!("{pre}SubnetLen"))?.filter(|l| *l > 0);
            let min = address(&top, &format!("{pre}SubnetMin"), v6)?;
            let max = address(&top, &format!("{pre}SubnetMax"), v6)?;
            if let Some(f) = fam {
                f.subnet_len = len;
                f.subnet_min = min;
                f.subnet_max = max;
            }
        }
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
    Ok(Some(FamilyConfig {
        network,
        subnet_len: None,
        subnet_min: None,
        subnet_max: None,
    }))
}

/// Field `key` as an address of the family (`v6`); None when absent.
fn address(obj: &Map<String, Value>, key: &str, v6: bool) -> Result<Option<IpAddr>, ConfigError> {
    let Some(text) = field::<String>(obj, "", key)? else {
        return Ok(None);
    };
    match text.parse::<IpAddr>() {
        Ok(ip) if ip.is_ipv6() == v6 => Ok(Some(ip)),
        _ => Err(ConfigError::Field {
            field: key.into(),
            value: format!("\"{text}\""),
            reason: format!("expected an IPv{} address", if v6 { 6 } else { 4 }),
        }),
    }
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

    fn fam(net: &str) -> FamilyConfig {
        FamilyConfig {
            network: net.parse().unwrap(),
            subnet_len: None,
            subnet_min: None,
            subnet_max: None,
        }
    }

    fn v4(net: &str) -> Option<FamilyConfig> {
        Some(fam(net))
    }

    /// flannel's CheckNetworkConfig: defaults, and errors in its words.
    #[test]
    fn subnet_ranges_as_flannel_computes_and_checks_them() {
        let range = |text: &str, v6: bool| {
            let c = NetConfig::parse(text).unwrap();
            let f = if v6 { c.ipv6 } else { c.ipv4 }.unwrap();
            f.subnet_range()
        };
        let r = |len, min: &str, max: &str| SubnetRange {
            len,
            min: min.parse().unwrap(),
            max: max.parse().unwrap(),
        };
        for (text, want) in [
            (
                r#"{"Network":"10.244.0.0/16"}"#,
                r(24, "10.244.1.0", "10.244.255.0"),
            ),
            (
                r#"{"Network":"10.5.0.0/22"}"#,
                r(24, "10.5.1.0", "10.5.3.0"),
            ),
            (
                r#"{"Network":"10.5.0.0/24"}"#,
                r(26, "10.5.0.64", "10.5.0.192"),
            ),
            (
                r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.240.0"}"#,
                r(20, "10.10.0.0", "10.99.240.0"),
            ),
        ] {
            assert_eq!(range(text, false).unwrap(), want, "{text}");
        }
        let v6 =
            r#"{"EnableIPv6":true,"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56"}"#;
        assert_eq!(
            range(v6, true).unwrap(),
            r(64, "fd00:10:244:1::", "fd00:10:244:ff::")
        );
        for (text, field, reason) in [
            (
                r#"{"Network":"10.244.0.0/16","SubnetLen":31}"#,
                "SubnetLen",
                "SubnetLen must be less than /31",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetLen":17}"#,
                "SubnetLen",
                "network must be able to accommodate at least four subnets (the Network is /16)",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0"}"#,
                "SubnetMin",
                "SubnetMin is not in the range of the Network",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMax":"10.244.3.128"}"#,
                "SubnetMax",
                "SubnetMax is not on a SubnetLen boundary (/24)",
            ),
            (
                r#"{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.3.0"}"#,
                "SubnetMin",
                "SubnetMin is above SubnetMax (10.244.3.0)",
            ),
            (
                r#"{"EnableIPv6":true,"Network":"10.244.0.0/16","IPv6Network":"fd00::/56","IPv6SubnetLen":127}"#,
                "IPv6SubnetLen",
                "SubnetLen must be less than /127",
            ),
        ] {
            let v6 = field.starts_with("IPv6");
            match range(text, v6) {
                Err(ConfigError::Field {
                    field: f,
                    reason: why,
                    ..
                }) => {
                    assert_eq!((f.as_str(), why.as_str()), (field, reason), "{text}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
        // A SubnetMin of the other family is refused when the file is read.
        assert!(matches!(
            NetConfig::parse(r#"{"Network":"10.244.0.0/16","SubnetMin":"fd00::"}"#),
            Err(ConfigError::Field { field, .. }) if field == "SubnetMin"
        ));
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
                    ipv6: Some(fam("fd00:10:244::/56")),
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
