//! The addons `ksctl cluster addons enable|disable` knows. The manager validates names against
//! this catalog; the k8s-controller embeds each addon's manifests, pinned to the version here.
use serde::{Deserialize, Serialize};

/// Where ksctl keeps its objects in a cluster.
pub const KSCTL_NAMESPACE: &str = "ksctl-system";
/// The one `ClusterAddon` object (in [`KSCTL_NAMESPACE`]): the addons the cluster should run.
pub const CLUSTER_ADDON_OBJECT: &str = "addons";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addon {
    pub name: &'static str,
    /// The upstream release whose manifests are embedded.
    pub version: &'static str,
    pub description: &'static str,
    /// The images its manifests run (a mirror must hold them; the k8s-controller's tests check
    /// this list against the embedded manifests).
    pub images: &'static [&'static str],
    /// Where it lives: the namespace its manifests name, or the one ksctl puts them in.
    pub namespace: &'static str,
    /// The Deployments, DaemonSets and StatefulSets an enable waits for (checked against the
    /// manifests).
    pub ready: &'static [&'static str],
    /// The Kubernetes versions its upstream supports for this release.
    pub kubernetes: &'static str,
}

pub const CATALOG: &[Addon] = &[
    Addon {
        name: "metrics-server",
        version: "v0.7.2",
        description: "resource metrics (kubectl top, HorizontalPodAutoscaler) through the aggregated metrics.k8s.io API",
        images: &["registry.k8s.io/metrics-server/metrics-server:v0.7.2"],
        namespace: "kube-system",
        ready: &["Deployment kube-system/metrics-server"],
        kubernetes: "1.19+",
    },
    Addon {
        name: "cert-manager",
        version: "v1.19.4",
        description: "X.509 certificates from Issuers (ACME/Let's Encrypt, CA, Vault) as Secrets, renewed before they expire",
        images: &[
            "quay.io/jetstack/cert-manager-cainjector:v1.19.4",
            "quay.io/jetstack/cert-manager-controller:v1.19.4",
            "quay.io/jetstack/cert-manager-webhook:v1.19.4",
        ],
        namespace: "cert-manager",
        ready: &[
            "Deployment cert-manager/cert-manager-cainjector",
            "Deployment cert-manager/cert-manager",
            "Deployment cert-manager/cert-manager-webhook",
        ],
        kubernetes: "1.31–1.35",
    },
    Addon {
        name: "ingress-nginx",
        version: "v1.15.1",
        description: "an Ingress controller (NGINX) behind a LoadBalancer Service, with its admission webhook",
        images: &[
            "registry.k8s.io/ingress-nginx/controller:v1.15.1@sha256:594ceea76b01c592858f803f9ff4d2cb40542cae2060410b2c95f75907d659e1",
            "registry.k8s.io/ingress-nginx/kube-webhook-certgen:v1.6.9@sha256:01038e7de14b78d702d2849c3aad72fd25903c4765af63cf16aa3398f5d5f2dd",
        ],
        namespace: "ingress-nginx",
        ready: &["Deployment ingress-nginx/ingress-nginx-controller"],
        kubernetes: "1.31–1.35",
    },
    Addon {
        name: "argo-cd",
        version: "v3.5.1",
        description: "GitOps continuous delivery: Applications synced from Git repositories",
        images: &[
            "ghcr.io/dexidp/dex:v2.45.0",
            "public.ecr.aws/docker/library/redis:8.2.3-alpine",
            "quay.io/argoproj/argocd:v3.5.1",
        ],
        namespace: "argocd",
        ready: &[
            "Deployment argocd/argocd-applicationset-controller",
            "Deployment argocd/argocd-dex-server",
            "Deployment argocd/argocd-notifications-controller",
            "Deployment argocd/argocd-redis",
            "Deployment argocd/argocd-repo-server",
            "Deployment argocd/argocd-server",
            "StatefulSet argocd/argocd-application-controller",
        ],
        kubernetes: "1.31–1.34",
    },
    Addon {
        name: "prometheus-operator",
        version: "v0.83.0",
        description: "kube-prometheus-stack's operator: Prometheus, Alertmanager, ServiceMonitor and the other monitoring.coreos.com CRDs",
        // Its config reloader (prometheus-config-reloader:v0.83.0) is named in an argument, not
        // an image field: a mirror needs it too, and the registry setting does not rewrite it.
        images: &["quay.io/prometheus-operator/prometheus-operator:v0.83.0"],
        namespace: "default",
        ready: &["Deployment default/prometheus-operator"],
        kubernetes: "1.25+",
    },
];

