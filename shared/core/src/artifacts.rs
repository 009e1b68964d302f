//! Where a cluster's software comes from: upstream by default, or the operator's own mirrors for
//! air-gapped installs. Two settings, read by the controllers that install software:
//! - a **file mirror** (`KSCTL_ARTIFACTS_URL`): k3s' installer and releases, and apt repositories
//!   with kubeadm, kubelet and kubectl, laid out like upstream;
//! - an **image registry** (`KSCTL_IMAGE_REGISTRY`): every container image a cluster pulls —
//!   kubeadm's control-plane and pause images, ksctl's agent, the CNI, the addons — comes from
//!   it, under the image's upstream path without the upstream registry's host.
//!
//! Both end up in scripts that run as root on hosts and in YAML documents, so they are parsed
//! here, once, into a small alphabet; nothing else of them reaches a host.

use std::net::IpAddr;

/// Upstream k3s installer.
pub const K3S_INSTALLER: &str = "https://get.k3s.io";
/// Upstream Kubernetes package repository (pkgs.k8s.io), per minor version.
pub const KUBERNETES_PACKAGES: &str = "https://pkgs.k8s.io/core:/stable:";
/// Where containerd looks for per-registry configuration (`<host>/hosts.toml`).
pub const CONTAINERD_CERTS_D: &str = "/etc/containerd/certs.d";

/// A container image registry that holds mirrors of the images clusters need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRegistry {
    /// `host[:port]`: an IP address or an RFC 1123 host name, and an optional port.
    pub host: String,
    /// A path prefix under the host (`/mirror/k8s`), or empty.
    pub path: String,
    pub tls: RegistryTls,
}

/// How the hosts' container runtime talks to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryTls {
    /// HTTPS with a certificate the hosts already trust.
    System,
    /// HTTPS with a certificate signed by this CA (PEM), installed on every host for containerd.
    Ca(String),
    /// Plain HTTP (a lab or a registry on a trusted network).
    PlainHttp,
}

fn valid_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !l.starts_with('-')
        && !l.ends_with('-')
}

/// An RFC 1123 host name or an IP address (IPv6 in brackets).
fn valid_host(h: &str) -> bool {
    if let Some(v6) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    h.parse::<IpAddr>().is_ok() || (h.len() <= 253 && h.split('.').all(valid_label))
}

/// A repository path component as the OCI distribution spec allows it (lowercase).
fn valid_path_component(c: &str) -> bool {
    !c.is_empty()
        && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && c.as_bytes()[0].is_ascii_alphanumeric()
}

