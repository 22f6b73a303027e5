//! The bench's cluster: realistic Node objects in the API server, and
//! the `ip -batch` yardstick writing the same kernel entries.

use super::*;

/// The i-th synthetic peer: (name, podCIDR, MAC, public IP).
pub(super) fn synthetic(i: usize) -> (String, String, String, Ipv4Addr) {
    let net = 128u32 * 256 + 1 + i as u32; // skips 10.128.0.0/24
    let (b, c) = ((net >> 8) as u8, net as u8);
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 1)) + i as u32);
    let mac = format!(
        "0a:58:{:02x}:{:02x}:{:02x}:{:02x}",
        (i >> 24) as u8,
        (i >> 16) as u8,
        (i >> 8) as u8,
        i as u8
    );
    (format!("bench-{i:05}"), format!("10.{b}.{c}.0/24"), mac, ip)
}

/// A Node as a real cluster holds it (~10 KB), with flannel's annotations.
pub(super) fn realistic_node(i: usize) -> serde_json::Value {
    let (name, cidr, mac, ip) = synthetic(i);
    let now = "2026-11-23T00:00:00Z";
    let images: Vec<serde_json::Value> = (0..40)
        .map(|k| {
            serde_json::json!({
                "names": [
                    format!("registry.example.com/team-{k}/service-{k}@sha256:{:064x}", k * 7919 + i),
                    format!("registry.example.com/team-{k}/service-{k}:v1.{k}.{}", i % 97),
                ],
                "sizeBytes": 10_000_000 + k * 123_457,
            })
        })
        .collect();
    let cond = |t: &str, s: &str, r: &str| {
        serde_json::json!({"type": t, "status": s, "reason": r, "message": format!("kubelet reports {r}"),
                           "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    serde_json::json!({
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                "node.kubernetes.io/instance-type": "m5.large", "weft-lab/synthetic": "true", "topology.kubernetes.io/zone": format!("zone-{}", i % 3),
                "topology.kubernetes.io/region": "region-1",
            },
            "annotations": {
                "flannel.alpha.coreos.com/backend-data": format!(r#"{{"VNI":1,"VtepMAC":"{mac}"}}"#),
                "flannel.alpha.coreos.com/backend-type": "vxlan",
                "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                "flannel.alpha.coreos.com/public-ip": ip.to_string(),
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr], "providerID": format!("bench://{name}")},
        "status": {
            "addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": name}],
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID"),
                cond("Ready", "True", "KubeletReady"),
                cond("NetworkUnavailable", "False", "FlannelIsUp"),
            ],
            "capacity": {"cpu": "2", "memory": "8012345Ki", "pods": "110", "ephemeral-storage": "101445540Ki"},
            "allocatable": {"cpu": "2", "memory": "7909945Ki", "pods": "110", "ephemeral-storage": "93492209510"},
            "nodeInfo": {"machineID": format!("{:032x}", i), "systemUUID": format!("{:032x}", i * 31), "bootID": format!("{:032x}", i * 17),
                         "kernelVersion": "6.1.0-13-amd64", "osImage": "Debian GNU/Linux 12 (bookworm)", "containerRuntimeVersion": "containerd://1.6.20",
                         "kubeletVersion": "v1.20.2", "kubeProxyVersion": "v1.20.2", "operatingSystem": "linux", "architecture": "amd64"},
            "images": images,
        },
    })
}

/// Deletes every Node [`fill_api`] created, in one request.
pub fn drain_api(lab: &Lab) -> Result<(), LabError> {
    let admin = lab.admin_kubeconfig();
    lab.block_on(|| async move {
        let client = cluster::client(&admin).await?;
        let api: Api<Node> = Api::all(client);
        let lp = kube::api::ListParams::default().labels("weft-lab/synthetic=true");
        api.delete_collection(&kube::api::DeleteParams::default(), &lp)
            .await
            .map(drop)
            .map_err(|source| cluster::ClusterError::DeleteNode {
                name: "labelled weft-lab/synthetic=true".into(),
                source,
            })
    })?
    .map_err(LabError::from)
}

