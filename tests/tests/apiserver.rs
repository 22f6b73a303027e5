//! kube-rs, the client weftd uses, against the lab's real kube-apiserver:
//! watches, status patches and RBAC behave as they do in a cluster.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use weft_lab::{Lab, LabConfig, cluster, netns, pki, unique_name};

fn lab(tag: &str, nodes: usize) -> Lab {
    Lab::up(&LabConfig::new(&unique_name(tag), nodes)).expect("lab comes up")
}

fn node(name: &str, cidr: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
    }))
    .unwrap()
}

fn status_code(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// The resourceVersion of a fresh list of Nodes.
async fn list_version(api: &Api<Node>) -> String {
    let list = api.list(&ListParams::default()).await.unwrap();
    list.metadata.resource_version.unwrap()
}

async fn next_event(
    stream: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<Node>>> + Unpin),
) -> WatchEvent<Node> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a watch event within 10 s")
        .expect("the watch stream stays open")
        .expect("a decodable watch event")
}

#[test]
fn list_then_watch_sees_add_modify_delete_in_order() {
    let lab = lab("watch", 0);
    let admin = lab.admin_kubeconfig();
    lab.block_on(|| async {
        let api: Api<Node> = Api::all(cluster::client(&admin).await.unwrap());
        let rv = list_version(&api).await;
        let mut stream = api
            .watch(&WatchParams::default().timeout(60), &rv)
            .await
            .unwrap()
            .boxed();
        api.create(&PostParams::default(), &node("w1", "10.244.7.0/24"))
            .await
            .unwrap();
        api.patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"weft": "seen"}}})),
        )
        .await
        .unwrap();
        api.delete("w1", &DeleteParams::default()).await.unwrap();

        match next_event(&mut stream).await {
            WatchEvent::Added(n) => assert_eq!(n.metadata.name.as_deref(), Some("w1")),
            other => panic!("expected ADDED w1 first, got {other:?}"),
        }
        match next_event(&mut stream).await {
            WatchEvent::Modified(n) => {
                let labels = n.metadata.labels.unwrap_or_default();
                assert_eq!(labels.get("weft").map(String::as_str), Some("seen"));
            }
            other => panic!("expected MODIFIED w1 second, got {other:?}"),
        }
        match next_event(&mut stream).await {
            WatchEvent::Deleted(n) => assert_eq!(n.metadata.name.as_deref(), Some("w1")),
            other => panic!("expected DELETED w1 third, got {other:?}"),
        }
    })
    .unwrap();
}

/// What the test keeps of each watcher item.
#[derive(Debug, PartialEq)]
enum Seen {
    Init,
    InitApply(String),
    InitDone,
    Apply(String),
    Delete(String),
    Gone,
    OtherError,
}

fn seen(item: Result<watcher::Event<Node>, watcher::Error>) -> Seen {
    let name = |n: Node| n.metadata.name.unwrap_or_default();
    match item {
        Ok(watcher::Event::Init) => Seen::Init,
        Ok(watcher::Event::InitApply(n)) => Seen::InitApply(name(n)),
        Ok(watcher::Event::InitDone) => Seen::InitDone,
        Ok(watcher::Event::Apply(n)) => Seen::Apply(name(n)),
        Ok(watcher::Event::Delete(n)) => Seen::Delete(name(n)),
        Err(watcher::Error::WatchError(e)) if e.code == 410 => Seen::Gone,
        Err(_) => Seen::OtherError,
    }
}

async fn wait_for(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
    want: Seen,
    log: &mut Vec<Seen>,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let item = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {want:?} from the watcher within 60 s; saw {log:?}"))
            .expect("watcher task alive");
        let hit = item == want;
        log.push(item);
        if hit {
            return;
        }
    }
}

