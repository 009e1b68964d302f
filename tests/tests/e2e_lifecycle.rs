//! End to end: the four service binaries as processes on a real nats-server and redis-server
//! (or NATS KV), driven by the `ksctl` CLI.
use ksctl_core::records::Role;
use ksctl_tests::metrics;
use ksctl_tests::{Backend, System, SystemOptions};
use std::time::Duration;

const T: Duration = Duration::from_secs(60);

async fn create_selfmanaged(sys: &System, name: &str, workers: u32) {
    let (code, out, err) = sys.create_ha(name, workers, &[]).await;
    assert_eq!(code, 0, "create failed: {out}\n{err}");
    assert!(out.contains("running"), "{out}");
}

/// Every resource a create makes in the simulated cloud and cluster.
fn planned(rec: &ksctl_core::records::ClusterRecord) -> usize {
    let cloud = ksctl_cloud_controller::sim_cloud::planned_resources(&rec.spec, rec.cluster_type) as usize;
    cloud + ksctl_k8s_controller::install_plan(rec).len()
}

async fn workers_of(sys: &System, name: &str) -> Vec<u32> {
    let mut v: Vec<u32> =
        sys.sim_resources(name).await.into_iter().filter(|r| r.role == Some(Role::Worker)).map(|r| r.index).collect();
    v.sort();
    v
}

