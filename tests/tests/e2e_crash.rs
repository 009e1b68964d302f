//! kill -9 of each service in the middle of its phase: after a restart the operation completes,
//! no simulated resource is created twice and no host step runs more than once again.
use futures::StreamExt;
use ksctl_core::messages::{Event, EventKind};
use ksctl_core::saga::Phase;
use ksctl_tests::{System, SystemOptions, progress_at, wait_event};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

async fn crash_during(service: &str, phase: Phase, after_steps: u32) {
    let mut sys = System::start(SystemOptions { sim_latency_ms: 250, ..Default::default() }).await;
    let name = "crashy";
    let mut events = sys.client.subscribe(format!("ksctl.events.{name}.>")).await.unwrap();
    let mut started = sys.client.subscribe(format!("ksctl.events.{name}.phase_started")).await.unwrap();
    let (code, _, err) = sys
        .ksctl(&[
            "cluster",
            "create",
            "--name",
            name,
            "--distro",
            "kubeadm",
            "--control-planes",
            "3",
            "--datastores",
            "3",
            "--workers",
            "3",
            "--no-wait",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    wait_event(&mut events, T, &format!("progress {after_steps} in {phase}"), progress_at(phase, after_steps)).await;
    sys.kill9(service);
    if service == "ksctl-manager" {
        // Keep it down until the phase's result is waiting in the stream for it.
        wait_event(&mut events, T, "the phase result while the manager is down", |ev| {
            ev.phase == Some(phase) && ev.kind == EventKind::PhaseSucceeded
        })
        .await;
    } else {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    sys.restart(service);
    sys.wait_state(name, "running", T).await;
    sys.assert_no_duplicates_after_kill(name).await;
    // The phase really ran again after the crash (and resumed rather than starting over).
    let mut starts = 0;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), started.next()).await {
        let ev: Event = serde_json::from_slice(&m.payload).unwrap();
        starts += (ev.phase == Some(phase)) as u32;
    }
    if service != "ksctl-manager" {
        assert!(starts >= 2, "{phase} started {starts} times; expected a restart after the kill");
    }
    // Every planned resource exists exactly once: the cloud's (network, firewalls, key, 10 VMs)
    // and the cluster's (ksctl's objects and flannel, a kubeadm cluster's CNI).
    let rec = sys.cluster(name).await.unwrap();
    let cloud = ksctl_cloud_controller::sim_cloud::planned_resources(&rec.spec, rec.cluster_type) as usize;
    let objects = ksctl_k8s_controller::install_plan(&rec);
    assert!(objects.contains(&ksctl_k8s_controller::PlanItem::Cni(ksctl_core::spec::Cni::Flannel)));
    assert_eq!(sys.sim_resources(name).await.len(), cloud + objects.len());

    // And delete cleans everything, with one more kill in the middle of it.
    let mut events = sys.client.subscribe(format!("ksctl.events.{name}.>")).await.unwrap();
    let (code, _, err) = sys.ksctl(&["cluster", "delete", name, "--no-wait"]).await;
    assert_eq!(code, 0, "{err}");
    if service == "ksctl-cloud-controller" {
        wait_event(&mut events, T, "cloud_delete progress", progress_at(Phase::CloudDelete, 3)).await;
        sys.kill9(service);
        sys.restart(service);
    }
    sys.wait_gone(name, T).await;
    assert!(sys.sim_resources(name).await.is_empty(), "delete left resources");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_cloud_controller_mid_create_and_delete() {
    crash_during("ksctl-cloud-controller", Phase::CloudCreate, 4).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_bootstrap_controller_mid_bootstrap() {
    crash_during("ksctl-bootstrap-controller", Phase::Bootstrap, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_k8s_controller_mid_install() {
    crash_during("ksctl-k8s-controller", Phase::K8sInstall, 3).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_manager_mid_saga() {
    // The manager is killed while the bootstrap phase runs: the result it would handle waits
    // in the stream and the restarted manager advances the saga.
    crash_during("ksctl-manager", Phase::Bootstrap, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_manager_in_each_other_phase() {
    // The same, while the first and the last phase of the create run.
    crash_during("ksctl-manager", Phase::CloudCreate, 3).await;
    crash_during("ksctl-manager", Phase::K8sInstall, 2).await;
}

/// Graceful shutdown: SIGTERM while the cloud phase is in flight (slow steps, a 2 s shutdown
/// deadline): the controller stops pulling, gives its in-flight work the deadline, exits 0
/// within it, and the abandoned phase is redelivered to the restarted controller, which
/// completes the create without duplicates.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_within_the_deadline_and_the_work_resumes() {
    let mut sys = System::start(SystemOptions {
        sim_latency_ms: 400,
        env: vec![("ksctl-cloud-controller".into(), "KSCTL_SHUTDOWN_DEADLINE_SECS".into(), "2".into())],
        ..Default::default()
    })
    .await;
    let mut events = sys.client.subscribe("ksctl.events.drained.>").await.unwrap();
    let (code, _, err) = sys.create_ha("drained", 2, &["--no-wait"]).await;
    assert_eq!(code, 0, "{err}");
    wait_event(&mut events, T, "cloud progress 2", progress_at(Phase::CloudCreate, 2)).await;
    let (took, clean) = sys.terminate("ksctl-cloud-controller");
    assert!(clean, "the controller exits 0 on SIGTERM");
    assert!(took < Duration::from_secs(5), "exited {took:?} after SIGTERM; the deadline is 2 s");
    assert!(took >= Duration::from_millis(1500), "the in-flight phase was given its deadline ({took:?})");
    sys.restart("ksctl-cloud-controller");
    sys.wait_state("drained", "running", T).await;
    sys.assert_no_duplicates_after_kill("drained").await;
}
