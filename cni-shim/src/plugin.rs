//! The commands: ADD, DEL, CHECK, STATUS, GC, VERSION.
//!
//! ADD saves the delegate config to `<dataDir>/<containerID>` BEFORE running
//! the delegate (and, for the versions every delegate speaks, then becomes
//! the delegate with exec: no second process); DEL replays those bytes and
//! removes the file only after the delegate's DEL succeeded (flannel's plugin since v1.2.0 removes it even
//! when the delegate failed, so the runtime's retry has nothing to replay and
//! the pod's IP and veth leak).

use alloc::collections::BTreeSet;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use alloc::{format, vec};

use serde_json::{Map, Value, json};

use crate::delegate;
use crate::error::{CniError, code};
use crate::exec::{self, CniEnv};
use crate::subnet_env::SubnetEnv;
use crate::sys::{self, Errno};

/// flannel's defaults, which are weft's.
pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";
/// Versions of the CNI spec this plugin speaks.
pub const SUPPORTED_VERSIONS: [&str; 6] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "0.2.0"];
/// Versions in which ADD hands over to the delegate with exec.
const DIRECT_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// The largest delegate config handed over through a pipe filled before
/// the exec (a pipe holds 64 KiB).
const DIRECT_MAX: usize = 16 * 1024;
/// The largest network config accepted on stdin.
pub const MAX_INPUT: usize = 1 << 20;

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

fn io_err(what: &str, path: &str, e: Errno) -> CniError {
    CniError::new(code::IO, format!("{what} {path}: {e}"))
}

/// Runs one invocation: the environment, and stdin's bytes. Returns what
/// to print on stdout on success.
pub fn run(env: &CniEnv, stdin: &[u8]) -> Result<Option<String>, CniError> {
    if env.command == "VERSION" {
        return Ok(Some(version_json()));
    }
    let Request {
        conf,
        version,
        opts,
    } = decode(stdin)?;
    let with_version = |e: CniError| CniError {
        cni_version: if version.is_empty() {
            e.cni_version.clone()
        } else {
            version.clone()
        },
        ..e
    };
    match env.command.as_str() {
        "ADD" => add(env, &conf, &opts, &version),
        "DEL" => del(env, &opts).map(|()| None),
        "CHECK" => check(env, &conf, &opts, &version).map(|()| None),
        "STATUS" => status(&opts)
            .and_then(|()| forward_if_new(env, &conf, "STATUS"))
            .map(|()| None),
        "GC" => gc(&conf, &opts)
            .and_then(|()| forward_if_new(env, &conf, "GC"))
            .map(|()| None),
        other => Err(CniError::new(
            code::INVALID_ENV,
            format!("unknown CNI_COMMAND: {other}"),
        )),
    }
    .map_err(with_version)
}

/// A network config from stdin, checked: what every command but VERSION
/// reads before it touches a file or runs a delegate.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub conf: Map<String, Value>,
    /// `cniVersion` (`0.1.0` when absent, as libcni reads it; may be empty).
    pub version: String,
    opts: Options,
}

impl Request {
    /// Where subnet.env is read from.
    pub fn subnet_file(&self) -> &str {
        &self.opts.subnet_file
    }

    /// Where delegate configs are saved.
    pub fn data_dir(&self) -> &str {
        &self.opts.data_dir
    }
}

