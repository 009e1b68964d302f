#!/usr/bin/env bash
# Bootstrap benchmarks (need root and Docker): the HA k3s bootstrap of 8 hosts on the SSH lab,
# and request → every Node Ready of a kubeadm HA cluster on the node lab (real kubelets, 9
# hosts), each with every wave's hosts in parallel and one at a time; prints the wall times,
# the kubeadm run's per-phase breakdown and the speed-ups.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --workspace --bins --quiet
cargo nextest run -p ksctl-tests --test bootstrap_lab --run-ignored only --no-capture bench_bootstrap 2>&1 \
  | grep -A4 '^bootstrap, '
cargo nextest run -p ksctl-tests --test kubeadm_nodes --run-ignored only --no-capture bench_kubeadm 2>&1 \
  | grep -A6 '^kubeadm 1.20.2 on real nodes'
