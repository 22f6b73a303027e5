//! The Kubernetes lease source, flannel's kube subnet manager: our Node's
//! podCIDR is our subnet, flannel's annotations on it say what we are, and
//! every other Node with those annotations is a peer.

pub mod acquire;
pub mod list;
pub mod node;
pub mod proto;
pub mod watch;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use kube::Api;
use tokio::sync::watch as channel;

use super::judge::Context;
use super::{FieldNames, LeaseError, LeaseSource, OwnLease, Publish, Stored, Update};
use crate::annotations::Names;
use crate::backoff::Backoff;
use crate::chain;
use crate::family::{Family, PerFamily};
use crate::metrics::Metrics;
use node::SlimNode;

/// Our Node, through the API server.
#[derive(Debug)]
pub struct KubeSource {
    api: Api<SlimNode>,
    names: Names,
    node_name: String,
    /// Where the API server is, and what said so (for messages).
    server: String,
    /// Our Node as we found it when acquiring (what is published already).
    node: Mutex<Option<SlimNode>>,
}

impl KubeSource {
    pub fn new(api: Api<SlimNode>, names: Names, node_name: String, server: String) -> KubeSource {
        KubeSource {
            api,
            names,
            node_name,
            server,
            node: Mutex::new(None),
        }
    }

    fn node(&self) -> Option<SlimNode> {
        match self.node.lock() {
            Ok(n) => n.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// flannel's annotation names of one family.
struct Keys<'a> {
    public_ip: &'a str,
    overwrite: &'a str,
    node_public_ip: &'a str,
    data: &'a str,
}

fn keys(names: &Names, family: Family) -> Keys<'_> {
    match family {
        Family::V4 => Keys {
            public_ip: &names.public_ip,
            overwrite: &names.public_ip_overwrite,
            node_public_ip: &names.node_public_ip,
            data: &names.backend_data,
        },
        Family::V6 => Keys {
            public_ip: &names.public_ipv6,
            overwrite: &names.public_ipv6_overwrite,
            node_public_ip: &names.node_public_ipv6,
            data: &names.backend_v6_data,
        },
    }
}

impl LeaseSource for KubeSource {
    async fn acquire(&self) -> OwnLease {
        let node = acquire::wait_for_pod_cidr(&self.api, &self.node_name, &self.server).await;
        let own = own_lease(&node, &self.names);
        if let Ok(mut slot) = self.node.lock() {
            *slot = Some(node);
        }
        own
    }

    async fn publish(&self, ours: &Publish) -> Result<bool, LeaseError> {
        let wanted = wanted(&self.names, ours);
        let node = self.node().unwrap_or_default();
        acquire::publish(&self.api, &node, &wanted)
            .await
            .map_err(|e| LeaseError::Publish {
                node: self.node_name.clone(),
                how: "patching the annotations on nodes/status",
                source: Box::new(e),
            })
    }

    fn watch(&self, ctx: Context, metrics: Arc<Metrics>) -> channel::Receiver<Option<Update>> {
        watch::spawn(self.api.clone(), self.names.clone(), ctx, metrics)
    }

    fn mark_ready(&self) {
        let api = self.api.clone();
        let name = self.node_name.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new();
            while let Err(e) = acquire::set_network_available(&api, &name).await {
                tracing::warn!(error = %chain(&e), "setting NetworkUnavailable=False on node {name}; retrying");
                tokio::time::sleep(backoff.next_wait()).await;
            }
        });
    }

    fn fields(&self) -> FieldNames {
        fields(&self.names)
    }
}

/// Our lease as our Node holds it (`names`: flannel's annotations).
pub fn own_lease(node: &SlimNode, names: &Names) -> OwnLease {
    let ip = |key: &str| node.annotation(key).and_then(|s| s.parse::<IpAddr>().ok());
    OwnLease {
        name: node.name().to_string(),
        pod_cidrs: node.pod_cidrs().into_iter().map(str::to_string).collect(),
        internal_ips: node.internal_ips().filter_map(|s| s.parse().ok()).collect(),
        stored: PerFamily::from_fn(|f| {
            let k = keys(names, f);
            Stored {
                public_ip: ip(k.node_public_ip),
                overwrite: ip(k.overwrite),
                data: node.annotation(k.data).map(str::to_string),
            }
        }),
    }
}

/// The annotations we publish on our Node, by key.
pub fn wanted(names: &Names, ours: &Publish) -> BTreeMap<String, String> {
    let mut wanted = BTreeMap::from([
        (names.backend_type.clone(), ours.backend_type.clone()),
        (names.subnet_manager.clone(), "true".to_string()),
    ]);
    for (family, (ip, data)) in ours.families.present() {
        let k = keys(names, family);
        wanted.insert(k.public_ip.to_string(), ip.to_string());
        wanted.insert(k.data.to_string(), data.clone());
    }
    wanted
}

/// The annotations' names as the fields judging refers to.
pub fn fields(names: &Names) -> FieldNames {
    FieldNames {
        backend_type: names.backend_type.clone(),
        public_ip: PerFamily::from_fn(|f| keys(names, f).public_ip.to_string()),
        data: PerFamily::from_fn(|f| keys(names, f).data.to_string()),
    }
}
