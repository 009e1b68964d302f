//! The addons `ksctl cluster addons enable|disable` knows. The manager validates names against
//! this catalog; the k8s-controller embeds each addon's manifests, pinned to the version here.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addon {
    pub name: &'static str,
    /// The upstream release whose manifests are embedded.
    pub version: &'static str,
    pub description: &'static str,
    /// The images its manifests run (a mirror must hold them; the k8s-controller's tests check
    /// this list against the embedded manifests).
    pub images: &'static [&'static str],
}

pub const CATALOG: &[Addon] = &[Addon {
    name: "metrics-server",
    version: "v0.7.2",
    description: "resource metrics (kubectl top, HorizontalPodAutoscaler) through the aggregated metrics.k8s.io API",
    images: &["registry.k8s.io/metrics-server/metrics-server:v0.7.2"],
}];

/// The images of the flannel manifests ksctl embeds for kubeadm clusters (checked against them
/// by the k8s-controller's tests).
pub const FLANNEL_IMAGES: &[&str] =
    &["docker.io/flannel/flannel:v0.26.1", "docker.io/flannel/flannel-cni-plugin:v1.5.1-flannel2"];

pub fn find(name: &str) -> Option<&'static Addon> {
    CATALOG.iter().find(|a| a.name == name)
}

/// "metrics-server" — the names, for error messages.
pub fn names() -> String {
    CATALOG.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_unique_dns_labels() {
        let mut seen = std::collections::BTreeSet::new();
        for a in super::CATALOG {
            assert!(seen.insert(a.name));
            assert!(crate::ids::validate_name(a.name).is_ok(), "{}", a.name);
            assert!(a.version.starts_with('v'));
        }
        assert_eq!(super::find("metrics-server").unwrap().version, "v0.7.2");
        assert!(super::find("nope").is_none());
    }
}
