#!/bin/sh
# A stand-in for k3s' installer (https://get.k3s.io), served to the lab hosts through ksctl's
# artifact source (KSCTL_ARTIFACTS_URL) because k3s itself cannot be had on this machine.
#
# It takes the arguments ksctl gives k3s and does, for real, the parts ksctl depends on:
# - `server`: keeps its bootstrap data (CA, service-account key, token) in the external etcd
#   given by --datastore-* (the first server writes it, later ones read it and must present
#   the same token, as with k3s), and runs the Debian-built kube-apiserver (downloaded from
#   $GITHUB_URL/download/kube-apiserver) against that etcd, serving on :6443 with the
#   --tls-san addresses in its certificate; writes /etc/rancher/k3s/k3s.yaml (admin client
#   certificate) and /var/lib/rancher/k3s/server/token; registers its Node with --node-taint.
# - `agent`: registers its Node through $K3S_URL (the load balancer) with $K3S_TOKEN. Real k3s'
#   supervisor turns the token into node credentials; here the token is a bearer token the API
#   server accepts (--token-auth-file), and the CA is not pinned (curl -k).
# No kubelet, no container runtime, no CNI: Nodes are objects only.
set -eu
MODE=${1:?usage: install.sh server|agent [flags]}
shift
NODE_NAME=$(hostname)
ENDPOINTS="" CAFILE="" CERTFILE="" KEYFILE="" SANS="" TAINTS=""
for a in "$@"; do
  case "$a" in
    --datastore-endpoint=*) ENDPOINTS=${a#*=} ;;
    --datastore-cafile=*) CAFILE=${a#*=} ;;
    --datastore-certfile=*) CERTFILE=${a#*=} ;;
    --datastore-keyfile=*) KEYFILE=${a#*=} ;;
    --tls-san=*) SANS="$SANS ${a#*=}" ;;
    --node-name=*) NODE_NAME=${a#*=} ;;
    --node-taint=*) TAINTS="$TAINTS ${a#*=}" ;;
    --token=*) K3S_TOKEN=${a#*=} ;;
    *) echo "k3s stand-in: not emulated, ignored: $a" >&2 ;;
  esac
done
echo "k3s stand-in: $MODE $NODE_NAME (asked for ${INSTALL_K3S_VERSION:-channel ${INSTALL_K3S_CHANNEL:-stable}})" >&2

# The Node object, with labels and taints like k3s sets them.
node_json() {
  labels="\"kubernetes.io/hostname\":\"$NODE_NAME\""
  [ "$1" = server ] && labels="$labels,\"node-role.kubernetes.io/control-plane\":\"true\",\"node-role.kubernetes.io/master\":\"true\""
  taints=""
  for t in $TAINTS; do
    k=${t%%=*}; rest=${t#*=}; v=${rest%%:*}; e=${t##*:}
    taints="$taints${taints:+,}{\"key\":\"$k\",\"value\":\"$v\",\"effect\":\"$e\"}"
  done
  printf '{"apiVersion":"v1","kind":"Node","metadata":{"name":"%s","labels":{%s}},"spec":{"taints":[%s]}}' \
    "$NODE_NAME" "$labels" "$taints"
}

# POSTs the Node; 201 created, 409 already there.
register() {
  code=$(curl -s -o /tmp/k3s-standin-node.out -w "%{http_code}" -X POST -H "Content-Type: application/json" \
    "$@" -d "$(node_json "$MODE")" "$URL/api/v1/nodes") || true
  case "$code" in
    201|409) ;;
    *) echo "registering node $NODE_NAME: HTTP $code: $(cat /tmp/k3s-standin-node.out 2>/dev/null)" >&2; return 1 ;;
  esac
}

if [ "$MODE" = agent ]; then
  : "${K3S_URL:?agents need K3S_URL}" "${K3S_TOKEN:?agents need K3S_TOKEN}"
  URL=$K3S_URL
  i=0
  # The load balancer admits a server after its health checks pass.
  until register -k -H "Authorization: Bearer $K3S_TOKEN" 2>/dev/null; do
    i=$((i+1)); [ $i -lt 60 ] || { register -k -H "Authorization: Bearer $K3S_TOKEN"; exit 1; }
    sleep 1
  done
  mkdir -p /var/lib/rancher/k3s/agent
  cat > /usr/local/bin/k3s-agent-uninstall.sh <<'EOF'
#!/bin/sh
rm -rf /var/lib/rancher /etc/rancher /usr/local/bin/k3s-agent-uninstall.sh
EOF
  chmod 755 /usr/local/bin/k3s-agent-uninstall.sh
  exit 0
fi

[ "$MODE" = server ] || { echo "unknown mode $MODE" >&2; exit 2; }
: "${ENDPOINTS:?the stand-in needs --datastore-endpoint}"
S=/var/lib/rancher/k3s/server
T=$S/tls
mkdir -p "$T" /etc/rancher/k3s
export ETCDCTL_API=3
E="etcdctl --endpoints=$ENDPOINTS --cacert=$CAFILE --cert=$CERTFILE --key=$KEYFILE --command-timeout=10s"

stored=$($E get /k3s-standin/token --print-value-only)
if [ -z "$stored" ]; then
  [ -n "${K3S_TOKEN:-}" ] || K3S_TOKEN="K10$(openssl rand -hex 32)::server:$(openssl rand -hex 16)"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$T/ca.key" -out "$T/ca.crt" -days 3650 \
    -subj "/CN=k3s-server-ca" 2>/dev/null
  openssl genrsa -out "$T/sa.key" 2048 2>/dev/null
  openssl rsa -in "$T/sa.key" -pubout -out "$T/sa.pub" 2>/dev/null
  for f in ca.crt ca.key sa.key sa.pub; do $E put "/k3s-standin/$f" < "$T/$f" >/dev/null; done
  $E put /k3s-standin/token "$K3S_TOKEN" >/dev/null
