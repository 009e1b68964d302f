#!/usr/bin/env bash
# Builds the agent image of this build (target/<profile>/ksctl-agent with the libraries it
# links, on the lab's static base from tests/lab/build-mirror.sh) and pushes it to a registry
# the test started: `agent-image.sh REGISTRY NAME:TAG [debug|release]` pushes
# REGISTRY/NAME:TAG over plain HTTP; with REGISTRY `-` the image stays in the Docker engine as
# NAME:TAG (for `kind load`). The image changes with every build, so it is not cached in the
# mirror.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REGISTRY=${1:?usage: agent-image.sh REGISTRY NAME:TAG [profile]}
REF=${2:?usage: agent-image.sh REGISTRY NAME:TAG [profile]}
PROFILE=${3:-debug}
BIN=$HERE/../../target/$PROFILE/ksctl-agent
[ -x "$BIN" ] || { echo "no $BIN: cargo build --bin ksctl-agent first" >&2; exit 1; }
bash "$HERE/build-mirror.sh" >/dev/null   # makes ksctl-lab/static-base
BASE=$(docker images --format '{{.Repository}}:{{.Tag}}' ksctl-lab/static-base | head -1)
CTX=$(mktemp -d)
trap 'rm -rf "$CTX"' EXIT
mkdir -p "$CTX/root/usr/local/bin"
# Without debug sections: the image is pulled by every node.
objcopy --strip-debug "$BIN" "$CTX/root/usr/local/bin/ksctl-agent"
ldd "$BIN" | awk '/=> \//{print $3} /^[[:space:]]*\/.*ld-linux/{print $1}' | while read -r lib; do
  mkdir -p "$CTX/root$(dirname "$lib")"
  cp -L "$lib" "$CTX/root$lib"
done
cat > "$CTX/Dockerfile" <<EOF
FROM $BASE
COPY root/ /
USER 10001
EOF
TAG=ksctl-lab-agent:$$
[ "$REGISTRY" = - ] && TAG=$REF
DOCKER_BUILDKIT=0 docker build -q -t "$TAG" "$CTX" >/dev/null
# It runs (its libraries and loader made it in).
docker run --rm --entrypoint ksctl-agent "$TAG" --help >/dev/null
if [ "$REGISTRY" = - ]; then echo "$REF"; exit 0; fi
skopeo copy -q --dest-tls-verify=false "docker-daemon:$TAG" "docker://$REGISTRY/$REF" >&2
docker rmi -f "$TAG" >/dev/null 2>&1 || true
echo "$REGISTRY/$REF"
