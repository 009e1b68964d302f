//! The k8s-controller's Kubernetes operations against a real API server (the Debian-built
//! kube-apiserver 1.20 on etcd, `tests/src/kube_server.rs`): server-side apply that changes
//! nothing the second time, a competing field manager handled on purpose, RBAC that allows the
//! agent exactly what it needs (asked as the agent, by SelfSubjectAccessReview), CRDs from Rust
//! types whose schemas the server enforces, uninstall, drain; the agent's Deployment, Service and
//! bus Secret, flannel and the metrics-server addon from their embedded manifests, and the
//! readiness wait (this server runs no controller manager, so `WorkloadController` plays it).
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use ksctl_core::spec::Cni;
use ksctl_k8s_controller::cluster_addon::{self, SpecChange};
use ksctl_k8s_controller::crds::{ClusterAddon, Stack, StackComponent, StackObject, StackSpec};
use ksctl_k8s_controller::kube_api::{self, AgentSettings, Install, NAMESPACE};
use ksctl_k8s_controller::manifests;
use ksctl_k8s_controller::{COMPONENTS, Component, PlanItem};
use ksctl_tests::kube_server::KubeServer;
use kube::api::DynamicObject;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use std::collections::BTreeMap;
use std::time::Duration;

fn state(version: &str) -> BTreeMap<String, String> {
    [("cluster_id", "demo"), ("provider", "byo"), ("kubernetes_version", version)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn agent() -> AgentSettings {
    AgentSettings {
        image: "registry.example/ksctl-rs:1.2.3".into(),
        nats_url: "nats://bus.example:4222".into(),
        nats_ca: None,
    }
}

async fn install(client: &kube::Client, state: &BTreeMap<String, String>) {
    let agent = agent();
    let install = Install {
        cluster_id: "demo",
        artifacts: &Default::default(),
        state: state.clone(),
        agent: &agent,
        credential: None,
    };
    for c in COMPONENTS {
        kube_api::install_component(client, *c, &install).await.unwrap();
    }
}

async fn client(server: &KubeServer) -> kube::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    kube_api::client_from(&server.kubeconfig).await.unwrap()
}

/// resourceVersion of every object the install makes.
async fn versions(c: &kube::Client) -> Vec<String> {
    let rv = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| m.resource_version.clone().unwrap();
    let a = "ksctl-agent";
    vec![
        rv(&Api::<Namespace>::all(c.clone()).get(NAMESPACE).await.unwrap().metadata),
        rv(&Api::<ServiceAccount>::namespaced(c.clone(), NAMESPACE).get(a).await.unwrap().metadata),
        rv(&Api::<ClusterRole>::all(c.clone()).get(a).await.unwrap().metadata),
        rv(&Api::<ClusterRoleBinding>::all(c.clone()).get(a).await.unwrap().metadata),
        rv(&Api::<Role>::namespaced(c.clone(), NAMESPACE).get(a).await.unwrap().metadata),
        rv(&Api::<RoleBinding>::namespaced(c.clone(), NAMESPACE).get(a).await.unwrap().metadata),
        rv(&Api::<ConfigMap>::namespaced(c.clone(), NAMESPACE).get("cluster-config").await.unwrap().metadata),
        rv(&Api::<Secret>::namespaced(c.clone(), NAMESPACE).get("ksctl-agent-bus").await.unwrap().metadata),
        rv(&Api::<Deployment>::namespaced(c.clone(), NAMESPACE).get(a).await.unwrap().metadata),
        rv(&Api::<Service>::namespaced(c.clone(), NAMESPACE).get(a).await.unwrap().metadata),
        rv(&Api::<CustomResourceDefinition>::all(c.clone()).get("stacks.app.ksctl.io").await.unwrap().metadata),
        rv(&Api::<CustomResourceDefinition>::all(c.clone())
            .get("clusteraddons.manage.ksctl.io")
            .await
            .unwrap()
            .metadata),
    ]
}

/// Asks the API server, as the agent's service account, whether it may `verb` `resource`.
async fn agent_may(server: &KubeServer, verb: &str, group: &str, resource: &str, ns: Option<&str>) -> bool {
    let kc = kube::config::Kubeconfig::from_yaml(&server.kubeconfig).unwrap();
    let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    config.auth_info.impersonate = Some("system:serviceaccount:ksctl-system:ksctl-agent".into());
    let client = kube::Client::try_from(config).unwrap();
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(verb.into()),
                group: Some(group.into()),
                resource: Some(resource.into()),
                namespace: ns.map(str::to_string),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let r = Api::<SelfSubjectAccessReview>::all(client).create(&PostParams::default(), &review).await.unwrap();
    r.status.unwrap().allowed
}

#[tokio::test(flavor = "multi_thread")]
async fn install_is_idempotent_contested_fields_are_taken_back_and_rbac_is_least_privilege() {
    let server = KubeServer::start();
    let c = client(&server).await;
    install(&c, &state("1.31")).await;
    let first = versions(&c).await;
    // In a later second: the server writes a no-op apply whose fields differ from what it stored
    // (its managedFields time changes), but only once the second changed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    install(&c, &state("1.31")).await;
    assert_eq!(versions(&c).await, first, "installing twice changed nothing");

    // The CRDs are served: a Stack made from the Rust type is accepted; objects that break the
    // generated schema are refused by the API server.
    let stacks: Api<Stack> = Api::namespaced(c.clone(), NAMESPACE);
    let good = Stack::new(
        "monitoring",
        StackSpec {
            stack_name: "monitoring".into(),
            components: vec![StackComponent { name: "prometheus".into(), version: "2.53.0".into() }],
            objects: vec![],
        },
    );
    stacks.create(&PostParams::default(), &good).await.unwrap();
    let raw: Api<DynamicObject> = Api::namespaced_with(c.clone(), NAMESPACE, &ApiResource::erase::<Stack>(&()));
    for (name, spec) in [
        ("components-not-a-list", serde_json::json!({"stackName": "x", "components": "prometheus"})),
        ("no-stack-name", serde_json::json!({"components": []})),
        ("version-not-a-string", serde_json::json!({"stackName": "x", "components": [{"name": "a", "version": 2}]})),
    ] {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "app.ksctl.io/v1", "kind": "Stack", "metadata": {"name": name}, "spec": spec
        }))
        .unwrap();
        let err = raw.create(&PostParams::default(), &obj).await.unwrap_err();
        assert!(matches!(err, kube::Error::Api(ref s) if s.code == 422), "{name}: {err:?}");
    }

    // A changed state replaces the immutable ConfigMap.
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), NAMESPACE);
    let old_uid = cms.get("cluster-config").await.unwrap().metadata.uid;
    install(&c, &state("1.32")).await;
    let cm = cms.get("cluster-config").await.unwrap();
    assert_ne!(cm.metadata.uid, old_uid);
    assert_eq!((cm.immutable, cm.data.unwrap()["kubernetes_version"].as_str()), (Some(true), "1.32"));

    // Another field manager that wants our Role's rules gets a conflict unless it forces; when
    // it forces, the next install takes them back (ksctl's objects are ksctl's).
    let roles: Api<Role> = Api::namespaced(c.clone(), NAMESPACE);
    let theirs = serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "ksctl-agent", "namespace": NAMESPACE},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    });
    let err = roles.patch("ksctl-agent", &PatchParams::apply("intruder"), &Patch::Apply(&theirs)).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 409), "{err:?}");
    roles.patch("ksctl-agent", &PatchParams::apply("intruder").force(), &Patch::Apply(&theirs)).await.unwrap();
    assert!(agent_may(&server, "get", "", "secrets", Some(NAMESPACE)).await);
    install(&c, &state("1.32")).await;
    let rules = roles.get("ksctl-agent").await.unwrap().rules.unwrap();
    assert!(rules.iter().all(|r| !r.resources.as_ref().unwrap().contains(&"secrets".to_string())), "{rules:?}");

    // The agent may read Nodes and ksctl-system's ConfigMaps, Pods, Deployments, ClusterAddons;
    // nothing else.
    let ns = Some(NAMESPACE);
    for (verb, group, resource, ns, want) in [
        ("list", "", "nodes", None, true),
        ("watch", "", "nodes", None, true),
        ("get", "", "configmaps", ns, true),
        ("list", "", "pods", ns, true),
        ("get", "apps", "deployments", ns, true),
        ("list", "manage.ksctl.io", "clusteraddons", ns, true),
        ("watch", "manage.ksctl.io", "clusteraddons", ns, true),
        ("update", "manage.ksctl.io", "clusteraddons", ns, false),
        ("patch", "manage.ksctl.io", "clusteraddons", ns, false),
        ("delete", "", "nodes", None, false),
        ("patch", "", "nodes", None, false),
        ("get", "", "secrets", ns, false),
        ("get", "", "configmaps", Some("kube-system"), false),
        ("create", "apps", "deployments", ns, false),
        ("update", "", "configmaps", ns, false),
        ("list", "", "pods", Some("default"), false),
    ] {
        assert_eq!(agent_may(&server, verb, group, resource, ns).await, want, "{verb} {group}/{resource} in {ns:?}");
    }

    // Uninstall: the cluster RBAC goes; the namespace is deleted (finalized by a controller
    // manager, which this server does not run, so it is at least terminating).
    kube_api::uninstall_objects(&c, &[]).await.unwrap();
    kube_api::uninstall_objects(&c, &[]).await.unwrap();
    assert!(Api::<ClusterRole>::all(c.clone()).get_opt("ksctl-agent").await.unwrap().is_none());
    assert!(Api::<ClusterRoleBinding>::all(c.clone()).get_opt("ksctl-agent").await.unwrap().is_none());
    for crd in ["stacks.app.ksctl.io", "clusteraddons.manage.ksctl.io"] {
        let cur = Api::<CustomResourceDefinition>::all(c.clone()).get_opt(crd).await.unwrap();
        assert!(cur.is_none_or(|c| c.metadata.deletion_timestamp.is_some()), "{crd} is going");
    }
    let ns = Api::<Namespace>::all(c.clone()).get_opt(NAMESPACE).await.unwrap();
    assert!(ns.is_none_or(|n| n.metadata.deletion_timestamp.is_some()));
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_cordons_evicts_and_deletes_the_node() {
    let server = KubeServer::start();
    let c = client(&server).await;
    let nodes: Api<Node> = Api::all(c.clone());
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let node: Node = serde_json::from_value(serde_json::json!({"metadata": {"name": "w1"}})).unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let pod = |name: &str, owner: Option<&str>| -> Pod {
        let mut v = serde_json::json!({
            "metadata": {"name": name},
            "spec": {"nodeName": "w1", "automountServiceAccountToken": false, "containers": [{"name": "c", "image": "busybox"}]}
        });
        if let Some(kind) = owner {
            v["metadata"]["ownerReferences"] = serde_json::json!([{
                "apiVersion": "apps/v1", "kind": kind, "name": "x", "uid": "00000000-0000-0000-0000-000000000001"
            }]);
        }
        serde_json::from_value(v).unwrap()
    };
    // The service-account admission wants `default` (a controller manager would make it).
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": "default"}})).unwrap();
    Api::<ServiceAccount>::namespaced(c.clone(), "default").create(&PostParams::default(), &sa).await.unwrap();
    pods.create(&PostParams::default(), &pod("app", None)).await.unwrap();
    pods.create(&PostParams::default(), &pod("logs", Some("DaemonSet"))).await.unwrap();

    kube_api::drain_node(&c, "w1", Duration::from_secs(30)).await.unwrap();
    assert!(nodes.get_opt("w1").await.unwrap().is_none(), "the Node is deleted");
    // Evicted through the eviction API: marked for deletion (no kubelet here confirms it).
    let app = pods.get_opt("app").await.unwrap();
    assert!(app.is_none_or(|p| p.metadata.deletion_timestamp.is_some()), "app was evicted");
    let logs = pods.get("logs").await.unwrap();
    assert!(logs.metadata.deletion_timestamp.is_none(), "DaemonSet pods stay, as with kubectl drain");
    // Draining a node that is already gone is done.
    kube_api::drain_node(&c, "w1", Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_flannel_and_the_metrics_server_addon_wait_for_readiness_and_go_away() {
    let server = KubeServer::start();
    let c = client(&server).await;
    install(&c, &state("1.31")).await;
    let no_creds = agent();
    let install_ctx = Install {
        cluster_id: "demo",
        artifacts: &Default::default(),
        state: state("1.31"),
        agent: &no_creds,
        credential: None,
    };
    kube_api::apply_item(&c, &PlanItem::Cni(Cni::Flannel), &install_ctx).await.unwrap();

    // The agent: its image, its service account, its settings from the Secret, probed on 9100.
    let d = Api::<Deployment>::namespaced(c.clone(), NAMESPACE).get("ksctl-agent").await.unwrap();
    let pod = d.spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("ksctl-agent"));
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some("registry.example/ksctl-rs:1.2.3"));
    assert_eq!(container.env_from.as_ref().unwrap()[0].secret_ref.as_ref().unwrap().name, "ksctl-agent-bus");
    assert_eq!(container.ports.as_ref().unwrap()[0].container_port, 9100);
    let secret = Api::<Secret>::namespaced(c.clone(), NAMESPACE).get("ksctl-agent-bus").await.unwrap();
    let data = secret.data.unwrap();
    assert_eq!(data["KSCTL_NATS_URL"].0, b"nats://bus.example:4222");
    assert_eq!(data["KSCTL_CLUSTER_ID"].0, b"demo");
    assert!(!data.contains_key("KSCTL_NATS_CREDS"), "no credentials when the bus needs none");
    assert!(d.spec.template.metadata.as_ref().and_then(|m| m.annotations.as_ref()).is_none_or(|a| a.is_empty()));
    let svc = Api::<Service>::namespaced(c.clone(), NAMESPACE).get("ksctl-agent").await.unwrap();
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 9100);
    // With a credential, the Secret carries it (and a re-apply adds just it); the Deployment's
    // pod names its user, so a new credential restarts the pod.
    let creds = ksctl_bus::auth::init(1)
        .unwrap()
        .authority
        .mint(&ksctl_bus::auth::Role::Agent(ksctl_core::ClusterId::new("demo").unwrap()), "a", 1, None)
        .unwrap();
    let ctx2 = Install {
        cluster_id: "demo",
        artifacts: &Default::default(),
        state: state("1.31"),
        agent: &no_creds,
        credential: Some(&creds),
    };
    kube_api::install_component(&c, Component::AgentSecret, &ctx2).await.unwrap();
    kube_api::install_component(&c, Component::AgentDeployment, &ctx2).await.unwrap();
    // A bus over TLS: the Secret carries the CA the agent trusts.
    let tls = AgentSettings {
        nats_ca: Some("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into()),
        ..agent()
    };
    let secret = kube_api::agent_secret("demo", &tls, None);
    assert!(std::str::from_utf8(&secret.data.unwrap()["KSCTL_NATS_CA"].0).unwrap().contains("BEGIN CERTIFICATE"));
    let data = Api::<Secret>::namespaced(c.clone(), NAMESPACE).get("ksctl-agent-bus").await.unwrap().data.unwrap();
    assert_eq!(
        ksctl_bus::auth::Creds::parse(std::str::from_utf8(&data["KSCTL_NATS_CREDS"].0).unwrap()).unwrap(),
        creds
    );
    let d = Api::<Deployment>::namespaced(c.clone(), NAMESPACE).get("ksctl-agent").await.unwrap();
    let annotations = d.spec.template.metadata.unwrap().annotations.unwrap();
    assert_eq!(annotations["ksctl.io/nats-user"], creds.public_key().unwrap());

    // flannel from its embedded manifest, pinned, labelled as ksctl's.
    let ds = Api::<DaemonSet>::namespaced(c.clone(), "kube-flannel").get("kube-flannel-ds").await.unwrap();
    assert_eq!(ds.metadata.labels.as_ref().unwrap()["ksctl.io/stack"], "flannel");
    let image = ds.spec.template.spec.unwrap().containers[0].image.clone().unwrap();
    assert_eq!(image, "docker.io/flannel/flannel:v0.26.1");

    // Not ready while no controller has rolled them out: the error names each workload and why.
    let plan: Vec<PlanItem> =
        COMPONENTS.iter().copied().map(PlanItem::Component).chain([PlanItem::Cni(Cni::Flannel)]).collect();
    let mut workloads = kube_api::plan_workloads(&plan).unwrap();
    // A StatefulSet (as Argo CD's application controller) is waited on the same way.
    let sts = serde_json::json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "default", "labels": {"app.kubernetes.io/managed-by": "ksctl"}},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}},
                 "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db", "image": "db:1"}]}}}
    });
    Api::<StatefulSet>::namespaced(c.clone(), "default")
        .create(&PostParams::default(), &serde_json::from_value(sts).unwrap())
        .await
        .unwrap();
    workloads.push(("StatefulSet".into(), "default".into(), "db".into()));
    let err = manifests::wait_ready(&c, &workloads, Duration::from_secs(2)).await.unwrap_err().to_string();
    assert!(err.contains("not ready after 2 s"), "{err}");
    assert!(err.contains("Deployment ksctl-system/ksctl-agent: not yet seen by its controller"), "{err}");
    assert!(err.contains("DaemonSet kube-flannel/kube-flannel-ds"), "{err}");
    assert!(err.contains("StatefulSet default/db: not yet seen by its controller"), "{err}");
    // Rolled out (by the test standing in for the controller manager): ready.
    ksctl_tests::kube_server::roll_out(&c).await.unwrap();
    manifests::wait_ready(&c, &workloads, Duration::from_secs(5)).await.unwrap();

    // The metrics-server addon: its objects (the aggregated API included), its Stack, the
    // ClusterAddon listing it; enabling twice changes nothing.
    kube_api::enable_addon(&c, "metrics-server", &Default::default()).await.unwrap();
    let ms = ["metrics-server".to_string()];
    cluster_addon::write_spec(&c, &ms, SpecChange::Set(&ms)).await.unwrap();
    let apiservices = Api::<DynamicObject>::all_with(
        c.clone(),
        &ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk("apiregistration.k8s.io", "v1", "APIService")),
    );
    let deployments = Api::<Deployment>::namespaced(c.clone(), "kube-system");
    let rv = deployments.get("metrics-server").await.unwrap().metadata.resource_version;
    assert!(apiservices.get_opt("v1beta1.metrics.k8s.io").await.unwrap().is_some());
    let stack = Api::<Stack>::namespaced(c.clone(), NAMESPACE).get("metrics-server").await.unwrap();
    assert_eq!(stack.spec.components[0].version, "v0.7.2");
    let ca = Api::<ClusterAddon>::namespaced(c.clone(), NAMESPACE).get("addons").await.unwrap();
    // ksctl's own entry names no version: "the one this ksctl ships" (a newer ksctl's pin must
    // not read as a request for this one).
    assert_eq!((ca.spec.addons[0].name.as_str(), ca.spec.addons[0].version.as_deref()), ("metrics-server", None));
    kube_api::enable_addon(&c, "metrics-server", &Default::default()).await.unwrap();
    assert_eq!(deployments.get("metrics-server").await.unwrap().metadata.resource_version, rv);
    let ms = manifests::workloads(&manifests::addon("metrics-server").unwrap()).unwrap();
    assert!(manifests::wait_ready(&c, &ms, Duration::from_secs(1)).await.is_err(), "a new workload is not ready");
    ksctl_tests::kube_server::roll_out(&c).await.unwrap();
    manifests::wait_ready(&c, &ms, Duration::from_secs(5)).await.unwrap();

    // An upgrade: what an older pin applied (its Stack's inventory) and this one has not is
    // deleted; an object that is no longer the addon's (someone relabelled it) stays.
    let configmaps = Api::<ConfigMap>::namespaced(c.clone(), "kube-system");
    let stacks = Api::<Stack>::namespaced(c.clone(), NAMESPACE);
    let older_pin = |names: &[&str]| {
        let configmaps = configmaps.clone();
        let stacks = stacks.clone();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        async move {
            let mut stack = stacks.get("metrics-server").await.unwrap();
            for name in names {
                let owner = if name == "taken-over" { "someone-else" } else { "metrics-server" };
                let cm = serde_json::json!({"metadata": {"name": name, "labels": {manifests::PART_OF: owner}}});
                configmaps.create(&PostParams::default(), &serde_json::from_value(cm).unwrap()).await.unwrap();
                let o = StackObject {
                    api_version: "v1".into(),
                    kind: "ConfigMap".into(),
                    namespace: Some("kube-system".into()),
                    name,
                };
                stack.spec.objects.insert(0, o);
            }
            stacks.replace("metrics-server", &PostParams::default(), &stack).await.unwrap();
        }
    };
    older_pin(&["metrics-server-legacy", "taken-over"]).await;
    let rv = deployments.get("metrics-server").await.unwrap().metadata.resource_version;
    kube_api::enable_addon(&c, "metrics-server", &Default::default()).await.unwrap();
    assert!(configmaps.get_opt("metrics-server-legacy").await.unwrap().is_none(), "pruned");
    assert!(configmaps.get_opt("taken-over").await.unwrap().is_some(), "not the addon's any more");
    let inventory = stacks.get("metrics-server").await.unwrap().spec.objects;
    assert_eq!(inventory.len(), 9);
    assert!(inventory.iter().all(|o| o.kind != "ConfigMap"), "{inventory:?}");
    assert_eq!(deployments.get("metrics-server").await.unwrap().metadata.resource_version, rv);
    older_pin(&["metrics-server-old"]).await;

    // Disabled: every object of the stack is gone, and its Stack; twice is fine.
    kube_api::disable_addon(&c, "metrics-server").await.unwrap();
    kube_api::disable_addon(&c, "metrics-server").await.unwrap();
    cluster_addon::write_spec(&c, &[], SpecChange::Set(&[])).await.unwrap();
    assert!(configmaps.get_opt("metrics-server-old").await.unwrap().is_none(), "the inventory's leftovers go too");
    assert!(apiservices.get_opt("v1beta1.metrics.k8s.io").await.unwrap().is_none());
    assert!(deployments.get_opt("metrics-server").await.unwrap().is_none());
    for cr in ["system:metrics-server", "system:aggregated-metrics-reader"] {
        assert!(Api::<ClusterRole>::all(c.clone()).get_opt(cr).await.unwrap().is_none(), "{cr}");
    }
    assert!(Api::<Stack>::namespaced(c.clone(), NAMESPACE).get_opt("metrics-server").await.unwrap().is_none());
    let ca = Api::<ClusterAddon>::namespaced(c.clone(), NAMESPACE).get("addons").await.unwrap();
    assert!(ca.spec.addons.is_empty());

    // Uninstall takes flannel along with ksctl's own objects.
    kube_api::uninstall_objects(&c, &[manifests::FLANNEL]).await.unwrap();
    assert!(Api::<ClusterRole>::all(c.clone()).get_opt("flannel").await.unwrap().is_none());
    let ns = Api::<Namespace>::all(c.clone()).get_opt("kube-flannel").await.unwrap();
    assert!(ns.is_none_or(|n| n.metadata.deletion_timestamp.is_some()));
}

