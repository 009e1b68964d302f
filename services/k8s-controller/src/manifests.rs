//! Embedded, pinned manifests (flannel for kubeadm, the addon stacks) and the one way ksctl
//! puts them into a cluster: server-side apply of each object under ksctl's field manager,
//! labelled with the stack it belongs to; removal in reverse order; readiness of the
//! Deployments and DaemonSets they contain.
use crate::kube_api::{FIELD_MANAGER, api_err};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Pod;
use ksctl_core::artifacts::{Artifacts, ImageRegistry};
use ksctl_runtime::PhaseError;
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

/// The label that ties an object to the stack (addon or CNI) that brought it.
pub const PART_OF: &str = "ksctl.io/stack";

/// flannel for kubeadm clusters (k3s has its own).
pub const FLANNEL: Stack =
    Stack { name: "flannel", yaml: include_str!("../manifests/kube-flannel-v0.26.1.yaml"), registry: None };

/// One named set of manifests.
#[derive(Debug, Clone)]
pub struct Stack {
    pub name: &'static str,
    pub yaml: &'static str,
    /// Where the stack's images are pulled from, if not from their upstream registries.
    pub registry: Option<ImageRegistry>,
}

/// The embedded manifests of an addon of `ksctl_core::addons::CATALOG`.
pub fn addon(name: &str) -> Option<Stack> {
    let yaml = match name {
        "metrics-server" => include_str!("../manifests/metrics-server-v0.7.2.yaml"),
        _ => return None,
    };
    Some(Stack { name: ksctl_core::addons::find(name)?.name, yaml, registry: None })
}

/// The container lists of a pod spec, wherever a workload kind nests it.
const CONTAINER_LISTS: [&str; 3] = ["containers", "initContainers", "ephemeralContainers"];

/// Rewrites every container image in `value` (any workload kind: the pod spec may sit under
/// `spec`, `spec.template.spec` or `spec.jobTemplate.spec.template.spec`) with `rewrite`.
pub fn rewrite_images(value: &mut serde_json::Value, rewrite: &mut dyn FnMut(&str) -> String) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if CONTAINER_LISTS.contains(&key.as_str())
                    && let Some(list) = v.as_array_mut()
                {
                    for c in list {
                        if let Some(image) = c.get("image").and_then(|i| i.as_str()).map(&mut *rewrite) {
                            c["image"] = image.into();
                        }
                    }
                } else {
                    rewrite_images(v, rewrite);
                }
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                rewrite_images(v, rewrite);
            }
        }
        _ => {}
    }
}

impl Stack {
    /// The stack with its images pulled through the artifact source's registry.
    pub fn through(mut self, artifacts: &Artifacts) -> Self {
        self.registry = artifacts.registry.clone();
        self
    }

    /// The stack's objects, in file order, each labelled as ksctl's and as part of this stack.
    pub fn objects(&self) -> Result<Vec<DynamicObject>, String> {
        let mut out = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(self.yaml) {
            let value = serde_json::to_value(
                serde_yaml::Value::deserialize(doc).map_err(|e| format!("{}: bad YAML: {e}", self.name))?,
            )
            .map_err(|e| format!("{}: {e}", self.name))?;
            if value.is_null() {
                continue;
            }
            let mut obj: DynamicObject =
                serde_json::from_value(value).map_err(|e| format!("{}: not a Kubernetes object: {e}", self.name))?;
            if obj.types.is_none() || obj.metadata.name.is_none() {
                return Err(format!("{}: an object without apiVersion/kind or name", self.name));
            }
            let labels = obj.metadata.labels.get_or_insert_with(Default::default);
            labels.insert("app.kubernetes.io/managed-by".into(), "ksctl".into());
            labels.insert(PART_OF.into(), self.name.into());
            if let Some(r) = &self.registry {
                rewrite_images(&mut obj.data, &mut |i| r.rewrite(i));
            }
            out.push(obj);
        }
        Ok(out)
    }
}

/// `kind/namespace/name` (or `kind/name`), for messages.
pub fn describe(obj: &DynamicObject) -> String {
    let kind = obj.types.as_ref().map(|t| t.kind.as_str()).unwrap_or("?");
    match &obj.metadata.namespace {
        Some(ns) => format!("{kind} {ns}/{}", obj.metadata.name.as_deref().unwrap_or("?")),
        None => format!("{kind} {}", obj.metadata.name.as_deref().unwrap_or("?")),
    }
}

