//! A lab of real nodes (`LabConfig::kubelet`): the hub's controllers, each
//! node's containerd, kubelet and kube-proxy, weft installed by `kubectl
//! apply`, and an ordinary Deployment as the workload. See `crate::real`.

use serde_json::Value;

use super::*;
use crate::real::{self, KubeBins};

/// The workload Deployment's name (namespace `default`): busybox pods that
/// serve their own name over HTTP on port 8080.
pub const WORKLOAD: &str = "busybox";

/// A workload pod as the API server reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RealPod {
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
}

impl Lab {
    /// Starts the hub's controllers and `nodes` real nodes, waits until
    /// every Node has registered and got a podCIDR from the
    /// controller-manager, then installs weft as its users do and waits
    /// for the rollout.
    pub(super) fn up_real_nodes(&mut self, nodes: usize) -> Result<(), LabError> {
        let kube = KubeBins::find(&real::COMPONENTS)?;
        let (name, hub, dir) = (
            self.state.name.clone(),
            self.state.hub_netns.clone(),
            self.state.dir.clone(),
        );
        self.say("starting kube-controller-manager (node IPAM) and kube-scheduler");
        real::start_controller_manager(&name, &hub, &dir, &kube)?;
        real::start_scheduler(&name, &hub, &dir, &kube)?;
        let t0 = Instant::now();
        for _ in 0..nodes {
            build::check_interrupt()?;
            self.add_real_node(&kube)?;
        }
        let names: Vec<String> = self.state.nodes.iter().map(|n| n.name.clone()).collect();
        self.wait_api("every Node registered with a podCIDR", 120, |lab| {
            let json = lab.kubectl_json(&["get", "nodes"])?;
            let have: Vec<&str> = items(&json)
                .filter(|n| n["spec"]["podCIDR"].is_string())
                .filter_map(|n| n["metadata"]["name"].as_str())
                .collect();
            Ok(names.iter().all(|n| have.contains(&n.as_str())))
        })?;
        self.say(&format!(
            "{nodes} Nodes registered by their kubelets, podCIDRs allocated, after {:.1} s",
            t0.elapsed().as_secs_f64()
        ));
        self.install_weft()
    }

    fn add_real_node(&mut self, kube: &KubeBins) -> Result<(), LabError> {
        let index = self.state.next_node_index;
        let name = format!("node-{index}");
        let ns = netns_name(&self.state.name, &name);
        let ip = Ipv4Addr::from(u32::from(self.state.underlay.network()) + FIRST_NODE_HOST + index);
        let dir = self.state.dir.join("nodes").join(&name);
        self.say(&format!(
            "creating {name} (netns {ns}, underlay {ip}): containerd, kubelet, kube-proxy"
        ));
        let node = node::create(&node::NodeSpec {
            lab: &self.state.name,
            name: &name,
            netns: &ns,
            hub_ns: &self.state.hub_netns,
            hub_bridge: HUB_BRIDGE,
            underlay_ip: ip,
            prefix_len: self.state.underlay.prefix(),
            gateway: self.state.hub_ip,
            dir: &dir,
            real: true,
        })?;
        self.state.next_node_index += 1;
        self.state.nodes.push(node.clone());
        self.save()?;
        real::start_node(&self.state.name, &self.state.dir, &node, kube)
    }

    /// `kubectl apply -f manifests/weft.yaml`, then waits until the
    /// DaemonSet has a Ready pod on every node and every Node is Ready with
    /// NetworkUnavailable False.
    pub fn install_weft(&mut self) -> Result<(), LabError> {
        let t0 = Instant::now();
        self.say("kubectl apply -f manifests/weft.yaml");
        cp::apply_manifest(&self.state.hub_netns, &self.admin_kubeconfig())?;
        self.wait_weft_rollout(180)?;
        let secs = t0.elapsed().as_secs_f64();
        self.say(&format!(
            "weft rolled out: a Ready weft pod on every node, every Node Ready, {secs:.1} s after apply"
        ));
        self.state.weft_rollout_seconds = Some(secs);
        self.save()
    }

