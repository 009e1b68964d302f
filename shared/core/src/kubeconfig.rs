//! The kubeconfigs ksctl-rs hands out, and the ones it takes from hosts and clouds.
//!
//! A kubeconfig ksctl did not write (a control plane's admin.conf, kind's, AKS') can make
//! whoever uses it run commands (`exec`, `auth-provider`), send local files (`tokenFile`,
//! `client-key` paths) or skip TLS. [`Access::parse_foreign`] keeps only what ksctl needs — the
//! server, the CA, and a token or client certificate, all as data — and refuses anything else;
//! [`Access::kubeconfig`] writes ksctl's own from serde types: one cluster, one user, one context.
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

/// How to reach one cluster's API as its administrator.
#[derive(Clone, PartialEq, Eq)]
pub struct Access {
    pub server: String,
    /// Base64 of the CA's PEM (`certificate-authority-data`).
    pub ca_data: String,
    pub auth: Auth,
}

#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    Token(String),
    /// Base64 of the certificate's and the key's PEM.
    ClientCertificate {
        cert_data: String,
        key_data: String,
    },
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access").field("server", &self.server).finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    api_version: String,
    kind: String,
    clusters: Vec<Named<Cluster>>,
    users: Vec<NamedUser>,
    contexts: Vec<NamedContext>,
    current_context: String,
}

#[derive(Serialize, Deserialize)]
struct Named<T> {
    name: String,
    cluster: T,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority_data: String,
}

#[derive(Serialize, Deserialize)]
struct NamedUser {
    name: String,
    user: User,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_certificate_data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_key_data: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct NamedContext {
    name: String,
    context: Context,
}

#[derive(Serialize, Deserialize)]
struct Context {
    cluster: String,
    user: String,
}

/// The largest kubeconfig read from outside (real ones are a few KiB).
const MAX_FOREIGN: usize = 256 << 10;
const CLUSTER_KEYS: [&str; 3] = ["server", "certificate-authority-data", "insecure-skip-tls-verify"];
const USER_KEYS: [&str; 3] = ["token", "client-certificate-data", "client-key-data"];

impl Access {
    /// ksctl's kubeconfig: cluster `context`, user `<context>-admin`, context `context`.
    pub fn kubeconfig(&self, context: &str) -> String {
        let user = format!("{context}-admin");
        let (token, cert, key) = match &self.auth {
            Auth::Token(t) => (Some(t.clone()), None, None),
            Auth::ClientCertificate { cert_data, key_data } => (None, Some(cert_data.clone()), Some(key_data.clone())),
        };
        let kc = Kubeconfig {
            api_version: "v1".into(),
            kind: "Config".into(),
            clusters: vec![Named {
                name: context.into(),
                cluster: Cluster { server: self.server.clone(), certificate_authority_data: self.ca_data.clone() },
            }],
            users: vec![NamedUser {
                name: user.clone(),
                user: User { token, client_certificate_data: cert, client_key_data: key },
            }],
            contexts: vec![NamedContext { name: context.into(), context: Context { cluster: context.into(), user } }],
            current_context: context.into(),
        };
        serde_yaml::to_string(&kc).expect("kubeconfigs serialise")
    }

