//! The k8s-controller's Kubernetes operations against a real API server (the Debian-built
//! kube-apiserver 1.20 on etcd, `tests/src/kube_server.rs`): server-side apply that changes
//! nothing the second time, a competing field manager handled on purpose, RBAC that allows the
//! agent exactly what it needs (asked as the agent, by SelfSubjectAccessReview), CRDs from Rust
//! types whose schemas the server enforces, uninstall, drain; the agent's Deployment, Service and
//! bus Secret, flannel and the metrics-server addon from their embedded manifests, and the
//! readiness wait (this server runs no controller manager, so `WorkloadController` plays it).
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use ksctl_k8s_controller::COMPONENTS;
use ksctl_k8s_controller::crds::{ClusterAddon, Stack, StackComponent, StackSpec};
use ksctl_k8s_controller::kube_api::{self, AgentSettings, Install, NAMESPACE};
use ksctl_k8s_controller::manifests;
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

fn agent(user: Option<&str>) -> AgentSettings {
    AgentSettings {
        image: "registry.example/ksctl-rs:1.2.3".into(),
        nats_url: "nats://bus.example:4222".into(),
        nats_user: user.map(str::to_string),
        nats_password: user.map(|_| "s3cret".to_string()),
    }
}

async fn install(client: &kube::Client, state: &BTreeMap<String, String>) {
    let agent = agent(None);
    let install = Install { cluster_id: "demo", artifacts: &Default::default(), state: state.clone(), agent: &agent };
    for c in COMPONENTS {
        kube_api::install_component(client, c, &install).await.unwrap();
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

    // The agent may read Nodes and ksctl-system's ConfigMaps, Pods, Deployments; nothing else.
    let ns = Some(NAMESPACE);
    for (verb, group, resource, ns, want) in [
        ("list", "", "nodes", None, true),
        ("watch", "", "nodes", None, true),
        ("get", "", "configmaps", ns, true),
        ("list", "", "pods", ns, true),
        ("get", "apps", "deployments", ns, true),
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
    let no_creds = agent(None);
    let install_ctx =
        Install { cluster_id: "demo", artifacts: &Default::default(), state: state("1.31"), agent: &no_creds };
    kube_api::install_component(&c, "cni/flannel", &install_ctx).await.unwrap();

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
    assert!(!data.contains_key("KSCTL_NATS_PASSWORD"), "no credentials when the bus needs none");
    let svc = Api::<Service>::namespaced(c.clone(), NAMESPACE).get("ksctl-agent").await.unwrap();
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].port, 9100);
    // With credentials, the Secret carries the agent's own (and a re-apply adds just them).
    let with_creds = agent(Some("agent-demo"));
    let ctx2 = Install { cluster_id: "demo", artifacts: &Default::default(), state: state("1.31"), agent: &with_creds };
    kube_api::install_component(&c, "secret/ksctl-agent-bus", &ctx2).await.unwrap();
    let data = Api::<Secret>::namespaced(c.clone(), NAMESPACE).get("ksctl-agent-bus").await.unwrap().data.unwrap();
    assert_eq!(
        (data["KSCTL_NATS_USER"].0.as_slice(), data["KSCTL_NATS_PASSWORD"].0.as_slice()),
        (&b"agent-demo"[..], &b"s3cret"[..])
    );

    // flannel from its embedded manifest, pinned, labelled as ksctl's.
    let ds = Api::<DaemonSet>::namespaced(c.clone(), "kube-flannel").get("kube-flannel-ds").await.unwrap();
    assert_eq!(ds.metadata.labels.as_ref().unwrap()["ksctl.io/stack"], "flannel");
    let image = ds.spec.template.spec.unwrap().containers[0].image.clone().unwrap();
    assert_eq!(image, "docker.io/flannel/flannel:v0.26.1");

    // Not ready while no controller has rolled them out: the error names each workload and why.
    let plan: Vec<String> = COMPONENTS.iter().map(|c| c.to_string()).chain(["cni/flannel".to_string()]).collect();
    let workloads = kube_api::plan_workloads(&plan).unwrap();
    let err = manifests::wait_ready(&c, &workloads, Duration::from_secs(2)).await.unwrap_err().to_string();
    assert!(err.contains("not ready after 2 s"), "{err}");
    assert!(err.contains("Deployment ksctl-system/ksctl-agent: not yet seen by its controller"), "{err}");
    assert!(err.contains("DaemonSet kube-flannel/kube-flannel-ds"), "{err}");
    // Rolled out (by the test standing in for the controller manager): ready.
    ksctl_tests::kube_server::roll_out(&c).await.unwrap();
    manifests::wait_ready(&c, &workloads, Duration::from_secs(5)).await.unwrap();

    // The metrics-server addon: its objects (the aggregated API included), its Stack, the
    // ClusterAddon listing it with its pinned version; enabling twice changes nothing.
    kube_api::enable_addon(&c, "metrics-server", &Default::default()).await.unwrap();
    kube_api::record_addons(&c, &["metrics-server".to_string()]).await.unwrap();
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
    assert_eq!(
        (ca.spec.addons[0].name.as_str(), ca.spec.addons[0].version.as_deref()),
        ("metrics-server", Some("v0.7.2"))
    );
    kube_api::enable_addon(&c, "metrics-server", &Default::default()).await.unwrap();
    assert_eq!(deployments.get("metrics-server").await.unwrap().metadata.resource_version, rv);
    let ms = manifests::workloads(&manifests::addon("metrics-server").unwrap()).unwrap();
    assert!(manifests::wait_ready(&c, &ms, Duration::from_secs(1)).await.is_err(), "a new workload is not ready");
    ksctl_tests::kube_server::roll_out(&c).await.unwrap();
    manifests::wait_ready(&c, &ms, Duration::from_secs(5)).await.unwrap();

    // Disabled: every object of the stack is gone, and its Stack; twice is fine.
    kube_api::disable_addon(&c, "metrics-server").await.unwrap();
    kube_api::disable_addon(&c, "metrics-server").await.unwrap();
    kube_api::record_addons(&c, &[]).await.unwrap();
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
