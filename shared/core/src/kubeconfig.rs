//! The kubeconfigs ksctl-rs hands out: one cluster, one bearer-token user, one context.

/// `ca_data` is the base64 of the CA's PEM, as kubeconfig's `certificate-authority-data` and
/// the cloud APIs (EKS' `certificateAuthority.data`) carry it.
pub fn with_token(context: &str, server: &str, ca_data: &str, token: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {context}\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca_data}\nusers:\n- name: {context}-admin\n  user:\n    token: {token}\ncontexts:\n- name: {context}\n  context:\n    cluster: {context}\n    user: {context}-admin\ncurrent-context: {context}\n"
    )
}

/// Base64 of a PEM, for [`with_token`].
pub fn ca_data(pem: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(pem)
}