    /// What ksctl keeps of a kubeconfig from a host or a cloud: its current context's (or its
    /// only context's) server, CA and credentials, all as data. Anything else in that cluster or
    /// user entry — `exec`, `auth-provider`, `tokenFile`, file paths, impersonation, a proxy,
    /// `insecure-skip-tls-verify: true` — is refused with the key named.
    pub fn parse_foreign(raw: &str) -> Result<Self, String> {
        if raw.len() > MAX_FOREIGN {
            return Err(format!("a kubeconfig of {} bytes (at most {MAX_FOREIGN})", raw.len()));
        }
        let v: Value = serde_yaml::from_str(raw).map_err(|e| format!("not a kubeconfig: {e}"))?;
        let list = |key: &str| v.get(key).and_then(Value::as_sequence).cloned().unwrap_or_default();
        let (contexts, clusters, users) = (list("contexts"), list("clusters"), list("users"));
        let name_of = |e: &Value| e.get("name").and_then(Value::as_str).map(str::to_string);
        let context = match v.get("current-context").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            Some(cur) => contexts.iter().find(|c| name_of(c).as_deref() == Some(cur)),
            None if contexts.len() == 1 => contexts.first(),
            None => None,
        }
        .ok_or("no current context (and not exactly one context)")?;
        let field = |c: &Value, key: &str| {
            c.get("context").and_then(|x| x.get(key)).and_then(Value::as_str).map(str::to_string)
        };
        let (cname, uname) = (field(context, "cluster"), field(context, "user"));
        let find = |items: &[Value], name: &Option<String>, what: &str| -> Result<Mapping, String> {
            items
                .iter()
                .find(|e| name_of(e) == *name && name.is_some())
                .and_then(|e| e.get(what))
                .and_then(Value::as_mapping)
                .cloned()
                .ok_or(format!("the current context's {what} is missing"))
        };
        let cluster = find(&clusters, &cname, "cluster")?;
        let user = find(&users, &uname, "user")?;
        only(&cluster, &CLUSTER_KEYS, "cluster")?;
        only(&user, &USER_KEYS, "user")?;
        if cluster.get("insecure-skip-tls-verify").and_then(Value::as_bool).unwrap_or(false) {
            return Err("the cluster entry sets insecure-skip-tls-verify".into());
        }
        let text = |m: &Mapping, key: &str| m.get(key).and_then(Value::as_str).map(str::to_string);
        let server = text(&cluster, "server").ok_or("the cluster entry has no server")?;
        if !server.starts_with("https://") || server.contains(char::is_whitespace) || server.len() > 512 {
            return Err(format!("the server {} is not an https URL", crate::net::shown(&server)));
        }
        let ca_data = text(&cluster, "certificate-authority-data")
            .ok_or("the cluster entry has no certificate-authority-data")?;
        pem_data(&ca_data, "certificate-authority-data", "CERTIFICATE")?;
        let auth = match (text(&user, "token"), text(&user, "client-certificate-data"), text(&user, "client-key-data"))
        {
            (Some(t), None, None) => {
                if t.is_empty() || !t.bytes().all(|c| c.is_ascii_graphic()) {
                    return Err("the user's token is not a bearer token".into());
                }
                Auth::Token(t)
            }
            (None, Some(cert_data), Some(key_data)) => {
                pem_data(&cert_data, "client-certificate-data", "CERTIFICATE")?;
                pem_data(&key_data, "client-key-data", "PRIVATE KEY")?;
                Auth::ClientCertificate { cert_data, key_data }
            }
            _ => return Err("the user entry needs a token, or client-certificate-data with client-key-data".into()),
        };
        Ok(Self { server, ca_data, auth })
    }
}

/// A kubeconfig from a host or a cloud made ksctl's: [`Access::parse_foreign`], the server
/// replaced by `server` if given (a control plane's admin.conf names itself, not the load
/// balancer), written under `context`.
pub fn adopt(raw: &str, context: &str, server: Option<&str>) -> Result<String, String> {
    let mut access = Access::parse_foreign(raw)?;
    if let Some(s) = server {
        access.server = s.to_string();
    }
    Ok(access.kubeconfig(context))
}

/// Refuses any key of `m` outside `allowed`, naming it.
fn only(m: &Mapping, allowed: &[&str], entry: &str) -> Result<(), String> {
    for k in m.keys() {
        let k = k.as_str().unwrap_or("<not a string>");
        if !allowed.contains(&k) {
            let plain = k.len() <= 64 && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
            let k = if plain { k.to_string() } else { crate::net::shown(k) };
            return Err(format!("the {entry} entry has `{k}`, which ksctl does not accept from a host"));
        }
    }
    Ok(())
}

