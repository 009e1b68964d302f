//! kill -9 at every step of every saga: for each (service, step, operation) below, the service
//! is started with a fault that aborts the process (SIGABRT, no cleanup — a crash) the moment it
//! reaches that step — before the step's effect (`crash`), or after the effect and before the
//! controller recorded it (`crash_after`: the step runs twice) —; once it died there, it is
//! started again without the fault, as an orchestrator would. Every operation completes; no
//! simulated resource is created twice and no host step runs again (but the one in flight at a
//! `crash_after`); deletes leave nothing. (The manager, which has no steps, is killed mid-saga in
//! `e2e_crash.rs`.) A table entry whose step the operation never reaches fails the test, so the
//! table cannot silently stop covering a step. Then injected failures at every entry, and
//! seeded random plans combining faults in several services at once.
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

fn managed(op: Op) -> bool {
    matches!(op, Op::CreateManaged | Op::ScaleManaged)
}

/// Operations on an existing cluster get one, made before any fault is armed.
async fn prepare(sys: &System, name: &str, op: Op) {
    if !matches!(op, Op::CreateSelfManaged | Op::CreateManaged) {
        create(sys, name, managed(op), true).await;
    }
}

/// Starts `op` on `name` without waiting for it.
async fn trigger(sys: &System, name: &str, op: Op) {
    match op {
        Op::CreateSelfManaged | Op::CreateManaged => create(sys, name, managed(op), false).await,
        Op::ScaleUp => ok(sys, &["cluster", "scale", name, "--workers", "3", "--no-wait"]).await,
        Op::ScaleDown => ok(sys, &["cluster", "scale", name, "--workers", "1", "--no-wait"]).await,
        Op::ScaleManaged => ok(sys, &["cluster", "scale", name, "--workers", "4", "--no-wait"]).await,
        Op::Addon => ok(sys, &["cluster", "addons", "enable", name, "metrics-server", "--no-wait"]).await,
        Op::Delete => ok(sys, &["cluster", "delete", name, "--no-wait"]).await,
    }
}

/// The phase of `op` that runs `service`'s steps, and the state a permanent failure leaves.
fn owner(service: &str, op: Op) -> (&'static str, &'static str) {
    let create = matches!(op, Op::CreateSelfManaged | Op::CreateManaged);
    let phase = match (service, op) {
        (CLOUD, _) if create => "cloud_create",
        (CLOUD, Op::ScaleUp | Op::ScaleManaged) => "cloud_scale_up",
        (CLOUD, Op::ScaleDown) => "cloud_scale_down",
        (CLOUD, Op::Delete) => "cloud_delete",
        (BOOT, _) if create => "bootstrap",
        (BOOT, Op::ScaleUp) => "bootstrap_join",
        (K8S, _) if create => "k8s_install",
        (K8S, Op::ScaleDown) => "k8s_drain",
        (K8S, Op::Addon) => "k8s_addon",
        (K8S, Op::Delete) => "k8s_uninstall",
        other => panic!("no phase for {other:?}"),
    };
    let state = match op {
        _ if create => "creation_failed",
        Op::Delete => "deletion_failed",
        _ => "configuring_failed",
    };
    (phase, state)
}

/// Restarts `service` with `fault` (or none).
fn arm(sys: &mut System, service: &str, fault: Option<&str>) {
    sys.set_env(service, "KSCTL_SIM_FAULTS", fault);
    sys.kill9(service);
    sys.restart(service);
}

/// The host steps that may be in flight when a controller dies at or right after `step`: `step`
/// itself and the steps of its bootstrap wave, which run on other hosts at the same time (any
/// of them may have had its effect and not yet its checkpoint). Steps of earlier waves must
/// never run again.
fn in_flight_with(step: &str) -> Vec<&str> {
    const WAVES: [&[&str]; 3] = [
        &["bootstrap.haproxy", "bootstrap.etcd"],
        &["bootstrap.k3s-init"],
        &["bootstrap.k3s-server-join", "bootstrap.k3s-agent-join"],
    ];
    WAVES.iter().find(|w| w.contains(&step)).map_or_else(|| vec![step], |w| w.to_vec())
}

