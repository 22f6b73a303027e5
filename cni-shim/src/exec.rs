//! The CNI environment and running the delegate plugin.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::error::{CniError, code};
use crate::sys::{self, Environ};

/// The CNI_* variables of one invocation, and the whole environment the
/// delegate inherits.
#[derive(Debug, Clone, PartialEq)]
pub struct CniEnv {
    pub command: String,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub path: Vec<String>,
    pub vars: Environ,
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
    pub fn from_environ(vars: Environ) -> Result<CniEnv, CniError> {
        let var = |k: &str| vars.get(k).map(String::from);
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
                p.split(':')
                    .filter(|d| !d.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        Ok(CniEnv {
            command,
            container_id,
            netns,
            ifname,
            path,
            vars,
        })
    }

    /// The delegate plugin's executable, from CNI_PATH.
    pub fn find(&self, plugin: &str) -> Result<String, CniError> {
        if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
            return Err(CniError::new(
                code::INVALID_CONFIG,
                format!("plugin type {plugin:?} is not a plugin name"),
            ));
        }
        self.path
            .iter()
            .map(|d| format!("{}/{plugin}", d.trim_end_matches('/')))
            .find(|p| sys::is_file(p))
            .ok_or_else(|| {
                bad_env(format!(
                    "failed to find plugin {plugin:?} in CNI_PATH {:?}",
                    self.path
                ))
            })
    }
}

/// The spec versions a plugin executable reports (`CNI_COMMAND=VERSION`,
/// run in environment `env`); empty when it cannot tell.
pub fn versions(exe: &str, env: &Environ) -> Vec<String> {
    let Ok((_, out)) = sys::run(exe, &env.with("CNI_COMMAND", "VERSION"), b"") else {
        return Vec::new();
    };
    serde_json::from_slice::<serde_json::Value>(&out)
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
/// `config` on its stdin (a pipe filled beforehand) and this invocation's
/// environment, stdout and stderr: its result and exit status go straight
/// to the runtime, and no process of ours stays around waiting. Returns
/// only if it could not.
pub fn replace_with(env: &CniEnv, exe: &str, command: &str, config: &[u8]) -> CniError {
    let e = sys::exec_with_input(exe, &env.vars.with("CNI_COMMAND", command), config);
    CniError::new(code::IO, format!("running delegate {exe}: {e}"))
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
    let (status, stdout) = sys::run(&exe, &env.vars.with("CNI_COMMAND", command), config)
        .map_err(|e| CniError::new(code::IO, format!("running delegate {exe}: {e}")))?;
    if status.success() {
        return Ok(stdout);
    }
    // A CNI plugin reports its error as JSON on stdout: pass it through.
    let reported: Option<CniError> = serde_json::from_slice::<serde_json::Value>(&stdout)
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
            format!("delegate {plugin} {command} failed ({status})"),
        )
        .details(String::from_utf8_lossy(&stdout).trim().to_string())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> Result<CniEnv, CniError> {
        CniEnv::from_environ(Environ::from_pairs(pairs.iter().copied()))
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
        assert_eq!(e.path, vec!["/opt/cni/bin", "/usr/lib/cni"]);
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
