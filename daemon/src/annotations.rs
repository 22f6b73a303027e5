//! flannel's node annotations, byte for byte: the names (built from
//! `--kube-annotation-prefix` as flanneld builds them) and the encoding of
//! `backend-data` (`{"VNI":1,"VtepMAC":"0a:1b:2c:3d:4e:5f"}`, compact, keys in
//! this order, lower-case MAC).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// flannel's default annotation prefix.
pub const DEFAULT_PREFIX: &str = "flannel.alpha.coreos.com";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AnnotationError {
    #[error("annotation prefix {prefix:?} has more than one '/'")]
    Prefix { prefix: String },
    #[error("{value:?} is not a MAC address (want six hex bytes separated by ':')")]
    Mac { value: String },
}

/// The full names of the annotations weft reads and writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Names {
    pub backend_type: String,
    pub backend_data: String,
    pub backend_v6_data: String,
    pub public_ip: String,
    pub public_ipv6: String,
    pub subnet_manager: String,
    pub public_ip_overwrite: String,
    pub public_ipv6_overwrite: String,
    pub node_public_ip: String,
    pub node_public_ipv6: String,
}

impl Names {
    /// Builds the names as flanneld does: "/" is appended to a prefix without
    /// one; a prefix with one gets "-" unless it already ends in "/" or "-".
    pub fn new(prefix: &str) -> Result<Names, AnnotationError> {
        let base = match prefix.matches('/').count() {
            0 => format!("{prefix}/"),
            1 if prefix.ends_with('/') || prefix.ends_with('-') => prefix.to_string(),
            1 => format!("{prefix}-"),
            _ => {
                return Err(AnnotationError::Prefix {
                    prefix: prefix.to_string(),
                });
            }
        };
        let n = |s: &str| format!("{base}{s}");
        Ok(Names {
            backend_type: n("backend-type"),
            backend_data: n("backend-data"),
            backend_v6_data: n("backend-v6-data"),
            public_ip: n("public-ip"),
            public_ipv6: n("public-ipv6"),
            subnet_manager: n("kube-subnet-manager"),
            public_ip_overwrite: n("public-ip-overwrite"),
            public_ipv6_overwrite: n("public-ipv6-overwrite"),
            node_public_ip: n("node-public-ip"),
            node_public_ipv6: n("node-public-ipv6"),
        })
    }
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for Mac {
    type Err = AnnotationError;
    fn from_str(s: &str) -> Result<Mac, AnnotationError> {
        let err = || AnnotationError::Mac {
            value: s.to_string(),
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Mac(out))
    }
}

impl Mac {
    /// Whether this is a unicast address (a VTEP MAC must be).
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }

    /// A random locally administered unicast address (as flannel makes one).
    pub fn random() -> std::io::Result<Mac> {
        use std::io::Read;
        let mut b = [0u8; 6];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
        b[0] = (b[0] & 0xfe) | 0x02;
        Ok(Mac(b))
    }
}

/// The vxlan `backend-data` annotation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VxlanData {
    #[serde(rename = "VNI")]
    pub vni: u32,
    #[serde(rename = "VtepMAC", with = "mac_string")]
    pub vtep_mac: Mac,
}

impl VxlanData {
    /// The annotation's value, exactly as flannel writes it.
    pub fn encode(&self) -> String {
        format!(r#"{{"VNI":{},"VtepMAC":"{}"}}"#, self.vni, self.vtep_mac)
    }

    /// Parses an annotation value, with an error that says what is wrong.
    pub fn decode(value: &str) -> Result<VxlanData, String> {
        serde_json::from_str(value).map_err(|e| e.to_string())
    }
}

mod mac_string {
    use super::Mac;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(mac: &Mac, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(mac)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_flannels_prefix_rules() {
        let n = Names::new(DEFAULT_PREFIX).unwrap();
        assert_eq!(n.backend_data, "flannel.alpha.coreos.com/backend-data");
        assert_eq!(
            n.subnet_manager,
            "flannel.alpha.coreos.com/kube-subnet-manager"
        );
        assert_eq!(
            n.public_ipv6_overwrite,
            "flannel.alpha.coreos.com/public-ipv6-overwrite"
        );
        assert_eq!(
            Names::new("example.com/weft").unwrap().public_ip,
            "example.com/weft-public-ip"
        );
        assert_eq!(
            Names::new("example.com/").unwrap().public_ip,
            "example.com/public-ip"
        );
        assert_eq!(
            Names::new("example.com/weft-").unwrap().public_ip,
            "example.com/weft-public-ip"
        );
        assert!(Names::new("a/b/c").is_err());
    }

    #[test]
    fn backend_data_is_encoded_byte_for_byte_like_flannel() {
        let d = VxlanData {
            vni: 1,
            vtep_mac: "0A:1b:2c:3d:4e:5f".parse().unwrap(),
        };
        assert_eq!(d.encode(), r#"{"VNI":1,"VtepMAC":"0a:1b:2c:3d:4e:5f"}"#);
        assert_eq!(serde_json::to_string(&d).unwrap(), d.encode());
        assert_eq!(VxlanData::decode(&d.encode()).unwrap(), d);
    }

    #[test]
    fn garbage_backend_data_says_what_is_wrong() {
        let cases = [
            ("", "EOF while parsing a value at line 1 column 0"),
            ("{\"VNI\":1}", "missing field `VtepMAC` at line 1 column 9"),
            (
                r#"{"VNI":1,"VtepMAC":"zz:1b:2c:3d:4e:5f"}"#,
                r#""zz:1b:2c:3d:4e:5f" is not a MAC address (want six hex bytes separated by ':') at line 1 column 39"#,
            ),
            (
                r#"{"VNI":-1,"VtepMAC":"0a:1b:2c:3d:4e:5f"}"#,
                "invalid value: integer `-1`, expected u32 at line 1 column 9",
            ),
        ];
        for (value, want) in cases {
            assert_eq!(VxlanData::decode(value), Err(want.to_string()), "{value}");
        }
    }

    #[test]
    fn macs_parse_strictly() {
        for bad in [
            "",
            "0a:1b:2c:3d:4e",
            "0a:1b:2c:3d:4e:5f:60",
            "0a-1b-2c-3d-4e-5f",
            "a:1b:2c:3d:4e:5f",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
        let m = Mac::random().unwrap();
        assert!(m.is_unicast() && m.0[0] & 2 == 2);
    }
}
