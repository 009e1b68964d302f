//! A user's own application stack (`ksctl cluster apps apply CLUSTER -f app.yaml --name S`):
//! any manifests, checked here before anything travels further (the manager refuses what does
//! not parse; the k8s-controller parses again before it applies), applied in the order
//! [`apply_order`] gives, and remembered as an inventory of [`ObjectRef`]s so a later apply
//! prunes what left the file and a delete removes exactly what was applied.
use serde::{Deserialize, Serialize};

/// The largest manifest file a request may carry (NATS' default payload limit is 1 MiB; the
/// request's JSON escaping must fit too).
pub const MAX_MANIFEST_BYTES: usize = 512 * 1024;

/// One object of a stack: enough to find it again (and to delete it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectRef {
    /// `Kind namespace/name` (or `Kind name`), for messages.
    pub fn shown(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    /// The API group (empty for the core group).
    pub fn group(&self) -> &str {
        self.api_version.rsplit_once('/').map(|(g, _)| g).unwrap_or("")
    }

    /// The same object in the cluster: its API version may differ (a group serves several), and
    /// no namespace means the default one.
    pub fn same_object(&self, other: &ObjectRef) -> bool {
        let ns = |r: &ObjectRef| r.namespace.clone().unwrap_or_else(|| "default".into());
        self.group() == other.group() && self.kind == other.kind && ns(self) == ns(other) && self.name == other.name
    }

    pub fn is_crd(&self) -> bool {
        self.kind == "CustomResourceDefinition" && self.group() == "apiextensions.k8s.io"
    }

    pub fn is_namespace(&self) -> bool {
        self.kind == "Namespace" && self.api_version == "v1"
    }
}

/// An inventory before an apply: `before` with each of `wanted` in it (in place of the same
/// object under another API version, else added at the end).
pub fn with_all(before: &[ObjectRef], wanted: &[ObjectRef]) -> Vec<ObjectRef> {
    let mut out = before.to_vec();
    for r in wanted {
        match out.iter_mut().find(|o| o.same_object(r)) {
            Some(o) => *o = r.clone(),
            None => out.push(r.clone()),
        }
    }
    out
}

/// The objects of `of` that `kept` does not hold (what a prune deletes), in `of`'s order.
pub fn left_out<'a>(of: &'a [ObjectRef], kept: &[ObjectRef]) -> Vec<&'a ObjectRef> {
    of.iter().filter(|o| !kept.iter().any(|k| k.same_object(o))).collect()
}

/// A stack's name: a DNS label that is not one of ksctl's own stacks (the catalog's addons and
/// the CNIs carry the same ownership label).
pub fn validate_stack_name(name: &str) -> Result<(), String> {
    crate::ids::validate_name(name)?;
    let cni = crate::spec::Cni::parse(name).is_some_and(|c| c != crate::spec::Cni::None);
    if crate::addons::find(name).is_some() || cni {
        return Err(format!("{name:?} is the name of one of ksctl's own stacks; choose another"));
    }
    Ok(())
}

/// Every object of a manifest file (YAML documents; `List` kinds are not unwrapped), each with
/// its reference, in file order. Refused: an empty file, one over [`MAX_MANIFEST_BYTES`], a
/// document that is not an object with `apiVersion`, `kind` and `metadata.name`, and the same
/// object twice.
pub fn parse(yaml: &str) -> Result<Vec<(ObjectRef, serde_json::Value)>, String> {
    if yaml.len() > MAX_MANIFEST_BYTES {
        return Err(format!("the manifests are {} bytes; at most {MAX_MANIFEST_BYTES} are accepted", yaml.len()));
    }
    let mut out: Vec<(ObjectRef, serde_json::Value)> = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let n = i + 1;
        let value = serde_yaml::Value::deserialize(doc).map_err(|e| format!("document {n}: not YAML: {e}"))?;
        let value = serde_json::to_value(value).map_err(|e| format!("document {n}: {e}"))?;
        if value.is_null() {
            continue;
        }
        let text = |v: &serde_json::Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
        let (Some(api_version), Some(kind), Some(name)) =
            (text(&value["apiVersion"]), text(&value["kind"]), text(&value["metadata"]["name"]))
        else {
            return Err(format!("document {n} is not a Kubernetes object (apiVersion, kind and metadata.name)"));
        };
        if kind.ends_with("List") {
            return Err(format!("document {n} is a {kind}; give its items as documents of their own"));
        }
        let namespace = text(&value["metadata"]["namespace"]);
        let r = ObjectRef { api_version, kind, namespace, name };
        if out.iter().any(|(o, _)| o.same_object(&r)) {
            return Err(format!("{} appears twice", r.shown()));
        }
        out.push((r, value));
    }
    if out.is_empty() {
        return Err("the manifests hold no objects".into());
    }
    Ok(out)
}

