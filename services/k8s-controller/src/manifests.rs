//! Embedded, pinned manifests (flannel for kubeadm, the addon stacks) and the one way ksctl
//! puts them into a cluster: server-side apply of each object under ksctl's field manager,
//! labelled with the stack it belongs to; removal in reverse order; readiness of the
//! Deployments and DaemonSets they contain.
use crate::kube_api::{FIELD_MANAGER, api_err};
use backon::BackoffBuilder;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use ksctl_core::artifacts::{Artifacts, ImageRegistry};
use ksctl_core::spec::Cni;
use ksctl_runtime::PhaseError;
use kube::api::{Api, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams};
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

/// The label that ties an object to the stack (addon or CNI) that brought it.
pub const PART_OF: &str = "ksctl.io/stack";

/// An embedded manifest gzipped at build time (`build.rs`), unpacked once on first use.
fn unpacked(cell: &'static std::sync::OnceLock<String>, gz: &'static [u8]) -> &'static str {
    cell.get_or_init(|| {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz), &mut text)
            .expect("embedded manifests unpack");
        text
    })
}

macro_rules! packed {
    ($file:literal) => {{
        static CELL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        unpacked(&CELL, include_bytes!(concat!(env!("OUT_DIR"), "/", $file, ".gz")))
    }};
}

/// flannel for kubeadm clusters (k3s has its own).
pub const FLANNEL: Stack = Stack {
    name: "flannel",
    yaml: include_str!("../manifests/kube-flannel-v0.26.1.yaml"),
    registry: None,
    namespace: None,
    node_env: None,
};

/// Calico's IP pool: the cluster's pod CIDR (the manifest leaves CALICO_IPV4POOL_CIDR commented
/// out), encapsulated in VXLAN (UDP 4789) instead of the manifest's IP-in-IP, which clouds'
/// firewalls (Azure's not at all) do not pass.
const CALICO_NODE_ENV: (&str, &[(&str, &str)]) = (
    "calico-node",
    &[
        ("CALICO_IPV4POOL_CIDR", ksctl_core::spec::POD_SUBNET),
        ("CALICO_IPV4POOL_IPIP", "Never"),
        ("CALICO_IPV4POOL_VXLAN", "Always"),
    ],
);

/// The CNI a self-managed cluster's spec asks ksctl to install (`None`: k3s' own flannel, or
/// `cni: none`).
pub fn cni(cni: Cni) -> Option<Stack> {
    let (name, yaml, node_env) = match cni {
        Cni::Flannel => return Some(FLANNEL),
        Cni::Calico => ("calico", packed!("calico-v3.32.1.yaml"), Some(CALICO_NODE_ENV)),
        // ipam "kubernetes": the Nodes' podCIDRs, allocated from the cluster's pod CIDR.
        Cni::Cilium => ("cilium", include_str!("../manifests/cilium-v1.20.0.yaml"), None),
        Cni::None => return None,
    };
    Some(Stack { name, yaml, registry: None, namespace: None, node_env })
}

/// One named set of manifests.
#[derive(Debug, Clone)]
pub struct Stack {
    pub name: &'static str,
    pub yaml: &'static str,
    /// Where the stack's images are pulled from, if not from their upstream registries.
    pub registry: Option<ImageRegistry>,
    /// Where its objects that name no namespace go, created with the stack (Argo CD's
    /// manifests are written for `kubectl apply -n argocd`).
    pub namespace: Option<&'static str>,
    /// A container of the stack's DaemonSets and environment variables set on it when the
    /// objects are made (the cluster's pod CIDR, `ksctl_core::spec::POD_SUBNET`, and the like).
    pub node_env: Option<(&'static str, &'static [(&'static str, &'static str)])>,
}