impl ImageRegistry {
    /// Parses `host[:port][/path…]` (no scheme: the scheme follows from `tls`).
    pub fn parse(s: &str, tls: RegistryTls) -> Result<Self, String> {
        let s = s.trim().trim_end_matches('/');
        if s.contains("://") {
            return Err(format!("image registry {s:?}: give host[:port][/path] without a scheme"));
        }
        let (hostport, path) = match s.find('/') {
            Some(i) => (&s[..i], &s[i..]),
            None => (s, ""),
        };
        let (host, port) = if hostport.starts_with('[') {
            match hostport.split_once("]:") {
                Some((h, p)) => (&hostport[..h.len() + 1], Some(p)),
                None => (hostport, None),
            }
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if !valid_host(host) {
            return Err(format!("image registry {s:?}: {host:?} is not a host name or IP address"));
        }
        // What image references read as a registry host (Docker's rule, [`strip_registry`]): a
        // single-label name without a port would be a Docker Hub namespace.
        let all_digits = host.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()));
        if (all_digits && host.parse::<IpAddr>().is_err())
            || !(host.contains('.') || host.starts_with('[') || port.is_some() || host == "localhost")
        {
            return Err(format!(
                "image registry {s:?}: {host:?} would be read as a Docker Hub namespace; give a host with a dot, an IP address or a port"
            ));
        }
        if let Some(p) = port
            && p.parse::<u16>().map(|n| n == 0).unwrap_or(true)
        {
            return Err(format!("image registry {s:?}: {p:?} is not a port"));
        }
        if !path.is_empty() && !path[1..].split('/').all(valid_path_component) {
            return Err(format!("image registry {s:?}: {path:?} is not a repository path (lowercase, digits, . _ -)"));
        }
        Ok(Self { host: hostport.to_string(), path: path.to_string(), tls })
    }

    /// `host[:port][/path]`: what image names start with (kubeadm's `imageRepository`).
    pub fn prefix(&self) -> String {
        format!("{}{}", self.host, self.path)
    }

    /// The server URL containerd pulls from.
    pub fn url(&self) -> String {
        let scheme = if self.tls == RegistryTls::PlainHttp { "http" } else { "https" };
        format!("{scheme}://{}", self.host)
    }

    /// `image` as this registry holds it: the upstream path and tag under [`Self::prefix`]
    /// (`docker.io/flannel/flannel:v0.26.1` → `<prefix>/flannel/flannel:v0.26.1`,
    /// `ksctl-rs:latest` → `<prefix>/ksctl-rs:latest`). Images already in this registry stay.
    pub fn rewrite(&self, image: &str) -> String {
        if image.starts_with(&format!("{}/", self.prefix())) {
            return image.to_string();
        }
        format!("{}/{}", self.prefix(), strip_registry(image))
    }

    /// containerd's `hosts.toml` for this registry (file `<certs.d>/<host>/hosts.toml`).
    pub fn containerd_hosts_toml(&self) -> String {
        let url = self.url();
        let mut s = format!("server = \"{url}\"\n\n[host.\"{url}\"]\n  capabilities = [\"pull\", \"resolve\"]\n");
        if let RegistryTls::Ca(_) = self.tls {
            s.push_str(&format!("  ca = \"{}\"\n", self.containerd_ca_path()));
        }
        s
    }

    /// containerd's directory for this registry: the host as image names spell it.
    pub fn containerd_dir(&self) -> String {
        format!("{CONTAINERD_CERTS_D}/{}", self.host)
    }

    /// Where the registry's CA goes on hosts (when [`RegistryTls::Ca`]).
    pub fn containerd_ca_path(&self) -> String {
        format!("{}/ca.crt", self.containerd_dir())
    }
}

/// An image reference without its registry host: `registry.k8s.io/pause:3.2` → `pause:3.2`,
/// `flannel/flannel:v1` → `flannel/flannel:v1` (a first component is a host when it has a dot or
/// a port, or is `localhost`, as Docker decides).
pub fn strip_registry(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => rest,
        _ => image,
    }
}

/// Checks a file mirror's URL: `http(s)://host[:port][/path]` with nothing a shell or an apt
/// source line would read as syntax.
pub fn parse_mirror_url(url: &str) -> Result<String, String> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("artifact mirror {url:?}: expected an http:// or https:// URL"))?;
    let host = rest.split('/').next().unwrap_or_default();
    let bare = match host.rsplit_once(':') {
        Some((h, p)) if !h.starts_with('[') || h.ends_with(']') => {
            p.parse::<u16>().map_err(|_| format!("artifact mirror {url:?}: {p:?} is not a port"))?;
            h
        }
        _ => host,
    };
    if !valid_host(bare) {
        return Err(format!("artifact mirror {url:?}: {bare:?} is not a host name or IP address"));
    }
    if let Some(c) = rest.chars().find(|c| !(c.is_ascii_alphanumeric() || "-._~/:%+@[]".contains(*c))) {
        return Err(format!("artifact mirror {url:?}: {c:?} is not allowed in the URL"));
    }
    Ok(url.to_string())
}

/// The certificates of a PEM file, re-encoded: only `CERTIFICATE` blocks of valid base64, so a
/// CA file handed to every host carries nothing but certificates.
pub fn certificates_pem(text: &str) -> Result<String, String> {
    use base64::Engine;
    let mut out = String::new();
    let mut block: Option<String> = None;
    for line in text.lines().map(str::trim) {
        match (line, &mut block) {
            ("-----BEGIN CERTIFICATE-----", None) => block = Some(String::new()),
            ("-----END CERTIFICATE-----", Some(b64)) => {
                let der = base64::engine::general_purpose::STANDARD
                    .decode(b64.as_bytes())
                    .map_err(|e| format!("a certificate is not valid base64: {e}"))?;
                let body = base64::engine::general_purpose::STANDARD.encode(der);
                let lines: Vec<&str> =
                    body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64")).collect();
                out.push_str(&format!(
                    "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                    lines.join("\n")
                ));
                block = None;
            }
            ("", None) => {}
            (l, Some(b64)) if !l.starts_with("-----") => b64.push_str(l),
            (l, _) => return Err(format!("not a PEM certificate: unexpected line {l:?}")),
        }
    }
    if block.is_some() || out.is_empty() {
        return Err("no complete PEM certificate".into());
    }
    Ok(out)
}

