//! Injected faults end where they should, and secrets never rest in plain text.
use ksctl_tests::{System, SystemOptions};
use redis::AsyncCommands;
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

fn env(service: &str, k: &str, v: &str) -> (String, String, String) {
    (service.into(), k.into(), v.into())
}

#[tokio::test(flavor = "multi_thread")]
async fn permanent_failure_leaves_creation_failed_and_delete_cleans() {
    let sys = System::start(SystemOptions {
        env: vec![env("ksctl-bootstrap-controller", "KSCTL_SIM_FAULTS", "bootstrap.k3s-init=permanent")],
        ..Default::default()
    })
    .await;
    let (code, out, err) = sys.create_ha("broken", 1, &[]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("simulated permanent failure at bootstrap.k3s-init"), "{err}");
    let rec = sys.wait_state("broken", "creation_failed", T).await;
    assert!(rec.last_operation.unwrap().error.unwrap().contains("bootstrap"));
    let (code, out, _) = sys.ksctl(&["cluster", "info", "broken"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("simulated permanent failure"), "info shows the error: {out}");
    assert!(!sys.sim_resources("broken").await.is_empty());

    // Scale is not allowed from creation_failed; delete is.
    let (code, _, err) = sys.ksctl(&["cluster", "scale", "broken", "--workers", "2"]).await;
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = sys.ksctl(&["cluster", "delete", "broken"]).await;
    assert_eq!(code, 0, "{err}");
    sys.wait_gone("broken", T).await;
    assert!(sys.sim_resources("broken").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn retryable_failures_are_retried_with_backoff() {
    let sys = System::start(SystemOptions {
        env: vec![
            env("ksctl-cloud-controller", "KSCTL_SIM_FAULTS", "cloud.vm=retryable*3"),
            env("ksctl-k8s-controller", "KSCTL_SIM_FAULTS", "k8s.crd=retryable*2"),
        ],
        ..Default::default()
    })
    .await;
    let mut retries = sys.client.subscribe("ksctl.events.flaky.retrying").await.unwrap();
    let (code, out, err) = sys
        .ksctl(&[
            "cluster",
            "create",
            "--name",
            "flaky",
            "--distro",
            "k3s",
            "--control-planes",
            "3",
            "--datastores",
            "3",
            "--workers",
            "0",
        ])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    sys.assert_no_duplicates("flaky").await;
    let mut n = 0;
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(300), futures::StreamExt::next(&mut retries)).await
    {
        n += 1;
    }
    assert!(n >= 2, "retries were announced as events ({n})");
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_are_sealed_in_the_store() {
    let sys = System::start(SystemOptions::default()).await;
    for args in [
        vec![
            "cluster",
            "create",
            "--name",
            "sec1",
            "--distro",
            "kubeadm",
            "--control-planes",
            "3",
            "--datastores",
            "3",
            "--workers",
            "1",
        ],
        vec!["cluster", "create", "--name", "sec2", "--type", "managed", "--managed-nodes", "1"],
    ] {
        let (code, _, err) = sys.ksctl(&args).await;
        assert_eq!(code, 0, "{err}");
    }
    // The kubeconfig really exists (switch opens it) ...
    let (code, kc, _) = sys.ksctl(&["cluster", "switch", "sec1", "--print"]).await;
    assert_eq!(code, 0);
    let token = kc.lines().find_map(|l| l.trim().strip_prefix("token: ")).expect("token in kubeconfig").to_string();
    // ... but no raw value in Redis holds a PEM block, the token or a kubeconfig.
    let client = redis::Client::open(sys.redis.as_ref().unwrap().url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = con.keys(format!("{}:rec:*", sys.namespace)).await.unwrap();
    assert!(keys.len() > 10, "expected records, found {keys:?}");
    let mut sealed_seen = 0;
    let key_id = ksctl_core::seal::Sealer::from_base64(&sys.seal_key).unwrap().key_id().to_string();
    for k in keys {
        let v: Vec<u8> = con.hget(&k, "v").await.unwrap();
        let text = String::from_utf8_lossy(&v);
        assert!(!text.contains("-----BEGIN"), "{k} holds a PEM block in plain text");
        assert!(!text.contains(&token), "{k} holds the kubeconfig token in plain text");
        assert!(!text.contains("apiVersion"), "{k} holds a kubeconfig in plain text");
        // Sealed values name the key that sealed them (`v2:<key id>:`).
        sealed_seen += text.matches(&format!("\"v2:{key_id}:")).count();
    }
    // sec1: ssh key, CA cert, CA key, join token, kubeconfig; sec2: kubeconfig.
    assert_eq!(sealed_seen, 6);
}

/// A command lost on the bus (its stream purged while the controller was down) is dispatched
/// again by the reconciler once the phase timeout passes.
#[tokio::test(flavor = "multi_thread")]
async fn reconciler_redispatches_a_lost_phase() {
    let mut sys = System::start(SystemOptions {
        env: vec![env("ksctl-manager", "KSCTL_PHASE_TIMEOUT_SECS", "3")],
        ..Default::default()
    })
    .await;
    sys.kill9("ksctl-cloud-controller");
    let mut retries = sys.client.subscribe("ksctl.events.lost.retrying").await.unwrap();
    let (code, _, err) = sys
        .ksctl(&["cluster", "create", "--name", "lost", "--type", "managed", "--managed-nodes", "1", "--no-wait"])
        .await;
    assert_eq!(code, 0, "{err}");
    let js = async_nats::jetstream::new(sys.client.clone());
    let stream = js.get_stream(ksctl_bus::subjects::CLOUD_STREAM).await.unwrap();
    ksctl_tests::eventually(T, "the command in the stream", || {
        let mut s = stream.clone();
        async move { (s.info().await.ok()?.state.messages == 1).then_some(()) }
    })
    .await;
    stream.purge().await.unwrap();
    sys.restart("ksctl-cloud-controller");
    let rec = sys.wait_state("lost", "running", T).await;
    assert!(rec.last_operation.unwrap().error.is_none());
    let ev = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut retries))
        .await
        .expect("a re-dispatch event")
        .unwrap();
    assert!(String::from_utf8_lossy(&ev.payload).contains("dispatched again"));
}

/// A command repeated for a phase that already finished (the reconciler re-dispatched it while
/// the result waited for a busy or dead manager) re-publishes the recorded outcome instead of
/// running the phase again, so it neither repeats cloud work nor holds the cluster's lease.
#[tokio::test(flavor = "multi_thread")]
async fn a_repeated_command_for_a_finished_phase_is_not_run_again() {
    use ksctl_core::messages::Command;
    use ksctl_core::saga::Phase;
    let mut sys = System::start(SystemOptions::default()).await;
    let mut started = sys.client.subscribe("ksctl.events.again.phase_started").await.unwrap();
    let mut succeeded = sys.client.subscribe("ksctl.events.again.phase_succeeded").await.unwrap();
    let (code, _, err) = sys
        .ksctl(&["cluster", "create", "--name", "again", "--type", "managed", "--managed-nodes", "1", "--no-wait"])
        .await;
    assert_eq!(code, 0, "{err}");
    let cloud = |e: &ksctl_core::messages::Event| e.phase == Some(Phase::CloudCreate);
    ksctl_tests::wait_event(&mut started, T, "cloud_create started", cloud).await;
    sys.kill9("ksctl-manager");
    ksctl_tests::wait_event(&mut succeeded, T, "cloud_create succeeded", cloud).await;
    let op = sys.cluster("again").await.unwrap().operation.unwrap();
    assert_eq!(op.phase, Phase::CloudCreate, "the manager is down: the operation has not moved on");

    // What the reconciler would send: the same phase, the next dispatch number.
    let cmd = Command {
        op_id: op.id.clone(),
        cluster_id: ksctl_core::ClusterId::new("again").unwrap(),
        kind: op.kind,
        phase: Phase::CloudCreate,
        dispatch: op.dispatch + 1,
    };
    ksctl_bus::Publisher::new(sys.client.clone()).command(&cmd).await.unwrap();
    let log = sys.logs.join("ksctl-cloud-controller-0.log");
    ksctl_tests::eventually(T, "the controller to answer from the recorded outcome", || async {
        std::fs::read_to_string(&log).ok()?.contains("phase already finished").then_some(())
    })
    .await;
    sys.restart("ksctl-manager");
    sys.wait_state("again", "running", T).await;
    // The cloud phase started exactly once, and nothing was created twice.
    let mut phases_started_later = vec![];
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_millis(500), futures::StreamExt::next(&mut started)).await
    {
        phases_started_later.push(serde_json::from_slice::<ksctl_core::messages::Event>(&m.payload).unwrap().phase);
    }
    assert_eq!(phases_started_later, [Some(Phase::K8sInstall)], "the cloud phase ran again");
    sys.assert_no_duplicates("again").await;
}
