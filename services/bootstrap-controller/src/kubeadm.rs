//! kubeadm: node preparation, the `kubeadm` configuration (external etcd, the load balancer as
//! control-plane endpoint, pod subnet), `init --upload-certs` on the first control plane and
//! `join` for the rest. ksctl makes the cluster CA itself (rcgen) and hands it to kubeadm, so the
//! discovery hash is known without asking a host; the bootstrap token and certificate key are
//! made here too, sealed in state, and the token is renewed when near expiry.
use crate::artifacts::Artifacts;
use crate::pki::CertKey;
use crate::scripts::write_file;
use ksctl_ssh::host::{quote, step_script};
use serde::{Deserialize, Serialize};

pub const CONFIG: &str = "/etc/ksctl/kubeadm.yaml";
pub const ADMIN_KUBECONFIG: &str = "/etc/kubernetes/admin.conf";
pub use ksctl_core::spec::POD_SUBNET;
pub const SERVICE_SUBNET: &str = "10.96.0.0/12";
/// Bootstrap tokens live this long; ksctl makes a new one when less than a quarter is left.
pub const TOKEN_TTL_SECS: u64 = 24 * 3600;
/// kubeadm deletes uploaded control-plane certificates after two hours.
pub const UPLOADED_CERTS_TTL_SECS: u64 = 2 * 3600;
/// Stands for "the installed kubeadm's own version" when the request named only a minor line.
const VERSION_PLACEHOLDER: &str = "__KSCTL_KUBEADM_VERSION__";

/// What kubeadm needs from ksctl, sealed in state as one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeadmSecrets {
    pub ca: CertKey,
    pub token: String,
    pub token_expires_ms: u64,
    pub certificate_key: String,
    /// When the control-plane certificates were last uploaded (they expire after 2 h).
    pub certs_uploaded_ms: u64,
}

fn random_from(alphabet: &[u8], n: usize) -> String {
    // Rejection sampling keeps every character equally likely.
    let limit = 256 - 256 % alphabet.len();
    let mut out = String::with_capacity(n);
    while out.len() < n {
        for b in ksctl_core::seal::random_bytes(n) {
            if (b as usize) < limit && out.len() < n {
                out.push(alphabet[b as usize % alphabet.len()] as char);
            }
        }
    }
    out
}

/// A bootstrap token: `[a-z0-9]{6}.[a-z0-9]{16}`, as kubeadm requires.
pub fn new_token() -> String {
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    format!("{}.{}", random_from(A, 6), random_from(A, 16))
}

/// The key kubeadm encrypts uploaded control-plane certificates with: 32 random bytes, hex.
pub fn new_certificate_key() -> String {
    ksctl_core::seal::random_bytes(32).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a token expiring at `expires_ms` must be replaced at `now_ms`.
pub fn token_needs_renewal(expires_ms: u64, now_ms: u64) -> bool {
    now_ms + TOKEN_TTL_SECS * 1000 / 4 >= expires_ms
}

/// `(major, minor)` of a version like `1.31`, `v1.20.2`.
fn minor_of(version: &str) -> (u32, u32) {
    let mut it = version.trim_start_matches('v').split(['.', '+', '-']).map(|p| p.parse().unwrap_or(0));
    (it.next().unwrap_or(1), it.next().unwrap_or(0))
}

/// The kubeadm configuration API for a Kubernetes version: v1beta2 up to 1.21, v1beta3 up to
/// 1.30, v1beta4 from 1.31 (the fields ksctl sets mean the same in all three).
pub fn api_version(version: &str) -> &'static str {
    match minor_of(version) {
        (1, m) if m < 22 => "kubeadm.k8s.io/v1beta2",
        (1, m) if m < 31 => "kubeadm.k8s.io/v1beta3",
        _ => "kubeadm.k8s.io/v1beta4",
    }
}

/// The version kubeadm is told: exact when the request gave a patch, else the installed one.
fn kubernetes_version(version: &str) -> String {
    let v = version.trim_start_matches('v');
    if v.split('.').count() >= 3 { format!("v{v}") } else { VERSION_PLACEHOLDER.to_string() }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig<'a> {
    pub cluster_name: &'a str,
    pub version: &'a str,
    pub node_name: &'a str,
    pub advertise_ip: &'a str,
    pub lb_private_ip: &'a str,
    pub lb_public_ip: &'a str,
    pub etcd_endpoints: &'a [String],
    pub token: &'a str,
    pub certificate_key: &'a str,
}

