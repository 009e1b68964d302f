//! ksctl-bench: creates and deletes N sim clusters through the bus against a running control
//! plane and reports clusters/s and request→done latency; beside it, in the same run, the raw
//! JetStream publish→consume→ack rate and the raw Redis compare-and-swap rate of this machine,
//! so the control plane's overhead reads as a ratio.
use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, consumer::pull, stream};
use clap::Parser;
use futures::StreamExt;
use ksctl_core::messages::{API_VERSION, CreateRequest, DeleteRequest, Event, EventKind};
use ksctl_core::spec::{ClusterSpec, NodeSizes};
use ksctl_store::{RedisStore, Store};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Semaphore};

#[derive(Parser)]
#[command(name = "ksctl-bench", about = "Throughput and latency of ksctl-rs on the sim provider")]
struct Args {
    #[arg(long, env = "KSCTL_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    #[arg(long, env = "KSCTL_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// The services' store namespace (to count store writes per cluster).
    #[arg(long, env = "KSCTL_STORE_NAMESPACE", default_value = "ksctl")]
    store_namespace: String,
    /// Clusters to create and delete.
    #[arg(long, default_value_t = 200)]
    clusters: usize,
    /// Operations in flight at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// managed or selfmanaged.
    #[arg(long = "type", default_value = "selfmanaged")]
    cluster_type: String,
    /// Messages / CAS operations for the raw baselines (0: skip them).
    #[arg(long, default_value_t = 20_000)]
    raw_ops: usize,
    #[arg(long, default_value = "sim")]
    provider: String,
    #[arg(long, default_value = "local")]
    region: String,
    /// Count a create as done when its cloud phase succeeds (for providers whose later phases
    /// cannot run here, e.g. `aws` against moto with no SSH hosts).
    #[arg(long)]
    cloud_only: bool,
    /// The cloud-controller's /metrics URL, to report cloud API calls per cluster.
    #[arg(long)]
    cloud_metrics_url: Option<String>,
    /// The services' `KSCTL_SIM_LATENCY_MS`: when set, the create's wall time is compared with
    /// the saga's ideal critical path at that latency.
    #[arg(long)]
    sim_latency_ms: Option<u64>,
}

/// Simulated steps on the critical path of creating the benchmark's cluster if nothing but the
/// steps took time: what the sim providers run one after another, a parallel group counting
/// once. Cloud: network, 4 firewalls, SSH key, then the VMs (up to 10 at once; the spec has 8).
/// Bootstrap: the CA, then 3 waves (HAProxy with the etcd members, the first server, the
/// joins), each in parallel. k8s: the 9 components, one after another. Managed: network,
/// cluster, node pool, then the 9 components. A measured time below this means the count is
/// wrong; the bench says so.
fn ideal_create_steps(cluster_type: &str) -> u32 {
    if cluster_type == "selfmanaged" { (1 + 4 + 1 + 1) + (1 + 3) + 9 } else { 3 + 9 }
}

fn spec(name: &str, t: &str, provider: &str, region: &str) -> ClusterSpec {
    let selfm = t == "selfmanaged";
    ClusterSpec {
        cluster_name: name.into(),
        region: region.into(),
        cloud_provider: provider.into(),
        cluster_type: t.into(),
        kubernetes_distro: selfm.then(|| "k3s".into()),
        kubernetes_version: "1.31".into(),
        etcd_version: None,
        node_sizes: NodeSizes::default(),
        managed_nodes: if selfm { 0 } else { 1 },
        control_plane_nodes: if selfm { 3 } else { 0 },
        worker_nodes: if selfm { 1 } else { 0 },
        datastore_nodes: if selfm { 3 } else { 0 },
        cni: None,
        addons: vec![],
        hosts: None,
    }
}

struct Round {
    wall: Duration,
    latencies: Vec<Duration>,
    failed: usize,
}

