//! The bus against a real nats-server with JetStream: deduplication, delayed NAKs, the envelope
//! that NAKs itself when a handler dies.
use ksctl_bus::subjects::{RESULTS_STREAM, durable_consumer};
use ksctl_bus::{BusSettings, Envelope, Handler, HandlerError, Publisher, WorkerOptions, ensure_streams, run_consumer};
use ksctl_core::messages::PhaseResult;
use ksctl_core::saga::Phase;
use ksctl_core::{ClusterId, OperationId};
use ksctl_tests::NatsServer;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

async fn setup(server: &NatsServer) -> Publisher {
    let client = async_nats::connect(server.url()).await.unwrap();
    let p = Publisher::new(client);
    let s = BusSettings { ack_wait: Duration::from_secs(2), ..Default::default() };
    ensure_streams(&p.js, &s).await.unwrap();
    p
}

fn result() -> PhaseResult {
    PhaseResult {
        op_id: OperationId::from_request("r1"),
        cluster_id: ClusterId::new("c").unwrap(),
        phase: Phase::CloudCreate,
        error: None,
    }
}

async fn count(p: &Publisher, stream: &str) -> u64 {
    p.js.get_stream(stream).await.unwrap().info().await.unwrap().state.messages
}

#[tokio::test(flavor = "multi_thread")]
async fn republished_result_is_deduplicated() {
    let server = NatsServer::start();
    let p = setup(&server).await;
    // A handler redelivered after a crash publishes its result again: the stream keeps one.
    p.result(&result()).await.unwrap();
    p.result(&result()).await.unwrap();
    assert_eq!(count(&p, RESULTS_STREAM).await, 1);
    let mut other = result();
    other.phase = Phase::Bootstrap;
    p.result(&other).await.unwrap();
    assert_eq!(count(&p, RESULTS_STREAM).await, 2);
}

/// Fails the first delivery in the given way, then succeeds; records delivery times.
struct Flaky {
    mode: &'static str,
    seen: Arc<Mutex<Vec<Instant>>>,
}

#[async_trait::async_trait]
impl Handler for Flaky {
    async fn handle(&self, env: &Envelope) -> Result<(), HandlerError> {
        let n = {
            let mut s = self.seen.lock().unwrap();
            s.push(Instant::now());
            s.len()
        };
        assert_eq!(env.delivered() as usize, n, "delivery count");
        if n == 1 {
            match self.mode {
                "retry" => return Err(HandlerError::retry("store unavailable")),
                "panic" => panic!("handler crashed"),
                _ => {}
            }
        }
        Ok(())
    }
}

async fn deliveries(mode: &'static str) -> Vec<Instant> {
    let server = NatsServer::start();
    let p = setup(&server).await;
    let settings = BusSettings { ack_wait: Duration::from_secs(30), ..Default::default() };
    let consumer = durable_consumer(&p.js, RESULTS_STREAM, "test", &settings, 100).await.unwrap();
    let seen = Arc::new(Mutex::new(vec![]));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let opts = WorkerOptions { max_jobs: 2, base_backoff: Duration::from_millis(800), ..Default::default() };
    let worker = tokio::spawn(run_consumer("test", consumer, Arc::new(Flaky { mode, seen: seen.clone() }), opts, rx));
    p.result(&result()).await.unwrap();
    // Acked after the second delivery: the work queue empties. Waited for rather than slept on:
    // a panic's backtrace alone can take seconds to print on a loaded machine (it did in CI).
    ksctl_tests::eventually(Duration::from_secs(20), &format!("{mode}: the message acked"), || async {
        (count(&p, RESULTS_STREAM).await == 0).then_some(())
    })
    .await;
    tx.send(true).unwrap();
    worker.await.unwrap().unwrap();
    seen.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn retryable_error_naks_with_a_delay() {
    let d = deliveries("retry").await;
    assert_eq!(d.len(), 2, "delivered once more, then acked");
    let gap = d[1] - d[0];
    // ack_wait is 30 s, so a redelivery within ~1 s can only come from the delayed NAK.
    assert!(gap >= Duration::from_millis(750) && gap < Duration::from_secs(5), "gap {gap:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn panicking_handler_naks_itself() {
    let d = deliveries("panic").await;
    assert_eq!(d.len(), 2);
    assert!(d[1] - d[0] < Duration::from_secs(5), "redelivered by the envelope's NAK, not ack_wait");
}
