//! Shell that manages ksctl's software on a host: the services it runs (under systemd when the
//! host has it, otherwise as detached processes with a pid file, as in containers and the test
//! lab), the step history, and the uninstall that undoes all of it. One place, so the bootstrap
//! that installs and the delete that uninstalls agree on names and paths.

/// Shell functions every host script starts with (POSIX sh, run as root):
/// - `ksctl_service NAME CMD...` runs CMD as service `ksctl-NAME`; a running service with the
///   same command line is left alone, a changed one is restarted;
/// - `ksctl_service_stop NAME` stops and removes it;
/// - `ksctl_step STEP` appends the step to `/var/lib/ksctl/steps.log` (what ran when, for people
///   debugging a host — and for the tests that count re-runs).
pub const FUNCTIONS: &str = r#"
ksctl_systemd() { [ -d /run/systemd/system ]; }
ksctl_service_stop() {
  n=ksctl-$1
  if ksctl_systemd; then
    systemctl disable --now "$n" >/dev/null 2>&1 || true
    if [ -f "/etc/systemd/system/$n.service" ]; then rm -f "/etc/systemd/system/$n.service"; systemctl daemon-reload; fi
  fi
  p=/run/ksctl/$n.pid
  if [ -f "$p" ]; then
    pid=$(cat "$p")
    kill "$pid" 2>/dev/null || true
    i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$p"
  fi
  rm -f "/etc/ksctl/services/$n.cmd"
}
ksctl_service() {
  n=ksctl-$1; shift
  mkdir -p /etc/ksctl/services /run/ksctl /var/log/ksctl
  want="$*"
  if ksctl_systemd; then
    unit="[Unit]
Description=$n (installed by ksctl)
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=$want
Restart=always
RestartSec=2
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target"
    if [ "$(cat "/etc/systemd/system/$n.service" 2>/dev/null)" != "$unit" ]; then
      printf '%s\n' "$unit" > "/etc/systemd/system/$n.service"
      systemctl daemon-reload
      systemctl enable "$n" >/dev/null 2>&1
      systemctl restart "$n"
    else
      systemctl enable --now "$n" >/dev/null 2>&1
    fi
    sleep 1
    if ! systemctl is-active --quiet "$n"; then
      echo "$n did not stay up:" >&2; journalctl -u "$n" -n 20 --no-pager >&2 || true; return 1
    fi
    return 0
  fi
  p=/run/ksctl/$n.pid
  if [ -f "$p" ] && kill -0 "$(cat "$p")" 2>/dev/null && [ "$(cat "/etc/ksctl/services/$n.cmd" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  ksctl_service_stop "${n#ksctl-}"
  printf '%s\n' "$want" > "/etc/ksctl/services/$n.cmd"
  setsid sh -c "exec $want" >>"/var/log/ksctl/$n.log" 2>&1 </dev/null &
  echo $! > "$p"
  sleep 1
  if ! kill -0 "$(cat "$p")" 2>/dev/null; then
    echo "$n did not stay up:" >&2; tail -n 20 "/var/log/ksctl/$n.log" >&2; rm -f "$p"; return 1
  fi
}
ksctl_step() {
  mkdir -p /var/lib/ksctl
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $1" >> /var/lib/ksctl/steps.log
}
"#;

/// The services ksctl runs on hosts (`ksctl-<name>`).
pub const SERVICES: [&str; 2] = ["etcd", "haproxy"];

/// The apt source and key through which ksctl installs kubelet, kubeadm and kubectl.
pub const KUBERNETES_APT_LIST: &str = "/etc/apt/sources.list.d/ksctl-kubernetes.list";
pub const KUBERNETES_KEYRING: &str = "/etc/apt/keyrings/ksctl-kubernetes.gpg";
/// Written when ksctl first prepares a kubeadm node: whether containerd ran before
/// (`active`/`inactive`) or was not there (`absent`: ksctl installed it); the configuration it
/// found is kept beside as `config.toml.before-ksctl`, the registry directories ksctl wrote
/// under `certs.d` are listed in `<mark>.registries`.
pub const CONTAINERD_MARK: &str = "/etc/containerd/ksctl-managed";

/// Undoes a kubeadm node: `kubeadm reset` (the cluster's pods, static pods, certificates), then
/// what reset leaves behind — the kubelet and the packages ksctl installed, kube-proxy's
/// iptables rules, CNI interfaces and state, the cluster's images in containerd, and
/// containerd's configuration as ksctl found it (stopped again if it was stopped).
const KUBEADM_UNINSTALL: &str = r#"
if command -v kubeadm >/dev/null 2>&1 && [ -f /etc/kubernetes/kubelet.conf -o -f /etc/kubernetes/admin.conf ]; then
  kubeadm reset -f >/dev/null 2>&1
fi
if [ -f __APT_LIST__ ]; then
  systemctl disable --now kubelet >/dev/null 2>&1
  apt-mark unhold kubelet kubeadm kubectl >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq kubelet kubeadm kubectl kubernetes-cni cri-tools >/dev/null 2>&1
  rm -f __APT_LIST__ __KEYRING__
  rm -rf /etc/kubernetes /var/lib/kubelet /etc/systemd/system/kubelet.service.d /etc/sysctl.d/ksctl-k8s.conf /etc/modules-load.d/ksctl-k8s.conf
  systemctl daemon-reload >/dev/null 2>&1
fi
for t in iptables ip6tables; do
  if command -v $t-save >/dev/null 2>&1 && $t-save 2>/dev/null | grep -q KUBE-; then
    $t-save | grep -v KUBE- | $t-restore
  fi
done
for l in cni0 flannel.1 kube-ipvs0; do ip link delete $l >/dev/null 2>&1; done
rm -rf /var/lib/cni /etc/cni/net.d/10-flannel.conflist /run/flannel
if [ -f __MARK__ ]; then
  if command -v ctr >/dev/null 2>&1; then
    for c in $(ctr -n k8s.io containers ls -q 2>/dev/null); do ctr -n k8s.io tasks kill -s KILL "$c" >/dev/null 2>&1; ctr -n k8s.io containers rm "$c" >/dev/null 2>&1; done
    # --sync: the blobs and snapshots go now, before containerd stops (its GC is lazy).
    ctr -n k8s.io images ls -q 2>/dev/null | xargs -r ctr -n k8s.io images rm --sync >/dev/null 2>&1
  fi
  was=$(cat __MARK__)
  if [ -f /etc/containerd/config.toml.before-ksctl ]; then mv /etc/containerd/config.toml.before-ksctl /etc/containerd/config.toml; else rm -f /etc/containerd/config.toml; fi
  while read -r d; do case "$d" in /etc/containerd/certs.d/?*) rm -rf "$d" ;; esac; done < __MARK__.registries 2>/dev/null
  rm -f __MARK__ __MARK__.registries /etc/containerd/config.toml.ksctl
  case "$was" in
    active) systemctl restart containerd >/dev/null 2>&1 ;;
    absent) systemctl disable --now containerd >/dev/null 2>&1; DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq containerd >/dev/null 2>&1 ;;
    *) systemctl disable --now containerd >/dev/null 2>&1 ;;
  esac
