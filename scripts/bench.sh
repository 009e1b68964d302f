#!/usr/bin/env bash
# Benchmark: starts a local control plane (release build, zero simulated latency) and runs
# ksctl-bench against it. Arguments go to ksctl-bench (e.g. --clusters 500 --type managed).
set -euo pipefail
cd "$(dirname "$0")/.."
LAB=${KSCTL_BENCH_DIR:-$PWD/.lab/bench}
. scripts/lib.sh
scripts/deps.sh
cargo build --release --workspace --bins --quiet
stop_system
rm -rf "$LAB/nats"
trap stop_system EXIT
start_system "$PWD/target/release" KSCTL_SIM_LATENCY_MS=0 RUST_LOG=warn KSCTL_MAX_JOBS="${KSCTL_MAX_JOBS:-64}"
"$PWD/target/release/ksctl-bench" "$@"
