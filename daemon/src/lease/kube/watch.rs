//! Watching every Node and handing on the complete peer set after every
//! change (never single events: a delete missed while weftd was down is
//! still pruned, because what is not in the list is not a peer).
//!
//! The list streams in as protobuf ([`list`]) and the watch then follows
//! from its version. During the first list what has arrived is handed on
//! as incomplete (added, nothing deleted); events that arrive together are
//! applied together and the peer set is derived once for the batch.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use kube::Api;
use kube::api::WatchParams;
use kube::runtime::watcher;
use tokio::sync::{mpsc, watch};

use super::list;
use super::node::SlimNode;
use crate::annotations::Names;
use crate::chain;
use crate::lease::judge::{self, Context, Judged, Skip};
use crate::lease::peers::PeerIndex;
use crate::lease::{Update, report};
use crate::metrics::Metrics;

/// How long the API server keeps one watch open before weftd opens the
/// next (from where it left off, out of the server's watch cache; kube's
/// default is 290 s). With the client's read timeout just above it
/// ([`READ_TIMEOUT`]), a watch whose connection died without a word (a
/// partition: nothing arrives, not even a close) is noticed within
/// [`READ_TIMEOUT`] instead of when TCP gives up or the server's
/// retransmissions get through, which took 47 s after a 60 s partition
/// healed. 5000 nodes open ~110 watches per second for it.
pub const WATCH_SECONDS: u32 = 45;

/// The longest a read from the API server may take: a watch is never
/// silent longer than [`WATCH_SECONDS`] while its connection lives.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(55);

/// Waits between attempts to watch again: 0.5 s doubling to 8 s, with
/// jitter, back to the start after 2 minutes without a failure. kube's
/// default (client-go's, and so flanneld's) doubles to 30 s: after a
/// minute-long API outage a node then saw changes up to half a minute late
/// (the lab's fault matrix measured 11.8 s in one run). 8 s keeps a
/// struggling API server's load from 5000 nodes under ~650 attempts/s.
fn watch_backoff() -> impl kube::runtime::utils::Backoff {
    let exp = backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(500))
        .with_max_delay(std::time::Duration::from_secs(8))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(
        watcher::ExponentialBackoff::from(exp),
        std::time::Duration::from_secs(120),
    )
}

/// What the Node watch hands on.
#[derive(Debug)]
enum NodeEvent {
    /// A list starts.
    Init,
    /// A Node of the list.
    InitApply(SlimNode),
    /// The list is complete.
    InitDone,
    /// A Node was added or changed.
    Apply(SlimNode),
    /// A Node was deleted.
    Delete(SlimNode),
    /// Listing or watching failed; it is retried with backoff.
    Failed(String),
}

/// Lists every Node, then watches from the list's version, forever: a
/// watch that ends is opened again from the last version seen; one whose
/// version expired (410 Gone) lists again, from etcd. Failures are handed
/// on and retried with [`watch_backoff`]. Ends when nobody listens.
async fn produce(api: Api<SlimNode>, tx: mpsc::Sender<NodeEvent>) {
    let client = api.clone().into_client();
    let url = api.resource_url().to_string();
    let mut backoff = watch_backoff();
    let mut version: Option<String> = None;
    let mut from = list::From::Cache;
    loop {
        let failed = match version.clone() {
            None => {
                if tx.send(NodeEvent::Init).await.is_err() {
                    return;
                }
                let listed = list::list(&client, &url, from, list::PAGE, |n| {
                    let tx = tx.clone();
                    async move {
                        let _ = tx.send(NodeEvent::InitApply(n)).await;
                    }
                })
                .await;
                match listed {
                    Ok(v) => {
                        version = Some(v);
                        if tx.send(NodeEvent::InitDone).await.is_err() {
                            return;
                        }
                        None
                    }
                    Err(e) => Some(chain(&e)),
                }
            }
            Some(since) => match watch_from(&api, &since, &tx).await {
                Watched::Ended(last) => {
                    version = last.or(version);
                    None
                }
                // List again, from etcd: the cache may be as old.
                Watched::Expired => {
                    version = None;
                    from = list::From::Etcd;
                    None
                }
                Watched::Failed(last, why) => {
                    version = last.or(version);
                    Some(why)
                }
                Watched::Closed => return,
            },
        };
        if let Some(why) = failed {
            if tx.send(NodeEvent::Failed(why)).await.is_err() {
                return;
            }
            tokio::time::sleep(backoff.next().unwrap_or(MAX_WAIT)).await;
        }
    }
}

/// How one watch ended (with the last resourceVersion it saw, if any).
enum Watched {
    /// The server ended it (its timeout): watch again from there.
    Ended(Option<String>),
    /// Its version is too old (410 Gone).
    Expired,
    Failed(Option<String>, String),
    /// Nobody listens any more.
    Closed,
}

