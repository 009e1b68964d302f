//! Streams, subjects and consumers: the one place they are declared.
use crate::error::BusError;
use async_nats::jetstream::{self, consumer::pull, stream};
use ksctl_core::ClusterId;
use ksctl_core::messages::{EventKind, QueryVerb, RequestVerb};
use ksctl_core::saga::{Phase, Service};
use std::time::Duration;

/// User requests (`ksctl.request.<RequestVerb>`), consumed by the manager.
pub const REQUESTS_STREAM: &str = "KSCTL_REQUESTS";
pub const REQUEST_SUBJECTS: &str = "ksctl.request.>";
/// Commands for the cloud-controller (`ksctl.cloud.<verb>`).
pub const CLOUD_STREAM: &str = "KSCTL_CLOUD";
/// Commands for the bootstrap-controller (`ksctl.bootstrap.<verb>`).
pub const BOOTSTRAP_STREAM: &str = "KSCTL_BOOTSTRAP";
/// Commands for the k8s-controller (`ksctl.k8s.<verb>`).
pub const K8S_STREAM: &str = "KSCTL_K8S";
/// Phase results for the manager (`ksctl.result.<service>.<verb>`).
pub const RESULTS_STREAM: &str = "KSCTL_RESULTS";
pub const RESULT_SUBJECTS: &str = "ksctl.result.>";
/// Progress and audit events (`ksctl.events.<cluster_id>.<kind>`), kept for a limited age.
pub const EVENTS_STREAM: &str = "KSCTL_EVENTS";
pub const EVENT_SUBJECTS: &str = "ksctl.events.>";
/// Messages given up on (`ksctl.dead.<original subject>`), with the reason in
/// [`DEAD_REASON_HEADER`]: the manager marks their operations failed; kept for inspection.
pub const DEAD_STREAM: &str = "KSCTL_DEAD";
pub const DEAD_PREFIX: &str = "ksctl.dead.";
pub const DEAD_SUBJECTS: &str = "ksctl.dead.>";
pub const DEAD_REASON_HEADER: &str = "Ksctl-Dead-Reason";
pub const DEAD_DELIVERIES_HEADER: &str = "Ksctl-Dead-Deliveries";
pub const MANAGER_DEAD_CONSUMER: &str = "manager-dead";
/// Queries answered by the manager over core request/reply, on this queue group.
pub const QUERY_SUBJECTS: &str = "ksctl.query.*";
pub const QUERY_GROUP: &str = "manager";
/// The NATS service (`$SRV.PING|INFO|STATS.<name>`) the manager's replicas answer queries as.
pub const QUERY_SERVICE: &str = "ksctl-queries";
/// Fresh credentials for clouds whose kubeconfig tokens expire (EKS), answered by the
/// cloud-controller over core request/reply (body: `NameQuery`, reply: `QueryReply<String>`).
pub const KUBECONFIG_QUERY_SUBJECT: &str = "ksctl.cloudquery.kubeconfig";
pub const KUBECONFIG_QUERY_GROUP: &str = "cloud-controller";

/// Durable consumer names, shared by every replica of a service.
pub const MANAGER_REQUESTS_CONSUMER: &str = "manager";
pub const MANAGER_RESULTS_CONSUMER: &str = "manager";

pub fn request_subject(verb: RequestVerb) -> String {
    format!("ksctl.request.{verb}")
}
pub fn query_subject(verb: QueryVerb) -> String {
    format!("ksctl.query.{verb}")
}
pub fn service_stream(s: Service) -> &'static str {
    match s {
        Service::Cloud => CLOUD_STREAM,
        Service::Bootstrap => BOOTSTRAP_STREAM,
        Service::K8s => K8S_STREAM,
    }
}
/// The durable consumer of a controller's stream.
pub fn service_consumer(s: Service) -> &'static str {
    match s {
        Service::Cloud => "cloud-controller",
        Service::Bootstrap => "bootstrap-controller",
        Service::K8s => "k8s-controller",
    }
}
pub fn command_subject(p: Phase) -> String {
    format!("ksctl.{}.{}", p.service().as_str(), p.verb())
}
pub fn result_subject(p: Phase) -> String {
    format!("ksctl.result.{}.{}", p.service().as_str(), p.verb())
}
/// `cluster` is `_` for requests too broken to name a cluster.
pub fn event_subject(cluster: &str, kind: EventKind) -> String {
    format!("ksctl.events.{cluster}.{}", kind.as_str())
}
pub fn cluster_events(id: &ClusterId) -> String {
    format!("ksctl.events.{id}.>")
}

