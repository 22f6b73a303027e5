//! The slice of a Node weft keeps. A Node in a real cluster is ~10 KB (status
//! with images, conditions, managed fields); weft deserializes only name,
//! creation time, annotations, podCIDRs and addresses, and drops the rest
//! while parsing, so 5000 Nodes cost little memory.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::{Deserialize, Deserializer};

use crate::annotations::Names;
use crate::family::PerFamily;
use crate::lease::Record;

/// A Node, as weft watches it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SlimNode {
    #[serde(deserialize_with = "slim_meta")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: SlimSpec,
    #[serde(default)]
    pub status: SlimStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlimSpec {
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs")]
    pub pod_cidrs: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SlimStatus {
    #[serde(default)]
    pub addresses: Vec<SlimAddress>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SlimAddress {
    #[serde(rename = "type")]
    pub type_: String,
    pub address: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaFields {
    name: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    creation_timestamp: Option<Time>,
    deletion_timestamp: Option<Time>,
    annotations: Option<BTreeMap<String, String>>,
}

fn slim_meta<'de, D: Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    let m = MetaFields::deserialize(d)?;
    Ok(ObjectMeta {
        name: m.name,
        uid: m.uid,
        resource_version: m.resource_version,
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
        annotations: m.annotations,
        ..Default::default()
    })
}

impl kube::Resource for SlimNode {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl SlimNode {
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(key))
            .map(String::as_str)
    }

    /// `spec.podCIDRs`, or `[spec.podCIDR]` when only that is set.
    pub fn pod_cidrs(&self) -> Vec<&str> {
        match (&self.spec.pod_cidrs, &self.spec.pod_cidr) {
            (Some(list), _) if !list.is_empty() => list.iter().map(String::as_str).collect(),
            (_, Some(one)) if !one.is_empty() => vec![one.as_str()],
            _ => Vec::new(),
        }
    }

    /// The node's InternalIP addresses.
    pub fn internal_ips(&self) -> impl Iterator<Item = &str> {
        self.status
            .addresses
            .iter()
            .filter(|a| a.type_ == "InternalIP")
            .map(|a| a.address.as_str())
    }

    /// This Node's lease as flannel's annotations (`names`) say it.
    pub fn record(&self, names: &Names) -> Record<'_> {
        Record {
            name: self.name(),
            created: self.created(),
            managed: self.annotation(&names.subnet_manager) == Some("true"),
            pod_cidrs: self.pod_cidrs(),
            backend_type: self.annotation(&names.backend_type).unwrap_or(""),
            public_ip: PerFamily {
                v4: self.annotation(&names.public_ip),
                v6: self.annotation(&names.public_ipv6),
            },
            data: PerFamily {
                v4: self.annotation(&names.backend_data),
                v6: self.annotation(&names.backend_v6_data),
            },
        }
    }

    /// Creation time as RFC 3339 text (sorts in time order).
    pub fn created(&self) -> String {
        self.metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_node_is_read_into_the_slice_weft_needs() {
        let node: SlimNode = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": "n1", "uid": "u", "resourceVersion": "42",
                "creationTimestamp": "2026-01-02T03:04:05Z",
                "annotations": {"flannel.alpha.coreos.com/public-ip": "198.51.100.11"},
                "labels": {"a": "b"},
                "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}]
            },
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00::/64"]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "198.51.100.11"},
                              {"type": "Hostname", "address": "n1"}],
                "images": [{"names": ["x"], "sizeBytes": 1}],
                "conditions": [{"type": "Ready", "status": "True"}]
            }
        }))
        .unwrap();
        assert_eq!(node.name(), "n1");
        assert_eq!(node.metadata.managed_fields, None);
        assert_eq!(node.metadata.labels, None);
        assert_eq!(node.pod_cidrs(), vec!["10.244.1.0/24", "fd00::/64"]);
        assert_eq!(
            node.internal_ips().collect::<Vec<_>>(),
            vec!["198.51.100.11"]
        );
        assert_eq!(
            node.annotation("flannel.alpha.coreos.com/public-ip"),
            Some("198.51.100.11")
        );
        assert_eq!(node.created(), "2026-01-02T03:04:05Z");
    }

    #[test]
    fn a_bare_node_is_fine() {
        let node: SlimNode =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "bare"}})).unwrap();
        assert!(node.pod_cidrs().is_empty());
        assert_eq!(node.annotation("x"), None);
        let only_one: SlimNode = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "old"}, "spec": {"podCIDR": "10.244.3.0/24"}}))
        .unwrap();
        assert_eq!(only_one.pod_cidrs(), vec!["10.244.3.0/24"]);
    }
}
