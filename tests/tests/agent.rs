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

/// ksctl's components as the install applies them, the agent's Secret without a credential.
async fn install_components(admin: &kube::Client, cluster_id: &str, sys: &System) -> AgentSettings {
    let agent = AgentSettings { image: "ksctl-rs:latest".into(), nats_url: sys.nats.url(), nats_ca: None };
    let install = Install {
        cluster_id,
        artifacts: &Default::default(),
        state: Default::default(),
        agent: &agent,
        credential: None,
    };
    for c in COMPONENTS {
        kube_api::install_component(admin, *c, &install).await.unwrap();
    }
    agent
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_heartbeats_reach_info_with_drift() {
    let server = KubeServer::start();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let admin = kube_api::client_from(&server.kubeconfig).await.unwrap();
    let sys = System::start(SystemOptions::default()).await;
    install_components(&admin, "hb", &sys).await;
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
    nats.publish("ksctl.health.ghost", serde_json::to_vec(&ghost).unwrap().into()).await.unwrap();
    nats.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(sys.store.get("health.ghost").await.unwrap().is_none());
    // The manager stamps what it keeps with its own clock, and refuses a heartbeat from the
    // future: it would read as fresh for as long as it lies.
    let kept = sys.store.get("health.hb").await.unwrap().unwrap();
    let hb: ksctl_core::messages::Heartbeat = serde_json::from_slice(&kept.value).unwrap();
    assert!(hb.received_at_ms > 0);
    let future =
        serde_json::json!({"cluster_id": "hb", "sent_at_ms": u64::MAX, "server_version": "v9.9.9", "nodes": []});
    nats.publish("ksctl.health.hb", serde_json::to_vec(&future).unwrap().into()).await.unwrap();
    nats.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sys.store.get("health.hb").await.unwrap().unwrap().revision, kept.revision);
}