/// The artifact source the controllers were configured with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Artifacts {
    /// A mirror laid out as `<url>/k3s/install.sh`, `<url>/k3s/releases/download/<version>/…`
    /// (what k3s' installer fetches with `GITHUB_URL`), `<url>/k3s/channels` and
    /// `<url>/kubernetes/<v1.xx>/deb/` (an apt repository like pkgs.k8s.io).
    pub mirror: Option<String>,
    /// Where every image comes from, if not from upstream registries.
    pub registry: Option<ImageRegistry>,
}

impl Artifacts {
    pub fn k3s_installer(&self) -> String {
        match &self.mirror {
            Some(m) => format!("{m}/k3s/install.sh"),
            None => K3S_INSTALLER.to_string(),
        }
    }

    /// Environment for k3s' installer: where it downloads from (with a mirror) and which release
    /// it installs: an exact version (`v1.31.2+k3s1`) or the newest of a minor line (`1.31` →
    /// channel `v1.31`).
    pub fn k3s_env(&self, version: &str) -> Vec<(String, String)> {
        let mut env = Vec::new();
        let v = format!("v{}", version.trim_start_matches('v'));
        if v.contains("+k3s") {
            env.push(("INSTALL_K3S_VERSION".into(), v));
        } else {
            env.push(("INSTALL_K3S_CHANNEL".into(), minor(&v)));
        }
        if let Some(m) = &self.mirror {
            env.push(("GITHUB_URL".into(), format!("{m}/k3s/releases")));
            env.push(("INSTALL_K3S_CHANNEL_URL".into(), format!("{m}/k3s/channels")));
        }
        env
    }

    /// The apt repository with kubeadm, kubelet and kubectl for `version`'s minor line.
    pub fn kubernetes_apt(&self, version: &str) -> String {
        let minor = minor(&format!("v{}", version.trim_start_matches('v')));
        match &self.mirror {
            Some(m) => format!("{m}/kubernetes/{minor}/deb/"),
            None => format!("{KUBERNETES_PACKAGES}/{minor}/deb/"),
        }
    }

    /// `image` as the cluster should pull it.
    pub fn image(&self, image: &str) -> String {
        match &self.registry {
            Some(r) => r.rewrite(image),
            None => image.to_string(),
        }
    }
}

/// `v1.31.2+k3s1` → `v1.31`.
pub fn minor(v: &str) -> String {
    v.split(['+', '-']).next().unwrap_or(v).split('.').take(2).collect::<Vec<_>>().join(".")
}

/// What a mirror must hold for a kubeadm cluster of one version: the packages of the apt
/// repository and the images kubeadm pulls (ksctl's own images are listed by their owners).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeadmArtifacts {
    pub apt_repository: String,
    pub packages: Vec<&'static str>,
    /// Upstream image references, in the order kubeadm lists them.
    pub images: Vec<String>,
}

/// The images kubeadm asks for, per minor line: (pause tag, CoreDNS image path and tag). Only
/// lines whose kubeadm was read here are listed; for the others ask kubeadm itself
/// (`kubeadm config images list --kubernetes-version …`).
const KUBEADM_IMAGES: &[(&str, &str, &str, &str)] =
    // (minor, default repository, pause, coredns)
    &[("v1.20", "k8s.gcr.io", "3.2", "coredns:1.7.0")];