/// One watch from `since`, its events handed on.
async fn watch_from(api: &Api<SlimNode>, since: &str, tx: &mpsc::Sender<NodeEvent>) -> Watched {
    use kube::api::WatchEvent;
    let params = WatchParams::default().timeout(WATCH_SECONDS);
    let stream = match api.watch(&params, since).await {
        Ok(stream) => stream,
        // Some servers refuse an expired version at once, not as an event.
        Err(kube::Error::Api(s)) if s.code == 410 => return Watched::Expired,
        Err(e) => return Watched::Failed(None, chain(&e)),
    };
    let mut stream = std::pin::pin!(stream);
    let mut last: Option<String> = None;
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(WatchEvent::Added(n) | WatchEvent::Modified(n)) => {
                last = n.metadata.resource_version.clone().or(last);
                NodeEvent::Apply(n)
            }
            Ok(WatchEvent::Deleted(n)) => {
                last = n.metadata.resource_version.clone().or(last);
                NodeEvent::Delete(n)
            }
            Ok(WatchEvent::Bookmark(b)) => {
                last = Some(b.metadata.resource_version);
                continue;
            }
            Ok(WatchEvent::Error(s)) if s.code == 410 => return Watched::Expired,
            Ok(WatchEvent::Error(s)) => {
                let why = format!("the watch ended with {}: {}", s.code, s.message);
                return Watched::Failed(last, why);
            }
            Err(e) => return Watched::Failed(last, chain(&e)),
        };
        if tx.send(ev).await.is_err() {
            return Watched::Closed;
        }
    }
    Watched::Ended(last)
}

/// Nodes in the first partial set handed on during the first list.
const FIRST_PART: usize = 250;

/// The longest wait between attempts.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(8);

/// Starts the watch; the receiver sees `None` until the first page.
pub fn spawn(
    api: Api<SlimNode>,
    names: Names,
    ctx: Context,
    metrics: Arc<Metrics>,
) -> watch::Receiver<Option<Update>> {
    let (tx, rx) = watch::channel(None);
    // A short queue: the list streams in as fast as Nodes are judged.
    let (events_tx, mut events) = mpsc::channel(256);
    tokio::spawn(produce(api, events_tx));
    tokio::spawn(async move {
        // Only the judgement of each node is kept, not the node.
        let mut index = PeerIndex::new(ctx);
        let mut listing: Option<Vec<Judged>> = None;
        let mut listed = false;
        // Nodes in the index when a partial set was last handed on.
        let mut handed = 0;
        let mut warned: BTreeSet<Skip> = BTreeSet::new();
        // An outage is one warning when it starts and one line when it
        // ends, not a line per retry: (since, failed attempts).
        let mut failing: Option<(std::time::Instant, u32)> = None;
        loop {
            // Nobody listening any more (the agent set up again after an
            // underlay change): stop watching.
            let first = tokio::select! {
                ev = events.recv() => match ev {
                    Some(ev) => ev,
                    None => break,
                },
                () = tx.closed() => return,
            };
            let mut changed = false;
            let mut item = Some(first);
            // Take every event that is already here before deriving.
            while let Some(ev) = item {
                metrics.node_event();
                match (&ev, &mut failing) {
                    (NodeEvent::Failed(e), None) => {
                        tracing::warn!(error = %e, "watching Nodes failed; retrying with backoff (until it is back, further failures are logged at debug level)");
                        failing = Some((std::time::Instant::now(), 1));
                    }
                    (NodeEvent::Failed(e), Some((_, n))) => {
                        *n += 1;
                        tracing::debug!(error = %e, attempt = *n, "watching Nodes failed again");
                    }
                    (_, Some((since, n))) => {
                        tracing::info!(
                            failed_attempts = *n,
                            seconds = since.elapsed().as_secs(),
                            "watching Nodes again"
                        );
                        failing = None;
                    }
                    (_, None) => {}
                }
                match ev {
                    // The first list builds the index as Nodes arrive; a
                    // relist (after 410 Gone, or a first list that failed
                    // half way) replaces it whole at the end.
                    NodeEvent::Init => {
                        if listed {
                            tracing::info!(
                                "listing every Node again (the watch's resourceVersion expired: 410 Gone)"
                            );
                        }
                        listing = (listed || !index.is_empty()).then(Vec::new);
                    }
                    NodeEvent::InitApply(n) => {
                        let j = judge::judge(index.context(), &n.record(&names));
                        match listing.as_mut() {
                            Some(l) => l.extend(j),
                            None => {
                                index.upsert(n.name(), j);
                                changed = true;
                            }
                        }
                    }
                    NodeEvent::InitDone => {
                        if let Some(l) = listing.take() {
                            index.replace_all(l);
                        }
                        listed = true;
                        changed = true;
                    }
                    NodeEvent::Apply(n) => {
                        let j = judge::judge(index.context(), &n.record(&names));
                        index.upsert(n.name(), j);
                        changed = true;
                    }
                    NodeEvent::Delete(n) => {
                        index.remove(n.name());
                        changed = true;
                    }
                    NodeEvent::Failed(_) => {}
                }
                item = events.try_recv().ok();
            }
            if !changed || listing.is_some() {
                continue;
            }
            // While the first list streams in, a part is handed on early
            // (the kernel's writes, the longest part of a sync, start at
            // once) and then each time the index grew by a quarter: each
            // costs a pass over all so far, so the passes add up to a few
            // over the whole list.
            if !listed {
                if index.len() < (handed + handed / 4).max(FIRST_PART) {
                    continue;
                }
                handed = index.len();
            }
            let t0 = std::time::Instant::now();
            let set = index.peer_set();
            tracing::debug!(us = t0.elapsed().as_micros() as u64, "peer set assembled");
            if listed {
                report(&set, &mut warned, &metrics);
            }
            let update = Update {
                set: Arc::new(set),
                complete: listed,
            };
            if tx.send(Some(update)).is_err() {
                return;
            }
        }
    });
    rx
}
