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
        let config = watcher::Config::default()
            .page_size(100)
            .timeout(WATCH_SECONDS);
        let stream = watcher(api, config).backoff(watch_backoff());
        let mut stream = std::pin::pin!(stream);
        loop {
            // Nobody listening any more (the agent set up again after an
            // underlay change): stop watching.
            let first = tokio::select! {
                ev = stream.next() => match ev {
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
                    Ok(watcher::Event::Init) => {
                        if listed {
                            tracing::info!(
                                "listing every Node again (the watch's resourceVersion expired: 410 Gone)"
                            );
                        }
                        listing = listed.then(Vec::new);
                    }
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
