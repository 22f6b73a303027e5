//! The part of kubelet that runs a DaemonSet's container on a lab node: a
//! Pod object bound to the node (so the downward API has something to point
//! at), the container's `env` resolved as kubelet resolves it
//! (`fieldRef` to the pod's name, namespace and node), the in-cluster
//! credentials kubelet mounts (`/var/run/secrets/kubernetes.io/
//! serviceaccount` and `KUBERNETES_SERVICE_HOST`/`_PORT`), the image's
//! `/opt/bin/flanneld` (weftd under flanneld's name, as in weft's image),
//! and the container's added capabilities and nothing more. `command` and
//! `args` run as given. The identity is weft's ServiceAccount, with the one
//! extra rule flanneld's way of finding its node needs: `pods get`.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

use crate::control_plane::{self as cp, APISERVER_PORT, WEFT_NAMESPACE, WEFT_SERVICE_ACCOUNT};
use crate::lab::{Lab, LabError};

/// The lab's name for the Pod object of `node`'s agent.
pub fn pod_name(node: &str) -> String {
    format!("weft-agent-{node}")
}

/// The image's programs a container command may name, and what they are.
const IMAGE_PROGRAMS: [&str; 2] = ["/opt/bin/flanneld", "/opt/bin/install-conf"];

fn err(node: &str, reason: impl Into<String>) -> LabError {
    LabError::Container {
        node: node.to_string(),
        reason: reason.into(),
    }
}

/// Creates (or keeps) what must exist in the API server before the
/// container starts on `node`: its Pod object and the `pods get` Role.
async fn pod_objects(
    client: kube::Client,
    node: &str,
    container: &Container,
) -> Result<(), String> {
    let rule = Role {
        metadata: ObjectMeta {
            name: Some("weft-lab-pods-get".into()),
            namespace: Some(WEFT_NAMESPACE.into()),
            ..Default::default()
        },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["pods".into()]),
            verbs: vec!["get".into()],
            ..Default::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some("weft-lab-pods-get".into()),
            namespace: Some(WEFT_NAMESPACE.into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "weft-lab-pods-get".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: WEFT_SERVICE_ACCOUNT.into(),
            namespace: Some(WEFT_NAMESPACE.into()),
            ..Default::default()
        }]),
    };
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(node)),
            namespace: Some(WEFT_NAMESPACE.into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.into()),
            service_account_name: Some(WEFT_SERVICE_ACCOUNT.into()),
            host_network: Some(true),
            automount_service_account_token: Some(false),
            containers: vec![Container {
                image: Some("weft".into()),
                ..container.clone()
            }],
            ..Default::default()
        }),
        status: None,
    };
    let pp = PostParams::default();
    let exists = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409);
    let roles: Api<Role> = Api::namespaced(client.clone(), WEFT_NAMESPACE);
    match roles.create(&pp, &rule).await {
        Err(e) if !exists(&e) => return Err(format!("creating Role weft-lab-pods-get: {e}")),
        _ => {}
    }
    let bindings: Api<RoleBinding> = Api::namespaced(client.clone(), WEFT_NAMESPACE);
    match bindings.create(&pp, &binding).await {
        Err(e) if !exists(&e) => {
            return Err(format!("creating RoleBinding weft-lab-pods-get: {e}"));
        }
        _ => {}
    }
    let pods: Api<Pod> = Api::namespaced(client, WEFT_NAMESPACE);
    match pods.create(&pp, &pod).await {
        Err(e) if !exists(&e) => Err(format!("creating Pod {}: {e}", pod_name(node))),
        _ => Ok(()),
    }
}

/// The container's variables as kubelet resolves them for `node`'s pod.
fn resolve_env(node: &str, container: &Container) -> Result<BTreeMap<String, String>, LabError> {
    let mut out = BTreeMap::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (_, Some(from)) => {
                let path = from
                    .field_ref
                    .as_ref()
                    .map(|f| f.field_path.as_str())
                    .ok_or_else(|| {
                        err(
                            node,
                            format!("env {}: only fieldRef is supported", var.name),
                        )
                    })?;
                match path {
                    "metadata.name" => pod_name(node),
                    "metadata.namespace" => WEFT_NAMESPACE.to_string(),
                    "spec.nodeName" => node.to_string(),
                    other => {
                        return Err(err(
                            node,
                            format!("env {}: fieldRef {other} is not supported", var.name),
                        ));
                    }
                }
            }
            (Some(v), None) => v.clone(),
            (None, None) => String::new(),
        };
        out.insert(var.name.clone(), value);
    }
    Ok(out)
}