async fn lifecycle_selfmanaged(sys: &System, name: &str) {
    create_selfmanaged(sys, name, 2).await;
    let rec = sys.wait_state(name, "running", T).await;
    assert_eq!(rec.spec.worker_nodes, 2);
    // The cloud's plan (network, firewalls, key, 1 lb + 3 ds + 3 cp + 2 wp) and ksctl's
    // in-cluster objects, each once.
    assert_eq!(sys.sim_resources(name).await.len(), planned(&rec));
    sys.assert_no_duplicates(name).await;

    let (code, out, err) = sys.ksctl(&["cluster", "get", name]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("running") && out.contains(name), "{out}");

    let (code, out, err) = sys.ksctl(&["cluster", "scale", name, "--workers", "4"]).await;
    assert_eq!(code, 0, "scale up: {out}\n{err}");
    assert_eq!(workers_of(sys, name).await, [0, 1, 2, 3]);
    assert_eq!(sys.cluster(name).await.unwrap().spec.worker_nodes, 4);
    let joined = sys
        .sim_resources(name)
        .await
        .into_iter()
        .filter(|r| r.role == Some(Role::Worker))
        .all(|r| r.applied == ["k3s-agent-join"]);
    assert!(joined, "every worker joined once");

    let (code, out, err) = sys.ksctl(&["cluster", "scale", name, "--workers", "1"]).await;
    assert_eq!(code, 0, "scale down: {out}\n{err}");
    assert_eq!(workers_of(sys, name).await, [0], "the highest indices go first");
    assert_eq!(sys.cluster(name).await.unwrap().spec.worker_nodes, 1);
    sys.assert_no_duplicates(name).await;

    // Addons: enable applies the stack and records it in the spec; a name outside the catalog
    // is refused and changes nothing; disable removes it; disabling again has nothing to do.
    let addon_objects = |rs: Vec<ksctl_runtime::sim::SimResource>| {
        rs.into_iter().filter(|r| r.kind == "k8s_object" && r.name.starts_with("addon/")).count()
    };
    let (code, out, err) = sys.ksctl(&["cluster", "addons", "enable", name, "metrics-server"]).await;
    assert_eq!(code, 0, "enable: {out}\n{err}");
    assert_eq!(addon_objects(sys.sim_resources(name).await), 1);
    assert_eq!(sys.cluster(name).await.unwrap().spec.addons, ["metrics-server"]);
    let (_, info, _) = sys.ksctl(&["cluster", "info", name]).await;
    assert!(info.contains("addons: metrics-server"), "{info}");
    let (code, _, err) = sys.ksctl(&["cluster", "addons", "enable", name, "grafana"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("unknown addon \"grafana\"; available: metrics-server"), "{err}");
    let (code, out, err) = sys.ksctl(&["cluster", "addons", "disable", name, "metrics-server"]).await;
    assert_eq!(code, 0, "disable: {out}\n{err}");
    assert_eq!(addon_objects(sys.sim_resources(name).await), 0);
    assert!(sys.cluster(name).await.unwrap().spec.addons.is_empty());
    let (code, out, _) = sys.ksctl(&["cluster", "addons", "disable", name, "metrics-server"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("not enabled") && out.contains("nothing to do"), "{out}");

    let (code, out, err) = sys.ksctl(&["cluster", "delete", name]).await;
    assert_eq!(code, 0, "delete: {out}\n{err}");
    sys.wait_gone(name, T).await;
    assert!(sys.sim_resources(name).await.is_empty(), "delete left resources behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn selfmanaged_create_scale_delete() {
    let sys = System::start(SystemOptions::default()).await;
    lifecycle_selfmanaged(&sys, "demo").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_create_scale_delete() {
    let sys = System::start(SystemOptions::default()).await;
    let (code, out, err) =
        sys.ksctl(&["cluster", "create", "--name", "mc", "--type", "managed", "--managed-nodes", "2"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    sys.wait_state("mc", "running", T).await;
    let pool =
        |rs: Vec<ksctl_runtime::sim::SimResource>| rs.into_iter().find(|r| r.kind == "node_pool").map(|r| r.size);
    assert_eq!(pool(sys.sim_resources("mc").await), Some(2));

    let (code, _, err) = sys.ksctl(&["cluster", "scale", "mc", "--workers", "5"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(pool(sys.sim_resources("mc").await), Some(5));
    let (code, _, err) = sys.ksctl(&["cluster", "scale", "mc", "--workers", "3"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(pool(sys.sim_resources("mc").await), Some(3));
    assert_eq!(sys.cluster("mc").await.unwrap().spec.managed_nodes, 3);

    // switch returns a kubeconfig and merges it into $HOME/.kube/config.
    let (code, out, err) = sys.ksctl(&["cluster", "switch", "mc"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("mc-local-managed-sim-ksctl"), "{out}");
    let kc = std::fs::read_to_string(sys.logs.join(".kube/config")).unwrap();
    assert!(kc.contains("current-context: mc-local-managed-sim-ksctl"), "{kc}");

    let (code, _, err) = sys.ksctl(&["cluster", "delete", "mc"]).await;
    assert_eq!(code, 0, "{err}");
    sys.wait_gone("mc", T).await;
    assert!(sys.sim_resources("mc").await.is_empty());
}

/// Two replicas of every service on the shared durable consumers, with the NATS KV store.
#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_of_every_service_on_nats_kv() {
    let sys = System::start(SystemOptions { replicas: 2, backend: Backend::Nats, ..Default::default() }).await;
    let (a, b) = tokio::join!(lifecycle_selfmanaged(&sys, "one"), lifecycle_selfmanaged(&sys, "two"));
    let _ = (a, b);
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    // Retried: a probe can meet the endpoint while it is still starting.
    for _ in 0..50 {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let mut out = String::new();
        if write!(s, "GET {path} HTTP/1.0\r\n\r\n").is_ok()
            && s.read_to_string(&mut out).is_ok()
            && out.starts_with("HTTP/")
        {
            return out;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no HTTP answer on port {port} for {path}");
}

/// `/livez`, `/readyz` and `/metrics` answer, and the counters move during an operation.
#[tokio::test(flavor = "multi_thread")]
async fn health_and_metrics_endpoints() {
    let (mport, cport) = (ksctl_tests::free_port(), ksctl_tests::free_port());
    let sys = System::start(SystemOptions {
        env: vec![
            ("ksctl-manager".into(), "KSCTL_HTTP_ADDR".into(), format!("127.0.0.1:{mport}")),
            ("ksctl-cloud-controller".into(), "KSCTL_HTTP_ADDR".into(), format!("127.0.0.1:{cport}")),
        ],
        ..Default::default()
    })
    .await;
    for port in [mport, cport] {
        ksctl_tests::eventually(T, "ready endpoint", || async move {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        })
        .await;
        assert!(http_get(port, "/livez").starts_with("HTTP/1.0 200"));
        assert!(http_get(port, "/readyz").starts_with("HTTP/1.0 200"));
        assert!(http_get(port, "/nope").starts_with("HTTP/1.0 404"));
    }
    let (code, _, err) =
        sys.ksctl(&["cluster", "create", "--name", "metered", "--type", "managed", "--managed-nodes", "1"]).await;
    assert_eq!(code, 0, "{err}");
    // Read by the Prometheus project's parser: the documents are valid OpenMetrics, and the
    // counters and histograms moved.
    let (m_text, c_text) = (http_get(mport, "/metrics"), http_get(cport, "/metrics"));
    assert!(m_text.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{m_text}");
    let (m, c) = (metrics::parse(metrics::body(&m_text)), metrics::parse(metrics::body(&c_text)));
    let one = |samples: &[metrics::Sample], name: &str, labels: &[(&str, &str)]| {
        assert_eq!(metrics::value(samples, name, labels), Some(1.0), "{name} {labels:?}: {samples:?}")
    };
    one(&m, "ksctl_requests_total", &[("request", "create"), ("outcome", "accepted")]);
    one(&m, "ksctl_operations_total", &[("kind", "create"), ("outcome", "succeeded")]);
    one(&c, "ksctl_phases_succeeded_total", &[("service", "cloud-controller"), ("phase", "cloud_create")]);
    one(&m, "ksctl_messages_total", &[("consumer", "manager-requests"), ("outcome", "acked")]);
    assert_eq!(metrics::value(&m, "ksctl_handle_seconds_count", &[("consumer", "manager-results")]), Some(2.0));
    one(&c, "ksctl_messages_total", &[("consumer", "cloud-controller"), ("outcome", "acked")]);
    let cloud_create = [("service", "cloud-controller"), ("phase", "cloud_create"), ("le", "+Inf")];
    one(&c, "ksctl_phase_duration_seconds_bucket", &cloud_create);
}

/// The manager's replicas serve queries as one NATS service: each answers the service API's
/// discovery, and its stats count the queries it answered.
#[tokio::test(flavor = "multi_thread")]
async fn queries_are_a_nats_service_with_discovery_and_stats() {
    use futures::StreamExt;
    let sys = System::start(SystemOptions { replicas: 2, ..Default::default() }).await;
    for _ in 0..4 {
        let reply = sys.client.request("ksctl.query.list", "{}".into()).await.unwrap();
        assert!(String::from_utf8_lossy(&reply.payload).contains(r#""ok":true"#), "{reply:?}");
    }
    // Every replica answers on the service API; collect the answers to one inbox.
    let all = |subject: &'static str| {
        let client = sys.client.clone();
        async move {
            let inbox = client.new_inbox();
            let mut answers = client.subscribe(inbox.clone()).await.unwrap();
            client.publish_with_reply(subject, inbox, "".into()).await.unwrap();
            let mut out = Vec::new();
            while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(2), answers.next()).await {
                out.push(serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap());
            }
            out
        }
    };
    let pings = all("$SRV.PING.ksctl-queries").await;
    assert_eq!(pings.len(), 2, "one answer per manager replica: {pings:?}");
    assert_ne!(pings[0]["id"], pings[1]["id"]);
    let info = all("$SRV.INFO.ksctl-queries").await;
    assert_eq!(info[0]["endpoints"][0]["subject"], "ksctl.query.*", "{info:?}");
    assert_eq!(info[0]["endpoints"][0]["queue_group"], "manager", "{info:?}");
    let stats = all("$SRV.STATS.ksctl-queries").await;
    let answered: u64 = stats.iter().map(|s| s["endpoints"][0]["num_requests"].as_u64().unwrap()).sum();
    assert_eq!(answered, 4, "each query answered once, by one replica: {stats:?}");
}