#[test]
fn a_compacted_resource_version_gets_410_and_the_watcher_relists() {
    let mut lab = lab("compact", 0);
    let admin = lab.admin_kubeconfig();
    let hub = lab.state.hub_netns.clone();
    netns::block_on_in(&hub, || async {
        let api: Api<Node> = Api::all(cluster::client(&admin).await.unwrap());
        api.create(&PostParams::default(), &node("c1", "10.244.1.0/24"))
            .await
            .unwrap();

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stream = watcher(api.clone(), watcher::Config::default()).default_backoff();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while let Some(item) = stream.next().await {
                if tx.send(seen(item)).is_err() {
                    return;
                }
            }
        });
        let mut log = Vec::new();
        wait_for(&mut rx, Seen::InitApply("c1".into()), &mut log).await;
        wait_for(&mut rx, Seen::InitDone, &mut log).await;
        let old_rv = list_version(&api).await;

        // While the API server is down, etcd moves on and is compacted: the
        // resource version every client holds is gone for good.
        lab.stop_apiserver();
        for i in 0..3 {
            lab.etcdctl(&["put", "/weft-lab-test/bump", &i.to_string()])
                .unwrap();
        }
        let status: serde_json::Value =
            serde_json::from_str(&lab.etcdctl(&["endpoint", "status", "-w", "json"]).unwrap())
                .unwrap();
        let revision = status[0]["Status"]["header"]["revision"].as_i64().unwrap();
        lab.etcdctl(&["compact", &revision.to_string()]).unwrap();
        lab.start_apiserver().unwrap();

        let gone = match api.watch(&WatchParams::default(), &old_rv).await {
            Err(e) => status_code(&e) == Some(410),
            Ok(stream) => {
                let mut stream = stream.boxed();
                matches!(next_event(&mut stream).await, WatchEvent::Error(e) if e.code == 410)
            }
        };
        assert!(
            gone,
            "a watch from compacted resourceVersion {old_rv} must get 410 Gone"
        );

        api.create(&PostParams::default(), &node("c2", "10.244.2.0/24"))
            .await
            .unwrap();
        wait_for(&mut rx, Seen::Gone, &mut log).await;
        wait_for(&mut rx, Seen::Init, &mut log).await;
        wait_for(&mut rx, Seen::InitDone, &mut log).await;
        let relisted: Vec<&Seen> = log
            .iter()
            .skip_while(|s| **s != Seen::Gone)
            .filter(|s| matches!(s, Seen::InitApply(_) | Seen::Apply(_)))
            .collect();
        assert!(
            relisted.contains(&&Seen::InitApply("c1".into())),
            "relist after 410 must replay c1: {log:?}"
        );
        let c2_seen = relisted
            .iter()
            .any(|s| matches!(s, Seen::InitApply(n) | Seen::Apply(n) if n == "c2"));
        if !c2_seen {
            wait_for(&mut rx, Seen::Apply("c2".into()), &mut log).await;
        }
    })
    .unwrap();
}

#[test]
fn status_patches_merge_annotations_and_conditions_as_weftd_needs() {
    let lab = lab("patch", 1);
    let node_kc = lab.node_kubeconfig();
    lab.block_on(|| async {
        // weft's own identity, bound only to weft's ClusterRole.
        let api: Api<Node> = Api::all(cluster::client(&node_kc).await.unwrap());
        let pp = PatchParams::default();
        let prefix = "flannel.alpha.coreos.com";

        let merged = api
            .patch_status(
                "node-1",
                &pp,
                &Patch::Merge(json!({"metadata": {"annotations": {
                    format!("{prefix}/public-ip"): "198.51.100.11"}}})),
            )
            .await
            .expect("merge patch of nodes/status");
        let ann = merged.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(ann[&format!("{prefix}/public-ip")], "198.51.100.11");

        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let strategic = api
            .patch_status(
                "node-1",
                &pp,
                &Patch::Strategic(json!({
                    "metadata": {"annotations": {format!("{prefix}/backend-type"): "vxlan"}},
                    "status": {"conditions": [{
                        "type": "NetworkUnavailable", "status": "False",
                        "reason": "WeftIsUp", "message": "weft is running on this node",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}]}})),
            )
            .await
            .expect("strategic merge patch of nodes/status");
        let ann = strategic.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(ann[&format!("{prefix}/public-ip")], "198.51.100.11", "kept");
        assert_eq!(ann[&format!("{prefix}/backend-type")], "vxlan", "added");
        let types = |n: &Node| -> Vec<(String, String)> {
            let mut v: Vec<(String, String)> = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default()
                .into_iter()
                .map(|c| (c.type_, c.status))
                .collect();
            v.sort();
            v
        };
        // Strategic merge keys conditions by type: Ready survives.
        assert_eq!(
            types(&strategic),
            vec![
                ("NetworkUnavailable".to_string(), "False".to_string()),
                ("Ready".to_string(), "True".to_string())
            ]
        );

        // A JSON merge patch replaces the whole list: Ready is lost. This is
        // why weftd must set its condition with a strategic merge patch.
        let replaced = api
            .patch_status(
                "node-1",
                &pp,
                &Patch::Merge(json!({"status": {"conditions": [{
                    "type": "NetworkUnavailable", "status": "False",
                    "reason": "WeftIsUp", "lastHeartbeatTime": now,
                    "lastTransitionTime": now}]}})),
            )
            .await
            .expect("merge patch of conditions");
        assert_eq!(
            types(&replaced),
            vec![("NetworkUnavailable".to_string(), "False".to_string())]
        );
    })
    .unwrap();
}

