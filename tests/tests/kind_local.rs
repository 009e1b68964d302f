//! The `local` provider (kind) through the whole system.
//!
//! Two tests here run against the kind stand-in (`tests/lab/kind-standin.sh`: kind's commands,
//! outputs and exit codes, and for `create cluster` a real Kubernetes API server — the
//! Debian-built kube-apiserver on its own etcd — with kind's kubeconfig; no node containers), for
//! what real kind makes slow or hard to arrange (adopting a cluster a dead create left, a
//! half-made one); one with the real Docker engine and no kind; and one with real kind and a
//! node image built here (`a_real_kind_cluster_runs_the_agent_and_is_deleted`).
use ksctl_core::ClusterId;
use ksctl_core::keys;
use ksctl_core::records::InfraRecord;
use ksctl_tests::kube_server::WorkloadController;
use ksctl_tests::{System, SystemOptions, TempDir};
use std::path::Path;
use std::time::Duration;

const T: Duration = Duration::from_secs(90);
const CLOUD: &str = "ksctl-cloud-controller";

fn standin() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/kind-standin.sh").display().to_string()
}

/// Stops what the stand-in started, whatever the test's outcome.
struct Clusters(TempDir);

impl Drop for Clusters {
    fn drop(&mut self) {
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("for p in {}/*/*.pid; do kill -9 $(cat $p) 2>/dev/null; done", self.0.0.display()))
            .status();
    }
}

async fn system(kind_bin: &str, state: Option<&Path>) -> System {
    let mut env = vec![
        ("ksctl-manager".to_string(), "KSCTL_PROVIDERS".to_string(), "sim,local".to_string()),
        (CLOUD.into(), "KSCTL_KIND_BIN".into(), kind_bin.into()),
        // kind's create takes its time; so does the stand-in's API server.
        ("*".into(), "KSCTL_PHASE_TIMEOUT_SECS".into(), "120".into()),
    ];
    if let Some(dir) = state {
        env.extend(standin_env(dir).into_iter().map(|(k, v)| (CLOUD.to_string(), k, v)));
    }
    System::start(SystemOptions { env, ..Default::default() }).await
}

async fn ksctl_ok(sys: &System, args: &[&str]) -> String {
    let (code, out, err) = sys.ksctl(args).await;
    assert_eq!(code, 0, "{args:?}: {out}{err} (logs in {})", sys.logs.display());
    out
}

