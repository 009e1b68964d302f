//! Nothing stays silently stuck: a poison message that crashes its controller on every delivery
//! is dead-lettered and fails its operation with the reason; a phase nobody answers shows in
//! `ksctl ops list --stuck` and, after the re-dispatch limit, fails with the reason too.
use futures::StreamExt;
use ksctl_tests::{System, SystemOptions, eventually};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

fn env(pairs: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    pairs.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_poison_command_is_dead_lettered_and_fails_its_operation() {
    let mut sys = System::start(SystemOptions {
        env: env(&[
            // Every attempt at the first VM aborts the cloud-controller (a poison message).
            ("ksctl-cloud-controller", "KSCTL_SIM_FAULTS", "cloud.vm=crash"),
            ("*", "KSCTL_MAX_DELIVER", "3"),
        ]),
        ..Default::default()
    })
    .await;
    let (code, _, err) = sys.create_ha("poison", 1, &["--no-wait"]).await;
    assert_eq!(code, 0, "{err}");
    // Restart the controller each time it dies, as an orchestrator would.
    let deadline = tokio::time::Instant::now() + T;
    let rec = loop {
        sys.restart("ksctl-cloud-controller");
        if let Some(r) = sys.cluster("poison").await.filter(|r| r.state.as_str() == "creation_failed") {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "the create did not fail (logs in {})", sys.logs.display());
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let error = rec.last_operation.unwrap().error.unwrap();
    assert!(error.starts_with("cloud_create: dead-lettered after 4 deliveries"), "{error}");
    assert!(error.contains("without an outcome"), "{error}");

    // The message itself is kept in the dead-letter stream with its reason.
    let js = async_nats::jetstream::new(sys.client.clone());
    let stream = js.get_stream("KSCTL_DEAD").await.unwrap();
    let msg = stream.get_last_raw_message_by_subject("ksctl.dead.ksctl.cloud.create").await.unwrap();
    let reason = msg.headers.get("Ksctl-Dead-Reason").unwrap().as_str().to_string();
    assert!(reason.contains("delivered 4 times"), "{reason}");
    let cmd: ksctl_core::messages::Command = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(cmd.cluster_id.as_str(), "poison");

    // The cluster is not stuck: delete cleans up what the first attempts made.
    sys.kill9("ksctl-cloud-controller");
    let mut opts_env = sys.opts.env.clone();
    opts_env.retain(|(_, k, _)| k != "KSCTL_SIM_FAULTS");
    sys.opts.env = opts_env;
    sys.restart("ksctl-cloud-controller");
    let (code, out, err) = sys.ksctl(&["cluster", "delete", "poison"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(sys.sim_resources("poison").await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_phase_nobody_answers_shows_as_stuck_then_fails() {
    let mut sys = System::start(SystemOptions {
        env: env(&[("ksctl-manager", "KSCTL_PHASE_TIMEOUT_SECS", "2"), ("ksctl-manager", "KSCTL_MAX_REDISPATCH", "2")]),
        ..Default::default()
    })
    .await;
    sys.kill9("ksctl-bootstrap-controller");
    let mut events = sys.client.subscribe("ksctl.events.lonely.>").await.unwrap();
    let (code, _, err) = sys.create_ha("lonely", 1, &["--no-wait"]).await;
    assert_eq!(code, 0, "{err}");

    let listed = eventually(T, "the bootstrap phase listed as stuck", || async {
        let (code, out, _) = sys.ksctl(&["ops", "list", "--stuck"]).await;
        (code == 0 && out.contains("lonely") && out.contains("bootstrap")).then_some(out)
    })
    .await;
    assert!(listed.contains("yes (deadline 2 s)"), "{listed}");
    let (_, json, _) = sys.ksctl(&["-o", "json", "ops", "list"]).await;
    let rows: Vec<ksctl_core::messages::OperationStatus> = serde_json::from_str(&json).unwrap();
    assert_eq!(rows.len(), 1, "{json}");
    assert_eq!((rows[0].operation.kind.as_str(), rows[0].stuck), ("create", true));

    let rec = sys.wait_state("lonely", "creation_failed", T).await;
    let error = rec.last_operation.unwrap().error.unwrap();
    assert_eq!(error, "bootstrap: no result after 3 dispatches, 2 s apart (is a bootstrap running?)");
    // Each re-dispatch was announced; the failure too.
    let mut retrying = 0;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), events.next()).await {
        retrying += m.subject.ends_with(".retrying") as u32;
    }
    assert_eq!(retrying, 2);
    let (code, out, _) = sys.ksctl(&["ops", "list", "--stuck"]).await;
    assert_eq!(code, 0);
    assert!(!out.contains("lonely"), "{out}");
}
