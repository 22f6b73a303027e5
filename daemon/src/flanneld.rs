//! flanneld's command line and environment, as a second spelling of weftd's.
//!
//! Run as `flanneld` (the image's `/opt/bin/flanneld` is weftd), weftd reads
//! its arguments the way flanneld v0.2x does: Go's `flag` package (`-flag`
//! or `--flag`, `-flag=value` or `-flag value`, booleans only as `-flag` or
//! `-flag=false`, integers in Go's notation, `-h`/`-help` for the usage, a
//! repeated `--iface` adding to the list), then `FLANNELD_<NAME>` for every
//! flag not on the command line (an empty variable counts as unset), then
//! flanneld's defaults. [`FLAGS`] is the whole table: each flag's type,
//! default and what it does in weft, the README's table included.
//!
//! Two things differ from flanneld on purpose, both on bad input: a
//! variable with a value its flag cannot take is an error naming the
//! variable (flanneld logs it and goes on with the rest unset), and an
//! argument that is not a flag is an error (Go's parser stops there and
//! flanneld silently drops it and every flag after it).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::agent::{DEFAULT_RESYNC_SECONDS, NodeRef, Options, SubnetManager};
use crate::iface::Selection;
use crate::lease::etcd::EtcdOptions;

/// A flag's value type (Go's `BoolVar`, `IntVar`, `StringVar`, and
/// flanneld's repeatable `flagSlice`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int,
    Str,
    List,
}