/// Creates `count` realistic Nodes, many requests in flight.
pub fn fill_api(lab: &Lab, range: std::ops::Range<usize>) -> Result<(), LabError> {
    let admin = lab.admin_kubeconfig();
    lab.block_on(|| async move {
        let client = cluster::client(&admin).await?;
        let api: Api<Node> = Api::all(client);
        let results: Vec<Result<(), kube::Error>> = futures::stream::iter(range.map(|i| {
            let api = api.clone();
            async move {
                let node: Node =
                    serde_json::from_value(realistic_node(i)).map_err(kube::Error::SerdeError)?;
                api.create(&PostParams::default(), &node).await.map(drop)
            }
        }))
        .buffer_unordered(32)
        .collect()
        .await;
        for r in results {
            r.map_err(|source| cluster::ClusterError::CreateNode {
                name: "bench node".into(),
                source,
            })?;
        }
        Ok::<_, cluster::ClusterError>(())
    })??;
    Ok(())
}

pub(super) fn count_json(lab: &Lab, node: &str, args: &[&str]) -> Result<usize, LabError> {
    let out = lab.run(node, args)?;
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap_or_default();
    Ok(v.len())
}

fn write_batch(path: &std::path::Path, text: String) -> Result<(), LabError> {
    std::fs::write(path, text).map_err(|source| LabError::State {
        path: path.to_path_buf(),
        source,
    })
}

/// The yardstick's times, seconds.
#[derive(Debug, Clone, Copy)]
pub(super) struct Yardstick {
    /// Every entry (neighbour, route, FDB) through `ip -batch` and
    /// `bridge -batch`.
    pub all: f64,
    /// flannel's routes alone (`via GW dev D onlink`), on an empty device.
    pub gw_routes: f64,
    /// The same destinations as routes without a gateway (`dev D`).
    pub dev_routes: f64,
}

/// `ip -batch` writing the same entries on a scratch device on `node`;
/// then the routes alone, as flannel writes them and without a gateway,
/// to show the kernel's own cost of flannel's route shape.
pub(super) fn ip_batch_yardstick(
    lab: &Lab,
    node: &str,
    peers: usize,
) -> Result<Yardstick, LabError> {
    lab.run(
        node,
        &["bash", "-euc", "ip link add yardstick type vxlan id 99 local 198.51.100.12 dev eth0 dstport 8999 nolearning && ip link set yardstick up"],
    )?;
    let mut batch = String::new();
    for i in 0..peers {
        let (_, cidr, mac, ip) = synthetic(i);
        let gw = cidr.trim_end_matches("/24");
        batch.push_str(&format!(
            "neigh replace {gw} lladdr {mac} dev yardstick nud permanent\n"
        ));
        batch.push_str(&format!(
            "route replace {cidr} via {gw} dev yardstick onlink\n"
        ));
        let _ = ip;
    }
    let mut fdb = String::new();
    for i in 0..peers {
        let (_, _, mac, ip) = synthetic(i);
        fdb.push_str(&format!(
            "fdb append {mac} dev yardstick dst {ip} self permanent\n"
        ));
    }
    let dir = lab.node(node)?.dir.clone();
    let (ipb, fdbb) = (dir.join("yardstick.ip"), dir.join("yardstick.fdb"));
    write_batch(&ipb, batch)?;
    write_batch(&fdbb, fdb)?;
    let t0 = Instant::now();
    lab.run(node, &["ip", "-batch", ipb.to_str().unwrap_or("")])?;
    lab.run(node, &["bridge", "-batch", fdbb.to_str().unwrap_or("")])?;
    let all = t0.elapsed().as_secs_f64();
    let routes_alone = |gateway: bool| -> Result<f64, LabError> {
        lab.run(node, &["ip", "route", "flush", "dev", "yardstick"])?;
        let mut batch = String::new();
        for i in 0..peers {
            let (_, cidr, _, _) = synthetic(i);
            let gw = cidr.trim_end_matches("/24");
            batch.push_str(&if gateway {
                format!("route replace {cidr} via {gw} dev yardstick onlink\n")
            } else {
                format!("route replace {cidr} dev yardstick\n")
            });
        }
        let path = dir.join("yardstick.routes");
        write_batch(&path, batch)?;
        let t0 = Instant::now();
        lab.run(node, &["ip", "-batch", path.to_str().unwrap_or("")])?;
        Ok(t0.elapsed().as_secs_f64())
    };
    let gw_routes = routes_alone(true)?;
    let dev_routes = routes_alone(false)?;
    lab.run(node, &["ip", "link", "del", "yardstick"])?;
    Ok(Yardstick {
        all,
        gw_routes,
        dev_routes,
    })
}
