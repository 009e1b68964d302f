//! The real Kubernetes API, with `kube`, for clusters whose kubeconfig ksctl holds (self-managed
//! clusters bootstrapped over SSH). Everything is server-side applied under one field manager and
//! labelled as ksctl's, so installing twice changes nothing.
//!
//! Installed: the `ksctl-system` namespace, the agent's service account with least-privilege
//! RBAC, the `ClusterAddon` and `Stack` CRDs (from Rust types, waited on until established), the
//! state importer's immutable `cluster-config` ConfigMap (replaced when the cluster's state
//! changes), the agent (Secret with its bus settings, Deployment, Service), flannel on kubeadm
//! clusters, and the enabled addons; then the install waits until the workloads are ready.
use crate::ClusterApi;
use crate::cluster_addon::{self, SpecChange};
use crate::crds::{ClusterAddon, Stack, StackComponent, StackObject, StackSpec};
use crate::credentials::AgentCredentials;
use crate::manifests;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use ksctl_bus::auth::Creds;
use ksctl_core::apps::{ObjectRef, left_out, with_all};
use ksctl_core::artifacts::Artifacts;
use ksctl_core::keys;
use ksctl_core::records::{BootstrapRecord, ClusterRecord, InfraRecord, K8sRecord};
use ksctl_core::spec::ClusterType;
use ksctl_runtime::{PhaseCtx, PhaseError, read_record, update_record};
use ksctl_store::DynStore;
use kube::CustomResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use std::collections::BTreeMap;
use std::time::Duration;

pub const NAMESPACE: &str = ksctl_core::addons::KSCTL_NAMESPACE;
pub const FIELD_MANAGER: &str = "ksctl";
pub const AGENT: &str = "ksctl-agent";
pub const CLUSTER_CONFIG: &str = "cluster-config";
pub const AGENT_BUS_SECRET: &str = "ksctl-agent-bus";
/// The agent's /livez, /readyz and /metrics port.
pub const AGENT_HTTP_PORT: i32 = 9100;
pub use ksctl_core::addons::CLUSTER_ADDON_OBJECT as CLUSTER_ADDONS;
/// How long a cluster may take to answer before uninstall gives up on it.
const UNREACHABLE_AFTER: Duration = Duration::from_secs(20);

pub struct KubeApi {
    store: DynStore,
    settings: Settings,
    /// Mints each agent its own NATS credential (none: the bus has no authentication).
    credentials: Option<std::sync::Arc<AgentCredentials>>,
    /// Asks the cloud-controller for fresh tokens (EKS).
    bus: async_nats::Client,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub drain_timeout: Duration,
    pub ready_timeout: Duration,
    pub agent: AgentSettings,
    pub artifacts: Artifacts,
}

/// How the in-cluster agent runs and reaches the bus.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub image: String,
    pub nats_url: String,
    /// The CA (PEM) that signed the NATS servers' certificate, for `tls://` URLs.
    pub nats_ca: Option<String>,
}

/// What an install applies besides the fixed objects.
pub struct Install<'a> {
    pub cluster_id: &'a str,
    /// Where the cluster pulls images from (flannel, addons; the agent's is in `agent`).
    pub artifacts: &'a Artifacts,
    /// The cluster-config ConfigMap's data.
    pub state: BTreeMap<String, String>,
    pub agent: &'a AgentSettings,
    /// The agent's own NATS credential, minted for this install (none: a bus without
    /// authentication, or a test).
    pub credential: Option<&'a Creds>,
}

pub(crate) fn labels() -> BTreeMap<String, String> {
    [("app.kubernetes.io/managed-by".to_string(), "ksctl".to_string())].into()
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(str::to_string),
        labels: Some(labels()),
        ..Default::default()
    }
}

/// A failed API call: server errors and unreachable clusters are retried, refusals are not.
pub(crate) fn api_err(what: &str, e: kube::Error) -> PhaseError {
    let text = format!("{what}: {e}");
    match &e {
        // A namespace still being deleted (say, an addon's, disabled a moment ago) refuses new
        // objects until its controller has emptied it: that passes.
        kube::Error::Api(s) if s.code == 403 && s.message.contains("because it is being terminated") => {
            PhaseError::Retryable(text)
        }
        kube::Error::Api(s) if s.code < 500 && s.code != 429 => PhaseError::Permanent(text),
        _ => PhaseError::Retryable(text),
    }
}

