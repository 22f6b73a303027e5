//! `weftd install-cni`: what the DaemonSet's init container does on every
//! node: copy the `weft` plugin into the CNI bin directory and write
//! `10-weft.conflist`, each atomically and only when the content differs.
//!
//! The default conflist is flannel's (weft, then portmap), with `cniVersion`
//! the highest version that weft and the installed delegates (bridge,
//! host-local, portmap) all speak: Debian's plugins stop at 1.0.0, and a
//! list newer than its plugins fails every pod. A conflist given as a file
//! wins over the default, as it is.

use std::path::{Path, PathBuf};

use crate::files::{FileError, write_atomic};

/// The delegates the default conflist relies on.
const DELEGATES: [&str; 3] = ["bridge", "host-local", "portmap"];

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("reading the plugin binary {path}")]
    ReadPlugin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the CNI config {path}")]
    ReadConf {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the CNI config {path} is not a conflist: {why}")]
    BadConf { path: PathBuf, why: String },
    #[error("delegate plugin {name} is not in any of {dirs:?}: install the standard CNI plugins")]
    NoDelegate {
        name: &'static str,
        dirs: Vec<PathBuf>,
    },
    #[error("no CNI version is spoken by weft and every delegate ({found})")]
    NoCommonVersion { found: String },
    #[error(transparent)]
    Write(#[from] FileError),
}

/// What to install where.
#[derive(Debug, Clone)]
pub struct Install {
    pub bin_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// A conflist to install instead of the default.
    pub conf_file: Option<PathBuf>,
    /// The `weft` binary to copy.
    pub plugin: PathBuf,
    /// Where to look for the delegates (besides `bin_dir`).
    pub delegate_dirs: Vec<PathBuf>,
}

/// What changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Installed {
    pub plugin_written: bool,
    pub conflist_written: bool,
    pub cni_version: Option<String>,
}

