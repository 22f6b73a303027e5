//! Where an agent's first sync goes, phase by phase, each timed alone by
//! the bench with weftd's own code: the API list (as JSON pages of 100, as
//! protobuf pages, and as weftd asks: protobuf from the watch cache, TLS,
//! from the lab's hub), decoding it into the slice of a Node weftd keeps,
//! and judging the peer set from them. weftd overlaps these (Nodes are
//! judged as they stream in and the kernel's writes start early), so they
//! add up to more than their share of the sync; the kernel writes are
//! weftd's own reconcile time, from its metrics.

use std::time::Instant;

use kube::core::ObjectList;
use serde::Serialize;

use super::{NETWORK, bench_err};
use crate::cluster;
use crate::lab::{Lab, LabError};
use weftd::annotations::{DEFAULT_PREFIX, Names};
use weftd::family::PerFamily;
use weftd::lease::judge::{Context, Subnets};
use weftd::lease::kube::node::SlimNode;

/// weftd's page size (its watcher's first list).
const PAGE: u32 = 100;

#[derive(Debug, Clone, Default, Serialize)]
pub struct Phases {
    /// Every page of the list, as text (the API server's work and the
    /// transfer).
    pub list_seconds: f64,
    pub list_mb: f64,
    /// The same pages asked for as protobuf (what client-go's typed
    /// clients ask for): the API server's encoding and the transfer.
    pub list_protobuf_seconds: f64,
    pub list_protobuf_mb: f64,
    /// The whole list as protobuf in one answer from the API server's
    /// watch cache (`resourceVersion=0`, where the server ignores the page
    /// size): no etcd reads.
    pub cache_protobuf_seconds: f64,
    /// The watch cache's protobuf answer into weftd's slim Nodes, with
    /// weftd's streaming decoder (what weftd does).
    pub decode_seconds: f64,
    /// The JSON pages into the same slim Nodes (how weftd decoded before).
    pub decode_json_seconds: f64,
    /// The slim Nodes' annotations judged, overlaps arbitrated: the peer set.
    pub judge_seconds: f64,
    pub peers: usize,
}

/// Times the phases against the lab's API server as it is now.
pub fn measure(lab: &Lab) -> Result<Phases, LabError> {
    let admin = lab.admin_kubeconfig();
    let pages = lab.block_on(|| async move {
        let client = cluster::client(&admin).await?;
        let mut pages = Vec::new();
        let mut cont = String::new();
        let t0 = Instant::now();
        loop {
            let mut url = format!("/api/v1/nodes?limit={PAGE}");
            if !cont.is_empty() {
                url.push_str(&format!("&continue={cont}"));
            }
            let req = http::Request::get(url)
                .body(Vec::new())
                .map_err(|e| bench_err(&e.to_string()))?;
            let text = client
                .request_text(req)
                .await
                .map_err(|e| bench_err(&format!("listing Nodes: {e}")))?;
            let next = continue_of(&text);
            pages.push(text);
            if next.is_empty() {
                break;
            }
            cont = next;
        }
        Ok::<_, LabError>((pages, t0.elapsed().as_secs_f64()))
    })??;
    let (pages, list_seconds) = pages;
    let admin = lab.admin_kubeconfig();
    let (list_protobuf_mb, list_protobuf_seconds, _) =
        lab.block_on(|| async move { list_protobuf(&admin, false).await })??;
    let admin = lab.admin_kubeconfig();
    let (_, cache_protobuf_seconds, cached) =
        lab.block_on(|| async move { list_protobuf(&admin, true).await })??;
    let list_mb = pages.iter().map(String::len).sum::<usize>() as f64 / 1e6;

    let t0 = Instant::now();
    let mut from_json: Vec<SlimNode> = Vec::new();
    for p in &pages {
        let list: ObjectList<SlimNode> =
            serde_json::from_str(p).map_err(|e| bench_err(&format!("decoding a page: {e}")))?;
        from_json.extend(list.items);
    }
    let decode_json_seconds = t0.elapsed().as_secs_f64();
    drop(from_json);

    // As weftd reads it: in the pieces a TLS stream delivers.
    let t0 = Instant::now();
    let mut nodes: Vec<SlimNode> = Vec::new();
    for body in &cached {
        let mut d = weftd::lease::kube::proto::Decoder::new();
        for piece in body.chunks(16 * 1024) {
            d.feed(piece, &mut |n| nodes.push(n))
                .map_err(|e| bench_err(&e.to_string()))?;
        }
        d.finish().map_err(|e| bench_err(&e.to_string()))?;
    }
    let decode_seconds = t0.elapsed().as_secs_f64();

    let names = Names::new(DEFAULT_PREFIX).map_err(|e| bench_err(&e.to_string()))?;
    let network: ipnetwork::IpNetwork = NETWORK.parse().map_err(|e| bench_err(&format!("{e}")))?;
    let ctx = Context {
        fields: weftd::lease::kube::fields(&names),
        own_name: "node-1".into(),
        families: PerFamily {
            v4: Some(Subnets {
                network,
                local_subnet: "10.244.0.0/24"
                    .parse()
                    .map_err(|e| bench_err(&format!("{e}")))?,
                local_ip: "198.51.100.11"
                    .parse()
                    .map_err(|e| bench_err(&format!("{e}")))?,
            }),
            v6: None,
        },
        codec: weftd::vxlan::codec(1),
    };
    let t0 = Instant::now();
    let records: Vec<_> = nodes.iter().map(|n| n.record(&names)).collect();
    let set = weftd::lease::peers::derive(&ctx, &records);
    let judge_seconds = t0.elapsed().as_secs_f64();
    Ok(Phases {
        list_seconds,
        list_mb,
        list_protobuf_seconds,
        list_protobuf_mb,
        cache_protobuf_seconds,
        decode_seconds,
        decode_json_seconds,
        judge_seconds,
        peers: set.peers.v4.len(),
    })
}

