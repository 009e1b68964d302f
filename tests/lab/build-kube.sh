#!/usr/bin/env bash
# Builds (once) the Kubernetes binaries from Debian's `kubernetes` source package with Debian's
# Go, offline (the tree vendors its dependencies): the control plane (kube-apiserver,
# kube-controller-manager, kube-scheduler), the node (kubelet, kube-proxy), kubeadm and kubectl,
# plus the pause container's C source kept from the tree and a minimal crictl
# (tests/lab/crictl: cri-tools is in no Debian release) built in the same tree. No registry ships these binaries to
# this kind of machine; the lab's k3s stand-in, the kubeadm lab's package mirror and images and
# the kind node image are made from them. Cached outside the repository, keyed by the Debian
# version. Prints the directory holding the binaries. About 25 minutes cold on 2 cores.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${KSCTL_LAB_CACHE:-$HOME/.cache/ksctl-lab}
MIRROR=${KSCTL_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"

mkdir -p "$CACHE"
# Tests run as parallel processes: one builds, the others wait for it.
exec 9>"$CACHE/.build-kube.lock"
flock 9
BINS=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubeadm kubectl)
# A build that holds every binary (and the pause source) is complete.
complete() {
  [ -f "$1/.complete" ] && [ -f "$1/pause.c" ] || return 1
  local b; for b in "${BINS[@]}" crictl; do [ -x "$1/$b" ] || return 1; done
}
# Built before (any Debian version): use it without asking the mirror.
for done in "$CACHE"/kube-*/.complete; do
  complete "$(dirname "$done")" && { dirname "$done"; exit 0; }
done

need=()
command -v go >/dev/null 2>&1 || need+=(golang-go)
command -v dpkg-source >/dev/null 2>&1 || need+=(dpkg-dev)
[ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need+=(golang-github-modern-go-reflect2-dev)
command -v make >/dev/null 2>&1 || need+=(make)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}" >&2
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >&2
fi

# A private deb-src list: the machine's own apt configuration stays untouched.
WORK=$CACHE/kube-src
mkdir -p "$WORK/apt/lists/partial"
echo "deb-src $MIRROR bookworm main" > "$WORK/apt/sources.list"
APT=(apt-get -q -o "Dir::Etc::SourceList=$WORK/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
     -o "Dir::State::Lists=$WORK/apt/lists" -o "Dir::Cache=$WORK/apt")
"${APT[@]}" update >&2
VERSION=$(apt-cache -o "Dir::Etc::SourceList=$WORK/apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null" \
  -o "Dir::State::Lists=$WORK/apt/lists" -o "Dir::Cache=$WORK/apt" showsrc kubernetes \
  | awk '/^Version:/ {print $2; exit}')
[ -n "$VERSION" ] || { echo "no kubernetes source package found on $MIRROR" >&2; exit 1; }
OUT=$CACHE/kube-$VERSION
if complete "$OUT"; then echo "$OUT"; exit 0; fi

SRC=$WORK/kubernetes-$VERSION
if [ ! -f "$SRC/.unpacked" ]; then
  rm -rf "$SRC" "$WORK/dl"; mkdir -p "$WORK/dl"
  (cd "$WORK/dl" && "${APT[@]}" source --download-only kubernetes >&2)
  dpkg-source --no-check -x "$WORK/dl"/kubernetes_*.dsc "$SRC" >&2
  # The vendored reflect2 1.0.1 crashes under Go >= 1.18 on the first custom-resource write;
  # Debian's 1.0.2 does not.
  R=$SRC/vendor/github.com/modern-go/reflect2
  rm -rf "$R"; cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$R"; rm -f "$R/go.mod"
  touch "$SRC/.unpacked"
fi

# The pause container's source (upstream build/pause); the lab compiles it into the pause image.
PAUSE_C=$(find "$SRC/build/pause" -name pause.c 2>/dev/null | head -1)
[ -n "$PAUSE_C" ] || { echo "build/pause/.../pause.c is not in the source package" >&2; exit 1; }

echo "==> building ${BINS[*]} $VERSION (about 25 minutes, once)" >&2
WHAT=""; for b in "${BINS[@]}"; do WHAT="$WHAT cmd/$b"; done
# Static (no cgo) like upstream's release binaries: they run on any Debian root, in the lab's
# hosts and in the kind node image alike.
(cd "$SRC" && CGO_ENABLED=0 GOFLAGS=-mod=vendor GO111MODULE=on GOCACHE=$WORK/gocache \
  make WHAT="${WHAT# }" >&2)
mkdir -p "$OUT.tmp"
# crictl, on the kubelet's own CRI client (its packages are compiled already), built the way
# the tree's make builds: GOPATH mode through _output's k8s.io/kubernetes link, vendored.
mkdir -p "$SRC/cmd/ksctl-lab-crictl"
cp "$HERE/crictl/main.go" "$SRC/cmd/ksctl-lab-crictl/main.go"
(cd "$SRC/_output/local/go/src/k8s.io/kubernetes" && CGO_ENABLED=0 GO111MODULE=off \
  GOPATH="$SRC/_output/local/go" GOCACHE=$WORK/gocache go build -o "$OUT.tmp/crictl" ./cmd/ksctl-lab-crictl >&2)
for b in "${BINS[@]}"; do
  cp "$SRC/_output/local/go/bin/$b" "$OUT.tmp/$b" 2>/dev/null || cp "$SRC/_output/bin/$b" "$OUT.tmp/$b"
done
cp "$PAUSE_C" "$OUT.tmp/pause.c"
echo "$VERSION" > "$OUT.tmp/debian-version"
touch "$OUT.tmp/.complete"
rm -rf "$OUT"; mv "$OUT.tmp" "$OUT"
# The source tree and Go cache are large and only needed to build.
rm -rf "$SRC" "$WORK/gocache" "$WORK/dl" "$WORK"/kubernetes_*
echo "$OUT"
