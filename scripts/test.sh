#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests, and the integration and end-to-end tests
# against real nats-server and redis-server instances the tests start on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The end-to-end tests run the service binaries as processes.
cargo build --workspace --bins --quiet
cargo nextest run --workspace --no-fail-fast "$@"