/// Every addon of the catalog against the real API server: its namespaces and CRDs applied for
/// real (the rest needs them), Established, then every other object admitted by a server-side
/// dry-run — none stored; then the addon's own objects removed again.
///
/// This server is Kubernetes 1.20; the catalog pins releases for current clusters. CRDs generated
/// from k8s.io/api 0.30 or later carry `default: ""` in their schemas, which 1.20 reads as null
/// and refuses: those (and only for that reason) are counted and named, not applied.
async fn established(crds: &Api<CustomResourceDefinition>, name: &str) {
    ksctl_tests::eventually(Duration::from_secs(60), &format!("{name} Established"), || async {
        let got = crds.get(name).await.unwrap();
        let conditions = got.status.and_then(|s| s.conditions).unwrap_or_default();
        conditions.iter().any(|c| c.type_ == "Established" && c.status == "True").then_some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_catalog_addon_passes_server_side_dry_run() {
    let server = KubeServer::start();
    let c = client(&server).await;
    let crds = Api::<CustomResourceDefinition>::all(c.clone());
    let only = std::env::var("KSCTL_TEST_ADDONS").unwrap_or_default();
    for a in ksctl_core::addons::CATALOG.iter().filter(|a| only.is_empty() || only.split(',').any(|o| o == a.name)) {
        let stack = manifests::addon(a.name).unwrap();
        let objects = stack.objects().unwrap();
        let kind = |o: &DynamicObject| o.types.as_ref().unwrap().kind.clone();
        let (first, rest): (Vec<_>, Vec<_>) =
            objects.into_iter().partition(|o| matches!(kind(o).as_str(), "Namespace" | "CustomResourceDefinition"));
        let mut too_new = vec![];
        for obj in &first {
            let name = obj.metadata.name.clone().unwrap();
            match manifests::apply_objects(&c, &stack, std::slice::from_ref(obj), false).await {
                Ok(()) if kind(obj) == "CustomResourceDefinition" => established(&crds, &name).await,
                Ok(()) => {}
                Err(e) if e.to_string().contains(".default: Invalid value: \"null\"") => too_new.push(name),
                Err(e) => panic!("{}: {e}", a.name),
            }
        }
        manifests::apply_objects(&c, &stack, &rest, true).await.unwrap_or_else(|e| panic!("{}: {e}", a.name));
        // Dry-run stored nothing: none of its workloads exists.
        for w in a.ready {
            let (_, path) = w.split_once(' ').unwrap();
            let (ns, name) = path.split_once('/').unwrap();
            let got = Api::<Deployment>::namespaced(c.clone(), ns).get_opt(name).await.unwrap();
            assert!(got.is_none(), "{}: {w} was stored by a dry-run", a.name);
        }
        eprintln!(
            "{} {}: {} objects admitted by dry-run, {} applied first; CRDs too new for 1.20: {too_new:?}",
            a.name,
            a.version,
            rest.len(),
            first.len() - too_new.len()
        );
        manifests::remove(&c, &stack).await.unwrap();
    }
}

/// What Kubernetes 1.20 (the API server these tests run) lacks and a current manifest uses,
/// taken out so that everything else of each object is still checked by that server: fields
/// added after 1.20, the `default: ""` that 1.20 reads as null, and kinds served since under
/// another version (same schema). Returns what was changed, for the test's report.
fn for_kubernetes_1_20(obj: &mut DynamicObject) -> Vec<String> {
    const NEWER_FIELDS: [&str; 4] =
        ["x-kubernetes-validations", "appArmorProfile", "hostUsers", "internalTrafficPolicy"];
    fn strip(v: &mut serde_json::Value, changed: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                map.retain(|k, val| {
                    let drop = NEWER_FIELDS.contains(&k.as_str()) || (k == "default" && val == "");
                    if drop {
                        changed.push(if k == "default" { "default: \"\"".into() } else { k.clone() });
                    }
                    !drop
                });
                map.values_mut().for_each(|val| strip(val, changed));
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|i| strip(i, changed)),
            _ => {}
        }
    }
    let mut changed = vec![];
    strip(&mut obj.data, &mut changed);
    let t = obj.types.as_mut().unwrap();
    for (kind, now, then) in
        [("PodDisruptionBudget", "policy/v1", "policy/v1beta1"), ("CronJob", "batch/v1", "batch/v1beta1")]
    {
        if t.kind == kind && t.api_version == now {
            t.api_version = then.into();
            changed.push(format!("{kind} as {then}"));
        }
    }
    changed
}

/// Calico's and Cilium's embedded manifests on the real API server: CRDs applied and
/// Established, every other object admitted by server-side dry-run (each object, none stored),
/// after taking out only what 1.20 does not know ([`for_kubernetes_1_20`]; the test prints
/// what). Their images cannot run on this machine; this is what can be checked here.
#[tokio::test(flavor = "multi_thread")]
async fn calico_and_cilium_manifests_pass_server_side_dry_run() {
    let server = KubeServer::start();
    let c = client(&server).await;
    let crds = Api::<CustomResourceDefinition>::all(c.clone());
    for cni in [Cni::Calico, Cni::Cilium] {
        let (name, stack) = (cni.as_str(), manifests::cni(cni).unwrap());
        let mut adjusted = std::collections::BTreeSet::new();
        let objects: Vec<DynamicObject> = stack
            .objects()
            .unwrap()
            .into_iter()
            .map(|mut o| {
                adjusted.extend(for_kubernetes_1_20(&mut o));
                o
            })
            .collect();
        let kind = |o: &DynamicObject| o.types.as_ref().unwrap().kind.clone();
        let (first, rest): (Vec<_>, Vec<_>) =
            objects.into_iter().partition(|o| matches!(kind(o).as_str(), "Namespace" | "CustomResourceDefinition"));
        for obj in &first {
            let crd = obj.metadata.name.clone().unwrap();
            manifests::apply_objects(&c, &stack, std::slice::from_ref(obj), false)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            if kind(obj) == "CustomResourceDefinition" {
                established(&crds, &crd).await;
            }
        }
        for obj in &rest {
            manifests::apply_objects(&c, &stack, std::slice::from_ref(obj), true)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        // Dry-run stored nothing.
        for (k, ns, n) in manifests::workloads(&stack).unwrap() {
            let stored = match k.as_str() {
                "DaemonSet" => Api::<DaemonSet>::namespaced(c.clone(), &ns).get_opt(&n).await.unwrap().is_some(),
                _ => Api::<Deployment>::namespaced(c.clone(), &ns).get_opt(&n).await.unwrap().is_some(),
            };
            assert!(!stored, "{name}: {k} {ns}/{n} was stored by a dry-run");
        }
        eprintln!(
            "{name}: {} CRDs/namespaces applied, {} objects admitted by dry-run; taken out for 1.20: {adjusted:?}",
            first.len(),
            rest.len()
        );
        manifests::remove(&c, &stack).await.unwrap();
    }
}
