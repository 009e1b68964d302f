//! Bounds: on a real nats-server, events kept by bytes and message size as well as age (the
//! oldest dropped), heartbeats in no stream at all; on a real 3-node NATS cluster, every stream
//! and KV bucket with the replica count it is given; the health and metrics endpoint survives
//! clients that connect and say nothing; metric labels take no value a sender invents.
use ksctl_bus::subjects::{BusSettings, EVENTS_STREAM, ensure_streams};
use ksctl_tests::{NatsServer, TempDir, free_port};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn events_are_bounded_and_heartbeats_are_in_no_stream() {
    let nats = NatsServer::start();
    let client = nats.connect().await;
    let js = async_nats::jetstream::new(client.clone());
    let s = BusSettings { events_max_bytes: 64 << 10, events_max_msg_size: 1024, ..Default::default() };
    ensure_streams(&js, &s).await.unwrap();
    let mut events = js.get_stream(EVENTS_STREAM).await.unwrap();
    let cfg = events.info().await.unwrap().config.clone();
    assert_eq!((cfg.max_bytes, cfg.max_message_size), (64 << 10, 1024));
    assert_eq!(cfg.discard, async_nats::jetstream::stream::DiscardPolicy::Old);
    // Too large an event is refused; a flood keeps the stream within its bytes, newest kept.
    let big = js.publish("ksctl.events.demo.progress", vec![b'x'; 2048].into()).await.unwrap().await;
    assert!(big.is_err(), "an event over the size limit is refused");
    for n in 0..400u32 {
        js.publish("ksctl.events.demo.progress", format!("{n:0>512}").into()).await.unwrap().await.unwrap();
    }
    let info = events.info().await.unwrap();
    assert!(info.state.bytes <= 64 << 10, "{} bytes kept", info.state.bytes);
    assert_eq!(info.state.last_sequence, 400);
    // Heartbeats are core NATS only: no stream captures them.
    assert!(js.stream_by_subject("ksctl.health.demo").await.is_err());
}

struct Node(Child);
impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_and_buckets_are_replicated_on_a_three_node_cluster() {
    let dir = TempDir::new("nats-cluster");
    let (clients, routes): (Vec<u16>, Vec<u16>) = (0..3).map(|_| (free_port(), free_port())).unzip();
    let route_urls: Vec<String> = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
    let nodes: Vec<Node> = (0..3)
        .map(|i| {
            let conf = dir.0.join(format!("n{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: {} }}\ncluster {{ name: ksctl, listen: 127.0.0.1:{}, routes: [{}] }}\n",
                    clients[i],
                    dir.0.join(format!("js{i}")).display(),
                    routes[i],
                    route_urls.join(", ")
                ),
            )
            .unwrap();
            Node(Command::new("nats-server").arg("-c").arg(&conf).stderr(Stdio::null()).spawn().unwrap())
        })
        .collect();
    let url = format!("nats://127.0.0.1:{}", clients[0]);
    let client = ksctl_tests::eventually(Duration::from_secs(20), "the cluster to serve", || async {
        let c = async_nats::connect(&url).await.ok()?;
        let js = async_nats::jetstream::new(c.clone());
        // JetStream answers once the cluster has a meta leader.
        js.query_account().await.ok().map(|_| c)
    })
    .await;
    let js = async_nats::jetstream::new(client.clone());
    let s = BusSettings { replicas: 3, ..Default::default() };
    ksctl_tests::eventually(Duration::from_secs(20), "streams with 3 replicas", || async {
        ensure_streams(&js, &s).await.ok()
    })
    .await;
    for name in ["KSCTL_REQUESTS", "KSCTL_CLOUD", "KSCTL_RESULTS", "KSCTL_EVENTS", "KSCTL_DEAD"] {
        let info = js.get_stream(name).await.unwrap().info().await.unwrap().clone();
        assert_eq!(info.config.num_replicas, 3, "{name}");
    }
    ksctl_store::KvStore::open_replicated(client.clone(), "ksctl", 3).await.unwrap();
    // One bucket: leases live beside the records (fenced writes batch the two).
    for bucket in ["KV_ksctl"] {
        let info = js.get_stream(bucket).await.unwrap().info().await.unwrap().clone();
        assert_eq!(info.config.num_replicas, 3, "{bucket}");
    }
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_health_endpoint_outlives_silent_clients() {
    let metrics = std::sync::Arc::new(ksctl_runtime::metrics::Metrics::default());
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let addr = ksctl_runtime::http::serve("127.0.0.1:0", metrics, ready).await.unwrap();
    // More silent connections than the endpoint serves at once.
    let silent: Vec<_> = (0..40).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
    let started = std::time::Instant::now();
    let out = tokio::process::Command::new("curl")
        .args(["-s", "-m", "20", &format!("http://{addr}/livez")])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok\n", "answered after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(15));
    drop(silent);
}

#[tokio::test(flavor = "multi_thread")]
async fn metric_labels_take_no_invented_values() {
    let port = free_port();
    let sys = ksctl_tests::System::start(ksctl_tests::SystemOptions {
        env: vec![("ksctl-manager".into(), "KSCTL_HTTP_ADDR".into(), format!("127.0.0.1:{port}"))],
        ..Default::default()
    })
    .await;
    for n in 0..20 {
        let reply = sys.client.request(format!("ksctl.query.invented{n}"), "{}".into()).await.unwrap();
        assert!(String::from_utf8_lossy(&reply.payload).contains("unknown query"), "{reply:?}");
    }
    let metrics = ksctl_tests::eventually(Duration::from_secs(10), "the metrics", || async move {
        let out = tokio::process::Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{port}/metrics")])
            .output()
            .await
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned()).filter(|m| m.contains("queries_total"))
    })
    .await;
    assert!(metrics.contains("ksctl_queries_total{query=\"unknown\"} 20"), "{metrics}");
    assert!(!metrics.contains("invented"), "{metrics}");
}
