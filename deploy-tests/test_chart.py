"""charts/weft: lint, render with every values set, validate every object
against the Kubernetes API schemas, and assert the fields that make weft
work and keep it least-privileged."""

from __future__ import annotations

import json
import re
import tomllib

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from conftest import VALUE_SETS, rendered
from kubernetes_validate.utils import SchemaNotFoundError, all_versions
import weftchart

# The newest API the schemas know, and the oldest they ship (1.25: Pod
# Security admission is GA there).
K8S_VERSIONS = sorted({kubernetes_validate.latest_version(), min(all_versions(), key=lambda v: tuple(map(int, v.split("."))))})

NODE_RULES = [
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
]
POD_LIST_RULE = {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}
HOST_PATHS_DEFAULT = {"/run/flannel", "/opt/cni/bin", "/etc/cni/net.d"}


# --- lint, schema, validation -------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict_finds_no_warning_or_error(name):
    report = weftchart.lint(VALUE_SETS[name])
    bad = [m for m in report["messages"] if m["severity"] >= 2]
    assert not bad and not report["errors"], bad or report["errors"]


# The Prometheus Operator's kinds (ServiceMonitor, PodMonitor,
# PrometheusRule) are CRDs: kubernetes-validate ships only the Kubernetes
# API's own schemas and raises SchemaNotFoundError for them. They are skipped
# here (after checking that it still cannot validate them) and their fields
# asserted in the monitoring tests below.
CRD_API_VERSION = "monitoring.coreos.com/v1"


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid_kubernetes_strictly(every_render, version):
    for obj in every_render.objects:
        if obj["apiVersion"] == CRD_API_VERSION:
            with pytest.raises(SchemaNotFoundError):
                kubernetes_validate.validate(obj, version, strict=True)
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = "/".join(str(p) for p in e.path)
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']} (k8s {version}) at {where}: {e.message}")


def test_values_schema_rejects_typos_and_unknown_backends():
    with pytest.raises(helm.HelmValuesError, match="podCIDR"):
        weftchart.render({"podCIDR": "10.0.0.0/8"})
    with pytest.raises(helm.HelmValuesError, match="backend/type"):
        weftchart.render({"backend": {"type": "wireguard"}})
    with pytest.raises(helm.HelmValuesError, match="cniVersion"):
        weftchart.render({"cni": {"cniVersion": "latest"}})


def test_a_conflist_that_is_not_json_fails_the_render():
    with pytest.raises(helm.HelmRenderError, match="cni.conf: not a conflist"):
        weftchart.render({"cni": {"conf": '{"plugins": ['}})


def test_no_pod_network_at_all_fails_the_render():
    with pytest.raises(helm.HelmRenderError, match="podCidr and podCidrV6 are both empty"):
        weftchart.render({"podCidr": ""})


def test_chart_app_version_is_the_workspace_version():
    with open(weftchart.ROOT / "Cargo.toml", "rb") as f:
        version = tomllib.load(f)["workspace"]["package"]["version"]
    with helm.Chart.load(str(weftchart.CHART)) as chart:
        assert chart.metadata["appVersion"] == version


# --- objects and RBAC ---------------------------------------------------------


