//! `deploy/kubernetes/` against a real kube-apiserver (`tests/src/kube_server.rs`): every
//! object is server-side applied with `dryRun=All`, so the server validates, defaults and admits
//! it without storing it; an object that breaks its schema is refused the same way, so the
//! check can fail. The namespace is created for real (dry-run objects need it).
use ksctl_k8s_controller::kube_api;
use ksctl_k8s_controller::manifests::{self, Stack};
use ksctl_tests::kube_server::KubeServer;
use std::path::Path;

fn dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// The files kustomize applies, in order.
fn kustomization() -> Vec<String> {
    let k: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir().join("kustomization.yaml")).unwrap()).unwrap();
    k["resources"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect()
}

/// A leaked stack from a file: the applier takes `'static` manifests (they are embedded).
fn stack(name: &str, yaml: String) -> Stack {
    Stack {
        name: Box::leak(name.to_string().into_boxed_str()),
        yaml: Box::leak(yaml.into_boxed_str()),
        registry: None,
        namespace: None,
        node_env: None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kubernetes_manifests_pass_server_side_dry_run() {
    // Every manifest in the directory is in the kustomization.
    let mut files: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    files.sort();
    assert_eq!(kustomization(), files);

    let server = KubeServer::start();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let c = kube_api::client_from(&server.kubeconfig).await.unwrap();
    let minor: u32 = c.apiserver_version().await.unwrap().minor.trim_end_matches('+').parse().unwrap();
    let mut applied = 0;
    for f in kustomization() {
        let mut yaml = std::fs::read_to_string(dir().join(&f)).unwrap();
        if minor < 21 {
            // This server (1.20) predates policy/v1 PodDisruptionBudgets; v1beta1 has the same
            // fields for what the manifests use (minAvailable, selector).
            yaml = yaml.replace("apiVersion: policy/v1\n", "apiVersion: policy/v1beta1\n");
        }
        let dry_run = f != "00-namespace.yaml";
        let n = manifests::apply_with(&c, &stack(&f, yaml), dry_run).await.unwrap_or_else(|e| panic!("{f}: {e}"));
        applied += n;
    }
    // namespace; NATS config, 2 services, StatefulSet, PDB; Redis service and StatefulSet;
    // 4 Deployments and 4 PDBs; 4 NetworkPolicies.
    assert_eq!(applied, 1 + 5 + 2 + 8 + 4);

    // Nothing but the namespace was stored.
    let deployments: kube::Api<k8s_openapi::api::apps::v1::Deployment> = kube::Api::namespaced(c.clone(), "ksctl");
    assert!(deployments.list(&Default::default()).await.unwrap().items.is_empty());

    // The dry run validates: a broken object is refused.
    let broken = stack(
        "broken",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: x\n  namespace: ksctl\nspec:\n  replicas: two\n"
            .into(),
    );
    let err = manifests::apply_with(&c, &broken, true).await.unwrap_err().to_string();
    assert!(err.contains("applying Deployment ksctl/x"), "{err}");
}

/// Every workload is pinned and confined: images by version (never `:latest` or untagged), no
/// service-account token mounted (nothing here talks to the hosting cluster's API), seccomp
/// `RuntimeDefault`, non-root; the services reach NATS over TLS with a credential file, never a
/// password.
#[test]
fn workloads_are_pinned_and_confined() {
    let mut pods = 0;
    for f in kustomization() {
        let text = std::fs::read_to_string(dir().join(&f)).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap();
            let Some(pod) = v.get("spec").and_then(|s| s.get("template")).and_then(|t| t.get("spec")) else { continue };
            pods += 1;
            let name = v["metadata"]["name"].as_str().unwrap().to_string();
            assert_eq!(pod["automountServiceAccountToken"], serde_yaml::Value::Bool(false), "{name}");
            assert_eq!(pod["securityContext"]["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"), "{name}");
            assert_eq!(pod["securityContext"]["runAsNonRoot"], serde_yaml::Value::Bool(true), "{name}");
            for c in pod["containers"].as_sequence().unwrap() {
                let image = c["image"].as_str().unwrap();
                let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
                assert!(!tag.is_empty() && tag != "latest" && tag.contains('.'), "{name}: image {image} is not pinned");
                for e in c["env"].as_sequence().cloned().unwrap_or_default() {
                    assert_ne!(e["name"].as_str(), Some("KSCTL_NATS_PASSWORD"), "{name}");
                    if matches!(e["name"].as_str(), Some("KSCTL_NATS_URL" | "KSCTL_AGENT_NATS_URL")) {
                        assert!(e["value"].as_str().unwrap().starts_with("tls://"), "{name}: NATS without TLS");
                    }
                }
            }
        }
    }
    assert_eq!(pods, 6, "NATS, Redis and the four services");
    let nats = std::fs::read_to_string(dir().join("10-nats.yaml")).unwrap();
    assert!(nats.contains("tls {") && nats.contains("cert_file: /etc/nats/auth/nats.crt"), "NATS serves TLS");
}