else
  if [ -n "${K3S_TOKEN:-}" ] && [ "$K3S_TOKEN" != "$stored" ]; then
    echo "bootstrap data already found and encrypted with different token" >&2
    exit 1
  fi
  K3S_TOKEN=$stored
  for f in ca.crt ca.key sa.key sa.pub; do $E get "/k3s-standin/$f" --print-value-only > "$T/$f"; done
fi
(umask 077; printf '%s\n' "$K3S_TOKEN" > "$S/token")
printf '%s,system:k3s-agent,k3s-agent,"system:masters"\n' "$K3S_TOKEN" > "$S/token-auth.csv"
chmod 600 "$S/token-auth.csv"

san="DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:localhost,IP:127.0.0.1,IP:10.43.0.1"
for ip in $(hostname -I) $SANS; do san="$san,IP:$ip"; done
sign() { # name subject extensions
  openssl req -newkey rsa:2048 -nodes -keyout "$T/$1.key" -out "$T/$1.csr" -subj "$2" 2>/dev/null
  printf '%b' "$3" > "$T/$1.ext"
  openssl x509 -req -in "$T/$1.csr" -CA "$T/ca.crt" -CAkey "$T/ca.key" -CAcreateserial -days 365 \
    -extfile "$T/$1.ext" -out "$T/$1.crt" 2>/dev/null
}
sign serving "/CN=kube-apiserver" "subjectAltName=$san\nextendedKeyUsage=serverAuth\n"
sign admin "/O=system:masters/CN=system:admin" "extendedKeyUsage=clientAuth\n"

curl -sfL --retry 5 "$GITHUB_URL/download/kube-apiserver" -o /usr/local/bin/kube-apiserver.new
chmod 755 /usr/local/bin/kube-apiserver.new
mv /usr/local/bin/kube-apiserver.new /usr/local/bin/kube-apiserver

# A server started by an earlier, interrupted run still holds :6443: stop it and wait until it
# is gone (the API server takes a few seconds to shut down).
if [ -f /run/k3s-standin.pid ]; then
  old=$(cat /run/k3s-standin.pid)
  alive() { [ -d "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
  kill "$old" 2>/dev/null || true
  i=0
  while alive "$old" && [ $i -lt 150 ]; do
    i=$((i+1)); [ $i -ne 100 ] || kill -9 "$old" 2>/dev/null || true
    sleep 0.2
  done
fi
ADV=$(hostname -I | awk '{print $1}')
# Every write, with its response code, in an audit log: the tests count creations with it.
cat > "$S/audit.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
  verbs: ["create", "update", "patch", "delete", "deletecollection"]
- level: None
EOF
setsid /usr/local/bin/kube-apiserver --audit-policy-file="$S/audit.yaml" \
  --audit-log-path=/var/log/k3s-standin-audit.log \
  --etcd-servers="$ENDPOINTS" --etcd-cafile="$CAFILE" \
  --etcd-certfile="$CERTFILE" --etcd-keyfile="$KEYFILE" --secure-port=6443 --bind-address=0.0.0.0 \
  --advertise-address="$ADV" --tls-cert-file="$T/serving.crt" --tls-private-key-file="$T/serving.key" \
  --client-ca-file="$T/ca.crt" --token-auth-file="$S/token-auth.csv" --anonymous-auth=false \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$T/sa.pub" --service-account-signing-key-file="$T/sa.key" \
  --service-cluster-ip-range=10.43.0.0/16 --authorization-mode=Node,RBAC \
  >/var/log/k3s-standin.log 2>&1 </dev/null &
echo $! > /run/k3s-standin.pid

AUTH="--cacert $T/ca.crt --cert $T/admin.crt --key $T/admin.key"
i=0
until curl -sf $AUTH https://127.0.0.1:6443/readyz >/dev/null 2>&1; do
  i=$((i+1))
  if [ $i -ge 120 ]; then tail -n 20 /var/log/k3s-standin.log >&2; exit 1; fi
  sleep 1
done

b64() { base64 -w0 "$1"; }
cat > /etc/rancher/k3s/k3s.yaml <<EOF
apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: $(b64 "$T/ca.crt")
    server: https://127.0.0.1:6443
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {}
users:
- name: default
  user:
    client-certificate-data: $(b64 "$T/admin.crt")
    client-key-data: $(b64 "$T/admin.key")
EOF
# A lab host may play a hostile control plane (tests/tests/byo_lab.rs): its admin kubeconfig's
# user then runs a command wherever the kubeconfig is used.
if [ -e /etc/ksctl-lab/hostile-kubeconfig ]; then
  cat >> /etc/rancher/k3s/k3s.yaml <<EOF
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: /bin/sh
      args: ["-c", "touch /tmp/pwned"]
EOF
fi
chmod 600 /etc/rancher/k3s/k3s.yaml

URL=https://127.0.0.1:6443
register $AUTH || exit 1

cat > /usr/local/bin/k3s-uninstall.sh <<'EOF'
#!/bin/sh
[ -f /run/k3s-standin.pid ] && kill "$(cat /run/k3s-standin.pid)" 2>/dev/null
rm -rf /var/lib/rancher /etc/rancher /run/k3s-standin.pid /var/log/k3s-standin-audit.log /usr/local/bin/kube-apiserver /usr/local/bin/k3s-uninstall.sh
EOF
chmod 755 /usr/local/bin/k3s-uninstall.sh