/// The bus in operator mode: the CLI creates a cluster with its own credential; the
/// k8s-controller's credential code (run here in-process, against the real API server and the
/// real nats-server) gives the cluster's agent its own credential; the agent, run with the
/// installed Secret's environment, gets its heartbeats to the manager; a rotation replaces the
/// credential and revokes the old one (its agent is disconnected); deleting revokes the last.
#[tokio::test(flavor = "multi_thread")]
async fn each_agent_gets_its_own_credential_rotated_and_revoked() {
    use ksctl_bus::auth::Creds;
    use ksctl_core::records::{BootstrapRecord, ClusterRecord, K8sRecord};
    use ksctl_k8s_controller::credentials::AgentCredentials;

    let server = KubeServer::start();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let admin = kube_api::client_from(&server.kubeconfig).await.unwrap();
    // The k8s-controller process checks credentials every second (a sixth of 6 s).
    let sys = System::start(SystemOptions {
        nats_auth: true,
        env: vec![("ksctl-k8s-controller".into(), "KSCTL_AGENT_CREDENTIAL_TTL_SECS".into(), "6".into())],
        ..Default::default()
    })
    .await;
    let (code, out, err) = sys.create_ha("cred", 1, &[]).await;
    assert_eq!(code, 0, "the CLI's credential may send requests: {out}{err}");
    let id = ksctl_core::ClusterId::new("cred").unwrap();

    // The cluster's kubeconfig points at the real API server, as a bootstrap would leave it.
    let sealer = ksctl_core::seal::Sealer::from_base64(&sys.seal_key).unwrap();
    let sealed = sealer.seal("kubeconfig/cred", server.kubeconfig.as_bytes());
    ksctl_runtime::update_record(&sys.store, &ksctl_core::keys::bootstrap(&id), |r: &mut BootstrapRecord| {
        r.kubeconfig = Some(sealed.clone())
    })
    .await
    .unwrap();
    let agent_settings = install_components(&admin, "cred", &sys).await;
    let files = sys.nats.auth.clone().unwrap();
    let credentials = std::sync::Arc::new(AgentCredentials::new(
        files.authority(),
        Duration::from_secs(3600),
        sys.nats.url(),
        Default::default(),
        sys.store.clone(),
    ));
    let settings = kube_api::Settings {
        drain_timeout: Duration::from_secs(5),
        ready_timeout: Duration::from_secs(5),
        agent: agent_settings.clone(),
        artifacts: Default::default(),
    };
    let kube = kube_api::KubeApi::new(sys.store.clone(), settings, Some(credentials.clone()), sys.client.clone());
    let cluster = || async {
        ksctl_store::get_json::<ClusterRecord>(sys.store.as_ref(), &ksctl_core::keys::cluster(&id))
            .await
            .unwrap()
            .unwrap()
            .0
    };
    let installed = || async {
        let s = Api::<Secret>::namespaced(admin.clone(), "ksctl-system").get("ksctl-agent-bus").await.unwrap();
        let data = s.data.unwrap();
        let env: Vec<(String, String)> = data.into_iter().map(|(k, v)| (k, String::from_utf8(v.0).unwrap())).collect();
        let creds = Creds::parse(&env.iter().find(|(k, _)| k == "KSCTL_NATS_CREDS").unwrap().1).unwrap();
        (env, creds)
    };
    let recorded = || async {
        ksctl_runtime::read_record::<K8sRecord>(&sys.store, &ksctl_core::keys::k8s(&id)).await.unwrap().agent_credential
    };
    kube.rotate_credential(&sealer, &cluster().await).await.unwrap();
    let (env, first) = installed().await;
    assert_eq!(recorded().await.unwrap().user, first.public_key().unwrap());
    let claims = first.claims().unwrap();
    assert_eq!(claims.nats.publish.allow, vec!["ksctl.health.cred".to_string()]);
    assert!(claims.exp.is_some());

    // The agent with the Secret's environment: its heartbeats reach the manager.
    let dir = TempDir::new("agent-cred");
    let kubeconfig = dir.0.join("kubeconfig");
    std::fs::write(&kubeconfig, &server.kubeconfig).unwrap();
    let log = std::fs::File::create(sys.logs.join("ksctl-agent.log")).unwrap();
    let mut agent = std::process::Command::new(bin("ksctl-agent"))
        .envs(env)
        .env("KSCTL_AGENT_KUBECONFIG", &kubeconfig)
        .env("KSCTL_AGENT_INTERVAL_SECS", "1")
        .stderr(log)
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(30), "a heartbeat in info", || async {
        let (_, info, _) = sys.ksctl(&["cluster", "info", "cred"]).await;
        info.contains("agent: heartbeat").then_some(())
    })
    .await;

    // Rotation: a new credential in the Secret and the record, the old one revoked at once.
    kube.rotate_credential(&sealer, &cluster().await).await.unwrap();
    let (_, second) = installed().await;
    assert_ne!(second, first);
    assert_eq!(recorded().await.unwrap().user, second.public_key().unwrap());
    let d = Api::<Deployment>::namespaced(admin.clone(), "ksctl-system").get("ksctl-agent").await.unwrap();
    assert_eq!(
        d.spec.template.metadata.unwrap().annotations.unwrap()["ksctl.io/nats-user"],
        second.public_key().unwrap()
    );
    let connects = |c: Creds| {
        let url = sys.nats.url();
        async move {
            let opts = ksctl_bus::NatsAuth { creds: Some(c.file_text()), ..Default::default() }.options().unwrap();
            match opts.max_reconnects(1).connect(url).await {
                Err(_) => false,
                Ok(client) => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    client.connection_state() == async_nats::connection::State::Connected
                }
            }
        }
    };
    assert!(!connects(first.clone()).await, "the replaced credential is revoked");
    assert!(connects(second.clone()).await);
    let revoked_at = sys.store.get(ksctl_core::keys::NATS_REVOCATIONS).await.unwrap();
    assert!(revoked_at.is_some());

    // The k8s-controller's own rotation: a credential in the last third of its life is replaced
    // by the running service (Secret, record), and the one it replaced revoked.
    let now = ksctl_k8s_controller::credentials::now();
    ksctl_runtime::update_record(&sys.store, &ksctl_core::keys::k8s(&id), |r: &mut K8sRecord| {
        if let Some(c) = r.agent_credential.as_mut() {
            (c.issued_at, c.expires_at) = (now - 100, now + 10);
        }
    })
    .await
    .unwrap();
    let third = eventually(Duration::from_secs(30), "the k8s-controller rotating the credential", || async {
        let (_, c) = installed().await;
        (c != second).then_some(c)
    })
    .await;
    eventually(Duration::from_secs(10), "the record naming it", || async {
        (recorded().await?.user == third.public_key().unwrap()).then_some(())
    })
    .await;
    assert!(!connects(second.clone()).await, "the credential it replaced is revoked");
    assert!(connects(third.clone()).await);

    // Deleting the cluster through the bus: the k8s-controller's uninstall revokes the credential
    // its agent holds first (whatever the provider; the rotation skips a cluster being deleted).
    let (code, out, err) = sys.ksctl(&["cluster", "delete", "cred"]).await;
    assert_eq!(code, 0, "{out}{err}");
    sys.wait_gone("cred", Duration::from_secs(60)).await;
    let last = installed().await.1;
    assert!(!connects(last).await, "a deleted cluster's credential no longer connects");
    assert!(!connects(third).await);
    let _ = agent.kill();
    let _ = agent.wait();
}
