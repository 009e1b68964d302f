//! The servers underneath restart mid-run: nats-server (JetStream file store) and then
//! redis-server (append-only file, fsync always) are killed with SIGKILL and started again on the
//! same port and data while clusters are being created. No operation is lost: every cluster
//! reaches `running` with each simulated resource made once, and deletes clean up.
use ksctl_tests::{System, SystemOptions};
use std::time::Duration;

const T: Duration = Duration::from_secs(180);
const CLUSTERS: usize = 6;

#[tokio::test(flavor = "multi_thread")]
async fn nats_and_redis_restarts_lose_no_operation() {
    let mut sys = System::start(SystemOptions { sim_latency_ms: 300, durable_redis: true, ..Default::default() }).await;
    let names: Vec<String> = (0..CLUSTERS).map(|i| format!("r{i}")).collect();
    for n in &names {
        let (code, out, err) = sys.create_ha(n, 1, &["--no-wait"]).await;
        assert_eq!(code, 0, "{out}{err}");
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let running = |sys: &System| {
        let names = names.clone();
        let store = sys.store.clone();
        async move {
            let mut n = 0;
            for name in names {
                let id = ksctl_core::ClusterId::new(&name).unwrap();
                let rec: Option<(ksctl_core::records::ClusterRecord, u64)> =
                    ksctl_store::get_json(store.as_ref(), &ksctl_core::keys::cluster(&id)).await.unwrap_or(None);
                n += rec.is_some_and(|(r, _)| r.state.as_str() == "running") as usize;
            }
            n
        }
    };
    assert!(running(&sys).await < CLUSTERS, "the restart must come mid-run");
    sys.nats.restart();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(running(&sys).await < CLUSTERS, "the second restart must come mid-run too");
    sys.redis.as_mut().unwrap().restart();

    for n in &names {
        sys.wait_state(n, "running", T).await;
        sys.assert_no_duplicates_after_kill(n).await;
    }
    for n in &names {
        let (code, out, err) = sys.ksctl(&["cluster", "delete", n, "--no-wait"]).await;
        assert_eq!(code, 0, "{out}{err}");
    }
    for n in &names {
        sys.wait_gone(n, T).await;
        assert!(sys.sim_resources(n).await.is_empty(), "{n} left resources behind");
    }
}
