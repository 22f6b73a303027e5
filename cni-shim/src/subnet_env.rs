//! Reading flannel's `subnet.env`, as flannel's CNI plugin does: `K=V`
//! lines; the network keys may hold comma lists; IPMASQ is true only when it
//! is exactly "true".

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::net::IpAddr;

use crate::error::{CniError, code};
use crate::sys::{self, Errno};

/// What the plugin needs from subnet.env.
#[derive(Debug, Clone, PartialEq)]
pub struct SubnetEnv {
    /// FLANNEL_NETWORK entries (deduplicated, in order).
    pub networks: Vec<String>,
    /// FLANNEL_SUBNET: this node's first pod address with prefix.
    pub subnet: Option<String>,
    pub ipv6_networks: Vec<String>,
    pub ipv6_subnet: Option<String>,
    pub mtu: u32,
    pub ip_masq: bool,
}

/// The network address of `ip/prefix` (`10.244.1.1/24` → `10.244.1.0/24`).
pub fn network_of(cidr: &str) -> Option<String> {
    let (ip, prefix) = cidr.split_once('/')?;
    let ip: IpAddr = ip.parse().ok()?;
    let prefix: u32 = prefix.parse().ok()?;
    let masked = match ip {
        IpAddr::V4(a) if prefix <= 32 => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - prefix)
            };
            IpAddr::from((u32::from(a) & mask).to_be_bytes())
        }
        IpAddr::V6(a) if prefix <= 128 => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - prefix)
            };
            IpAddr::from((u128::from(a) & mask).to_be_bytes())
        }
        _ => return None,
    };
    Some(format!("{masked}/{prefix}"))
}

impl SubnetEnv {
    /// Reads and checks the file. A missing file means weftd has not set
    /// this node up yet: "try again later" (11), so the runtime retries.
    pub fn load(path: &str) -> Result<SubnetEnv, CniError> {
        let text = match sys::read_file(path) {
            Ok(t) => String::from_utf8_lossy(&t).into_owned(),
            Err(Errno::ENOENT) => {
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    format!("weftd is not ready on this node: {path} does not exist yet"),
                )
                .details("weftd writes it once the node has its subnet; check the weftd pod's log on this node"));
            }
            Err(e) => {
                return Err(CniError::new(code::IO, format!("reading {path}: {e}")));
            }
        };
        SubnetEnv::parse(&text)
            .map_err(|msg| CniError::new(code::INVALID_CONFIG, format!("{path}: {msg}")))
    }

    /// Parses the text; the error names the offending line or key.
    pub fn parse(text: &str) -> Result<SubnetEnv, String> {
        let mut get = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("line {} is not KEY=VALUE: {line:?}", i + 1))?;
            get.insert(k.trim().to_string(), v.trim().to_string());
        }
        let list = |k: &str| -> Result<Vec<String>, String> {
            let mut out: Vec<String> = Vec::new();
            if let Some(v) = get.get(k) {
                for n in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let net = network_of(n).ok_or_else(|| format!("{k}: {n:?} is not a CIDR"))?;
                    if !out.contains(&net) {
                        out.push(net);
                    }
                }
            }
            Ok(out)
        };
        let cidr = |k: &str| -> Result<Option<String>, String> {
            match get.get(k) {
                None => Ok(None),
                Some(v) => network_of(v)
                    .map(|_| Some(v.clone()))
                    .ok_or_else(|| format!("{k}: {v:?} is not a CIDR")),
            }
        };
        let env = SubnetEnv {
            networks: list("FLANNEL_NETWORK")?,
            subnet: cidr("FLANNEL_SUBNET")?,
            ipv6_networks: list("FLANNEL_IPV6_NETWORK")?,
            ipv6_subnet: cidr("FLANNEL_IPV6_SUBNET")?,
            mtu: match get.get("FLANNEL_MTU") {
                Some(m) => m
                    .parse()
                    .map_err(|_| format!("FLANNEL_MTU: {m:?} is not a number"))?,
                None => return Err("is missing FLANNEL_MTU".into()),
            },
            ip_masq: match get.get("FLANNEL_IPMASQ") {
                Some(v) => v == "true",
                None => return Err("is missing FLANNEL_IPMASQ".into()),
            },
        };
        let v4 = !env.networks.is_empty() || env.subnet.is_some();
        let v6 = !env.ipv6_networks.is_empty() || env.ipv6_subnet.is_some();
        if !v4 && !v6 {
            return Err("is missing FLANNEL_NETWORK and FLANNEL_SUBNET".into());
        }
        for (fam, nets, sub, nk, sk) in [
            (
                v4,
                &env.networks,
                &env.subnet,
                "FLANNEL_NETWORK",
                "FLANNEL_SUBNET",
            ),
            (
                v6,
                &env.ipv6_networks,
                &env.ipv6_subnet,
                "FLANNEL_IPV6_NETWORK",
                "FLANNEL_IPV6_SUBNET",
            ),
        ] {
            if fam && nets.is_empty() {
                return Err(format!("is missing {nk}"));
            }
            if fam && sub.is_none() {
                return Err(format!("is missing {sk}"));
            }
        }
        Ok(env)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_weftd_and_flanneld_write() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        assert_eq!(env.networks, vec!["10.244.0.0/16"]);
        assert_eq!(env.subnet.as_deref(), Some("10.244.1.1/24"));
        assert_eq!((env.mtu, env.ip_masq), (1450, true));
        let dual = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16,10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
             FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=TRUE\n",
        )
        .unwrap();
        assert_eq!(dual.networks, vec!["10.244.0.0/16", "10.245.0.0/16"]);
        assert!(!dual.ip_masq, "only exactly \"true\" is true");
        assert_eq!(
            network_of("fd00:0:0:1::1/64").as_deref(),
            Some("fd00:0:0:1::/64")
        );
    }

    #[test]
    fn garbage_is_refused_with_the_line_or_key_named() {
        let cases = [
            ("garbage\n", "line 1 is not KEY=VALUE: \"garbage\""),
            (
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_IPMASQ=true\n",
                "is missing FLANNEL_MTU",
            ),
            (
                "FLANNEL_NETWORK=x\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
                "FLANNEL_NETWORK: \"x\" is not a CIDR",
            ),
            (
                "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
                "is missing FLANNEL_SUBNET",
            ),
            (
                "FLANNEL_MTU=big\nFLANNEL_IPMASQ=true\n",
                "FLANNEL_MTU: \"big\" is not a number",
            ),
            (
                "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
                "is missing FLANNEL_NETWORK and FLANNEL_SUBNET",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(SubnetEnv::parse(text), Err(want.to_string()), "{text:?}");
        }
    }
}
