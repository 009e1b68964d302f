//! How every process (services, CLI, agent) authenticates to NATS: a credential (`.creds`: a
//! user JWT and its seed, see [`crate::auth`]) or user/password, and TLS with a CA to trust
//! (which then requires TLS) and optionally a client certificate (mutual TLS).
use crate::auth::{Creds, inbox_prefix};
use crate::error::BusError;
use async_nats::ConnectOptions;

#[derive(Debug, Clone, Default)]
pub struct NatsAuth {
    /// `.creds` text (JWT and seed); preferred over user/password.
    pub creds: Option<String>,
    /// A file holding `.creds` text.
    pub creds_file: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// PEM file of the CA that signed the server's certificate.
    pub ca_file: Option<String>,
    /// The same CA as PEM text (an agent gets it from its Secret, with no file to read).
    pub ca_pem: Option<String>,
    /// PEM certificate and key this client presents (servers with `verify: true`).
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

impl NatsAuth {
    /// The credential to present, from `creds` or `creds_file`.
    pub fn credential(&self) -> Result<Option<Creds>, BusError> {
        let text = match (&self.creds, &self.creds_file) {
            (Some(t), _) if !t.trim().is_empty() => t.clone(),
            (_, Some(f)) if !f.is_empty() => std::fs::read_to_string(f)
                .map_err(|e| BusError::Auth(format!("reading NATS credentials file {f}: {e}")))?,
            _ => return Ok(None),
        };
        Creds::parse(&text).map(Some).map_err(|e| BusError::Auth(e.to_string()))
    }

    pub fn options(&self) -> Result<ConnectOptions, BusError> {
        let mut opts = ConnectOptions::new();
        if let Some(creds) = self.credential()? {
            // Replies come to the credential's own inbox prefix: a CLI credential may read
            // nothing else, and no other user can read its replies.
            let prefix = inbox_prefix(&creds.public_key().map_err(|e| BusError::Auth(e.to_string()))?);
            opts = opts
                .credentials(&creds.file_text())
                .map_err(|e| BusError::Auth(format!("NATS credentials: {e}")))?
                .custom_inbox_prefix(prefix);
        } else if let (Some(u), Some(p)) = (&self.user, &self.password) {
            opts = opts.user_and_password(u.clone(), p.clone());
        }
        if self.ca_file.is_some() || self.cert_file.is_some() || self.ca_pem.is_some() {
            // Both rustls providers are in the build (kube wants aws-lc-rs): name one, once.
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        if let Some(ca) = &self.ca_file {
            opts = opts.add_root_certificates(ca.into()).require_tls(true);
        } else if let Some(pem) = self.ca_pem.as_deref().filter(|p| !p.trim().is_empty()) {
            opts = opts.tls_client_config(client_config(pem)?).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            opts = opts.add_client_certificate(cert.into(), key.into());
        }
        Ok(opts)
    }
}

/// TLS trusting only the CA certificates in `pem`.
fn client_config(pem: &str) -> Result<rustls::ClientConfig, BusError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| BusError::Auth(format!("the NATS CA is not PEM: {e}")))?;
        roots.add(cert).map_err(|e| BusError::Auth(format!("the NATS CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(BusError::Auth("the NATS CA holds no certificate".into()));
    }
    Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}
