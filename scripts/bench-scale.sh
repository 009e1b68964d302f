#!/usr/bin/env bash
# Scale benchmark (issue 6): N sim clusters (default 1000) created and deleted through the bus,
# with 1 and with 3 replicas of every service; prints clusters/s, request→done p50/p99 and each
# service process's peak RSS. Release build, zero simulated latency, persistent NATS (file
# store) and Redis as in production. Usage: scripts/bench-scale.sh [clusters] [type]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
TYPE=${2:-selfmanaged}
LAB=${KSCTL_BENCH_DIR:-$PWD/.lab/bench-scale}
. scripts/lib.sh
scripts/deps.sh
cargo build --release --workspace --bins --quiet
trap stop_system EXIT
for REPLICAS in 1 3; do
  export REPLICAS
  stop_system
  rm -rf "$LAB/nats"
  start_system "$PWD/target/release" KSCTL_SIM_LATENCY_MS=0 RUST_LOG=warn KSCTL_MAX_JOBS="${KSCTL_MAX_JOBS:-64}"
  echo "=== $REPLICAS replica(s) of each service ==="
  "$PWD/target/release/ksctl-bench" --clusters "$N" --type "$TYPE" --concurrency "${CONCURRENCY:-100}" --raw-ops 0
  peak_rss
  stop_system
done