/// The embedded manifests of an addon of `ksctl_core::addons::CATALOG`.
pub fn addon(name: &str) -> Option<Stack> {
    let yaml = match name {
        "metrics-server" => include_str!("../manifests/metrics-server-v0.7.2.yaml"),
        "cert-manager" => packed!("cert-manager-v1.19.4.yaml"),
        "ingress-nginx" => packed!("ingress-nginx-controller-v1.15.1.yaml"),
        "argo-cd" => packed!("argo-cd-v3.5.1.yaml"),
        "prometheus-operator" => packed!("prometheus-operator-v0.83.0.yaml"),
        _ => return None,
    };
    let a = ksctl_core::addons::find(name)?;
    let namespace = (name == "argo-cd").then_some(a.namespace);
    Some(Stack { name: a.name, yaml, registry: None, namespace, node_env: None })
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
        if let Some(ns) = self.namespace {
            let mut obj: DynamicObject = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
            }))
            .expect("a namespace object");
            own(&mut obj, self.name);
            out.push(obj);
        }
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
            own(&mut obj, self.name);
            let kind = obj.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
            normalize(&kind, &mut obj.data);
            if let Some(r) = &self.registry {
                rewrite_images(&mut obj.data, &mut |i| r.rewrite(i));
            }
            if let (Some((container, vars)), Some("DaemonSet")) =
                (self.node_env, obj.types.as_ref().map(|t| t.kind.as_str()))
            {
                for (var, value) in vars {
                    set_env(&mut obj.data, container, var, value);
                }
            }
            out.push(obj);
        }
        Ok(out)
    }
}

/// Makes an object's YAML mean what Kubernetes' own YAML reading (YAML 1.1) makes of it, and
/// what every server can apply — only where the object is a Kubernetes type whose fields are
/// known (a Service, a workload's pod spec; never a ConfigMap's data or a custom resource):
/// `defaultMode: 0400` in a volume (a file mode, octal) is 256, where a YAML 1.2 reader keeps the
/// text; a container's resource quantities given as numbers (`cpu: 1`) are written as text,
/// which servers before 1.21 require for server-side apply; ports get their default protocol
/// ([`default_port_protocols`]).
pub fn normalize(kind: &str, value: &mut serde_json::Value) {
    // Reached with `pointer_mut`: indexing a JSON object mutably would add the keys it lacks.
    if kind == "Service"
        && let Some(spec) = value.pointer_mut("/spec")
    {
        default_port_protocols(spec);
    }
    if kind == "PersistentVolumeClaim" {
        quantities_as_text(value, "/spec/resources");
    }
    if kind == "StatefulSet" {
        let claims = value.pointer_mut("/spec/volumeClaimTemplates").and_then(|c| c.as_array_mut());
        for claim in claims.into_iter().flatten() {
            quantities_as_text(claim, "/spec/resources");
        }
    }
    let path = match kind {
        "Pod" => "/spec",
        "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" | "Job" | "ReplicationController" => {
            "/spec/template/spec"
        }
        "CronJob" => "/spec/jobTemplate/spec/template/spec",
        _ => return,
    };
    let Some(pod) = value.pointer_mut(path).and_then(|p| p.as_object_mut()) else { return };
    for (key, list) in pod.iter_mut() {
        let items = list.as_array_mut().into_iter().flatten();
        if CONTAINER_LISTS.contains(&key.as_str()) {
            for c in items {
                default_port_protocols(c);
                quantities_as_text(c, "/resources");
            }
        } else if key == "volumes" {
            items.for_each(file_modes);
        }
    }
}

/// The `limits` and `requests` under `pointer` written as quantities (text), not numbers.
fn quantities_as_text(value: &mut serde_json::Value, pointer: &str) {
    let Some(resources) = value.pointer_mut(pointer) else { return };
    for part in ["limits", "requests"] {
        let quantities = resources.get_mut(part).and_then(|q| q.as_object_mut()).into_iter().flatten();
        for (_, q) in quantities {
            if let serde_json::Value::Number(n) = q {
                *q = n.to_string().into();
            }
        }
    }
}

/// A volume's file modes as numbers: its source's `defaultMode` and `items[].mode`, and a
/// projected volume's sources' `items[].mode` (nothing else: a CSI volume's attributes are text).
fn file_modes(volume: &mut serde_json::Value) {
    fn octal_at(obj: &mut serde_json::Value, key: &str) {
        if let Some(v) = obj.get_mut(key)
            && let Some(n) = v.as_str().and_then(octal_mode)
        {
            *v = n.into();
        }
    }
    fn item_modes(source: &mut serde_json::Value) {
        for item in source.get_mut("items").and_then(|i| i.as_array_mut()).into_iter().flatten() {
            octal_at(item, "mode");
        }
    }
    let Some(sources) = volume.as_object_mut() else { return };
    for (kind, source) in sources.iter_mut() {
        octal_at(source, "defaultMode");
        item_modes(source);
        if kind == "projected" {
            for inner in source.get_mut("sources").and_then(|s| s.as_array_mut()).into_iter().flatten() {
                inner.as_object_mut().into_iter().flat_map(|m| m.values_mut()).for_each(item_modes);
            }
        }
    }
}

