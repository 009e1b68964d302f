//! Draining a node before scale-down removes it: cordon, evict its pods (DaemonSet pods stay),
//! wait for them to go, delete the Node.
use super::*;

/// Evicts a pod (policy/v1; servers before 1.22 only know policy/v1beta1 at the same path).
pub(super) async fn evict(client: &kube::Client, ns: &str, name: &str) -> Result<(), PhaseError> {
    let path = format!("/api/v1/namespaces/{ns}/pods/{name}/eviction");
    let mut last = None;
    for version in ["policy/v1", "policy/v1beta1"] {
        let body =
            serde_json::json!({"apiVersion": version, "kind": "Eviction", "metadata": {"name": name, "namespace": ns}});
        let req = http::Request::post(&path)
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&body).expect("json"))
            .expect("request");
        match client.request::<serde_json::Value>(req).await {
            Ok(_) => return Ok(()),
            // The pod itself is gone.
            Err(kube::Error::Api(s)) if s.code == 404 && s.message.contains(&format!("\"{name}\"")) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 429 => {
                return Err(PhaseError::retryable(format!(
                    "evicting {ns}/{name}: a disruption budget forbids it for now"
                )));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(api_err(&format!("evicting {ns}/{name}"), last.expect("tried")))
}

pub(super) fn pod_name(p: &Pod) -> String {
    format!("{}/{}", p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default())
}

/// Cordons `node`, evicts its pods (DaemonSet pods stay, as with `kubectl drain`), waits up to
/// `timeout` for them to go, and deletes the Node. On a node whose kubelet is not Ready nobody
/// will confirm a graceful deletion: there a pod marked for deletion counts as gone.
pub async fn drain_node(client: &kube::Client, node: &str, timeout: Duration) -> Result<(), PhaseError> {
    let nodes: Api<Node> = Api::all(client.clone());
    let Some(n) = nodes.get_opt(node).await.map_err(|e| api_err(&format!("reading node {node}"), e))? else {
        return Ok(());
    };
    let ready =
        n.status.and_then(|s| s.conditions).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let cordon = serde_json::json!({"spec": {"unschedulable": true}});
    nodes
        .patch(node, &PatchParams::default(), &Patch::Merge(&cordon))
        .await
        .map_err(|e| api_err(&format!("cordoning {node}"), e))?;
    let pods: Api<Pod> = Api::all(client.clone());
    let on_node = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let evictable =
        |p: &Pod| !p.metadata.owner_references.as_ref().is_some_and(|o| o.iter().any(|r| r.kind == "DaemonSet"));
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pauses = ksctl_core::backoff::poll(Duration::from_secs(1)).build();
    loop {
        let list = pods.list(&on_node).await.map_err(|e| api_err(&format!("listing pods on {node}"), e))?;
        let left: Vec<&Pod> = list
            .items
            .iter()
            .filter(|p| evictable(p))
            .filter(|p| ready || p.metadata.deletion_timestamp.is_none())
            .collect();
        if left.is_empty() {
            break;
        }
        for p in left.iter().filter(|p| p.metadata.deletion_timestamp.is_none()) {
            evict(
                client,
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default(),
            )
            .await?;
        }
        if tokio::time::Instant::now() >= deadline {
            let names: Vec<String> = left.iter().map(|p| pod_name(p)).collect();
            return Err(PhaseError::retryable(format!(
                "draining {node}: pods still there after {} s: {}",
                timeout.as_secs(),
                names.join(", ")
            )));
        }
        tokio::time::sleep(pauses.next().unwrap_or_default()).await;
    }
    match nodes.delete(node, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(api_err(&format!("deleting node {node}"), e)),
    }
}