/// Delivery settings shared by every stream and consumer.
#[derive(Debug, Clone)]
pub struct BusSettings {
    /// How long a delivered message may go without an ack or progress before redelivery.
    pub ack_wait: Duration,
    /// Deliveries before a message is given up (the handler records the failure on the last).
    pub max_deliver: i64,
    /// Window in which a repeated `Nats-Msg-Id` is dropped by the stream.
    pub duplicate_window: Duration,
    /// How long events are kept.
    pub events_max_age: Duration,
    /// The most the events stream holds; the oldest go first.
    pub events_max_bytes: i64,
    /// The largest event accepted.
    pub events_max_msg_size: i32,
    /// Copies of every stream (and KV bucket) across a NATS cluster: 3 on a 3-node cluster.
    pub replicas: usize,
}

impl Default for BusSettings {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_deliver: 20,
            duplicate_window: Duration::from_secs(3600),
            events_max_age: Duration::from_secs(7 * 24 * 3600),
            events_max_bytes: 1 << 30,
            events_max_msg_size: 64 << 10,
            replicas: 1,
        }
    }
}

fn work_queue(name: &str, subjects: &str, s: &BusSettings) -> stream::Config {
    stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: s.duplicate_window,
        num_replicas: s.replicas,
        ..Default::default()
    }
}

/// A stream whose messages stay (for reading, not consuming away) until they are too old.
fn kept(name: &str, subjects: &str, s: &BusSettings) -> stream::Config {
    stream::Config {
        name: name.into(),
        subjects: vec![subjects.into()],
        retention: stream::RetentionPolicy::Limits,
        max_age: s.events_max_age,
        storage: stream::StorageType::File,
        num_replicas: s.replicas,
        ..Default::default()
    }
}

/// Events: kept by age, and bounded by bytes and message size, dropping the oldest.
fn events(s: &BusSettings) -> stream::Config {
    stream::Config {
        max_bytes: s.events_max_bytes,
        max_message_size: s.events_max_msg_size,
        discard: stream::DiscardPolicy::Old,
        ..kept(EVENTS_STREAM, EVENT_SUBJECTS, s)
    }
}

/// Ensures every stream exists. An existing stream with another configuration is used as it is
/// (and logged): streams hold operations in flight and are never deleted to "fix" a mismatch.
pub async fn ensure_streams(js: &jetstream::Context, s: &BusSettings) -> Result<(), BusError> {
    let mut configs =
        vec![work_queue(REQUESTS_STREAM, REQUEST_SUBJECTS, s), work_queue(RESULTS_STREAM, RESULT_SUBJECTS, s)];
    for svc in [Service::Cloud, Service::Bootstrap, Service::K8s] {
        configs.push(work_queue(service_stream(svc), &format!("ksctl.{}.>", svc.as_str()), s));
    }
    configs.push(kept(DEAD_STREAM, DEAD_SUBJECTS, s));
    configs.push(events(s));
    for cfg in configs {
        let name = cfg.name.clone();
        js.get_or_create_stream(cfg).await.map_err(|e| BusError::Setup { stream: name, message: e.to_string() })?;
    }
    Ok(())
}

/// The durable pull consumer every replica of a service binds to.
pub async fn durable_consumer(
    js: &jetstream::Context,
    stream_name: &str,
    durable: &str,
    s: &BusSettings,
    max_ack_pending: i64,
) -> Result<jetstream::consumer::Consumer<pull::Config>, BusError> {
    let setup = |e: String| BusError::Setup { stream: stream_name.into(), message: e };
    let stream = js.get_stream(stream_name).await.map_err(|e| setup(e.to_string()))?;
    stream
        .get_or_create_consumer(
            durable,
            pull::Config {
                durable_name: Some(durable.into()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: s.ack_wait,
                // One more than the handler gets: that delivery dead-letters the message
                // (see `run_consumer`).
                max_deliver: if s.max_deliver > 0 { s.max_deliver + 1 } else { s.max_deliver },
                max_ack_pending,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| setup(e.to_string()))
}
