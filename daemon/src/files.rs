//! Files weftd writes on the node: `subnet.env` in flannel's exact format,
//! always atomically (temp file, fsync, rename, fsync of the directory), so a
//! CNI plugin never reads half a file.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes `bytes` to `path` atomically with mode `mode`, creating the parent
/// directory (0755) if needed. Returns whether the content changed.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, FileError> {
    let written = match path.to_str() {
        Some(p) => weft_cni::sys::write_atomic(p, bytes, mode, 0o755)
            .map_err(|e| std::io::Error::from_raw_os_error(e.0)),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the path is not UTF-8",
        )),
    };
    written.map_err(|source| FileError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The content of flannel's `subnet.env`.
#[derive(Debug, Clone, PartialEq)]
pub struct SubnetEnv {
    /// (Network, this node's podCIDR) per enabled family.
    pub ipv4: Option<(IpNetwork, IpNetwork)>,
    pub ipv6: Option<(IpNetwork, IpNetwork)>,
    pub mtu: u32,
    pub ip_masq: bool,
}

/// The first host address of `subnet`, with the subnet's prefix
/// (`10.244.1.0/24` → `10.244.1.1/24`), as FLANNEL_SUBNET carries it.
pub fn first_host(subnet: IpNetwork) -> String {
    let ip = match subnet.network() {
        IpAddr::V4(a) => IpAddr::from(u32::from(a).wrapping_add(1).to_be_bytes()),
        IpAddr::V6(a) => IpAddr::from(u128::from(a).wrapping_add(1).to_be_bytes()),
    };
    format!("{ip}/{}", subnet.prefix())
}

/// The subnets an existing `subnet.env` names (FLANNEL_SUBNET,
/// FLANNEL_IPV6_SUBNET, masked to their networks), as flanneld reads them
/// to ask for the same subnets again; none for a missing file or a value
/// that is not one CIDR.
pub fn previous_subnets(path: &Path) -> crate::family::PerFamily<Option<IpNetwork>> {
    subnets_in(&std::fs::read_to_string(path).unwrap_or_default())
}

/// The subnets a `subnet.env` text names, as [`previous_subnets`] reads them.
pub fn subnets_in(text: &str) -> crate::family::PerFamily<Option<IpNetwork>> {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.trim().parse::<IpNetwork>().ok())
            .and_then(|n| IpNetwork::new(n.network(), n.prefix()).ok())
    };
    crate::family::PerFamily {
        v4: get("FLANNEL_SUBNET").filter(IpNetwork::is_ipv4),
        v6: get("FLANNEL_IPV6_SUBNET").filter(IpNetwork::is_ipv6),
    }
}

impl SubnetEnv {
    /// The file's text: keys in flannel's order, one `KEY=VALUE` per line.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if let Some((net, sub)) = self.ipv4 {
            s.push_str(&format!("FLANNEL_NETWORK={net}\n"));
            s.push_str(&format!("FLANNEL_SUBNET={}\n", first_host(sub)));
        }
        if let Some((net, sub)) = self.ipv6 {
            s.push_str(&format!("FLANNEL_IPV6_NETWORK={net}\n"));
            s.push_str(&format!("FLANNEL_IPV6_SUBNET={}\n", first_host(sub)));
        }
        s.push_str(&format!("FLANNEL_MTU={}\n", self.mtu));
        s.push_str(&format!("FLANNEL_IPMASQ={}\n", self.ip_masq));
        s
    }

    /// Writes the file atomically (mode 0644); whether it changed.
    pub fn write(&self, path: &Path) -> Result<bool, FileError> {
        write_atomic(path, self.render().as_bytes(), 0o644)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn previous_subnets_come_back_from_a_written_file() {
        let dir = std::env::temp_dir().join(format!("weft-prev-{}", std::process::id()));
        let path = dir.join("subnet.env");
        assert_eq!(previous_subnets(&path), Default::default(), "no file");
        SubnetEnv {
            ipv4: Some((net("10.244.0.0/16"), net("10.244.7.0/24"))),
            ipv6: Some((net("fd00:10:244::/56"), net("fd00:10:244:7::/64"))),
            mtu: 1450,
            ip_masq: true,
        }
        .write(&path)
        .unwrap();
        let p = previous_subnets(&path);
        assert_eq!(p.v4, Some(net("10.244.7.0/24")));
        assert_eq!(p.v6, Some(net("fd00:10:244:7::/64")));
        std::fs::write(&path, "FLANNEL_SUBNET=10.244.7.1/24,10.244.8.1/24\n").unwrap();
        assert_eq!(previous_subnets(&path).v4, None, "not one CIDR");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn subnet_env_has_flannels_keys_in_flannels_order() {
        let env = SubnetEnv {
            ipv4: Some((net("10.244.0.0/16"), net("10.244.1.0/24"))),
            ipv6: Some((net("fd00:10:244::/56"), net("fd00:10:244:1::/64"))),
            mtu: 1450,
            ip_masq: true,
        };
        assert_eq!(
            env.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n\
             FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
        );
        let v4only = SubnetEnv {
            ipv6: None,
            ip_masq: false,
            ..env
        };
        assert_eq!(
            v4only.render(),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
    }

    #[test]
    fn atomic_write_creates_the_directory_sets_the_mode_and_reports_change() {
        let dir = std::env::temp_dir().join(format!("weftd-files-{}", std::process::id()));
        let path = dir.join("flannel/subnet.env");
        assert!(write_atomic(&path, b"A=1\n", 0o644).unwrap());
        assert!(
            !write_atomic(&path, b"A=1\n", 0o644).unwrap(),
            "same content: no write"
        );
        assert!(write_atomic(&path, b"A=2\n", 0o644).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), b"A=2\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("subnet.env")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
