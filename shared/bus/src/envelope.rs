//! A delivered message that owns its acknowledgement. Dropped without a decision (a panic, an
//! early return), it NAKs itself with a delay, so no message is ever silently held until ack_wait.
use async_nats::jetstream::{AckKind, Message};
use std::time::Duration;

pub struct Envelope {
    msg: Option<Message>,
    /// Delay used if the envelope is dropped undecided.
    drop_delay: Duration,
}

impl Envelope {
    pub fn new(msg: Message, drop_delay: Duration) -> Self {
        Self { msg: Some(msg), drop_delay }
    }
    fn msg(&self) -> &Message {
        self.msg.as_ref().expect("envelope used after its decision")
    }
    pub fn subject(&self) -> &str {
        self.msg().subject.as_str()
    }
    pub fn payload(&self) -> &[u8] {
        &self.msg().payload
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.msg().headers.as_ref()?.get(name).map(|v| v.as_str().to_string())
    }
    /// How often this message has been delivered, including this time.
    pub fn delivered(&self) -> i64 {
        self.msg().info().map(|i| i.delivered).unwrap_or(1)
    }
    /// Tells the server work is still going on, resetting the ack timer.
    pub async fn progress(&self) {
        if let Some(m) = &self.msg {
            let _ = m.ack_with(AckKind::Progress).await;
        }
    }
    /// Acknowledges after the effects are durable; waits for the server to confirm (double ack)
    /// so a lost ack cannot cause a silent redelivery after we moved on.
    pub async fn ack(mut self) {
        if let Some(m) = self.msg.take()
            && let Err(e) = m.double_ack().await
        {
            tracing::warn!(error = %e, "ack not confirmed; the message may be redelivered");
        }
    }
    pub async fn nak(mut self, delay: Duration) {
        if let Some(m) = self.msg.take() {
            let _ = m.ack_with(AckKind::Nak(Some(delay))).await;
        }
    }
    /// Gives the message up: a copy (headers kept) goes to `ksctl.dead.<subject>` with the
    /// reason, then the original is terminated. If the copy is not stored, the original is
    /// NAKed instead, so nothing is lost.
    pub async fn dead_letter(mut self, reason: &str) {
        use crate::subjects::{DEAD_DELIVERIES_HEADER, DEAD_PREFIX, DEAD_REASON_HEADER};
        let Some(m) = self.msg.take() else { return };
        let delivered = m.info().map(|i| i.delivered).unwrap_or(1);
        // The copy is a new message: the original's id would be dropped as a duplicate.
        let mut headers = async_nats::HeaderMap::new();
        for (name, values) in m.headers.iter().flat_map(|h| h.iter()) {
            if *name != async_nats::header::NATS_MESSAGE_ID {
                for v in values {
                    headers.append(name.clone(), v.clone());
                }
            }
        }
        headers.insert(DEAD_REASON_HEADER, reason.replace(['\r', '\n'], " ").as_str());
        headers.insert(DEAD_DELIVERIES_HEADER, delivered.to_string().as_str());
        let subject = format!("{DEAD_PREFIX}{}", m.subject);
        let stored = match m.context.publish_with_headers(subject.clone(), headers, m.payload.clone()).await {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(()) => {
                tracing::warn!(%subject, %reason, delivered, "message dead-lettered");
                let _ = m.ack_with(AckKind::Term).await;
            }
            Err(e) => {
                tracing::warn!(%subject, error = %e, "dead letter not stored; the message stays");
                let _ = m.ack_with(AckKind::Nak(Some(self.drop_delay))).await;
            }
        }
    }
    pub async fn term(mut self) {
        if let Some(m) = self.msg.take() {
            let _ = m.ack_with(AckKind::Term).await;
        }
    }
}

impl Drop for Envelope {
    fn drop(&mut self) {
        if let Some(m) = self.msg.take() {
            let delay = self.drop_delay;
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = m.ack_with(AckKind::Nak(Some(delay))).await;
                });
            }
        }
    }
}
