#!/usr/bin/env bash
# Installs everything weft's lab and tests need on a Debian 12 machine, as root.
# Idempotent: a second run only checks. Prints what it does.
set -euo pipefail

say() { printf '==> %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-host.sh: must run as root (the lab creates network namespaces); try: sudo $0" >&2
  exit 1
fi

PACKAGES=(
  containernetworking-plugins nftables iproute2 iputils-ping iperf3
  etcd-server etcd-client golang-go dpkg-dev openssl ca-certificates curl
  golang-github-modern-go-reflect2-dev procps util-linux ethtool python3
  iptables  # the tests make flanneld's iptables rules the way flanneld does
  protobuf-compiler libprotobuf-dev  # etcd-client compiles etcd's v3 API (.proto) when built
  binutils  # strip: the image ships weftd and weft without symbols
  gcc libc6-dev  # the pause binary of the real-node lab's sandboxes
  containerd runc busybox-static  # the real-node lab: each node's runtime and its workload image
  ipset conntrack  # kube-proxy on the real nodes: --cleanup removes its sets; stale UDP flows flushed
)

# kubectl: this machine image may carry a newer one; otherwise Debian's.
command -v kubectl >/dev/null || PACKAGES+=(kubernetes-client)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

# deb-src entry: kube-apiserver is built from Debian's own `kubernetes` source package.
SRC_LIST=/etc/apt/sources.list.d/weft-deb-src.sources
need_update=0
if [ ! -f "$SRC_LIST" ]; then
  base=/etc/apt/sources.list.d/debian.sources
  if [ -f "$base" ]; then
    say "adding deb-src entries (copy of $base) as $SRC_LIST"
    sed 's/^Types: deb$/Types: deb-src/' "$base" >"$SRC_LIST"
  elif [ -f /etc/apt/sources.list ]; then
    say "adding deb-src entries (from /etc/apt/sources.list) as ${SRC_LIST%.sources}.list"
    SRC_LIST=${SRC_LIST%.sources}.list
    grep -E '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' >"$SRC_LIST"
  else
    echo "setup-host.sh: no Debian apt source found to derive a deb-src entry from" >&2
    exit 1
  fi
  need_update=1
fi

if [ "${#missing[@]}" -gt 0 ] || [ "$need_update" -eq 1 ]; then
  say "apt-get update"
  apt-get update -qq || say "apt-get update reported errors (continuing: some optional sources may be unreachable)"
fi

if [ "${#missing[@]}" -gt 0 ]; then
  say "installing: ${missing[*]}"
  # etcd-server's postinst would start a system etcd on 2379; the lab runs its own.
  created_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ "$created_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
else
  say "host packages present"
fi

modprobe vxlan 2>/dev/null || true
modprobe tun 2>/dev/null || true
modprobe br_netfilter 2>/dev/null || true

# kube-apiserver and the real-node lab's components and images (cached per machine, keyed
# by the source version).
"$(dirname "$0")/build-lab-images" >/dev/null