/// The agent's permissions, each rule for one thing it does (documented in the README):
/// read Nodes (inventory, readiness, version drift), read our own namespace's ConfigMaps,
/// Deployments and Pods (the health of ksctl's components) and ClusterAddons (the addons the
/// cluster asks for, put into its heartbeats). Nothing is writable.
pub fn agent_rules() -> (Vec<PolicyRule>, Vec<PolicyRule>) {
    let read = || vec!["get".to_string(), "list".to_string(), "watch".to_string()];
    let cluster = vec![PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["nodes".into()]),
        verbs: read(),
        ..Default::default()
    }];
    let namespaced = vec![
        PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into(), "pods".into()]),
            verbs: read(),
            ..Default::default()
        },
        PolicyRule {
            api_groups: Some(vec!["apps".into()]),
            resources: Some(vec!["deployments".into()]),
            verbs: read(),
            ..Default::default()
        },
        PolicyRule {
            api_groups: Some(vec!["manage.ksctl.io".into()]),
            resources: Some(vec!["clusteraddons".into()]),
            verbs: read(),
            ..Default::default()
        },
    ];
    (cluster, namespaced)
}

/// The non-secret state the cluster carries about itself (the state importer's ConfigMap).
pub fn cluster_config(ctx: &PhaseCtx<'_>, infra: &InfraRecord) -> BTreeMap<String, String> {
    let c = ctx.cluster;
    let nodes: Vec<serde_json::Value> = infra
        .vms
        .values()
        .map(|v| serde_json::json!({"name": v.name, "role": v.role, "private_ip": v.private_ip}))
        .collect();
    [
        ("cluster_id", c.id.to_string()),
        ("provider", c.provider.to_string()),
        ("region", c.spec.region.clone()),
        ("cluster_type", c.cluster_type.as_str().to_string()),
        ("distro", c.spec.kubernetes_distro.clone().unwrap_or_default()),
        ("kubernetes_version", c.spec.kubernetes_version.clone()),
        ("etcd_version", c.spec.etcd_version.clone().unwrap_or_default()),
        ("nodes", serde_json::to_string(&nodes).expect("json")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Server-side applies `obj` under ksctl's field manager (taking over conflicting fields:
/// these objects are ksctl's alone).
async fn apply<K>(api: &Api<K>, name: &str, obj: &K) -> Result<(), PhaseError>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(name, &pp, &Patch::Apply(obj)).await.map_err(|e| api_err(&format!("applying {name}"), e))?;
    Ok(())
}

/// How long a new CRD may take to be established.
const CRD_ESTABLISHED_WITHIN: Duration = Duration::from_secs(30);

/// Applies a CRD made from our Rust types and waits until the API server serves it.
async fn apply_crd(client: &kube::Client, mut crd: CustomResourceDefinition) -> Result<(), PhaseError> {
    let name = crd.metadata.name.clone().expect("generated CRDs are named");
    crd.metadata.labels = Some(labels());
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    apply(&api, &name, &crd).await?;
    let deadline = tokio::time::Instant::now() + CRD_ESTABLISHED_WITHIN;
    loop {
        let cur = api.get(&name).await.map_err(|e| api_err(&format!("reading CRD {name}"), e))?;
        let conditions = cur.status.and_then(|s| s.conditions).unwrap_or_default();
        if conditions.iter().any(|c| c.type_ == "Established" && c.status == "True") {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let why: Vec<String> = conditions
                .iter()
                .map(|c| format!("{}={} ({})", c.type_, c.status, c.message.clone().unwrap_or_default()))
                .collect();
            return Err(PhaseError::Retryable(format!(
                "CRD {name} not established after {} s: {}",
                CRD_ESTABLISHED_WITHIN.as_secs(),
                why.join("; ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Applies one component of [`crate::install_plan`].
pub async fn install_component(
    client: &kube::Client,
    component: &str,
    install: &Install<'_>,
) -> Result<(), PhaseError> {
    let rbac = "rbac.authorization.k8s.io";
    let subject = || {
        vec![Subject {
            kind: "ServiceAccount".into(),
            name: AGENT.into(),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        }]
    };
    match component {
        "namespace/ksctl-system" => {
            let ns = Namespace { metadata: meta(NAMESPACE, None), ..Default::default() };
            apply(&Api::<Namespace>::all(client.clone()), NAMESPACE, &ns).await
        }
        "serviceaccount/ksctl-agent" => {
            let sa = ServiceAccount { metadata: meta(AGENT, Some(NAMESPACE)), ..Default::default() };
            apply(&Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE), AGENT, &sa).await
        }
        "rbac/ksctl-agent" => {
            let (cluster_rules, ns_rules) = agent_rules();
            let cr = ClusterRole { metadata: meta(AGENT, None), rules: Some(cluster_rules), ..Default::default() };
            apply(&Api::<ClusterRole>::all(client.clone()), AGENT, &cr).await?;
            let crb = ClusterRoleBinding {
                metadata: meta(AGENT, None),
                role_ref: RoleRef { api_group: Some(rbac.into()), kind: "ClusterRole".into(), name: AGENT.into() },
                subjects: Some(subject()),
            };
            apply(&Api::<ClusterRoleBinding>::all(client.clone()), AGENT, &crb).await?;
            let role = Role { metadata: meta(AGENT, Some(NAMESPACE)), rules: Some(ns_rules) };
            apply(&Api::<Role>::namespaced(client.clone(), NAMESPACE), AGENT, &role).await?;
            let rb = RoleBinding {
                metadata: meta(AGENT, Some(NAMESPACE)),
                role_ref: RoleRef { api_group: Some(rbac.into()), kind: "Role".into(), name: AGENT.into() },
                subjects: Some(subject()),
            };
            apply(&Api::<RoleBinding>::namespaced(client.clone(), NAMESPACE), AGENT, &rb).await
        }
        "crd/clusteraddons.manage.ksctl.io" => apply_crd(client, ClusterAddon::crd()).await,
        "crd/stacks.app.ksctl.io" => apply_crd(client, Stack::crd()).await,
        "configmap/cluster-config" => import_state(client, install.state.clone()).await,
        "secret/ksctl-agent-bus" => {
            let secret = agent_secret(install.cluster_id, install.agent, install.credential);
            apply(&Api::<Secret>::namespaced(client.clone(), NAMESPACE), AGENT_BUS_SECRET, &secret).await
        }
        "deployment/ksctl-agent" => {
            let user = match install.credential {
                Some(c) => Some(c.public_key().map_err(|e| PhaseError::Permanent(e.to_string()))?),
                None => None,
            };
            let d = agent_deployment(&install.agent.image, user.as_deref());
            apply(&Api::<Deployment>::namespaced(client.clone(), NAMESPACE), AGENT, &d).await
        }
        "service/ksctl-agent" => {
            apply(&Api::<Service>::namespaced(client.clone(), NAMESPACE), AGENT, &agent_service()).await
        }
        other => match (other.strip_prefix("addon/"), other.strip_prefix("cni/").and_then(manifests::cni)) {
            (Some(name), _) => enable_addon(client, name, install.artifacts).await.map(|_| ()),
            (_, Some(cni)) => manifests::apply(client, &cni.through(install.artifacts)).await.map(|_| ()),
            _ => Err(PhaseError::Permanent(format!("unknown component {other}"))),
        },
    }
}

/// The agent's bus settings: the NATS URL as the cluster reaches it, the cluster it reports
/// for, and its own credential when the bus requires one.
pub fn agent_secret(cluster_id: &str, agent: &AgentSettings, credential: Option<&Creds>) -> Secret {
    let mut data: BTreeMap<String, ByteString> = [
        ("KSCTL_NATS_URL".to_string(), ByteString(agent.nats_url.clone().into_bytes())),
        ("KSCTL_CLUSTER_ID".to_string(), ByteString(cluster_id.as_bytes().to_vec())),
    ]
    .into();
    if let Some(c) = credential {
        data.insert("KSCTL_NATS_CREDS".into(), ByteString(c.file_text().into_bytes()));
    }
    if let Some(ca) = &agent.nats_ca {
        data.insert("KSCTL_NATS_CA".into(), ByteString(ca.clone().into_bytes()));
    }
    Secret { metadata: meta(AGENT_BUS_SECRET, Some(NAMESPACE)), data: Some(data), ..Default::default() }
}

fn agent_selector() -> serde_json::Value {
    serde_json::json!({"app.kubernetes.io/name": AGENT})
}

/// One agent replica: the agent's service account, its settings from the Secret, non-root with
/// a read-only root filesystem, probed on its HTTP port. It tolerates the control planes'
/// `CriticalAddonsOnly` taint so it runs on a cluster without workers too. `nats_user`, the
/// public key of the credential in the Secret, is a pod annotation: a new credential restarts
/// the pod, which reads it at start.
pub fn agent_deployment(image: &str, nats_user: Option<&str>) -> Deployment {
    let mut pod_labels = agent_selector();
    pod_labels["app.kubernetes.io/managed-by"] = "ksctl".into();
    let probe = |path: &str| serde_json::json!({"httpGet": {"path": path, "port": "http"}, "periodSeconds": 10});
    let mut spec = serde_json::json!({
        "replicas": 1,
        "selector": {"matchLabels": agent_selector()},
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": {
                "serviceAccountName": AGENT,
                "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
                "containers": [{
                    "name": "agent",
                    "image": image,
                    "command": ["ksctl-agent"],
                    "envFrom": [{"secretRef": {"name": AGENT_BUS_SECRET}}],
                    "env": [
                        {"name": "KSCTL_HTTP_ADDR", "value": format!("0.0.0.0:{AGENT_HTTP_PORT}")},
                        {"name": "RUST_LOG", "value": "info"}
                    ],
                    // Old API servers need the protocol, a key of the list, spelled out for apply.
                    "ports": [{"name": "http", "containerPort": AGENT_HTTP_PORT, "protocol": "TCP"}],
                    "livenessProbe": probe("/livez"),
                    "readinessProbe": probe("/readyz"),
                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true,
                        "capabilities": {"drop": ["ALL"]}
                    }
                }]
            }
        }
    });
    // No empty annotations map: the server stores none, so applying `{}` would differ from
    // what is stored every time, and a no-op apply in a later second would write the object.
    if let Some(u) = nats_user {
        spec["template"]["metadata"]["annotations"] = serde_json::json!({"ksctl.io/nats-user": u});
    }
    Deployment {
        metadata: meta(AGENT, Some(NAMESPACE)),
        spec: serde_json::from_value(spec).expect("a valid DeploymentSpec"),
        ..Default::default()
    }
}

/// The agent's metrics and health, for Prometheus inside the cluster.
pub fn agent_service() -> Service {
    let spec = serde_json::json!({
        "selector": agent_selector(),
        "ports": [{"name": "http", "port": AGENT_HTTP_PORT, "targetPort": "http", "protocol": "TCP"}]
    });
    Service {
        metadata: meta(AGENT, Some(NAMESPACE)),
        spec: Some(serde_json::from_value(spec).expect("a valid ServiceSpec")),
        ..Default::default()
    }
}

/// Applies an addon's pinned manifests, then deletes what an earlier pin of it applied and this
/// one has not (an upgrade). Its `Stack` (`ksctl-system/<addon>`) carries the inventory: written
/// with the new objects added before any is applied, so a crash cannot leave an object ksctl
/// does not know; trimmed to them once the old ones are gone.
/// Returns the addon's workloads to wait for (from the objects it parsed once).
pub async fn enable_addon(
    client: &kube::Client,
    name: &str,
    artifacts: &Artifacts,
) -> Result<Vec<(String, String, String)>, PhaseError> {
    let stack = addon_stack(name)?.through(artifacts);
    let objects = stack.objects().map_err(PhaseError::Permanent)?;
    let wanted: Vec<ObjectRef> = objects.iter().map(object_ref).collect();
    let before = addon_inventory(client, name).await?;
    record_addon_stack(client, name, &with_all(&before, &wanted)).await?;
    manifests::apply_objects(client, &stack, &objects, false).await?;
    let mut resolver = manifests::Resolver::of(client, &stack);
    crate::apps::prune(&mut resolver, &left_out(&before, &wanted), name).await?;
    record_addon_stack(client, name, &wanted).await?;
    Ok(manifests::workloads_in(&stack, &objects))
}

/// Deletes every object of the addon — its pinned manifests' and whatever else its inventory
/// holds — last applied first, then its `Stack`.
pub async fn disable_addon(client: &kube::Client, name: &str) -> Result<(), PhaseError> {
    let stack = addon_stack(name)?;
    let inventory = addon_inventory(client, name).await?;
    let current: Vec<ObjectRef> = stack.objects().map_err(PhaseError::Permanent)?.iter().map(object_ref).collect();
    let mut resolver = manifests::Resolver::of(client, &stack);
    crate::apps::prune(&mut resolver, &left_out(&inventory, &current), name).await?;
    manifests::remove(client, &stack).await?;
    match Api::<Stack>::namespaced(client.clone(), NAMESPACE).delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(api_err(&format!("deleting Stack {name}"), e)),
    }
}

fn object_ref(obj: &kube::api::DynamicObject) -> ObjectRef {
    let t = obj.types.clone().unwrap_or_default();
    ObjectRef {
        api_version: t.api_version,
        kind: t.kind,
        namespace: obj.metadata.namespace.clone(),
        name: obj.metadata.name.clone().unwrap_or_default(),
    }
}

/// The objects the addon's `Stack` says ksctl may have applied (none without one, or from a
/// ksctl that did not record them).
async fn addon_inventory(client: &kube::Client, name: &str) -> Result<Vec<ObjectRef>, PhaseError> {
    let cur = Api::<Stack>::namespaced(client.clone(), NAMESPACE)
        .get_opt(name)
        .await
        .map_err(|e| api_err(&format!("reading Stack {name}"), e))?;
    Ok(cur.map(|s| s.spec.objects.into_iter().map(ObjectRef::from).collect()).unwrap_or_default())
}

async fn record_addon_stack(client: &kube::Client, name: &str, objects: &[ObjectRef]) -> Result<(), PhaseError> {
    let version = ksctl_core::addons::find(name).map(|a| a.version).unwrap_or_default();
    let mut obj = Stack::new(
        name,
        StackSpec {
            stack_name: name.into(),
            components: vec![StackComponent { name: name.into(), version: version.into() }],
            objects: objects.iter().map(StackObject::from).collect(),
        },
    );
    obj.metadata.namespace = Some(NAMESPACE.into());
    obj.metadata.labels = Some(labels());
    apply(&Api::<Stack>::namespaced(client.clone(), NAMESPACE), name, &obj).await
}

fn addon_stack(name: &str) -> Result<manifests::Stack, PhaseError> {
    manifests::addon(name).ok_or_else(|| PhaseError::Permanent(format!("no manifests for addon {name}")))
}

/// The workloads of a plan whose readiness the install waits for.
pub fn plan_workloads(plan: &[String]) -> Result<Vec<(String, String, String)>, PhaseError> {
    let mut out = Vec::new();
    for c in plan {
        match c.as_str() {
            "deployment/ksctl-agent" => out.push(("Deployment".into(), NAMESPACE.into(), AGENT.into())),
            other => {
                if let Some(name) = other.strip_prefix("addon/") {
                    out.extend(manifests::workloads(&addon_stack(name)?)?);
                } else if let Some(cni) = other.strip_prefix("cni/").and_then(manifests::cni) {
                    out.extend(manifests::workloads(&cni)?);
                }
            }
        }
    }
    Ok(out)
}

/// The immutable `cluster-config` ConfigMap: created, left alone when equal, replaced when the
/// state changed (an immutable ConfigMap cannot be updated).
async fn import_state(client: &kube::Client, data: BTreeMap<String, String>) -> Result<(), PhaseError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    if let Some(cur) = api.get_opt(CLUSTER_CONFIG).await.map_err(|e| api_err("reading cluster-config", e))? {
        if cur.data.as_ref() == Some(&data) {
            return Ok(());
        }
        api.delete(CLUSTER_CONFIG, &DeleteParams::default())
            .await
            .map_err(|e| api_err("replacing cluster-config", e))?;
    }
    let cm = ConfigMap {
        metadata: meta(CLUSTER_CONFIG, Some(NAMESPACE)),
        data: Some(data),
        immutable: Some(true),
        ..Default::default()
    };
    apply(&api, CLUSTER_CONFIG, &cm).await
}

/// Removes ksctl's objects: the addons' and CNI's objects (`stacks`), the agent's cluster RBAC,
/// the CRDs (and so every ksctl custom resource) and the namespace (which takes everything in it
/// along, finalized by the controller manager). "Not found" is done.
pub async fn uninstall_objects(client: &kube::Client, stacks: &[manifests::Stack]) -> Result<(), PhaseError> {
    for stack in stacks {
        manifests::remove(client, stack).await?;
    }
    let dp = DeleteParams::default();
    let gone = |r: Result<(), kube::Error>, what: &str| match r {
        Ok(()) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(api_err(&format!("deleting {what}"), e)),
    };
    gone(Api::<ClusterRoleBinding>::all(client.clone()).delete(AGENT, &dp).await.map(|_| ()), "clusterrolebinding")?;
    gone(Api::<ClusterRole>::all(client.clone()).delete(AGENT, &dp).await.map(|_| ()), "clusterrole")?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in [ClusterAddon::crd_name(), Stack::crd_name()] {
        gone(crds.delete(crd, &dp).await.map(|_| ()), crd)?;
    }
    gone(Api::<Namespace>::all(client.clone()).delete(NAMESPACE, &dp).await.map(|_| ()), "namespace")
}

/// Evicts a pod (policy/v1; servers before 1.22 only know policy/v1beta1 at the same path).
async fn evict(client: &kube::Client, ns: &str, name: &str) -> Result<(), PhaseError> {
    let path = format!("/api/v1/namespaces/{ns}/pods/{name}/eviction");
    let mut last = None;
    for version in ["policy/v1", "policy/v1beta1"] {
        let body =
            serde_json::json!({"apiVersion": version, "kind": "Eviction", "metadata": {"name": name, "namespace": ns}});
        let req = http::Request::post(&path)
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&body).expect("json"))
            .expect("request");
        match client.request::<serde_json::Value>(req).await {
            Ok(_) => return Ok(()),
            // The pod itself is gone.
            Err(kube::Error::Api(s)) if s.code == 404 && s.message.contains(&format!("\"{name}\"")) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 429 => {
                return Err(PhaseError::Retryable(format!(
                    "evicting {ns}/{name}: a disruption budget forbids it for now"
                )));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(api_err(&format!("evicting {ns}/{name}"), last.expect("tried")))
}

fn pod_name(p: &Pod) -> String {
    format!("{}/{}", p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default())
}

/// Cordons `node`, evicts its pods (DaemonSet pods stay, as with `kubectl drain`), waits up to
/// `timeout` for them to go, and deletes the Node. On a node whose kubelet is not Ready nobody
/// will confirm a graceful deletion: there a pod marked for deletion counts as gone.
pub async fn drain_node(client: &kube::Client, node: &str, timeout: Duration) -> Result<(), PhaseError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let Some(n) = nodes.get_opt(node).await.map_err(|e| api_err(&format!("reading node {node}"), e))? else {
        return Ok(());
    };
    let ready =
        n.status.and_then(|s| s.conditions).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let cordon = serde_json::json!({"spec": {"unschedulable": true}});
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&cordon))
        .await
        .map_err(|e| api_err(&format!("cordoning {node}"), e))?;
    let pods: Api<Pod> = Api::all(client.clone());
    let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let evictable =
        |p: &Pod| !p.metadata.owner_references.as_ref().is_some_and(|o| o.iter().any(|r| r.kind == "DaemonSet"));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let list = pods.list(&on_node).await.map_err(|e| api_err(&format!("listing pods on {node}"), e))?;
        let left: Vec<&Pod> = list
            .items
            .iter()
            .filter(|p| evictable(p))
            .filter(|p| ready || p.metadata.deletion_timestamp.is_none())
            .collect();
        if left.is_empty() {
            break;
        }
        for p in left.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            evict(
                client,
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default(),
            )
            .await?;
        }
        if tokio::time::Instant::now() >= deadline {
            let names: Vec<String> = left.iter().map(|p| pod_name(p)).collect();
            return Err(PhaseError::Retryable(format!(
                "draining {node}: pods still there after {} s: {}",
                timeout.as_secs(),
                names.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    match nodes.delete(node, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(api_err(&format!("deleting node {node}"), e)),
    }
}

/// A client configuration from a kubeconfig (YAML), with bounded connect and read times.
pub async fn config_from(kubeconfig: &str) -> Result<kube::Config, PhaseError> {
    let unusable = |e: String| PhaseError::Permanent(format!("the stored kubeconfig is unusable: {e}"));
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).map_err(|e| unusable(e.to_string()))?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.map_err(|e| unusable(e.to_string()))?;
    config.connect_timeout = Some(Duration::from_secs(10));
    config.read_timeout = Some(Duration::from_secs(30));
    Ok(config)
}

/// A client from a kubeconfig (YAML), with bounded connect and read times.
pub async fn client_from(kubeconfig: &str) -> Result<kube::Client, PhaseError> {
    let config = config_from(kubeconfig).await?;
    kube::Client::try_from(config).map_err(|e| PhaseError::Permanent(format!("Kubernetes client: {e}")))
}

impl KubeApi {
    pub fn new(
        store: DynStore,
        settings: Settings,
        credentials: Option<std::sync::Arc<AgentCredentials>>,
        bus: async_nats::Client,
    ) -> Self {
        Self { store, settings, credentials, bus }
    }

    async fn client(&self, ctx: &PhaseCtx<'_>) -> Result<kube::Client, PhaseError> {
        self.client_for(&ctx.rt.sealer, ctx.cluster).await
    }

    async fn client_for(
        &self,
        sealer: &ksctl_core::seal::Sealer,
        cluster: &ClusterRecord,
    ) -> Result<kube::Client, PhaseError> {
        let id = &cluster.id;
        let sealed = match cluster.cluster_type {
            ClusterType::Selfmanaged => {
                read_record::<BootstrapRecord>(&self.store, &keys::bootstrap(id)).await?.kubeconfig
            }
            // EKS tokens last 15 minutes and are minted by the cloud-controller; the stored
            // kubeconfig's token is long expired by the time this phase could use it.
            ClusterType::Managed if cluster.provider.kubeconfig_expires(cluster.cluster_type) => {
                return crate::fresh_token::client(&self.bus, id).await;
            }
            ClusterType::Managed => read_record::<InfraRecord>(&self.store, &keys::cloud(id)).await?.kubeconfig,
        };
        let sealed = sealed.ok_or_else(|| PhaseError::Permanent(format!("cluster {id} has no kubeconfig in state")))?;
        client_from(&sealer.open_string(&format!("kubeconfig/{id}"), &sealed)?).await
    }

    /// Gives the NATS servers the account JWT with the current revocations (nothing to do on a
    /// bus without authentication).
    pub async fn push_revocations(&self) -> Result<(), PhaseError> {
        match &self.credentials {
            Some(c) => c.push().await,
            None => Ok(()),
        }
    }

    /// Gives a running cluster's agent a new credential: the Secret, then the Deployment (whose
    /// pod restarts with it), then the record, which revokes the old one. The caller holds the
    /// cluster's lease.
    pub async fn rotate_credential(
        &self,
        sealer: &ksctl_core::seal::Sealer,
        cluster: &ClusterRecord,
    ) -> Result<(), PhaseError> {
        let Some(credentials) = &self.credentials else { return Ok(()) };
        let client = self.client_for(sealer, cluster).await?;
        let (creds, record) = credentials.mint(&cluster.id)?;
        let install = Install {
            cluster_id: cluster.id.as_str(),
            artifacts: &self.settings.artifacts,
            state: BTreeMap::new(),
            agent: &self.settings.agent,
            credential: Some(&creds),
        };
        for component in ["secret/ksctl-agent-bus", "deployment/ksctl-agent"] {
            install_component(&client, component, &install).await?;
        }
        credentials.record(&cluster.id, record).await
    }

    /// Writes the cluster's `ClusterAddon` spec and records the object's uid and generation
    /// after it (heartbeats that read an older generation of it are then ignored).
    async fn write_cluster_addons(
        &self,
        client: &kube::Client,
        cluster: &ClusterRecord,
        change: SpecChange<'_>,
    ) -> Result<(), PhaseError> {
        let written = cluster_addon::write_spec(client, &cluster.spec.addons, change).await?;
        update_record(&self.store, &keys::k8s(&cluster.id), |r: &mut K8sRecord| {
            r.cluster_addon_written = written.clone()
        })
        .await?;
        Ok(())
    }

    /// Enables (applies, waits for ready) or disables one addon; `version` is the one a
    /// `ClusterAddon` object pins, refused when ksctl does not ship it.
    async fn change_addon(
        &self,
        ctx: &PhaseCtx<'_>,
        client: &kube::Client,
        name: &str,
        enable: bool,
        version: Option<&str>,
    ) -> Result<(), PhaseError> {
        let Some(addon) = ksctl_core::addons::find(name) else {
            return Err(PhaseError::Permanent(format!(
                "unknown addon {name:?}; available: {}",
                ksctl_core::addons::names()
            )));
        };
        if let Some(v) = version.filter(|v| *v != addon.version) {
            return Err(PhaseError::Permanent(format!(
                "addon {name} {v} is not available: this ksctl ships {name} {}",
                addon.version
            )));
        }
        if !enable {
            return disable_addon(client, name).await;
        }
        let workloads = enable_addon(client, name, &self.settings.artifacts).await?;
        ctx.progress(format!("applied addon {name}"), 1, 2).await;
        manifests::wait_ready(client, &workloads, self.settings.ready_timeout).await
    }
}

#[async_trait::async_trait]
impl ClusterApi for KubeApi {
    async fn install(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let client = self.client(ctx).await?;
        let id = &ctx.cluster.id;
        let infra: InfraRecord = read_record(&self.store, &keys::cloud(id)).await?;
        // Every run mints anew: a run that stopped after applying the Secret left a credential
        // this record may not name, which expires on its own.
        let minted = self.credentials.as_ref().map(|c| c.mint(id)).transpose()?;
        let install = Install {
            cluster_id: id.as_str(),
            artifacts: &self.settings.artifacts,
            state: cluster_config(ctx, &infra),
            agent: &self.settings.agent,
            credential: minted.as_ref().map(|(c, _)| c),
        };
        let plan = crate::install_plan(ctx.cluster);
        let total = plan.len() as u32 + 1;
        // Applying is idempotent, so every component is applied on every run (a resumed install
        // also repairs what someone changed since).
        for (n, component) in plan.iter().enumerate() {
            install_component(&client, component, &install).await?;
            update_record(&self.store, &keys::k8s(id), |r: &mut K8sRecord| {
                r.installed.insert(component.to_string());
            })
            .await?;
            // The new credential is recorded (revoking the old one) only once the Deployment
            // that restarts the agent with it is applied, the order rotation keeps too: until
            // then the running agent still holds the old one.
            if let (Some(credentials), Some((_, record)), "deployment/ksctl-agent") =
                (&self.credentials, &minted, component.as_str())
            {
                credentials.record(id, record.clone()).await?;
            }
            ctx.progress(format!("applied {component}"), n as u32 + 1, total).await;
        }
        let addons = &ctx.cluster.spec.addons;
        self.write_cluster_addons(&client, ctx.cluster, SpecChange::Set(addons)).await?;
        let workloads = plan_workloads(&plan)?;
        manifests::wait_ready(&client, &workloads, self.settings.ready_timeout).await?;
        for a in addons {
            let version = ksctl_core::addons::find(a).map(|a| a.version);
            cluster_addon::report(&client, a, Some(cluster_addon::status("Installed", version, None, None))).await;
        }
        let names: Vec<String> = workloads.iter().map(|(_, ns, n)| format!("{ns}/{n}")).collect();
        ctx.progress(format!("ready: {}", names.join(", ")), total, total).await;
        Ok(())
    }

    /// Changes one addon and reports it in the `ClusterAddon` status; a change a request asked
    /// for is written into the object's spec too (one the object asked for is there already).
    /// ksctl's CRDs and the agent's RBAC are applied again first: a cluster installed by an
    /// older ksctl gets the current ones (the Stack inventory, the status, the agent's right to
    /// read the object).
    async fn addon(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let (name, enable) = crate::addon_change(ctx)?;
        let op = ctx.cluster.operation.as_ref().expect("addon_change found the operation");
        let asked_at = op.cluster_addon_generation;
        let client = self.client(ctx).await?;
        let install = Install {
            cluster_id: ctx.cluster.id.as_str(),
            artifacts: &self.settings.artifacts,
            state: BTreeMap::new(),
            agent: &self.settings.agent,
            credential: None,
        };
        for component in ["rbac/ksctl-agent", "crd/clusteraddons.manage.ksctl.io", "crd/stacks.app.ksctl.io"] {
            install_component(&client, component, &install).await?;
        }
        let version = ksctl_core::addons::find(&name).map(|a| a.version);
        let now = if enable { "Installing" } else { "Removing" };
        cluster_addon::report(&client, &name, Some(cluster_addon::status(now, version, None, asked_at))).await;
        let changed = self.change_addon(ctx, &client, &name, enable, op.addon_version.as_deref()).await;
        let after = match &changed {
            Ok(()) if enable => Some(cluster_addon::status("Installed", version, None, asked_at)),
            Ok(()) => None,
            Err(e @ PhaseError::Permanent(_)) => {
                Some(cluster_addon::status("Failed", version, Some(e.to_string()), asked_at))
            }
            // Tried again: still under way, with why the last try did not get there.
            Err(e) => Some(cluster_addon::status(now, version, Some(e.to_string()), asked_at)),
        };
        cluster_addon::report(&client, &name, after).await;
        changed?;
        if asked_at.is_none() {
            let change = if enable { SpecChange::Enable(&name) } else { SpecChange::Disable(&name) };
            self.write_cluster_addons(&client, ctx.cluster, change).await?;
        }
        let verb = if enable { "enabled and ready" } else { "removed" };
        ctx.progress(format!("addon {name} {verb}"), 2, 2).await;
        Ok(())
    }

    async fn apps(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let (stack, manifests) = crate::apps::change(&self.store, ctx).await?;
        let client = self.client(ctx).await?;
        match manifests {
            Some(yaml) => {
                crate::apps::apply(&client, &self.store, ctx, &stack, &yaml, self.settings.ready_timeout).await
            }
            None => crate::apps::delete(&client, &self.store, ctx, &stack).await,
        }
    }

    async fn uninstall(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let id = &ctx.cluster.id;
        if read_record::<K8sRecord>(&self.store, &keys::k8s(id)).await?.installed.is_empty() {
            ctx.progress("nothing of ksctl's was installed", 1, 1).await;
            return Ok(());
        }
        let mut stacks: Vec<manifests::Stack> =
            ctx.cluster.spec.addons.iter().filter_map(|a| manifests::addon(a)).collect();
        stacks.extend(crate::cni(ctx.cluster).and_then(|c| c.strip_prefix("cni/")).and_then(manifests::cni));
        let work = async { uninstall_objects(&self.client(ctx).await?, &stacks).await };
        // A cluster that does not answer must not block deleting its infrastructure.
        let msg = match tokio::time::timeout(UNREACHABLE_AFTER, work).await {
            Ok(Ok(())) => format!("removed namespace {NAMESPACE} and the agent's cluster RBAC"),
            Ok(Err(e)) => format!("the cluster did not take the uninstall ({e}); its objects go with the hosts"),
            Err(_) => "the cluster does not answer; its objects go with the hosts".to_string(),
        };
        ctx.progress(msg, 1, 1).await;
        self.store.delete(&keys::k8s(id)).await?;
        Ok(())
    }

    async fn drain(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let client = self.client(ctx).await?;
        let client = &client;
        crate::drain_workers(&self.store, ctx, |vm| async move {
            drain_node(client, &vm.name, self.settings.drain_timeout).await
        })
        .await
    }
}
