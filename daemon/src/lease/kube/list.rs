//! Listing every Node: as protobuf (decoded while it streams in, see
//! [`super::proto`]), from the API server's watch cache at start
//! (`resourceVersion=0`, as client-go's reflector lists) or from etcd
//! after a watch expired; page by page where the server pages. A server
//! that answers JSON instead is read as JSON.

use http_body_util::BodyExt;
use kube::Client;
use kube::core::ObjectList;

use super::node::SlimNode;
use super::proto::{self, Decoder};

/// A page's size where the server pages (from etcd; the watch cache
/// answers whole).
pub const PAGE: u32 = 500;

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("listing Nodes: {0}")]
    Request(#[source] kube::Error),
    #[error("listing Nodes: the API server answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("listing Nodes: reading the answer")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error(transparent)]
    Proto(#[from] proto::ProtoError),
    #[error("listing Nodes: the JSON answer")]
    Json(#[source] serde_json::Error),
    #[error("listing Nodes: the request")]
    Build(#[source] http::Error),
}

/// Where to list from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// The watch cache (`resourceVersion=0`): fast, maybe a moment old.
    Cache,
    /// etcd, current (after the watch's version expired).
    Etcd,
}

/// Lists every Node at `url` (`/api/v1/nodes`), `page` at a time where the
/// server pages, handing each to `each` as it is decoded; the list's
/// resourceVersion, to watch from.
pub async fn list<F: Future<Output = ()>>(
    client: &Client,
    url: &str,
    from: From,
    page: u32,
    mut each: impl FnMut(SlimNode) -> F,
) -> Result<String, ListError> {
    let mut cont = String::new();
    loop {
        let mut q = format!("{url}?limit={page}");
        if from == From::Cache {
            q.push_str("&resourceVersion=0");
        }
        if !cont.is_empty() {
            q.push_str("&continue=");
            q.push_str(&cont);
        }
        // The connection closes after the answer: its read buffers grew
        // to hold a list of thousands of Nodes (half a megabyte in hyper
        // alone) and would stay that size in the pool for good.
        let req = http::Request::get(q)
            .header(
                http::header::ACCEPT,
                format!("{}, application/json", proto::CONTENT_TYPE),
            )
            .header(http::header::CONNECTION, "close")
            .body(Vec::new())
            .map_err(ListError::Build)?;
        let resp = client
            .send(req.map(kube::client::Body::from))
            .await
            .map_err(ListError::Request)?;
        let status = resp.status();
        let is_proto = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(proto::CONTENT_TYPE));
        let mut body = resp.into_body();
        if !status.is_success() {
            let bytes = whole(body).await?;
            let message = if is_proto {
                proto::status_message(&bytes)
            } else {
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v["message"].as_str().map(str::to_string))
            }
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect());
            return Err(ListError::Status {
                status: status.as_u16(),
                message,
            });
        }
        let (version, next) = if is_proto {
            let mut d = Decoder::new();
            let mut nodes = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| ListError::Body(Box::new(e)))?;
                if let Some(data) = frame.data_ref() {
                    d.feed(data, &mut |n| nodes.push(n))?;
                    for n in nodes.drain(..) {
                        each(n).await;
                    }
                }
            }
            let meta = d.finish()?;
            (meta.resource_version, meta.continue_)
        } else {
            let bytes = whole(body).await?;
            let list: ObjectList<SlimNode> =
                serde_json::from_slice(&bytes).map_err(ListError::Json)?;
            for n in list.items {
                each(n).await;
            }
            (
                list.metadata.resource_version.unwrap_or_default(),
                list.metadata.continue_.unwrap_or_default(),
            )
        };
        if next.is_empty() {
            return Ok(version);
        }
        cont = next;
    }
}

/// An answer's whole body.
async fn whole(body: kube::client::Body) -> Result<impl std::ops::Deref<Target = [u8]>, ListError> {
    Ok(body
        .collect()
        .await
        .map_err(|e| ListError::Body(Box::new(e)))?
        .to_bytes())
}
