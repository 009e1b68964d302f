//! kubeadm: node preparation, the `kubeadm` configuration (external etcd, the load balancer as
//! control-plane endpoint, pod subnet), `init --upload-certs` on the first control plane and
//! `join` for the rest. ksctl makes the cluster CA itself (rcgen) and hands it to kubeadm, so the
//! discovery hash is known without asking a host; the bootstrap token and certificate key are
//! made here too, sealed in state, and the token is renewed when near expiry.
use crate::kubeadm_config::*;
use crate::pki::{self, CertKey, PkiError};
use crate::plan::Step;
use crate::scripts::write_file;
use ksctl_core::artifacts::{Artifacts, CONTAINERD_CERTS_D, RegistryTls};
use ksctl_ssh::host::{CONTAINERD_MARK, KUBERNETES_APT_LIST, KUBERNETES_KEYRING, quote, step_script};
use serde::{Deserialize, Serialize};

pub const CONFIG: &str = "/etc/ksctl/kubeadm.yaml";
pub const JOIN_CONFIG: &str = "/etc/ksctl/kubeadm-join.yaml";
/// Written when `kubeadm init` / `kubeadm join` finished on a host: a re-run skips them.
pub const INIT_DONE: &str = "/etc/ksctl/kubeadm-init.done";
pub const JOIN_DONE: &str = "/etc/ksctl/kubeadm-join.done";
pub const ADMIN_KUBECONFIG: &str = "/etc/kubernetes/admin.conf";
pub use ksctl_core::spec::POD_SUBNET;
pub const SERVICE_SUBNET: &str = "10.96.0.0/12";
/// Bootstrap tokens live this long; ksctl makes a new one when less than a quarter is left.
pub const TOKEN_TTL_SECS: u64 = 24 * 3600;
/// kubeadm deletes uploaded control-plane certificates after two hours.
pub const UPLOADED_CERTS_TTL_SECS: u64 = 2 * 3600;
/// Stands for "the installed kubeadm's own version" when the request named only a minor line.
const VERSION_PLACEHOLDER: &str = "__KSCTL_KUBEADM_VERSION__";
/// Stands for kube-proxy's `conntrack.maxPerCore`, decided on the host by [`CONNTRACK_CHECK`].
pub const CONNTRACK_PLACEHOLDER: &str = "__KSCTL_CONNTRACK_MAX_PER_CORE__";
/// May this host set nf_conntrack_max (writing its own value back)? If not, `0` (leave it).
const CONNTRACK_CHECK: &str = "c=null
if v=$(cat /proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null) && ! (echo \"$v\" > /proc/sys/net/netfilter/nf_conntrack_max) 2>/dev/null; then c=0; fi
";

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

/// containerd's socket as kubeadm wants it named for `version`.
fn cri_socket(version: &str) -> &'static str {
    if minor_of(version).1 < 24 {
        "/run/containerd/containerd.sock"
    } else {
        "unix:///var/run/containerd/containerd.sock"
    }
}

/// The taint kubeadm puts on control planes in `version`.
fn control_plane_taint(version: &str) -> &'static str {
    if minor_of(version).1 < 24 { "node-role.kubernetes.io/master" } else { "node-role.kubernetes.io/control-plane" }
}

/// `nodeRegistration.kubeletExtraArgs`: a map up to v1beta3, a list of name/value from v1beta4.
fn kubelet_extra_args<'a>(version: &str, args: &[(&'a str, &'a str)]) -> ExtraArgs<'a> {
    if api_version(version).ends_with("v1beta4") {
        ExtraArgs::List(args.iter().map(|&(name, value)| NameValue { name, value }).collect())
    } else {
        ExtraArgs::Map(args.iter().copied().collect())
    }
}

/// A join token as kubeadm registers it: valid for [`TOKEN_TTL_SECS`], for node bootstrap.
fn bootstrap_token(token: &str) -> BootstrapToken<'_> {
    BootstrapToken {
        token,
        ttl: format!("{TOKEN_TTL_SECS}s"),
        groups: vec!["system:bootstrappers:kubeadm:default-node-token"],
        usages: vec!["signing", "authentication"],
    }
}

