#!/usr/bin/env bash
# Images for running docker-compose.yml on a machine that cannot pull: a base imported from the
# lab's debootstrapped Debian root (tests/lab/build-rootfs.sh), and `ksctl-rs:lab` on it with
# ksctl's binaries from target/<profile> plus the host's nats-server and redis-server (with the
# libraries redis-server links). Users who can pull build deploy/Dockerfile instead.
# Usage: tests/compose/build-images.sh [debug|release]
set -euo pipefail
cd "$(dirname "$0")/../.."
PROFILE=${1:-debug}
ROOT=$(bash tests/lab/build-rootfs.sh)
BASE=ksctl-lab-base:$(basename "$ROOT")
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  echo "==> importing $ROOT as $BASE" >&2
  tar -C "$ROOT" -c . | docker import - "$BASE" >/dev/null
fi
CTX=$(mktemp -d)
trap 'rm -rf "$CTX"' EXIT
mkdir -p "$CTX/bin" "$CTX/lib"
for b in ksctl ksctl-manager ksctl-cloud-controller ksctl-bootstrap-controller ksctl-k8s-controller ksctl-agent; do
  cp "target/$PROFILE/$b" "$CTX/bin/"
done
NATS=$(pyenv which nats-server 2>/dev/null || command -v nats-server)
cp "$NATS" "$CTX/bin/nats-server"
REDIS=$(command -v redis-server)
cp "$REDIS" "$CTX/bin/redis-server"
cp "$(command -v redis-cli)" "$CTX/bin/redis-cli"
# redis-server's libraries that a minimal Debian root may lack.
ldd "$REDIS" | awk '/=> \//{print $3}' | while read -r lib; do cp -L "$lib" "$CTX/lib/"; done
cat > "$CTX/Dockerfile" <<DOCKER
FROM $BASE
COPY lib/ /opt/ksctl-lab/lib/
COPY bin/ /usr/local/bin/
RUN useradd --system --uid 10001 --no-create-home ksctl 2>/dev/null || true
ENV KSCTL_HTTP_ADDR=0.0.0.0:9100
USER 10001
DOCKER
docker build -q -t ksctl-rs:lab "$CTX" >/dev/null
echo ksctl-rs:lab