/// `data` is base64 of a PEM block whose type ends with `kind`.
fn pem_data(data: &str, key: &str, kind: &str) -> Result<(), String> {
    let pem = STANDARD.decode(data.trim()).map_err(|_| format!("{key} is not base64"))?;
    let pem = String::from_utf8(pem).map_err(|_| format!("{key} is not PEM"))?;
    let ok = pem.lines().any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{kind}-----")));
    if ok { Ok(()) } else { Err(format!("{key} holds no {kind} PEM block")) }
}

/// ksctl's kubeconfig with a bearer token. `ca_data` is the base64 of the CA's PEM, as
/// kubeconfig's `certificate-authority-data` and the cloud APIs (EKS' `certificateAuthority.data`)
/// carry it.
pub fn with_token(context: &str, server: &str, ca_data: &str, token: &str) -> String {
    Access { server: server.into(), ca_data: ca_data.into(), auth: Auth::Token(token.into()) }.kubeconfig(context)
}

/// Base64 of a PEM, for [`with_token`].
pub fn ca_data(pem: &str) -> String {
    STANDARD.encode(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        STANDARD.encode(s)
    }

    fn admin_conf(user_extra: &str, cluster_extra: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    server: https://10.0.0.5:6443\n    certificate-authority-data: {ca}\n{cluster_extra}users:\n- name: admin\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\n{user_extra}contexts:\n- name: k\n  context: {{cluster: k, user: admin}}\ncurrent-context: k\n",
            ca = b64("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"),
            cert = b64("-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n"),
            key = b64("-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n"),
        )
    }

    #[test]
    fn a_plain_admin_kubeconfig_is_kept_as_data_under_ksctls_names() {
        let mut a = Access::parse_foreign(&admin_conf("", "")).unwrap();
        assert!(matches!(a.auth, Auth::ClientCertificate { .. }));
        a.server = "https://203.0.113.7:6443".into();
        let out = a.kubeconfig("demo");
        let back = Access::parse_foreign(&out).unwrap();
        assert_eq!(back, a);
        assert!(out.contains("current-context: demo") && out.contains("name: demo-admin"));
        let t = with_token(
            "eks",
            "https://x.example",
            &ca_data("-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----"),
            "k8s-aws-v1.abc",
        );
        assert!(matches!(Access::parse_foreign(&t).unwrap().auth, Auth::Token(ref s) if s == "k8s-aws-v1.abc"));
    }

    #[test]
    fn anything_that_runs_reads_or_skips_tls_is_refused() {
        let cases = [
            (
                admin_conf(
                    "    exec: {command: /bin/sh, args: [-c, 'touch /tmp/pwned'], apiVersion: client.authentication.k8s.io/v1}\n",
                    "",
                ),
                "exec",
            ),
            (admin_conf("    auth-provider: {name: gcp}\n", ""), "auth-provider"),
            (admin_conf("    tokenFile: /etc/ksctl/seal.key\n", ""), "tokenFile"),
            (admin_conf("    client-key: /etc/shadow\n", ""), "client-key"),
            (admin_conf("    as: system:admin\n", ""), "as"),
            (admin_conf("", "    certificate-authority: /etc/ssl/private/key.pem\n"), "certificate-authority"),
            (admin_conf("", "    proxy-url: http://evil.example\n"), "proxy-url"),
            (admin_conf("", "    insecure-skip-tls-verify: true\n"), "insecure-skip-tls-verify"),
        ];
        for (kc, what) in cases {
            let err = Access::parse_foreign(&kc).unwrap_err();
            assert!(err.contains(what), "{what}: {err}");
        }
        assert!(Access::parse_foreign(&admin_conf("", "").replace("https://10.0.0.5", "http://10.0.0.5")).is_err());
        assert!(Access::parse_foreign("not: [yaml").is_err());
        assert!(Access::parse_foreign(&"#".repeat(MAX_FOREIGN + 1)).is_err());
        let no_ca = admin_conf("", "").replace("certificate-authority-data: ", "x-ca: ");
        assert!(Access::parse_foreign(&no_ca).is_err());
    }
}