/// containerd runs with runc's systemd cgroup driver ([`prepare_node`]); the kubelet must agree
/// (kubeadm defaults it to cgroupfs before 1.22).
const KUBELET: KubeletConfiguration = KubeletConfiguration {
    api_version: "kubelet.config.k8s.io/v1beta1",
    kind: "KubeletConfiguration",
    cgroup_driver: "systemd",
};

/// kube-proxy raises the machine-wide nf_conntrack_max, and exits when it may not: nodes in
/// containers or network namespaces may not. The first control plane tries the kernel (see
/// [`CONNTRACK_CHECK`]): where it may not, the kernel's size stays (0), elsewhere kube-proxy's
/// default (null).
const KUBE_PROXY: KubeProxyConfiguration = KubeProxyConfiguration {
    api_version: "kubeproxy.config.k8s.io/v1alpha1",
    kind: "KubeProxyConfiguration",
    conntrack: Conntrack { max_per_core: CONNTRACK_PLACEHOLDER },
};

/// The `InitConfiguration`, `ClusterConfiguration`, kubelet and kube-proxy configurations for
/// `kubeadm init` on the first control plane.
pub fn init_config(c: &ClusterConfig<'_>, artifacts: &Artifacts) -> String {
    let api = api_version(c.version);
    let cluster = ClusterConfiguration {
        api_version: api,
        kind: "ClusterConfiguration",
        cluster_name: c.cluster_name,
        kubernetes_version: kubernetes_version(c.version),
        control_plane_endpoint: format!("{}:6443", c.lb_private_ip),
        certificates_dir: "/etc/kubernetes/pki",
        api_server: ApiServer { cert_sans: vec![c.lb_public_ip, c.lb_private_ip] },
        etcd: Etcd {
            external: ExternalEtcd {
                endpoints: c.etcd_endpoints,
                ca_file: "/etc/kubernetes/pki/etcd/ca.crt",
                cert_file: "/etc/kubernetes/pki/apiserver-etcd-client.crt",
                key_file: "/etc/kubernetes/pki/apiserver-etcd-client.key",
            },
        },
        networking: Networking { pod_subnet: POD_SUBNET, service_subnet: SERVICE_SUBNET },
        image_repository: artifacts.registry.as_ref().map(|r| r.prefix()),
    };
    let init = InitConfiguration {
        api_version: api,
        kind: "InitConfiguration",
        bootstrap_tokens: vec![bootstrap_token(c.token)],
        certificate_key: c.certificate_key,
        local_api_endpoint: ApiEndpoint { advertise_address: c.advertise_ip, bind_port: 6443 },
        node_registration: node_registration(c.version, c.node_name, c.advertise_ip, true),
    };
    [yaml(&init), yaml(&cluster), yaml(&KUBELET), yaml(&KUBE_PROXY)].join("---\n")
}

/// `nodeRegistration` for a node: its name and address, containerd, and (control planes) the
/// taint that keeps workloads on the workers. kubeadm's image pulls in preflight are left to
/// the prepare step, which pulls what a node needs with an error that names the registry.
fn node_registration<'a>(version: &str, name: &'a str, ip: &'a str, control_plane: bool) -> NodeRegistration<'a> {
    let taint = Taint { key: control_plane_taint(version), effect: "NoSchedule" };
    NodeRegistration {
        name,
        cri_socket: cri_socket(version),
        kubelet_extra_args: kubelet_extra_args(version, &[("node-ip", ip)]),
        ignore_preflight_errors: vec!["ImagePull"],
        taints: if control_plane { vec![taint] } else { vec![] },
    }
}

/// Where a node that joins finds the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join<'a> {
    pub version: &'a str,
    pub lb_private_ip: &'a str,
    pub token: &'a str,
    pub ca_hash: &'a str,
    pub node_name: &'a str,
    pub node_ip: &'a str,
    /// A control plane joins with the key of the uploaded control-plane certificates.
    pub certificate_key: Option<&'a str>,
    /// Wait until the node is `Ready` (a scale-up, whose cluster has its pod network already;
    /// during a create the network comes after the bootstrap).
    pub wait_ready: bool,
}

/// How long a node that joined a running cluster may take to become `Ready`.
pub const NODE_READY_SECS: u32 = 300;

