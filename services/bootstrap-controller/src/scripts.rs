//! The host scripts, as pure functions of what they install: HAProxy, an etcd member, the etcd
//! health check, k3s servers and agents. Each runs as root through `sudo -n sh -s` with the
//! script on stdin (secrets never appear on a command line or in a log) and is idempotent:
//! re-running a finished step changes nothing.
use crate::pki::CertKey;
use crate::plan::Step;
use ksctl_core::artifacts::Artifacts;
use ksctl_ssh::host::{quote, step_script};

pub const ETCD_DIR: &str = "/etc/ksctl/etcd";
pub const ETCD_DATA: &str = "/var/lib/ksctl/etcd";
pub const HAPROXY_CFG: &str = "/etc/ksctl/haproxy.cfg";
pub const K3S_KUBECONFIG: &str = "/etc/rancher/k3s/k3s.yaml";
pub const K3S_TOKEN_FILE: &str = "/var/lib/rancher/k3s/server/token";
/// The taint ksctl puts on k3s servers, so workloads go to the workers.
pub const CONTROL_PLANE_TAINT: &str = "CriticalAddonsOnly=true:NoExecute";

/// A file written with mode 0600 (0644 for certificates), through a heredoc.
pub fn write_file(path: &str, content: &str, mode: &str) -> String {
    let marker = "KSCTL_EOF_7f3a";
    debug_assert!(!content.contains(marker));
    format!(
        "install -d -m 0755 \"$(dirname {p})\"\n( umask 077; cat > {p}.new <<'{marker}'\n{c}\n{marker}\n)\nchmod {mode} {p}.new\nmv {p}.new {p}\n",
        p = quote(path),
        c = content.trim_end(),
    )
}

/// A control plane behind the load balancer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub ip: String,
}

/// HAProxy in TCP mode: `:6443` round-robin over the control planes with health checks.
pub fn haproxy_cfg(control_planes: &[Backend]) -> String {
    let mut s = String::from(
        "# Written by ksctl; regenerated when the control planes change.
global
  # No maxconn: HAProxy derives it from the open-files limit the service runs with.

defaults
  mode tcp
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout check 5s

frontend kubernetes_api
  bind *:6443
  default_backend control_planes

backend control_planes
  balance roundrobin
  option tcp-check
  default-server inter 5s fall 3 rise 2
",
    );
    for cp in control_planes {
        s.push_str(&format!("  server {} {}:6443 check\n", cp.name, cp.ip));
    }
    s
}

/// Installs (if missing) and runs HAProxy with [`haproxy_cfg`]; a changed config is validated
/// first and then restarts the service.
pub fn haproxy(control_planes: &[Backend]) -> String {
    let body = format!(
        "if ! command -v haproxy >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
fi
# The package's own service would hold :6443 with a different config.
if ksctl_systemd; then systemctl disable --now haproxy >/dev/null 2>&1 || true; fi
{write}haproxy -c -q -f {cfg}
old=$(cat /etc/ksctl/haproxy.cfg.applied 2>/dev/null || true)
if [ \"$old\" != \"$(cat {cfg})\" ]; then ksctl_service_stop haproxy; fi
ksctl_service haproxy \"$(command -v haproxy) -W -db -f {cfg}\"
cp {cfg} /etc/ksctl/haproxy.cfg.applied
",
        write = write_file(HAPROXY_CFG, &haproxy_cfg(control_planes), "0644"),
        cfg = HAPROXY_CFG,
    );
    step_script(Step::Haproxy.as_str(), &body)
}

/// One member of the external etcd cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdMember<'a> {
    pub name: &'a str,
    pub ip: &'a str,
    /// Every member as (name, private IP), this one included.
    pub cluster: &'a [(String, String)],
    /// `--initial-cluster-token`: unique per cluster so two clusters never merge.
    pub token: &'a str,
    pub ca: &'a str,
    pub server: &'a CertKey,
    pub peer: &'a CertKey,
    pub client: &'a CertKey,
}

