//! The agent as a process against a real kube-apiserver (`tests/src/kube_server.rs`), acting as
//! its own service account with the RBAC the k8s-controller installs (kubeconfig `as:`),
//! publishing heartbeats to a real nats-server; the manager records them and `ksctl cluster info`
//! shows them, with drift against what ksctl expects. The agent runs with the environment its
//! Deployment would give it: the installed `ksctl-agent-bus` Secret's data and the Deployment's
//! own variables (this server has no kubelet to run the pod).
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::core::v1::Secret;
use ksctl_k8s_controller::COMPONENTS;
use ksctl_k8s_controller::kube_api::{self, AgentSettings, Install};
use ksctl_tests::kube_server::KubeServer;
use ksctl_tests::{System, SystemOptions, TempDir, bin, eventually};
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn agent_heartbeats_reach_info_with_drift() {
    let server = KubeServer::start();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let admin = kube_api::client_from(&server.kubeconfig).await.unwrap();
    let sys = System::start(SystemOptions::default()).await;
    let agent_settings = AgentSettings {
        image: "ksctl-rs:latest".into(),
        nats_url: sys.nats.url(),
        nats_user: None,
        nats_password: None,
    };
    let install =
        Install { cluster_id: "hb", artifacts: &Default::default(), state: Default::default(), agent: &agent_settings };
    for c in COMPONENTS {
        kube_api::install_component(&admin, c, &install).await.unwrap();
    }
    let nodes: Api<Node> = Api::all(admin.clone());
    for name in ["hb-vm-cp-0", "hb-vm-wp-0"] {
        let n: Node = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        nodes.create(&PostParams::default(), &n).await.unwrap();
    }
    let ready = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    nodes.patch_status("hb-vm-cp-0", &PatchParams::default(), &Patch::Merge(&ready)).await.unwrap();

    let (code, out, err) = sys.create_ha("hb", 1, &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (_, info, _) = sys.ksctl(&["cluster", "info", "hb"]).await;
    assert!(info.contains("agent: no heartbeat yet"), "{info}");

    // The agent reads the cluster as its service account: its RBAC must be enough.
    let dir = TempDir::new("agent");
    let kubeconfig = dir.0.join("kubeconfig");
    let as_agent =
        server.kubeconfig.replace("  user:\n", "  user:\n    as: system:serviceaccount:ksctl-system:ksctl-agent\n");
    std::fs::write(&kubeconfig, &as_agent).unwrap();
    // The identity really is the agent's: the same read as someone without RBAC is refused.
    let as_nobody = as_agent.replace("ksctl-system:ksctl-agent", "default:nobody");
    let nobody = kube_api::client_from(&as_nobody).await.unwrap();
    let err = ksctl_agent::heartbeat(&nobody, "hb").await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(ref s) if s.code == 403), "{err:?}");
    let agent_client = kube_api::client_from(&as_agent).await.unwrap();
    assert_eq!(ksctl_agent::heartbeat(&agent_client, "hb").await.unwrap().nodes.len(), 2);
    // The pod's environment: the Secret's data (envFrom) and the container's env, as installed.
    let secret = Api::<Secret>::namespaced(admin.clone(), "ksctl-system").get("ksctl-agent-bus").await.unwrap();
    let deployment = Api::<Deployment>::namespaced(admin.clone(), "ksctl-system").get("ksctl-agent").await.unwrap();
    let container = deployment.spec.template.spec.unwrap().containers.remove(0);
    let port = ksctl_tests::free_port();
    let log = std::fs::File::create(sys.logs.join("ksctl-agent.log")).unwrap();
    let mut cmd = std::process::Command::new(bin(&container.command.unwrap()[0]));
    for (k, v) in secret.data.unwrap() {
        cmd.env(k, String::from_utf8(v.0).unwrap());
    }
    for e in container.env.unwrap() {
        // The pod's port, moved to a free one on this machine.
        let v = e.value.unwrap().replace("0.0.0.0:9100", &format!("127.0.0.1:{port}"));
        cmd.env(e.name, v);
    }
    let mut agent = cmd
        .env("KSCTL_AGENT_KUBECONFIG", &kubeconfig)
        .env("KSCTL_AGENT_INTERVAL_SECS", "1")
        .stderr(log)
        .spawn()
        .unwrap();

    let info = eventually(Duration::from_secs(30), "a heartbeat in info", || async {
        let (_, info, _) = sys.ksctl(&["cluster", "info", "hb"]).await;
        info.contains("agent: heartbeat").then_some(info)
    })
    .await;
    // Its readiness probe passes once a heartbeat went out; its metrics count them.
    let http = |path: &str| {
        let out = std::process::Command::new("curl").args(["-sf", &format!("http://127.0.0.1:{port}{path}")]).output();
        String::from_utf8_lossy(&out.unwrap().stdout).into_owned()
    };
    assert_eq!(http("/readyz"), "ready\n");
    assert!(http("/metrics").contains("ksctl_agent_heartbeats_total{outcome=\"published\"}"));
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(info.contains("API server v1.20.2") && info.contains("2 nodes (1 ready)"), "{info}");
    // 3 control planes + 1 worker, Kubernetes 1.31 (the default) are expected.
    assert!(info.contains("drift: 2 nodes, 4 expected"), "{info}");
    assert!(info.contains("drift: API server v1.20.2"), "{info}");
    assert!(info.contains("drift: not ready: hb-vm-wp-0"), "{info}");

    // A heartbeat for a cluster ksctl does not know changes nothing.
    let nats = async_nats::connect(sys.nats.url()).await.unwrap();
    let ghost = serde_json::json!({"cluster_id": "ghost", "sent_at_ms": 1, "server_version": "v1", "nodes": []});
    nats.publish("ksctl.events.ghost.health", serde_json::to_vec(&ghost).unwrap().into()).await.unwrap();
    nats.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sys.store.get("health.ghost").await.unwrap().is_none());
}