/// The `JoinConfiguration` for `kubeadm join --config` (secrets in a 0600 file, not in `ps`).
pub fn join_config(j: &Join<'_>) -> String {
    let doc = JoinConfiguration {
        api_version: api_version(j.version),
        kind: "JoinConfiguration",
        discovery: Discovery {
            bootstrap_token: DiscoveryToken {
                api_server_endpoint: format!("{}:6443", j.lb_private_ip),
                token: j.token,
                ca_cert_hashes: vec![j.ca_hash],
            },
        },
        node_registration: node_registration(j.version, j.node_name, j.node_ip, j.certificate_key.is_some()),
        control_plane: j.certificate_key.map(|certificate_key| JoinControlPlane {
            local_api_endpoint: ApiEndpoint { advertise_address: j.node_ip, bind_port: 6443 },
            certificate_key,
        }),
    };
    yaml(&doc)
}

/// Shell that installs the commands' packages (`command:package`) from the host's own apt
/// sources when the command is missing — by command, not package name: a host may have
/// containerd from another package (Docker's `containerd.io`), which apt would remove.
fn os_packages(packages: &[(&str, &str)]) -> String {
    let list: Vec<String> = packages.iter().map(|(c, p)| format!("{c}:{p}")).collect();
    format!(
        "missing=''
for cp in {list}; do command -v \"${{cp%%:*}}\" >/dev/null 2>&1 || missing=\"$missing ${{cp#*:}}\"; done
if [ -n \"$missing\" ]; then
  apt-get update -qq || {{ echo 'apt-get update failed' >&2; exit 1; }}
  apt-get install -y -qq $missing >/dev/null || {{ echo \"installing$missing failed\" >&2; exit 1; }}
fi
",
        list = list.join(" ")
    )
}

/// Whether the Debian packages are installed (not merely known, or removed with their
/// configuration left).
fn installed(packages: &str) -> String {
    format!(
        "[ \"$(dpkg-query -W -f='${{Status}}\\n' {packages} 2>/dev/null | grep -c '^install ok installed$')\" = {n} ]",
        n = packages.split_whitespace().count()
    )
}

/// containerd (with runc's systemd cgroup driver, the pause image kubeadm's version uses, pulls
/// through the configured registry), kubelet, kubeadm and kubectl from the Kubernetes apt
/// repository, swap off, the kernel modules and sysctls Kubernetes networking needs, and the
/// node's images pulled ahead. Idempotent: a changed containerd configuration restarts it.
pub fn prepare_node(version: &str, artifacts: &Artifacts) -> String {
    let repo = artifacts.kubernetes_apt(version);
    let (registry_flag, registry_files) = match &artifacts.registry {
        None => (String::new(), String::new()),
        Some(r) => {
            let dir = r.containerd_dir();
            // Recorded, so that uninstall removes this registry's configuration and no other.
            let mut files = format!(
                "grep -qxF {d} {CONTAINERD_MARK}.registries 2>/dev/null || echo {d} >> {CONTAINERD_MARK}.registries\n",
                d = quote(&dir)
            );
            files.push_str(&write_file(&format!("{dir}/hosts.toml"), &r.containerd_hosts_toml(), "0644"));
            if let RegistryTls::Ca(pem) = &r.tls {
                files.push_str(&write_file(&r.containerd_ca_path(), pem, "0644"));
            }
            (format!(" --image-repository {}", quote(&r.prefix())), files)
        }
    };
    let repo = quote(&repo);
    format!(
        "export DEBIAN_FRONTEND=noninteractive
# Whether containerd ran before ksctl (uninstall leaves it as it found it).
install -d /etc/containerd
if [ ! -f {CONTAINERD_MARK} ]; then
  if [ -f /etc/containerd/config.toml ]; then cp -p /etc/containerd/config.toml /etc/containerd/config.toml.before-ksctl; fi
  if ! command -v containerd >/dev/null 2>&1; then echo absent
  elif systemctl is-active --quiet containerd; then echo active
  else echo inactive; fi > {CONTAINERD_MARK}
fi
{os}if ! {have}; then
  install -d -m 0755 /etc/apt/keyrings
  curl -fsSL --retry 5 -o /etc/apt/keyrings/ksctl-kubernetes.asc {repo}Release.key \\
    || {{ echo \"cannot fetch the Kubernetes repository's key from {repo}\" >&2; exit 1; }}
  gpg --batch --yes --dearmor -o {KUBERNETES_KEYRING} /etc/apt/keyrings/ksctl-kubernetes.asc
  rm -f /etc/apt/keyrings/ksctl-kubernetes.asc
  echo \"deb [signed-by={KUBERNETES_KEYRING}] \"{repo}\" /\" > {KUBERNETES_APT_LIST}
  apt-get update -qq || {{ echo 'apt-get update failed' >&2; exit 1; }}
  apt-get install -y -qq kubelet kubeadm kubectl >/dev/null || {{ echo 'installing kubelet kubeadm kubectl failed' >&2; exit 1; }}
  apt-mark hold kubelet kubeadm kubectl >/dev/null
fi
swapoff -a || true
sed -i '/ swap / s/^[^#]/#&/' /etc/fstab || true
printf 'overlay\\nbr_netfilter\\n' > /etc/modules-load.d/ksctl-k8s.conf
modprobe overlay 2>/dev/null || true; modprobe br_netfilter 2>/dev/null || true
printf 'net.bridge.bridge-nf-call-iptables = 1\\nnet.bridge.bridge-nf-call-ip6tables = 1\\nnet.ipv4.ip_forward = 1\\n' > /etc/sysctl.d/ksctl-k8s.conf
sysctl --system >/dev/null 2>&1 || true
{registry_files}images=$(kubeadm config images list --kubernetes-version \"$(kubeadm version -o short)\"{registry_flag})
pause=$(printf '%s\\n' \"$images\" | grep '/pause:') || {{ echo \"kubeadm lists no pause image: $images\" >&2; exit 1; }}
# Hosts that may not lower OOM scores (containers, rootless) need containerd to keep them.
restrict=false
sh -c 'echo -999 > /proc/self/oom_score_adj' 2>/dev/null || restrict=true
containerd config default > /etc/containerd/config.toml.default
sed -e 's/SystemdCgroup = false/SystemdCgroup = true/' \\
  -e \"s#sandbox_image = .*#sandbox_image = \\\"$pause\\\"#\" \\
  -e 's#config_path = \"\"#config_path = \"{certs_d}\"#' \\
  -e \"s#restrict_oom_score_adj = .*#restrict_oom_score_adj = $restrict#\" \\
  /etc/containerd/config.toml.default > /etc/containerd/config.toml.ksctl
rm -f /etc/containerd/config.toml.default
# Every setting took (another containerd's default configuration may name them otherwise).
for want in 'SystemdCgroup = true' \"sandbox_image = \\\"$pause\\\"\" 'config_path = \"{certs_d}\"' \"restrict_oom_score_adj = $restrict\"; do
  grep -qF \"$want\" /etc/containerd/config.toml.ksctl \\
    || {{ echo \"containerd's default configuration has no place for: $want\" >&2; exit 1; }}
done
if ! cmp -s /etc/containerd/config.toml.ksctl /etc/containerd/config.toml; then
  mv /etc/containerd/config.toml.ksctl /etc/containerd/config.toml
  systemctl enable containerd >/dev/null 2>&1 || true
  systemctl restart containerd
fi
rm -f /etc/containerd/config.toml.ksctl
systemctl enable --now containerd >/dev/null 2>&1 || {{ echo 'containerd does not start' >&2; exit 1; }}
systemctl enable --now kubelet >/dev/null 2>&1 || true
# The node's own images (the pause image and kube-proxy), pulled now so that a registry that
# lacks one fails here, naming it, instead of as a pod stuck later. A few tries: containerd
# may still be starting.
ksctl_pull() {{
  for attempt in 1 2 3 4 5; do
    crictl -r unix:///run/containerd/containerd.sock pull \"$1\" >/dev/null 2>&1 && return 0
    sleep 2
  done
  crictl -r unix:///run/containerd/containerd.sock pull \"$1\" >&2 || true
  echo \"cannot pull image $1\" >&2
  exit 1
}}
for i in $pause $(printf '%s\\n' \"$images\" | grep '/kube-proxy:'); do ksctl_pull \"$i\"; done
",
        os = os_packages(&[("update-ca-certificates", "ca-certificates"), ("curl", "curl"), ("gpg", "gpg"), ("containerd", "containerd")]),
        have = installed("kubelet kubeadm kubectl"),
        certs_d = CONTAINERD_CERTS_D,
    )
}

/// The control-plane images, pulled before `kubeadm init` or a control-plane join (after
/// [`prepare_node`], whose `ksctl_pull` and `$images` it uses).
const PULL_CONTROL_PLANE: &str = "for i in $(printf '%s\\n' \"$images\" | grep -E '/kube-(apiserver|controller-manager|scheduler):'); do ksctl_pull \"$i\"; done\n";

/// The external etcd's CA and the API server's client certificate, as every control plane has
/// them (keys as SEC1: see [`pki::sec1_pem`]).
fn etcd_client_files(etcd_ca: &str, etcd_client: &CertKey) -> Result<String, PkiError> {
    Ok([
        write_file("/etc/kubernetes/pki/etcd/ca.crt", etcd_ca, "0644"),
        write_file("/etc/kubernetes/pki/apiserver-etcd-client.crt", &etcd_client.cert, "0644"),
        write_file("/etc/kubernetes/pki/apiserver-etcd-client.key", &pki::sec1_pem(&etcd_client.key)?, "0600"),
    ]
    .concat())
}

/// Files kubeadm expects before `init`: the cluster CA (so ksctl knows the discovery hash) and
/// the etcd CA and API-server client certificate for the external etcd.
pub fn pki_files(ca: &CertKey, etcd_ca: &str, etcd_client: &CertKey) -> Result<String, PkiError> {
    Ok([
        write_file("/etc/kubernetes/pki/ca.crt", &ca.cert, "0644"),
        write_file("/etc/kubernetes/pki/ca.key", &pki::sec1_pem(&ca.key)?, "0600"),
        etcd_client_files(etcd_ca, etcd_client)?,
    ]
    .concat())
}

/// Runs kubeadm (`command`) once per host: not again once `done` is written. `<done>.started`
/// is written right before kubeadm runs: a host with it and without `done` is one where a run
/// stopped halfway (its SSH session died with the controller, and kubeadm with it or not),
/// which kubeadm can neither resume nor start over on — so it is reset first. A host with
/// Kubernetes' files and no mark of ksctl's is not touched: the step fails naming them (ksctl
/// does not wipe a node it did not make). `before` (the files kubeadm reads, which reset
/// removes) is written after the reset; `on_rerun` runs before it, on a host being reset.
fn kubeadm_once(step: Step, done: &str, before: &str, on_rerun: &str, command: &str) -> String {
    format!(
        "if [ ! -f {done} ]; then
  if [ -f {done}.started ]; then
    pkill -x kubeadm 2>/dev/null || true
    sleep 1
{on_rerun}    kubeadm reset -f >/dev/null 2>&1 || true
  else
    found=$(find /etc/kubernetes/manifests /etc/kubernetes/kubelet.conf /etc/kubernetes/admin.conf /var/lib/kubelet/config.yaml -type f 2>/dev/null | head -n 3)
    if [ -n \"$found\" ]; then
      echo \"this host already has Kubernetes files ksctl did not make ($found); reset or replace it first\" >&2
      exit 1
    fi
  fi
fi
{before}if [ ! -f {done} ]; then
  ksctl_step {step}-ran
  touch {done}.started
  {command}
  touch {done}
  rm -f {done}.started
fi
"
    )
}

/// The first control plane: prepare, write the PKI and config, `kubeadm init --upload-certs`
/// unless it finished here before.
pub fn init(
    c: &ClusterConfig<'_>,
    secrets: &KubeadmSecrets,
    etcd_ca: &str,
    etcd_client: &CertKey,
    artifacts: &Artifacts,
) -> Result<String, PkiError> {
    let before = format!(
        "{pki}{cfg}{CONNTRACK_CHECK}sed -i -e \"s/{ph}/$(kubeadm version -o short)/\" -e \"s/{CONNTRACK_PLACEHOLDER}/$c/\" {CONFIG}\n",
        pki = pki_files(&secrets.ca, etcd_ca, etcd_client)?,
        cfg = write_file(CONFIG, &init_config(c, artifacts), "0600"),
        ph = VERSION_PLACEHOLDER,
    );
    let body = format!(
        "{prep}{PULL_CONTROL_PLANE}{once}",
        prep = prepare_node(c.version, artifacts),
        once = kubeadm_once(
            Step::KubeadmInit,
            INIT_DONE,
            &before,
            "",
            &format!("kubeadm init --config {CONFIG} --upload-certs")
        ),
    );
    Ok(step_script(Step::KubeadmInit.as_str(), &body))
}

/// A control plane or worker joining through the load balancer, unless it joined before.
pub fn join(
    step: Step,
    j: &Join<'_>,
    control_plane: Option<(&str, &CertKey)>,
    artifacts: &Artifacts,
) -> Result<String, PkiError> {
    let pki = match control_plane {
        Some((etcd_ca, client)) => etcd_client_files(etcd_ca, client)?,
        None => String::new(),
    };
    let before = pki + &write_file(JOIN_CONFIG, &join_config(j), "0600");
    let body = format!(
        "{prep}{pull}{once}",
        prep = prepare_node(j.version, artifacts),
        pull = if control_plane.is_some() { PULL_CONTROL_PLANE } else { "" },
        once = kubeadm_once(
            step,
            JOIN_DONE,
            &before,
            &forget_own_node(j.node_name),
            &format!("kubeadm join --config {JOIN_CONFIG}")
        ),
    );
    let ready = if j.wait_ready { node_ready(j.node_name) } else { String::new() };
    Ok(step_script(step.as_str(), &(body + &ready)))
}

/// Before an interrupted join is reset and run again: a join that got as far as registering the
/// host's Node leaves it `Ready` for the controller manager's grace period (40 s) after the
/// reset, and kubeadm refuses to join over a Ready Node of the same name ("You must delete the
/// existing Node"), so each rerun until then fails. The host deletes its own Node with its
/// kubelet's credentials (a kubelet may delete its own Node); without them there is none. The
/// kubelet is stopped first: one still starting would register the Node again right after
/// (seen in CI: the join then failed for the whole grace period).
fn forget_own_node(name: &str) -> String {
    format!(
        "    systemctl stop kubelet 2>/dev/null || true
    if [ -f /etc/kubernetes/kubelet.conf ]; then
      kubectl --kubeconfig /etc/kubernetes/kubelet.conf delete node {} --wait=false >/dev/null 2>&1 || true
    fi
",
        quote(name)
    )
}

/// Waits until the node `name` reports `Ready`, asking as the node itself (its kubelet's
/// credentials may read their own Node); the error names the node and its conditions.
fn node_ready(name: &str) -> String {
    let n = quote(name);
    let get = format!("kubectl --kubeconfig /etc/kubernetes/kubelet.conf get node {n}");
    format!(
        "i=0
until {get} -o jsonpath='{{.status.conditions[?(@.type==\"Ready\")].status}}' 2>/dev/null | grep -qx True; do
  i=$((i+1))
  if [ $i -ge {tries} ]; then
    echo \"node \"{n}\" is not Ready after {NODE_READY_SECS} s:\" >&2
    {get} -o jsonpath='{{range .status.conditions[*]}}{{.type}}={{.status}} {{.message}}{{\"\\n\"}}{{end}}' >&2 || true
    exit 1
  fi
  sleep 2
done
",
        tries = NODE_READY_SECS / 2,
    )
}

/// Where a renewal's token waits (0600) for `kubeadm token create --config`; removed after.
pub const TOKEN_CONFIG: &str = "/etc/ksctl/kubeadm-token.yaml";

/// Run on the first control plane: registers `token` (a renewal) and re-uploads the
/// control-plane certificates under the certificate key of the init configuration (they expire
/// after two hours). Neither secret is on a command line: the token is in a 0600 file written
/// from the script on stdin, the key in the init configuration.
pub fn refresh(version: &str, token: &str) -> String {
    let doc = TokenConfiguration {
        api_version: api_version(version),
        kind: "InitConfiguration",
        bootstrap_tokens: vec![bootstrap_token(token)],
    };
    format!(
        "set -eu
{write}if ! kubeadm token create --config {TOKEN_CONFIG} >/dev/null 2>&1; then
  kubeadm token list | grep -q {id} || {{ rm -f {TOKEN_CONFIG}; echo 'kubeadm token create failed' >&2; exit 1; }}
fi
rm -f {TOKEN_CONFIG}
kubeadm init phase upload-certs --upload-certs --config {CONFIG} >/dev/null
",
        write = write_file(TOKEN_CONFIG, &yaml(&doc), "0600"),
        id = quote(token.split('.').next().unwrap_or(token)),
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

    fn docs(yaml: &str) -> Vec<serde_yaml::Value> {
        serde_yaml::Deserializer::from_str(yaml).map(|d| serde_yaml::Value::deserialize(d).unwrap()).collect()
    }

    fn lab_registry() -> Artifacts {
        use ksctl_core::artifacts::ImageRegistry;
        Artifacts {
            mirror: None,
            registry: Some(ImageRegistry::parse("10.0.0.1:5000/k8s", RegistryTls::PlainHttp).unwrap()),
        }
    }

    #[test]
    fn the_config_points_at_the_lb_and_the_external_etcd() {
        let eps = vec!["https://10.0.0.1:2379".to_string(), "https://10.0.0.2:2379".to_string()];
        let d = docs(&init_config(&cfg("1.31", &eps), &Artifacts::default()));
        let kinds: Vec<&str> = d.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            ["InitConfiguration", "ClusterConfiguration", "KubeletConfiguration", "KubeProxyConfiguration"]
        );
        let (init, cluster) = (&d[0], &d[1]);
        assert_eq!(cluster["controlPlaneEndpoint"], "10.0.0.9:6443");
        assert_eq!(cluster["apiServer"]["certSANs"], serde_yaml::to_value(["203.0.113.7", "10.0.0.9"]).unwrap());
        assert_eq!(cluster["etcd"]["external"]["endpoints"], serde_yaml::to_value(&eps).unwrap());
        assert_eq!(cluster["networking"]["podSubnet"], "10.244.0.0/16");
        assert!(cluster.get("imageRepository").is_none(), "upstream's registry by default");
        assert_eq!(init["nodeRegistration"]["taints"][0]["key"], "node-role.kubernetes.io/control-plane");
        assert_eq!(init["nodeRegistration"]["kubeletExtraArgs"][0]["name"], "node-ip", "v1beta4 lists args");
        assert_eq!(init["localAPIEndpoint"]["advertiseAddress"], "10.0.0.4");
        assert_eq!(d[2]["cgroupDriver"], "systemd", "the kubelet agrees with containerd's runc");
        assert_eq!(d[3]["conntrack"]["maxPerCore"], CONNTRACK_PLACEHOLDER, "decided on the host");

        let d = docs(&init_config(&cfg("1.20.2", &eps), &lab_registry()));
        assert_eq!(d[1]["kubernetesVersion"], "v1.20.2");
        assert_eq!(d[1]["imageRepository"], "10.0.0.1:5000/k8s");
        assert_eq!(d[0]["nodeRegistration"]["taints"][0]["key"], "node-role.kubernetes.io/master");
        assert_eq!(d[0]["nodeRegistration"]["kubeletExtraArgs"]["node-ip"], "10.0.0.4", "v1beta2 maps args");
        assert_eq!(d[0]["nodeRegistration"]["criSocket"], "/run/containerd/containerd.sock");
    }

    #[test]
    fn values_are_data_in_the_yaml_not_syntax() {
        let eps = vec!["https://10.0.0.1:2379\"\nkind: Evil".to_string()];
        let mut c = cfg("1.20.2", &eps);
        c.node_name = "a: b\n- c";
        let d = docs(&init_config(&c, &Artifacts::default()));
        assert_eq!(d.len(), 4);
        assert_eq!(d[1]["etcd"]["external"]["endpoints"][0].as_str().unwrap(), eps[0]);
        assert_eq!(d[0]["nodeRegistration"]["name"].as_str().unwrap(), "a: b\n- c");
    }

    #[test]
    fn joins_go_through_the_lb_with_the_ca_hash_from_a_file() {
        let j = Join {
            version: "1.20.2",
            lb_private_ip: "10.0.0.9",
            token: "abcdef.0123456789abcdef",
            ca_hash: "sha256:00",
            node_name: "demo-vm-wp-0",
            node_ip: "10.0.0.7",
            certificate_key: None,
            wait_ready: false,
        };
        let w = &docs(&join_config(&j))[0];
        assert_eq!(w["kind"], "JoinConfiguration");
        assert_eq!(w["discovery"]["bootstrapToken"]["apiServerEndpoint"], "10.0.0.9:6443");
        assert_eq!(w["discovery"]["bootstrapToken"]["token"], "abcdef.0123456789abcdef");
        assert_eq!(w["discovery"]["bootstrapToken"]["caCertHashes"][0], "sha256:00");
        assert_eq!(w["nodeRegistration"]["name"], "demo-vm-wp-0");
        assert!(w.get("controlPlane").is_none() && w["nodeRegistration"].get("taints").is_none());
        let cp = &docs(&join_config(&Join { certificate_key: Some("k3y"), ..j.clone() }))[0];
        assert_eq!(cp["controlPlane"]["certificateKey"], "k3y");
        assert_eq!(cp["controlPlane"]["localAPIEndpoint"]["advertiseAddress"], "10.0.0.7");
        // The secrets are in the 0600 file, never on the command line.
        let script = join(Step::KubeadmWorkerJoin, &j, None, &Artifacts::default()).unwrap();
        assert!(script.contains(&format!("kubeadm join --config {JOIN_CONFIG}")));
        assert!(!script.lines().any(|l| l.contains("kubeadm join") && l.contains("abcdef")));
        // A rerun of an interrupted join first deletes the host's own Node (with its kubelet's
        // credentials), before the reset removes them.
        let forget = script.find("delete node 'demo-vm-wp-0'").expect("the rerun forgets its Node");
        assert!(forget > script.find(".started ]; then").unwrap() && forget < script.find("kubeadm reset").unwrap());
    }

    #[test]
    fn nodes_pull_through_the_configured_registry() {
        let prep = prepare_node("1.20.2", &lab_registry());
        assert!(prep.contains("/etc/containerd/certs.d/10.0.0.1:5000/hosts.toml"), "{prep}");
        assert!(prep.contains("server = \"http://10.0.0.1:5000\""));
        assert!(prep.contains("--image-repository '10.0.0.1:5000/k8s'"));
        assert!(!prepare_node("1.20.2", &Artifacts::default()).contains("--image-repository"));
    }

    #[test]
    fn scripts_are_valid_shell() {
        let eps = vec!["https://10.0.0.1:2379".to_string()];
        let (ck, _) = pki::new_ca("test").unwrap();
        let s = KubeadmSecrets {
            ca: ck.clone(),
            token: "t".into(),
            token_expires_ms: 0,
            certificate_key: "k".into(),
            certs_uploaded_ms: 0,
        };
        let j = Join {
            version: "1.31",
            lb_private_ip: "10.0.0.9",
            token: "t",
            ca_hash: "sha256:00",
            node_name: "n",
            node_ip: "10.0.0.7",
            certificate_key: None,
            wait_ready: false,
        };
        for script in [
            init(&cfg("1.31", &eps), &s, "CA", &ck, &Artifacts::default()).unwrap(),
            init(&cfg("1.20.2", &eps), &s, "CA", &ck, &lab_registry()).unwrap(),
            join(Step::KubeadmWorkerJoin, &j, None, &Artifacts::default()).unwrap(),
            join(Step::KubeadmWorkerJoin, &Join { wait_ready: true, ..j.clone() }, None, &Artifacts::default())
                .unwrap(),
            join(
                Step::KubeadmCpJoin,
                &Join { certificate_key: Some("k"), ..j.clone() },
                Some(("CA", &ck)),
                &lab_registry(),
            )
            .unwrap(),
            refresh("1.20.2", "abcdef.0123456789abcdef"),
        ] {
            let out = std::process::Command::new("sh").arg("-n").arg("-c").arg(&script).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
