//! `ksctl.query.get|list|info|switch|ops`: core NATS request/reply on a queue group shared by every
//! manager replica, answered from the store.
use crate::Manager;
use futures::StreamExt;
use ksctl_bus::subjects::{QUERY_GROUP, QUERY_SUBJECTS};
use ksctl_core::ClusterId;
use ksctl_core::keys;
use ksctl_core::messages::{
    ClusterInfo, ClusterSummary, Heartbeat, NameQuery, OperationStatus, OperationView, OpsQuery, QueryReply,
    SwitchData, context_name, drift,
};
use ksctl_core::records::{BootstrapRecord, ClusterRecord, InfraRecord, K8sRecord};
use ksctl_core::spec::ClusterType;
use ksctl_runtime::{RuntimeError, read_record};
use serde::Serialize;

pub async fn start(m: Manager) -> Result<tokio::task::JoinHandle<()>, RuntimeError> {
    let client = m.rt.publisher.client.clone();
    let mut sub = client
        .queue_subscribe(QUERY_SUBJECTS, QUERY_GROUP.into())
        .await
        .map_err(|e| RuntimeError::Config(format!("subscribing to {QUERY_SUBJECTS}: {e}")))?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let m = m.clone();
            // At most `KSCTL_MAX_QUERIES` at once: a flood waits here (and the client library
            // drops what it cannot buffer) instead of spawning without bound.
            let Ok(permit) = m.in_flight.clone().acquire_owned().await else { return };
            tokio::spawn(async move {
                let _permit = permit;
                let Some(reply) = msg.reply.clone() else {
                    return;
                };
                let verb = msg.subject.as_str().rsplit('.').next().unwrap_or_default().to_string();
                let label = ksctl_bus::metrics::known_label(&verb, &["get", "list", "info", "switch", "ops"]);
                m.rt.metrics.inc("queries_total", &[("query", label)]);
                let body = answer(&m, &verb, &msg.payload).await;
                if let Err(e) = m.rt.publisher.client.publish(reply, body.into()).await {
                    tracing::warn!(error = %e, "query reply not sent");
                }
            });
        }
    }))
}

fn json<T: Serialize>(r: QueryReply<T>) -> Vec<u8> {
    serde_json::to_vec(&r).expect("replies serialise")
}

async fn answer(m: &Manager, verb: &str, payload: &[u8]) -> Vec<u8> {
    match verb {
        "list" => match list(m).await {
            Ok(rows) => json(QueryReply::ok(rows)),
            Err(e) => json(QueryReply::<()>::err(e)),
        },
        "ops" => {
            let q: OpsQuery = if payload.is_empty() {
                OpsQuery::default()
            } else {
                match ksctl_core::json::from_slice(payload) {
                    Ok(q) => q,
                    Err(e) => return json(QueryReply::<()>::err(format!("malformed query: {e}"))),
                }
            };
            match ops(m, q.stuck).await {
                Ok(rows) => json(QueryReply::ok(rows)),
                Err(e) => json(QueryReply::<()>::err(e)),
            }
        }
        "get" | "info" | "switch" => {
            let q: NameQuery = match ksctl_core::json::from_slice(payload) {
                Ok(q) => q,
                Err(e) => return json(QueryReply::<()>::err(format!("malformed query: {e}"))),
            };
            let rec = match load(m, &q.cluster_name).await {
                Ok(r) => r,
                Err(e) => return json(QueryReply::<()>::err(e)),
            };
            match verb {
                "get" => json(QueryReply::ok(ClusterSummary::from(&rec))),
                "info" => match info(m, &rec).await {
                    Ok(i) => json(QueryReply::ok(i)),
                    Err(e) => json(QueryReply::<()>::err(e)),
                },
                _ => match switch(m, &rec).await {
                    Ok(s) => json(QueryReply::ok(s)),
                    Err(e) => json(QueryReply::<()>::err(e)),
                },
            }
        }
        other => {
            json(QueryReply::<()>::err(format!("unknown query {other:?}; expected get, list, info, switch or ops")))
        }
    }
}

async fn load(m: &Manager, name: &str) -> Result<ClusterRecord, String> {
    let id = ClusterId::new(name).map_err(|e| format!("cluster_name: {e}"))?;
    ksctl_store::get_json::<ClusterRecord>(m.rt.store.as_ref(), &keys::cluster(&id))
        .await
        .map_err(|e| e.to_string())?
        .map(|(r, _)| r)
        .ok_or_else(|| format!("no cluster named {name}"))
}

async fn records(m: &Manager) -> Result<Vec<ClusterRecord>, String> {
    let rows = m.rt.store.children(keys::CLUSTER_PREFIX.trim_end_matches('.')).await.map_err(|e| e.to_string())?;
    Ok(rows.into_iter().filter_map(|(_, v)| serde_json::from_slice::<ClusterRecord>(&v.value).ok()).collect())
}

async fn list(m: &Manager) -> Result<Vec<ClusterSummary>, String> {
    Ok(records(m).await?.iter().map(ClusterSummary::from).collect())
}

/// The operations under way, oldest phase first; `stuck_only`: those past the phase timeout.
async fn ops(m: &Manager, stuck_only: bool) -> Result<Vec<OperationStatus>, String> {
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
        .filter(|o| o.stuck || !stuck_only)
        .collect();
    rows.sort_by_key(|o| std::cmp::Reverse(o.phase_age_ms));
    Ok(rows)
}

async fn info(m: &Manager, rec: &ClusterRecord) -> Result<ClusterInfo, String> {
    let s = &m.rt.store;
    let e = |e: ksctl_runtime::PhaseError| e.to_string();
    let infra: InfraRecord = read_record(s, &keys::cloud(&rec.id)).await.map_err(e)?;
    let boot: BootstrapRecord = read_record(s, &keys::bootstrap(&rec.id)).await.map_err(e)?;
    let k8s: K8sRecord = read_record(s, &keys::k8s(&rec.id)).await.map_err(e)?;
    let mut vms: Vec<_> = infra.vms.into_values().collect();
    vms.sort_by_key(|v| (v.role, v.index));
    let health: Option<Heartbeat> =
        ksctl_store::get_json(s.as_ref(), &keys::health(&rec.id)).await.map_err(|e| e.to_string())?.map(|(h, _)| h);
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

async fn switch(m: &Manager, rec: &ClusterRecord) -> Result<SwitchData, String> {
    if rec.provider.kubeconfig_expires(rec.cluster_type) {
        return Ok(SwitchData {
            context: context_name(rec),
            kubeconfig: ksctl_bus::cloudquery::fresh_kubeconfig(&m.rt.publisher.client, &rec.id).await?,
        });
    }
    let s = &m.rt.store;
    let e = |e: ksctl_runtime::PhaseError| e.to_string();
    let sealed = match rec.cluster_type {
        ClusterType::Managed => read_record::<InfraRecord>(s, &keys::cloud(&rec.id)).await.map_err(e)?.kubeconfig,
        ClusterType::Selfmanaged => {
            read_record::<BootstrapRecord>(s, &keys::bootstrap(&rec.id)).await.map_err(e)?.kubeconfig
        }
    };
    let sealed = sealed.ok_or_else(|| format!("cluster {} has no kubeconfig yet (state {})", rec.id, rec.state))?;
    let kubeconfig = m.rt.sealer.open_string(&format!("kubeconfig/{}", rec.id), &sealed).map_err(|e| e.to_string())?;
    Ok(SwitchData { context: context_name(rec), kubeconfig })
}