/// `None` when ksctl does not know that version's images (see [`KUBEADM_IMAGES`]). `version`
/// must name a patch release (`1.20.2`): kubeadm asks for images of exactly its own version.
pub fn kubeadm_artifacts(artifacts: &Artifacts, version: &str) -> Result<KubeadmArtifacts, String> {
    let v = format!("v{}", version.trim_start_matches('v'));
    let parts: Vec<&str> = v[1..].split('.').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.parse::<u32>().is_err()) {
        return Err(format!(
            "{version:?}: give the exact version the mirror's kubeadm package has (like 1.20.2): kubeadm pulls images of its own version"
        ));
    }
    let m = minor(&v);
    let (_, repo, pause, coredns) = KUBEADM_IMAGES.iter().find(|(k, ..)| *k == m).ok_or_else(|| {
        format!(
            "ksctl does not list the images of Kubernetes {m}; ask kubeadm: kubeadm config images list --kubernetes-version {v} (known: {})",
            KUBEADM_IMAGES.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
        )
    })?;
    let mut images: Vec<String> = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy"]
        .iter()
        .map(|c| format!("{repo}/{c}:{v}"))
        .collect();
    images.push(format!("{repo}/pause:{pause}"));
    images.push(format!("{repo}/{coredns}"));
    Ok(KubeadmArtifacts {
        apt_repository: artifacts.kubernetes_apt(&v),
        // kubeadm and kubelet depend on the last two in upstream's repository.
        packages: vec!["kubelet", "kubeadm", "kubectl", "kubernetes-cni", "cri-tools"],
        images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_by_default_and_channels_for_minor_versions() {
        let a = Artifacts::default();
        assert_eq!(a.k3s_installer(), "https://get.k3s.io");
        assert_eq!(a.k3s_env("1.31"), [("INSTALL_K3S_CHANNEL".to_string(), "v1.31".to_string())]);
        assert_eq!(a.k3s_env("v1.30.4+k3s1"), [("INSTALL_K3S_VERSION".to_string(), "v1.30.4+k3s1".to_string())]);
        assert_eq!(a.kubernetes_apt("1.31.2"), "https://pkgs.k8s.io/core:/stable:/v1.31/deb/");
        assert_eq!(a.image("flannel/flannel:v0.26.1"), "flannel/flannel:v0.26.1");
    }

    #[test]
    fn a_mirror_serves_everything() {
        let a = Artifacts { mirror: Some("http://10.0.0.1:8080/ksctl".into()), registry: None };
        assert_eq!(a.k3s_installer(), "http://10.0.0.1:8080/ksctl/k3s/install.sh");
        let env = a.k3s_env("1.31");
        assert!(env.contains(&("GITHUB_URL".into(), "http://10.0.0.1:8080/ksctl/k3s/releases".into())));
        assert_eq!(a.kubernetes_apt("1.31"), "http://10.0.0.1:8080/ksctl/kubernetes/v1.31/deb/");
    }

    #[test]
    fn ca_files_carry_certificates_only() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAEC\nAw==\n-----END CERTIFICATE-----\n";
        assert_eq!(
            certificates_pem(pem).unwrap(),
            "-----BEGIN CERTIFICATE-----\nAAECAw==\n-----END CERTIFICATE-----\n"
        );
        for bad in [
            "",
            "-----BEGIN CERTIFICATE-----\nAAEC\n",
            "-----BEGIN CERTIFICATE-----\n$(reboot)\n-----END CERTIFICATE-----\n",
            "-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----\n",
            "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\nKSCTL_EOF_7f3a\nreboot\n",
        ] {
            assert!(certificates_pem(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mirror_urls_are_parsed_strictly() {
        assert_eq!(parse_mirror_url("http://10.0.0.1:8080/ksctl/").unwrap(), "http://10.0.0.1:8080/ksctl");
        assert!(parse_mirror_url("https://mirror.example.com/a_b/c-d").is_ok());
        for bad in [
            "ftp://x",
            "mirror.example.com",
            "http://x/$(reboot)",
            "http://x/a b",
            "http://x/'",
            "http://x:99999/",
            "http://bad_host/",
        ] {
            assert!(parse_mirror_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn registries_are_parsed_strictly() {
        let r = ImageRegistry::parse("10.0.0.1:5000/mirror/k8s/", RegistryTls::PlainHttp).unwrap();
        assert_eq!((r.host.as_str(), r.path.as_str()), ("10.0.0.1:5000", "/mirror/k8s"));
        assert_eq!(r.prefix(), "10.0.0.1:5000/mirror/k8s");
        assert_eq!(r.url(), "http://10.0.0.1:5000");
        let r = ImageRegistry::parse("registry.example.com", RegistryTls::System).unwrap();
        assert_eq!(r.url(), "https://registry.example.com");
        assert_eq!(ImageRegistry::parse("[fd00::1]:5000", RegistryTls::System).unwrap().host, "[fd00::1]:5000");
        assert!(ImageRegistry::parse("[fd00::1]", RegistryTls::System).is_ok());
        assert!(ImageRegistry::parse("[fd00::1", RegistryTls::System).is_err());
        for bad in [
            "https://r.example.com",
            "r.example.com:0",
            "r.example.com:http",
            "1.2.3.4;touch /tmp/pwned",
            "r.example.com/UPPER",
            "r.example.com/a b",
            "-r.example.com",
            "r.example.com/\"x",
            "registry",
            "registry/k8s",
            "999.1.1.1",
            "",
        ] {
            assert!(ImageRegistry::parse(bad, RegistryTls::System).is_err(), "{bad}");
        }
    }

    #[test]
    fn images_keep_their_path_under_the_registry() {
        let r = ImageRegistry::parse("10.0.0.1:5000", RegistryTls::PlainHttp).unwrap();
        for (from, to) in [
            ("docker.io/flannel/flannel:v0.26.1", "10.0.0.1:5000/flannel/flannel:v0.26.1"),
            (
                "registry.k8s.io/metrics-server/metrics-server:v0.7.2",
                "10.0.0.1:5000/metrics-server/metrics-server:v0.7.2",
            ),
            ("k8s.gcr.io/pause:3.2", "10.0.0.1:5000/pause:3.2"),
            ("localhost:5000/x:1", "10.0.0.1:5000/x:1"),
            ("ksctl-rs:latest", "10.0.0.1:5000/ksctl-rs:latest"),
            ("flannel/flannel@sha256:00", "10.0.0.1:5000/flannel/flannel@sha256:00"),
            ("10.0.0.1:5000/already:1", "10.0.0.1:5000/already:1"),
        ] {
            assert_eq!(r.rewrite(from), to);
        }
    }

    #[test]
    fn containerd_is_told_how_to_reach_the_registry() {
        let plain = ImageRegistry::parse("10.0.0.1:5000", RegistryTls::PlainHttp).unwrap();
        assert_eq!(
            plain.containerd_hosts_toml(),
            "server = \"http://10.0.0.1:5000\"\n\n[host.\"http://10.0.0.1:5000\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
        );
        let ca = ImageRegistry::parse("r.example.com", RegistryTls::Ca("PEM".into())).unwrap();
        assert!(ca.containerd_hosts_toml().contains("ca = \"/etc/containerd/certs.d/r.example.com/ca.crt\""));
    }

    #[test]
    fn kubeadm_120_needs_these() {
        let a = Artifacts {
            mirror: Some("http://m".into()),
            registry: Some(ImageRegistry::parse("10.0.0.1:5000", RegistryTls::PlainHttp).unwrap()),
        };
        let k = kubeadm_artifacts(&a, "1.20.2").unwrap();
        assert_eq!(k.apt_repository, "http://m/kubernetes/v1.20/deb/");
        assert_eq!(
            k.images,
            [
                "k8s.gcr.io/kube-apiserver:v1.20.2",
                "k8s.gcr.io/kube-controller-manager:v1.20.2",
                "k8s.gcr.io/kube-scheduler:v1.20.2",
                "k8s.gcr.io/kube-proxy:v1.20.2",
                "k8s.gcr.io/pause:3.2",
                "k8s.gcr.io/coredns:1.7.0",
            ]
        );
        assert_eq!(a.image(&k.images[4]), "10.0.0.1:5000/pause:3.2");
        assert!(kubeadm_artifacts(&a, "1.20").unwrap_err().contains("exact version"));
        assert!(kubeadm_artifacts(&a, "1.31.0").unwrap_err().contains("kubeadm config images list"));
    }
}
