//! One writer per cluster, proven: a bootstrap-controller paused (SIGSTOP) mid-phase past its
//! lease's TTL loses the cluster to another replica, which finishes the phase; resumed
//! (SIGCONT), the first one's writes are refused by the store (its lease's fence) or it sees by
//! its own monotonic clock that the lease is gone, and stops. Nothing is made twice, no host
//! step runs twice, and the operation succeeds once. Both store backends. And wall clocks do
//! not matter: with one replica of every service 30 s ahead or behind (libfaketime), lifecycles
//! on NATS KV (whose leases expire by the server's clock) finish as they do without skew.
use ksctl_core::ClusterId;
use ksctl_core::keys;
use ksctl_tests::{Backend, System, SystemOptions};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} {pid}");
}

async fn paused_holder_is_fenced(backend: Backend) {
    let mut sys = System::start(SystemOptions {
        replicas: 2,
        backend,
        // Slow enough steps that the phase is mid-way when the holder is paused.
        sim_latency_ms: 300,
        ..Default::default()
    })
    .await;
    let (code, out, err) = sys.create_ha("fenced", 2, &["--no-wait"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let id = ClusterId::new("fenced").unwrap();
    let lease = keys::cluster(&id);
    // The replica running the bootstrap phase: `<replica>@<op>:bootstrap/<random>`.
    let holder = ksctl_tests::eventually(T, "the bootstrap phase under way", || async {
        let h = sys.store.lease_holder(&lease).await.unwrap()?;
        let steps = sys.sim_resources("fenced").await.iter().map(|r| r.applied.len()).sum::<usize>();
        (h.contains(":bootstrap/") && steps >= 3).then_some(h)
    })
    .await;
    let replica = holder.split('@').next().unwrap().to_string();
    let index: usize = replica.rsplit('-').next().unwrap().parse().unwrap();
    let pid = sys
        .procs
        .iter()
        .find(|p| p.bin == "ksctl-bootstrap-controller" && p.replica == index)
        .and_then(|p| p.child.as_ref())
        .unwrap()
        .id();
    signal(pid, "-STOP");
    // Past the TTL (3 s) and the ack wait (3 s): the other replica gets the command again and
    // takes the lease.
    let other = ksctl_tests::eventually(T, "another replica holding the cluster", || async {
        let h = sys.store.lease_holder(&lease).await.unwrap()?;
        (h.contains(":bootstrap/") && !h.starts_with(&format!("{replica}@"))).then_some(h)
    })
    .await;
    assert!(other.starts_with("ksctl-bootstrap-controller-"), "{other}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(pid, "-CONT");

    let rec = sys.wait_state("fenced", "running", T).await;
    assert!(rec.last_operation.unwrap().error.is_none());
    // No resource twice. A host step may have run twice: the one whose effect the paused
    // replica wrote before its checkpoint (the other replica runs it again, as after a crash);
    // a third run would be the resumed replica's, which its fence refuses.
    sys.assert_no_duplicates_after_kill("fenced").await;
    // The resumed replica stopped: a write of its was refused, or it found its lease gone.
    let log = std::fs::read_to_string(sys.logs.join(format!("ksctl-bootstrap-controller-{index}.log"))).unwrap();
    assert!(
        log.contains("is no longer held by this worker") || log.contains("lost the cluster lease"),
        "the paused replica did not notice it lost the cluster (logs in {})",
        sys.logs.display()
    );
    // It goes on working afterwards: a scale-up through either replica.
    let (code, out, err) = sys.ksctl(&["cluster", "scale", "fenced", "--workers", "3"]).await;
    assert_eq!(code, 0, "{out}{err}");
    sys.wait_state("fenced", "running", T).await;
    sys.assert_no_duplicates_after_kill("fenced").await;
    sys.kill9("ksctl-bootstrap-controller");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_holder_is_fenced_on_redis() {
    paused_holder_is_fenced(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_holder_is_fenced_on_nats_kv() {
    paused_holder_is_fenced(Backend::Nats).await;
}

/// libfaketime, shifting a process's wall clock only (its monotonic clock stays true).
const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

#[tokio::test(flavor = "multi_thread")]
async fn thirty_seconds_of_clock_skew_on_one_replica_changes_nothing() {
    assert!(
        std::path::Path::new(FAKETIME).exists(),
        "libfaketime is not installed: apt-get install libfaketime (scripts/deps.sh installs it)"
    );
    let mut env = vec![];
    let services = ["ksctl-manager", "ksctl-cloud-controller", "ksctl-bootstrap-controller", "ksctl-k8s-controller"];
    for (i, b) in services.iter().enumerate() {
        let skew = if i % 2 == 0 { "+30s" } else { "-30s" };
        for (k, v) in [("LD_PRELOAD", FAKETIME), ("FAKETIME", skew), ("FAKETIME_DONT_FAKE_MONOTONIC", "1")] {
            env.push((format!("{b}#1"), k.to_string(), v.to_string()));
        }
    }
    let sys = System::start(SystemOptions { replicas: 2, backend: Backend::Nats, env, ..Default::default() }).await;
    for n in 0..3 {
        let name = format!("skew{n}");
        let (code, out, err) = sys.create_ha(&name, 1, &[]).await;
        assert_eq!(code, 0, "{out}{err}");
        let (code, out, err) = sys.ksctl(&["cluster", "scale", &name, "--workers", "2"]).await;
        assert_eq!(code, 0, "{out}{err}");
        sys.assert_no_duplicates(&name).await;
        let (code, out, err) = sys.ksctl(&["cluster", "delete", &name]).await;
        assert_eq!(code, 0, "{out}{err}");
        sys.wait_gone(&name, T).await;
    }
    // Skewed replicas ran phases: the cloud-controller's (30 s behind) and the
    // bootstrap-controller's (30 s ahead) second replicas.
    for b in ["ksctl-cloud-controller", "ksctl-bootstrap-controller"] {
        let log = std::fs::read_to_string(sys.logs.join(format!("{b}-1.log"))).unwrap();
        assert!(log.contains("step done"), "{b}-1 ran no phase (logs in {})", sys.logs.display());
    }
}
