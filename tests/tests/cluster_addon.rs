//! Addons driven from inside the cluster, end to end: on a managed EKS cluster whose API server
//! is real (`ksctl_tests::eks_lab`), the agent runs as a process with its own service account's
//! RBAC (kubeconfig `as:`) and puts the `ClusterAddon` object's spec into its heartbeats; the
//! manager starts the addon operations the CLI would; the k8s-controller writes the object's
//! status. A change from the CLI is written into the object; when both change it, the later
//! write of the object wins; a version ksctl does not ship fails once, visibly, and is not retried
//! until the object changes again.
use k8s_openapi::api::apps::v1::Deployment;
use ksctl_core::records::ClusterRecord;
use ksctl_k8s_controller::crds::{AddonStatus, ClusterAddon};
use ksctl_tests::eks_lab::EksLab;
use ksctl_tests::{System, TempDir, bin, eventually};
use kube::api::{Api, Patch, PatchParams};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);
const NAME: &str = "inside";

/// The agent as its Deployment would run it, reading the cluster as its service account.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(lab: &EksLab, dir: &TempDir) -> Agent {
    let kubeconfig = dir.0.join("agent-kubeconfig");
    let as_agent =
        lab.kube.kubeconfig.replace("  user:\n", "  user:\n    as: system:serviceaccount:ksctl-system:ksctl-agent\n");
    assert_ne!(as_agent, lab.kube.kubeconfig);
    std::fs::write(&kubeconfig, as_agent).unwrap();
    let log = std::fs::File::create(lab.sys.logs.join("ksctl-agent.log")).unwrap();
    let child = std::process::Command::new(bin("ksctl-agent"))
        .env("KSCTL_NATS_URL", lab.sys.nats.url())
        .env("KSCTL_CLUSTER_ID", NAME)
        .env("KSCTL_AGENT_KUBECONFIG", &kubeconfig)
        .env("KSCTL_AGENT_INTERVAL_SECS", "1")
        .stderr(log)
        .spawn()
        .unwrap();
    Agent(child)
}

/// Sets the object's `spec.addons` as a user would (`kubectl edit`: an update by another
/// field manager) and returns the generation it made.
async fn edit(objects: &Api<ClusterAddon>, addons: serde_json::Value) -> i64 {
    let patch = serde_json::json!({"spec": {"addons": addons}});
    let pp = PatchParams { field_manager: Some("kubectl-edit".into()), ..Default::default() };
    objects.patch("addons", &pp, &Patch::Merge(&patch)).await.unwrap().metadata.generation.unwrap()
}

async fn status(objects: &Api<ClusterAddon>, addon: &str) -> Option<AddonStatus> {
    objects.get("addons").await.unwrap().status.and_then(|mut s| s.addons.remove(addon))
}

