//! `ksctl.query.<verb>` ([`QueryVerb`]): core NATS request/reply on a queue group shared by every
//! manager replica, answered from the store.
use crate::Manager;
use async_nats::service::ServiceExt;
use futures::StreamExt;
use ksctl_bus::subjects::{QUERY_GROUP, QUERY_SERVICE, QUERY_SUBJECTS};
use ksctl_core::ClusterId;
use ksctl_core::keys;
use ksctl_core::messages::{
    ClusterInfo, ClusterSummary, Heartbeat, NameQuery, OperationStatus, OperationView, OpsQuery, QueryReply, QueryVerb,
    SwitchData, context_name, drift,
};
use ksctl_core::records::{BootstrapRecord, ClusterRecord, InfraRecord, K8sRecord};
use ksctl_core::spec::ClusterType;
use ksctl_runtime::{RuntimeError, read_record};
use serde::Serialize;

/// Serves the queries as the NATS service [`QUERY_SERVICE`] (`async_nats::service`): besides
/// the answers, every replica answers `$SRV.PING|INFO|STATS` (discovery, request counts and
/// processing times). One endpoint takes every verb, so a verb nobody serves still gets an
/// answer saying so.
pub async fn start(m: Manager) -> Result<tokio::task::JoinHandle<()>, RuntimeError> {
    let failed = |e: async_nats::Error| RuntimeError::Config(format!("serving {QUERY_SUBJECTS}: {e}"));
    let service =
        m.rt.publisher
            .client
            .service_builder()
            .description(format!("ksctl-rs queries (ksctl.query.<verb>): {}", QueryVerb::spellings().join(", ")))
            .queue_group(QUERY_GROUP)
            .start(QUERY_SERVICE, env!("CARGO_PKG_VERSION"))
            .await
            .map_err(failed)?;
    let mut requests = service.endpoint_builder().name("query").add(QUERY_SUBJECTS).await.map_err(failed)?;
    Ok(tokio::spawn(async move {
        // Kept while queries are served: it answers the service's own $SRV requests.
        let _service = service;
        while let Some(req) = requests.next().await {
            let m = m.clone();
            // At most `KSCTL_MAX_QUERIES` at once: a flood waits here (and the client library
            // drops what it cannot buffer) instead of spawning without bound.
            let Ok(permit) = m.in_flight.clone().acquire_owned().await else { return };
            tokio::spawn(async move {
                let _permit = permit;
                if req.message.reply.is_none() {
                    return;
                }
                let verb = req.message.subject.as_str().rsplit('.').next().unwrap_or_default().to_string();
                let label = QueryVerb::parse(&verb).map_or("unknown", QueryVerb::as_str);
                m.rt.metrics.inc("queries_total", &[("query", label)]);
                let body = answer(&m, &verb, &req.message.payload).await;
                if let Err(e) = req.respond(Ok(body.into())).await {
                    tracing::warn!(error = %e, "query reply not sent");
                }
            });
        }
    }))
}

