//! Answers `ksctl.cloudquery.kubeconfig` for the manager's `switch`: a kubeconfig with freshly
//! minted credentials, for clouds whose tokens expire. Core request/reply on a queue group, so
//! any replica answers; nothing is written.
use crate::Providers;
use futures::StreamExt;
use ksctl_bus::subjects::{KUBECONFIG_QUERY_GROUP, KUBECONFIG_QUERY_SUBJECT};
use ksctl_core::keys;
use ksctl_core::messages::{NameQuery, QueryReply};
use ksctl_core::records::ClusterRecord;
use ksctl_core::spec::Provider;
use ksctl_runtime::{Runtime, RuntimeError};
use std::sync::Arc;

pub async fn start(rt: Runtime, providers: Arc<Providers>) -> Result<tokio::task::JoinHandle<()>, RuntimeError> {
    let client = rt.publisher.client.clone();
    let mut sub = client
        .queue_subscribe(KUBECONFIG_QUERY_SUBJECT, KUBECONFIG_QUERY_GROUP.into())
        .await
        .map_err(|e| RuntimeError::Config(format!("subscribing to {KUBECONFIG_QUERY_SUBJECT}: {e}")))?;
    Ok(tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let (rt, providers) = (rt.clone(), providers.clone());
            tokio::spawn(async move {
                let Some(reply) = msg.reply.clone() else { return };
                let answer = match answer(&rt, &providers, &msg.payload).await {
                    Ok(kc) => QueryReply::ok(kc),
                    Err(e) => QueryReply::err(e.to_string()),
                };
                let body = serde_json::to_vec(&answer).expect("replies serialise");
                if let Err(e) = rt.publisher.client.publish(reply, body.into()).await {
                    tracing::warn!(error = %e, "kubeconfig reply not sent");
                }
            });
        }
    }))
}

/// Why no fresh kubeconfig could be minted; its text is the reply's `error`.
#[derive(Debug, thiserror::Error)]
enum AnswerError {
    #[error("malformed query: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("{0}")]
    BadName(String),
    #[error("no cluster named {0}")]
    NotFound(ksctl_core::ClusterId),
    #[error("provider {0} is not available")]
    Unavailable(Provider),
    #[error("provider {0} keeps its kubeconfig in state; nothing to refresh")]
    NothingToRefresh(Provider),
    #[error(transparent)]
    Store(#[from] ksctl_store::StoreError),
    #[error(transparent)]
    Mint(#[from] ksctl_runtime::PhaseError),
}

async fn answer(rt: &Runtime, providers: &Providers, payload: &[u8]) -> Result<String, AnswerError> {
    let q: NameQuery = serde_json::from_slice(payload)?;
    let id = ksctl_core::ClusterId::new(&q.cluster_name).map_err(AnswerError::BadName)?;
    let rec: Option<ClusterRecord> =
        ksctl_store::get_json(rt.store.as_ref(), &keys::cluster(&id)).await?.map(|(r, _)| r);
    let rec = rec.ok_or(AnswerError::NotFound(id))?;
    let provider = providers.get(&rec.provider).ok_or(AnswerError::Unavailable(rec.provider))?;
    rt.metrics.inc("kubeconfig_refreshes_total", &[("provider", rec.provider.as_str())]);
    provider.fresh_kubeconfig(&rec).await?.ok_or(AnswerError::NothingToRefresh(rec.provider))
}