/// The capabilities `securityContext.capabilities.add` names, for setpriv
/// (`NET_ADMIN` → `+net_admin`).
fn capabilities(container: &Container) -> String {
    let caps: Vec<String> = container
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|c| c.add.clone())
        .unwrap_or_default()
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    format!("-all,{}", caps.join(","))
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), LabError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| LabError::State {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, bytes).map_err(|source| LabError::State {
        path: path.to_path_buf(),
        source,
    })
}

impl Lab {
    /// Starts `container` on `node` as kubelet would run the agent's
    /// DaemonSet container, with `weftd` behind the image's programs; its pid.
    pub fn start_container(
        &self,
        node: &str,
        container: &Container,
        weftd: &Path,
    ) -> Result<u32, LabError> {
        let n = self.node(node)?.clone();
        let admin = self.admin_kubeconfig();
        let c = container.clone();
        let name = node.to_string();
        self.block_on(|| async move {
            let client = crate::cluster::client(&admin)
                .await
                .map_err(|e| e.to_string())?;
            pod_objects(client, &name, &c).await
        })?
        .map_err(|reason| err(node, reason))?;

        // The in-cluster credentials kubelet mounts (weft's identity).
        let sa = n.host_path("/run/secrets/kubernetes.io/serviceaccount");
        let tokens =
            std::fs::read_to_string(self.pki().token_file()).map_err(|source| LabError::State {
                path: self.pki().token_file(),
                source,
            })?;
        let user = cp::weft_user();
        let token = tokens
            .lines()
            .find(|l| l.split(',').nth(1) == Some(user.as_str()))
            .and_then(|l| l.split(',').next())
            .ok_or_else(|| err(node, format!("no token for {user} in the lab's token file")))?;
        write(&sa.join("token"), token.as_bytes())?;
        let ca = std::fs::read(self.pki().ca_cert()).map_err(|source| LabError::State {
            path: self.pki().ca_cert(),
            source,
        })?;
        write(&sa.join("ca.crt"), &ca)?;
        write(&sa.join("namespace"), WEFT_NAMESPACE.as_bytes())?;

        // The image's layout: its programs are weftd under their names.
        for program in IMAGE_PROGRAMS {
            let link = n.host_path(program);
            let _ = std::fs::remove_file(&link);
            if let Some(dir) = link.parent() {
                std::fs::create_dir_all(dir).map_err(|source| LabError::State {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            std::os::unix::fs::symlink(weftd, &link)
                .map_err(|source| LabError::State { path: link, source })?;
        }

        let command = container
            .command
            .as_ref()
            .filter(|c| !c.is_empty())
            .ok_or_else(|| err(node, "the container has no command"))?;
        if !IMAGE_PROGRAMS.contains(&command[0].as_str()) {
            return Err(err(
                node,
                format!(
                    "{} is not in weft's image (it has {IMAGE_PROGRAMS:?})",
                    command[0]
                ),
            ));
        }
        let caps = capabilities(container);
        let mut argv = vec![
            "setpriv".to_string(),
            format!("--bounding-set={caps}"),
            format!("--inh-caps={caps}"),
            format!("--ambient-caps={caps}"),
            "--no-new-privs".into(),
            "--".into(),
        ];
        argv.extend(command.iter().cloned());
        argv.extend(container.args.iter().flatten().cloned());
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let env = resolve_env(node, container)?;
        let (pid, _) = self.spawn_on_with(node, "weftd", &argv, |cmd| {
            // A container's environment: its own variables and kubelet's,
            // none of the lab's (no NODE_NAME, no KUBECONFIG).
            cmd.env_clear()
                .env(
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                )
                .env("KUBERNETES_SERVICE_HOST", self.state.hub_ip.to_string())
                .env("KUBERNETES_SERVICE_PORT", APISERVER_PORT.to_string())
                .envs(&env);
        })?;
        Ok(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_and_capabilities_as_kubelet_resolves_them() {
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "kube-flannel",
            "env": [
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "DEPTH", "value": "5000"},
            ],
            "securityContext": {"capabilities": {"add": ["NET_ADMIN", "NET_RAW"]}},
        }))
        .unwrap();
        let env = resolve_env("node-3", &c).unwrap();
        assert_eq!(env["POD_NAME"], "weft-agent-node-3");
        assert_eq!(env["POD_NAMESPACE"], WEFT_NAMESPACE);
        assert_eq!(env["DEPTH"], "5000");
        assert_eq!(capabilities(&c), "-all,+net_admin,+net_raw");
    }
}