fn pct(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// When an event ends a cluster's operation for the benchmark: `Some(succeeded)`.
type DoneWhen = fn(&Event) -> Option<bool>;

fn operation_end(ev: &Event) -> Option<bool> {
    match ev.kind {
        EventKind::OperationSucceeded => Some(true),
        EventKind::OperationFailed => Some(false),
        _ => None,
    }
}

fn cloud_phase_end(ev: &Event) -> Option<bool> {
    match (ev.kind, ev.phase) {
        (EventKind::PhaseSucceeded, Some(ksctl_core::saga::Phase::CloudCreate)) => Some(true),
        (EventKind::PhaseFailed, Some(ksctl_core::saga::Phase::CloudCreate)) => Some(false),
        _ => None,
    }
}

/// Publishes one request per cluster (at most `concurrency` in flight) and waits for each
/// operation's end, as `done_when` defines it.
async fn round(
    client: &async_nats::Client,
    names: &[String],
    concurrency: usize,
    done_when: DoneWhen,
    mk: impl Fn(&str, &str) -> (String, Vec<u8>),
) -> Result<Round> {
    let js = jetstream::new(client.clone());
    let done: Arc<Mutex<HashMap<String, (Instant, bool)>>> = Arc::default();
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut sub = client.subscribe("ksctl.events.*.*").await?;
    let waiters: Arc<Mutex<HashMap<String, tokio::sync::oneshot::Sender<()>>>> = Arc::default();
    {
        let (done, waiters) = (done.clone(), waiters.clone());
        tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                let Ok(ev) = serde_json::from_slice::<Event>(&m.payload) else { continue };
                let Some(ok) = done_when(&ev) else { continue };
                done.lock().await.insert(ev.cluster_id.clone(), (Instant::now(), ok));
                if let Some(w) = waiters.lock().await.remove(&ev.cluster_id) {
                    let _ = w.send(());
                }
            }
        });
    }
    let start = Instant::now();
    let mut starts = HashMap::new();
    let mut tasks = Vec::new();
    for name in names {
        let permit = permits.clone().acquire_owned().await?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        waiters.lock().await.insert(name.clone(), tx);
        let request_id = uuid::Uuid::new_v4().simple().to_string();
        let (subject, body) = mk(name, &request_id);
        let mut h = async_nats::HeaderMap::new();
        h.insert(async_nats::header::NATS_MESSAGE_ID, request_id.as_str());
        starts.insert(name.clone(), Instant::now());
        js.publish_with_headers(subject, h, body.into()).await?.await.context("request not stored")?;
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(Duration::from_secs(600), rx).await;
        }));
    }
    for t in tasks {
        t.await?;
    }
    let wall = start.elapsed();
    let done = done.lock().await;
    let mut latencies = Vec::new();
    let mut failed = 0;
    for name in names {
        match done.get(name) {
            Some((at, true)) => latencies.push(*at - starts[name]),
            _ => failed += 1,
        }
    }
    latencies.sort();
    Ok(Round { wall, latencies, failed })
}

