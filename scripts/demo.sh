#!/usr/bin/env bash
# Quick start: installs what running needs (scripts/deps.sh run), builds, starts nats-server,
# redis-server and the four services on free loopback ports, then creates a self-managed HA k3s
# cluster on the `sim` provider with live progress and shows it. `scripts/demo.sh stop` stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
LAB=${KSCTL_DEMO_DIR:-$PWD/.lab/demo}
. scripts/lib.sh

if [ "${1:-}" = stop ]; then stop_system; echo "stopped"; exit 0; fi
stop_system

scripts/deps.sh run
cargo build --workspace --bins --quiet
start_system "$PWD/target/debug" KSCTL_SIM_LATENCY_MS="${KSCTL_SIM_LATENCY_MS:-300}"

# The counts default to a highly available cluster: 3 control planes, 3 etcd nodes, 2 workers.
ksctl cluster create --name demo --provider sim --distro k3s
ksctl cluster get demo

cat <<MSG

The control plane is running (logs: $LAB/logs). Use it from this shell with:
  source $LAB/env
  ksctl cluster info demo
  ksctl cluster scale demo --workers 3
  ksctl cluster switch demo --print
  ksctl cluster delete demo
Stop it with: scripts/demo.sh stop
MSG
