#!/usr/bin/env bash
# Builds the Kubernetes components the lab runs from Debian's own `kubernetes`
# source package, once per machine, and caches them outside the work tree:
# kube-apiserver (every lab), and for the real-node lab kubelet, kube-proxy,
# kube-controller-manager, kube-scheduler and the `pause` sandbox binary.
#
# Why from source: Debian 12 ships Kubernetes only as a source package; no
# binary package of these exists in its archive, and nothing outside the
# Debian archive is reachable here. So we build exactly these `cmd/`s from
# that package's sources, offline, with Debian's Go (and pause.c with gcc).
#
# Output: $WEFT_LAB_CACHE/kubernetes-<debian version>/{kube-apiserver,kubelet,
# kube-proxy,kube-controller-manager,kube-scheduler,pause} (default cache:
# /var/cache/weft-lab). Prints the directory's path on stdout.
set -euo pipefail

CACHE=${WEFT_LAB_CACHE:-/var/cache/weft-lab}
say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build-kube: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null || die "golang-go is not installed (run scripts/setup-host.sh)"
command -v dpkg-source >/dev/null || die "dpkg-dev is not installed (run scripts/setup-host.sh)"

VERSION=$(apt-cache showsrc kubernetes 2>/dev/null | sed -n 's/^Version: //p' | sort -V | tail -n1)
[ -n "$VERSION" ] || die "apt knows no source package 'kubernetes': is a deb-src entry configured and 'apt-get update' run? (scripts/setup-host.sh does both)"

COMPONENTS=(kube-apiserver kubelet kube-proxy kube-controller-manager kube-scheduler)
OUT_DIR="$CACHE/kubernetes-$VERSION"
complete=1
for c in "${COMPONENTS[@]}"; do
  "$OUT_DIR/$c" --version >/dev/null 2>&1 || complete=0
done
[ -x "$OUT_DIR/pause" ] || complete=0
if [ "$complete" -eq 1 ]; then
  echo "$OUT_DIR"
  exit 0
fi
command -v gcc >/dev/null || die "gcc is not installed (run scripts/setup-host.sh)"

say "building ${COMPONENTS[*]} and pause from Debian source package kubernetes $VERSION (once per machine, several minutes)"
WORK="$CACHE/build-$VERSION"
rm -rf "$WORK"
mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"

say "fetching source package"
apt-get source -qq --download-only "kubernetes=$VERSION" >/dev/null 2>&1 || die "apt-get source kubernetes=$VERSION failed"
dsc=$(ls ./*.dsc)
dpkg-source -x "$dsc" src >/dev/null || die "dpkg-source -x $dsc failed"
SRC="$WORK/src"

# The vendored reflect2 1.0.1 panics under Go >= 1.18 (nil dereference on the
# first request that decodes a map); Debian's 1.0.2 is the upstream fix.
R2=/usr/share/gocode/src/github.com/modern-go/reflect2
[ -d "$R2" ] || die "golang-github-modern-go-reflect2-dev is not installed (run scripts/setup-host.sh)"
rm -rf "$SRC/vendor/github.com/modern-go/reflect2"
cp -r "$R2" "$SRC/vendor/github.com/modern-go/reflect2"

# GOPATH mode, as Debian's own rules build it (module mode with -mod=vendor
# fails on Go 1.19).
export GOPATH="$WORK/gopath" GO111MODULE=off GOPROXY=off GOTOOLCHAIN=local GOFLAGS= CGO_ENABLED=0
export GOCACHE="$WORK/gocache" HOME="$WORK"
mkdir -p "$GOPATH/src/k8s.io"
ln -s "$SRC" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"

# pkg/generated/openapi/zz_generated.openapi.go is not in the tarball: generate
# it with the vendored openapi-gen over the same packages the upstream
# Makefile.generated_files selects (every +k8s:openapi-gen= package, staging
# seen through vendor/, minus code-generator and sample-apiserver).
say "generating pkg/generated/openapi"
go build -o "$WORK/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
dirs=$(set +o pipefail; find -H . \( -path './_*' -o -path './.*' -o -path ./vendor -o -path ./debian \) -prune -o -type f -name '*.go' -print \
  | xargs grep -l '^// *+k8s:' | xargs grep -l '+k8s:openapi-gen=' \
  | sed 's|^\./staging/src|vendor|; s|^\./||' \
  | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
  | xargs -n1 dirname | LC_ALL=C sort -u)
[ -n "$dirs" ] || die "found no +k8s:openapi-gen packages"
inputs=$(printf 'k8s.io/kubernetes/%s\n' $dirs | paste -sd, -)
"$WORK/openapi-gen" --logtostderr -i "$inputs" \
  -p k8s.io/kubernetes/pkg/generated/openapi -O zz_generated.openapi \
  -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
  -r "$WORK/violations.report" 2>"$WORK/openapi-gen.log" || { tail -20 "$WORK/openapi-gen.log" >&2; die "openapi-gen failed"; }
if ! diff -q "$WORK/violations.report" api/api-rules/violation_exceptions.list >/dev/null; then
  die "openapi-gen's API rule report differs from api/api-rules/violation_exceptions.list: the package selection is wrong"
fi

say "compiling ${COMPONENTS[*]}"
V=k8s.io/kubernetes/vendor/k8s.io
major=$(echo "$VERSION" | sed -E 's/.*really([0-9]+)\..*/\1/; t; s/^([0-9]+)\..*/\1/')
gitver=v$(echo "$VERSION" | sed -E 's/.*really([0-9.]+)-.*/\1/; t; s/^([0-9.]+).*/\1/')
minor=$(echo "$gitver" | cut -d. -f2)
ldflags=""
for pkg in "$V/component-base/version" "$V/client-go/pkg/version"; do
  ldflags="$ldflags -X $pkg.gitVersion=$gitver -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
mkdir -p "$WORK/bin"
pkgs=()
for c in "${COMPONENTS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
go build -tags=selinux,notest -ldflags "-s -w $ldflags" -o "$WORK/bin/" "${pkgs[@]}"

# The pod sandbox's process, as upstream's build/pause builds it.
say "compiling build/pause/linux/pause.c"
gcc -Os -Wall -Werror -static -DVERSION="$gitver-weft" -o "$WORK/bin/pause" build/pause/linux/pause.c
strip "$WORK/bin/pause"

mkdir -p "$OUT_DIR"
for c in "${COMPONENTS[@]}"; do
  "$WORK/bin/$c" --version >&2
  install -m 0755 "$WORK/bin/$c" "$OUT_DIR/$c.tmp"
  mv "$OUT_DIR/$c.tmp" "$OUT_DIR/$c"
done
install -m 0755 "$WORK/bin/pause" "$OUT_DIR/pause"
say "cached in $OUT_DIR"
echo "$OUT_DIR"