/// Docker is on this machine; kind is not: a create fails at once, saying what to install, and
/// the failed cluster deletes cleanly.
#[tokio::test(flavor = "multi_thread")]
async fn without_kind_a_local_create_fails_at_once_saying_what_to_install() {
    let sys = system("/nonexistent/kind", None).await;
    let started = std::time::Instant::now();
    let (code, out, err) = sys
        .ksctl(&[
            "cluster",
            "create",
            "--name",
            "nokind",
            "--provider",
            "local",
            "--type",
            "managed",
            "--managed-nodes",
            "1",
        ])
        .await;
    assert_ne!(code, 0, "{out}{err}");
    let rec = sys.wait_state("nokind", "creation_failed", T).await;
    let error = rec.last_operation.unwrap().error.unwrap();
    assert!(error.contains("needs kind") && error.contains("kind.sigs.k8s.io"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(30), "failed at once, not after retries: {:?}", started.elapsed());
    assert!(format!("{out}{err}").contains("needs kind"), "the CLI shows why: {out}{err}");
    ksctl_ok(&sys, &["cluster", "delete", "nokind"]).await;
    sys.wait_gone("nokind", T).await;
}

/// create (3 nodes, Kubernetes 1.30) → the API server gets ksctl's components → info, switch →
/// scale refused, nothing changes → delete stops the cluster. kind ran `create` once.
#[tokio::test(flavor = "multi_thread")]
async fn a_local_cluster_is_created_used_and_deleted_through_kind() {
    let state = Clusters(TempDir::new("kind-standin"));
    let sys = system(&standin(), Some(&state.0.0)).await;
    let kc_file = state.0.0.join("ksctl-kl/kubeconfig");
    // Plays kube-controller-manager (the stand-in runs none) once the API server is up.
    let _controller = WorkloadController::start(move || {
        let kc_file = kc_file.clone();
        async move {
            let kc = std::fs::read_to_string(&kc_file).ok()?;
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            ksctl_k8s_controller::kube_api::client_from(&kc).await.ok()
        }
    });
    ksctl_ok(
        &sys,
        &[
            "cluster",
            "create",
            "--name",
            "kl",
            "--provider",
            "local",
            "--type",
            "managed",
            "--managed-nodes",
            "3",
            "--version",
            "1.30",
        ],
    )
    .await;
    let rec = sys.wait_state("kl", "running", T).await;
    assert_eq!(rec.spec.managed_nodes, 3);
    let creates = std::fs::read_to_string(state.0.0.join("creates.log")).unwrap();
    assert_eq!(creates, "ksctl-kl image=kindest/node:v1.30.4 control-planes=1 workers=2\n");

    // The kubeconfig is sealed in state, with ksctl's context name, and reaches the cluster.
    let id = ClusterId::new("kl").unwrap();
    let infra: InfraRecord = ksctl_store::get_json(sys.store.as_ref(), &keys::cloud(&id)).await.unwrap().unwrap().0;
    assert_eq!(infra.managed_cluster.as_deref(), Some("ksctl-kl"));
    let sealed = infra.kubeconfig.unwrap();
    let stored = serde_json::to_string(&sealed).unwrap();
    assert!(!stored.contains("client-key-data") && !stored.contains("BEGIN"), "the kubeconfig is sealed: {stored}");
    let kc = ksctl_core::seal::Sealer::from_base64(&sys.seal_key)
        .unwrap()
        .open_string(&format!("kubeconfig/{id}"), &sealed)
        .unwrap();
    assert!(!kc.contains("kind-ksctl-kl"), "{kc}");
    let client = ksctl_k8s_controller::kube_api::client_from(&kc).await.unwrap();
    let deploys: kube::Api<k8s_openapi::api::apps::v1::Deployment> = kube::Api::namespaced(client, "ksctl-system");
    assert!(deploys.get("ksctl-agent").await.is_ok(), "the k8s phase installed the agent");

    let info = ksctl_ok(&sys, &["cluster", "info", "kl"]).await;
    assert!(info.contains("local") && info.contains("running"), "{info}");
    let switched = ksctl_ok(&sys, &["cluster", "switch", "kl"]).await;
    assert!(switched.contains("switched to context kl-local-managed-local-ksctl"), "{switched}");
    let merged = std::fs::read_to_string(sys.logs.join(".kube/config")).unwrap();
    assert!(merged.contains("current-context: kl-local-managed-local-ksctl"), "{merged}");
    assert!(merged.contains("server: https://127.0.0.1:"), "{merged}");

    let (code, out, err) = sys.ksctl(&["cluster", "scale", "kl", "--workers", "4"]).await;
    assert_ne!(code, 0);
    assert!(format!("{out}{err}").contains("kind clusters cannot change their node count"), "{out}{err}");
    let after = sys.cluster("kl").await.unwrap();
    assert_eq!((after.state.as_str(), after.spec.managed_nodes), ("running", 3), "the refusal changed nothing");

    ksctl_ok(&sys, &["cluster", "delete", "kl"]).await;
    sys.wait_gone("kl", T).await;
    assert!(!state.0.0.join("ksctl-kl").exists(), "kind deleted the cluster");
    let (_, clusters, _) = run_env(&standin(), &["get", "clusters"], &standin_env(&state.0.0));
    assert!(clusters.trim().is_empty(), "{clusters}");
}

/// A create that died after kind made the cluster: the next run adopts the cluster whose API
/// server answers (kind is not asked to create it again) and makes again one that kind left
/// half-made (no control plane answering).
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_kind_already_made_is_adopted_and_a_half_made_one_made_again() {
    let state = Clusters(TempDir::new("kind-standin"));
    let dir = state.0.0.clone();
    let sys = system(&standin(), Some(&dir)).await;
    let env = standin_env(&dir);
    let config = dir.join("pre.yaml");
    std::fs::write(&config, "kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nnodes:\n- role: control-plane\n")
        .unwrap();
    let kc = dir.join("pre-kubeconfig");
    let pre = ["create", "cluster", "--name", "ksctl-adopt", "--config", config.to_str().unwrap()];
    let (ok, _, err) = run_env(
        &standin(),
        &[&pre[..], &["--image", "kindest/node:v1.31.0", "--kubeconfig", kc.to_str().unwrap()]].concat(),
        &env,
    );
    assert!(ok, "{err}");
    // Half-made: kind's node exists, its control plane never came up.
    std::fs::create_dir_all(dir.join("ksctl-halfmade")).unwrap();
    for name in ["adopt", "halfmade"] {
        let create = ["cluster", "create", "--name", name, "--provider", "local", "--type", "managed"];
        ksctl_ok(&sys, &[&create[..], &["--managed-nodes", "1", "--no-wait"]].concat()).await;
        let _controller = WorkloadController::start({
            let f = dir.join(format!("ksctl-{name}/kubeconfig"));
            move || {
                let f = f.clone();
                async move {
                    let kc = std::fs::read_to_string(&f).ok()?;
                    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
                    ksctl_k8s_controller::kube_api::client_from(&kc).await.ok()
                }
            }
        });
        sys.wait_state(name, "running", T).await;
    }
    let creates = std::fs::read_to_string(dir.join("creates.log")).unwrap();
    assert_eq!(
        creates.lines().filter(|l| l.starts_with("ksctl-adopt ")).count(),
        1,
        "adopted, not made again: {creates}"
    );
    assert_eq!(creates.lines().filter(|l| l.starts_with("ksctl-halfmade ")).count(), 1, "made by ksctl: {creates}");
    for name in ["adopt", "halfmade"] {
        ksctl_ok(&sys, &["cluster", "delete", name]).await;
        sys.wait_gone(name, T).await;
    }
    assert!(!dir.join("ksctl-adopt").exists() && !dir.join("ksctl-halfmade").exists());
}

fn standin_env(dir: &Path) -> Vec<(String, String)> {
    let bins = ksctl_tests::lab::kube_bins();
    vec![
        ("KIND_STANDIN_DIR".into(), dir.display().to_string()),
        ("KIND_STANDIN_APISERVER".into(), bins.join("kube-apiserver").display().to_string()),
        ("KIND_STANDIN_ETCD".into(), ksctl_tests::lab::rootfs().join("usr/bin/etcd").display().to_string()),
    ]
}

fn run_env(bin: &str, args: &[&str], env: &[(String, String)]) -> (bool, String, String) {
    let out = std::process::Command::new(bin).args(args).envs(env.iter().cloned()).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Real kind: kind v0.27.0 (Debian trixie's static binary) on this machine's Docker engine with
/// a node image built here (`tests/lab/build-kind.sh`: Kubernetes 1.20.2 from the lab's mirror,
/// images preloaded, a bridge CNI configuration since kindnet's image cannot be had). kind always
/// passes `--privileged`, which this machine's Docker refuses: a `docker` wrapper first on the
/// cloud-controller's PATH swaps it for the node lab's flags (a test-environment adaptation).
/// One node: the node image's pod network does not span nodes. kind creates its node container
/// on a network the test made (`KIND_EXPERIMENTAL_DOCKER_NETWORK`), whose gateway is where the
/// agent in its pod reaches NATS; the agent's image is loaded with `kind load docker-image`.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_kind_cluster_runs_the_agent_and_is_deleted() {
    let kind = ksctl_tests::node_lab::kind();
    let net = ksctl_tests::node_lab::NodeLab::start(0);
    // Whatever the outcome, kind's containers go before the network does.
    struct KindCleanup;
    impl Drop for KindCleanup {
        fn drop(&mut self) {
            let _ = std::process::Command::new("sh")
                .arg("-c")
                .arg("docker ps -aq --filter label=io.x-k8s.kind.cluster=ksctl-realkind | xargs -r docker rm -f -v")
                .output();
        }
    }
    let _cleanup = KindCleanup;
    let agent = std::process::Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/agent-image.sh"))
        .args(["-", "ksctl-rs:lab"])
        .output()
        .unwrap();
    assert!(agent.status.success(), "agent image: {}", String::from_utf8_lossy(&agent.stderr));
    let path = format!("{}:{}", kind.display(), std::env::var("PATH").unwrap_or_default());
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    let env = vec![
        s("ksctl-manager", "KSCTL_PROVIDERS", "sim,local"),
        s(CLOUD, "KSCTL_KIND_BIN", &kind.join("kind").display().to_string()),
        s(CLOUD, "PATH", &path),
        s(CLOUD, "KIND_EXPERIMENTAL_DOCKER_NETWORK", net.network()),
        s("ksctl-k8s-controller", "KSCTL_AGENT_IMAGE", "ksctl-rs:lab"),
        s("*", "KSCTL_PHASE_TIMEOUT_SECS", "300"),
    ];
    let sys =
        System::start(SystemOptions { env, agent_nats_host: Some(net.gateway.clone()), ..Default::default() }).await;
    let create = ["cluster", "create", "--name", "realkind", "--provider", "local", "--type", "managed"];
    ksctl_ok(&sys, &[&create[..], &["--managed-nodes", "1", "--version", "1.20.2", "--no-wait"]].concat()).await;
    let kind_run = |args: &[&str]| {
        let out = std::process::Command::new(kind.join("kind")).args(args).env("PATH", &path).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The agent's image, into the cluster's node once kind made it (its node container comes
    // and its containerd starts while `kind create` runs).
    let mut last = String::new();
    ksctl_tests::eventually(Duration::from_secs(300), "kind load docker-image into the node", || {
        let (ok, out, err) = kind_run(&["load", "docker-image", "ksctl-rs:lab", "--name", "ksctl-realkind"]);
        last = format!("{out}{err}");
        async move { ok.then_some(()) }
    })
    .await;
    eprintln!("kind load: {last}");
    sys.wait_state("realkind", "running", Duration::from_secs(600)).await;

    // The node is kind's, registered by its kubelet, Ready; the agent runs in its pod and its
    // heartbeats reach the manager.
    let kubeconfig = ksctl_ok(&sys, &["cluster", "switch", "realkind", "--print"]).await;
    let kc = TempDir::new("realkind");
    std::fs::write(kc.0.join("config"), &kubeconfig).unwrap();
    let kubectl = |args: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "{}/kubectl --kubeconfig {}/config {args}",
                ksctl_tests::lab::kube_bins().display(),
                kc.0.display()
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "kubectl {args}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let nodes = kubectl("get nodes -o json");
    assert_eq!(nodes["items"].as_array().unwrap().len(), 1);
    let node = &nodes["items"][0];
    assert_eq!(node["metadata"]["name"], "ksctl-realkind-control-plane");
    assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], "v1.20.2");
    assert!(
        node["status"]["conditions"].as_array().unwrap().iter().any(|c| c["type"] == "Ready" && c["status"] == "True")
    );
    let pods = kubectl("-n ksctl-system get pods -l app.kubernetes.io/name=ksctl-agent -o json");
    let pod = &pods["items"][0];
    assert_eq!(pod["status"]["phase"], "Running", "{pod}");
    let pod_name = pod["metadata"]["name"].as_str().unwrap().to_string();
    ksctl_tests::eventually(Duration::from_secs(120), "a heartbeat from the agent's pod", || async {
        let (code, out, _) = sys.ksctl(&["cluster", "info", "realkind", "-o", "json"]).await;
        let info: ksctl_core::messages::ClusterInfo = serde_json::from_str(&out).ok().filter(|_| code == 0)?;
        let h = info.health?;
        (h.reporter == pod_name && h.nodes.len() == 1 && h.nodes[0].ready && h.nodes[0].kubelet_version == "v1.20.2")
            .then_some(())
    })
    .await;

    // Delete: kind's cluster and its node container are gone; kind made no network of its own.
    ksctl_ok(&sys, &["cluster", "delete", "realkind"]).await;
    sys.wait_gone("realkind", Duration::from_secs(300)).await;
    assert!(!kind_run(&["get", "clusters"]).1.contains("ksctl-realkind"));
    let left = std::process::Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=io.x-k8s.kind.cluster=ksctl-realkind"])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "containers left: {}", String::from_utf8_lossy(&left.stdout));
    let networks =
        std::process::Command::new("docker").args(["network", "ls", "--format", "{{.Name}}"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&networks.stdout).lines().any(|n| n == "kind"), "kind made a network of its own");
}
