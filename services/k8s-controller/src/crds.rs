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

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterAddonStatus {
    /// Addon name → `installed`, `installing`, `failed: <why>`.
    #[serde(default)]
    pub addons: std::collections::BTreeMap<String, String>,
}

/// One application stack and the versions of its parts (ksctl's `Stack`).
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(group = "app.ksctl.io", version = "v1", kind = "Stack", namespaced)]
#[serde(rename_all = "camelCase")]
pub struct StackSpec {
    pub stack_name: String,
    pub components: Vec<StackComponent>,
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
