#!/usr/bin/env bash
# Builds (once) the root filesystem of the lab's Kubernetes-capable hosts: the SSH lab's root
# (tests/lab/build-rootfs.sh) plus systemd as init and what a kubeadm node needs from its OS —
# containerd, runc, the CNI plugins (Debian's containernetworking-plugins; the mirror's
# kubernetes-cni package puts them where kubelet looks), iptables, conntrack, socat, ebtables,
# ethtool, gpg, and the container entry point tests/lab/node-init.sh. These
# stand for a cloud image's OS packages: the hosts have no Debian mirror, and the Kubernetes
# packages themselves come from the lab's own apt repository (tests/lab/build-mirror.sh), as
# ksctl's install path expects. Cached outside the repository; prints its path.
set -euo pipefail
VERSION=v3
CACHE=${KSCTL_LAB_CACHE:-$HOME/.cache/ksctl-lab}
BASE=$(bash "$(dirname "$0")/build-rootfs.sh")
ROOT=$CACHE/rootfs-node-bookworm-$VERSION
if [ -f "$ROOT/.complete" ]; then echo "$ROOT"; exit 0; fi
exec 9>"$CACHE/.build-node-rootfs.lock"
flock 9
if [ -f "$ROOT/.complete" ]; then echo "$ROOT"; exit 0; fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
TMP=$ROOT.tmp
$SUDO rm -rf "$TMP"
echo "==> node root filesystem in $TMP (a couple of minutes, once)" >&2
$SUDO cp -a "$BASE" "$TMP"
$SUDO rm -f "$TMP/.complete"
# Services must not start inside the chroot while packages install.
printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$TMP/usr/sbin/policy-rc.d" >/dev/null
$SUDO chmod 755 "$TMP/usr/sbin/policy-rc.d"
$SUDO cp /etc/resolv.conf "$TMP/etc/resolv.conf"
$SUDO mount -t proc proc "$TMP/proc"
trap '$SUDO umount -l "$TMP/proc" 2>/dev/null || true' EXIT
$SUDO chroot "$TMP" /bin/sh -e <<'IN' >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends systemd systemd-sysv dbus kmod containerd runc \
  containernetworking-plugins iptables conntrack socat ebtables ethtool gpg util-linux \
  busybox-static >/dev/null
# Lab hosts reach no Debian mirror: the only apt source is the one ksctl adds.
rm -f /etc/apt/sources.list /etc/apt/sources.list.d/*
apt-get clean
rm -rf /var/lib/apt/lists/*
# Units a container has no use for.
systemctl mask systemd-udevd.service systemd-udevd-kernel.socket systemd-udevd-control.socket \
  systemd-modules-load.service sys-kernel-config.mount sys-kernel-debug.mount \
  sys-kernel-tracing.mount getty.target console-getty.service systemd-logind.service \
  haproxy.service etcd.service containerd.service >/dev/null 2>&1
# containerd is unmasked and started by ksctl's prepare step (as on a fresh VM, where it is
# installed but not yet configured).
systemctl unmask containerd.service >/dev/null 2>&1
systemctl disable containerd.service >/dev/null 2>&1 || true
systemctl enable ssh.service >/dev/null 2>&1
# Every host gets its own machine id at boot (kubelet reports it; nodes must differ).
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
# Every host makes its own host keys at start.
mkdir -p /etc/systemd/system/ssh.service.d
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
  > /etc/systemd/system/ssh.service.d/ksctl-lab.conf
IN
$SUDO install -m 0755 "$(dirname "$0")/node-init.sh" "$TMP/usr/local/sbin/ksctl-lab-init"
$SUDO rm -f "$TMP/usr/sbin/policy-rc.d"
$SUDO umount -l "$TMP/proc"
trap - EXIT
: | $SUDO tee "$TMP/etc/resolv.conf" >/dev/null
$SUDO touch "$TMP/.complete"
$SUDO mv "$TMP" "$ROOT"
echo "$ROOT"
