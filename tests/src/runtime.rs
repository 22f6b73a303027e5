//! The lab's container runtime: creates pods the way containerd (through
//! libcni) does. Per pod a network namespace inside its node, then the
//! node's conflist (`/etc/cni/net.d/10-weft.conflist`) run in order for ADD
//! — each plugin given the list's `name` and `cniVersion` and the previous
//! plugin's result as `prevResult` — and the final result cached in
//! `/var/lib/cni/results`; DEL runs the list in reverse with the cached
//! result. Plugins run inside the node's namespaces with the node's
//! directories, found through `CNI_PATH=/opt/cni/bin:/usr/lib/cni`.

use std::io::Write;
use std::net::IpAddr;
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::lab::{Lab, LabError, save_state};

/// Where plugins are looked up on a lab node: weft's install, then Debian's.
pub const CNI_PATH: &str = "/opt/cni/bin:/usr/lib/cni";
const CONFLIST: &str = "/etc/cni/net.d/10-weft.conflist";

/// A pod as the lab records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    pub node: String,
    pub name: String,
    pub ip: IpAddr,
}

fn cni_err(pod: &str, step: String) -> LabError {
    LabError::State {
        path: format!("pod {pod}").into(),
        source: std::io::Error::other(step),
    }
}

fn version_at_least(v: &str, min: (u32, u32)) -> bool {
    let mut p = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    (p.next().unwrap_or(0), p.next().unwrap_or(0)) >= min
}

