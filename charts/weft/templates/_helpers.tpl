{{/*
Labels on every object. The names themselves are fixed (weft, weft-config):
one weft per cluster, and the lab's RBAC test binds exactly these names.
*/}}
{{- define "weft.labels" -}}
app.kubernetes.io/name: weft
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: weft
{{- end }}

{{/* The DaemonSet's selector: never changes across upgrades. */}}
{{- define "weft.selectorLabels" -}}
app.kubernetes.io/name: weft
{{- end }}

{{- define "weft.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* host:port for --healthz-addr (IPv6 addresses in brackets). */}}
{{- define "weft.healthzAddr" -}}
{{- $h := .Values.healthz.bindAddress -}}
{{- if contains ":" $h -}}[{{ $h }}]{{- else -}}{{ $h }}{{- end -}}:{{ .Values.healthz.port }}
{{- end }}

{{/*
flannel's net-conf.json, from the values, keys in flannel's documented order
(Network first, Backend last) so that it reads like flannel's.
*/}}
{{- define "weft.netConf" -}}
{{- $v := .Values -}}
{{- if not (has $v.backend.type (list "vxlan" "udp" "host-gw")) -}}
{{- fail (printf "backend.type: %q is not a weft backend (vxlan, udp, host-gw)" $v.backend.type) -}}
{{- end -}}
{{- if and (not $v.podCidr) (not $v.podCidrV6) -}}
{{- fail "podCidr and podCidrV6 are both empty: set at least one" -}}
{{- end -}}
{{- $top := list -}}
{{- if $v.podCidr -}}
{{- $top = append $top (printf "\"Network\": %s" (toJson $v.podCidr)) -}}
{{- else -}}
{{- $top = append $top "\"EnableIPv4\": false" -}}
{{- end -}}
{{- if $v.podCidrV6 -}}
{{- $top = append $top "\"EnableIPv6\": true" -}}
{{- $top = append $top (printf "\"IPv6Network\": %s" (toJson $v.podCidrV6)) -}}
{{- end -}}
{{- $b := list (printf "\"Type\": %s" (toJson $v.backend.type)) -}}
{{- if eq $v.backend.type "vxlan" -}}
{{- $b = append $b (printf "\"VNI\": %d" (int $v.backend.vni)) -}}
{{- end -}}
{{- if and $v.backend.port (ne $v.backend.type "host-gw") -}}
{{- $b = append $b (printf "\"Port\": %d" (int $v.backend.port)) -}}
{{- end -}}
{{- if eq $v.backend.type "vxlan" -}}
{{- if $v.backend.mtu -}}
{{- $b = append $b (printf "\"MTU\": %d" (int $v.backend.mtu)) -}}
{{- end -}}
{{- if $v.backend.directRouting -}}
{{- $b = append $b "\"DirectRouting\": true" -}}
{{- end -}}
{{- end -}}
{{- $top = append $top (printf "\"Backend\": {\n    %s\n  }" (join ",\n    " $b)) -}}
{
  {{ join ",\n  " $top }}
}
{{- end }}

{{/*
The conflist: cni.conf as it is, or flannel's (network "cbr0": weft, then
portmap). The name stays flannel's "cbr0" so that a runtime's cached results
of pods made under flannel still match after a switch.
*/}}
{{- define "weft.cniConf" -}}
{{- if .Values.cni.conf -}}
{{- $c := fromJson .Values.cni.conf -}}
{{- if or (hasKey $c "Error") (not (hasKey $c "plugins")) (not (hasKey $c "name")) -}}
{{- fail "cni.conf: not a conflist (JSON with \"name\" and \"plugins\")" -}}
{{- end -}}
{{- .Values.cni.conf | trim -}}
{{- else -}}
{
  "name": "cbr0",
  "cniVersion": {{ toJson .Values.cni.cniVersion }},
  "plugins": [
    {
      "type": "weft",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {
        "portMappings": true
      }
    }
  ]
}
{{- end -}}
{{- end }}

{{/* Whether the ConfigMap carries cni-conf.json (and install-cni gets --cni-conf). */}}
{{- define "weft.hasCniConf" -}}
{{- if or .Values.cni.conf (ne .Values.cni.cniVersion "auto") -}}true{{- end -}}
{{- end }}

{{/* weftd's securityContext (the agent, and weftd cleanup). */}}
{{- define "weft.weftdSecurityContext" -}}
# Not privileged: one capability, NET_ADMIN, for the VXLAN or TUN
# device, routes, neighbour and FDB entries and the nftables
# table (all over netlink; no iptables binary, hence no NET_RAW).
#
# uid 0, not runAsNonRoot, for two reasons:
# - Kubernetes gives added capabilities to uid 0 only; a non-root
#   process would get NET_ADMIN only through file capabilities,
#   which need allowPrivilegeEscalation: true (no_new_privs
#   ignores them), a worse trade;
# - weftd writes /run/flannel/subnet.env into a host directory
#   owned by root that flannel and the CNI plugin share.
# Every other capability of root is dropped (no DAC_OVERRIDE,
# CHOWN, SETUID, SYS_ADMIN, ...); of the host it sees only the
# paths mounted into it.
runAsUser: 0
runAsGroup: 0
runAsNonRoot: false
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
  add: ["NET_ADMIN"]
{{- end }}

{{/* A container of cleanup mode (after its name): `weftd cleanup`, and with
.wait, `weftd cleanup --wait`. */}}
{{- define "weft.cleanupContainer" -}}
{{- $v := .root.Values -}}
image: {{ include "weft.image" .root }}
imagePullPolicy: {{ $v.image.pullPolicy }}
command: ["/usr/local/bin/weftd"]
args:
  - --net-config-path=/etc/kube-flannel/net-conf.json
  - --subnet-file=/run/flannel/subnet.env
  - --log-format={{ $v.logFormat }}
  - cleanup
  - --conf-dir=/host/cni/net.d
  - --bin-dir=/host/cni/bin
  - --data-dir=/host/cni/data/flannel
  {{- if .wait }}
  - --wait
  {{- end }}
env:
  - name: WEFTD_LOG
    value: {{ $v.logLevel | quote }}
  {{- if .wait }}
  # Asks the API which pods are still on this node (their sandboxes are
  # stopped again until the pod objects are gone).
  - name: NODE_NAME
    valueFrom:
      fieldRef:
        fieldPath: spec.nodeName
  {{- with $v.apiServer.host }}
  - name: KUBERNETES_SERVICE_HOST
    value: {{ . | quote }}
  - name: KUBERNETES_SERVICE_PORT
    value: {{ $v.apiServer.port | quote }}
  {{- end }}
  {{- end }}
{{- if .wait }}
resources:
  requests:
    cpu: 1m
    memory: 8Mi
{{- else }}
{{- with $v.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
securityContext:
  {{- include "weft.weftdSecurityContext" .root | nindent 2 }}
volumeMounts:
  - name: run-flannel
    mountPath: /run/flannel
  - name: cni-conf
    mountPath: /host/cni/net.d
  - name: cni-bin
    mountPath: /host/cni/bin
  - name: cni-data
    mountPath: /host/cni/data
    readOnly: true
  - name: weft-config
    mountPath: /etc/kube-flannel
    readOnly: true
{{- end }}

{{/*
The scrape endpoint of the ServiceMonitor and the PodMonitor (.m: its
values): the pod's port healthz, where weftd serves /metrics. weftd runs on
the host network, so the target's address is the node's IP; instance is set
to the node's name instead, which is what an alert or the dashboard should
show.
*/}}
{{- define "weft.scrapeEndpoint" -}}
port: healthz
path: /metrics
scheme: http
{{- with .m.interval }}
interval: {{ . | quote }}
{{- end }}
{{- with .m.scrapeTimeout }}
scrapeTimeout: {{ . | quote }}
{{- end }}
relabelings:
  - action: replace
    sourceLabels: [__meta_kubernetes_pod_node_name]
    targetLabel: instance
{{- end }}