/// The order objects are applied in: Namespaces and CustomResourceDefinitions first (what the
/// rest may live in or be instances of), then everything else, each group in file order.
/// Deleting goes the other way.
pub fn apply_order<T>(objects: Vec<(ObjectRef, T)>) -> Vec<(ObjectRef, T)> {
    let (mut first, rest): (Vec<_>, Vec<_>) = objects.into_iter().partition(|(r, _)| r.is_namespace() || r.is_crd());
    first.extend(rest);
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: shop}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
---
# a comment-only document is skipped
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w1, namespace: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
";

    #[test]
    fn objects_in_file_order_then_namespaces_and_crds_first() {
        let objects = parse(APP).unwrap();
        let names: Vec<_> = objects.iter().map(|(r, _)| r.shown()).collect();
        assert_eq!(
            names,
            [
                "ConfigMap shop/settings",
                "CustomResourceDefinition widgets.example.com",
                "Widget shop/w1",
                "Namespace shop"
            ]
        );
        let ordered: Vec<_> = apply_order(objects).into_iter().map(|(r, _)| r.shown()).collect();
        assert_eq!(
            ordered,
            [
                "CustomResourceDefinition widgets.example.com",
                "Namespace shop",
                "ConfigMap shop/settings",
                "Widget shop/w1"
            ]
        );
    }

    #[test]
    fn files_that_are_not_manifests_are_refused_with_the_reason() {
        for (yaml, why) in [
            ("", "no objects"),
            ("---\n# nothing\n", "no objects"),
            ("kind: ConfigMap\nmetadata: {name: a}\n", "document 1 is not a Kubernetes object"),
            ("apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n", "not a Kubernetes object"),
            ("apiVersion: v1\nkind: List\nmetadata: {name: l}\nitems: []\n", "is a List"),
            ("a: [\n", "document 1: not YAML"),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n",
                "ConfigMap a appears twice",
            ),
        ] {
            let err = parse(yaml).unwrap_err();
            assert!(err.contains(why), "{yaml:?}: {err}");
        }
        let big = format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: a}}\ndata: {{x: \"{}\"}}\n",
            "x".repeat(MAX_MANIFEST_BYTES)
        );
        assert!(parse(&big).unwrap_err().contains("at most"));
    }

    #[test]
    fn inventories_grow_before_an_apply_and_lose_what_it_left_out() {
        let r = |v: &str, name: &str| ObjectRef {
            api_version: v.into(),
            kind: "HorizontalPodAutoscaler".into(),
            namespace: None,
            name: name.into(),
        };
        let before = vec![r("autoscaling/v1", "a"), r("autoscaling/v1", "old")];
        let wanted = vec![r("autoscaling/v2", "a"), r("autoscaling/v2", "b")];
        assert_eq!(
            with_all(&before, &wanted),
            [r("autoscaling/v2", "a"), r("autoscaling/v1", "old"), r("autoscaling/v2", "b")]
        );
        assert_eq!(left_out(&before, &wanted), [&r("autoscaling/v1", "old")]);
    }

    #[test]
    fn an_object_is_the_same_across_api_versions_and_an_omitted_default_namespace() {
        let r = |v: &str, ns: Option<&str>| ObjectRef {
            api_version: v.into(),
            kind: "HorizontalPodAutoscaler".into(),
            namespace: ns.map(str::to_string),
            name: "web".into(),
        };
        assert!(r("autoscaling/v1", None).same_object(&r("autoscaling/v2", Some("default"))));
        assert!(!r("autoscaling/v1", Some("shop")).same_object(&r("autoscaling/v1", None)));
        let twice = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: default}\n";
        assert!(parse(twice).unwrap_err().contains("twice"));
    }

    #[test]
    fn stack_names_are_dns_labels_that_are_not_ksctls_own() {
        assert!(validate_stack_name("shop").is_ok());
        assert!(validate_stack_name("Shop").is_err());
        assert!(validate_stack_name("metrics-server").unwrap_err().contains("ksctl's own"));
        assert!(validate_stack_name("flannel").is_err());
    }
}
