#!/usr/bin/env bash
# Bootstrap benchmark on the SSH lab (needs root): the HA k3s bootstrap of 8 hosts with each
# wave's hosts in parallel and one at a time; prints both wall times and the speed-up.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --workspace --bins --quiet
cargo nextest run -p ksctl-tests --test bootstrap_lab --run-ignored only --no-capture bench_bootstrap 2>&1 \
  | grep -A4 '^bootstrap, '
