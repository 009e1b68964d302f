#!/usr/bin/env bash
# Writes .env (random NATS and Redis passwords) and deploy/seal.key for docker-compose, once:
# existing files are kept, so re-running never changes the keys of a running deployment.
set -euo pipefail
cd "$(dirname "$0")/.."
rand() { head -c24 /dev/urandom | base64 | tr -d '/+=' ; }
if [ ! -f .env ]; then
  sed -e "s/^NATS_PASSWORD=.*/NATS_PASSWORD=$(rand)/" \
      -e "s/^NATS_AGENT_PASSWORD=.*/NATS_AGENT_PASSWORD=$(rand)/" \
      -e "s/^REDIS_PASSWORD=.*/REDIS_PASSWORD=$(rand)/" deploy/env.example > .env
  chmod 600 .env
  echo "wrote .env"
fi
if [ ! -f deploy/seal.key ]; then
  (umask 077; head -c32 /dev/urandom | base64 > deploy/seal.key)
  echo "wrote deploy/seal.key"
fi
# Compose mounts the file as it is; the services run as uid 10001 and must read it.
if [ "$(id -u)" -eq 0 ]; then chown 10001 deploy/seal.key; else chmod 644 deploy/seal.key; fi