/// `0400` → 256: a plain YAML 1.1 octal (a mode is never text to Kubernetes).
fn octal_mode(text: &str) -> Option<u32> {
    let digits = text.strip_prefix('0').filter(|d| !d.is_empty() && d.len() <= 4)?;
    u32::from_str_radix(digits, 8).ok()
}

/// Writes out the default `protocol: TCP` of every Service port and container port that leaves
/// it out. The same object to the server (TCP is its default), but Kubernetes before 1.21 cannot
/// server-side apply a port list whose entries omit a key of the list (500 "associative list
/// with keys has an element that omits key field \"protocol\"").
pub fn default_port_protocols(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key == "ports"
                    && let Some(list) = v.as_array_mut()
                {
                    for p in list.iter_mut().filter_map(|p| p.as_object_mut()) {
                        // Service ports have `port`, container ports `containerPort`.
                        if (p.contains_key("port") || p.contains_key("containerPort")) && !p.contains_key("protocol") {
                            p.insert("protocol".into(), "TCP".into());
                        }
                    }
                } else {
                    default_port_protocols(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(default_port_protocols),
        _ => {}
    }
}

/// Sets `var` to `value` in the environment of the workload's `container` (replacing it when
/// the manifest sets it already).
fn set_env(workload: &mut serde_json::Value, container: &str, var: &str, value: &str) {
    let Some(containers) = workload.pointer_mut("/spec/template/spec/containers").and_then(|c| c.as_array_mut()) else {
        return;
    };
    for c in containers.iter_mut().filter(|c| c["name"] == container) {
        let entry = serde_json::json!({"name": var, "value": value});
        match c["env"].as_array_mut() {
            Some(env) => match env.iter_mut().find(|e| e["name"] == var) {
                Some(e) => *e = entry,
                None => env.push(entry),
            },
            None => c["env"] = serde_json::json!([entry]),
        }
    }
}

/// Labels `obj` as ksctl's and as part of `stack` (the label pruning and `kubectl get -l` use).
pub fn own(obj: &mut DynamicObject, stack: &str) {
    let labels = obj.metadata.labels.get_or_insert_with(Default::default);
    labels.insert("app.kubernetes.io/managed-by".into(), "ksctl".into());
    labels.insert(PART_OF.into(), stack.into());
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
pub(crate) struct Resolver<'a> {
    client: &'a kube::Client,
    /// Where namespaced objects that name no namespace go (the client's default otherwise).
    namespace: Option<&'a str>,
    seen: HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>,
}

impl<'a> Resolver<'a> {
    pub(crate) fn new(client: &'a kube::Client) -> Self {
        Self { client, namespace: None, seen: HashMap::new() }
    }

    /// A resolver for `stack`'s objects.
    pub(crate) fn of(client: &'a kube::Client, stack: &Stack) -> Self {
        Self { namespace: stack.namespace, ..Self::new(client) }
    }

    pub(crate) async fn api(&mut self, obj: &DynamicObject) -> Result<Api<DynamicObject>, PhaseError> {
        let types = obj.types.as_ref().expect("checked by Stack::objects");
        let gvk =
            GroupVersionKind::try_from(types).map_err(|e| PhaseError::permanent(format!("{}: {e}", describe(obj))))?;
        if !self.seen.contains_key(&gvk) {
            let found = kube::discovery::pinned_kind(self.client, &gvk).await.map_err(|e| match e {
                // The group is served but not this kind (a typo, or a kind of another
                // version): waiting will not change that.
                kube::Error::Discovery(d) => {
                    PhaseError::permanent(format!("the API server does not serve {}: {d}", describe(obj)))
                }
                e => api_err(&format!("the API server does not serve {}", describe(obj)), e),
            })?;
            self.seen.insert(gvk.clone(), found);
        }
        let (ar, caps) = &self.seen[&gvk];
        Ok(match (&caps.scope, &obj.metadata.namespace) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, ar),
            (Scope::Namespaced, None) => match self.namespace {
                Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
                None => Api::default_namespaced_with(self.client.clone(), ar),
            },
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
    let objects = stack.objects().map_err(PhaseError::permanent)?;
    apply_objects(client, stack, &objects, dry_run).await?;
    Ok(objects.len())
}

/// [`apply_with`] for some of `stack`'s objects (in the order given).
pub async fn apply_objects(
    client: &kube::Client,
    stack: &Stack,
    objects: &[DynamicObject],
    dry_run: bool,
) -> Result<(), PhaseError> {
    let mut resolver = Resolver::of(client, stack);
    for obj in objects {
        apply_object(&mut resolver, obj, dry_run).await?;
    }
    Ok(())
}

/// Server-side applies one object under ksctl's field manager, taking back fields others took
/// (`dry_run`: validated and admitted, not stored).
pub(crate) async fn apply_object(
    resolver: &mut Resolver<'_>,
    obj: &DynamicObject,
    dry_run: bool,
) -> Result<(), PhaseError> {
    let api = resolver.api(obj).await?;
    let name = obj.metadata.name.as_deref().expect("checked");
    let err = |e| api_err(&format!("applying {}", describe(obj)), e);
    if without_apply(obj) {
        // Created, or merge-patched to the manifest (a patch that changes nothing is a no-op).
        match api.get_opt(name).await.map_err(err)? {
            None => {
                let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), dry_run };
                api.create(&pp, obj).await
            }
            Some(_) => {
                let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), dry_run, ..Default::default() };
                api.patch(name, &pp, &Patch::Merge(obj)).await
            }
        }
        .map_err(err)?;
    } else {
        let mut pp = PatchParams::apply(FIELD_MANAGER).force();
        pp.dry_run = dry_run;
        api.patch(name, &pp, &Patch::Apply(obj)).await.map_err(err)?;
    }
    Ok(())
}