/// Installs etcd (the distribution's package if missing) and runs it with client and peer TLS.
pub fn etcd(m: &EtcdMember<'_>) -> String {
    let initial: Vec<String> = m.cluster.iter().map(|(n, ip)| format!("ksctl-{n}=https://{ip}:2380")).collect();
    let d = ETCD_DIR;
    let args = [
        format!("--name ksctl-{}", m.name),
        format!("--data-dir {ETCD_DATA}"),
        format!("--listen-client-urls https://{}:2379,https://127.0.0.1:2379", m.ip),
        format!("--advertise-client-urls https://{}:2379", m.ip),
        format!("--listen-peer-urls https://{}:2380", m.ip),
        format!("--initial-advertise-peer-urls https://{}:2380", m.ip),
        format!("--initial-cluster {}", initial.join(",")),
        "--initial-cluster-state new".to_string(),
        format!("--initial-cluster-token {}", m.token),
        format!("--client-cert-auth --trusted-ca-file {d}/ca.crt --cert-file {d}/server.crt --key-file {d}/server.key"),
        format!(
            "--peer-client-cert-auth --peer-trusted-ca-file {d}/ca.crt --peer-cert-file {d}/peer.crt --peer-key-file {d}/peer.key"
        ),
    ];
    let mut body = String::from(
        "if ! command -v etcd >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
# The package starts a single-node etcd of its own; ours replaces it.
if ksctl_systemd; then systemctl disable --now etcd >/dev/null 2>&1 || true; fi
install -d -m 0700 /var/lib/ksctl/etcd
",
    );
    body.push_str(&write_file(&format!("{d}/ca.crt"), m.ca, "0644"));
    for (name, ck) in [("server", m.server), ("peer", m.peer), ("client", m.client)] {
        body.push_str(&write_file(&format!("{d}/{name}.crt"), &ck.cert, "0644"));
        body.push_str(&write_file(&format!("{d}/{name}.key"), &ck.key, "0600"));
    }
    body.push_str(&format!("ksctl_service etcd \"$(command -v etcd) {}\"\n", args.join(" ")));
    step_script(Step::Etcd.as_str(), &body)
}

/// Checks, from one datastore, that every member answers healthy over TLS and that the cluster
/// has exactly the expected members. Retries for up to `secs` (members wait for each other).
pub fn etcd_health(endpoints: &[String], members: usize, secs: u32) -> String {
    let d = ETCD_DIR;
    format!(
        "set -eu
e='etcdctl --endpoints={eps} --cacert={d}/ca.crt --cert={d}/client.crt --key={d}/client.key --command-timeout=5s'
export ETCDCTL_API=3
end=$(( $(date +%s) + {secs} ))
while :; do
  if out=$($e endpoint health 2>&1) && n=$($e member list 2>/dev/null | wc -l) && [ \"$n\" -eq {members} ]; then
    echo \"$out\"; exit 0
  fi
  if [ $(date +%s) -ge $end ]; then echo \"etcd is not healthy after {secs} s (want {members} members): $out\" >&2; exit 1; fi
  sleep 1
done
",
        eps = endpoints.join(","),
    )
}

/// A k3s server (`init`: the first one; otherwise joining with `token`) on the external etcd,
/// with the load balancer's addresses as TLS SANs and the control-plane taint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct K3sServer<'a> {
    pub node_name: &'a str,
    pub version: &'a str,
    pub etcd_endpoints: &'a [String],
    pub etcd_ca: &'a str,
    pub etcd_client: &'a CertKey,
    pub tls_sans: &'a [String],
    /// `None` for the first server: k3s makes the token, ksctl reads it afterwards.
    pub token: Option<&'a str>,
    /// `false` when the request chose a CNI other than flannel (k3s' default).
    pub flannel: bool,
}

/// The environment assignments for the installer, quoted.
fn env_line(env: &[(String, String)]) -> String {
    env.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect::<Vec<_>>().join(" ")
}