#[test]
fn weft_identity_is_limited_to_its_cluster_role_and_strangers_are_refused() {
    let lab = lab("rbac", 1);
    let node_kc = lab.node_kubeconfig();
    let nobody_kc = lab.unbound_kubeconfig();
    let ca = std::fs::read_to_string(lab.pki().ca_cert()).unwrap();
    let bad_kc = lab.dir().join("bad-token.kubeconfig");
    pki::write(
        &bad_kc,
        pki::kubeconfig("t", &lab.state.apiserver_url, &ca, "bad", "not-a-token").as_bytes(),
    )
    .unwrap();
    let anon_kc = lab.dir().join("no-token.kubeconfig");
    let anon = pki::kubeconfig("t", &lab.state.apiserver_url, &ca, "anon", "x")
        .replace("  user:\n    token: x\n", "  user: {}\n");
    pki::write(&anon_kc, anon.as_bytes()).unwrap();

    lab.block_on(|| async {
        let client = cluster::client(&node_kc).await.unwrap();
        let nodes: Api<Node> = Api::all(client.clone());
        // Allowed: nodes get/list/watch, nodes/status patch.
        nodes.get("node-1").await.expect("get node");
        nodes
            .list(&ListParams::default())
            .await
            .expect("list nodes");
        let _watch = nodes
            .watch(&WatchParams::default().timeout(1), "0")
            .await
            .expect("watch nodes");
        nodes
            .patch_status(
                "node-1",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"weft/x": "1"}}})),
            )
            .await
            .expect("patch nodes/status");

        // Everything else: 403.
        let forbidden = [
            nodes
                .patch(
                    "node-1",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {"weft/x": "2"}}})),
                )
                .await
                .map(drop),
            nodes
                .delete("node-1", &DeleteParams::default())
                .await
                .map(drop),
            nodes
                .create(&PostParams::default(), &node("intruder", "10.244.9.0/24"))
                .await
                .map(drop),
            Api::<Pod>::all(client.clone())
                .list(&ListParams::default())
                .await
                .map(drop),
            Api::<Namespace>::all(client.clone())
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({"metadata": {"name": "x"}})).unwrap(),
                )
                .await
                .map(drop),
        ];
        for (i, r) in forbidden.iter().enumerate() {
            let err = r.as_ref().expect_err("must be refused");
            assert_eq!(status_code(err), Some(403), "case {i}: {err}");
        }

        let nobody: Api<Node> = Api::all(cluster::client(&nobody_kc).await.unwrap());
        let err = nobody.list(&ListParams::default()).await.unwrap_err();
        assert_eq!(status_code(&err), Some(403), "unbound user: {err}");

        for kc in [&anon_kc, &bad_kc] {
            let api: Api<Node> = Api::all(cluster::client(kc).await.unwrap());
            let err = api.list(&ListParams::default()).await.unwrap_err();
            assert_eq!(status_code(&err), Some(401), "{}: {err}", kc.display());
        }
    })
    .unwrap();
}