/// Kinds that old servers cannot server-side apply: the aggregator's API server (APIService)
/// gained it in Kubernetes 1.21; 1.20 panics on the request.
fn without_apply(obj: &DynamicObject) -> bool {
    obj.types.as_ref().is_some_and(|t| t.api_version.starts_with("apiregistration.k8s.io/"))
}

/// Deletes every object of `stack`, last first. "Not found" is done; so is a kind the server no
/// longer serves (its objects went with it).
pub async fn remove(client: &kube::Client, stack: &Stack) -> Result<usize, PhaseError> {
    let objects = stack.objects().map_err(PhaseError::permanent)?;
    let mut resolver = Resolver::of(client, stack);
    for obj in objects.iter().rev() {
        delete_object(&mut resolver, obj).await?;
    }
    Ok(objects.len())
}

/// Deletes one object. "Not found" is done; so is a kind the server no longer serves (its
/// objects went with it).
pub(crate) async fn delete_object(resolver: &mut Resolver<'_>, obj: &DynamicObject) -> Result<(), PhaseError> {
    let api = match resolver.api(obj).await {
        Ok(api) => api,
        Err(e) if e.is_permanent() => return Ok(()),
        Err(e) => return Err(e),
    };
    match api.delete(obj.metadata.name.as_deref().expect("checked"), &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(api_err(&format!("deleting {}", describe(obj)), e)),
    }
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
        "StatefulSet" => {
            let Some(d) = Api::<StatefulSet>::namespaced(client.clone(), ns).get_opt(name).await.map_err(read_err)?
            else {
                return Ok(Some("missing".into()));
            };
            let spec = d.spec;
            let st = d.status.unwrap_or_default();
            // `availableReplicas` came with Kubernetes 1.22; before, ready is what there is.
            let available = st.available_replicas.or(st.ready_replicas).unwrap_or(0);
            let why = not_ready(
                d.metadata.generation,
                st.observed_generation,
                spec.replicas.unwrap_or(1),
                st.updated_replicas.unwrap_or(0),
                available,
            );
            (why, selector(spec.selector.match_labels.as_ref()))
        }
        other => return Err(PhaseError::permanent(format!("no readiness rule for {other}"))),
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
    let mut pauses = ksctl_core::backoff::poll(Duration::from_secs(1)).build();
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
            return Err(PhaseError::retryable(format!(
                "not ready after {} s: {}",
                timeout.as_secs(),
                pending.join("; ")
            )));
        }
        tokio::time::sleep(pauses.next().unwrap_or_default()).await;
    }
}

