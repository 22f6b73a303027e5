//! The CNI environment and running the delegate plugin.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::error::{CniError, code};

/// The CNI_* variables of one invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct CniEnv {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub path: Vec<PathBuf>,
}

fn bad_env(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_ENV, msg)
}

/// Whether `id` is a valid container ID (it becomes a file name).
pub fn valid_container_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && id.len() <= 1024
}

impl CniEnv {
    /// Reads and checks the variables the command needs.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<CniEnv, CniError> {
        let command = var("CNI_COMMAND").ok_or_else(|| bad_env("CNI_COMMAND is not set"))?;
        let (needs_id, needs_netns, needs_ifname, needs_path) = match command.as_str() {
            "ADD" | "CHECK" => (true, true, true, true),
            "DEL" => (true, false, true, true),
            "GC" | "STATUS" => (false, false, false, command == "GC"),
            "VERSION" => (false, false, false, false),
            other => return Err(bad_env(format!("unknown CNI_COMMAND: {other}"))),
        };
        let get = |k: &str, needed: bool| -> Result<Option<String>, CniError> {
            match var(k).filter(|v| !v.is_empty()) {
                Some(v) => Ok(Some(v)),
                None if needed => Err(bad_env(format!("{k} is not set (required for {command})"))),
                None => Ok(None),
            }
        };
        let container_id = get("CNI_CONTAINERID", needs_id)?;
        if let Some(id) = &container_id
            && !valid_container_id(id)
        {
            return Err(bad_env(format!(
                "CNI_CONTAINERID {id:?} is not a valid container ID (letters, digits, '_', '.', '-')"
            )));
        }
        let netns = get("CNI_NETNS", needs_netns)?;
        let ifname = get("CNI_IFNAME", needs_ifname)?;
        let path = get("CNI_PATH", needs_path)?
            .map(|p| {
                std::env::split_paths(&p)
                    .filter(|d| !d.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            path,
        })
    }

    /// The delegate plugin's executable, from CNI_PATH.
    pub fn find(&self, plugin: &str) -> Result<PathBuf, CniError> {
        if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("plugin type {plugin:?} is not a plugin name"),
            ));
        }
        self.path
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                bad_env(format!(
                    "failed to find plugin {plugin:?} in CNI_PATH {:?}",
                    self.path
                ))
            })
    }
}

/// The spec versions a plugin executable reports (`CNI_COMMAND=VERSION`);
/// empty when it cannot tell.
pub fn versions(exe: &std::path::Path) -> Vec<String> {
    let out = Command::new(exe)
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let Ok(out) = out else { return Vec::new() };
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| {
            v.get("supportedVersions")?.as_array().map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Replaces this process with the delegate at `exe`, running `command` with
/// `config` on its stdin (a pipe filled beforehand; `config` must fit in a
/// pipe's buffer, 64 KiB) and this process's environment, stdout and
/// stderr: its result and exit status go straight to the runtime, and no
/// process of ours stays around waiting. Returns only if it could not.
pub fn replace_with(exe: &std::path::Path, command: &str, config: &[u8]) -> CniError {
    use std::os::unix::process::CommandExt;
    let fail = |e: std::io::Error| {
        CniError::new(code::IO, format!("running delegate {}: {e}", exe.display()))
    };
    let (reader, mut writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    if let Err(e) = writer.write_all(config) {
        return fail(e);
    }
    drop(writer);
    fail(
        Command::new(exe)
            .env("CNI_COMMAND", command)
            .stdin(reader)
            .exec(),
    )
}

/// Runs delegate `plugin` for `command` with `config` on stdin and the same
/// environment (CNI_COMMAND replaced); its stdout, or its error passed
/// through as it reported it.
pub fn delegate(
    env: &CniEnv,
    command: &str,
    plugin: &str,
    config: &[u8],
) -> Result<Vec<u8>, CniError> {
    let exe = env.find(plugin)?;
    let mut child = Command::new(&exe)
        .env("CNI_COMMAND", command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| {
            CniError::new(
                code::IO,
                format!("starting delegate {}: {e}", exe.display()),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A delegate that exits without reading is reported by its status.
        let _ = stdin.write_all(config);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(code::IO, format!("running delegate {}: {e}", exe.display())))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    // A CNI plugin reports its error as JSON on stdout: pass it through.
    let reported: Option<CniError> = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| {
            Some(
                CniError::new(
                    u32::try_from(v.get("code")?.as_u64()?).ok()?,
                    v.get("msg")?.as_str()?,
                )
                .details(v.get("details").and_then(|d| d.as_str()).unwrap_or("")),
            )
        });
    Err(reported.unwrap_or_else(|| {
        CniError::new(
            code::DELEGATE,
            format!("delegate {plugin} {command} failed ({})", out.status),
        )
        .details(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CniEnv::from_vars(|k| m.get(k).cloned())
    }

    #[test]
    fn each_command_requires_its_variables() {
        let full = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc123"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ];
        let e = env_of(&full).unwrap();
        assert_eq!(
            e.path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
        for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
            let partial: Vec<(&str, &str)> = full
                .iter()
                .copied()
                .filter(|(k, _)| *k != missing)
                .collect();
            let err = env_of(&partial).unwrap_err();
            assert_eq!(err.code, 4);
            assert_eq!(err.msg, format!("{missing} is not set (required for ADD)"));
        }
        assert!(env_of(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert!(env_of(&[("CNI_COMMAND", "STATUS")]).is_ok());
        assert_eq!(env_of(&[]).unwrap_err().msg, "CNI_COMMAND is not set");
        assert_eq!(
            env_of(&[("CNI_COMMAND", "FROB")]).unwrap_err().msg,
            "unknown CNI_COMMAND: FROB"
        );
        let del = env_of(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ])
        .unwrap();
        assert_eq!(del.netns, None, "DEL may come without a netns");
    }

    #[test]
    fn container_ids_cannot_escape_the_data_dir() {
        for bad in ["../etc/passwd", "a/b", "", ".hidden", "-x"] {
            assert!(!valid_container_id(bad), "{bad}");
        }
        for good in ["abc", "0f3a_b.c-d"] {
            assert!(valid_container_id(good), "{good}");
        }
        let e = env_of(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "../x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/x"),
        ]);
        assert_eq!(e.unwrap_err().code, 4);
    }
}