    /// Waits until weft's DaemonSet is fully rolled out and every Node is
    /// Ready with NetworkUnavailable False.
    pub fn wait_weft_rollout(&self, secs: u64) -> Result<(), LabError> {
        let n = self.state.nodes.len() as u64;
        self.wait_api("weft's DaemonSet Ready on every node", secs, |lab| {
            let ds = lab.kubectl_json(&["-n", cp::WEFT_NAMESPACE, "get", "daemonset", "weft"])?;
            let st = &ds["status"];
            let gen_seen = st["observedGeneration"] == ds["metadata"]["generation"];
            let count = |k: &str| st[k].as_u64().unwrap_or(0);
            Ok(gen_seen
                && count("desiredNumberScheduled") == n
                && count("numberReady") == n
                && count("updatedNumberScheduled") == n)
        })?;
        self.wait_api("every Node Ready, NetworkUnavailable False", secs, |lab| {
            let json = lab.kubectl_json(&["get", "nodes"])?;
            let nodes: Vec<&Value> = items(&json).collect();
            Ok(nodes.len() as u64 == n
                && nodes.iter().all(|node| {
                    condition(node, "Ready") == Some("True")
                        && condition(node, "NetworkUnavailable") == Some("False")
                }))
        })
    }

    /// Applies the workload Deployment (`replicas` busybox pods, spread
    /// over the nodes) and waits until every pod is Running with an IP.
    pub fn deploy_workload(&self, replicas: usize) -> Result<Vec<RealPod>, LabError> {
        let yaml = workload_yaml(replicas);
        cmd::run_with_stdin(self.kubectl().args(["apply", "-f", "-"]), yaml.as_bytes())?;
        let mut pods = Vec::new();
        self.wait_api(
            &format!("{replicas} {WORKLOAD} pods Running with an IP"),
            180,
            |lab| {
                pods = lab.workload_pods()?;
                Ok(pods.len() == replicas)
            },
        )?;
        Ok(pods)
    }

    /// The workload's Running pods that have an IP.
    pub fn workload_pods(&self) -> Result<Vec<RealPod>, LabError> {
        let json = self.kubectl_json(&["get", "pods", "-l", &format!("app={WORKLOAD}")])?;
        let mut pods: Vec<RealPod> = items(&json)
            .filter(|p| {
                p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
            })
            .filter_map(|p| {
                Some(RealPod {
                    name: p["metadata"]["name"].as_str()?.to_string(),
                    node: p["spec"]["nodeName"].as_str()?.to_string(),
                    ip: p["status"]["podIP"].as_str()?.parse().ok()?,
                })
            })
            .collect();
        pods.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
        Ok(pods)
    }

