//! kill -9 at every step of every saga: for each (service, step, operation) below, the service
//! is started with a fault that aborts the process (SIGABRT, no cleanup — a crash) the moment it
//! reaches that step; once it died there, it is started again without the fault, as an
//! orchestrator would. Every operation completes; no simulated resource is created twice and no
//! host step applied twice; deletes leave nothing. (The manager, which has no steps, is killed
//! mid-saga in `e2e_crash.rs`.) A table entry whose step the operation never reaches fails the
//! test, so the table cannot silently stop covering a step.
use ksctl_tests::{System, SystemOptions};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    CreateSelfManaged,
    CreateManaged,
    ScaleUp,
    ScaleDown,
    ScaleManaged,
    Addon,
    Delete,
}

const CLOUD: &str = "ksctl-cloud-controller";
const BOOT: &str = "ksctl-bootstrap-controller";
const K8S: &str = "ksctl-k8s-controller";

const MATRIX: &[(&str, &str, Op)] = &[
    (CLOUD, "cloud.network", Op::CreateSelfManaged),
    (CLOUD, "cloud.firewall", Op::CreateSelfManaged),
    (CLOUD, "cloud.ssh_key", Op::CreateSelfManaged),
    (CLOUD, "cloud.vm", Op::CreateSelfManaged),
    (CLOUD, "cloud.managed_cluster", Op::CreateManaged),
    (CLOUD, "cloud.node_pool", Op::CreateManaged),
    (CLOUD, "cloud.vm", Op::ScaleUp),
    (CLOUD, "cloud.delete.vm", Op::ScaleDown),
    (CLOUD, "cloud.node_pool.resize", Op::ScaleManaged),
    (CLOUD, "cloud.delete.vm", Op::Delete),
    (CLOUD, "cloud.delete.network", Op::Delete),
    (BOOT, "bootstrap.pki", Op::CreateSelfManaged),
    (BOOT, "bootstrap.haproxy", Op::CreateSelfManaged),
    (BOOT, "bootstrap.etcd", Op::CreateSelfManaged),
    (BOOT, "bootstrap.k3s-init", Op::CreateSelfManaged),
    (BOOT, "bootstrap.k3s-server-join", Op::CreateSelfManaged),
    (BOOT, "bootstrap.k3s-agent-join", Op::CreateSelfManaged),
    (BOOT, "bootstrap.k3s-agent-join", Op::ScaleUp),
    (K8S, "k8s.namespace", Op::CreateSelfManaged),
    (K8S, "k8s.crd", Op::CreateSelfManaged),
    (K8S, "k8s.deployment", Op::CreateManaged),
    (K8S, "k8s.drain", Op::ScaleDown),
    (K8S, "k8s.addon", Op::Addon),
    (K8S, "k8s.delete", Op::Delete),
];

async fn ok(sys: &System, args: &[&str]) {
    let (code, out, err) = sys.ksctl(args).await;
    assert_eq!(code, 0, "{args:?}: {out}{err}");
}

