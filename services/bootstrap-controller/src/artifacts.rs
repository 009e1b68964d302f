//! Where install scripts and binaries come from: upstream by default, or one mirror for
//! air-gapped installs (`KSCTL_ARTIFACTS_URL`). The hosts download, so the URL must be one
//! they can reach.

/// Upstream k3s installer.
pub const K3S_INSTALLER: &str = "https://get.k3s.io";
/// Upstream Kubernetes package repository (pkgs.k8s.io), per minor version.
pub const KUBERNETES_PACKAGES: &str = "https://pkgs.k8s.io/core:/stable:";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Artifacts {
    /// A mirror laid out as `<url>/k3s/install.sh`, `<url>/k3s/releases/download/<version>/…`
    /// (what k3s' installer fetches with `GITHUB_URL`), `<url>/k3s/channels` and
    /// `<url>/kubernetes/<v1.xx>/deb/` (an apt repository like pkgs.k8s.io).
    pub mirror: Option<String>,
}

impl Artifacts {
    pub fn from_env() -> Self {
        let mirror = std::env::var("KSCTL_ARTIFACTS_URL").ok().map(|s| s.trim_end_matches('/').to_string());
        Self { mirror: mirror.filter(|s| !s.is_empty()) }
    }

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
}

/// `v1.31.2+k3s1` → `v1.31`.
fn minor(v: &str) -> String {
    v.split(['+', '-']).next().unwrap_or(v).split('.').take(2).collect::<Vec<_>>().join(".")
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
    }

    #[test]
    fn a_mirror_serves_everything() {
        let a = Artifacts { mirror: Some("http://10.0.0.1:8080/ksctl".into()) };
        assert_eq!(a.k3s_installer(), "http://10.0.0.1:8080/ksctl/k3s/install.sh");
        let env = a.k3s_env("1.31");
        assert!(env.contains(&("GITHUB_URL".into(), "http://10.0.0.1:8080/ksctl/k3s/releases".into())));
        assert_eq!(a.kubernetes_apt("1.31"), "http://10.0.0.1:8080/ksctl/kubernetes/v1.31/deb/");
    }
}
