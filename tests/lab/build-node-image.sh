#!/usr/bin/env bash
# The Docker image of the lab's Kubernetes-capable hosts: tests/lab/build-node-rootfs.sh's root
# imported as is, systemd (through tests/lab/node-init.sh) as the entry point. Made once per
# root version (cached in the Docker engine); prints the tag.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(bash "$HERE/build-node-rootfs.sh")
TAG=ksctl-lab-node:$(basename "$ROOT")
if ! docker image inspect "$TAG" >/dev/null 2>&1; then
  exec 9>"$(dirname "$ROOT")/.build-node-image.lock"
  flock 9
  if ! docker image inspect "$TAG" >/dev/null 2>&1; then
    echo "==> importing $ROOT as $TAG" >&2
    tar -C "$ROOT" --exclude=./.complete -c . | docker import \
      -c 'ENTRYPOINT ["/usr/local/sbin/ksctl-lab-init"]' -c 'ENV container=docker' - "$TAG" >/dev/null
  fi
fi
echo "$TAG"
