#!/usr/bin/env bash
# A stand-in for the `kind` CLI, because kind and its node images cannot be had on this machine.
# It answers the commands ksctl's `local` provider runs, with kind's outputs and exit codes, and
# does the part ksctl depends on for real: `create cluster` starts a Kubernetes API server (the
# Debian-built kube-apiserver on its own etcd, on free loopback ports) and writes an admin
# kubeconfig named `kind-<name>` as kind does; `delete cluster` stops it. No nodes or containers:
# the node image and the node list of --config are checked and recorded, not run.
#
# Environment: KIND_STANDIN_DIR (state, one directory per cluster), KIND_STANDIN_APISERVER and
# KIND_STANDIN_ETCD (the binaries). Every `create cluster` appends a line to $DIR/creates.log.
set -euo pipefail
DIR=${KIND_STANDIN_DIR:?KIND_STANDIN_DIR}
mkdir -p "$DIR"

die() { echo "ERROR: $*" >&2; exit 1; }
name_arg() {
  NAME=kind CONFIG="" IMAGE="" KUBECONFIG_OUT="" 
  while [ $# -gt 0 ]; do
    case "$1" in
      --name) NAME=$2; shift 2 ;;
      --config) CONFIG=$2; shift 2 ;;
      --image) IMAGE=$2; shift 2 ;;
      --kubeconfig) KUBECONFIG_OUT=$2; shift 2 ;;
      --wait) shift 2 ;;
      *) die "the stand-in does not emulate $1" ;;
    esac
  done
}
ready() { [ -f "$DIR/$1/kubeconfig" ]; }

case "${1:-} ${2:-}" in
"version "*)
  echo "kind v0.24.0 (ksctl test stand-in) linux/amd64" ;;
"get clusters")
  found=0
  for d in "$DIR"/*/; do
    [ -d "$d" ] || continue
    basename "$d"; found=1
  done
  [ $found = 1 ] || echo "No kind clusters found." >&2 ;;
"get kubeconfig")
  shift 2; name_arg "$@"
  ready "$NAME" || die "could not locate any control plane nodes for cluster named '$NAME'"
  cat "$DIR/$NAME/kubeconfig" ;;
"delete cluster")
  shift 2; name_arg "$@"
  echo "Deleting cluster \"$NAME\" ..." >&2
  if [ -d "$DIR/$NAME" ]; then
    for p in "$DIR/$NAME"/*.pid; do [ -f "$p" ] && kill -9 "$(cat "$p")" 2>/dev/null || true; done
    rm -rf "${DIR:?}/$NAME"
  fi
  echo "Deleted nodes: [\"$NAME-control-plane\"]" >&2 ;;
"create cluster")
  shift 2; name_arg "$@"
  [ -d "$DIR/$NAME" ] && die "failed to create cluster: node(s) already exist for a cluster with the name \"$NAME\""
  [[ $IMAGE =~ ^kindest/node:v[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "not a kind node image: $IMAGE"
  [ -f "$CONFIG" ] || die "no config file $CONFIG"
  grep -qx 'kind: Cluster' "$CONFIG" && grep -qx 'apiVersion: kind.x-k8s.io/v1alpha4' "$CONFIG" \
    || die "$CONFIG is not a kind v1alpha4 Cluster"
  cps=$(grep -cx -- '- role: control-plane' "$CONFIG" || true)
  workers=$(grep -cx -- '- role: worker' "$CONFIG" || true)
  [ "$cps" -ge 1 ] || die "$CONFIG has no control-plane node"
  [ -n "$KUBECONFIG_OUT" ] || die "the stand-in writes only to --kubeconfig files"
  echo "$NAME image=$IMAGE control-planes=$cps workers=$workers" >> "$DIR/creates.log"
  echo "Creating cluster \"$NAME\" ..." >&2
  D=$DIR/$NAME; mkdir -p "$D"; cd "$D"
  {
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=kind-ca
    openssl req -newkey rsa:2048 -nodes -keyout serving.key -out serving.csr -subj /CN=kube-apiserver
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > serving.ext
    openssl x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile serving.ext -out serving.crt
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj /O=system:masters/CN=kubernetes-admin
    printf 'extendedKeyUsage=clientAuth\n' > admin.ext
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile admin.ext -out admin.crt
    openssl genrsa -out sa.key 2048 && openssl rsa -in sa.key -pubout -out sa.pub
  } 2>/dev/null
  port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  client=$(port) peer=$(port) api=$(port)
  setsid "${KIND_STANDIN_ETCD:?}" --data-dir "$D/etcd" --listen-client-urls "http://127.0.0.1:$client" \
    --advertise-client-urls "http://127.0.0.1:$client" --listen-peer-urls "http://127.0.0.1:$peer" \
    >/dev/null 2>"$D/etcd.log" < /dev/null & echo $! > "$D/etcd.pid"
  setsid "${KIND_STANDIN_APISERVER:?}" --etcd-servers="http://127.0.0.1:$client" --secure-port="$api" \
    --bind-address=127.0.0.1 --advertise-address=10.255.0.1 --tls-cert-file="$D/serving.crt" \
    --tls-private-key-file="$D/serving.key" --client-ca-file="$D/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$D/sa.pub" --service-account-signing-key-file="$D/sa.key" \
    --service-cluster-ip-range=10.96.0.0/16 --authorization-mode=Node,RBAC \
    >/dev/null 2>"$D/kube-apiserver.log" < /dev/null & echo $! > "$D/kube-apiserver.pid"
  for _ in $(seq 1 120); do
    curl -sf --cacert ca.crt --cert admin.crt --key admin.key "https://127.0.0.1:$api/readyz" >/dev/null && break
    sleep 0.5
  done
  curl -sf --cacert ca.crt --cert admin.crt --key admin.key "https://127.0.0.1:$api/readyz" >/dev/null \
    || die "the API server did not become ready (see $D/kube-apiserver.log)"
  b64() { base64 -w0 "$1"; }
  cat > kubeconfig.tmp <<EOF
apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: $(b64 ca.crt)
    server: https://127.0.0.1:$api
  name: kind-$NAME
contexts:
- context:
    cluster: kind-$NAME
    user: kind-$NAME
  name: kind-$NAME
current-context: kind-$NAME
preferences: {}
users:
- name: kind-$NAME
  user:
    client-certificate-data: $(b64 admin.crt)
    client-key-data: $(b64 admin.key)
EOF
  cp kubeconfig.tmp "$KUBECONFIG_OUT"
  mv kubeconfig.tmp kubeconfig
  echo "Set kubectl context to \"kind-$NAME\"" >&2 ;;
*)
  die "the stand-in does not emulate: kind $*" ;;
esac