/// Resolves each object's kind to its API resource once per call (discovery of one group).
struct Resolver<'a> {
    client: &'a kube::Client,
    seen: HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>,
}

impl<'a> Resolver<'a> {
    fn new(client: &'a kube::Client) -> Self {
        Self { client, seen: HashMap::new() }
    }

    async fn api(&mut self, obj: &DynamicObject) -> Result<Api<DynamicObject>, PhaseError> {
        let types = obj.types.as_ref().expect("checked by Stack::objects");
        let gvk =
            GroupVersionKind::try_from(types).map_err(|e| PhaseError::Permanent(format!("{}: {e}", describe(obj))))?;
        if !self.seen.contains_key(&gvk) {
            let found = kube::discovery::pinned_kind(self.client, &gvk)
                .await
                .map_err(|e| api_err(&format!("the API server does not serve {}", describe(obj)), e))?;
            self.seen.insert(gvk.clone(), found);
        }
        let (ar, caps) = &self.seen[&gvk];
        Ok(match (&caps.scope, &obj.metadata.namespace) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, ar),
            (Scope::Namespaced, None) => Api::default_namespaced_with(self.client.clone(), ar),
            (Scope::Cluster, _) => Api::all_with(self.client.clone(), ar),
        })
    }
}

/// Applies every object of `stack` (idempotent: applying the same manifests again changes
/// nothing; fields someone else took are taken back).
pub async fn apply(client: &kube::Client, stack: &Stack) -> Result<usize, PhaseError> {
    apply_with(client, stack, false).await
}

/// [`apply`]; with `dry_run` the server validates and admits every object without storing it.
pub async fn apply_with(client: &kube::Client, stack: &Stack, dry_run: bool) -> Result<usize, PhaseError> {
    let objects = stack.objects().map_err(PhaseError::Permanent)?;
    let mut resolver = Resolver::new(client);
    let mut pp = PatchParams::apply(FIELD_MANAGER).force();
    pp.dry_run = dry_run;
    for obj in &objects {
        let api = resolver.api(obj).await?;
        let name = obj.metadata.name.as_deref().expect("checked");
        let err = |e| api_err(&format!("applying {}", describe(obj)), e);
        if without_apply(obj) {
            // Created, or merge-patched to the manifest (a patch that changes nothing is a no-op).
            match api.get_opt(name).await.map_err(err)? {
                None => {
                    api.create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, obj)
                        .await
                }
                Some(_) => {
                    api.patch(
                        name,
                        &PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() },
                        &Patch::Merge(obj),
                    )
                    .await
                }
            }
            .map_err(err)?;
        } else {
            api.patch(name, &pp, &Patch::Apply(obj)).await.map_err(err)?;
        }
    }
    Ok(objects.len())
}

/// Kinds that old servers cannot server-side apply: the aggregator's API server (APIService)
/// gained it in Kubernetes 1.21; 1.20 panics on the request.
fn without_apply(obj: &DynamicObject) -> bool {
    obj.types.as_ref().is_some_and(|t| t.api_version.starts_with("apiregistration.k8s.io/"))
}

/// Deletes every object of `stack`, last first. "Not found" is done; so is a kind the server no
/// longer serves (its objects went with it).
pub async fn remove(client: &kube::Client, stack: &Stack) -> Result<usize, PhaseError> {
    let objects = stack.objects().map_err(PhaseError::Permanent)?;
    let mut resolver = Resolver::new(client);
    let dp = DeleteParams::background();
    for obj in objects.iter().rev() {
        let api = match resolver.api(obj).await {
            Ok(api) => api,
            Err(PhaseError::Permanent(_)) => continue,
            Err(e) => return Err(e),
        };
        match api.delete(obj.metadata.name.as_deref().expect("checked"), &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err(&format!("deleting {}", describe(obj)), e)),
        }
    }
    Ok(objects.len())
}

/// Why a workload is not ready yet, or `None` when it is. Ready: the controller has seen the
/// current generation and every desired replica is updated and available.
pub fn not_ready(
    generation: Option<i64>,
    observed: Option<i64>,
    desired: i32,
    updated: i32,
    available: i32,
) -> Option<String> {
    if observed.is_none() || observed < generation {
        return Some("not yet seen by its controller (is kube-controller-manager running?)".into());
    }
    if updated < desired || available < desired {
        return Some(format!("{available}/{desired} available, {updated}/{desired} updated"));
    }
    None
}

