#!/usr/bin/env bash
# AWS benchmark against moto: creates and deletes N clusters (self-managed; `--type managed` for EKS) concurrently through
# the bus (release build) and prints wall time, latency and AWS calls per cluster. The bootstrap
# phase has no hosts here, so a create counts as done when its cloud phase succeeds.
# Arguments go to ksctl-bench (default: --clusters 20 --concurrency 20).
set -euo pipefail
cd "$(dirname "$0")/.."
LAB=${KSCTL_BENCH_DIR:-$PWD/.lab/bench-aws}
. scripts/lib.sh
scripts/deps.sh
cargo build --release --workspace --bins --quiet
stop_system
rm -rf "$LAB/nats"
mkdir -p "$LAB/logs"
trap stop_system EXIT
moto_port=$(free_port)
MOTO_ENABLE_AMI_VALIDATION=true MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION=true MOTO_IAM_LOAD_MANAGED_POLICIES=true \
  moto_server -H 127.0.0.1 -p "$moto_port" >"$LAB/logs/moto.log" 2>&1 &
moto_pid=$!
wait_port "$moto_port"
ami=$(curl -s "http://127.0.0.1:$moto_port/?Action=DescribeImages&Version=2016-11-15" \
  -H "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=x" \
  | grep -o '<imageId>[^<]*' | sed -n '1s/.*>//p')
metrics_port=$(free_port)
CLOUD_HTTP_ADDR=127.0.0.1:$metrics_port K8S_MAX_DELIVER=1 start_system "$PWD/target/release" RUST_LOG=warn KSCTL_PROVIDERS=sim,aws \
  AWS_ENDPOINT_URL="http://127.0.0.1:$moto_port" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
  AWS_EC2_METADATA_DISABLED=true KSCTL_AWS_AMI="$ami"
echo "$moto_pid" >> "$LAB/pids"
"$PWD/target/release/ksctl-bench" --provider aws --region us-east-1 --cloud-only --raw-ops 0 \
  --cloud-metrics-url "http://127.0.0.1:$metrics_port/metrics" --clusters 20 --concurrency 20 "$@"