fn version_key(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// The highest version in every list of `lists` and in weft's that can
/// carry a conflist (conflists exist from 0.3.0 on).
pub fn highest_common(lists: &[Vec<String>]) -> Option<String> {
    weft_cni::plugin::SUPPORTED_VERSIONS
        .iter()
        .filter(|v| version_key(v) >= vec![0, 3, 0])
        .filter(|v| lists.iter().all(|l| l.iter().any(|x| x == *v)))
        .max_by_key(|v| version_key(v))
        .map(|v| v.to_string())
}

/// flannel's conflist, with weft as the first plugin.
pub fn default_conflist(cni_version: &str) -> String {
    let v = serde_json::json!({
        "name": "cbr0",
        "cniVersion": cni_version,
        "plugins": [
            {"type": "weft", "delegate": {"hairpinMode": true, "isDefaultGateway": true}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    });
    serde_json::to_string_pretty(&v).unwrap_or_default() + "\n"
}

impl Install {
    /// Copies the plugin and writes the conflist (`weftd install-cni`).
    pub fn run(&self) -> Result<Installed, InstallError> {
        let plugin_written = self.install_plugin()?;
        let (text, cni_version) = self.conflist()?;
        let conflist_written = write_conflist(&self.conf_dir, &text)?;
        Ok(Installed {
            plugin_written,
            conflist_written,
            cni_version,
        })
    }

    /// Copies the `weft` plugin into the bin directory; whether it wrote.
    pub fn install_plugin(&self) -> Result<bool, InstallError> {
        let bytes = std::fs::read(&self.plugin).map_err(|source| InstallError::ReadPlugin {
            path: self.plugin.clone(),
            source,
        })?;
        Ok(write_atomic(&self.bin_dir.join("weft"), &bytes, 0o755)?)
    }

    /// The conflist to install (the given file, or the default at the
    /// highest version every delegate speaks) and its cniVersion.
    pub fn conflist(&self) -> Result<(String, Option<String>), InstallError> {
        Ok(match &self.conf_file {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| InstallError::ReadConf {
                        path: path.clone(),
                        source,
                    })?;
                let bad = |why: String| InstallError::BadConf {
                    path: path.clone(),
                    why,
                };
                let v: serde_json::Value =
                    serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
                if !v["plugins"].is_array() || !v["name"].is_string() {
                    return Err(bad("it needs a \"name\" and a \"plugins\" array".into()));
                }
                (text, v["cniVersion"].as_str().map(String::from))
            }
            None => {
                let mut dirs = vec![self.bin_dir.clone()];
                dirs.extend(self.delegate_dirs.iter().cloned());
                let mut lists = Vec::new();
                let mut found = Vec::new();
                for name in DELEGATES {
                    let exe = dirs
                        .iter()
                        .map(|d| d.join(name))
                        .find(|p| p.is_file())
                        .ok_or_else(|| InstallError::NoDelegate {
                            name,
                            dirs: dirs.clone(),
                        })?;
                    let versions = weft_cni::exec::versions(
                        &exe.to_string_lossy(),
                        &weft_cni::sys::Environ::from_pairs(std::env::vars()),
                    );
                    found.push(format!("{name}: {}", versions.join(" ")));
                    lists.push(versions);
                }
                let v = highest_common(&lists).ok_or_else(|| InstallError::NoCommonVersion {
                    found: found.join("; "),
                })?;
                (default_conflist(&v), Some(v))
            }
        })
    }
}

/// Writes `10-weft.conflist` into `conf_dir` atomically, only when its
/// content differs; whether it wrote.
pub fn write_conflist(conf_dir: &Path, text: &str) -> Result<bool, FileError> {
    write_atomic(
        &conf_dir.join(crate::cleanup::CONFLIST),
        text.as_bytes(),
        0o644,
    )
}

/// flannel's `install-conf SRC DEST` (kube-flannel.yml's `install-cni`
/// init container runs `/opt/bin/install-conf`, which weft's image also
/// holds): SRC copied to DEST atomically, with SRC's mode.
pub fn install_conf(src: &std::path::Path, dest: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let read = |e: std::io::Error| format!("reading {}: {e}", src.display());
    let bytes = std::fs::read(src).map_err(read)?;
    let mode = std::fs::metadata(src).map_err(read)?.permissions().mode() & 0o7777;
    write_atomic(dest, &bytes, mode)
        .map(|_| ())
        .map_err(|e| crate::chain(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_conf_copies_atomically_with_the_source_s_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("weft-install-conf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("cni-conf.json");
        std::fs::write(&src, "{\"name\":\"cbr0\"}").unwrap();
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).unwrap();
        let dest = dir.join("net.d/10-flannel.conflist");
        install_conf(&src, &dest).unwrap();
        assert_eq!(
            std::fs::read_to_string(&dest).unwrap(),
            "{\"name\":\"cbr0\"}"
        );
        let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
        let missing = install_conf(&dir.join("nope"), &dest).unwrap_err();
        assert!(missing.starts_with("reading "), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn l(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_highest_version_everyone_speaks_is_chosen() {
        let debian = l(&["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]);
        let newer = l(&["0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
        assert_eq!(
            highest_common(&[debian.clone(), newer.clone()]).as_deref(),
            Some("1.0.0")
        );
        assert_eq!(
            highest_common(&[newer.clone(), newer]).as_deref(),
            Some("1.1.0")
        );
        assert_eq!(highest_common(&[debian, l(&["0.2.0"])]), None);
    }

    #[test]
    fn the_default_conflist_is_flannels_with_weft_first() {
        let v: serde_json::Value = serde_json::from_str(&default_conflist("1.0.0")).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["plugins"][0]["type"], "weft");
        assert_eq!(
            v["plugins"][0]["delegate"],
            serde_json::json!({"hairpinMode": true, "isDefaultGateway": true})
        );
        assert_eq!(
            v["plugins"][1],
            serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}})
        );
    }
}