    /// From inside `from` (`kubectl exec`), tries every target: one ICMP
    /// echo and one HTTP GET each (with nc: busybox's wget crashes when
    /// given a timeout). Returns, per target IP, whether ping and
    /// HTTP worked.
    pub fn reach_from(
        &self,
        from: &RealPod,
        targets: &[Ipv4Addr],
    ) -> Result<Vec<(Ipv4Addr, bool, bool)>, LabError> {
        let list: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
        let script = format!(
            "for ip in {}; do \
               if ping -c1 -W2 $ip >/dev/null 2>&1; then p=1; else p=0; fi; \
               if printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $ip 8080 | grep -q '^HTTP/1.1 200'; then h=1; else h=0; fi; \
               echo $ip $p $h; \
             done",
            list.join(" ")
        );
        let out = cmd::run(
            self.kubectl()
                .args(["exec", &from.name, "--", "sh", "-c", &script]),
        )?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.parse().ok()?, f.next()? == "1", f.next()? == "1"))
            })
            .collect())
    }

    /// Every workload pod to every other, ICMP and HTTP (TCP), each from
    /// inside the pod by `kubectl exec`.
    pub fn real_connectivity(&self) -> Result<Vec<crate::check::PairResult>, LabError> {
        let pods = self.workload_pods()?;
        let mut out = Vec::new();
        for from in &pods {
            let targets: Vec<&RealPod> = pods.iter().filter(|p| p.name != from.name).collect();
            let ips: Vec<Ipv4Addr> = targets.iter().map(|p| p.ip).collect();
            let seen = self.reach_from(from, &ips)?;
            for t in targets {
                let r = seen.iter().find(|r| r.0 == t.ip);
                out.push(crate::check::PairResult {
                    from: format!("{} ({})", from.name, from.node),
                    to: format!("{} ({})", t.name, t.node),
                    to_ip: t.ip.to_string(),
                    icmp: r.is_some_and(|r| r.1),
                    tcp: r.is_some_and(|r| r.2),
                    tcp_error: None,
                });
            }
        }
        Ok(out)
    }

    /// Stops kube-proxy on `node` and removes its rules (`kube-proxy
    /// --cleanup`), as on a cluster without kube-proxy: Service addresses
    /// lead nowhere from that node.
    pub fn stop_kube_proxy(&self, node: &str) -> Result<(), LabError> {
        let n = self.node(node)?;
        let pids: Vec<i32> = crate::netns::pids(&n.netns)
            .into_iter()
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .is_ok_and(|c| c.trim() == "kube-proxy")
            })
            .collect();
        procs::terminate(&pids, Duration::from_secs(5));
        let kube = KubeBins::find(&["kube-proxy"])?;
        cmd::run(
            n.command(&self.state.name, kube.bin("kube-proxy"))
                .arg("--cleanup"),
        )?;
        Ok(())
    }

    /// The name of weft's pod on `node`.
    pub fn weft_pod(&self, node: &str) -> Result<String, LabError> {
        let json = self.kubectl_json(&["-n", cp::WEFT_NAMESPACE, "get", "pods"])?;
        items(&json)
            .filter(|p| {
                p["spec"]["nodeName"] == node && p["metadata"]["deletionTimestamp"].is_null()
            })
            .find_map(|p| p["metadata"]["name"].as_str().map(String::from))
            .ok_or_else(|| LabError::Container {
                node: node.to_string(),
                reason: "no weft pod there".into(),
            })
    }

    /// Renders weft's chart with `values` (YAML) over its defaults, with
    /// Helm's own engine (`scripts/render-manifests --values`), applies it
    /// with kubectl (a `helm upgrade`), and waits for the rollout.
    pub fn apply_chart(&self, values: &str) -> Result<(), LabError> {
        let file = self.state.dir.join("chart-values.yaml");
        std::fs::write(&file, values).map_err(|source| LabError::State {
            path: file.clone(),
            source,
        })?;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/render-manifests");
        let rendered = cmd::run(Command::new("bash").arg(&script).arg("--values").arg(&file))?;
        cmd::run_with_stdin(
            self.kubectl().args(["apply", "-f", "-"]),
            rendered.as_bytes(),
        )?;
        self.wait_weft_rollout(300)
    }

    /// `kubectl -n kube-weft rollout restart daemonset/weft` (a changed
    /// pod template, as a new image tag or config would make), then waits
    /// until the new pods are Ready on every node; the seconds it took.
    pub fn restart_weft(&self) -> Result<f64, LabError> {
        let t0 = Instant::now();
        cmd::run(self.kubectl().args([
            "-n",
            cp::WEFT_NAMESPACE,
            "rollout",
            "restart",
            "daemonset/weft",
        ]))?;
        // The rollout is under way once the DaemonSet's generation moved.
        self.wait_weft_rollout(300)?;
        Ok(t0.elapsed().as_secs_f64())
    }

    /// Pings `to` from inside `from` at 100 packets/s until
    /// `Pinger::finish`: busybox's ping runs in the pod's background
    /// (`kubectl exec` starts it and returns), so it spans exactly what the
    /// caller does meanwhile however long that takes.
    pub fn start_ping(&self, from: &RealPod, to: Ipv4Addr) -> Result<Pinger, LabError> {
        let script = format!("ping -i 0.01 -W 1 {to} > /tmp/weft-ping.out 2>&1 & echo $!");
        let out = cmd::run(
            self.kubectl()
                .args(["exec", &from.name, "--", "sh", "-c", &script]),
        )?;
        let pid = out.trim().parse::<u32>().map_err(|_| LabError::Container {
            node: from.node.clone(),
            reason: format!("starting ping in {}: {out:?}", from.name),
        })?;
        Ok(Pinger {
            pod: from.name.clone(),
            pid,
        })
    }

    /// `kubectl get ... -o json` as admin, parsed.
    pub fn kubectl_json(&self, args: &[&str]) -> Result<Value, LabError> {
        let out = cmd::run(self.kubectl().args(args).args(["-o", "json"]))?;
        serde_json::from_str(&out).map_err(|e| LabError::Container {
            node: "hub".into(),
            reason: format!("kubectl {} -o json: {e}", args.join(" ")),
        })
    }

    /// Polls `done` every 250 ms until it says yes; fails after `secs`
    /// with what was awaited and the last error seen.
    fn wait_api(
        &self,
        what: &str,
        secs: u64,
        mut done: impl FnMut(&Lab) -> Result<bool, LabError>,
    ) -> Result<(), LabError> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut last = String::new();
        loop {
            match done(self) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => last = format!(" (last error: {e})"),
            }
            build::check_interrupt()?;
            if Instant::now() > deadline {
                return Err(LabError::Container {
                    node: "hub".into(),
                    reason: format!(
                        "not done after {secs} s: {what}{last}; logs under {}",
                        self.state.dir.join("logs").display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// A ping running inside a pod (`Lab::start_ping`).
#[derive(Debug)]
pub struct Pinger {
    pod: String,
    pid: u32,
}

/// What a ping saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PingCount {
    pub sent: u64,
    pub received: u64,
    /// Requests without an answer while later ones were answered: lost.
    pub lost: u64,
    /// Requests after the last answer (one may be in flight when the ping
    /// is stopped): not counted as lost.
    pub unanswered_at_stop: u64,
}

/// The count from busybox ping's output: its summary and a line per reply
/// (`... seq=N ...`).
pub fn ping_count(text: &str) -> Option<PingCount> {
    let summary = text.lines().find(|l| l.contains("packets transmitted"))?;
    let num = |word: &str| -> u64 {
        summary
            .split(',')
            .find(|p| p.contains(word))
            .and_then(|p| p.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let mut seqs: Vec<u64> = text
        .lines()
        .filter_map(|l| {
            l.split_once("seq=")?
                .1
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    let sent = num("transmitted");
    let answered_up_to = seqs.last().map_or(0, |m| m + 1);
    Some(PingCount {
        sent,
        received: num("received"),
        lost: answered_up_to - seqs.len() as u64,
        unanswered_at_stop: sent.saturating_sub(answered_up_to),
    })
}

impl Pinger {
    /// Stops the ping (SIGINT: it prints its summary) and counts.
    pub fn finish(self, lab: &Lab) -> Result<PingCount, LabError> {
        let script = format!(
            // The ping's parent is the pod's PID 1 now, which may never
            // reap it: wait for its summary, not for its end.
            "kill -INT {pid}; for i in $(seq 50); do grep -q transmitted /tmp/weft-ping.out && break; sleep 0.1; done; cat /tmp/weft-ping.out",
            pid = self.pid
        );
        let text = cmd::run(
            lab.kubectl()
                .args(["exec", &self.pod, "--", "sh", "-c", &script]),
        )?;
        ping_count(&text).ok_or_else(|| LabError::Container {
            node: self.pod.clone(),
            reason: format!(
                "ping printed no summary: {}",
                text.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            ),
        })
    }
}

fn items(list: &Value) -> impl Iterator<Item = &Value> {
    list["items"].as_array().into_iter().flatten()
}

fn condition<'a>(node: &'a Value, kind: &str) -> Option<&'a str> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)?["status"]
        .as_str()
}

/// The workload: busybox pods serving their own name on port 8080, spread
/// evenly over the nodes.
pub fn workload_yaml(replicas: usize) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {WORKLOAD}
  namespace: default
spec:
  replicas: {replicas}
  selector:
    matchLabels:
      app: {WORKLOAD}
  template:
    metadata:
      labels:
        app: {WORKLOAD}
    spec:
      # busybox as PID 1 ignores SIGTERM: don't wait 30 s for it.
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: DoNotSchedule
          labelSelector:
            matchLabels:
              app: {WORKLOAD}
      containers:
        - name: busybox
          image: localhost/busybox:1.35.0
          imagePullPolicy: Never
          command: ["sh", "-c", "mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www"]
          ports:
            - containerPort: 8080
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_lost_and_the_request_in_flight_at_the_stop_is_not() {
        let line = |n: u64| format!("64 bytes from 10.244.1.2: seq={n} ttl=63 time=0.211 ms\n");
        let mut text = String::from("PING 10.244.1.2 (10.244.1.2): 56 data bytes\n");
        for n in (0..10).filter(|n| *n != 4) {
            text += &line(n);
        }
        text += "\n--- 10.244.1.2 ping statistics ---\n11 packets transmitted, 9 packets received, 18% packet loss\n";
        assert_eq!(
            ping_count(&text),
            Some(PingCount {
                sent: 11,
                received: 9,
                lost: 1,
                unanswered_at_stop: 1
            })
        );
        assert_eq!(ping_count("no summary\n"), None);
    }
}
