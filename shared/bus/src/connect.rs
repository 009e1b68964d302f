//! How every process (services, CLI, agent) authenticates to NATS: user/password, and TLS with
//! a CA to trust (which then requires TLS) and optionally a client certificate (mutual TLS).
use async_nats::ConnectOptions;

#[derive(Debug, Clone, Default)]
pub struct NatsAuth {
    pub user: Option<String>,
    pub password: Option<String>,
    /// PEM file of the CA that signed the server's certificate.
    pub ca_file: Option<String>,
    /// PEM certificate and key this client presents (servers with `verify: true`).
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

impl NatsAuth {
    pub fn options(&self) -> ConnectOptions {
        let mut opts = ConnectOptions::new();
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            opts = opts.user_and_password(u.clone(), p.clone());
        }
        if self.ca_file.is_some() || self.cert_file.is_some() {
            // Both rustls providers are in the build (kube wants aws-lc-rs): name one, once.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        if let Some(ca) = &self.ca_file {
            opts = opts.add_root_certificates(ca.into()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            opts = opts.add_client_certificate(cert.into(), key.into());
        }
        opts
    }
}
