//! flannel's etcd subnet manager as a lease source, on etcd's v3 API and
//! compatible with flanneld's, so weft and flannel nodes share one etcd:
//! the network configuration at `<prefix>/config`, one lease per node at
//! `<prefix>/subnets/<key>` ([`codec`]) attached to an etcd lease with
//! flannel's TTL (24 h) and renewed `--subnet-lease-renew-margin` before it
//! runs out; a lease chosen as flanneld chooses ([`alloc`]) and created in
//! a transaction that fails if the key exists (a lost race is tried again,
//! which flanneld means to do but does not). Peers come from a list, then
//! a watch resumed from the last revision; a revision compacted away means
//! a new list, level-triggered like the Kubernetes source. One unreadable
//! lease is skipped alone (flanneld forgets every lease then).

pub mod alloc;
pub mod codec;

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::watch;

use self::alloc::{Choice, Existing};
use self::codec::{Attrs, SubnetKey};
use super::judge::{self, Context};
use super::peers::PeerIndex;
use super::{
    Claim, Claimed, FieldNames, LeaseError, LeaseSource, OwnLease, OwnedRecord, Publish, Update,
    report,
};
use crate::backoff::Backoff;
use crate::config::{NetConfig, SubnetRange};
use crate::family::{Family, PerFamily};
use crate::metrics::Metrics;

/// flanneld's lease TTL.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// flanneld's `--etcd-prefix`.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";
/// How often a lost creation race is tried again.
const RACE_RETRIES: usize = 10;

/// How to reach etcd and keep our lease.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub cafile: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Renew this long before the lease runs out.
    pub renew_margin: Duration,
    /// The lease's TTL (flanneld's 24 h; shorter for tests).
    pub ttl: Duration,
}

fn etcd_err(what: impl Into<String>) -> impl FnOnce(etcd_client::Error) -> LeaseError {
    let what = what.into();
    move |e| LeaseError::Etcd {
        what,
        source: Box::new(e),
    }
}

/// A client for `opts`: TLS when a client certificate and key are given
/// or an endpoint is `https://` (the CA file, if any, as the only root),
/// user and password when given.
pub async fn connect(opts: &EtcdOptions) -> Result<Client, LeaseError> {
    let mut co = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_timeout(Duration::from_secs(15))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    if let (Some(u), Some(p)) = (&opts.username, &opts.password) {
        co = co.with_user(u, p);
    }
    let https = opts.endpoints.iter().any(|e| e.starts_with("https://"));
    if https || opts.certfile.is_some() {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| LeaseError::Etcd {
                what: format!("reading {}", p.display()),
                source: Box::new(e),
            })
        };
        let mut tls = TlsOptions::new();
        if let Some(ca) = &opts.cafile {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&opts.certfile, &opts.keyfile) {
            (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => {
                return Err(LeaseError::Allocation(
                    "--etcd-certfile and --etcd-keyfile go together".into(),
                ));
            }
        }
        co = co.with_tls(tls);
    }
    Client::connect(&opts.endpoints, Some(co))
        .await
        .map_err(etcd_err(format!(
            "connecting to {}",
            opts.endpoints.join(",")
        )))
}