/// The cluster once idle with exactly `addons` enabled.
async fn settled(sys: &System, addons: &[&str], what: &str) -> ClusterRecord {
    eventually(T, what, || async {
        sys.cluster(NAME).await.filter(|r| r.operation.is_none() && r.spec.addons == addons)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn editing_the_cluster_addon_object_enables_and_disables_addons_end_to_end() {
    let lab = EksLab::start(NAME, vec![]).await;
    let dir = TempDir::new("cluster-addon");
    lab.create(NAME, 1).await;
    lab.sys.wait_state(NAME, "running", T).await;
    let admin = lab.admin().await;
    let objects: Api<ClusterAddon> = Api::namespaced(admin.clone(), "ksctl-system");
    let deployments = |ns: &str| Api::<Deployment>::namespaced(admin.clone(), ns);
    // The install wrote the object from the cluster record: no addons.
    assert!(objects.get("addons").await.unwrap().spec.addons.is_empty());
    let _agent = start_agent(&lab, &dir);

    // An edit in the cluster installs an addon through the bus.
    let g1 = edit(&objects, serde_json::json!([{"name": "ingress-nginx"}])).await;
    let rec = settled(&lab.sys, &["ingress-nginx"], "ingress-nginx enabled from the object").await;
    assert_eq!(rec.state.as_str(), "running");
    let op = rec.last_operation.unwrap();
    assert_eq!((op.kind.as_str(), op.cluster_addon_generation), ("addon_enable", Some(g1)));
    assert!(op.error.is_none());
    deployments("ingress-nginx").get("ingress-nginx-controller").await.expect("the addon's controller");
    let s = status(&objects, "ingress-nginx").await.unwrap();
    assert_eq!(
        (s.phase.as_str(), s.version.as_deref(), s.observed_generation, s.last_error),
        ("Installed", Some("v1.15.1"), Some(g1), None)
    );

    // A request's change is written into the object, next to the edit's, and stays.
    let (code, out, err) = lab.sys.ksctl(&["cluster", "addons", "enable", NAME, "metrics-server"]).await;
    assert_eq!(code, 0, "{out}{err}");
    settled(&lab.sys, &["ingress-nginx", "metrics-server"], "metrics-server enabled by request").await;
    let spec: Vec<(String, Option<String>)> =
        objects.get("addons").await.unwrap().spec.addons.into_iter().map(|a| (a.name, a.version)).collect();
    assert_eq!(spec, [("ingress-nginx".into(), None), ("metrics-server".into(), None)]);
    assert_eq!(status(&objects, "metrics-server").await.unwrap().phase, "Installed");
    // Heartbeats keep coming; none of them undoes it (the object says the same).
    tokio::time::sleep(Duration::from_secs(3)).await;
    settled(&lab.sys, &["ingress-nginx", "metrics-server"], "both still enabled").await;

    // The object, written later, wins: it drops ingress-nginx, which is removed.
    edit(&objects, serde_json::json!([{"name": "metrics-server", "version": "v0.7.2"}])).await;
    settled(&lab.sys, &["metrics-server"], "ingress-nginx disabled from the object").await;
    eventually(T, "ingress-nginx gone", || async {
        deployments("ingress-nginx").get_opt("ingress-nginx-controller").await.unwrap().is_none().then_some(())
    })
    .await;
    assert_eq!(status(&objects, "ingress-nginx").await, None);

    // A version ksctl does not ship fails once, in the status and the cluster's state, and is
    // not tried again for the same generation.
    let g3 =
        edit(&objects, serde_json::json!([{"name": "metrics-server"}, {"name": "ingress-nginx", "version": "v0.0.1"}]))
            .await;
    let failed = eventually(T, "the pinned version refused", || async {
        lab.sys.cluster(NAME).await.filter(|r| r.operation.is_none() && r.state.as_str() == "configuring_failed")
    })
    .await;
    let op = failed.last_operation.unwrap();
    assert!(op.error.as_deref().unwrap().contains("ingress-nginx v0.0.1 is not available"), "{op:?}");
    let s = status(&objects, "ingress-nginx").await.unwrap();
    assert_eq!((s.phase.as_str(), s.observed_generation), ("Failed", Some(g3)));
    assert!(s.last_error.unwrap().contains("this ksctl ships ingress-nginx v1.15.1"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Neither finished nor under way: a retry still running would show in `operation`.
    let rec = lab.sys.cluster(NAME).await.unwrap();
    assert!(rec.operation.is_none(), "retried: {:?}", rec.operation);
    assert_eq!(rec.last_operation.unwrap().id, op.id, "not retried");

    // The next edit fixes it.
    edit(&objects, serde_json::json!([{"name": "metrics-server"}, {"name": "ingress-nginx"}])).await;
    let rec = settled(&lab.sys, &["metrics-server", "ingress-nginx"], "ingress-nginx enabled after the fix").await;
    assert_eq!(rec.state.as_str(), "running");
    assert_eq!(status(&objects, "ingress-nginx").await.unwrap().phase, "Installed");

    // Two entries that cannot be installed: the first fails, and that generation is followed no
    // further — no second operation, no retry — until the object changes.
    let both = serde_json::json!([{"name": "metrics-server"}, {"name": "ingress-nginx"}, {"name": "nope-one"}, {"name": "nope-two"}]);
    edit(&objects, both).await;
    let failed = eventually(T, "nope-one refused", || async {
        lab.sys.cluster(NAME).await.filter(|r| r.operation.is_none() && r.state.as_str() == "configuring_failed")
    })
    .await;
    let op = failed.last_operation.unwrap();
    assert!(op.id.as_str().contains("nope-one") && op.error.as_deref().unwrap().contains("unknown addon"), "{op:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rec = lab.sys.cluster(NAME).await.unwrap();
    assert!(rec.operation.is_none(), "followed further: {:?}", rec.operation);
    assert_eq!(rec.last_operation.unwrap().id, op.id, "followed no further");

    // A late heartbeat that read an older generation changes nothing (it would disable both).
    let uid = objects.get("addons").await.unwrap().metadata.uid.unwrap();
    let nats = async_nats::connect(lab.sys.nats.url()).await.unwrap();
    let old = serde_json::json!({"cluster_id": NAME, "sent_at_ms": ksctl_core::now_ms(), "server_version": "v1.20.2",
        "nodes": [], "addons": {"uid": uid, "generation": g1, "addons": []}});
    nats.publish(format!("ksctl.health.{NAME}"), serde_json::to_vec(&old).unwrap().into()).await.unwrap();
    nats.flush().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rec = lab.sys.cluster(NAME).await.unwrap();
    assert!(rec.operation.is_none(), "an old reading started {:?}", rec.operation);
    assert_eq!(
        (rec.spec.addons.len(), rec.last_operation.unwrap().id),
        (2, op.id.clone()),
        "an old reading was acted on"
    );

    // The object deleted, then a request: it is made again from what the cluster runs, with the
    // request's change, and the new object (new uid, generations from 1) is followed.
    objects.delete("addons", &Default::default()).await.unwrap();
    let (code, out, err) = lab.sys.ksctl(&["cluster", "addons", "disable", NAME, "ingress-nginx"]).await;
    assert_eq!(code, 0, "{out}{err}");
    settled(&lab.sys, &["metrics-server"], "ingress-nginx disabled by request").await;
    let remade = objects.get("addons").await.unwrap();
    assert_ne!(remade.metadata.uid.as_deref(), Some(uid.as_str()));
    let names: Vec<String> = remade.spec.addons.iter().map(|a| a.name.clone()).collect();
    assert_eq!(names, ["metrics-server"]);
    edit(&objects, serde_json::json!([{"name": "metrics-server"}, {"name": "ingress-nginx"}])).await;
    let rec = settled(&lab.sys, &["metrics-server", "ingress-nginx"], "the re-made object followed").await;
    assert_eq!(rec.state.as_str(), "running");
}