/// What a flag does in weft.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Acts as in flanneld, through the weft setting named.
    Acts(&'static str),
    /// Accepted and logged once as ignored, for the reason given.
    Ignored(&'static str),
}

/// One of flanneld's flags.
#[derive(Debug, Clone, Copy)]
pub struct Flag {
    pub name: &'static str,
    pub kind: Kind,
    /// flanneld's default, as flanneld prints it.
    pub default: &'static str,
    pub effect: Effect,
}

const fn flag(name: &'static str, kind: Kind, default: &'static str, effect: Effect) -> Flag {
    Flag {
        name,
        kind,
        default,
        effect,
    }
}

/// Every flag flanneld v0.2x defines, with glog's three it copies in.
pub const FLAGS: &[Flag] = &[
    flag(
        "etcd-endpoints",
        Kind::Str,
        "http://127.0.0.1:4001,http://127.0.0.1:2379",
        Effect::Acts("--etcd-endpoints (comma-separated), without --kube-subnet-mgr"),
    ),
    flag(
        "etcd-prefix",
        Kind::Str,
        "/coreos.com/network",
        Effect::Acts("--etcd-prefix"),
    ),
    flag(
        "etcd-keyfile",
        Kind::Str,
        "",
        Effect::Acts("--etcd-keyfile (TLS, with --etcd-certfile)"),
    ),
    flag(
        "etcd-certfile",
        Kind::Str,
        "",
        Effect::Acts("--etcd-certfile (TLS, with --etcd-keyfile)"),
    ),
    flag(
        "etcd-cafile",
        Kind::Str,
        "",
        Effect::Acts("--etcd-cafile: checks etcd's certificate"),
    ),
    flag(
        "etcd-username",
        Kind::Str,
        "",
        Effect::Acts("--etcd-username"),
    ),
    flag(
        "etcd-password",
        Kind::Str,
        "",
        Effect::Acts("--etcd-password"),
    ),
    flag(
        "iface",
        Kind::List,
        "",
        Effect::Acts("--iface: interface by name or address, repeatable, first found wins"),
    ),
    flag(
        "iface-regex",
        Kind::List,
        "",
        Effect::Acts("--iface-regex: after --iface, first match wins"),
    ),
    flag(
        "iface-can-reach",
        Kind::Str,
        "",
        Effect::Acts(
            "--iface-can-reach: the interface and source address the route to this IP takes",
        ),
    ),
    flag(
        "subnet-file",
        Kind::Str,
        "/run/flannel/subnet.env",
        Effect::Acts("--subnet-file"),
    ),
    flag(
        "public-ip",
        Kind::Str,
        "",
        Effect::Acts("--public-ip (the node-public-ip annotation still wins, as in flanneld)"),
    ),
    flag("public-ipv6", Kind::Str, "", Effect::Acts("--public-ipv6")),
    flag(
        "subnet-lease-renew-margin",
        Kind::Int,
        "60",
        Effect::Acts(
            "--subnet-lease-renew-margin: minutes before the etcd lease runs out (1 to 1439)",
        ),
    ),
    flag(
        "ip-masq",
        Kind::Bool,
        "false",
        Effect::Acts("--ip-masq: masquerade rules in weft's nftables table; FLANNEL_IPMASQ"),
    ),
    flag(
        "ip-masq-fully-random-disable",
        Kind::Bool,
        "false",
        Effect::Acts("--ip-masq-fully-random=false: masquerade without fully-random ports"),
    ),
    flag(
        "kube-subnet-mgr",
        Kind::Bool,
        "false",
        Effect::Acts("--subnet-manager kube (without it: etcd, as flanneld)"),
    ),
    flag(
        "kube-api-url",
        Kind::Str,
        "",
        Effect::Acts("--kube-api-url: the API server's URL, over the kubeconfig's"),
    ),
    flag(
        "kube-annotation-prefix",
        Kind::Str,
        "flannel.alpha.coreos.com",
        Effect::Acts("--kube-annotation-prefix"),
    ),
    flag(
        "kubeconfig-file",
        Kind::Str,
        "",
        Effect::Acts("--kubeconfig (neither it nor --kube-api-url: in-cluster)"),
    ),
    flag(
        "version",
        Kind::Bool,
        "false",
        Effect::Acts("prints weft's version to stderr and exits (command line only, as flanneld)"),
    ),
    flag(
        "healthz-ip",
        Kind::Str,
        "0.0.0.0",
        Effect::Acts("--healthz-addr's address (/healthz, /readyz and /metrics)"),
    ),
    flag(
        "healthz-port",
        Kind::Int,
        "0",
        Effect::Acts("--healthz-addr's port; 0: no health server (and so no /metrics)"),
    ),
    flag(
        "iptables-resync",
        Kind::Int,
        "5",
        Effect::Acts(
            "--rules-resync-seconds: how often weft's nftables table is read back and repaired",
        ),
    ),
    flag(
        "iptables-forward-rules",
        Kind::Bool,
        "true",
        Effect::Acts("--forward-rules: accept forwarded traffic from and to the Network"),
    ),
    flag(
        "ip-blackhole-route",
        Kind::Bool,
        "false",
        Effect::Acts(
            "--ip-blackhole-route: a blackhole route for the node's subnets, put back every --iptables-resync",
        ),
    ),
    flag(
        "net-config-path",
        Kind::Str,
        "/etc/kube-flannel/net-conf.json",
        Effect::Acts("--net-config-path"),
    ),
    flag(
        "set-node-network-unavailable",
        Kind::Bool,
        "true",
        Effect::Acts("--set-node-network-unavailable: NetworkUnavailable=False once ready"),
    ),
    flag(
        "v",
        Kind::Int,
        "0",
        Effect::Acts("log level: 0 info, 1..3 debug, 4 and more trace ($WEFTD_LOG wins)"),
    ),
    flag(
        "vmodule",
        Kind::Str,
        "",
        Effect::Ignored("glog's per-file levels: weft's are set with $WEFTD_LOG"),
    ),
    flag(
        "log_backtrace_at",
        Kind::Str,
        ":0",
        Effect::Ignored("glog's backtrace on a source line: no meaning in weft"),
    ),
];

/// A bad command line or variable, in Go's words where Go has them.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlagError {
    #[error("flag provided but not defined: -{0}")]
    Unknown(String),
    #[error("bad flag syntax: {0}")]
    Syntax(String),
    #[error("flag needs an argument: -{0}")]
    NeedsArgument(String),
    #[error("invalid value {value:?} for flag -{flag}: {reason}")]
    Value {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("invalid value {value:?} for {var} (flag -{flag}): {reason}")]
    EnvValue {
        var: String,
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("unexpected argument {0:?}: flanneld takes flags only")]
    Positional(String),
    #[error("-{flag}: {reason}")]
    Invalid { flag: &'static str, reason: String },
}

/// A flag's parsed value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Bool(bool),
    Int(i64),
    Str(String),
    List(Vec<String>),
}