fi
"#;

/// Undoes everything ksctl installs on a host (run as root); every command tolerates "not there".
/// The machine itself stays.
pub fn uninstall_script() -> String {
    let mut s = String::from("set +e\n");
    s.push_str(FUNCTIONS);
    for svc in SERVICES {
        s.push_str(&format!("ksctl_service_stop {svc}\n"));
    }
    s.push_str(
        "for u in /usr/local/bin/k3s-uninstall.sh /usr/local/bin/k3s-agent-uninstall.sh; do [ -x \"$u\" ] && \"$u\" >/dev/null 2>&1; done\n",
    );
    s.push_str(
        &KUBEADM_UNINSTALL
            .replace("__APT_LIST__", KUBERNETES_APT_LIST)
            .replace("__KEYRING__", KUBERNETES_KEYRING)
            .replace("__MARK__", CONTAINERD_MARK),
    );
    s.push_str("rm -rf /etc/ksctl /var/lib/ksctl /run/ksctl /var/log/ksctl\nexit 0\n");
    s
}

/// The whole script for one step: strict mode, the functions, the history line, the body.
pub fn step_script(step: &str, body: &str) -> String {
    format!("set -eu\n{FUNCTIONS}\nksctl_step {step}\n{body}\n")
}

/// `s` quoted for POSIX sh.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sh(script: &str) -> std::process::Output {
        Command::new("sh").arg("-c").arg(script).output().unwrap()
    }

    #[test]
    fn quoting_survives_the_shell() {
        for s in ["plain", "it's", "a b", "$(rm -rf /)", "'\"'"] {
            let out = sh(&format!("printf %s {}", quote(s)));
            assert_eq!(String::from_utf8_lossy(&out.stdout), s);
        }
    }

    #[test]
    fn scripts_are_valid_shell() {
        for s in [step_script("x", "true"), uninstall_script()] {
            let out = Command::new("sh").arg("-n").arg("-c").arg(&s).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
