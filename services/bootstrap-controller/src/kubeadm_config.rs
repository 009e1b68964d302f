//! kubeadm's configuration documents as serde types (the fields ksctl sets, in the kubeadm API
//! versions v1beta2–v1beta4, where they mean the same), and the kubelet's and kube-proxy's
//! documents kubeadm stores for every node. Values are data: nothing here is a shell string.
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InitConfiguration<'a> {
    pub api_version: &'a str,
    pub kind: &'static str,
    pub bootstrap_tokens: Vec<BootstrapToken<'a>>,
    pub certificate_key: &'a str,
    #[serde(rename = "localAPIEndpoint")]
    pub local_api_endpoint: ApiEndpoint<'a>,
    pub node_registration: NodeRegistration<'a>,
}

/// An `InitConfiguration` holding only bootstrap tokens: what `kubeadm token create --config`
/// reads for a renewal.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TokenConfiguration<'a> {
    pub api_version: &'a str,
    pub kind: &'static str,
    pub bootstrap_tokens: Vec<BootstrapToken<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClusterConfiguration<'a> {
    pub api_version: &'a str,
    pub kind: &'static str,
    pub cluster_name: &'a str,
    pub kubernetes_version: String,
    pub control_plane_endpoint: String,
    pub certificates_dir: &'static str,
    pub api_server: ApiServer<'a>,
    pub etcd: Etcd<'a>,
    pub networking: Networking,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_repository: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct ApiServer<'a> {
    #[serde(rename = "certSANs")]
    pub cert_sans: Vec<&'a str>,
}

#[derive(Serialize)]
pub(crate) struct Etcd<'a> {
    pub external: ExternalEtcd<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ExternalEtcd<'a> {
    pub endpoints: &'a [String],
    pub ca_file: &'static str,
    pub cert_file: &'static str,
    pub key_file: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Networking {
    pub pod_subnet: &'static str,
    pub service_subnet: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JoinConfiguration<'a> {
    pub api_version: &'a str,
    pub kind: &'static str,
    pub discovery: Discovery<'a>,
    pub node_registration: NodeRegistration<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_plane: Option<JoinControlPlane<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Discovery<'a> {
    pub bootstrap_token: DiscoveryToken<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DiscoveryToken<'a> {
    pub api_server_endpoint: String,
    pub token: &'a str,
    pub ca_cert_hashes: Vec<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JoinControlPlane<'a> {
    #[serde(rename = "localAPIEndpoint")]
    pub local_api_endpoint: ApiEndpoint<'a>,
    pub certificate_key: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ApiEndpoint<'a> {
    pub advertise_address: &'a str,
    pub bind_port: u16,
}

#[derive(Serialize)]
pub(crate) struct BootstrapToken<'a> {
    pub token: &'a str,
    pub ttl: String,
    pub groups: Vec<&'static str>,
    pub usages: Vec<&'static str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeRegistration<'a> {
    pub name: &'a str,
    pub cri_socket: &'static str,
    pub kubelet_extra_args: ExtraArgs<'a>,
    pub ignore_preflight_errors: Vec<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub taints: Vec<Taint>,
}

/// `kubeletExtraArgs`: a map up to v1beta3, a list of name/value from v1beta4.
#[derive(Serialize)]
#[serde(untagged)]
pub(crate) enum ExtraArgs<'a> {
    Map(BTreeMap<&'a str, &'a str>),
    List(Vec<NameValue<'a>>),
}

#[derive(Serialize)]
pub(crate) struct NameValue<'a> {
    pub name: &'a str,
    pub value: &'a str,
}

#[derive(Serialize)]
pub(crate) struct Taint {
    pub key: &'static str,
    pub effect: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KubeletConfiguration {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub cgroup_driver: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct KubeProxyConfiguration {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub conntrack: Conntrack,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Conntrack {
    /// A placeholder the host replaces (`kubeadm::CONNTRACK_PLACEHOLDER`).
    pub max_per_core: &'static str,
}

/// One YAML document of a multi-document file (joined with `---`).
pub(crate) fn yaml(doc: &impl Serialize) -> String {
    serde_yaml::to_string(doc).expect("plain data serialises")
}