/// The images of the flannel manifests ksctl embeds for kubeadm clusters (checked against them
/// by the k8s-controller's tests).
pub const FLANNEL_IMAGES: &[&str] =
    &["docker.io/flannel/flannel:v0.26.1", "docker.io/flannel/flannel-cni-plugin:v1.5.1-flannel2"];

/// The images of the Calico manifests ksctl embeds for self-managed clusters (`cni: calico`).
pub const CALICO_IMAGES: &[&str] =
    &["quay.io/calico/cni:v3.32.1", "quay.io/calico/kube-controllers:v3.32.1", "quay.io/calico/node:v3.32.1"];

/// The images of the Cilium manifests ksctl embeds for self-managed clusters (`cni: cilium`).
pub const CILIUM_IMAGES: &[&str] = &[
    "quay.io/cilium/certgen:v0.4.8@sha256:e65f1d15a0ffaf2df32797c8ad1c797fc64dad11c274cd96a2eafa89d712cdc3",
    "quay.io/cilium/cilium-envoy:v1.37.5-1782911245-7cffc778c923f68a77954a53b1a98d6b5353f004@sha256:583057dd4f7d54cd41efff3c413aa0b148ac201f522e2c3336851fa89c78b039",
    "quay.io/cilium/cilium:v1.20.0@sha256:383968cd5e8873f7976fa76aa6196045643558f4cc9518a207b9335cb24a0e93",
    "quay.io/cilium/operator-generic:v1.20.0@sha256:80744a8cc7c91c2f9e6347629406844eb35d79b30a732c6d41c15b17232a74f3",
];

/// The images of the CNI ksctl installs for `cni` (none for `none`).
pub fn cni_images(cni: crate::spec::Cni) -> &'static [&'static str] {
    use crate::spec::Cni;
    match cni {
        Cni::Flannel => FLANNEL_IMAGES,
        Cni::Calico => CALICO_IMAGES,
        Cni::Cilium => CILIUM_IMAGES,
        Cni::None => &[],
    }
}

pub fn find(name: &str) -> Option<&'static Addon> {
    CATALOG.iter().find(|a| a.name == name)
}

/// "metrics-server, cert-manager, …" — the names, for error messages.
pub fn names() -> String {
    CATALOG.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
}

/// The addons a cluster's `ClusterAddon` object asks for, as its agent read them: the object's
/// uid and `metadata.generation`, and its `spec.addons` in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredAddons {
    /// The object's uid: a deleted and re-made object starts its generations again.
    #[serde(default)]
    pub uid: String,
    pub generation: i64,
    pub addons: Vec<DesiredAddon>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredAddon {
    pub name: String,
    /// A pinned version the object names; absent means the catalog's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// A generation of one `ClusterAddon` object (its uid and `metadata.generation`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectGeneration {
    pub uid: String,
    pub generation: i64,
}

/// What the manager last did about a cluster's `ClusterAddon` object (in its cluster record):
/// the generation whose change it started, and whether that change failed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Followed {
    pub object: ObjectGeneration,
    #[serde(default)]
    pub failed: bool,
}

/// One addon operation that brings a cluster closer to what its `ClusterAddon` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub addon: String,
    pub enable: bool,
    /// The version the object names, if any (the k8s-controller refuses one it does not ship).
    pub version: Option<String>,
    /// The request id the manager starts it under: the same for every heartbeat that reads the
    /// same object generation, so two manager replicas start it once.
    pub request_id: String,
}

