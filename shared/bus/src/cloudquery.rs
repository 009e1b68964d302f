//! Fresh cloud credentials over the bus: the manager's `switch` and the k8s-controller's EKS
//! client ask a cloud-controller (which alone holds the cloud's credentials) for a kubeconfig
//! whose token was minted just now (EKS tokens last 15 minutes).
use crate::subjects::KUBECONFIG_QUERY_SUBJECT;
use ksctl_core::ClusterId;
use ksctl_core::messages::{NameQuery, QueryReply};
use std::time::Duration;

/// How long a cloud-controller has to answer.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// Why no fresh kubeconfig came back.
#[derive(Debug, thiserror::Error)]
pub enum CloudQueryError {
    #[error("no cloud-controller answered for fresh credentials within {}s", ANSWER_WITHIN.as_secs())]
    NoAnswer,
    #[error("asking a cloud-controller for fresh credentials: {0}")]
    Request(#[source] async_nats::RequestError),
    #[error("unreadable credentials reply: {0}")]
    Unreadable(#[source] serde_json::Error),
    /// The cloud-controller's own answer: why it could not mint.
    #[error("refreshing credentials: {0}")]
    Refused(String),
}

/// A kubeconfig (YAML) for `id` with freshly minted credentials, or why there is none.
pub async fn fresh_kubeconfig(client: &async_nats::Client, id: &ClusterId) -> Result<String, CloudQueryError> {
    let q = serde_json::to_vec(&NameQuery { cluster_name: id.to_string() }).expect("queries serialise");
    let ask = client.request(KUBECONFIG_QUERY_SUBJECT, q.into());
    let msg = tokio::time::timeout(ANSWER_WITHIN, ask)
        .await
        .map_err(|_| CloudQueryError::NoAnswer)?
        .map_err(CloudQueryError::Request)?;
    let reply: QueryReply<String> = serde_json::from_slice(&msg.payload).map_err(CloudQueryError::Unreadable)?;
    match reply {
        QueryReply { ok: true, data: Some(kc), .. } => Ok(kc),
        QueryReply { error, .. } => Err(CloudQueryError::Refused(error.unwrap_or_default())),
    }
}