/// The network configuration at `<prefix>/config`, waited for (flanneld
/// asks every second): absent or not valid, it is said once per change.
pub async fn config(client: &Client, prefix: &str) -> NetConfig {
    let key = format!("{prefix}/config");
    let mut said = String::new();
    loop {
        let problem = match client.kv_client().get(key.as_str(), None).await {
            Ok(r) => match r.kvs().first() {
                None => format!(
                    "no network configuration at {key} in etcd (write net-conf.json's JSON there)"
                ),
                Some(kv) => match NetConfig::parse(&String::from_utf8_lossy(kv.value())) {
                    Ok(c) => match ranges(&c) {
                        Ok(_) => return c,
                        Err(e) => format!("{key}: {}", crate::chain(&e)),
                    },
                    Err(e) => format!("{key}: {}", crate::chain(&e)),
                },
            },
            Err(e) => format!("reading {key}: {e}"),
        };
        if problem != said {
            tracing::warn!("{problem}; asking again every second");
            said = problem;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Each enabled family's subnet range; IPv4 must be on (flanneld's etcd
/// leases always carry an IPv4 subnet).
pub fn ranges(cfg: &NetConfig) -> Result<PerFamily<Option<SubnetRange>>, LeaseError> {
    let Some(v4) = &cfg.ipv4 else {
        return Err(LeaseError::Allocation(
            "EnableIPv4 is false: flannel's etcd leases always hold an IPv4 subnet".into(),
        ));
    };
    let bad = |e: crate::config::ConfigError| LeaseError::Allocation(e.to_string());
    Ok(PerFamily {
        v4: Some(v4.subnet_range().map_err(bad)?),
        v6: cfg
            .ipv6
            .as_ref()
            .map(|f| f.subnet_range())
            .transpose()
            .map_err(bad)?,
    })
}

/// What we hold in etcd.
#[derive(Debug, Default)]
struct Own {
    key: Option<SubnetKey>,
    /// The etcd lease our key is attached to (0: a reservation, no TTL).
    lease: i64,
    /// When the lease runs out.
    expires: Option<Instant>,
    attrs: Attrs,
    /// The value last written.
    written: String,
}

/// The etcd source.
#[derive(Clone)]
pub struct EtcdSource {
    client: Client,
    opts: EtcdOptions,
    ranges: PerFamily<Option<SubnetRange>>,
    node_name: String,
    own: Arc<Mutex<Own>>,
}

impl std::fmt::Debug for EtcdSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSource")
            .field("endpoints", &self.opts.endpoints)
            .field("prefix", &self.opts.prefix)
            .finish_non_exhaustive()
    }
}

fn random_below(n: usize) -> usize {
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (r % n.max(1) as u64) as usize
}

/// The lease of `kv` if its key is a lease's (below `subnets`).
fn read_lease(subnets: &str, kv: &KeyValue) -> Option<OwnedRecord> {
    let key = String::from_utf8_lossy(kv.key());
    let name = key.strip_prefix(subnets)?.to_string();
    let Some(sk) = SubnetKey::parse(&name) else {
        tracing::debug!(key = %key, "not a subnet lease; skipped");
        return None;
    };
    let mut pod_cidrs = vec![sk.v4.to_string()];
    pod_cidrs.extend(sk.v6.map(|n| n.to_string()));
    let value = String::from_utf8_lossy(kv.value());
    let attrs = Attrs::decode(&value).unwrap_or_else(|e| {
        tracing::warn!(key = %key, "unreadable lease value ({e}); the peer will be skipped");
        Attrs::default()
    });
    Some(OwnedRecord {
        name,
        // Older first, as the Kubernetes source orders by creation.
        created: format!("{:020}", kv.create_revision()),
        pod_cidrs,
        backend_type: attrs.backend_type,
        public_ip: PerFamily {
            v4: attrs.public_ip.map(|a| a.to_string()),
            v6: attrs.public_ipv6.map(|a| a.to_string()),
        },
        data: PerFamily {
            v4: attrs.backend_data,
            v6: attrs.backend_v6_data,
        },
    })
}

impl EtcdSource {
    pub fn new(
        client: Client,
        opts: EtcdOptions,
        cfg: &NetConfig,
        node_name: String,
    ) -> Result<EtcdSource, LeaseError> {
        Ok(EtcdSource {
            client,
            ranges: ranges(cfg)?,
            opts,
            node_name,
            own: Arc::new(Mutex::new(Own::default())),
        })
    }

    fn subnets(&self) -> String {
        format!("{}/subnets/", self.opts.prefix)
    }

    fn key(&self, k: &SubnetKey) -> String {
        format!("{}{}", self.subnets(), k.text())
    }

    fn with_own<R>(&self, f: impl FnOnce(&mut Own) -> R) -> R {
        match self.own.lock() {
            Ok(mut o) => f(&mut o),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    fn ttl_secs(&self) -> i64 {
        i64::try_from(self.opts.ttl.as_secs().max(1)).unwrap_or(i64::MAX)
    }

    async fn grant(&self) -> Result<i64, LeaseError> {
        let r = self
            .client
            .lease_client()
            .grant(self.ttl_secs(), None)
            .await
            .map_err(etcd_err("granting a lease"))?;
        Ok(r.id())
    }

    /// Every lease below `<prefix>/subnets/`, for the allocator.
    async fn existing(&self) -> Result<Vec<Existing>, LeaseError> {
        let subnets = self.subnets();
        let r = self
            .client
            .kv_client()
            .get(subnets.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(etcd_err(format!("listing {subnets}")))?;
        Ok(r.kvs()
            .iter()
            .filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let key = SubnetKey::parse(key.strip_prefix(subnets.as_str())?)?;
                Some(Existing {
                    key,
                    attrs: Attrs::decode(&String::from_utf8_lossy(kv.value())).ok(),
                    lease: kv.lease(),
                })
            })
            .collect())
    }

    /// Writes `attrs` at our key, attached to our etcd lease (a fresh one
    /// when ours is gone); remembers what was written.
    async fn write(&self, attrs: &Attrs) -> Result<(), LeaseError> {
        let (key, lease) = self.with_own(|o| (o.key, o.lease));
        let Some(key) = key else {
            return Err(LeaseError::Allocation("no lease claimed yet".into()));
        };
        let value = attrs.encode();
        let put = |lease: i64| {
            let mut client = self.client.kv_client();
            let key = self.key(&key);
            let value = value.clone();
            async move {
                let opts = (lease != 0).then(|| PutOptions::new().with_lease(lease));
                client.put(key, value, opts).await
            }
        };
        let lease = match put(lease).await {
            Ok(_) => lease,
            // Our etcd lease ran out meanwhile: a fresh one.
            Err(e) if lease != 0 && e.to_string().contains("lease not found") => {
                let fresh = self.grant().await?;
                put(fresh)
                    .await
                    .map_err(etcd_err(format!("writing {}", self.key(&key))))?;
                self.with_own(|o| o.expires = Some(Instant::now() + self.opts.ttl));
                fresh
            }
            Err(e) => return Err(etcd_err(format!("writing {}", self.key(&key)))(e)),
        };
        self.with_own(|o| {
            o.lease = lease;
            o.attrs = attrs.clone();
            o.written = value;
        });
        Ok(())
    }

    /// Renews our lease `renew_margin` before it runs out, for as long as
    /// the process lives: a new etcd lease, the same value (flanneld's
    /// way); a failure is tried again a minute later.
    fn spawn_renewer(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let (lease, expires) = me.with_own(|o| (o.lease, o.expires));
                let Some(expires) = expires else { return };
                if lease == 0 {
                    return; // a reservation does not run out
                }
                // A margin as long as the TTL (a short test TTL) would
                // renew without pause: at most half of it.
                let margin = me.opts.renew_margin.min(me.opts.ttl / 2);
                let at = expires.checked_sub(margin).unwrap_or_else(Instant::now);
                tokio::time::sleep_until(at.into()).await;
                let renewed = async {
                    // What is ours now (published since we went to sleep).
                    let attrs = me.with_own(|o| o.attrs.clone());
                    let fresh = me.grant().await?;
                    me.with_own(|o| o.lease = fresh);
                    me.write(&attrs).await?;
                    me.with_own(|o| o.expires = Some(Instant::now() + me.opts.ttl));
                    Ok::<_, LeaseError>(fresh)
                };
                match renewed.await {
                    Ok(id) => tracing::info!(lease = id, "etcd lease renewed"),
                    Err(e) => {
                        tracing::warn!(error = %crate::chain(&e), "renewing our etcd lease failed; trying again in a minute");
                        tokio::time::sleep(Duration::from_secs(60).min(me.opts.renew_margin)).await;
                    }
                }
            }
        });
    }
}