/// 64-bit FNV-1a (stable across builds and machines, unlike std's hasher).
fn fnv(parts: &[&str]) -> u64 {
    parts
        .iter()
        .flat_map(|p| p.bytes().chain([0]))
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// `clusteraddon-<generation>-enable|disable-<addon>-<object>`, within a request id's 64
/// characters (`<object>`: 8 hex digits of the object's uid, so that a re-made object's
/// generations do not repeat an earlier operation's id; a long name is hashed with it).
fn step_request_id(object: &ObjectGeneration, enable: bool, addon: &str) -> String {
    let verb = if enable { "enable" } else { "disable" };
    let g = object.generation;
    let id = format!("clusteraddon-{g}-{verb}-{addon}-{:08x}", fnv(&[&object.uid]) as u32);
    if id.len() <= 64 {
        return id;
    }
    format!("clusteraddon-{g}-{verb}-{:016x}", fnv(&[addon, &object.uid]))
}

/// Whether a heartbeat's reading of the object is news: not older than what ksctl itself last
/// wrote into it (`written`: at install, or when an addon operation a request asked for ended —
/// so the later write of the object wins), not older than the generation the manager already
/// acted on, and not the generation whose change failed (the next edit is tried; that one is
/// not, again and again). Another uid is another object: its generations are all news.
pub fn is_news(desired: &DesiredAddons, written: &ObjectGeneration, followed: Option<&Followed>) -> bool {
    let same = |o: &ObjectGeneration| o.uid == desired.uid;
    if same(written) && desired.generation < written.generation {
        return false;
    }
    match followed {
        Some(f) if same(&f.object) => {
            desired.generation > f.object.generation || (desired.generation == f.object.generation && !f.failed)
        }
        _ => true,
    }
}

/// A version as a release names it (`v1.15.1`, `1.2.3+k3s1`): it reaches errors and statuses.
fn valid_version(v: &str) -> bool {
    (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
}

/// What to do about a `ClusterAddon` object a heartbeat carries (once [`is_news`]), in order,
/// one addon operation each: enable what it lists and is not enabled (or is pinned to another
/// version than the catalog's), then disable what is enabled and it no longer lists. Entries
/// whose name cannot be an addon's, or whose version cannot be a release's, are skipped.
pub fn steps_towards(enabled: &[String], desired: &DesiredAddons) -> Vec<Step> {
    let object = ObjectGeneration { uid: desired.uid.clone(), generation: desired.generation };
    let step = |addon: &str, enable: bool, version: Option<String>| Step {
        addon: addon.to_string(),
        enable,
        request_id: step_request_id(&object, enable, addon),
        version,
    };
    let sane = |d: &&DesiredAddon| {
        crate::ids::validate_name(&d.name).is_ok() && d.version.as_deref().is_none_or(valid_version)
    };
    let catalog_version = |name: &str| find(name).map(|a| a.version);
    let mut out: Vec<Step> = desired
        .addons
        .iter()
        .filter(sane)
        .filter(|d| {
            !enabled.contains(&d.name) || d.version.as_deref().is_some_and(|v| Some(v) != catalog_version(&d.name))
        })
        .map(|d| step(&d.name, true, d.version.clone()))
        .collect();
    out.extend(enabled.iter().filter(|e| !desired.addons.iter().any(|d| &d.name == *e)).map(|e| step(e, false, None)));
    out.dedup_by(|a, b| a.request_id == b.request_id);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(generation: i64, names: &[&str]) -> DesiredAddons {
        let addons = names.iter().map(|n| DesiredAddon { name: n.to_string(), version: None }).collect();
        DesiredAddons { uid: "u1".into(), generation, addons }
    }

    fn object_at(uid: &str, generation: i64) -> ObjectGeneration {
        ObjectGeneration { uid: uid.into(), generation }
    }

    #[test]
    fn a_cluster_addon_object_is_followed_one_addon_at_a_time() {
        let enabled = vec!["metrics-server".to_string()];
        let first =
            |d: &DesiredAddons| steps_towards(&enabled, d).into_iter().next().map(|s| (s.addon, s.enable, s.version));
        // In step: nothing to do.
        assert_eq!(first(&want(3, &["metrics-server"])), None);
        // Enable first, in the object's order; then disable what it no longer lists.
        let steps = steps_towards(&enabled, &want(4, &["cert-manager", "argo-cd"]));
        let order: Vec<(&str, bool)> = steps.iter().map(|s| (s.addon.as_str(), s.enable)).collect();
        assert_eq!(order, [("cert-manager", true), ("argo-cd", true), ("metrics-server", false)]);
        assert!(steps[0].request_id.starts_with("clusteraddon-4-enable-cert-manager-"), "{}", steps[0].request_id);
        assert!(steps.iter().all(|s| crate::ids::validate_request_id(&s.request_id).is_ok()));
        // A version other than the catalog's is asked for (and refused by the k8s-controller).
        let mut w = want(5, &["metrics-server"]);
        w.addons[0].version = Some("v0.0.1".into());
        assert_eq!(first(&w), Some(("metrics-server".into(), true, Some("v0.0.1".into()))));
        w.addons[0].version = Some("v0.7.2".into());
        assert_eq!(first(&w), None);
        // Names that cannot be an addon's and versions that cannot be a release's are skipped.
        assert_eq!(first(&want(6, &["metrics-server", "../Etc", "x".repeat(300).as_str()])), None);
        w.addons[0].version = Some("v1\n\u{1b}[31m".into());
        assert_eq!(first(&w), None);
        // Long names stay within a request id; a re-made object's ids differ from the old one's.
        let long = steps_towards(&[], &want(i64::MAX, &["a-very-long-addon-name-that-no-catalog-has-x"]));
        assert!(crate::ids::validate_request_id(&long[0].request_id).is_ok(), "{}", long[0].request_id);
        let mut other = want(4, &["cert-manager"]);
        other.uid = "u2".into();
        assert_ne!(steps_towards(&enabled, &other)[0].request_id, steps[0].request_id);
    }

    #[test]
    fn old_readings_and_a_failed_generation_are_not_acted_on() {
        let w = |g| want(g, &[]);
        let followed = |g, failed| Followed { object: object_at("u1", g), failed };
        // Older than ksctl's own last write: the later write of the object wins.
        assert!(!is_news(&w(2), &object_at("u1", 3), None));
        assert!(is_news(&w(3), &object_at("u1", 3), None));
        // Older than what the manager acted on: a late heartbeat cannot undo a newer change.
        assert!(!is_news(&w(4), &object_at("u1", 0), Some(&followed(5, false))));
        assert!(is_news(&w(5), &object_at("u1", 0), Some(&followed(5, false))), "the next step of the same generation");
        // The generation whose change failed is not tried again; the next edit is.
        assert!(!is_news(&w(5), &object_at("u1", 0), Some(&followed(5, true))));
        assert!(is_news(&w(6), &object_at("u1", 0), Some(&followed(5, true))));
        // A re-made object (another uid) starts again at generation 1, and that is news.
        let mut remade = w(1);
        remade.uid = "u2".into();
        assert!(is_news(&remade, &object_at("u1", 7), Some(&followed(9, true))));
    }

    #[test]
    fn names_are_unique_dns_labels() {
        let mut seen = std::collections::BTreeSet::new();
        for a in CATALOG {
            assert!(seen.insert(a.name));
            assert!(crate::ids::validate_name(a.name).is_ok(), "{}", a.name);
            assert!(a.version.starts_with('v'));
        }
        assert_eq!(find("metrics-server").unwrap().version, "v0.7.2");
        assert_eq!(find("argo-cd").unwrap().namespace, "argocd");
        assert!(find("nope").is_none());
    }
}