/// The Deployments, DaemonSets and StatefulSets of a stack, as [`wait_ready`] takes them.
pub fn workloads(stack: &Stack) -> Result<Vec<(String, String, String)>, PhaseError> {
    Ok(workloads_in(stack, &stack.objects().map_err(PhaseError::permanent)?))
}

/// [`workloads_of`] the stack's already parsed `objects`, those without a namespace in the
/// stack's default one.
pub fn workloads_in(stack: &Stack, objects: &[DynamicObject]) -> Vec<(String, String, String)> {
    workloads_of(objects)
        .into_iter()
        .map(|(kind, ns, name)| {
            let ns = if ns.is_empty() { stack.namespace.unwrap_or_default().to_string() } else { ns };
            (kind, ns, name)
        })
        .collect()
}

/// The Deployments, DaemonSets and StatefulSets among `objects`, as [`wait_ready`] takes them.
pub fn workloads_of(objects: &[DynamicObject]) -> Vec<(String, String, String)> {
    objects
        .iter()
        .filter_map(|o| {
            let kind = o.types.as_ref()?.kind.clone();
            matches!(kind.as_str(), "Deployment" | "DaemonSet" | "StatefulSet").then(|| {
                (kind, o.metadata.namespace.clone().unwrap_or_default(), o.metadata.name.clone().unwrap_or_default())
            })
        })
        .collect()
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
        for c in [Cni::Flannel, Cni::Calico, Cni::Cilium] {
            let mut listed: Vec<String> = ksctl_core::addons::cni_images(c).iter().map(|s| s.to_string()).collect();
            listed.sort();
            assert_eq!(images(&cni(c).unwrap()), listed, "{c}");
        }
        assert!(cni(Cni::None).is_none());
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
    fn calico_and_cilium_use_the_clusters_pod_cidr() {
        let calico = cni(Cni::Calico).unwrap().objects().unwrap();
        let node = calico.iter().find(|o| describe(o) == "DaemonSet kube-system/calico-node").unwrap();
        let containers = node.data["spec"]["template"]["spec"]["containers"].as_array().unwrap();
        let env = containers.iter().find(|c| c["name"] == "calico-node").unwrap()["env"].as_array().unwrap();
        let set = |var: &str| -> Vec<&str> {
            env.iter().filter(|e| e["name"] == var).map(|e| e["value"].as_str().unwrap()).collect()
        };
        assert_eq!(set("CALICO_IPV4POOL_CIDR"), [ksctl_core::spec::POD_SUBNET]);
        assert_eq!((set("CALICO_IPV4POOL_IPIP"), set("CALICO_IPV4POOL_VXLAN")), (vec!["Never"], vec!["Always"]));
        // Only there: the upstream file leaves it commented out.
        assert!(cni(Cni::Calico).unwrap().yaml.contains("# - name: CALICO_IPV4POOL_CIDR"));
        let cilium = cni(Cni::Cilium).unwrap().objects().unwrap();
        let config = cilium.iter().find(|o| describe(o) == "ConfigMap kube-system/cilium-config").unwrap();
        assert_eq!(config.data["data"]["ipam"], "kubernetes");
        assert_eq!(config.data["data"]["tunnel-protocol"], "vxlan");
        // No private key is embedded: Hubble's certificates are made in the cluster.
        assert!(cilium.iter().all(|o| o.types.as_ref().unwrap().kind != "Secret"));
        let ready = |s: &Stack| -> Vec<String> {
            workloads(s).unwrap().into_iter().map(|(k, ns, n)| format!("{k} {ns}/{n}")).collect()
        };
        assert_eq!(
            ready(&cni(Cni::Calico).unwrap()),
            ["DaemonSet kube-system/calico-node", "Deployment kube-system/calico-kube-controllers"]
        );
        assert_eq!(
            ready(&cni(Cni::Cilium).unwrap()),
            [
                "DaemonSet kube-system/cilium",
                "DaemonSet kube-system/cilium-envoy",
                "Deployment kube-system/cilium-operator"
            ]
        );
    }

    #[test]
    fn modes_and_quantities_mean_what_kubernetes_reads() {
        let mut v = serde_json::json!({"spec": {"template": {"spec": {
            "volumes": [{"name": "a", "projected": {"defaultMode": "0400", "sources": [{"secret": {"items": [{"key": "k", "path": "p", "mode": "0644"}]}}]}},
                        {"name": "b", "secret": {"defaultMode": 420}}],
            "containers": [{"resources": {"limits": {"cpu": 1, "memory": "128Mi"}, "requests": {"cpu": 0.5}},
                            "ports": [{"containerPort": 80}]}]
        }}}});
        normalize("DaemonSet", &mut v);
        let spec = &v["spec"]["template"]["spec"];
        assert_eq!(spec["volumes"][0]["projected"]["defaultMode"], 256);
        assert_eq!(spec["volumes"][0]["projected"]["sources"][0]["secret"]["items"][0]["mode"], 420);
        assert_eq!(spec["volumes"][1]["secret"]["defaultMode"], 420);
        let r = &spec["containers"][0]["resources"];
        assert_eq!(
            (&r["limits"]["cpu"], &r["limits"]["memory"], &r["requests"]["cpu"]),
            (&"1".into(), &"128Mi".into(), &"0.5".into())
        );
        assert_eq!(spec["containers"][0]["ports"][0]["protocol"], "TCP");
        // Only Kubernetes' own types: a ConfigMap's data and a custom resource stay as written.
        let mut cm = serde_json::json!({"data": {"mode": "0644", "defaultMode": "0400"}});
        normalize("ConfigMap", &mut cm);
        assert_eq!(cm["data"]["mode"], "0644");
        let mut cr = serde_json::json!({"spec": {"ports": [{"port": 80}], "limits": {"cpu": 1},
            "template": {"spec": {"containers": [{"resources": {"limits": {"cpu": 1}}}]}}}});
        let before = cr.clone();
        normalize("Widget", &mut cr);
        assert_eq!(cr, before);
        // Nothing is added to what an object lacks.
        let mut bare = serde_json::json!({"spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}});
        let before = bare.clone();
        normalize("Deployment", &mut bare);
        assert_eq!(bare, before);
        // A CSI volume's attributes are text, whatever their names.
        let mut csi = serde_json::json!({"spec": {"template": {"spec": {"volumes": [
            {"name": "c", "csi": {"driver": "d", "volumeAttributes": {"mode": "0755"}}}]}}}});
        normalize("Deployment", &mut csi);
        assert_eq!(csi["spec"]["template"]["spec"]["volumes"][0]["csi"]["volumeAttributes"]["mode"], "0755");
        let mut sts = serde_json::json!({"spec": {"volumeClaimTemplates": [{"spec": {"resources": {"requests": {"storage": 1}}}}]}});
        normalize("StatefulSet", &mut sts);
        assert_eq!(sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"], "1");
        let mut odd = serde_json::json!({"metadata": {"name": "x"}});
        normalize("Job", &mut odd);
        normalize("Service", &mut odd);
        assert_eq!(odd, serde_json::json!({"metadata": {"name": "x"}}));
        // serde_yaml reads a plain 0400 as text, as it would a quoted one: that is why.
        let y: serde_json::Value = serde_yaml::from_str("defaultMode: 0400").unwrap();
        assert_eq!(y["defaultMode"], "0400");
        assert_eq!(octal_mode("0755"), Some(493));
        assert_eq!(octal_mode("0"), None);
        assert_eq!(octal_mode("0800"), None);
    }

    #[test]
    fn ports_get_their_default_protocol_written_out() {
        let mut v = serde_json::json!({"spec": {
            "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}],
            "template": {"spec": {"containers": [{"ports": [{"containerPort": 8080}]}]}},
        }});
        default_port_protocols(&mut v);
        assert_eq!(v["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(v["spec"]["ports"][1]["protocol"], "UDP");
        assert_eq!(v["spec"]["template"]["spec"]["containers"][0]["ports"][0]["protocol"], "TCP");
    }

    #[test]
    fn the_catalog_lists_the_workloads_an_enable_waits_for() {
        for a in ksctl_core::addons::CATALOG {
            let stack = addon(a.name).unwrap();
            let found: Vec<String> =
                workloads(&stack).unwrap().into_iter().map(|(k, ns, n)| format!("{k} {ns}/{n}")).collect();
            assert_eq!(found, a.ready, "{}", a.name);
            assert!(
                stack.objects().unwrap().iter().all(|o| o
                    .metadata
                    .namespace
                    .as_deref()
                    .is_none_or(|ns| { ns == a.namespace || (a.name == "cert-manager" && ns == "kube-system") })),
                "{} lives in {}",
                a.name,
                a.namespace
            );
        }
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