/// Raw JetStream: publish `n` messages to a file-backed work queue, then pull and double-ack
/// each — the same primitives every saga step uses.
async fn raw_jetstream(client: &async_nats::Client, n: usize) -> Result<f64> {
    let js = jetstream::new(client.clone());
    let name = format!("BENCH_RAW_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let subject = format!("bench.raw.{name}");
    let s = js
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer = s
        .create_consumer(pull::Config {
            durable_name: Some("bench".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let start = Instant::now();
    let publish = async {
        let mut acks = futures::stream::FuturesUnordered::new();
        for i in 0..n {
            let mut h = async_nats::HeaderMap::new();
            h.insert(async_nats::header::NATS_MESSAGE_ID, format!("m{i}").as_str());
            let ack = js.publish_with_headers(subject.clone(), h, b"{\"op\":\"x\"}".to_vec().into()).await?;
            acks.push(std::future::IntoFuture::into_future(ack));
            if acks.len() >= 256 {
                acks.next().await.transpose()?;
            }
        }
        while acks.next().await.transpose()?.is_some() {}
        anyhow::Ok(())
    };
    let consume = async {
        let mut msgs = consumer.messages().await?;
        for _ in 0..n {
            let m = msgs.next().await.context("consumer ended")?.map_err(|e| anyhow::anyhow!("{e}"))?;
            m.double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        anyhow::Ok(())
    };
    let (p, c) = tokio::join!(publish, consume);
    p?;
    c?;
    let secs = start.elapsed().as_secs_f64();
    js.delete_stream(&name).await?;
    Ok(n as f64 / secs)
}

/// Raw Redis: read + compare-and-swap (the store's Lua script) on 16 keys from 16 tasks.
async fn raw_redis(url: &str, n: usize) -> Result<f64> {
    let ns = format!("bench-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let store = Arc::new(RedisStore::connect(url, &ns).await?);
    let per = n / 16;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("bench.k{t}");
            let mut rev = store.create(&key, b"0").await?;
            for i in 0..per {
                let cur = store.get(&key).await?.context("key vanished")?;
                rev = store.update(&key, i.to_string().as_bytes(), cur.revision.max(rev)).await?;
            }
            store.delete(&key).await?;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((per * 16) as f64 / start.elapsed().as_secs_f64())
}

/// Sums a counter from a Prometheus text endpoint (0 if absent).
async fn scrape(url: &str, counter: &str) -> Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("metrics URL must be http://host:port/path")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/metrics".into()));
    let mut s = tokio::net::TcpStream::connect(host).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    Ok(body.lines().filter(|l| l.starts_with(counter)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum())
}

async fn store_revision(url: &str, ns: &str) -> Result<u64> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_multiplexed_async_connection().await?;
    let v: Option<u64> = redis::cmd("GET").arg(format!("{ns}:revision")).query_async(&mut con).await?;
    Ok(v.unwrap_or(0))
}

fn report(what: &str, r: &Round, n: usize) {
    println!(
        "{what:<7} {n} clusters in {:.2} s = {:.1} clusters/s; request→done p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; failed {}",
        r.wall.as_secs_f64(),
        n as f64 / r.wall.as_secs_f64(),
        pct(&r.latencies, 0.5).as_secs_f64() * 1e3,
        pct(&r.latencies, 0.99).as_secs_f64() * 1e3,
        r.latencies.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        r.failed
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let a = Args::parse();
    let client = async_nats::connect(&a.nats_url).await.with_context(|| format!("connecting to {}", a.nats_url))?;
    let run = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let names: Vec<String> = (0..a.clusters).map(|i| format!("bench-{run}-{i}")).collect();
    println!("ksctl-bench: {} {} {} clusters, {} in flight", a.clusters, a.cluster_type, a.provider, a.concurrency);
    // (calls, attempts beyond the first of a call + our own retried calls, throttled answers)
    let calls = |_: ()| async {
        match &a.cloud_metrics_url {
            Some(u) => {
                let c = scrape(u, "ksctl_cloud_api_calls_total").await.unwrap_or(0.0);
                let attempts = scrape(u, "ksctl_cloud_api_attempts_total").await.unwrap_or(0.0);
                let ours = scrape(u, "ksctl_cloud_api_retries_total").await.unwrap_or(0.0);
                let throttled = scrape(u, "ksctl_cloud_api_throttled_total").await.unwrap_or(0.0);
                (c, (attempts - c).max(0.0) + ours, throttled)
            }
            None => (0.0, 0.0, 0.0),
        }
    };
    let calls0 = calls(()).await;

    let rev0 = store_revision(&a.redis_url, &a.store_namespace).await.unwrap_or(0);
    let t = a.cluster_type.clone();
    let done_when: DoneWhen = if a.cloud_only { cloud_phase_end } else { operation_end };
    let create = round(&client, &names, a.concurrency, done_when, |name, rid| {
        let req = CreateRequest {
            api_version: API_VERSION.into(),
            request_id: rid.into(),
            spec: spec(name, &t, &a.provider, &a.region),
        };
        (
            ksctl_bus::subjects::request_subject(ksctl_core::messages::RequestVerb::Create),
            serde_json::to_vec(&req).expect("serialises"),
        )
    })
    .await?;
    report("create", &create, a.clusters);
    if let Some(ms) = a.sim_latency_ms.filter(|ms| *ms > 0) {
        let steps = ideal_create_steps(&a.cluster_type);
        let ideal = steps as f64 * ms as f64 / 1e3;
        let wall = create.wall.as_secs_f64();
        println!(
            "ideal critical path: {steps} steps x {ms} ms = {ideal:.2} s; create wall {wall:.2} s; ratio {:.2}{}",
            wall / ideal,
            if wall < ideal { " (below 1: the step count is wrong)" } else { "" }
        );
    }
    let rev1 = store_revision(&a.redis_url, &a.store_namespace).await.unwrap_or(0);
    let calls1 = calls(()).await;
    if a.cloud_only {
        // The operations end in creation_failed after the cloud phase; wait for that state.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let delete = round(&client, &names, a.concurrency, operation_end, |name, rid| {
        let req = DeleteRequest { api_version: API_VERSION.into(), request_id: rid.into(), cluster_name: name.into() };
        (
            ksctl_bus::subjects::request_subject(ksctl_core::messages::RequestVerb::Delete),
            serde_json::to_vec(&req).expect("serialises"),
        )
    })
    .await?;
    report("delete", &delete, a.clusters);
    if create.failed + delete.failed > 0 {
        bail!("{} operations did not succeed", create.failed + delete.failed);
    }
    if a.cloud_metrics_url.is_some() {
        let calls2 = calls(()).await;
        let n = a.clusters as f64;
        println!(
            "cloud API calls per cluster: create {:.1}, delete {:.1}; calls retried: {:.0}; throttled answers: {:.0}",
            (calls1.0 - calls0.0) / n,
            (calls2.0 - calls1.0) / n,
            calls2.1 - calls0.1,
            calls2.2 - calls0.2
        );
    }
    if a.raw_ops == 0 {
        return Ok(());
    }

    let js_rate = raw_jetstream(&client, a.raw_ops).await?;
    let cas_rate = raw_redis(&a.redis_url, a.raw_ops).await?;
    println!("raw JetStream publish→consume→double-ack: {js_rate:.0} msg/s ({} messages)", a.raw_ops);
    println!("raw Redis read+CAS (Lua):                 {cas_rate:.0} ops/s ({} ops, 16 tasks)", a.raw_ops);
    // Per create: 1 request + one command and one result per phase.
    let phases = if a.cluster_type == "selfmanaged" { 3 } else { 2 };
    let msgs = 1 + 2 * phases;
    let writes = (rev1.saturating_sub(rev0)) as f64 / a.clusters as f64;
    let create_rate = a.clusters as f64 / create.wall.as_secs_f64();
    println!("per create: {msgs} durable bus messages, {writes:.0} store writes (CAS)");
    println!(
        "ratios: creates use {:.1}% of the raw bus rate and {:.1}% of the raw CAS rate",
        100.0 * create_rate * msgs as f64 / js_rate,
        100.0 * create_rate * writes / cas_rate
    );
    Ok(())
}
