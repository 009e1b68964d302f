//! Durable publishing (awaits the stream's ack) with deterministic message ids, and events.
use crate::error::BusError;
use crate::subjects::{command_subject, event_subject, result_subject};
use async_nats::HeaderMap;
use async_nats::jetstream;
use ksctl_core::messages::{Command, Event, PhaseResult};
use serde::Serialize;

#[derive(Clone)]
pub struct Publisher {
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

impl Publisher {
    pub fn new(client: async_nats::Client) -> Self {
        let js = jetstream::new(client.clone());
        Self { client, js }
    }

    /// Publishes to a stream and waits for its ack. The stream drops a repeated `msg_id` within
    /// its duplicate window, so a redelivered handler can publish again safely.
    pub async fn publish_durable<T: Serialize>(&self, subject: &str, msg_id: &str, body: &T) -> Result<(), BusError> {
        let err = |m: String| BusError::Publish { subject: subject.into(), message: m };
        let payload = serde_json::to_vec(body).map_err(|e| err(e.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id);
        self.js
            .publish_with_headers(subject.to_string(), headers, payload.into())
            .await
            .map_err(|e| err(e.to_string()))?
            .await
            .map_err(|e| err(e.to_string()))?;
        Ok(())
    }

    pub async fn command(&self, cmd: &Command) -> Result<(), BusError> {
        self.publish_durable(&command_subject(cmd.phase), &cmd.msg_id(), cmd).await
    }

    pub async fn result(&self, r: &PhaseResult) -> Result<(), BusError> {
        self.publish_durable(&result_subject(r.phase), &r.msg_id(), r).await
    }

    /// Events are progress and audit, not state: published without waiting, never failing a handler.
    pub async fn event(&self, ev: Event) {
        let subject = event_subject(&ev.cluster_id, ev.kind);
        match serde_json::to_vec(&ev) {
            Ok(p) => {
                if let Err(e) = self.client.publish(subject, p.into()).await {
                    tracing::warn!(error = %e, "event not published");
                }
            }
            Err(e) => tracing::warn!(error = %e, "event not serialisable"),
        }
    }
}
