#!/usr/bin/env bash
# NATS's TLS for a deployment: a CA and a server certificate for the names clients use, with
# openssl, into DIR (ca.crt for every client and each cluster's agent; ca.key, nats.key 0600).
# Existing files are kept. Usage: scripts/nats-tls.sh DIR NAME...  (DNS names or IP addresses)
set -euo pipefail
dir=$1; shift
[ $# -gt 0 ] || { echo "usage: $0 DIR NAME..." >&2; exit 2; }
mkdir -p "$dir"
cd "$dir"
[ -f nats.crt ] && exit 0
umask 077
sans=""
for n in "$@"; do
  if [[ $n =~ ^[0-9.]+$ || $n == *:* ]]; then sans+="IP:$n,"; else sans+="DNS:$n,"; fi
done
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
  -subj /CN=ksctl-nats-ca -keyout ca.key -out ca.crt 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=nats \
  -keyout nats.key -out nats.csr 2>/dev/null
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "${sans%,}" > nats.ext
openssl x509 -req -in nats.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
  -extfile nats.ext -out nats.crt 2>/dev/null
rm -f nats.csr nats.ext ca.srl
chmod 644 ca.crt nats.crt
echo "wrote $dir/ca.crt, nats.crt, nats.key for: $*"
