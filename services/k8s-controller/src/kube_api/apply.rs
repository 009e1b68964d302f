//! Applying and removing: server-side apply under ksctl's field manager, CRDs waited on until
//! established, each install component, the addons with their inventories, the state
//! importer's ConfigMap, and the uninstall.
use super::*;

/// Server-side applies `obj` under ksctl's field manager (taking over conflicting fields:
/// these objects are ksctl's alone).
pub(super) async fn apply<K>(api: &Api<K>, name: &str, obj: &K) -> Result<(), PhaseError>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    api.patch(name, &pp, &Patch::Apply(obj)).await.map_err(|e| api_err(&format!("applying {name}"), e))?;
    Ok(())
}

/// How long a new CRD may take to be established.
pub(super) const CRD_ESTABLISHED_WITHIN: Duration = Duration::from_secs(30);

/// Applies a CRD made from our Rust types and waits until the API server serves it.
pub(super) async fn apply_crd(client: &kube::Client, mut crd: CustomResourceDefinition) -> Result<(), PhaseError> {
    let name = crd.metadata.name.clone().expect("generated CRDs are named");
    crd.metadata.labels = Some(labels());
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    apply(&api, &name, &crd).await?;
    wait_established(client, &[name], CRD_ESTABLISHED_WITHIN).await
}

/// Waits until the API server serves every CRD named (condition `Established`), `within` in all.
pub async fn wait_established(client: &kube::Client, names: &[String], within: Duration) -> Result<(), PhaseError> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + within;
    let mut pauses = ksctl_core::backoff::poll(Duration::from_millis(250)).build();
    for name in names {
        loop {
            let cur = api.get_opt(name).await.map_err(|e| api_err(&format!("reading CRD {name}"), e))?;
            let conditions = cur.and_then(|c| c.status).and_then(|s| s.conditions).unwrap_or_default();
            if conditions.iter().any(|c| c.type_ == "Established" && c.status == "True") {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let why: Vec<String> = conditions
                    .iter()
                    .map(|c| format!("{}={} ({})", c.type_, c.status, c.message.clone().unwrap_or_default()))
                    .collect();
                return Err(PhaseError::retryable(format!(
                    "CRD {name} not established after {} s: {}",
                    within.as_secs(),
                    why.join("; ")
                )));
            }
            tokio::time::sleep(pauses.next().unwrap_or_default()).await;
        }
    }
    Ok(())
}

/// Applies one item of [`crate::install_plan`].
pub async fn apply_item(client: &kube::Client, item: &PlanItem, install: &Install<'_>) -> Result<(), PhaseError> {
    match item {
        PlanItem::Component(c) => install_component(client, *c, install).await,
        PlanItem::Addon(name) => enable_addon(client, name, install.artifacts).await.map(|_| ()),
        PlanItem::Cni(c) => {
            let stack = manifests::cni(*c).ok_or_else(|| PhaseError::permanent(format!("no manifests for CNI {c}")))?;
            manifests::apply(client, &stack.through(install.artifacts)).await.map(|_| ())
        }
    }
}

/// Applies one of ksctl's own components.
pub async fn install_component(
    client: &kube::Client,
    component: Component,
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
        Component::Namespace => {
            let ns = Namespace { metadata: meta(NAMESPACE, None), ..Default::default() };
            apply(&Api::<Namespace>::all(client.clone()), NAMESPACE, &ns).await
        }
        Component::ServiceAccount => {
            let sa = ServiceAccount { metadata: meta(AGENT, Some(NAMESPACE)), ..Default::default() };
            apply(&Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE), AGENT, &sa).await
        }
        Component::Rbac => {
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
        Component::ClusterAddonCrd => apply_crd(client, ClusterAddon::crd()).await,
        Component::StackCrd => apply_crd(client, Stack::crd()).await,
        Component::ClusterConfig => import_state(client, install.state.clone()).await,
        Component::AgentSecret => {
            let secret = agent_secret(install.cluster_id, install.agent, install.credential);
            apply(&Api::<Secret>::namespaced(client.clone(), NAMESPACE), AGENT_BUS_SECRET, &secret).await
        }
        Component::AgentDeployment => {
            let user = match install.credential {
                Some(c) => Some(c.public_key().map_err(|e| PhaseError::caused_by(false, e))?),
                None => None,
            };
            let d = agent_deployment(&install.agent.image, user.as_deref());
            apply(&Api::<Deployment>::namespaced(client.clone(), NAMESPACE), AGENT, &d).await
        }
        Component::AgentService => {
            apply(&Api::<Service>::namespaced(client.clone(), NAMESPACE), AGENT, &agent_service()).await
        }
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
    let objects = stack.objects().map_err(PhaseError::permanent)?;
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
    let current: Vec<ObjectRef> = stack.objects().map_err(PhaseError::permanent)?.iter().map(object_ref).collect();
    let mut resolver = manifests::Resolver::of(client, &stack);
    crate::apps::prune(&mut resolver, &left_out(&inventory, &current), name).await?;
    manifests::remove(client, &stack).await?;
    match Api::<Stack>::namespaced(client.clone(), NAMESPACE).delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(api_err(&format!("deleting Stack {name}"), e)),
    }
}

pub(super) fn object_ref(obj: &kube::api::DynamicObject) -> ObjectRef {
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
pub(super) async fn addon_inventory(client: &kube::Client, name: &str) -> Result<Vec<ObjectRef>, PhaseError> {
    let cur = Api::<Stack>::namespaced(client.clone(), NAMESPACE)
        .get_opt(name)
        .await
        .map_err(|e| api_err(&format!("reading Stack {name}"), e))?;
    Ok(cur.map(|s| s.spec.objects.into_iter().map(ObjectRef::from).collect()).unwrap_or_default())
}

pub(super) async fn record_addon_stack(
    client: &kube::Client,
    name: &str,
    objects: &[ObjectRef],
) -> Result<(), PhaseError> {
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

pub(super) fn addon_stack(name: &str) -> Result<manifests::Stack, PhaseError> {
    manifests::addon(name).ok_or_else(|| PhaseError::permanent(format!("no manifests for addon {name}")))
}

/// The workloads of a plan whose readiness the install waits for.
pub fn plan_workloads(plan: &[PlanItem]) -> Result<Vec<(String, String, String)>, PhaseError> {
    let mut out = Vec::new();
    for item in plan {
        match item {
            PlanItem::Component(Component::AgentDeployment) => {
                out.push(("Deployment".into(), NAMESPACE.into(), AGENT.into()))
            }
            PlanItem::Component(_) => {}
            PlanItem::Addon(name) => out.extend(manifests::workloads(&addon_stack(name)?)?),
            PlanItem::Cni(c) => {
                if let Some(stack) = manifests::cni(*c) {
                    out.extend(manifests::workloads(&stack)?);
                }
            }
        }
    }
    Ok(out)
}

/// The immutable `cluster-config` ConfigMap: created, left alone when equal, replaced when the
/// state changed (an immutable ConfigMap cannot be updated).
pub(super) async fn import_state(client: &kube::Client, data: BTreeMap<String, String>) -> Result<(), PhaseError> {
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
