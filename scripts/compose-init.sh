#!/usr/bin/env bash
# Writes .env (a random Redis password), deploy/seal.key and the bus's keys and credentials
# (deploy/nats/auth, from `ksctl auth init`) for docker-compose, once: existing files are kept,
# so re-running never changes the keys of a running deployment. `ksctl` from PATH (or $KSCTL);
# without one, from the ksctl-rs image.
set -euo pipefail
cd "$(dirname "$0")/.."
rand() { head -c24 /dev/urandom | base64 | tr -d '/+=' ; }
if [ ! -f .env ]; then
  sed -e "s/^REDIS_PASSWORD=.*/REDIS_PASSWORD=$(rand)/" deploy/env.example > .env
  chmod 600 .env
  echo "wrote .env"
fi
if [ ! -f deploy/seal.key ]; then
  (umask 077; head -c32 /dev/urandom | base64 > deploy/seal.key)
  echo "wrote deploy/seal.key"
fi
if [ ! -f deploy/nats/auth/authority.json ]; then
  mkdir -p deploy/nats/auth
  KSCTL="${KSCTL:-ksctl}"
  if command -v "$KSCTL" >/dev/null 2>&1; then
    "$KSCTL" auth init --dir deploy/nats/auth
  else
    docker compose build manager
    docker compose run --rm --no-deps --user "$(id -u)" -v "$PWD/deploy/nats/auth:/out" \
      --entrypoint ksctl manager auth init --dir /out
  fi
  echo "wrote deploy/nats/auth (keep operator.nk and account.nk offline; admin.creds is your CLI's)"
fi
# NATS's TLS: a CA and a certificate for the names clients use (`nats` inside compose, this
# host for the CLI; add the name agents in clusters use in KSCTL_NATS_TLS_NAMES).
bash scripts/nats-tls.sh deploy/nats/auth/tls nats localhost 127.0.0.1 ${KSCTL_NATS_TLS_NAMES:-}
# Compose mounts the files as they are; the services run as uid 10001 and must read them, and
# nobody else may: owned by 10001 (as root), else readable by 10001 through an ACL. Never
# world-readable.
for f in deploy/seal.key deploy/nats/auth/services.creds deploy/nats/auth/authority.json; do
  chmod 600 "$f"
  if [ "$(id -u)" -eq 0 ]; then
    chown 10001 "$f"
  elif ! setfacl -m u:10001:r "$f" 2>/dev/null; then
    echo "cannot let uid 10001 (the services) read $f: run this as root, or install acl (setfacl)" >&2
    exit 1
  fi
done