/// Where a flag's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    CommandLine,
    Env(String),
}

/// What the arguments ask for.
#[derive(Debug)]
pub enum Command {
    Run(Flanneld),
    /// `-h` or `-help`: the usage, then exit 0 (Go's `flag.ErrHelp`).
    Help,
    /// `--version`.
    Version,
}

/// flanneld's flags as given (unset ones take [`FLAGS`]' defaults).
#[derive(Debug, Default)]
pub struct Flanneld {
    set: BTreeMap<&'static str, (Value, Source)>,
}

fn find(name: &str) -> Option<&'static Flag> {
    FLAGS.iter().find(|f| f.name == name)
}

/// Go's `strconv.ParseBool`.
fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `strconv.ParseInt(s, 0, 64)`: a sign, then `0x`, `0o`, `0b` or a
/// leading `0` (octal) for the base; underscores only after a base prefix.
fn parse_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_string(), true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string(), true)
    } else {
        (10, lower.clone(), false)
    };
    // Go: underscores only with a base prefix, one at a time, not last.
    if digits.contains('_') && (!prefixed || digits.ends_with('_') || digits.contains("__")) {
        return None;
    }
    let digits = digits.replace('_', "");
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from_str_radix(&digits, radix).ok()?;
    let v = if neg { -magnitude } else { magnitude };
    i64::try_from(v).ok()
}

fn convert(f: &Flag, raw: &str) -> Result<Value, &'static str> {
    match f.kind {
        Kind::Bool => parse_bool(raw).map(Value::Bool).ok_or("parse error"),
        Kind::Int => parse_int(raw)
            .map(Value::Int)
            .ok_or("parse error (an integer: 42, 0x2a, 052)"),
        Kind::Str => Ok(Value::Str(raw.to_string())),
        Kind::List => Ok(Value::List(vec![raw.to_string()])),
    }
}

impl Flanneld {
    fn put(&mut self, f: &'static Flag, v: Value, source: Source) {
        match (self.set.get_mut(f.name), v) {
            (Some((Value::List(have), _)), Value::List(more)) => have.extend(more),
            (_, v) => {
                self.set.insert(f.name, (v, source));
            }
        }
    }

    fn value(&self, name: &str) -> Value {
        if let Some((v, _)) = self.set.get(name) {
            return v.clone();
        }
        let f = find(name).unwrap_or_else(|| unreachable!("{name} is in FLAGS"));
        match f.kind {
            Kind::List => Value::List(Vec::new()),
            // The table's defaults are valid values of their kinds.
            _ => convert(f, f.default).unwrap_or(Value::Str(String::new())),
        }
    }

    fn bool(&self, name: &str) -> bool {
        matches!(self.value(name), Value::Bool(true))
    }

    fn int(&self, name: &str) -> i64 {
        match self.value(name) {
            Value::Int(i) => i,
            _ => 0,
        }
    }

    fn str(&self, name: &str) -> String {
        match self.value(name) {
            Value::Str(s) => s,
            _ => String::new(),
        }
    }

    fn list(&self, name: &str) -> Vec<String> {
        match self.value(name) {
            Value::List(l) => l,
            _ => Vec::new(),
        }
    }

    /// Whether a flag was given (on the command line or in its variable).
    pub fn given(&self, name: &str) -> Option<&Source> {
        self.set.get(name).map(|(_, s)| s)
    }

