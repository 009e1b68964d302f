#!/usr/bin/env bash
# Builds (once) the base root filesystem of the lab's SSH hosts: Debian bookworm minbase with
# sshd, sudo, HAProxy and etcd, a passwordless-sudo user `ubuntu` and a user `nosudo` without
# sudo. Cached outside the repository; each lab host runs on an overlay of it. Prints its path.
set -euo pipefail
VERSION=v1
CACHE=${KSCTL_LAB_CACHE:-$HOME/.cache/ksctl-lab}
ROOT=$CACHE/rootfs-bookworm-$VERSION
if [ -f "$ROOT/.complete" ]; then echo "$ROOT"; exit 0; fi
mkdir -p "$CACHE"
exec 9>"$CACHE/.build-rootfs.lock"
flock 9
if [ -f "$ROOT/.complete" ]; then echo "$ROOT"; exit 0; fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v debootstrap >/dev/null 2>&1; then
  $SUDO apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq debootstrap >&2
fi
mkdir -p "$CACHE"
TMP=$ROOT.tmp
$SUDO rm -rf "$TMP"
echo "==> debootstrap into $TMP (a few minutes, once)" >&2
$SUDO debootstrap --variant=minbase \
  --include=openssh-server,sudo,haproxy,etcd-server,etcd-client,iproute2,procps,ca-certificates,curl,openssl \
  bookworm "$TMP" "${KSCTL_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >&2
$SUDO chroot "$TMP" /bin/sh -e <<'IN'
useradd -m -s /bin/bash ubuntu
useradd -m -s /bin/bash nosudo
# A locked password (!) makes sshd refuse even keys when PAM is off.
usermod -p '*' ubuntu
usermod -p '*' nosudo
echo 'ubuntu ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/ubuntu
chmod 0440 /etc/sudoers.d/ubuntu
# Every host makes its own host keys at start.
rm -f /etc/ssh/ssh_host_*
mkdir -p /run/sshd
apt-get clean
IN
$SUDO touch "$TMP/.complete"
$SUDO mv "$TMP" "$ROOT"
echo "$ROOT"
