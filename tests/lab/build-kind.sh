#!/usr/bin/env bash
# Real kind on this machine (cached; prints the directory holding `kind` and `docker`):
# - kind v0.27.0, the static binary of Debian 13 (trixie)'s `kind` package, fetched with a
#   private apt list (the machine's apt setup untouched);
# - a kind node image for Kubernetes 1.20.2, `kindest/node:v1.20.2` in the Docker engine (the name
#   ksctl's local provider asks kind for), made from the node lab's image: the mirror's kubelet,
#   kubeadm, kubectl, kubernetes-cni and cri-tools packages installed, containerd configured as
#   kind expects for Kubernetes < 1.24 (runc with cgroupfs, the pause image preloaded as sandbox
#   image), the control-plane, kube-proxy and pause images preloaded (imported without
#   unpacking, as `kind build node-image` does), `/kind/version`, and a bridge CNI configuration
#   (kindnet's image cannot be had: `/kind/manifests/default-cni.yaml` only records that);
# - `docker`, a wrapper kind finds first on its PATH: kind always passes `--privileged`, which
#   this machine's Docker refuses; the wrapper gives node containers what the node lab's hosts
#   get instead (tests/src/node_lab.rs) and drops the flag from `docker exec`. A test-environment
#   adaptation, not part of the product.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VERSION=v3
CACHE=${KSCTL_LAB_CACHE:-$HOME/.cache/ksctl-lab}
OUT=$CACHE/kind-$VERSION
MIRROR=$(bash "$HERE/build-mirror.sh")
NODE=$(bash "$HERE/build-node-image.sh")
KV=$(basename "$MIRROR" | sed -E 's/^mirror-(v[0-9.]+)-v[0-9]+$/\1/')
IMAGE=kindest/node:$KV
exec 9>"$CACHE/.build-kind.lock"
flock 9
have_image() { [ "$(docker image inspect -f '{{index .Config.Labels "io.ksctl.lab.kind"}}' "$IMAGE" 2>/dev/null)" = "$VERSION" ]; }
if [ -f "$OUT/.complete" ] && have_image; then echo "$OUT"; exit 0; fi
mkdir -p "$OUT"

if [ ! -x "$OUT/kind" ]; then
  APT=$CACHE/trixie-apt
  mkdir -p "$APT/lists/partial" "$APT/dl"
  echo "deb ${KSCTL_DEBIAN_MIRROR:-http://deb.debian.org/debian} trixie main" > "$APT/sources.list"
  A=(-o "Dir::Etc::SourceList=$APT/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
     -o "Dir::State::Lists=$APT/lists" -o "Dir::Cache=$APT" -o "Dir::State::status=/dev/null")
  apt-get -q "${A[@]}" update >&2
  (cd "$APT/dl" && rm -f kind_*.deb && apt-get -q "${A[@]}" download kind >&2)
  rm -rf "$APT/dl/x"
  dpkg -x "$APT"/dl/kind_*.deb "$APT/dl/x"
  install -m 0755 "$APT/dl/x/usr/bin/kind" "$OUT/kind"
fi

cat > "$OUT/docker" <<'EOF'
#!/usr/bin/env bash
# kind's `docker`, for a Docker engine that refuses --privileged (see tests/lab/build-kind.sh).
real=${KSCTL_LAB_REAL_DOCKER:-/usr/bin/docker}
out=()
for a in "$@"; do
  if [ "$a" = --privileged ]; then
    if [ "$1" = run ]; then
      out+=(--cap-add ALL --cap-drop SYS_RESOURCE --security-opt systempaths=unconfined
            --device /dev/kmsg --device-cgroup-rule 'a *:* rwm')
    fi
    continue
  fi
  out+=("$a")
done
exec "$real" "${out[@]}"
EOF
chmod 755 "$OUT/docker"

if ! have_image; then
  echo "==> the kind node image $IMAGE (a minute, once)" >&2
  B=ksctl-kind-build-$$
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  W=$(mktemp -d)
  cleanup() { docker rm -f "$B" >/dev/null 2>&1 || true; [ -n "${REG:-}" ] && kill "$REG" 2>/dev/null; rm -rf "$W"; }
  trap cleanup EXIT
  cat > "$W/registry.yml" <<EOF
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $MIRROR/registry}, maintenance: {readonly: {enabled: true}}}
http: {addr: 127.0.0.1:$PORT}
EOF
  docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
  REG=$!
  for _ in $(seq 1 50); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.1; done
  # Upstream's names (kind's kubeadm config sets no imageRepository: kubeadm 1.20 uses k8s.gcr.io).
  mkdir -p "$W/images"
  for i in $(grep -E '^(kube-|pause:|etcd:)' "$MIRROR/images"); do
    skopeo copy -q --src-tls-verify=false "docker://127.0.0.1:$PORT/$i" \
      "docker-archive:$W/images/${i%%:*}.tar:k8s.gcr.io/$i" >&2
  done
  docker run -d --name "$B" --cgroupns private --cap-add ALL --cap-drop SYS_RESOURCE \
    --security-opt seccomp=unconfined --security-opt systempaths=unconfined --device-cgroup-rule 'a *:* rwm' \
    --tmpfs /run --tmpfs /tmp "$NODE" >/dev/null
  docker exec "$B" mkdir -p /kind/images /kind/debs /kind/manifests
  docker cp "$MIRROR/files/kubernetes/$(echo "$KV" | cut -d. -f1,2)/deb/." "$B:/kind/debs/"
  docker cp "$W/images/." "$B:/kind/images/"
  PAUSE=k8s.gcr.io/$(grep '^pause:' "$MIRROR/images")
  docker exec -i "$B" sh -e <<EOF >&2
export DEBIAN_FRONTEND=noninteractive
dpkg -i /kind/debs/*.deb >/dev/null
systemctl disable kubelet >/dev/null 2>&1 || true
echo "$KV" > /kind/version
# kind (< 1.24): runc with cgroupfs; no CAP_SYS_RESOURCE here, so OOM scores are kept.
containerd config default | sed -e "s#sandbox_image = .*#sandbox_image = \"$PAUSE\"#" \
  -e 's/restrict_oom_score_adj = false/restrict_oom_score_adj = true/' > /etc/containerd/config.toml
systemctl enable containerd >/dev/null 2>&1
systemctl start containerd
for t in /kind/images/*.tar; do
  ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned --all-platforms --no-unpack --digests "\$t" >/dev/null
done
ctr --namespace=k8s.io images ls -q
systemctl stop containerd
rm -rf /kind/images /kind/debs
mkdir -p /etc/cni/net.d
cat > /etc/cni/net.d/10-kind-lab.conflist <<'CNI'
{"cniVersion": "0.4.0", "name": "kind-lab", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
CNI
cat > /kind/manifests/default-cni.yaml <<'CNI'
# This node image's pod network is a bridge CNI configuration in /etc/cni/net.d (one node per
# cluster): kindnet's image cannot be had on the machine that built it.
apiVersion: v1
kind: ConfigMap
metadata: {name: ksctl-lab-kind-cni, namespace: kube-system}
data: {cni: "bridge + host-local 10.244.0.0/24, from the node image"}
CNI
EOF
  docker commit -c "LABEL io.ksctl.lab.kind=$VERSION" -c 'ENTRYPOINT ["/usr/local/sbin/ksctl-lab-init"]' \
    -c 'ENV container=docker' "$B" "$IMAGE" >/dev/null
fi
touch "$OUT/.complete"
echo "$OUT"