/// After `op` succeeded on `name`: the cluster is as the operation asked, made once each (host
/// steps `rerun` may have run twice: they were in flight at a crash after their effect).
async fn check_done(sys: &System, name: &str, op: Op, rerun: &[&str]) {
    if op == Op::Delete {
        sys.wait_gone(name, T).await;
        assert!(sys.sim_resources(name).await.is_empty(), "{name}: delete left resources");
        return;
    }
    let rec = sys.wait_state(name, "running", T).await;
    sys.assert_no_duplicates_but(name, rerun).await;
    match op {
        Op::ScaleUp => assert_eq!(rec.spec.worker_nodes, 3),
        Op::ScaleDown => assert_eq!(rec.spec.worker_nodes, 1),
        Op::ScaleManaged => assert_eq!(rec.spec.managed_nodes, 4),
        Op::Addon => assert_eq!(rec.spec.addons, ["metrics-server"]),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_at_every_step_of_every_saga_is_survived() {
    crash_matrix("crash").await
}

/// Every step run twice: the effect happened, the controller died before recording it, and the
/// restarted controller must find what the first run made instead of making it again.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_after_every_step_runs_it_twice_without_duplicates() {
    crash_matrix("crash_after").await
}

async fn crash_matrix(kind: &str) {
    let mut sys = System::start(SystemOptions::default()).await;
    for (i, (service, step, op)) in MATRIX.iter().enumerate() {
        let name = format!("m{i}");
        prepare(&sys, &name, *op).await;
        arm(&mut sys, service, Some(&format!("{step}={kind}")));
        trigger(&sys, &name, *op).await;
        let deadline = tokio::time::Instant::now() + T;
        while sys.alive(service) {
            assert!(tokio::time::Instant::now() < deadline, "{service} never reached {step} in {op:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sys.set_env(service, "KSCTL_SIM_FAULTS", None);
        sys.restart(service);
        // Either crash can catch a step of the same wave between its effect and its checkpoint.
        check_done(&sys, &name, *op, &in_flight_with(step)).await;
    }
    // Everything left is deleted without a trace.
    for (i, (_, _, op)) in MATRIX.iter().enumerate() {
        if *op != Op::Delete {
            ok(&sys, &["cluster", "delete", &format!("m{i}")]).await;
            assert!(sys.sim_resources(&format!("m{i}")).await.is_empty());
        }
    }
}

/// After a permanent failure injected at `step` of `service`: the operation failed in the phase
/// that owns the step, with the step in the error, and that phase did not finish.
async fn check_failed_at(sys: &System, name: &str, service: &str, step: &str, op: Op) {
    let (phase, failed) = owner(service, op);
    let rec = sys.wait_state(name, failed, T).await;
    let last = rec.last_operation.unwrap();
    let error = last.error.unwrap();
    assert!(error.starts_with(&format!("{phase}: simulated permanent failure at {step}")), "{error}");
    assert_eq!(last.phase.as_str(), phase, "{step}/{op:?} failed in the phase that owns it");
    assert!(!last.phases_done.iter().any(|p| p.as_str() == phase), "{phase} did not finish");
}

/// Failures injected at every step of the matrix: a permanent one fails the operation in the
/// phase that owns the step (the step named in the error, the phase not finished, the cluster in
/// the operation's `*_failed` state) and a delete then cleans up; a retryable one (twice) is
/// retried with backoff and the operation completes without duplicates.
#[tokio::test(flavor = "multi_thread")]
async fn injected_failures_fail_the_saga_at_their_step_or_are_retried() {
    let mut sys = System::start(SystemOptions::default()).await;
    for (i, (service, step, op)) in MATRIX.iter().enumerate() {
        for kind in ["permanent", "retryable*2"] {
            let name = format!("f{i}{}", &kind[..1]);
            prepare(&sys, &name, *op).await;
            arm(&mut sys, service, Some(&format!("{step}={kind}")));
            trigger(&sys, &name, *op).await;
            if kind == "permanent" {
                check_failed_at(&sys, &name, service, step, *op).await;
                arm(&mut sys, service, None);
                ok(&sys, &["cluster", "delete", &name]).await;
                assert!(sys.sim_resources(&name).await.is_empty(), "{step}/{op:?}: delete left resources");
            } else {
                check_done(&sys, &name, *op, &[]).await;
                arm(&mut sys, service, None);
                if *op != Op::Delete {
                    ok(&sys, &["cluster", "delete", &name]).await;
                }
            }
        }
    }
}

/// The manager killed in every other saga: as soon as the first phase of a scale up, scale down,
/// managed resize, addon or delete has reported success, the manager dies (the result waits in
/// the stream); restarted, it advances the saga to the end.
#[tokio::test(flavor = "multi_thread")]
async fn the_manager_killed_in_every_other_saga_finishes_it() {
    use futures::StreamExt;
    let mut sys = System::start(SystemOptions { sim_latency_ms: 30, ..Default::default() }).await;
    for (i, op) in [Op::ScaleUp, Op::ScaleDown, Op::ScaleManaged, Op::Addon, Op::Delete].into_iter().enumerate() {
        let name = format!("k{i}");
        prepare(&sys, &name, op).await;
        let mut events = sys.client.subscribe(format!("ksctl.events.{name}.phase_succeeded")).await.unwrap();
        trigger(&sys, &name, op).await;
        tokio::time::timeout(T, events.next()).await.expect("a phase succeeded").unwrap();
        sys.kill9("ksctl-manager");
        tokio::time::sleep(Duration::from_millis(300)).await;
        sys.restart("ksctl-manager");
        check_done(&sys, &name, op, &[]).await;
    }
}

/// One random failure plan: an operation, and for some of the services with steps in it one
/// fault each at a random step of theirs: a crash before or after the step, a retryable failure
/// (1–3 times), or — at most one per plan — a permanent failure.
#[derive(Debug)]
struct Plan {
    op: Op,
    faults: Vec<(&'static str, &'static str, String)>,
}

const OPS: [Op; 7] =
    [Op::CreateSelfManaged, Op::CreateManaged, Op::ScaleUp, Op::ScaleDown, Op::ScaleManaged, Op::Addon, Op::Delete];

fn plan(rng: &mut fastrand::Rng) -> Plan {
    loop {
        let p = plan_once(rng);
        if !p.faults.is_empty() {
            return p;
        }
    }
}

fn plan_once(rng: &mut fastrand::Rng) -> Plan {
    let op = OPS[rng.usize(..OPS.len())];
    let mut faults = Vec::new();
    for service in [CLOUD, BOOT, K8S] {
        let steps: Vec<&str> = MATRIX.iter().filter(|(s, _, o)| *s == service && *o == op).map(|e| e.1).collect();
        if steps.is_empty() || rng.u8(..10) < 3 {
            continue;
        }
        let step = steps[rng.usize(..steps.len())];
        let permanent_taken = faults.iter().any(|(_, _, k): &(_, _, String)| k == "permanent");
        let kind = match rng.u8(..10) {
            0..=2 => "crash".to_string(),
            3..=5 => "crash_after".to_string(),
            6..=8 => format!("retryable*{}", rng.u8(1..4)),
            _ if !permanent_taken => "permanent".to_string(),
            _ => "crash".to_string(),
        };
        faults.push((service, step, kind));
    }
    Plan { op, faults }
}

/// Seeded random plans, several faults at once: every plan without a permanent failure
/// completes without duplicates; one with a permanent failure fails at that step; a delete
/// leaves nothing. The seed is printed; `KSCTL_FAULT_SEED=<seed>` replays the same plans
/// (`KSCTL_FAULT_PLANS`, default 20, sets how many).
#[tokio::test(flavor = "multi_thread")]
async fn seeded_failure_plans_keep_every_invariant() {
    let seed = std::env::var("KSCTL_FAULT_SEED").ok().map(|s| s.parse::<u64>().expect("KSCTL_FAULT_SEED: a number"));
    let seed = seed.unwrap_or_else(|| fastrand::u64(..));
    let plans = std::env::var("KSCTL_FAULT_PLANS").ok().map_or(20, |s| s.parse::<usize>().expect("a number"));
    eprintln!("failure plans from seed {seed} (replay: KSCTL_FAULT_SEED={seed})");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut sys = System::start(SystemOptions::default()).await;
    for i in 0..plans {
        let p = plan(&mut rng);
        eprintln!("plan {i} (seed {seed}): {p:?}");
        let name = format!("s{i}");
        prepare(&sys, &name, p.op).await;
        for (service, step, kind) in &p.faults {
            arm(&mut sys, service, Some(&format!("{step}={kind}")));
        }
        trigger(&sys, &name, p.op).await;
        // Supervise: a service that crashed is started again without its fault.
        let deadline = tokio::time::Instant::now() + 2 * T;
        loop {
            for (service, _, _) in &p.faults {
                if !sys.alive(service) {
                    sys.set_env(service, "KSCTL_SIM_FAULTS", None);
                    sys.restart(service);
                }
            }
            let rec = sys.cluster(&name).await;
            let finished = match &rec {
                None => p.op == Op::Delete,
                Some(r) => {
                    r.operation.is_none() && (r.state.as_str() == "running" || r.state.as_str().ends_with("_failed"))
                }
            };
            if finished {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "seed {seed} plan {i} {p:?} did not finish: {rec:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        match p.faults.iter().find(|(_, _, k)| k == "permanent") {
            Some((service, step, _)) => check_failed_at(&sys, &name, service, step, p.op).await,
            None => {
                let rerun: Vec<&str> = p
                    .faults
                    .iter()
                    .filter(|(_, _, k)| k.starts_with("crash"))
                    .flat_map(|f| in_flight_with(f.1))
                    .collect();
                check_done(&sys, &name, p.op, &rerun).await;
            }
        }
        for (service, _, _) in &p.faults {
            arm(&mut sys, service, None);
        }
        if sys.cluster(&name).await.is_some() {
            ok(&sys, &["cluster", "delete", &name]).await;
        }
        assert!(sys.sim_resources(&name).await.is_empty(), "seed {seed} plan {i}: delete left resources");
    }
}

#[test]
fn plans_are_reproducible_from_their_seed() {
    let plans = |seed| {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..20).map(|_| format!("{:?}", plan(&mut rng))).collect::<Vec<_>>()
    };
    assert_eq!(plans(7), plans(7));
    assert_ne!(plans(7), plans(8));
    // Over many seeds every operation, every fault kind and two-fault plans all come up.
    let all: Vec<Plan> = (0..500).map(|s| plan(&mut fastrand::Rng::with_seed(s))).collect();
    for op in OPS {
        assert!(all.iter().any(|p| p.op == op), "{op:?} never planned");
    }
    for kind in ["crash", "crash_after", "retryable", "permanent"] {
        let is = |f: &String| *f == kind || f.starts_with(&format!("{kind}*"));
        assert!(all.iter().any(|p| p.faults.iter().any(|f| is(&f.2))), "{kind} never planned");
    }
    assert!(all.iter().any(|p| p.faults.len() >= 2));
    assert!(all.iter().all(|p| !p.faults.is_empty()), "every plan injects something");
    assert!(all.iter().all(|p| p.faults.iter().filter(|f| f.2 == "permanent").count() <= 1));
}