/// Decodes and checks stdin's network config: a JSON object of at most
/// [`MAX_INPUT`] bytes, a valid `name`, a supported `cniVersion`, and the
/// plugin's own keys.
pub fn decode(stdin: &[u8]) -> Result<Request, CniError> {
    if stdin.len() > MAX_INPUT {
        return Err(invalid(format!(
            "the network config is larger than {MAX_INPUT} bytes"
        )));
    }
    let conf: Map<String, Value> = match serde_json::from_slice(stdin) {
        Ok(Value::Object(m)) => m,
        Ok(other) => {
            return Err(CniError::new(
                code::DECODE,
                format!(
                    "the network config must be a JSON object, not {}",
                    crate::json_kind(&other)
                ),
            ));
        }
        Err(e) => {
            return Err(CniError::new(
                code::DECODE,
                format!("the network config is not JSON: {e}"),
            ));
        }
    };
    network_name(&conf)?;
    let version = match conf.get("cniVersion") {
        None => "0.1.0".to_string(),
        Some(Value::String(v)) => v.clone(),
        Some(other) => {
            return Err(invalid(format!(
                "\"cniVersion\" must be a string, not {other}"
            )));
        }
    };
    if !version.is_empty() && !SUPPORTED_VERSIONS.contains(&version.as_str()) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "CNI version {version:?} is not supported (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let opts = Options::from(&conf)?;
    Ok(Request {
        conf,
        version,
        opts,
    })
}

/// The network's `name`, which the CNI spec (and libcni, before any plugin
/// runs) requires: an alphanumeric first, then alphanumerics, `_`, `.`, `-`.
fn network_name(conf: &Map<String, Value>) -> Result<&str, CniError> {
    let name = match conf.get("name") {
        Some(Value::String(n)) if !n.is_empty() => n.as_str(),
        None | Some(Value::Null) => return Err(invalid("the network config has no \"name\"")),
        Some(Value::String(_)) => return Err(invalid("the network config's \"name\" is empty")),
        Some(other) => {
            return Err(invalid(format!(
                "\"name\" must be a string, not {}",
                crate::json_kind(other)
            )));
        }
    };
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(invalid(format!(
            "invalid characters found in network name {name:?}: it must start with a letter or digit, followed by letters, digits, '_', '.' or '-'"
        )));
    }
    Ok(name)
}

/// `{"cniVersion":…,"supportedVersions":[…]}`
pub fn version_json() -> String {
    let mut v: Vec<&str> = SUPPORTED_VERSIONS.to_vec();
    v.sort();
    json!({"cniVersion": crate::CURRENT_VERSION, "supportedVersions": v}).to_string()
}

/// The plugin's own keys.
#[derive(Debug, Clone, PartialEq)]
struct Options {
    subnet_file: String,
    data_dir: String,
}

impl Options {
    fn from(conf: &Map<String, Value>) -> Result<Options, CniError> {
        let path = |k: &str, default: &str| -> Result<String, CniError> {
            match conf.get(k) {
                None | Some(Value::Null) => Ok(default.to_string()),
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(other) => Err(invalid(format!(
                    "\"{k}\" must be a non-empty string, not {other}"
                ))),
            }
        };
        Ok(Options {
            subnet_file: path("subnetFile", DEFAULT_SUBNET_FILE)?,
            data_dir: path("dataDir", DEFAULT_DATA_DIR)?,
        })
    }
}

fn container_id(env: &CniEnv) -> Result<&str, CniError> {
    env.container_id
        .as_deref()
        .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_CONTAINERID is not set"))
}

fn plugin_type(d: &Value) -> &str {
    d.get("type").and_then(Value::as_str).unwrap_or("bridge")
}

/// Saves `bytes` as `dir/name` atomically (dir 0700, file 0600, fsync).
fn save(dir: &str, name: &str, bytes: &[u8]) -> Result<(), CniError> {
    let path = in_dir(dir, name);
    sys::write_atomic(&path, bytes, 0o600, 0o700)
        .map(drop)
        .map_err(|e| io_err("saving", &path, e))
}