/// Every page of the Node list as protobuf (`cache`: in one answer from
/// the watch cache): (MB, seconds, the answers). Each page's continue
/// token is read with weftd's decoder, its Nodes left undecoded.
async fn list_protobuf(
    admin: &std::path::Path,
    cache: bool,
) -> Result<(f64, f64, Vec<bytes::Bytes>), LabError> {
    let client = cluster::client(admin).await?;
    let mut cont = String::new();
    let mut bytes = 0usize;
    let mut bodies = Vec::new();
    let t0 = Instant::now();
    loop {
        let mut url = format!("/api/v1/nodes?limit={PAGE}");
        if cache {
            url.push_str("&resourceVersion=0");
        }
        if !cont.is_empty() {
            url.push_str(&format!("&continue={cont}"));
        }
        let req = http::Request::get(url)
            .header("Accept", "application/vnd.kubernetes.protobuf")
            .body(Vec::new())
            .map_err(|e| bench_err(&e.to_string()))?;
        let resp = client
            .send(req.map(kube::client::Body::from))
            .await
            .map_err(|e| bench_err(&format!("listing Nodes as protobuf: {e}")))?;
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| bench_err(&format!("reading a protobuf page: {e}")))?
            .to_bytes();
        bytes += body.len();
        cont = weftd::lease::kube::proto::list_meta_of(&body)
            .map_err(|e| bench_err(&e.to_string()))?
            .continue_;
        bodies.push(body);
        if cont.is_empty() {
            break;
        }
    }
    Ok((bytes as f64 / 1e6, t0.elapsed().as_secs_f64(), bodies))
}

/// The continue token of a list page: its `metadata`, which the API server
/// writes before the items, parsed alone (the items are left for the
/// decode phase).
fn continue_of(text: &str) -> String {
    let head = text.split("\"items\":").next().unwrap_or("");
    let head = format!("{}}}", head.trim_end().trim_end_matches(','));
    serde_json::from_str::<serde_json::Value>(&head)
        .ok()
        .and_then(|v| v["metadata"]["continue"].as_str().map(str::to_string))
        .unwrap_or_default()
}