impl Lab {
    fn conflist(&self, node: &str) -> Result<Value, LabError> {
        let path = self.node(node)?.host_path(CONFLIST);
        let text = std::fs::read_to_string(&path).map_err(|source| LabError::State {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| LabError::StateFormat { path, source })
    }

    /// Runs one plugin of the list on `node`; its stdout.
    fn run_plugin(
        &self,
        node: &str,
        pod: &str,
        command: &str,
        conf: &Value,
    ) -> Result<String, LabError> {
        let ty = conf["type"].as_str().unwrap_or("");
        let exe = CNI_PATH
            .split(':')
            .map(|d| format!("{d}/{ty}"))
            .find(|p| {
                self.node(node)
                    .map(|n| n.host_path(p).is_file() || std::path::Path::new(p).is_file())
                    .unwrap_or(false)
            })
            .ok_or_else(|| cni_err(pod, format!("plugin {ty:?} not found in {CNI_PATH}")))?;
        let mut cmd = self.node_command(node, &exe)?;
        cmd.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod)
            .env("CNI_NETNS", format!("/run/netns/{pod}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH)
            .env(
                "CNI_ARGS",
                format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| cni_err(pod, format!("starting {exe}: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(conf.to_string().as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|e| cni_err(pod, format!("running {exe}: {e}")))?;
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() {
            return Err(cni_err(
                pod,
                format!(
                    "plugin type={ty:?} failed ({}): {stdout} {}",
                    command.to_lowercase(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Ok(stdout)
    }

    /// One plugin's config as libcni hands it over.
    fn plugin_conf(list: &Value, plugin: &Value, prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        if let Some(m) = conf.as_object_mut() {
            m.insert("name".into(), list["name"].clone());
            m.insert("cniVersion".into(), list["cniVersion"].clone());
            if let Some(prev) = prev {
                m.insert("prevResult".into(), prev.clone());
            }
        }
        conf
    }

    fn cache_path(&self, node: &str, pod: &str, net: &str) -> Result<std::path::PathBuf, LabError> {
        Ok(self
            .node(node)?
            .host_path(&format!("/var/lib/cni/results/{net}-{pod}-eth0")))
    }

    /// Creates pod `pod` on `node` by running the node's conflist (ADD) and
    /// records it in the lab's state.
    pub fn add_pod(&mut self, node: &str, pod: &str) -> Result<PodRecord, LabError> {
        let rec = self.create_pod(node, pod)?;
        self.state.pods.push(rec.clone());
        save_state(&self.state)?;
        Ok(rec)
    }

    /// Creates pod `pod` on `node` (namespace, conflist ADD, result cache)
    /// without recording it: safe to call from many threads at once, as a
    /// runtime starts many sandboxes at once.
    pub fn create_pod(&self, node: &str, pod: &str) -> Result<PodRecord, LabError> {
        let list = self.conflist(node)?;
        self.run(node, &["ip", "netns", "add", pod])?;
        let plugins = list["plugins"].as_array().cloned().unwrap_or_default();
        let mut prev: Option<Value> = None;
        for (i, p) in plugins.iter().enumerate() {
            let conf = Self::plugin_conf(&list, p, prev.as_ref());
            match self.run_plugin(node, pod, "ADD", &conf) {
                Ok(out) => {
                    prev = Some(
                        serde_json::from_str(&out)
                            .map_err(|e| cni_err(pod, format!("result of {}: {e}", p["type"])))?,
                    );
                }
                Err(e) => {
                    // As a runtime does: a failed ADD is followed by a DEL.
                    for q in plugins[..=i].iter().rev() {
                        let _ =
                            self.run_plugin(node, pod, "DEL", &Self::plugin_conf(&list, q, None));
                    }
                    let _ = self.run(node, &["ip", "netns", "del", pod]);
                    return Err(e);
                }
            }
        }
        let result = prev.unwrap_or(Value::Null);
        let net = list["name"].as_str().unwrap_or("cbr0");
        let cache = self.cache_path(node, pod, net)?;
        if let Some(dir) = cache.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LabError::State {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let entry = json!({"kind": "cniCacheV1", "containerId": pod, "ifName": "eth0", "networkName": net,
                           "netns": format!("/run/netns/{pod}"), "result": result});
        std::fs::write(&cache, entry.to_string()).map_err(|source| LabError::State {
            path: cache.clone(),
            source,
        })?;
        let ip = result["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| cni_err(pod, format!("the result has no address: {result}")))?;
        Ok(PodRecord {
            node: node.to_string(),
            name: pod.to_string(),
            ip,
        })
    }

    /// Deletes a pod: the conflist in reverse (DEL, with the cached result
    /// as prevResult from 0.4.0 on), then its namespace.
    pub fn del_pod(&mut self, node: &str, pod: &str) -> Result<(), LabError> {
        self.destroy_pod(node, pod)?;
        self.state
            .pods
            .retain(|p| !(p.node == node && p.name == pod));
        save_state(&self.state)
    }

    /// What a DEL of `pod` on `node` runs: the conflist, the cached
    /// result's path, and the prevResult each plugin gets (the cached
    /// result from 0.4.0 on).
    fn del_plan(
        &self,
        node: &str,
        pod: &str,
    ) -> Result<(Value, std::path::PathBuf, Option<Value>), LabError> {
        let list = self.conflist(node)?;
        let net = list["name"].as_str().unwrap_or("cbr0").to_string();
        let cache = self.cache_path(node, pod, &net)?;
        let cached: Option<Value> = std::fs::read_to_string(&cache)
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .map(|v| v["result"].clone());
        let with_prev = version_at_least(list["cniVersion"].as_str().unwrap_or("0.3.1"), (0, 4));
        Ok((list, cache, cached.filter(|_| with_prev)))
    }

    /// The conflist's DEL in reverse; the first failure.
    fn del_all(
        &self,
        node: &str,
        pod: &str,
        list: &Value,
        prev: Option<&Value>,
    ) -> Result<(), LabError> {
        let plugins = list["plugins"].as_array().cloned().unwrap_or_default();
        for p in plugins.iter().rev() {
            self.run_plugin(node, pod, "DEL", &Self::plugin_conf(list, p, prev))?;
        }
        Ok(())
    }

    /// Tears a pod down as kubelet does until it succeeds: the conflist's
    /// DEL in reverse (with the cached result, if any), again after a
    /// failure, up to `attempts` times; then its namespace, if it is still
    /// there. How many attempts it took. Works for a pod whose ADD failed
    /// too (DEL must succeed whatever ADD left).
    pub fn release_pod(&self, node: &str, pod: &str, attempts: u32) -> Result<u32, LabError> {
        let (list, cache, prev) = self.del_plan(node, pod)?;
        let mut last = None;
        for attempt in 1..=attempts.max(1) {
            match self.del_all(node, pod, &list, prev.as_ref()) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&cache);
                    let _ = self.exec(node, &["ip", "netns", "del", pod]);
                    return Ok(attempt);
                }
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err(last.unwrap_or_else(|| cni_err(pod, "no DEL attempted".into())))
    }

    /// Deletes a pod without touching the lab's records (thread-safe); on a
    /// failed DEL the namespace and the cached result stay for a retry.
    pub fn destroy_pod(&self, node: &str, pod: &str) -> Result<(), LabError> {
        let (list, cache, prev) = self.del_plan(node, pod)?;
        self.del_all(node, pod, &list, prev.as_ref())?;
        let _ = std::fs::remove_file(&cache);
        self.run(node, &["ip", "netns", "del", pod])?;
        Ok(())
    }
}