def test_default_objects_are_flannels_set_under_weft_names(default):
    assert [(o["kind"], o["metadata"]["name"]) for o in default.objects] == [
        ("Namespace", "kube-weft"),
        ("ServiceAccount", "weft"),
        ("ConfigMap", "weft-config"),
        ("ClusterRole", "weft"),
        ("ClusterRoleBinding", "weft"),
        ("DaemonSet", "weft"),
    ]
    for o in default.objects:
        if o["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == "kube-weft"


def test_namespace_is_labelled_for_pod_security_privileged(default):
    labels = default.one("Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"


def test_namespace_is_left_out_when_it_exists_already(all_options):
    assert "Namespace" not in all_options.kinds()


def test_cluster_role_grants_exactly_what_weftd_uses(every_render):
    rules = every_render.one("ClusterRole")["rules"]
    cleaning = any(c["name"] == "finish" for c in every_render.containers())
    # cleanup --wait lists its node's pods before removing the conflist.
    assert rules == NODE_RULES + ([POD_LIST_RULE] if cleaning else [])
    assert "Role" not in every_render.kinds() and "RoleBinding" not in every_render.kinds()


def test_cleanup_wait_knows_its_node(cleanup):
    env = {e["name"]: e for e in cleanup.container("finish")["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert "--wait" in cleanup.container("finish")["args"]


def test_cleanup_wait_reaches_the_api_where_weftd_does():
    r = weftchart.render({"cleanup": {"enabled": True}, "apiServer": {"host": "192.0.2.10", "port": 16443}})
    ds = next(d.obj for d in r if d.kind == "DaemonSet")
    finish = next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == "finish")
    env = {e["name"]: e.get("value") for e in finish["env"]}
    assert env["KUBERNETES_SERVICE_HOST"] == "192.0.2.10"
    assert env["KUBERNETES_SERVICE_PORT"] == "16443"


def test_binding_ties_the_role_to_the_service_account_only(default):
    b = default.one("ClusterRoleBinding")
    assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "weft"}
    assert b["subjects"] == [{"kind": "ServiceAccount", "name": "weft", "namespace": "kube-weft"}]
    assert default.pod["serviceAccountName"] == "weft"


# --- ConfigMap ----------------------------------------------------------------


def net_conf(r) -> dict:
    return json.loads(r.config["data"]["net-conf.json"])


def test_default_net_conf_is_flannels(default):
    assert net_conf(default) == {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}


def test_every_backend_option_reaches_net_conf(all_options, udp, host_gw):
    assert net_conf(all_options) == {
        "Network": "10.42.0.0/16",
        "EnableIPv6": True,
        "IPv6Network": "fd00:42::/56",
        "Backend": {"Type": "vxlan", "VNI": 4096, "Port": 4789, "MTU": 9000, "DirectRouting": True},
    }
    assert net_conf(udp) == {
        "EnableIPv4": False,
        "EnableIPv6": True,
        "IPv6Network": "fd00:10::/56",
        "Backend": {"Type": "udp", "Port": 8285},
    }
    assert net_conf(host_gw) == {
        "Network": "10.244.0.0/16",
        "EnableIPv6": True,
        "IPv6Network": "fd00:10::/56",
        "Backend": {"Type": "host-gw"},
    }


def test_default_conflist_is_flannels_with_weft_first(default):
    conf = json.loads(default.config["data"]["cni-conf.json"])
    assert conf == {
        "name": "cbr0",
        "cniVersion": "1.0.0",
        "plugins": [
            {"type": "weft", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def test_a_given_conflist_is_installed_as_it_is(all_options):
    conf = json.loads(all_options.config["data"]["cni-conf.json"])
    assert [p["type"] for p in conf["plugins"]] == ["weft", "portmap", "bandwidth"]


def test_auto_cni_version_leaves_the_conflist_to_install_cni(udp):
    assert "cni-conf.json" not in udp.config["data"]
    assert not any(a.startswith("--cni-conf") for a in udp.container("install-cni")["args"])


# --- DaemonSet: scheduling ----------------------------------------------------


def test_runs_on_every_linux_node_whatever_its_taints(every_render):
    pod = every_render.pod
    assert pod["nodeSelector"]["kubernetes.io/os"] == "linux"
    assert pod["hostNetwork"] is True
    for k in ("hostPID", "hostIPC"):
        assert not pod.get(k)


def test_default_scheduling_is_node_critical_and_tolerates_all(default):
    pod = default.pod
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"operator": "Exists", "effect": "NoExecute"} in pod["tolerations"]
    strategy = default.one("DaemonSet")["spec"]["updateStrategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}


def test_node_selector_values_add_to_linux(all_options):
    assert all_options.pod["nodeSelector"] == {"kubernetes.io/os": "linux", "weft-migrated": "true"}
    assert all_options.pod["priorityClassName"] == "network-critical"
    assert "nodeAffinity" in all_options.pod["affinity"]


def test_a_node_selector_key_set_to_null_is_dropped():
    # How a migration from flannel ends: --set nodeSelector.weft-migrated=null
    r = weftchart.render({"nodeSelector": {"weft-migrated": None, "pool": "a"}})
    ds = next(d.obj for d in r if d.kind == "DaemonSet")
    assert ds["spec"]["template"]["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux", "pool": "a"}


def test_node_selector_values_are_strings_even_from_set():
    # helm --set nodeSelector.weft-migrated=true gives a boolean
    r = weftchart.render({"nodeSelector": {"weft-migrated": True}})
    ds = next(d.obj for d in r if d.kind == "DaemonSet")
    assert ds["spec"]["template"]["spec"]["nodeSelector"]["weft-migrated"] == "true"


def test_config_changes_roll_the_pods(default, all_options):
    a = default.one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    b = all_options.one("DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert len(a) == 64 and a != b


# --- DaemonSet: privileges ----------------------------------------------------


WEFT_IMAGE_COMMAND = "/usr/local/bin/weftd"


def weft_containers(r) -> list[dict]:
    return [c for c in r.containers() if c.get("command", [""])[0] == WEFT_IMAGE_COMMAND]


def test_no_container_is_privileged_or_can_escalate(every_render):
    assert every_render.containers(), "no containers rendered"
    for c in every_render.containers():
        sc = c["securityContext"]
        assert sc["privileged"] is False, c["name"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
    assert every_render.pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_weftd_holds_net_admin_and_nothing_else(agent_render):
    assert agent_render.container("weftd")["securityContext"]["capabilities"]["add"] == ["NET_ADMIN"]


def test_install_cni_holds_no_capability(agent_render):
    assert "add" not in agent_render.container("install-cni")["securityContext"]["capabilities"]


def test_root_is_explicit_not_implicit(every_render):
    # The image runs as 65532; the pod says uid 0 on purpose (see the comment
    # in the template), never by accident of an image default.
    assert weft_containers(every_render), "no weft containers rendered"
    for c in weft_containers(every_render):
        assert c["securityContext"]["runAsUser"] == 0
        assert c["securityContext"]["runAsNonRoot"] is False


# --- DaemonSet: containers ----------------------------------------------------


def test_install_cni_installs_only_the_plugin(default):
    c = default.container("install-cni")
    assert c["command"] == ["/usr/local/bin/weftd", "install-cni"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert c["args"] == [f"--bin-dir={mounts['cni-bin']}", "--skip-conflist"]


def test_weftd_writes_the_conflist_from_the_mounted_dirs(default):
    c = default.container("weftd")
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert f"--cni-conf-dir={mounts['cni-conf']}" in c["args"]
    assert f"--cni-bin-dir={mounts['cni-bin']}" in c["args"]
    assert f"--cni-conf={mounts['weft-config']}/cni-conf.json" in c["args"]


def test_weftd_keeps_the_plugin_install_cni_copied(default, all_options):
    # The binary install-cni copies by default (next to weftd), kept in the
    # same mounted dir, with or without a conflist to write.
    for r in (default, all_options):
        c = r.container("weftd")
        mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
        assert c["command"] == ["/usr/local/bin/weftd"]
        assert "--cni-plugin=/usr/local/bin/weft" in c["args"]
        assert f"--cni-bin-dir={mounts['cni-bin']}" in c["args"]
        assert f"--bin-dir={mounts['cni-bin']}" in r.container("install-cni")["args"]


def test_weftd_gets_its_node_name_from_the_downward_api(agent_render):
    env = {e["name"]: e for e in agent_render.container("weftd")["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_weftd_default_args(default):
    c = default.container("weftd")
    assert c["command"] == ["/usr/local/bin/weftd"]
    assert c["args"] == [
        "--net-config-path=/etc/kube-flannel/net-conf.json",
        "--subnet-file=/run/flannel/subnet.env",
        "--healthz-addr=0.0.0.0:8081",
        "--log-format=text",
        "--vxlan-allow-list=true",
        "--ip-masq",
        "--cni-conf-dir=/host/cni/net.d",
        "--cni-conf=/etc/kube-flannel/cni-conf.json",
        "--cni-bin-dir=/host/cni/bin",
        "--cni-plugin=/usr/local/bin/weft",
    ]


def test_every_weftd_option_reaches_its_flag(all_options):
    c = all_options.container("weftd")
    assert c["args"] == [
        "--net-config-path=/etc/kube-flannel/net-conf.json",
        "--subnet-file=/run/flannel/subnet.env",
        "--healthz-addr=127.0.0.1:9081",
        "--log-format=json",
        "--vxlan-allow-list=false",
        "--cni-bin-dir=/host/cni/bin",
        "--cni-plugin=/usr/local/bin/weft",
        "--iface-regex=^ens",
        "--resync-seconds=60",
    ]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["WEFTD_LOG"] == "info,weftd=debug"
    assert env["KUBERNETES_SERVICE_HOST"] == "192.0.2.10"
    assert env["KUBERNETES_SERVICE_PORT"] == "16443"
    assert env["WEFT_EXAMPLE"] == "1"
    assert c["image"] == "registry.example.test/net/weft:0.1.0-test"
    assert c["imagePullPolicy"] == "Always"
    assert all_options.pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert c["resources"]["limits"] == {"memory": "200Mi"}


def test_one_image_for_both_containers_tagged_with_app_version(default):
    assert {c["image"] for c in default.containers()} == {"localhost/weft:0.1.0"}


def test_probes_hit_healthz_and_readyz_on_the_served_port(default):
    c = default.container("weftd")
    assert c["ports"] == [{"name": "healthz", "containerPort": 8081, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "healthz"}


def test_probes_follow_a_loopback_healthz_address(all_options):
    c = all_options.container("weftd")
    assert c["ports"][0]["containerPort"] == 9081
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["host"] == "127.0.0.1"


def test_every_container_requests_resources(every_render):
    assert every_render.containers(), "no containers rendered"
    for c in every_render.containers():
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]


# --- DaemonSet: volumes -------------------------------------------------------


def host_paths(r) -> dict[str, dict]:
    return {v["name"]: v["hostPath"] for v in r.pod["volumes"] if "hostPath" in v}


def mounts(r, container: str) -> dict[str, dict]:
    return {m["name"]: m for m in r.container(container)["volumeMounts"]}


def test_host_paths_are_exactly_flannels_three(default):
    assert {h["path"] for h in host_paths(default).values()} == HOST_PATHS_DEFAULT
    assert all(h["type"] == "DirectoryOrCreate" for h in host_paths(default).values())


def test_each_container_mounts_only_what_it_writes(default):
    assert set(mounts(default, "weftd")) == {"run-flannel", "weft-config", "cni-conf", "cni-bin"}
    assert set(mounts(default, "install-cni")) == {"cni-bin"}
    assert mounts(default, "weftd")["weft-config"]["readOnly"] is True
    # install-cni writes the plugin; weftd reads the delegates' versions
    # there and puts the plugin back when it is missing or altered.
    assert "readOnly" not in mounts(default, "weftd")["cni-bin"]
    assert "readOnly" not in mounts(default, "install-cni")["cni-bin"]


def test_tun_device_only_for_the_udp_backend(default, udp, host_gw):
    assert "dev-net-tun" not in host_paths(host_gw)
    assert "dev-net-tun" not in host_paths(default)
    assert host_paths(udp)["dev-net-tun"] == {"path": "/dev/net/tun", "type": "CharDevice"}
    assert mounts(udp, "weftd")["dev-net-tun"]["mountPath"] == "/dev/net/tun"
    assert "dev-net-tun" not in mounts(udp, "install-cni")


def test_custom_cni_dirs_and_no_host_conf_dir_without_install_config(all_options):
    paths = host_paths(all_options)
    assert paths["cni-bin"]["path"] == "/home/kubernetes/bin"
    assert "cni-conf" not in paths
    assert "cni-conf" not in {v["name"] for v in all_options.pod["volumes"]}
    # Nobody writes a conflist.
    assert not [a for a in all_options.container("weftd")["args"] if a.startswith("--cni-conf")]


def test_rendering_twice_gives_the_same_text():
    assert weftchart.manifest_text() == weftchart.manifest_text()
    assert rendered("default").docs[0].text == weftchart.render(None)[0].text


# --- cleanup mode (uninstall) -------------------------------------------------


CLEANUP_ARGS = [
    "--net-config-path=/etc/kube-flannel/net-conf.json",
    "--subnet-file=/run/flannel/subnet.env",
    "--log-format=text",
    "cleanup",
    "--conf-dir=/host/cni/net.d",
    "--bin-dir=/host/cni/bin",
    "--data-dir=/host/cni/data/flannel",
]


def test_cleanup_runs_weftd_cleanup_with_weftds_privileges(cleanup):
    c = cleanup.container("cleanup")
    assert c["command"] == ["/usr/local/bin/weftd"]
    assert c["args"] == CLEANUP_ARGS
    assert c["securityContext"]["capabilities"]["add"] == ["NET_ADMIN"]
    assert set(mounts(cleanup, "cleanup")) == {"run-flannel", "cni-conf", "cni-bin", "cni-data", "weft-config"}
    assert mounts(cleanup, "cleanup")["cni-data"]["readOnly"] is True
    assert [x["name"] for x in cleanup.pod["initContainers"]] == ["cleanup"]


def test_cleanup_then_waits_for_the_pods_with_weft_s_own_image_all_at_once(cleanup):
    (finish,) = cleanup.pod["containers"]
    assert finish["name"] == "finish"
    # weft's image: nothing outside it is pulled (no pause image).
    assert finish["image"] == cleanup.container("cleanup")["image"]
    assert finish["args"] == CLEANUP_ARGS + ["--wait"]
    assert finish["securityContext"] == cleanup.container("cleanup")["securityContext"]
    assert cleanup.one("DaemonSet")["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "100%"
    assert {h["path"] for h in host_paths(cleanup).values()} == {
        "/run/flannel", "/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni"}


def test_cleanup_keeps_the_names_so_it_replaces_the_agent(default, cleanup):
    assert [(o["kind"], o["metadata"]["name"]) for o in cleanup.objects] == [
        (o["kind"], o["metadata"]["name"]) for o in default.objects
    ]


# --- monitoring (Prometheus Operator, Grafana) --------------------------------


# What weftd's /metrics serves (daemon/src/metrics.rs), nothing else: the
# summary weft_reconcile_duration_seconds as its _sum and _count only, the
# weft_udp_* counters with the udp backend only.
WEFTD_METRICS = {
    "weft_ready",
    "weft_peers",
    "weft_skipped_peers",
    "weft_node_events_total",
    "weft_reconciles_total",
    "weft_reconcile_errors_total",
    "weft_reconcile_duration_seconds_sum",
    "weft_reconcile_duration_seconds_count",
    "weft_reconcile_last_duration_seconds",
    "weft_netlink_operations_total",
    "weft_netlink_errors_total",
    "weft_nft_syncs_total",
    "weft_nft_restorations_total",
    "weft_file_restorations_total",
    "weft_nft_errors_total",
    "weft_allowlist_dropped_packets_total",
    "weft_device_creations_total",
    "weft_udp_packets_total",
    "weft_udp_bytes_total",
    "weft_udp_dropped_packets_total",
}
# Prometheus' own, per target.
SCRAPE_METRICS = {"up"}
MONITORING_FILES = weftchart.CHART / "files"
RULES_FILE = MONITORING_FILES / "prometheus-rules.yaml"
DASHBOARD_FILE = MONITORING_FILES / "grafana-dashboard.json"
# The alerts an operator needs (see the rules file for each one's why).
REQUIRED_ALERTS = {
    "WeftDown",
    "WeftNotReady",
    "WeftPeersSkipped",
    "WeftReconcileErrors",
    "WeftNftablesErrors",
    "WeftRulesRestoredRepeatedly",
    "WeftAllowListDropsRising",
    "WeftUdpDrops",
    "WeftNetlinkErrors",
}
MONITOR_ENDPOINTS = {"ServiceMonitor": "endpoints", "PodMonitor": "podMetricsEndpoints"}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def promql_selectors(expr: str) -> list[tuple[str, str]]:
    """Each metric an expression selects, with its label matchers ("{...}",
    or "" without): every name that is not a function, keyword or label."""
    # Label lists of aggregations and vector matching, and range durations.
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    # Numbers and durations (offset 5m).
    e = re.sub(r"(?<![A-Za-z0-9_:])[0-9][0-9A-Za-z.]*", " ", e)
    found = []
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?", e):
        name, matchers, call = m.groups()
        if call or name in PROMQL_KEYWORDS:
            continue
        found.append((name, matchers or ""))
    return found


def test_promql_selectors_finds_metrics_not_functions_or_labels():
    assert promql_selectors(
        'count(up{job="weft"} == 0) or sum by (instance, kind) (rate(weft_x_total{a=~"$node"}[5m])) * 8'
        " and on(instance) weft_y offset 1h"
    ) == [("up", '{job="weft"}'), ("weft_x_total", '{a=~"$node"}'), ("weft_y", "")]


def monitoring_objects(r) -> list[dict]:
    return [
        o for o in r.objects
        if o["apiVersion"] == CRD_API_VERSION
        or o["metadata"]["name"] in ("weft-metrics", "weft-grafana-dashboard")
    ]


def test_monitoring_is_all_off_by_default(default, every_render):
    values = yaml.safe_load((weftchart.CHART / "values.yaml").read_text())["monitoring"]
    assert {k: v["enabled"] for k, v in values.items()} == dict.fromkeys(values, False)
    assert monitoring_objects(default) == []
    # Only the values set that asks for them renders them.
    if every_render.values and "monitoring" in every_render.values:
        assert monitoring_objects(every_render)
    else:
        assert monitoring_objects(every_render) == []


def test_monitors_scrape_weftds_metrics_port_on_weft_pods_only(monitoring):
    ds = monitoring.one("DaemonSet")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    (port,) = monitoring.container("weftd")["ports"]
    service = monitoring.one("Service")
    (service_port,) = service["spec"]["ports"]
    for kind, key in MONITOR_ENDPOINTS.items():
        m = monitoring.one(kind)
        assert m["apiVersion"] == CRD_API_VERSION
        assert m["metadata"]["labels"]["release"] == "prometheus"
        # Wherever the monitor lives, it looks in the release's namespace.
        assert m["spec"]["namespaceSelector"] == {"matchNames": ["kube-weft"]}
        (ep,) = m["spec"][key]
        assert ep["port"] == port["name"] and ep["path"] == "/metrics" and ep["scheme"] == "http"
        # instance: the node's name, not the host network's IP:port.
        assert ep["relabelings"] == [
            {"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "instance"}
        ]
        selector = m["spec"]["selector"]["matchLabels"]
        if kind == "PodMonitor":
            assert selector == ds["spec"]["selector"]["matchLabels"]
            assert selector.items() <= pod_labels.items()
        else:
            assert selector.items() <= service["metadata"]["labels"].items()
            assert service_port["name"] == port["name"]
    assert monitoring.one("PodMonitor")["metadata"]["namespace"] == "monitoring"
    assert monitoring.one("ServiceMonitor")["metadata"]["namespace"] == "kube-weft"
    assert monitoring.one("ServiceMonitor")["spec"]["endpoints"][0]["interval"] == "30s"
    assert monitoring.one("ServiceMonitor")["spec"]["endpoints"][0]["scrapeTimeout"] == "10s"
    assert "scrapeTimeout" not in monitoring.one("PodMonitor")["spec"]["podMetricsEndpoints"][0]


def test_both_monitors_give_the_job_the_rules_match(monitoring):
    # jobLabel names a label of the scraped object (the Service for the
    # ServiceMonitor, the pod for the PodMonitor) whose value becomes job.
    pod_labels = monitoring.one("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    service_labels = monitoring.one("Service")["metadata"]["labels"]
    for kind, labels in (("PodMonitor", pod_labels), ("ServiceMonitor", service_labels)):
        job_label = monitoring.one(kind)["spec"]["jobLabel"]
        assert labels[job_label] == "weft", kind
    up = [s for r in alert_rules(monitoring) for s in promql_selectors(r["expr"]) if s[0] == "up"]
    assert up and all(m == '{job="weft"}' for _, m in up)


def test_metrics_service_is_headless_and_selects_exactly_the_daemonset_pods(monitoring):
    ds = monitoring.one("DaemonSet")
    service = monitoring.one("Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == ds["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    (port,) = monitoring.container("weftd")["ports"]
    assert service["spec"]["ports"] == [
        {"name": port["name"], "port": port["containerPort"], "targetPort": port["name"], "protocol": "TCP"}
    ]
    # Not-ready weftd are scraped too: weft_ready == 0 is what WeftNotReady sees.
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_metrics_service_only_with_the_service_monitor():
    docs = weftchart.render({"monitoring": {"podMonitor": {"enabled": True}}})
    assert [d.kind for d in docs if d.kind in ("Service", "ServiceMonitor", "PodMonitor")] == ["PodMonitor"]


def alert_rules(r) -> list[dict]:
    return [rule for g in r.one("PrometheusRule")["spec"]["groups"] for rule in g["rules"]]


def test_prometheus_rule_groups_are_the_files(monitoring):
    rule = monitoring.one("PrometheusRule")
    assert rule["apiVersion"] == CRD_API_VERSION
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["metadata"]["labels"]["role"] == "alert-rules"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES_FILE.read_text())["groups"]


def test_every_alert_has_severity_summary_description_and_known_metrics(monitoring):
    rules = alert_rules(monitoring)
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)) and REQUIRED_ALERTS <= set(names)
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning", "info"), r["alert"]
        assert r["annotations"]["summary"].strip() and r["annotations"]["description"].strip(), r["alert"]
        assert re.fullmatch(r"[0-9]+[smh]", r.get("for", "0s")), r["alert"]
        metrics = {name for name, _ in promql_selectors(r["expr"])}
        assert metrics and metrics <= WEFTD_METRICS | SCRAPE_METRICS, (r["alert"], metrics)


def test_rule_selector_replaces_the_job_matcher_of_up_only(monitoring):
    selector = 'job="kubernetes-pods",app_kubernetes_io_name="weft"'
    docs = weftchart.render({"monitoring": {"prometheusRule": {"enabled": True, "selector": selector}}})
    (rule,) = [d.obj for d in docs if d.kind == "PrometheusRule"]
    got = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    for want in alert_rules(monitoring):
        expr = want["expr"].replace('job="weft"', selector)
        assert got[want["alert"]] == want | {"expr": expr}
    assert got["WeftDown"]["expr"] == "up{" + selector + "} == 0"


def dashboard_panels(panels: list[dict]) -> list[dict]:
    out = []
    for p in panels:
        out.append(p)
        out += dashboard_panels(p.get("panels", []))
    return out


def test_grafana_dashboard_configmap_is_the_files_json_for_the_sidecar(monitoring):
    (cm,) = [o for o in monitoring.objects if o["metadata"]["name"] == "weft-grafana-dashboard"]
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Network"}
    dashboard = json.loads(cm["data"]["weft.json"])
    assert dashboard == json.loads(DASHBOARD_FILE.read_text())
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["node"]["query"]["query"] == "label_values(weft_ready, instance)"


def test_sidecar_label_is_configurable():
    docs = weftchart.render({"monitoring": {"grafanaDashboard": {
        "enabled": True, "label": "dashboards.example.test/grafana", "labelValue": "weft"}}})
    (cm,) = [d.obj for d in docs if d.name == "weft-grafana-dashboard"]
    assert cm["metadata"]["labels"]["dashboards.example.test/grafana"] == "weft"
    assert "grafana_dashboard" not in cm["metadata"]["labels"]
    assert cm["metadata"]["namespace"] == "kube-weft"


def test_dashboard_queries_use_only_weftds_metrics_per_node():
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    used = set()
    panels = [p for p in dashboard_panels(dashboard["panels"]) if p["type"] != "row"]
    assert panels
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for target in p["targets"]:
            selectors = promql_selectors(target["expr"])
            assert selectors, (p["title"], target["expr"])
            for name, matchers in selectors:
                assert name in WEFTD_METRICS | SCRAPE_METRICS, (p["title"], name)
                assert 'instance=~"$node"' in matchers, (p["title"], target["expr"])
                used.add(name)
    # Every metric weftd exports is on the dashboard.
    assert used == WEFTD_METRICS | SCRAPE_METRICS


# --- documentation ------------------------------------------------------------


def schema_leaves(schema: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, sub in schema.get("properties", {}).items():
        keys |= schema_leaves(sub, f"{prefix}{k}.") if "properties" in sub else {prefix + k}
    return keys


def test_values_schema_and_readme_table_cover_every_value():
    values = yaml.safe_load((weftchart.CHART / "values.yaml").read_text())
    schema = json.loads((weftchart.CHART / "values.schema.json").read_text())
    leaves = schema_leaves(schema)

    # Every key that holds others (monitoring, monitoring.podMonitor, ...).
    groups = {".".join(p.split(".")[:i]) for p in leaves for i in range(1, p.count(".") + 1)}

    def value_keys(v: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, x in v.items():
            out |= value_keys(x, f"{prefix}{k}.") if prefix + k in groups else {prefix + k}
        return out

    assert value_keys(values) == leaves
    readme = (weftchart.CHART / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Za-z0-9.]+)` \|", readme, re.M))
    assert documented == leaves


def test_the_api_server_address_is_the_services_unless_given(default):
    # kubelet sets KUBERNETES_SERVICE_HOST/PORT to the `kubernetes` Service;
    # only apiServer.host overrides them.
    names = {e["name"] for e in default.container("weftd")["env"]}
    assert not names & {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"}, names
