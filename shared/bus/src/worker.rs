//! The loop every service runs its durable consumers with: bounded concurrency per replica,
//! ack kinds chosen from the handler's outcome, delayed NAKs with backoff, graceful shutdown.
use crate::envelope::Envelope;
use crate::error::{BusError, HandlerError};
use async_nats::jetstream::consumer::{Consumer, pull};
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one message. `Ok`: its effects are durable and its follow-ups published.
    async fn handle(&self, env: &Envelope) -> Result<(), HandlerError>;
}

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Messages handled at once by this replica.
    pub max_jobs: usize,
    /// First retry delay; doubled per delivery up to `max_backoff`.
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// How long in-flight work may take to finish after shutdown is signalled.
    pub drain_deadline: Duration,
    /// The consumer's deliveries: a retry asked for on the last one dead-letters the message
    /// instead (0: unlimited).
    pub max_deliver: i64,
    /// Where the loop counts messages by outcome, redeliveries and handling time.
    pub metrics: Option<Arc<crate::Metrics>>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            max_jobs: 16,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            drain_deadline: Duration::from_secs(20),
            max_deliver: 20,
            metrics: None,
        }
    }
}

/// Exponential backoff with jitter from the delivery count, so a short outage does not burn
/// every delivery in milliseconds.
pub fn backoff(opts: &WorkerOptions, delivered: i64) -> Duration {
    let exp = (delivered.max(1) - 1).min(16) as u32;
    let d = opts.base_backoff.saturating_mul(2u32.saturating_pow(exp)).min(opts.max_backoff);
    let jitter = fastrand::u64(0..=d.as_millis() as u64 / 4);
    d + Duration::from_millis(jitter)
}

/// Pulls from `consumer` until `shutdown` turns true, then drains in-flight work.
pub async fn run_consumer(
    name: &str,
    consumer: Consumer<pull::Config>,
    handler: Arc<dyn Handler>,
    opts: WorkerOptions,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BusError> {
    let err = |m: String| BusError::Consume { consumer: name.into(), message: m };
    // Pull no more than we can work on: a prefetched message waits on its ack timer.
    let mut messages =
        consumer.stream().max_messages_per_batch(opts.max_jobs).messages().await.map_err(|e| err(e.to_string()))?;
    let permits = Arc::new(Semaphore::new(opts.max_jobs));
    let mut tasks = JoinSet::new();
    let label: Arc<str> = Arc::from(name);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let next = tokio::select! {
            m = messages.next() => m,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        while tasks.try_join_next().is_some() {}
        let msg = match next {
            None => return Err(err("message stream ended".into())),
            Some(Err(e)) => {
                tracing::warn!(consumer = name, error = %e, "pull failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            Some(Ok(m)) => m,
        };
        let handler = handler.clone();
        let opts2 = opts.clone();
        let consumer = label.clone();
        tasks.spawn(async move {
            let consumer: &str = &consumer;
            let _permit = permit;
            let env = Envelope::new(msg, opts2.base_backoff);
            // A dead letter that cannot be handled is not dead-lettered again.
            let dead = env.subject().starts_with(crate::subjects::DEAD_PREFIX);
            let n = env.delivered();
            let last = opts2.max_deliver > 0 && n >= opts2.max_deliver;
            let count = |outcome: &str| {
                if let Some(m) = &opts2.metrics {
                    m.inc("messages_total", &[("consumer", consumer), ("outcome", outcome)]);
                }
            };
            if n > 1 {
                count("redelivered");
            }
            // The consumer allows one delivery more than the handler gets: a message that comes
            // back after its last attempt had no outcome (the process died handling it, or the
            // ack was lost), and a poison message must not crash replicas for ever.
            if opts2.max_deliver > 0 && n > opts2.max_deliver && !dead {
                count("dead_lettered");
                let why = format!("delivered {n} times; the last attempts ended without an outcome (crash or timeout)");
                return env.dead_letter(&why).await;
            }
            let started = std::time::Instant::now();
            let outcome = handler.handle(&env).await;
            if let Some(m) = &opts2.metrics {
                m.observe("handle_seconds", &[("consumer", consumer)], started.elapsed().as_secs_f64());
            }
            match outcome {
                Ok(()) => {
                    count("acked");
                    env.ack().await
                }
                Err(HandlerError::Retry { reason, .. }) if last && !dead => {
                    count("dead_lettered");
                    env.dead_letter(&format!("{reason} (gave up after {n} deliveries)")).await
                }
                Err(HandlerError::Permanent(reason)) if !dead => {
                    count("dead_lettered");
                    env.dead_letter(&reason).await
                }
                Err(HandlerError::Retry { reason, delay }) => {
                    count("retried");
                    let d = delay.unwrap_or_else(|| backoff(&opts2, env.delivered()));
                    tracing::info!(subject = env.subject(), %reason, delay_ms = d.as_millis() as u64, "retrying later");
                    env.nak(d).await
                }
                Err(HandlerError::Permanent(reason)) => {
                    count("dropped");
                    tracing::warn!(subject = env.subject(), %reason, "giving up on message");
                    env.term().await
                }
            }
        });
    }
    // Graceful shutdown: stop pulling, let in-flight work finish within the deadline; whatever
    // is still running is aborted and its envelope NAKs itself for another replica.
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(opts.drain_deadline, drain).await.is_err() {
        tracing::warn!(consumer = name, "in-flight work did not finish before the deadline; aborting it");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let o = WorkerOptions {
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..Default::default()
        };
        let d1 = backoff(&o, 1);
        let d3 = backoff(&o, 3);
        assert!(d1 >= Duration::from_millis(100) && d1 < Duration::from_millis(126));
        assert!(d3 >= Duration::from_millis(400));
        assert!(backoff(&o, 50) <= Duration::from_millis(1250));
    }
}
