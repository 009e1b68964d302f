#!/bin/sh
# Entry point of the lab's node containers (installed as /usr/local/sbin/ksctl-lab-init). The
# containers run with a private cgroup namespace and without --privileged (which this kind of
# machine refuses), so Docker mounts each cgroup v1 hierarchy read-only: mount them again,
# writable, so that systemd, containerd and the kubelet manage this container's own subtree —
# every node gets its own cgroup tree, as a VM would. Then boot systemd.
set -eu
mount -o remount,rw /sys/fs/cgroup
for m in $(findmnt -rn -t cgroup -o TARGET); do
  opts=$(findmnt -rn -o OPTIONS --target "$m" | tr , '\n' | grep -vE '^(ro|rw|nosuid|nodev|noexec|relatime)$' | paste -sd, -)
  umount "$m"
  mount -t cgroup -o "rw,nosuid,nodev,noexec,relatime,$opts" cgroup "$m"
done
# A kind node (tests/lab/build-kind.sh): kind's kubeadm configuration runs the kubelet under the
# cgroup /kubelet, which kind's own entry point makes in every hierarchy (cpuset needs its CPUs
# and memory nodes copied in before anything can join it).
if [ -f /kind/version ]; then
  for m in $(findmnt -rn -t cgroup -o TARGET); do
    mkdir -p "$m/kubelet"
    if [ -f "$m/cpuset.cpus" ]; then
      cat "$m/cpuset.cpus" > "$m/kubelet/cpuset.cpus"
      cat "$m/cpuset.mems" > "$m/kubelet/cpuset.mems"
    fi
  done
fi
# Mounts made later (kubelet's volumes) must propagate into the containers that use them.
mount --make-rshared /
exec /sbin/init "$@"