fn in_dir(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

fn parse_version(v: &str) -> (u32, u32, u32) {
    let mut p = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    (
        p.next().unwrap_or(0),
        p.next().unwrap_or(0),
        p.next().unwrap_or(0),
    )
}

/// The newest version both weft and the delegate speak that is older than
/// `requested`.
fn older_version(delegate_speaks: &[String], requested: &str) -> Option<String> {
    delegate_speaks
        .iter()
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .filter(|v| parse_version(v) < parse_version(requested))
        .max_by_key(|v| parse_version(v))
        .cloned()
}

fn add(
    env: &CniEnv,
    conf: &Map<String, Value>,
    opts: &Options,
    version: &str,
) -> Result<Option<String>, CniError> {
    let id = container_id(env)?;
    let subnet = SubnetEnv::load(&opts.subnet_file)?;
    let mut d = delegate::build(conf, &subnet)?;
    let ty = plugin_type(&d).to_string();
    // A delegate that is not there sets nothing up: fail before saving.
    let exe = env.find(&ty)?;
    let bytes = d.to_string();
    save(&opts.data_dir, id, bytes.as_bytes())?;
    // Every delegate speaks 0.3.0 to 1.0.0 and answers in the version it
    // was asked in: weft steps aside (exec), and the delegate's answer is
    // the runtime's, unchanged. Newer lists may need the delegate asked in
    // an older version and its answer converted, so weft waits for it.
    if DIRECT_VERSIONS.contains(&version) && bytes.len() <= DIRECT_MAX {
        return Err(exec::replace_with(env, &exe, "ADD", bytes.as_bytes()));
    }
    let out = match exec::delegate(env, "ADD", &ty, bytes.as_bytes()) {
        // A delegate older than the conflist (Debian's plugins stop at
        // 1.0.0) refuses before it touches anything: ask it in the newest
        // version it speaks, save that, and convert its result back.
        Err(e) if e.code == code::INCOMPATIBLE_VERSION => {
            let Some(older) = older_version(&exec::versions(&exe, &env.vars), version) else {
                return Err(e);
            };
            if let Some(m) = d.as_object_mut() {
                m.insert("cniVersion".into(), json!(older));
            }
            let bytes = d.to_string();
            save(&opts.data_dir, id, bytes.as_bytes())?;
            exec::delegate(env, "ADD", &ty, bytes.as_bytes())?
        }
        other => other?,
    };
    let text = String::from_utf8(out)
        .map_err(|_| CniError::new(code::DECODE, "the delegate's result is not UTF-8"))?;
    let text = text.trim();
    if version.is_empty() {
        return Ok(Some(text.to_string()));
    }
    crate::result::as_version(text, version).map(Some)
}

/// The saved config for `id`: ours, else one flannel's plugin saved before
/// the node switched to weft. `None` when there is none.
fn saved(opts: &Options, id: &str) -> Result<Option<(String, Vec<u8>)>, CniError> {
    let mut dirs = vec![opts.data_dir.as_str()];
    if opts.data_dir.trim_end_matches('/') != DEFAULT_DATA_DIR {
        dirs.push(DEFAULT_DATA_DIR);
    }
    for dir in dirs {
        let path = in_dir(dir, id);
        match sys::read_file(&path) {
            Ok(b) => return Ok(Some((path, b))),
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(io_err("reading", &path, e)),
        }
    }
    Ok(None)
}

fn del(env: &CniEnv, opts: &Options) -> Result<(), CniError> {
    let id = container_id(env)?;
    let Some((path, bytes)) = saved(opts, id)? else {
        // Nothing was set up for it (or it is torn down already).
        return Ok(());
    };
    let d: Value = serde_json::from_slice(&bytes).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("the saved config {path} is not JSON: {e}"),
        )
    })?;
    exec::delegate(env, "DEL", plugin_type(&d), &bytes)?;
    // Only now: had the delegate failed, the runtime's retry replays the file.
    match sys::remove_file(&path) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(io_err("removing", &path, e)),
    }
}

