//! ksctl's custom resources, generated from these Rust types (`derive(CustomResource)`, schemas
//! from schemars): `ClusterAddon` (manage.ksctl.io/v1) lists the addons a cluster should run;
//! `Stack` (app.ksctl.io/v1) is one application stack with pinned component versions.
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The addons a cluster should run (ksctl's `ClusterAddon`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "manage.ksctl.io", version = "v1", kind = "ClusterAddon", namespaced)]
#[kube(status = "ClusterAddonStatus")]
#[serde(rename_all = "camelCase")]
pub struct ClusterAddonSpec {
    pub addons: Vec<AddonRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddonRef {
    /// The stack's name, e.g. `monitoring`.
    pub name: String,
    /// A pinned version; the embedded default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Written by the k8s-controller (never by the agent, which only reads the object).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterAddonStatus {
    /// Addon name → where it stands.
    #[serde(default)]
    pub addons: std::collections::BTreeMap<String, AddonStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AddonStatus {
    /// `Installing`, `Installed`, `Removing` or `Failed`.
    pub phase: String,
    /// The version installed, or being installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Why the last change failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The object's generation that asked for the change, when the object asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// One application stack and the versions of its parts (ksctl's `Stack`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "app.ksctl.io", version = "v1", kind = "Stack", namespaced)]
#[serde(rename_all = "camelCase")]
pub struct StackSpec {
    pub stack_name: String,
    pub components: Vec<StackComponent>,
    /// For an addon: every object ksctl may have applied for it and not yet deleted — recorded
    /// before they are applied, so an upgrade deletes what an older pin had and the new one has
    /// not, and disable deletes them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<StackObject>,
}

/// One object of a stack (`ksctl_core::apps::ObjectRef` with a schema).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StackObject {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl From<&ksctl_core::apps::ObjectRef> for StackObject {
    fn from(r: &ksctl_core::apps::ObjectRef) -> Self {
        Self {
            api_version: r.api_version.clone(),
            kind: r.kind.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
        }
    }
}

impl From<StackObject> for ksctl_core::apps::ObjectRef {
    fn from(o: StackObject) -> Self {
        Self { api_version: o.api_version, kind: o.kind, namespace: o.namespace, name: o.name }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StackComponent {
    pub name: String,
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crds_have_our_groups_and_structural_schemas() {
        let s = Stack::crd();
        assert_eq!(s.metadata.name.as_deref(), Some("stacks.app.ksctl.io"));
        let a = ClusterAddon::crd();
        assert_eq!(a.metadata.name.as_deref(), Some("clusteraddons.manage.ksctl.io"));
        let schema = serde_json::to_value(&s.spec.versions[0].schema).unwrap();
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["required"], serde_json::json!(["components", "stackName"]));
        assert_eq!(spec["properties"]["components"]["type"], "array");
    }
}