/// After `prelude` (files the installer needs), runs k3s' installer unless the same arguments
/// were installed before, then waits until the node's API answers (agents: until the installer
/// finished).
fn k3s_install(
    step: Step,
    kind: &str,
    prelude: &str,
    env: &[(String, String)],
    args: &[String],
    artifacts: &Artifacts,
) -> String {
    let args_line = args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ");
    let stamp = format!("/etc/ksctl/k3s-{kind}.args");
    let mut body = format!(
        "{prelude}want={q_args}
if [ \"$(cat {stamp} 2>/dev/null)\" != \"$want\" ]; then
  curl -sfL --retry 5 --retry-connrefused {url} -o /tmp/ksctl-k3s-install.sh
  env {env} sh /tmp/ksctl-k3s-install.sh {kind} {args_line}
  rm -f /tmp/ksctl-k3s-install.sh
  install -d /etc/ksctl
  printf '%s\\n' \"$want\" > {stamp}
fi
",
        q_args = quote(&args.join(" ")),
        url = quote(&artifacts.k3s_installer()),
        env = env_line(env),
    );
    if kind == "server" {
        // 401 also proves a serving API (k3s turns anonymous access off).
        body.push_str(
            "i=0
until code=$(curl -sk -o /dev/null -w '%{http_code}' https://127.0.0.1:6443/readyz) && { [ \"$code\" = 200 ] || [ \"$code\" = 401 ]; }; do
  i=$((i+1)); [ $i -lt 300 ] || { echo \"the Kubernetes API on this server did not answer within 300 s (last HTTP status $code)\" >&2; exit 1; }
  sleep 1
done
",
        );
    }
    step_script(step.as_str(), &body)
}

pub fn k3s_server(s: &K3sServer<'_>, artifacts: &Artifacts) -> String {
    let mut env = artifacts.k3s_env(s.version);
    if let Some(t) = s.token {
        env.push(("K3S_TOKEN".into(), t.to_string()));
    }
    let d = ETCD_DIR;
    let mut args = vec![
        format!("--datastore-endpoint={}", s.etcd_endpoints.join(",")),
        format!("--datastore-cafile={d}/ca.crt"),
        format!("--datastore-certfile={d}/client.crt"),
        format!("--datastore-keyfile={d}/client.key"),
        format!("--node-name={}", s.node_name),
        format!("--node-taint={CONTROL_PLANE_TAINT}"),
    ];
    args.extend(s.tls_sans.iter().map(|san| format!("--tls-san={san}")));
    if !s.flannel {
        // ksctl's CNI (or the user's) takes the pod network, on the pod CIDR kubeadm clusters
        // use too (k3s' own default is 10.42.0.0/16).
        args.push("--flannel-backend=none".into());
        args.push("--disable-network-policy".into());
        args.push(format!("--cluster-cidr={}", ksctl_core::spec::POD_SUBNET));
    }
    let step = if s.token.is_none() { Step::K3sInit } else { Step::K3sServerJoin };
    let certs = [
        write_file(&format!("{d}/ca.crt"), s.etcd_ca, "0644"),
        write_file(&format!("{d}/client.crt"), &s.etcd_client.cert, "0644"),
        write_file(&format!("{d}/client.key"), &s.etcd_client.key, "0600"),
    ]
    .concat();
    k3s_install(step, "server", &certs, &env, &args, artifacts)
}

/// A k3s agent joining through the load balancer's private address.
pub fn k3s_agent(node_name: &str, version: &str, lb_ip: &str, token: &str, artifacts: &Artifacts) -> String {
    let mut env = artifacts.k3s_env(version);
    env.push(("K3S_URL".into(), format!("https://{lb_ip}:6443")));
    env.push(("K3S_TOKEN".into(), token.to_string()));
    k3s_install(Step::K3sAgentJoin, "agent", "", &env, &[format!("--node-name={node_name}")], artifacts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ck() -> CertKey {
        CertKey { cert: "-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----".into(), key: "K".into() }
    }

    fn valid_sh(s: &str) {
        let out = std::process::Command::new("sh").arg("-n").arg("-c").arg(s).output().unwrap();
        assert!(out.status.success(), "{}\n{s}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn haproxy_balances_every_control_plane_with_checks() {
        let cps = [
            Backend { name: "cp-0".into(), ip: "10.0.0.4".into() },
            Backend { name: "cp-1".into(), ip: "10.0.0.5".into() },
        ];
        let cfg = haproxy_cfg(&cps);
        assert!(cfg.contains("bind *:6443") && cfg.contains("mode tcp") && cfg.contains("balance roundrobin"));
        assert!(cfg.contains("server cp-0 10.0.0.4:6443 check") && cfg.contains("server cp-1 10.0.0.5:6443 check"));
        valid_sh(&haproxy(&cps));
    }

    #[test]
    fn etcd_members_know_each_other_and_use_tls_everywhere() {
        let cluster = vec![("ds-0".to_string(), "10.0.0.1".to_string()), ("ds-1".into(), "10.0.0.2".into())];
        let c = ck();
        let m = EtcdMember {
            name: "ds-1",
            ip: "10.0.0.2",
            cluster: &cluster,
            token: "ksctl-x",
            ca: "CA",
            server: &c,
            peer: &c,
            client: &c,
        };
        let s = etcd(&m);
        assert!(s.contains("--initial-cluster ksctl-ds-0=https://10.0.0.1:2380,ksctl-ds-1=https://10.0.0.2:2380"));
        assert!(s.contains("--listen-client-urls https://10.0.0.2:2379,https://127.0.0.1:2379"));
        assert!(s.contains("--client-cert-auth") && s.contains("--peer-client-cert-auth"));
        assert!(!s.contains("http://"), "no plain-text listener");
        valid_sh(&s);
        valid_sh(&etcd_health(&["https://10.0.0.1:2379".into()], 3, 60));
    }

    #[test]
    fn k3s_servers_use_the_external_etcd_the_lb_sans_and_the_taint() {
        let c = ck();
        let eps = vec!["https://10.0.0.1:2379".to_string()];
        let sans = vec!["203.0.113.7".to_string(), "10.0.0.9".to_string()];
        let mut s = K3sServer {
            node_name: "c-vm-cp-0",
            version: "1.31",
            etcd_endpoints: &eps,
            etcd_ca: "CA",
            etcd_client: &c,
            tls_sans: &sans,
            token: None,
            flannel: true,
        };
        let init = k3s_server(&s, &Artifacts::default());
        assert!(init.contains("ksctl_step k3s-init"));
        assert!(init.contains("--datastore-endpoint=https://10.0.0.1:2379"));
        assert!(init.contains("--tls-san=203.0.113.7") && init.contains("--tls-san=10.0.0.9"));
        assert!(init.contains("--node-taint=CriticalAddonsOnly=true:NoExecute"));
        assert!(init.contains("INSTALL_K3S_CHANNEL='v1.31'") && !init.contains("K3S_TOKEN="), "{init}");
        assert!(init.find("client.key").unwrap() < init.find("\nwant=").unwrap(), "certificates first");
        valid_sh(&init);
        s.token = Some("K10abc::server:secret");
        s.flannel = false;
        let join = k3s_server(&s, &Artifacts::default());
        assert!(join.contains("ksctl_step k3s-server-join") && join.contains("K3S_TOKEN='K10abc::server:secret'"));
        assert!(join.contains("--flannel-backend=none"));
        assert!(join.contains("--cluster-cidr=10.244.0.0/16"));
        valid_sh(&join);
        let agent = k3s_agent("c-vm-wp-0", "1.31", "10.0.0.9", "tok", &Artifacts::default());
        assert!(
            agent.contains("K3S_URL='https://10.0.0.9:6443'") && agent.contains("sh /tmp/ksctl-k3s-install.sh agent")
        );
        valid_sh(&agent);
    }
}