    /// The flags given that weft accepts without acting on, each with why.
    pub fn ignored(&self) -> Vec<(String, &'static str)> {
        FLAGS
            .iter()
            .filter_map(|f| match (f.effect, self.given(f.name)) {
                (Effect::Ignored(why), Some(src)) => Some((describe(f.name, src), why)),
                _ => None,
            })
            .collect()
    }

    /// glog's `-v`.
    pub fn verbosity(&self) -> i64 {
        self.int("v")
    }

    /// Whether leases are Kubernetes Nodes (`--kube-subnet-mgr`) rather
    /// than etcd keys.
    pub fn kube(&self) -> bool {
        self.bool("kube-subnet-mgr")
    }

    /// weftd's options, as flanneld would act on these flags.
    pub fn options(&self, node: NodeRef) -> Result<Options, FlagError> {
        let margin = self.int("subnet-lease-renew-margin");
        if !(1..24 * 60).contains(&margin) {
            return Err(FlagError::Invalid {
                flag: "subnet-lease-renew-margin",
                reason: format!("{margin} is out of range: minutes, 1 to 1439"),
            });
        }
        let ip = |name: &'static str| -> Result<Option<IpAddr>, FlagError> {
            match self.str(name).as_str() {
                "" => Ok(None),
                s => s.parse().map(Some).map_err(|_| FlagError::Invalid {
                    flag: name,
                    reason: format!("{s:?} is not an IP address"),
                }),
            }
        };
        let healthz_addr = match self.int("healthz-port") {
            0 => None,
            port => {
                let port = u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| {
                    FlagError::Invalid {
                        flag: "healthz-port",
                        reason: format!("{port} is not a port (1..65535, or 0 for none)"),
                    }
                })?;
                let host = self.str("healthz-ip");
                let host: IpAddr = host.parse().map_err(|_| FlagError::Invalid {
                    flag: "healthz-ip",
                    reason: format!("{host:?} is not an IP address"),
                })?;
                Some(SocketAddr::new(host, port))
            }
        };
        let resync = self.int("iptables-resync");
        let resync = u64::try_from(resync)
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| FlagError::Invalid {
                flag: "iptables-resync",
                reason: format!("{resync} is not a number of seconds above 0"),
            })?;
        let path = |name: &str| -> Option<PathBuf> {
            Some(self.str(name))
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
        };
        let opt = |name: &str| Some(self.str(name)).filter(|s| !s.is_empty());
        let subnet_manager = if self.kube() {
            SubnetManager::Kube
        } else {
            SubnetManager::Etcd(EtcdOptions {
                endpoints: self
                    .str("etcd-endpoints")
                    .split(',')
                    .map(str::to_string)
                    .collect(),
                prefix: self.str("etcd-prefix"),
                cafile: path("etcd-cafile"),
                certfile: path("etcd-certfile"),
                keyfile: path("etcd-keyfile"),
                username: opt("etcd-username"),
                password: opt("etcd-password"),
                renew_margin: Duration::from_secs(u64::try_from(margin).unwrap_or(60) * 60),
                ttl: crate::lease::etcd::DEFAULT_TTL,
            })
        };
        Ok(Options {
            subnet_manager,
            node,
            kubeconfig: path("kubeconfig-file"),
            api_url: Some(self.str("kube-api-url")).filter(|s| !s.is_empty()),
            kubeconfig_from_env: false,
            net_config_path: PathBuf::from(self.str("net-config-path")),
            subnet_file: PathBuf::from(self.str("subnet-file")),
            iface: Selection {
                ifaces: self.list("iface"),
                regexes: self.list("iface-regex"),
                can_reach: ip("iface-can-reach")?,
            },
            public_ip: ip("public-ip")?,
            public_ipv6: ip("public-ipv6")?,
            ip_masq: self.bool("ip-masq"),
            masq_fully_random: !self.bool("ip-masq-fully-random-disable"),
            forward_rules: self.bool("iptables-forward-rules"),
            set_network_unavailable: self.bool("set-node-network-unavailable"),
            blackhole_route: self.bool("ip-blackhole-route"),
            healthz_addr,
            annotation_prefix: self.str("kube-annotation-prefix"),
            rules_resync: Duration::from_secs(resync),
            // weft's own settings, at weft's defaults (flanneld has none).
            resync: Duration::from_secs(DEFAULT_RESYNC_SECONDS),
            allow_list: true,
            udp_offload: true,
            // flanneld's install-cni init container writes the conflist.
            conflist: None,
            plugin: None,
        })
    }
}