/// Why a query got no data; its text is the reply's `error`.
#[derive(Debug, thiserror::Error)]
enum QueryError {
    #[error("unknown query {0:?}; expected {expected}", expected = QueryVerb::spellings().join(", "))]
    Unknown(String),
    #[error("malformed query: {0}")]
    Malformed(#[from] ksctl_core::json::JsonError),
    #[error("cluster_name: {0}")]
    BadName(String),
    #[error("no cluster named {0}")]
    NotFound(String),
    #[error("cluster {cluster} has no kubeconfig yet (state {state})")]
    NoKubeconfig { cluster: ClusterId, state: String },
    #[error(transparent)]
    Store(#[from] ksctl_store::StoreError),
    #[error(transparent)]
    Record(#[from] ksctl_runtime::PhaseError),
    #[error(transparent)]
    Seal(#[from] ksctl_core::seal::SealError),
    /// The cloud-controller did not give fresh credentials.
    #[error(transparent)]
    Cloud(#[from] ksctl_bus::cloudquery::CloudQueryError),
}

fn reply<T: Serialize>(r: Result<T, QueryError>) -> Vec<u8> {
    let r = match r {
        Ok(data) => serde_json::to_vec(&QueryReply::ok(data)),
        Err(e) => serde_json::to_vec(&QueryReply::<()>::err(e.to_string())),
    };
    r.expect("replies serialise")
}

async fn answer(m: &Manager, verb: &str, payload: &[u8]) -> Vec<u8> {
    let Some(verb) = QueryVerb::parse(verb) else {
        return reply::<()>(Err(QueryError::Unknown(verb.to_string())));
    };
    match verb {
        QueryVerb::List => reply(list(m).await),
        QueryVerb::Ops => reply(ops(m, payload).await),
        QueryVerb::Get => reply(named(m, payload).await.map(|rec| ClusterSummary::from(&rec))),
        QueryVerb::Info => reply(async { info(m, &named(m, payload).await?).await }.await),
        QueryVerb::Switch => reply(async { switch(m, &named(m, payload).await?).await }.await),
    }
}

/// The cluster a [`NameQuery`] names.
async fn named(m: &Manager, payload: &[u8]) -> Result<ClusterRecord, QueryError> {
    let q: NameQuery = ksctl_core::json::from_slice(payload)?;
    let id = ClusterId::new(&q.cluster_name).map_err(QueryError::BadName)?;
    ksctl_store::get_json::<ClusterRecord>(m.rt.store.as_ref(), &keys::cluster(&id))
        .await?
        .map(|(r, _)| r)
        .ok_or(QueryError::NotFound(q.cluster_name))
}

async fn records(m: &Manager) -> Result<Vec<ClusterRecord>, QueryError> {
    let rows = m.rt.store.children(keys::CLUSTER_PREFIX.trim_end_matches('.')).await?;
    Ok(rows.into_iter().filter_map(|(_, v)| serde_json::from_slice::<ClusterRecord>(&v.value).ok()).collect())
}

async fn list(m: &Manager) -> Result<Vec<ClusterSummary>, QueryError> {
    Ok(records(m).await?.iter().map(ClusterSummary::from).collect())
}

/// The operations under way, oldest phase first; `stuck`: only those past the phase timeout.
async fn ops(m: &Manager, payload: &[u8]) -> Result<Vec<OperationStatus>, QueryError> {
    let q: OpsQuery = if payload.is_empty() { OpsQuery::default() } else { ksctl_core::json::from_slice(payload)? };
    let now = ksctl_core::now_ms();
    let timeout = m.phase_timeout.as_millis() as u64;
    let mut rows: Vec<OperationStatus> = records(m)
        .await?
        .iter()
        .filter_map(|r| {
            let op = r.operation.as_ref()?;
            let age = now.saturating_sub(op.dispatched_at_ms);
            Some(OperationStatus {
                cluster: r.id.to_string(),
                state: r.state.to_string(),
                operation: OperationView::from(op),
                dispatch: op.dispatch,
                phase_age_ms: age,
                phase_timeout_ms: timeout,
                stuck: age > timeout,
            })
        })
        .filter(|o| o.stuck || !q.stuck)
        .collect();
    rows.sort_by_key(|o| std::cmp::Reverse(o.phase_age_ms));
    Ok(rows)
}

async fn info(m: &Manager, rec: &ClusterRecord) -> Result<ClusterInfo, QueryError> {
    let s = &m.rt.store;
    let infra: InfraRecord = read_record(s, &keys::cloud(&rec.id)).await?;
    let boot: BootstrapRecord = read_record(s, &keys::bootstrap(&rec.id)).await?;
    let k8s: K8sRecord = read_record(s, &keys::k8s(&rec.id)).await?;
    let mut vms: Vec<_> = infra.vms.into_values().collect();
    vms.sort_by_key(|v| (v.role, v.index));
    let health: Option<Heartbeat> = ksctl_store::get_json(s.as_ref(), &keys::health(&rec.id)).await?.map(|(h, _)| h);
    let expected = match rec.cluster_type {
        ClusterType::Managed => rec.spec.managed_nodes,
        ClusterType::Selfmanaged => rec.spec.control_plane_nodes + rec.spec.worker_nodes,
    };
    let drift = health.as_ref().map(|h| drift(h, expected, &rec.spec.kubernetes_version)).unwrap_or_default();
    Ok(ClusterInfo {
        summary: ClusterSummary::from(rec),
        spec: rec.spec.clone(),
        network: infra.network,
        firewalls: infra.firewalls.into_values().collect(),
        vms,
        managed_cluster: infra.managed_cluster,
        node_pool_size: infra.node_pool_size,
        components: k8s.installed.into_iter().collect(),
        bootstrap_steps_done: boot.steps_done.len(),
        last_operation: rec.last_operation.as_ref().map(OperationView::from),
        health,
        drift,
        apps: rec.apps.clone(),
    })
}

async fn switch(m: &Manager, rec: &ClusterRecord) -> Result<SwitchData, QueryError> {
    if rec.provider.kubeconfig_expires(rec.cluster_type) {
        let kubeconfig = ksctl_bus::cloudquery::fresh_kubeconfig(&m.rt.publisher.client, &rec.id).await?;
        return Ok(SwitchData { context: context_name(rec), kubeconfig });
    }
    let s = &m.rt.store;
    let sealed = match rec.cluster_type {
        ClusterType::Managed => read_record::<InfraRecord>(s, &keys::cloud(&rec.id)).await?.kubeconfig,
        ClusterType::Selfmanaged => read_record::<BootstrapRecord>(s, &keys::bootstrap(&rec.id)).await?.kubeconfig,
    };
    let sealed =
        sealed.ok_or_else(|| QueryError::NoKubeconfig { cluster: rec.id.clone(), state: rec.state.to_string() })?;
    let kubeconfig = m.rt.sealer.open_string(&format!("kubeconfig/{}", rec.id), &sealed)?;
    Ok(SwitchData { context: context_name(rec), kubeconfig })
}
