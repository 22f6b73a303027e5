//! Watching every Node and handing on the complete peer set after every
//! change (never single events: a delete missed while weftd was down is
//! still pruned, because what is not in the list is not a peer).
//!
//! During the initial list nothing is handed on until the list is complete;
//! events that arrive together are applied together and the peer set is
//! derived once for the batch.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::{FutureExt, StreamExt};
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use super::node::SlimNode;
use crate::annotations::Names;
use crate::lease::judge::{self, Context, Judged, Skip};
use crate::lease::peers::PeerIndex;
use crate::lease::{Update, report};
use crate::metrics::Metrics;

/// Starts the watch; the receiver sees `None` until the first page.
pub fn spawn(
    api: Api<SlimNode>,
    names: Names,
    ctx: Context,
    metrics: Arc<Metrics>,
) -> watch::Receiver<Option<Update>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        // Only the judgement of each node is kept, not the node.
        let mut index = PeerIndex::new(ctx);
        let mut listing: Option<Vec<Judged>> = None;
        let mut listed = false;
        let mut warned: BTreeSet<Skip> = BTreeSet::new();
        // An outage is one warning when it starts and one line when it
        // ends, not a line per retry: (since, failed attempts).
        let mut failing: Option<(std::time::Instant, u32)> = None;
        // Small pages: with 5000 Nodes of ~10 KB a page of 100 is ~1 MB,
        // so memory peaks at a fraction of one big list, and each page is
        // judged while the next is on its way (measured: faster than one
        // list from the watch cache, and peak RSS 18 MB instead of 36).
        let config = watcher::Config::default().page_size(100);
        let stream = watcher(api, config).default_backoff();
        let mut stream = std::pin::pin!(stream);
        while let Some(first) = stream.next().await {
            let mut changed = false;
            let mut item = Some(first);
            // Take every event that is already here before deriving.
            while let Some(ev) = item {
                metrics.node_event();
                match (&ev, &mut failing) {
                    (Err(e), None) => {
                        tracing::warn!(error = %e, "watching Nodes failed; retrying with backoff (until it is back, further failures are logged at debug level)");
                        failing = Some((std::time::Instant::now(), 1));
                    }
                    (Err(e), Some((_, n))) => {
                        *n += 1;
                        tracing::debug!(error = %e, attempt = *n, "watching Nodes failed again");
                    }
                    (Ok(_), Some((since, n))) => {
                        tracing::info!(
                            failed_attempts = *n,
                            seconds = since.elapsed().as_secs(),
                            "watching Nodes again"
                        );
                        failing = None;
                    }
                    (Ok(_), None) => {}
                }
                match ev {
                    // The first list builds the index page by page; a relist
                    // (after 410 Gone) replaces it whole at the end.
                    Ok(watcher::Event::Init) => listing = listed.then(Vec::new),
                    Ok(watcher::Event::InitApply(n)) => {
                        let j = judge::judge(index.context(), &n.record(&names));
                        match listing.as_mut() {
                            Some(l) => l.extend(j),
                            None => {
                                index.upsert(n.name(), j);
                                changed = true;
                            }
                        }
                    }
                    Ok(watcher::Event::InitDone) => {
                        if let Some(l) = listing.take() {
                            index.replace_all(l);
                        }
                        listed = true;
                        changed = true;
                    }
                    Ok(watcher::Event::Apply(n)) => {
                        let j = judge::judge(index.context(), &n.record(&names));
                        index.upsert(n.name(), j);
                        changed = true;
                    }
                    Ok(watcher::Event::Delete(n)) => {
                        index.remove(n.name());
                        changed = true;
                    }
                    Err(_) => {}
                }
                item = stream.next().now_or_never().flatten();
            }
            if !changed || listing.is_some() {
                continue;
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