async fn create(sys: &System, name: &str, managed: bool, wait: bool) {
    let mut args = if managed {
        vec!["cluster", "create", "--name", name, "--type", "managed", "--managed-nodes", "2"]
    } else {
        vec![
            "cluster",
            "create",
            "--name",
            name,
            "--distro",
            "k3s",
            "--control-planes",
            "3",
            "--datastores",
            "3",
            "--workers",
            "2",
        ]
    };
    if !wait {
        args.push("--no-wait");
    }
    ok(sys, &args).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_at_every_step_of_every_saga_is_survived() {
    let mut sys = System::start(SystemOptions::default()).await;
    for (i, (service, step, op)) in MATRIX.iter().enumerate() {
        let name = format!("m{i}");
        let managed = matches!(op, Op::CreateManaged | Op::ScaleManaged);
        // Operations on an existing cluster get one, made before the fault is armed.
        if !matches!(op, Op::CreateSelfManaged | Op::CreateManaged) {
            create(&sys, &name, managed, true).await;
        }
        sys.set_env(service, "KSCTL_SIM_FAULTS", Some(&format!("{step}=crash")));
        sys.kill9(service);
        sys.restart(service);
        match op {
            Op::CreateSelfManaged | Op::CreateManaged => create(&sys, &name, managed, false).await,
            Op::ScaleUp => ok(&sys, &["cluster", "scale", &name, "--workers", "3", "--no-wait"]).await,
            Op::ScaleDown => ok(&sys, &["cluster", "scale", &name, "--workers", "1", "--no-wait"]).await,
            Op::ScaleManaged => ok(&sys, &["cluster", "scale", &name, "--workers", "4", "--no-wait"]).await,
            Op::Addon => ok(&sys, &["cluster", "addons", "enable", &name, "metrics-server", "--no-wait"]).await,
            Op::Delete => ok(&sys, &["cluster", "delete", &name, "--no-wait"]).await,
        }
        let deadline = tokio::time::Instant::now() + T;
        while sys.alive(service) {
            assert!(tokio::time::Instant::now() < deadline, "{service} never reached {step} in {op:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sys.set_env(service, "KSCTL_SIM_FAULTS", None);
        sys.restart(service);
        if *op == Op::Delete {
            sys.wait_gone(&name, T).await;
            assert!(sys.sim_resources(&name).await.is_empty(), "{step}/{op:?}: delete left resources");
            continue;
        }
        let rec = sys.wait_state(&name, "running", T).await;
        sys.assert_no_duplicates(&name).await;
        match op {
            Op::ScaleUp => assert_eq!(rec.spec.worker_nodes, 3),
            Op::ScaleDown => assert_eq!(rec.spec.worker_nodes, 1),
            Op::ScaleManaged => assert_eq!(rec.spec.managed_nodes, 4),
            Op::Addon => assert_eq!(rec.spec.addons, ["metrics-server"]),
            _ => {}
        }
    }
    // Everything left is deleted without a trace.
    for (i, (_, _, op)) in MATRIX.iter().enumerate() {
        if *op != Op::Delete {
            ok(&sys, &["cluster", "delete", &format!("m{i}")]).await;
            assert!(sys.sim_resources(&format!("m{i}")).await.is_empty());
        }
    }
}

/// Failures injected at each step of a self-managed create: a permanent one fails the saga at
/// that step (the phase that owns it, the step named in the error, nothing after it run) and a
/// following delete cleans up; a retryable one (twice) is retried with backoff and the create
/// completes without duplicates.
#[tokio::test(flavor = "multi_thread")]
async fn injected_failures_fail_the_saga_at_their_step_or_are_retried() {
    const STEPS: &[(&str, &str, &str)] = &[
        (CLOUD, "cloud.network", "cloud_create"),
        (CLOUD, "cloud.vm", "cloud_create"),
        (BOOT, "bootstrap.etcd", "bootstrap"),
        (BOOT, "bootstrap.k3s-init", "bootstrap"),
        (BOOT, "bootstrap.k3s-agent-join", "bootstrap"),
        (K8S, "k8s.rbac", "k8s_install"),
        (K8S, "k8s.service", "k8s_install"),
    ];
    let mut sys = System::start(SystemOptions::default()).await;
    for (i, (service, step, phase)) in STEPS.iter().enumerate() {
        for kind in ["permanent", "retryable*2"] {
            let name = format!("f{i}{}", &kind[..1]);
            sys.set_env(service, "KSCTL_SIM_FAULTS", Some(&format!("{step}={kind}")));
            sys.kill9(service);
            sys.restart(service);
            create(&sys, &name, false, false).await;
            if kind == "permanent" {
                let rec = sys.wait_state(&name, "creation_failed", T).await;
                let op = rec.last_operation.unwrap();
                let error = op.error.unwrap();
                assert!(error.starts_with(&format!("{phase}: simulated permanent failure at {step}")), "{error}");
                assert_eq!(op.phase.as_str(), *phase, "failed in the phase that owns {step}");
                assert!(!op.phases_done.iter().any(|p| p.as_str() == *phase), "{phase} did not finish");
                ok(&sys, &["cluster", "delete", &name]).await;
                assert!(sys.sim_resources(&name).await.is_empty(), "{step}: delete left resources");
            } else {
                sys.wait_state(&name, "running", T).await;
                sys.assert_no_duplicates(&name).await;
            }
            sys.set_env(service, "KSCTL_SIM_FAULTS", None);
            sys.kill9(service);
            sys.restart(service);
        }
    }
}