fn describe(name: &str, src: &Source) -> String {
    match src {
        Source::CommandLine => format!("--{name}"),
        Source::Env(var) => var.clone(),
    }
}

/// The variable flanneld reads for a flag: `FLANNELD_` and the name in
/// capitals, `-` as `_`.
pub fn env_name(flag: &str) -> String {
    format!("FLANNELD_{}", flag.to_ascii_uppercase().replace('-', "_"))
}

/// Reads `args` (without the program name) as Go's `flag` package does,
/// then the `FLANNELD_*` variables through `env` for the flags not given.
pub fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Command, FlagError> {
    let mut out = Flanneld::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg.len() < 2 || !arg.starts_with('-') {
            return Err(FlagError::Positional(arg.clone()));
        }
        let body = if let Some(b) = arg.strip_prefix("--") {
            if b.is_empty() {
                // "--" ends the flags.
                if let Some(extra) = args.get(i + 1) {
                    return Err(FlagError::Positional(extra.clone()));
                }
                break;
            }
            b
        } else {
            &arg[1..]
        };
        if body.starts_with('-') || body.starts_with('=') {
            return Err(FlagError::Syntax(arg.clone()));
        }
        i += 1;
        let (name, inline) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let Some(f) = find(name) else {
            if name == "h" || name == "help" {
                return Ok(Command::Help);
            }
            return Err(FlagError::Unknown(name.to_string()));
        };
        let raw = match (inline, f.kind) {
            (Some(v), _) => v.to_string(),
            (None, Kind::Bool) => "true".to_string(),
            (None, _) => {
                let v = args
                    .get(i)
                    .ok_or_else(|| FlagError::NeedsArgument(name.to_string()))?;
                i += 1;
                v.clone()
            }
        };
        let v = convert(f, &raw).map_err(|reason| FlagError::Value {
            flag: f.name,
            value: raw.clone(),
            reason,
        })?;
        out.put(f, v, Source::CommandLine);
    }
    // flanneld looks at --version before reading the environment.
    if out.bool("version") {
        return Ok(Command::Version);
    }
    for f in FLAGS {
        if out.set.contains_key(f.name) {
            continue;
        }
        let var = env_name(f.name);
        let Some(raw) = env(&var).filter(|v| !v.is_empty()) else {
            continue;
        };
        let v = convert(f, &raw).map_err(|reason| FlagError::EnvValue {
            var: var.clone(),
            flag: f.name,
            value: raw.clone(),
            reason,
        })?;
        out.put(f, v, Source::Env(var));
    }
    Ok(Command::Run(out))
}

/// flanneld's usage text, with what each flag does in weft.
pub fn usage() -> String {
    let mut s = String::from(
        "Usage: flanneld [OPTION]...\n(weftd, run as flanneld: flanneld's flags and FLANNELD_* variables)\n",
    );
    for f in FLAGS {
        let what = match f.effect {
            Effect::Acts(w) => w.to_string(),
            Effect::Ignored(why) => format!("ignored: {why}"),
        };
        let default = match (f.kind, f.default) {
            (_, "") => String::new(),
            (Kind::Str, d) => format!(" (default {d:?})"),
            (_, d) => format!(" (default {d})"),
        };
        s.push_str(&format!("  -{}\n    \t{what}{default}\n", f.name));
    }
    s
}

#[cfg(test)]
mod tests;