fn yaml_list(items: &[String], indent: &str) -> String {
    items.iter().map(|i| format!("{indent}- \"{i}\"\n")).collect()
}

/// The `InitConfiguration` + `ClusterConfiguration` for `kubeadm init` on the first control plane.
pub fn init_config(c: &ClusterConfig<'_>) -> String {
    let api = api_version(c.version);
    let (_, minor) = minor_of(c.version);
    let (cri, taint) = if minor < 24 {
        ("/run/containerd/containerd.sock", "node-role.kubernetes.io/master")
    } else {
        ("unix:///var/run/containerd/containerd.sock", "node-role.kubernetes.io/control-plane")
    };
    let sans = vec![c.lb_public_ip.to_string(), c.lb_private_ip.to_string()];
    format!(
        "apiVersion: {api}
kind: InitConfiguration
bootstrapTokens:
- token: \"{token}\"
  ttl: \"{ttl}s\"
  groups: [\"system:bootstrappers:kubeadm:default-node-token\"]
  usages: [\"signing\", \"authentication\"]
certificateKey: \"{cert_key}\"
localAPIEndpoint:
  advertiseAddress: \"{adv}\"
  bindPort: 6443
nodeRegistration:
  name: \"{node}\"
  criSocket: \"{cri}\"
  taints:
  - key: \"{taint}\"
    effect: NoSchedule
---
apiVersion: {api}
kind: ClusterConfiguration
clusterName: \"{name}\"
kubernetesVersion: \"{kv}\"
controlPlaneEndpoint: \"{lb}:6443\"
certificatesDir: /etc/kubernetes/pki
apiServer:
  certSANs:
{sans}etcd:
  external:
    endpoints:
{eps}    caFile: /etc/kubernetes/pki/etcd/ca.crt
    certFile: /etc/kubernetes/pki/apiserver-etcd-client.crt
    keyFile: /etc/kubernetes/pki/apiserver-etcd-client.key
networking:
  podSubnet: \"{POD_SUBNET}\"
  serviceSubnet: \"{SERVICE_SUBNET}\"
",
        token = c.token,
        ttl = TOKEN_TTL_SECS,
        cert_key = c.certificate_key,
        adv = c.advertise_ip,
        node = c.node_name,
        name = c.cluster_name,
        kv = kubernetes_version(c.version),
        lb = c.lb_private_ip,
        sans = yaml_list(&sans, "  "),
        eps = yaml_list(c.etcd_endpoints, "    "),
    )
}

/// `kubeadm join` through the load balancer; with `certificate_key`, as a control plane.
pub fn join_command(
    lb_private_ip: &str,
    token: &str,
    ca_hash: &str,
    node_name: &str,
    control_plane: Option<(&str, &str)>,
) -> String {
    let mut cmd = format!(
        "kubeadm join {lb_private_ip}:6443 --token {token} --discovery-token-ca-cert-hash {ca_hash} --node-name {node_name}"
    );
    if let Some((certificate_key, advertise_ip)) = control_plane {
        cmd.push_str(&format!(
            " --control-plane --certificate-key {certificate_key} --apiserver-advertise-address {advertise_ip}"
        ));
    }
    cmd
}

/// containerd, kubelet, kubeadm and kubectl from the Kubernetes apt repository, swap off,
/// the kernel modules and sysctls Kubernetes networking needs. Idempotent.
pub fn prepare_node(version: &str, artifacts: &Artifacts) -> String {
    let repo = artifacts.kubernetes_apt(version);
    format!(
        "if ! command -v kubeadm >/dev/null 2>&1 || ! command -v containerd >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq apt-transport-https ca-certificates curl gpg containerd >/dev/null
  install -d -m 0755 /etc/apt/keyrings
  curl -fsSL --retry 5 {repo}Release.key | gpg --batch --yes --dearmor -o /etc/apt/keyrings/ksctl-kubernetes.gpg
  echo 'deb [signed-by=/etc/apt/keyrings/ksctl-kubernetes.gpg] {repo} /' > /etc/apt/sources.list.d/ksctl-kubernetes.list
  apt-get update -qq && apt-get install -y -qq kubelet kubeadm kubectl >/dev/null
  apt-mark hold kubelet kubeadm kubectl >/dev/null
fi
swapoff -a || true
sed -i '/ swap / s/^[^#]/#&/' /etc/fstab || true
printf 'overlay\\nbr_netfilter\\n' > /etc/modules-load.d/ksctl-k8s.conf
modprobe overlay 2>/dev/null || true; modprobe br_netfilter 2>/dev/null || true
printf 'net.bridge.bridge-nf-call-iptables = 1\\nnet.bridge.bridge-nf-call-ip6tables = 1\\nnet.ipv4.ip_forward = 1\\n' > /etc/sysctl.d/ksctl-k8s.conf
sysctl --system >/dev/null 2>&1 || true
if [ ! -f /etc/containerd/ksctl ]; then
  install -d /etc/containerd
  containerd config default | sed 's/SystemdCgroup = false/SystemdCgroup = true/' > /etc/containerd/config.toml
  touch /etc/containerd/ksctl
  systemctl restart containerd
fi
systemctl enable --now kubelet >/dev/null 2>&1 || true
"
    )
}

/// Files kubeadm expects before `init`: the cluster CA (so ksctl knows the discovery hash) and
/// the etcd CA and API-server client certificate for the external etcd.
pub fn pki_files(ca: &CertKey, etcd_ca: &str, etcd_client: &CertKey) -> String {
    [
        write_file("/etc/kubernetes/pki/ca.crt", &ca.cert, "0644"),
        write_file("/etc/kubernetes/pki/ca.key", &ca.key, "0600"),
        write_file("/etc/kubernetes/pki/etcd/ca.crt", etcd_ca, "0644"),
        write_file("/etc/kubernetes/pki/apiserver-etcd-client.crt", &etcd_client.cert, "0644"),
        write_file("/etc/kubernetes/pki/apiserver-etcd-client.key", &etcd_client.key, "0600"),
    ]
    .concat()
}

/// The first control plane: prepare, write the PKI and config, `kubeadm init --upload-certs`
/// unless this node already runs a control plane.
pub fn init(
    c: &ClusterConfig<'_>,
    secrets: &KubeadmSecrets,
    etcd_ca: &str,
    etcd_client: &CertKey,
    artifacts: &Artifacts,
) -> String {
    let body = format!(
        "{prep}{pki}{cfg}sed -i \"s/{ph}/$(kubeadm version -o short)/\" {CONFIG}
if [ ! -f {ADMIN_KUBECONFIG} ]; then
  kubeadm init --config {CONFIG} --upload-certs
fi
",
        prep = prepare_node(c.version, artifacts),
        pki = pki_files(&secrets.ca, etcd_ca, etcd_client),
        cfg = write_file(CONFIG, &init_config(c), "0600"),
        ph = VERSION_PLACEHOLDER,
    );
    step_script("kubeadm-init", &body)
}

/// A control plane or worker joining, unless it already joined.
pub fn join(
    step: &str,
    version: &str,
    join_cmd: &str,
    control_plane: Option<(&str, &CertKey)>,
    artifacts: &Artifacts,
) -> String {
    let pki = match control_plane {
        Some((etcd_ca, client)) => [
            write_file("/etc/kubernetes/pki/etcd/ca.crt", etcd_ca, "0644"),
            write_file("/etc/kubernetes/pki/apiserver-etcd-client.crt", &client.cert, "0644"),
            write_file("/etc/kubernetes/pki/apiserver-etcd-client.key", &client.key, "0600"),
        ]
        .concat(),
        None => String::new(),
    };
    let body = format!(
        "{prep}{pki}if [ ! -f /etc/kubernetes/kubelet.conf ]; then\n  {join_cmd}\nfi\n",
        prep = prepare_node(version, artifacts),
    );
    step_script(step, &body)
}

/// Run on the first control plane: registers `token` (a renewal) and re-uploads the
/// control-plane certificates under `certificate_key` (they expire after two hours).
pub fn refresh(token: &str, certificate_key: &str) -> String {
    format!(
        "set -eu
kubeadm token create {t} --ttl {TOKEN_TTL_SECS}s >/dev/null 2>&1 || kubeadm token list | grep -q {id}
kubeadm init phase upload-certs --upload-certs --certificate-key {k} --config {CONFIG} >/dev/null
",
        t = quote(token),
        id = quote(token.split('.').next().unwrap_or(token)),
        k = quote(certificate_key),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg<'a>(version: &'a str, eps: &'a [String]) -> ClusterConfig<'a> {
        ClusterConfig {
            cluster_name: "demo",
            version,
            node_name: "demo-vm-cp-0",
            advertise_ip: "10.0.0.4",
            lb_private_ip: "10.0.0.9",
            lb_public_ip: "203.0.113.7",
            etcd_endpoints: eps,
            token: "abcdef.0123456789abcdef",
            certificate_key: "00ff",
        }
    }

    #[test]
    fn tokens_have_kubeadms_shape_and_differ() {
        let t = new_token();
        let (id, secret) = t.split_once('.').unwrap();
        assert_eq!((id.len(), secret.len()), (6, 16));
        assert!(t.bytes().all(|c| c == b'.' || c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_ne!(new_token(), t);
        assert_eq!(new_certificate_key().len(), 64);
    }

    #[test]
    fn tokens_are_renewed_in_their_last_quarter() {
        let expires = 100 * 3600 * 1000;
        assert!(!token_needs_renewal(expires, expires - 7 * 3600 * 1000));
        assert!(token_needs_renewal(expires, expires - 5 * 3600 * 1000));
        assert!(token_needs_renewal(expires, expires + 1));
    }

    #[test]
    fn the_config_api_follows_the_version() {
        assert_eq!(api_version("1.20.2"), "kubeadm.k8s.io/v1beta2");
        assert_eq!(api_version("v1.30"), "kubeadm.k8s.io/v1beta3");
        assert_eq!(api_version("1.31"), "kubeadm.k8s.io/v1beta4");
        assert_eq!(kubernetes_version("1.31"), VERSION_PLACEHOLDER);
        assert_eq!(kubernetes_version("v1.20.2"), "v1.20.2");
    }

    #[test]
    fn the_config_points_at_the_lb_and_the_external_etcd() {
        let eps = vec!["https://10.0.0.1:2379".to_string(), "https://10.0.0.2:2379".to_string()];
        let c = init_config(&cfg("1.31", &eps));
        assert!(c.contains("controlPlaneEndpoint: \"10.0.0.9:6443\""));
        assert!(c.contains("  - \"203.0.113.7\"\n  - \"10.0.0.9\"\n"), "{c}");
        assert!(c.contains("    - \"https://10.0.0.1:2379\"\n    - \"https://10.0.0.2:2379\"\n"), "{c}");
        assert!(c.contains("podSubnet: \"10.244.0.0/16\""));
        assert!(c.contains("node-role.kubernetes.io/control-plane"));
        // Both documents parse as YAML.
        let docs: Vec<serde_yaml::Value> =
            serde_yaml::Deserializer::from_str(&c).map(|d| serde_yaml::Value::deserialize(d).unwrap()).collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1]["etcd"]["external"]["endpoints"].as_sequence().unwrap().len(), 2);
        let old = init_config(&cfg("1.20.2", &eps));
        assert!(old.contains("kubernetesVersion: \"v1.20.2\"") && old.contains("node-role.kubernetes.io/master"));
    }

    #[test]
    fn join_commands_go_through_the_lb_with_the_ca_hash() {
        let w = join_command("10.0.0.9", "abcdef.0123456789abcdef", "sha256:00", "demo-vm-wp-0", None);
        assert_eq!(
            w,
            "kubeadm join 10.0.0.9:6443 --token abcdef.0123456789abcdef --discovery-token-ca-cert-hash sha256:00 --node-name demo-vm-wp-0"
        );
        let cp = join_command("10.0.0.9", "t", "sha256:00", "demo-vm-cp-1", Some(("k3y", "10.0.0.5")));
        assert!(cp.ends_with("--control-plane --certificate-key k3y --apiserver-advertise-address 10.0.0.5"));
    }

    #[test]
    fn scripts_are_valid_shell() {
        let eps = vec!["https://10.0.0.1:2379".to_string()];
        let ck = CertKey { cert: "C".into(), key: "K".into() };
        let s = KubeadmSecrets {
            ca: ck.clone(),
            token: "t".into(),
            token_expires_ms: 0,
            certificate_key: "k".into(),
            certs_uploaded_ms: 0,
        };
        for script in [
            init(&cfg("1.31", &eps), &s, "CA", &ck, &Artifacts::default()),
            join("kubeadm-worker-join", "1.31", "kubeadm join x", None, &Artifacts::default()),
            join("kubeadm-cp-join", "1.31", "kubeadm join x", Some(("CA", &ck)), &Artifacts::default()),
            refresh("abcdef.0123456789abcdef", "k"),
        ] {
            let out = std::process::Command::new("sh").arg("-n").arg("-c").arg(&script).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