impl LeaseSource for EtcdSource {
    async fn acquire(&self) -> OwnLease {
        OwnLease {
            name: self.node_name.clone(),
            ..OwnLease::default()
        }
    }

    async fn claim(&self, claim: &Claim) -> Result<Option<Claimed>, LeaseError> {
        let Some(IpAddr::V4(ip4)) = claim.public_ip.v4 else {
            return Err(LeaseError::Allocation(
                "no IPv4 public IP: flannel's etcd leases are found by it".into(),
            ));
        };
        let ip6 = match claim.public_ip.v6 {
            Some(IpAddr::V6(a)) => Some(a),
            _ => None,
        };
        for attempt in 1..=RACE_RETRIES {
            let existing = self.existing().await?;
            let plan = alloc::choose(&existing, &self.ranges, ip4, &claim.previous, random_below)
                .map_err(LeaseError::Allocation)?;
            if let Some(stale) = plan.delete {
                tracing::warn!(lease = %stale.text(), "our lease no longer fits the network configuration; deleting it");
                self.client
                    .kv_client()
                    .delete(self.key(&stale), None)
                    .await
                    .map_err(etcd_err(format!("deleting {}", self.key(&stale))))?;
            }
            let mut attrs = Attrs {
                public_ip: Some(ip4),
                public_ipv6: ip6,
                backend_type: claim.backend_type.clone(),
                backend_data: None,
                backend_v6_data: None,
            };
            let key = match plan.choice {
                Choice::Reuse {
                    key,
                    lease,
                    attrs: old,
                } => {
                    // Until the backend is up: the data of last time (a
                    // VTEP MAC kept), if the backend is the same.
                    if old.backend_type == claim.backend_type {
                        attrs.backend_data = old.backend_data;
                        attrs.backend_v6_data = old.backend_v6_data;
                    }
                    let lease = if lease == 0 { 0 } else { self.grant().await? };
                    self.with_own(|o| {
                        o.key = Some(key);
                        o.lease = lease;
                        o.expires = (lease != 0).then(|| Instant::now() + self.opts.ttl);
                    });
                    self.write(&attrs).await?;
                    tracing::info!(lease = %key.text(), reservation = lease == 0, "reusing our lease");
                    key
                }
                Choice::Create(key) => {
                    let lease = self.grant().await?;
                    let k = self.key(&key);
                    let value = attrs.encode();
                    let txn = Txn::new()
                        .when([Compare::version(k.as_str(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(
                            k.as_str(),
                            value.as_str(),
                            Some(PutOptions::new().with_lease(lease)),
                        )]);
                    let r = self
                        .client
                        .kv_client()
                        .txn(txn)
                        .await
                        .map_err(etcd_err(format!("creating {k}")))?;
                    if !r.succeeded() {
                        tracing::info!(lease = %key.text(), attempt, "another node took this subnet first; choosing again");
                        let _ = self.client.lease_client().revoke(lease).await;
                        continue;
                    }
                    self.with_own(|o| {
                        o.key = Some(key);
                        o.lease = lease;
                        o.expires = Some(Instant::now() + self.opts.ttl);
                        o.attrs = attrs.clone();
                        o.written = value;
                    });
                    tracing::info!(lease = %key.text(), "new lease created");
                    key
                }
            };
            self.spawn_renewer();
            let mut pod_cidrs = vec![key.v4.to_string()];
            pod_cidrs.extend(key.v6.map(|n| n.to_string()));
            return Ok(Some(Claimed {
                name: key.text(),
                pod_cidrs,
                data: PerFamily {
                    v4: attrs.backend_data,
                    v6: attrs.backend_v6_data,
                },
            }));
        }
        Err(LeaseError::Allocation(format!(
            "lost the race for a free subnet {RACE_RETRIES} times in a row"
        )))
    }

    async fn publish(&self, ours: &Publish) -> Result<bool, LeaseError> {
        let mut attrs = self.with_own(|o| o.attrs.clone());
        attrs.backend_type = ours.backend_type.clone();
        for (family, fam) in ours.families.iter() {
            let Some((ip, data)) = fam else { continue };
            // flanneld's backends without data (host-gw, udp) leave
            // BackendData out of the value (an empty json.RawMessage).
            let data = Some(data.clone()).filter(|d| d != "null");
            match (family, ip) {
                (Family::V4, IpAddr::V4(a)) => {
                    attrs.public_ip = Some(*a);
                    attrs.backend_data = data;
                }
                (Family::V6, IpAddr::V6(a)) => {
                    attrs.public_ipv6 = Some(*a);
                    attrs.backend_v6_data = data;
                }
                _ => {}
            }
        }
        if self.with_own(|o| o.written == attrs.encode()) {
            return Ok(false);
        }
        self.write(&attrs).await?;
        Ok(true)
    }

    fn watch(&self, ctx: Context, metrics: Arc<Metrics>) -> watch::Receiver<Option<Update>> {
        let (tx, rx) = watch::channel(None);
        let me = self.clone();
        tokio::spawn(async move {
            let subnets = me.subnets();
            let mut index = PeerIndex::new(ctx);
            let mut warned = Default::default();
            let mut backoff = Backoff::new();
            'list: loop {
                let listed = me
                    .client
                    .kv_client()
                    .get(subnets.as_str(), Some(GetOptions::new().with_prefix()))
                    .await;
                let r = match listed {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "listing leases in etcd; trying again");
                        tokio::time::sleep(backoff.next_wait()).await;
                        continue 'list;
                    }
                };
                let leases: BTreeMap<String, OwnedRecord> = r
                    .kvs()
                    .iter()
                    .filter_map(|kv| read_lease(&subnets, kv))
                    .map(|l| (l.name.clone(), l))
                    .collect();
                index.replace_all(
                    leases
                        .values()
                        .filter_map(|l| judge::judge(index.context(), &l.record()))
                        .collect::<Vec<_>>(),
                );
                let mut since = r.header().map_or(0, |h| h.revision()) + 1;
                if !send(&tx, &mut index, &mut warned, &metrics) {
                    return;
                }
                loop {
                    let opts = WatchOptions::new().with_prefix().with_start_revision(since);
                    let mut stream = match me
                        .client
                        .watch_client()
                        .watch(subnets.as_str(), Some(opts))
                        .await
                    {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::warn!(error = %e, "watching leases in etcd; trying again");
                            tokio::time::sleep(backoff.next_wait()).await;
                            continue;
                        }
                    };
                    loop {
                        let resp = match stream.message().await {
                            Ok(Some(r)) => r,
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(error = %e, "the etcd watch broke; watching again from revision {since}");
                                break;
                            }
                        };
                        if resp.compact_revision() > 0 {
                            tracing::warn!(
                                compacted = resp.compact_revision(),
                                since,
                                "etcd compacted past our revision; listing again"
                            );
                            continue 'list;
                        }
                        if resp.canceled() {
                            tracing::warn!(
                                reason = resp.cancel_reason(),
                                "the etcd watch was cancelled; listing again"
                            );
                            continue 'list;
                        }
                        backoff = Backoff::new();
                        let mut changed = false;
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            let key = String::from_utf8_lossy(kv.key());
                            let Some(name) = key.strip_prefix(subnets.as_str()) else {
                                continue;
                            };
                            metrics.node_event();
                            match ev.event_type() {
                                EventType::Put => {
                                    if let Some(l) = read_lease(&subnets, kv) {
                                        let j = judge::judge(index.context(), &l.record());
                                        index.upsert(&l.name, j);
                                        changed = true;
                                    }
                                }
                                EventType::Delete => {
                                    index.remove(name);
                                    changed = true;
                                }
                            }
                        }
                        if let Some(h) = resp.header() {
                            since = since.max(h.revision() + 1);
                        }
                        if changed && !send(&tx, &mut index, &mut warned, &metrics) {
                            return;
                        }
                    }
                    tokio::time::sleep(backoff.next_wait()).await;
                }
            }
        });
        rx
    }

    /// flanneld's etcd mode has no readiness to tell.
    fn mark_ready(&self) {}

    fn fields(&self) -> FieldNames {
        FieldNames {
            backend_type: "BackendType".into(),
            public_ip: PerFamily {
                v4: "PublicIP".into(),
                v6: "PublicIPv6".into(),
            },
            data: PerFamily {
                v4: "BackendData".into(),
                v6: "BackendV6Data".into(),
            },
        }
    }
}

/// Hands on the complete peer set; false once nobody listens.
fn send(
    tx: &watch::Sender<Option<Update>>,
    index: &mut PeerIndex,
    warned: &mut std::collections::BTreeSet<super::Skip>,
    metrics: &Metrics,
) -> bool {
    let set = index.peer_set();
    report(&set, warned, metrics);
    tx.send(Some(Update {
        set: Arc::new(set),
        complete: true,
    }))
    .is_ok()
}
