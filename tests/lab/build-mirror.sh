#!/usr/bin/env bash
# Builds (once) the lab's air-gapped mirror from this machine alone, laid out the way ksctl's
# artifact source expects (KSCTL_ARTIFACTS_URL, KSCTL_IMAGE_REGISTRY):
#
#   <out>/files/kubernetes/v1.20/deb/   an apt repository like pkgs.k8s.io (flat, signed):
#       kubelet, kubeadm, kubectl 1.20.2 (the Debian-built binaries of tests/lab/build-kube.sh,
#       with upstream's kubelet unit and kubeadm drop-in), kubernetes-cni (Debian's
#       containernetworking-plugins under /opt/cni/bin) and cri-tools (the lab's minimal crictl)
#   <out>/registry/                     the storage of a distribution registry (Debian's
#       docker-registry) holding kube-apiserver, kube-controller-manager, kube-scheduler and
#       kube-proxy v1.20.2, pause 3.2 (built from the source tree's build/pause) and
#       ksctl-lab/busybox (a workload image from busybox-static), at the names kubeadm 1.20
#       asks for under the registry's root. ksctl's agent image changes with every build, so
#       tests push it themselves (tests/lab/agent-image.sh).
#
# The apt repository is signed (InRelease, Release.gpg) with a key made for the lab and
# published as Release.key, like pkgs.k8s.io, so ksctl's install path (fetch Release.key,
# dearmor, `signed-by=`) runs unchanged; no `[trusted=yes]`. CoreDNS has no source on this
# machine: the registry lacks it (clusters of the lab have no cluster DNS).
# Cached outside the repository; prints the output directory.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VERSION=v2
CACHE=${KSCTL_LAB_CACHE:-$HOME/.cache/ksctl-lab}
KUBE=$(bash "$HERE/build-kube.sh")
NODE_ROOT=$(bash "$HERE/build-node-rootfs.sh")
KV=$("$KUBE/kubeadm" version -o short)             # v1.20.2
OUT=$CACHE/mirror-$KV-$VERSION
if [ -f "$OUT/.complete" ]; then echo "$OUT"; exit 0; fi
exec 9>"$CACHE/.build-mirror.lock"
flock 9
if [ -f "$OUT/.complete" ]; then echo "$OUT"; exit 0; fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v docker-registry >/dev/null 2>&1 || need+=(docker-registry)
command -v skopeo >/dev/null 2>&1 || need+=(skopeo)
command -v gpg >/dev/null 2>&1 || need+=(gpg)
command -v dpkg-scanpackages >/dev/null 2>&1 || need+=(dpkg-dev)
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >&2
fi
echo "==> the lab's mirror for Kubernetes $KV in $OUT (a minute or two, once)" >&2
TMP=$OUT.tmp
rm -rf "$TMP"
mkdir -p "$TMP"
W=$(mktemp -d)
REG_PID=""
cleanup() { [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT

# --- packages ------------------------------------------------------------------------------
PKGV=${KV#v}-00
MINOR=$(echo "$KV" | cut -d. -f1,2)
REPO=$TMP/files/kubernetes/$MINOR/deb
mkdir -p "$REPO"
# deb NAME VERSION DEPENDS DESCRIPTION: package the tree $W/NAME as NAME_VERSION_amd64.deb.
deb() {
  local name=$1 version=$2 depends=$3 description=$4 d=$W/$1
  mkdir -p "$d/DEBIAN"
  {
    echo "Package: $name"
    echo "Version: $version"
    echo "Architecture: amd64"
    echo "Maintainer: ksctl-rs lab <lab@ksctl.invalid>"
    [ -n "$depends" ] && echo "Depends: $depends"
    echo "Section: admin"
    echo "Priority: optional"
    echo "Description: $description"
    echo " Built by ksctl-rs' test lab from Debian's sources, for air-gapped tests."
  } > "$d/DEBIAN/control"
  dpkg-deb --root-owner-group -Zgzip -b "$d" "$REPO/${name}_${version}_amd64.deb" >/dev/null
}
systemd_postinst() { # unit: enable the unit and (re)start it when systemd runs
  cat > "$W/$2/DEBIAN/postinst" <<EOF
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable $1 >/dev/null 2>&1 || true
  systemctl restart $1 || true
fi
EOF
  chmod 755 "$W/$2/DEBIAN/postinst"
}

mkdir -p "$W/kubelet/usr/bin" "$W/kubelet/lib/systemd/system"
install -m 0755 "$KUBE/kubelet" "$W/kubelet/usr/bin/kubelet"
# Upstream's kubelet unit (kubernetes/release, deb templates of the 1.20 era).
cat > "$W/kubelet/lib/systemd/system/kubelet.service" <<'EOF'
[Unit]
Description=kubelet: The Kubernetes Node Agent
Documentation=https://kubernetes.io/docs/home/
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/kubelet
Restart=always
StartLimitInterval=0
RestartSec=10

[Install]
WantedBy=multi-user.target
EOF
mkdir -p "$W/kubelet/DEBIAN"
systemd_postinst kubelet kubelet
deb kubelet "$PKGV" "iptables (>= 1.4.21), kubernetes-cni (>= 0.8.6), iproute2, socat, util-linux, mount, ebtables, ethtool, conntrack" \
  "Kubernetes Node Agent"

mkdir -p "$W/kubeadm/usr/bin" "$W/kubeadm/etc/systemd/system/kubelet.service.d" "$W/kubeadm/DEBIAN"
install -m 0755 "$KUBE/kubeadm" "$W/kubeadm/usr/bin/kubeadm"
# Upstream's kubeadm drop-in for the kubelet unit.
cat > "$W/kubeadm/etc/systemd/system/kubelet.service.d/10-kubeadm.conf" <<'EOF'
# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
# This is a file that "kubeadm init" and "kubeadm join" generates at runtime, populating the KUBELET_KUBEADM_ARGS variable dynamically
EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env
# This is a file that the user can use for overrides of the kubelet args as a last resort. Preferably, the user should use
# the .NodeRegistration.KubeletExtraArgs object in the configuration files instead. KUBELET_EXTRA_ARGS should be sourced from this file.
EnvironmentFile=-/etc/default/kubelet
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
EOF
systemd_postinst kubelet kubeadm
deb kubeadm "$PKGV" "kubelet (>= 1.13.0), kubectl (>= 1.13.0), kubernetes-cni (>= 0.8.6), cri-tools (>= 1.13.0)" \
  "Kubernetes Cluster Bootstrapping Tool"

mkdir -p "$W/kubectl/usr/bin"
install -m 0755 "$KUBE/kubectl" "$W/kubectl/usr/bin/kubectl"
deb kubectl "$PKGV" "" "Kubernetes Command Line Tool"

mkdir -p "$W/kubernetes-cni/opt/cni/bin"
cp -a "$NODE_ROOT"/usr/lib/cni/. "$W/kubernetes-cni/opt/cni/bin/"
CNIV=$(chroot "$NODE_ROOT" dpkg-query -W -f '${Version}' containernetworking-plugins | sed 's/+.*//')
deb kubernetes-cni "$CNIV-00" "" "Kubernetes CNI (Debian's containernetworking-plugins)"

mkdir -p "$W/cri-tools/usr/bin"
install -m 0755 "$KUBE/crictl" "$W/cri-tools/usr/bin/crictl"
deb cri-tools "1.20.0~ksctl.lab1" "" "Minimal crictl of the ksctl-rs lab (tests/lab/crictl)"

(cd "$REPO" && dpkg-scanpackages -m . /dev/null 2>/dev/null > Packages && gzip -9k Packages)
{
  echo "Origin: ksctl-rs lab"
  echo "Label: ksctl-rs lab Kubernetes $MINOR"
  echo "Architectures: amd64"
  echo "Date: $(LC_ALL=C date -u '+%a, %d %b %Y %H:%M:%S UTC')"
  echo "SHA256:"
  for f in Packages Packages.gz; do
    printf ' %s %s %s\n' "$(sha256sum "$REPO/$f" | cut -d' ' -f1)" "$(stat -c %s "$REPO/$f")" "$f"
  done
} > "$REPO/Release"
export GNUPGHOME=$CACHE/mirror-gnupg
if [ ! -f "$GNUPGHOME/.made" ]; then
  rm -rf "$GNUPGHOME"; mkdir -m 700 -p "$GNUPGHOME"
  gpg --batch --quiet --passphrase '' --quick-gen-key 'ksctl-rs lab mirror <lab@ksctl.invalid>' ed25519 sign never 2>/dev/null
  touch "$GNUPGHOME/.made"
fi
gpg --batch --yes --quiet --armor --export > "$REPO/Release.key"
gpg --batch --yes --quiet --clearsign -o "$REPO/InRelease" "$REPO/Release"
gpg --batch --yes --quiet -abs -o "$REPO/Release.gpg" "$REPO/Release"

# --- images --------------------------------------------------------------------------------
# A small root for static binaries: /tmp, users, CA certificates.
SR=$W/static-root
mkdir -p "$SR/tmp" "$SR/etc/ssl/certs" "$SR/usr/local/bin"
chmod 1777 "$SR/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' > "$SR/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$SR/etc/group"
cp "$NODE_ROOT/etc/ssl/certs/ca-certificates.crt" "$SR/etc/ssl/certs/"
tar -C "$SR" -c . | docker import -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' - ksctl-lab/static-base:"$VERSION" >/dev/null
image() { # name tag dockerfile-body (context $W/ctx)
  printf '%s\n' "$3" > "$W/ctx/Dockerfile"
  DOCKER_BUILDKIT=0 docker build -q -t "ksctl-lab-mirror/$1:$2" "$W/ctx" >/dev/null 2>&1 \
    || DOCKER_BUILDKIT=0 docker build -t "ksctl-lab-mirror/$1:$2" "$W/ctx" >&2
  IMAGES+=("$1:$2")
}
IMAGES=()
for b in kube-apiserver kube-controller-manager kube-scheduler; do
  rm -rf "$W/ctx"; mkdir -p "$W/ctx"; cp "$KUBE/$b" "$W/ctx/"
  image "$b" "$KV" "FROM ksctl-lab/static-base:$VERSION
COPY $b /usr/local/bin/$b"
done
# kube-proxy programs iptables: Debian's iptables (the same nft backend as the nodes') and
# conntrack on a minimal Debian root.
# A root of its own version: it changes less often than the mirror.
PROXY_ROOT=$CACHE/rootfs-kube-proxy-bookworm-v1
if [ ! -f "$PROXY_ROOT/.complete" ]; then
  rm -rf "$PROXY_ROOT.tmp"
  debootstrap --variant=minbase --include=iptables,conntrack,ipset,kmod bookworm "$PROXY_ROOT.tmp" \
    "${KSCTL_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >&2
  chroot "$PROXY_ROOT.tmp" apt-get clean
  rm -rf "$PROXY_ROOT.tmp/var/lib/apt/lists"/*
  touch "$PROXY_ROOT.tmp/.complete"
  mv "$PROXY_ROOT.tmp" "$PROXY_ROOT"
fi
tar -C "$PROXY_ROOT" --exclude=./.complete -c . | docker import - ksctl-lab/kube-proxy-base:"$VERSION" >/dev/null
rm -rf "$W/ctx"; mkdir -p "$W/ctx"; cp "$KUBE/kube-proxy" "$W/ctx/"
image kube-proxy "$KV" "FROM ksctl-lab/kube-proxy-base:$VERSION
COPY kube-proxy /usr/local/bin/kube-proxy"
# etcd for clusters with stacked etcd (kind): Debian's etcd 3.4 (dynamically linked) on the
# same minimal Debian root, tagged as kubeadm 1.20 names it.
rm -rf "$W/ctx"; mkdir -p "$W/ctx"; cp "$NODE_ROOT/usr/bin/etcd" "$NODE_ROOT/usr/bin/etcdctl" "$W/ctx/"
ETCD_TAG=$("$KUBE/kubeadm" config images list --kubernetes-version "$KV" | sed -n 's#.*/etcd:##p')
image etcd "$ETCD_TAG" "FROM ksctl-lab/kube-proxy-base:$VERSION
COPY etcd etcdctl /usr/local/bin/"
# pause, from the source tree's build/pause, static.
rm -rf "$W/ctx"; mkdir -p "$W/ctx"
PAUSE_TAG=$("$KUBE/kubeadm" config images list --kubernetes-version "$KV" | sed -n 's#.*/pause:##p')
gcc -Os -Wall -Werror -static -o "$W/ctx/pause" "$KUBE/pause.c"
image pause "$PAUSE_TAG" "FROM scratch
COPY pause /pause
ENTRYPOINT [\"/pause\"]"
# A workload for tests: busybox (httpd, sh) from busybox-static.
rm -rf "$W/ctx"; mkdir -p "$W/ctx/root/bin" "$W/ctx/root/tmp" "$W/ctx/root/www"
cp "$NODE_ROOT/bin/busybox" "$W/ctx/root/bin/busybox"
for a in sh ls cat echo sleep httpd wget hostname env id ps; do ln -s busybox "$W/ctx/root/bin/$a"; done
echo ok > "$W/ctx/root/www/index.html"
image ksctl-lab/busybox 1 "FROM scratch
COPY root/ /
ENV PATH=/bin
CMD [\"/bin/sh\"]"

# Into the registry's storage, with skopeo from the Docker engine.
REG=$TMP/registry
mkdir -p "$REG"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$W/registry.yml" <<EOF
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $REG}}
http: {addr: 127.0.0.1:$PORT}
EOF
docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
for i in "${IMAGES[@]}"; do
  skopeo copy -q --dest-tls-verify=false "docker-daemon:ksctl-lab-mirror/$i" "docker://127.0.0.1:$PORT/$i" >&2
done
printf '%s\n' "${IMAGES[@]}" > "$TMP/images"
kill "$REG_PID"; wait "$REG_PID" 2>/dev/null || true; REG_PID=""
touch "$TMP/.complete"
rm -rf "$OUT"; mv "$TMP" "$OUT"
echo "$OUT"
