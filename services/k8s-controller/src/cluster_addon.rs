//! The cluster's `ClusterAddon` object (`ksctl-system/addons`). Its spec is what the cluster
//! should run: written by ksctl at install and at the end of every addon operation a request
//! asked for, edited by users (`kubectl edit`, GitOps). Its status says where each addon stands,
//! written here and only here. The agent reads the spec into its heartbeats; the manager turns a
//! changed spec into the addon operations the CLI starts (`ksctl_core::addons::step_towards`).
use crate::crds::{AddonRef, AddonStatus, ClusterAddon, ClusterAddonSpec};
use crate::kube_api::{CLUSTER_ADDONS, NAMESPACE, api_err, labels};
use ksctl_core::addons::ObjectGeneration;
use ksctl_runtime::PhaseError;
use kube::api::{Api, Patch, PatchParams, PostParams};

/// How an operation changes the spec.
#[derive(Debug, Clone, Copy)]
pub enum SpecChange<'a> {
    /// Exactly these addons (an install writes the cluster record's list).
    Set(&'a [String]),
    Enable(&'a str),
    Disable(&'a str),
}

/// An entry ksctl writes names no version: "the version this ksctl ships", so that a newer
/// ksctl's pins do not read as a request for an older one (the status shows the version).
fn entry(name: &str) -> AddonRef {
    AddonRef { name: name.to_string(), version: None }
}

/// The spec after `change`: other entries keep their place and version (someone else's edit
/// stays); an enabled addon's entry is ksctl's.
pub fn changed(current: &[AddonRef], change: SpecChange<'_>) -> Vec<AddonRef> {
    match change {
        SpecChange::Set(names) => names.iter().map(|n| entry(n)).collect(),
        SpecChange::Enable(name) => {
            let mut out = current.to_vec();
            match out.iter_mut().find(|a| a.name == name) {
                Some(a) => *a = entry(name),
                None => out.push(entry(name)),
            }
            out
        }
        SpecChange::Disable(name) => current.iter().filter(|a| a.name != name).cloned().collect(),
    }
}

/// How often a write is tried again when the object changed between reading and writing it.
const WRITE_ATTEMPTS: usize = 5;

/// The object's uid and generation.
fn generation_of(obj: &ClusterAddon) -> ObjectGeneration {
    ObjectGeneration {
        uid: obj.metadata.uid.clone().unwrap_or_default(),
        generation: obj.metadata.generation.unwrap_or(1),
    }
}

/// Writes the spec and returns the object's uid and generation after it. A replace over the
/// version read: an edit made in between is read again and kept, never overwritten unseen. A
/// missing object (someone deleted it) is made again from `enabled`, the addons the cluster
/// record lists, with the change.
pub async fn write_spec(
    client: &kube::Client,
    enabled: &[String],
    change: SpecChange<'_>,
) -> Result<ObjectGeneration, PhaseError> {
    let api: Api<ClusterAddon> = Api::namespaced(client.clone(), NAMESPACE);
    let err = |e| api_err("writing the ClusterAddon object", e);
    for _ in 0..WRITE_ATTEMPTS {
        let written = match api.get_opt(CLUSTER_ADDONS).await.map_err(err)? {
            None => {
                let base = changed(&[], SpecChange::Set(enabled));
                let mut obj = ClusterAddon::new(CLUSTER_ADDONS, ClusterAddonSpec { addons: changed(&base, change) });
                obj.metadata.namespace = Some(NAMESPACE.into());
                obj.metadata.labels = Some(labels());
                api.create(&PostParams::default(), &obj).await
            }
            Some(mut cur) => {
                let next = changed(&cur.spec.addons, change);
                if next == cur.spec.addons {
                    return Ok(generation_of(&cur));
                }
                cur.spec.addons = next;
                api.replace(CLUSTER_ADDONS, &PostParams::default(), &cur).await
            }
        };
        match written {
            Ok(obj) => return Ok(generation_of(&obj)),
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(err(e)),
        }
    }
    Err(PhaseError::retryable(format!(
        "the ClusterAddon object changed under each of {WRITE_ATTEMPTS} writes; trying again later"
    )))
}

/// Sets (or, with `None`, removes) one addon's entry in the status. The status is a report: a
/// cluster without the object has nothing to report on, and a failed write is logged, not
/// allowed to fail the addon's operation.
pub async fn report(client: &kube::Client, addon: &str, status: Option<AddonStatus>) {
    let api: Api<ClusterAddon> = Api::namespaced(client.clone(), NAMESPACE);
    let patch = serde_json::json!({"status": {"addons": {addon: status}}});
    match api.patch_status(CLUSTER_ADDONS, &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => tracing::warn!(addon, error = %e, "could not write the ClusterAddon status"),
    }
}

/// A status entry in `phase`.
pub fn status(phase: &str, version: Option<&str>, error: Option<String>, generation: Option<i64>) -> AddonStatus {
    AddonStatus {
        phase: phase.to_string(),
        version: version.map(str::to_string),
        last_error: error,
        observed_generation: generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refs(list: &[(&str, Option<&str>)]) -> Vec<AddonRef> {
        list.iter().map(|(n, v)| AddonRef { name: n.to_string(), version: v.map(str::to_string) }).collect()
    }

    #[test]
    fn a_request_changes_only_its_own_addon_in_the_spec() {
        let cur = refs(&[("argo-cd", None), ("metrics-server", Some("v0.1.0"))]);
        let enabled = changed(&cur, SpecChange::Enable("metrics-server"));
        assert_eq!(enabled, refs(&[("argo-cd", None), ("metrics-server", None)]));
        let added = changed(&cur, SpecChange::Enable("cert-manager"));
        assert_eq!(added[2], AddonRef { name: "cert-manager".into(), version: None });
        assert_eq!(changed(&cur, SpecChange::Disable("argo-cd")), refs(&[("metrics-server", Some("v0.1.0"))]));
        let set = changed(&cur, SpecChange::Set(&["cert-manager".to_string()]));
        assert_eq!(set, refs(&[("cert-manager", None)]));
    }
}
