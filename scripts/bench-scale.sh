#!/usr/bin/env bash
# Scale benchmark (issue 6): N sim clusters (default 1000) created and deleted through the bus,
# with 1 and with 3 replicas of every service; prints clusters/s, request→done p50/p99 and each
# service process's peak RSS. Release build, zero simulated latency, NATS with its file store.
# Then, with LATENCY_MS (default 50) per simulated step: one cluster alone and M (default 200)
# at once, each create's wall time against the saga's ideal critical path (its steps one after
# another at that latency, parallel groups counting once, no overhead): 1.0 would mean the
# control plane adds nothing and M clusters take as long as one.
# Usage: scripts/bench-scale.sh [clusters] [type]
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

LAT=${LATENCY_MS:-50}
M=${PARALLEL_CLUSTERS:-200}
export REPLICAS=3
rm -rf "$LAB/nats"
start_system "$PWD/target/release" KSCTL_SIM_LATENCY_MS="$LAT" RUST_LOG=warn KSCTL_MAX_JOBS="${KSCTL_MAX_JOBS:-256}"
echo "=== $LAT ms per simulated step, 3 replicas: one cluster alone, then $M at once ==="
wall() { awk '/^create/{print $5}'; }
bench() { "$PWD/target/release/ksctl-bench" --type "$TYPE" --raw-ops 0 --sim-latency-ms "$LAT" "$@"; }
out=$(bench --clusters 1 --concurrency 1)
echo "$out"; one=$(echo "$out" | wall)
out=$(bench --clusters "$M" --concurrency "$M")
echo "$out"; many=$(echo "$out" | wall)
python3 -c "print(f'one cluster alone: {$one:.2f} s; $M clusters at once: {$many:.2f} s; ratio {$many/$one:.2f}')"
