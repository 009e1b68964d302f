//! `ksctl.dead.>`: messages a service gave up on. Nothing may stay silently stuck, so a dead
//! command or result fails its operation with the reason (as a failed phase result would), and
//! a dead request is answered and announced as rejected.
use crate::Manager;
use crate::results::ResultHandler;
use ksctl_bus::subjects::{DEAD_DELIVERIES_HEADER, DEAD_PREFIX, DEAD_REASON_HEADER};
use ksctl_bus::{Envelope, Handler, HandlerError};
use ksctl_core::messages::{Command, Event, EventKind, PhaseResult, REPLY_HEADER, RequestReply};

pub struct DeadHandler(pub Manager);

/// Why the message died, as the failure the operation shows.
fn reason(env: &Envelope) -> String {
    let why = env.header(DEAD_REASON_HEADER).unwrap_or_else(|| "no reason given".into());
    let n = env.header(DEAD_DELIVERIES_HEADER).unwrap_or_else(|| "?".into());
    format!("dead-lettered after {n} deliveries: {why}")
}

#[async_trait::async_trait]
impl Handler for DeadHandler {
    async fn handle(&self, env: &Envelope) -> Result<(), HandlerError> {
        let m = &self.0;
        let original = env.subject().strip_prefix(DEAD_PREFIX).unwrap_or_default().to_string();
        let why = reason(env);
        let kind = original.split('.').nth(1).unwrap_or_default();
        let label = ksctl_bus::metrics::known_label(kind, &["request", "result", "cloud", "bootstrap", "k8s"]);
        m.rt.metrics.inc("dead_letters_total", &[("kind", label)]);
        let failed = match kind {
            "result" => serde_json::from_slice::<PhaseResult>(env.payload()).ok().map(|mut r| {
                r.error = Some(why.clone());
                r
            }),
            "cloud" | "bootstrap" | "k8s" => serde_json::from_slice::<Command>(env.payload()).ok().map(|c| {
                PhaseResult { op_id: c.op_id, cluster_id: c.cluster_id, phase: c.phase, error: Some(why.clone()) }
            }),
            "request" => {
                let mut ev = Event::new("_", EventKind::Rejected, format!("request on {original} {why}"));
                let body: serde_json::Value = serde_json::from_slice(env.payload()).unwrap_or_default();
                ev.request_id = body["request_id"].as_str().map(str::to_string);
                if let Some(c) = body["cluster_name"].as_str().or(body["spec"]["cluster_name"].as_str())
                    && ksctl_core::ClusterId::new(c).is_ok()
                {
                    ev.cluster_id = c.to_string();
                }
                m.rt.publisher.event(ev).await;
                if let Some(to) = env.header(REPLY_HEADER) {
                    let reply = RequestReply {
                        accepted: false,
                        request_id: body["request_id"].as_str().map(str::to_string),
                        cluster_id: None,
                        operation_id: None,
                        message: format!("the request could not be handled: {why}"),
                        errors: vec![],
                    };
                    let _ = m.rt.publisher.client.publish(to, serde_json::to_vec(&reply).expect("json").into()).await;
                }
                None
            }
            _ => None,
        };
        match failed {
            // Fails the operation at that phase, if it is still there (a result that arrived in
            // the meantime has moved it on, and this is ignored).
            Some(res) => ResultHandler(m.clone()).apply(&res).await,
            None => {
                tracing::warn!(subject = %original, %why, "dead letter without an operation to fail");
                Ok(())
            }
        }
    }
}