fn check(
    env: &CniEnv,
    conf: &Map<String, Value>,
    opts: &Options,
    version: &str,
) -> Result<(), CniError> {
    if matches!(version, "0.1.0" | "0.2.0" | "0.3.0" | "0.3.1") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("config version {version} does not allow CHECK"),
        ));
    }
    let id = container_id(env)?;
    let (path, bytes) = saved(opts, id)?.ok_or_else(|| {
        invalid(format!(
            "no saved config for container {id}: was it added through weft?"
        ))
    })?;
    let saved: Value = serde_json::from_slice(&bytes).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("the saved config {path} is not JSON: {e}"),
        )
    })?;
    let subnet = SubnetEnv::load(&opts.subnet_file)?;
    let now = delegate::build(conf, &subnet)?;
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            m.remove("runtimeConfig");
        }
        v
    };
    if strip(&saved) != strip(&now) {
        return Err(invalid(format!(
            "the saved config {path} differs from what {} now gives: the node's subnet changed since this pod was added",
            opts.subnet_file
        )));
    }
    let mut with_prev = saved.clone();
    if let (Some(m), Some(prev)) = (with_prev.as_object_mut(), conf.get("prevResult")) {
        m.insert("prevResult".into(), prev.clone());
    }
    exec::delegate(
        env,
        "CHECK",
        plugin_type(&saved),
        with_prev.to_string().as_bytes(),
    )
    .map(drop)
}

/// Hands STATUS or GC on to the delegate when it speaks CNI 1.1 (older
/// delegates, Debian's 1.1.1 plugins among them, know neither command and
/// would fail it). The delegate gets the user's `delegate` options with the
/// network's name and version and, for GC, the attachment lists.
fn forward_if_new(env: &CniEnv, conf: &Map<String, Value>, command: &str) -> Result<(), CniError> {
    let mut d = match conf.get("delegate") {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    let ty = d
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("bridge")
        .to_string();
    // Without CNI_PATH (allowed for STATUS) there is no delegate to ask.
    let Ok(exe) = env.find(&ty) else {
        return Ok(());
    };
    if !exec::versions(&exe, &env.vars).iter().any(|v| v == "1.1.0") {
        return Ok(());
    }
    d.insert("type".into(), json!(ty));
    for k in [
        "name",
        "cniVersion",
        "cni.dev/valid-attachments",
        "cni.dev/attachments",
    ] {
        if let Some(v) = conf.get(k) {
            d.insert(k.into(), v.clone());
        }
    }
    exec::delegate(env, command, &ty, Value::Object(d).to_string().as_bytes()).map(drop)
}

fn status(opts: &Options) -> Result<(), CniError> {
    SubnetEnv::load(&opts.subnet_file)
        .map(drop)
        .map_err(|e| CniError::new(code::NOT_READY, e.msg).details(e.details))
}

fn gc(conf: &Map<String, Value>, opts: &Options) -> Result<(), CniError> {
    let list = conf
        .get("cni.dev/valid-attachments")
        .or_else(|| conf.get("cni.dev/attachments"))
        .cloned()
        .unwrap_or(Value::Array(Vec::new()));
    let Value::Array(list) = list else {
        return Err(invalid("\"cni.dev/valid-attachments\" must be an array"));
    };
    let valid: BTreeSet<String> = list
        .iter()
        .filter_map(|a| {
            a.get("containerID")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .collect();
    let names = match sys::list_dir(&opts.data_dir) {
        Ok(names) => names,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(io_err("reading", &opts.data_dir, e)),
    };
    for name in names {
        if exec::valid_container_id(&name) && !valid.contains(&name) {
            let _ = sys::remove_file(&in_dir(&opts.data_dir, &name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_names_follow_the_spec() {
        let named = |n: Value| {
            network_name(
                &json!({ "name": n })
                    .as_object()
                    .cloned()
                    .unwrap_or_default(),
            )
            .map(String::from)
        };
        for good in ["cbr0", "a.b-c_d", "1net", "Net", "x"] {
            assert_eq!(named(json!(good)).as_deref(), Ok(good), "{good}");
        }
        for bad in ["", "-a", "_a", ".a", "a b", "a/b", "café", "a\n"] {
            let e = named(json!(bad)).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad:?}");
        }
        assert_eq!(named(json!(3)).unwrap_err().code, code::INVALID_CONFIG);
        assert!(network_name(&Map::new()).is_err());
    }
}