#[test]
fn nodes_are_registered_like_kubelet_and_ipam_would() {
    let mut lab = lab("nodes", 2);
    let admin = lab.admin_kubeconfig();
    let list = |lab: &Lab| {
        let admin = admin.clone();
        lab.block_on(|| async move {
            let client = cluster::client(&admin).await.unwrap();
            cluster::list_nodes(&client).await.unwrap()
        })
        .unwrap()
    };
    let nodes = list(&lab);
    let mut seen: Vec<(String, String, String, bool)> = nodes
        .iter()
        .map(|n| {
            let addr = n
                .status
                .as_ref()
                .and_then(|s| s.addresses.clone())
                .unwrap_or_default()
                .into_iter()
                .find(|a| a.type_ == "InternalIP")
                .map(|a| a.address)
                .unwrap_or_default();
            (
                n.metadata.name.clone().unwrap(),
                addr,
                n.spec.as_ref().unwrap().pod_cidr.clone().unwrap(),
                cluster::is_ready(n),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (
                "node-1".into(),
                "198.51.100.11".into(),
                "10.244.0.0/24".into(),
                true
            ),
            (
                "node-2".into(),
                "198.51.100.12".into(),
                "10.244.1.0/24".into(),
                true
            ),
        ]
    );

    // Removing a node frees its CIDR, but the allocator moves on first.
    lab.remove_node("node-1").unwrap();
    let added = lab.add_node(true).unwrap();
    assert_eq!(added.name, "node-3");
    assert!(!netns::list("").contains(&format!("weftlab-{}-node-1", lab.name())));
    let cidrs: Vec<(String, String)> = list(&lab)
        .into_iter()
        .map(|n| (n.metadata.name.unwrap(), n.spec.unwrap().pod_cidr.unwrap()))
        .collect();
    assert_eq!(
        cidrs,
        vec![
            ("node-2".into(), "10.244.1.0/24".into()),
            ("node-3".into(), "10.244.2.0/24".into())
        ]
    );

    // A node that joins before IPAM got to it has no podCIDR yet.
    let bare = lab.add_node(false).unwrap();
    let n = list(&lab)
        .into_iter()
        .find(|n| n.metadata.name.as_deref() == Some(bare.name.as_str()))
        .unwrap();
    assert_eq!(n.spec.and_then(|s| s.pod_cidr), None);
}

/// The fields weftd reads of one Node, to compare two decodings.
fn read_by_weftd(
    n: &weftd::lease::kube::node::SlimNode,
) -> (String, String, Vec<String>, Vec<String>, String, String) {
    (
        n.name().to_string(),
        n.created(),
        n.pod_cidrs().into_iter().map(str::to_string).collect(),
        n.internal_ips().map(str::to_string).collect(),
        format!("{:?}", n.metadata.annotations),
        n.metadata.resource_version.clone().unwrap_or_default(),
    )
}

#[test]
fn the_protobuf_list_reads_every_node_as_the_json_list_does() {
    use weftd::lease::kube::list::{self, From};
    use weftd::lease::kube::node::SlimNode;
    let lab = lab("proto", 0);
    let admin = lab.admin_kubeconfig();
    lab.block_on(|| async {
        let client = cluster::client(&admin).await.unwrap();
        let api: Api<Node> = Api::all(client.clone());
        for i in 0..5 {
            let mut n: Node = serde_json::from_value(json!({
                "metadata": {
                    "name": format!("p{i}"),
                    "labels": {"kubernetes.io/hostname": format!("p{i}")},
                    "annotations": {
                        "flannel.alpha.coreos.com/public-ip": format!("198.51.100.{}", 20 + i),
                        "flannel.alpha.coreos.com/backend-data":
                            format!("{{\"VNI\":1,\"VtepMAC\":\"0a:00:00:00:00:{i:02x}\"}}"),
                        "weft.test/unicode": "ünïcødé ✓",
                        "weft.test/empty": "",
                    },
                },
                "spec": {
                    "podCIDR": format!("10.244.{i}.0/24"),
                    "podCIDRs": [format!("10.244.{i}.0/24"), format!("fd00:{i}::/64")],
                    "taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}],
                },
            }))
            .unwrap();
            n = api.create(&PostParams::default(), &n).await.unwrap();
            n.status = Some(serde_json::from_value(json!({
                "addresses": [
                    {"type": "InternalIP", "address": format!("198.51.100.{}", 20 + i)},
                    {"type": "Hostname", "address": format!("p{i}")},
                ],
                "conditions": [{"type": "Ready", "status": "True", "reason": "r", "message": "m"}],
                "capacity": {"cpu": "2", "memory": "1Gi"},
            }))
            .unwrap());
            api.replace_status(&format!("p{i}"), &PostParams::default(), &n)
                .await
                .unwrap();
        }
        // Wait until the watch cache has the last status.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let slim: Api<SlimNode> = Api::all(client.clone());
        let mut by_json: Vec<_> = slim
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .iter()
            .map(read_by_weftd)
            .collect();
        by_json.sort();
        assert_eq!(by_json.len(), 5);
        assert_eq!(by_json[3].3, vec!["198.51.100.23".to_string()]);
        // From the watch cache (whole), and from etcd two at a time (three
        // pages, continue tokens followed).
        for (from, page) in [(From::Cache, 500), (From::Etcd, 2)] {
            let seen = std::cell::RefCell::new(Vec::new());
            let version = list::list(&client, "/api/v1/nodes", from, page, |n| {
                seen.borrow_mut().push(read_by_weftd(&n));
                async {}
            })
            .await
            .unwrap();
            assert!(version.parse::<u64>().is_ok(), "{version}");
            // The watch cache answers in its own order, etcd in key order.
            let mut seen = seen.into_inner();
            seen.sort();
            assert_eq!(seen, by_json, "{from:?}");
        }
        // An error answer names what the server said.
        let err = list::list(&client, "/api/v1/nodez", From::Etcd, 10, |_| async {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("404"), "{err}");
    })
    .unwrap();
}