/// The waiting reasons of the pods a workload selects (`ImagePullBackOff`, `Pending: …`), so
/// that "not ready" says why.
async fn pod_reasons(client: &kube::Client, ns: &str, selector: &str) -> String {
    let Ok(pods) = Api::<Pod>::namespaced(client.clone(), ns).list(&ListParams::default().labels(selector)).await
    else {
        return String::new();
    };
    let mut reasons = Vec::new();
    for p in pods.items {
        let name = p.metadata.name.unwrap_or_default();
        let status = p.status.unwrap_or_default();
        let waiting = status
            .container_statuses
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.state.and_then(|s| s.waiting).and_then(|w| w.reason))
            .next();
        match waiting {
            Some(r) => reasons.push(format!("{name}: {r}")),
            None if status.phase.as_deref() == Some("Pending") => {
                let why = status.conditions.unwrap_or_default().into_iter().find_map(|c| c.message);
                reasons.push(format!("{name}: Pending {}", why.unwrap_or_default()));
            }
            None => {}
        }
    }
    if reasons.is_empty() { String::new() } else { format!(" [{}]", reasons.join("; ")) }
}

fn selector(labels: Option<&std::collections::BTreeMap<String, String>>) -> String {
    labels.map(|m| m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")).unwrap_or_default()
}

/// One Deployment's or DaemonSet's readiness, with the reason when not ready.
pub async fn workload_ready(
    client: &kube::Client,
    kind: &str,
    ns: &str,
    name: &str,
) -> Result<Option<String>, PhaseError> {
    let what = format!("{kind} {ns}/{name}");
    let read_err = |e| api_err(&format!("reading {what}"), e);
    let (why, sel) = match kind {
        "Deployment" => {
            let Some(d) = Api::<Deployment>::namespaced(client.clone(), ns).get_opt(name).await.map_err(read_err)?
            else {
                return Ok(Some("missing".into()));
            };
            let spec = d.spec;
            let st = d.status.unwrap_or_default();
            let desired = spec.replicas.unwrap_or(1);
            let why = not_ready(
                d.metadata.generation,
                st.observed_generation,
                desired,
                st.updated_replicas.unwrap_or(0),
                st.available_replicas.unwrap_or(0),
            );
            (why, selector(spec.selector.match_labels.as_ref()))
        }
        "DaemonSet" => {
            let Some(d) = Api::<DaemonSet>::namespaced(client.clone(), ns).get_opt(name).await.map_err(read_err)?
            else {
                return Ok(Some("missing".into()));
            };
            let spec = d.spec;
            let st = d.status.unwrap_or_default();
            let why = not_ready(
                d.metadata.generation,
                st.observed_generation,
                st.desired_number_scheduled,
                st.updated_number_scheduled.unwrap_or(0),
                st.number_available.unwrap_or(0),
            );
            (why, selector(spec.selector.match_labels.as_ref()))
        }
        other => return Err(PhaseError::Permanent(format!("no readiness rule for {other}"))),
    };
    Ok(match why {
        Some(w) => Some(format!("{w}{}", pod_reasons(client, ns, &sel).await)),
        None => None,
    })
}

/// Waits until every workload (`(kind, namespace, name)`) is ready; on timeout the error names
/// each one that is not, and why.
pub async fn wait_ready(
    client: &kube::Client,
    workloads: &[(String, String, String)],
    timeout: Duration,
) -> Result<(), PhaseError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut pending = Vec::new();
        for (kind, ns, name) in workloads {
            if let Some(why) = workload_ready(client, kind, ns, name).await? {
                pending.push(format!("{kind} {ns}/{name}: {why}"));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(PhaseError::Retryable(format!(
                "not ready after {} s: {}",
                timeout.as_secs(),
                pending.join("; ")
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The Deployments and DaemonSets of a stack, as [`wait_ready`] takes them.
pub fn workloads(stack: &Stack) -> Result<Vec<(String, String, String)>, PhaseError> {
    Ok(stack
        .objects()
        .map_err(PhaseError::Permanent)?
        .iter()
        .filter_map(|o| {
            let kind = o.types.as_ref()?.kind.clone();
            matches!(kind.as_str(), "Deployment" | "DaemonSet").then(|| {
                (kind, o.metadata.namespace.clone().unwrap_or_default(), o.metadata.name.clone().unwrap_or_default())
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every image the stack's objects run, sorted and deduplicated.
    fn images(stack: &Stack) -> Vec<String> {
        let mut out = std::collections::BTreeSet::new();
        for o in stack.objects().unwrap() {
            let mut data = o.data.clone();
            rewrite_images(&mut data, &mut |i| {
                out.insert(i.to_string());
                i.to_string()
            });
        }
        out.into_iter().collect()
    }

    #[test]
    fn the_catalog_lists_the_images_the_manifests_run() {
        let mut flannel: Vec<String> = ksctl_core::addons::FLANNEL_IMAGES.iter().map(|s| s.to_string()).collect();
        flannel.sort();
        assert_eq!(images(&FLANNEL), flannel);
        for a in ksctl_core::addons::CATALOG {
            let mut listed: Vec<String> = a.images.iter().map(|s| s.to_string()).collect();
            listed.sort();
            assert_eq!(images(&addon(a.name).unwrap()), listed, "{}", a.name);
        }
    }

    #[test]
    fn stacks_pull_through_the_registry() {
        use ksctl_core::artifacts::RegistryTls;
        let a = Artifacts {
            mirror: None,
            registry: Some(ImageRegistry::parse("10.0.0.1:5000", RegistryTls::PlainHttp).unwrap()),
        };
        assert_eq!(
            images(&FLANNEL.through(&a)),
            ["10.0.0.1:5000/flannel/flannel-cni-plugin:v1.5.1-flannel2", "10.0.0.1:5000/flannel/flannel:v0.26.1"]
        );
        assert_eq!(
            images(&addon("metrics-server").unwrap().through(&a)),
            ["10.0.0.1:5000/metrics-server/metrics-server:v0.7.2"]
        );
        // Every workload kind's pod spec is found, wherever it nests.
        let mut cron = serde_json::json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {
            "initContainers": [{"name": "i", "image": "busybox:1"}],
            "containers": [{"name": "c", "image": "quay.io/x/y:2"}, {"name": "no-image"}]
        }}}}}});
        rewrite_images(&mut cron, &mut |i| format!("r/{i}"));
        let spec = &cron["spec"]["jobTemplate"]["spec"]["template"]["spec"];
        assert_eq!(spec["initContainers"][0]["image"], "r/busybox:1");
        assert_eq!(spec["containers"][0]["image"], "r/quay.io/x/y:2");
        assert!(spec["containers"][1].get("image").is_none());
    }

    #[test]
    fn embedded_stacks_parse_and_are_labelled() {
        let flannel = FLANNEL.objects().unwrap();
        assert_eq!(flannel.len(), 6);
        assert!(flannel.iter().all(|o| o.metadata.labels.as_ref().unwrap()[PART_OF] == "flannel"));
        let ms = addon("metrics-server").unwrap().objects().unwrap();
        assert_eq!(ms.len(), 9);
        assert_eq!(describe(&ms[0]), "ServiceAccount kube-system/metrics-server");
        assert_eq!(describe(&ms[8]), "APIService v1beta1.metrics.k8s.io");
        assert!(addon("grafana").is_none());
        // Every catalog entry has manifests, of the version the catalog names.
        for a in ksctl_core::addons::CATALOG {
            let s = addon(a.name).unwrap_or_else(|| panic!("{} has no manifests", a.name));
            assert!(s.yaml.contains(&format!(":{}", a.version)), "{} is not pinned to {}", a.name, a.version);
        }
    }

    #[test]
    fn flannel_network_is_the_kubeadm_pod_subnet() {
        let cm =
            FLANNEL.objects().unwrap().into_iter().find(|o| o.types.as_ref().unwrap().kind == "ConfigMap").unwrap();
        let net: serde_json::Value = serde_json::from_str(cm.data["data"]["net-conf.json"].as_str().unwrap()).unwrap();
        assert_eq!(net["Network"], ksctl_core::spec::POD_SUBNET);
        assert_eq!(
            workloads(&FLANNEL).unwrap(),
            [("DaemonSet".into(), "kube-flannel".into(), "kube-flannel-ds".into())]
        );
    }

    #[test]
    fn readiness_rule() {
        assert!(not_ready(Some(1), None, 1, 0, 0).unwrap().contains("controller"));
        assert!(not_ready(Some(2), Some(1), 1, 1, 1).is_some(), "an old generation is not ready");
        assert_eq!(not_ready(Some(1), Some(1), 2, 2, 1).unwrap(), "1/2 available, 2/2 updated");
        assert_eq!(not_ready(Some(1), Some(1), 1, 1, 1), None);
        assert_eq!(not_ready(Some(1), Some(1), 0, 0, 0), None, "a DaemonSet with no nodes to run on");
    }
}
