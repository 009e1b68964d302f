//! The objects ksctl builds for its agent: RBAC rules, the bus Secret, the Deployment and the
//! Service. Pure: built here, applied by [`super::apply`].
use super::*;

/// The agent's permissions, each rule for one thing it does (documented in the README):
/// read Nodes (inventory, readiness, version drift), read our own namespace's ConfigMaps,
/// Deployments and Pods (the health of ksctl's components) and ClusterAddons (the addons the
/// cluster asks for, put into its heartbeats). Nothing is writable.
pub fn agent_rules() -> (Vec<PolicyRule>, Vec<PolicyRule>) {
    let read = || vec!["get".to_string(), "list".to_string(), "watch".to_string()];
    let cluster = vec![PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["nodes".into()]),
        verbs: read(),
        ..Default::default()
    }];
    let namespaced = vec![
        PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into(), "pods".into()]),
            verbs: read(),
            ..Default::default()
        },
        PolicyRule {
            api_groups: Some(vec!["apps".into()]),
            resources: Some(vec!["deployments".into()]),
            verbs: read(),
            ..Default::default()
        },
        PolicyRule {
            api_groups: Some(vec!["manage.ksctl.io".into()]),
            resources: Some(vec!["clusteraddons".into()]),
            verbs: read(),
            ..Default::default()
        },
    ];
    (cluster, namespaced)
}

/// The agent's bus settings: the NATS URL as the cluster reaches it, the cluster it reports
/// for, and its own credential when the bus requires one.
pub fn agent_secret(cluster_id: &str, agent: &AgentSettings, credential: Option<&Creds>) -> Secret {
    let mut data: BTreeMap<String, ByteString> = [
        ("KSCTL_NATS_URL".to_string(), ByteString(agent.nats_url.clone().into_bytes())),
        ("KSCTL_CLUSTER_ID".to_string(), ByteString(cluster_id.as_bytes().to_vec())),
    ]
    .into();
    if let Some(c) = credential {
        data.insert("KSCTL_NATS_CREDS".into(), ByteString(c.file_text().into_bytes()));
    }
    if let Some(ca) = &agent.nats_ca {
        data.insert("KSCTL_NATS_CA".into(), ByteString(ca.clone().into_bytes()));
    }
    Secret { metadata: meta(AGENT_BUS_SECRET, Some(NAMESPACE)), data: Some(data), ..Default::default() }
}

pub(super) fn agent_selector() -> serde_json::Value {
    serde_json::json!({"app.kubernetes.io/name": AGENT})
}

/// One agent replica: the agent's service account, its settings from the Secret, non-root with
/// a read-only root filesystem, probed on its HTTP port. It tolerates the control planes'
/// `CriticalAddonsOnly` taint so it runs on a cluster without workers too. `nats_user`, the
/// public key of the credential in the Secret, is a pod annotation: a new credential restarts
/// the pod, which reads it at start.
pub fn agent_deployment(image: &str, nats_user: Option<&str>) -> Deployment {
    let mut pod_labels = agent_selector();
    pod_labels["app.kubernetes.io/managed-by"] = "ksctl".into();
    let probe = |path: &str| serde_json::json!({"httpGet": {"path": path, "port": "http"}, "periodSeconds": 10});
    let mut spec = serde_json::json!({
        "replicas": 1,
        "selector": {"matchLabels": agent_selector()},
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": {
                "serviceAccountName": AGENT,
                "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
                "containers": [{
                    "name": "agent",
                    "image": image,
                    "command": ["ksctl-agent"],
                    "envFrom": [{"secretRef": {"name": AGENT_BUS_SECRET}}],
                    "env": [
                        {"name": "KSCTL_HTTP_ADDR", "value": format!("0.0.0.0:{AGENT_HTTP_PORT}")},
                        {"name": "RUST_LOG", "value": "info"}
                    ],
                    // Old API servers need the protocol, a key of the list, spelled out for apply.
                    "ports": [{"name": "http", "containerPort": AGENT_HTTP_PORT, "protocol": "TCP"}],
                    "livenessProbe": probe("/livez"),
                    "readinessProbe": probe("/readyz"),
                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                    "securityContext": {
                        "allowPrivilegeEscalation": false,
                        "readOnlyRootFilesystem": true,
                        "capabilities": {"drop": ["ALL"]}
                    }
                }]
            }
        }
    });
    // No empty annotations map: the server stores none, so applying `{}` would differ from
    // what is stored every time, and a no-op apply in a later second would write the object.
    if let Some(u) = nats_user {
        spec["template"]["metadata"]["annotations"] = serde_json::json!({"ksctl.io/nats-user": u});
    }
    Deployment {
        metadata: meta(AGENT, Some(NAMESPACE)),
        spec: serde_json::from_value(spec).expect("a valid DeploymentSpec"),
        ..Default::default()
    }
}

/// The agent's metrics and health, for Prometheus inside the cluster.
pub fn agent_service() -> Service {
    let spec = serde_json::json!({
        "selector": agent_selector(),
        "ports": [{"name": "http", "port": AGENT_HTTP_PORT, "targetPort": "http", "protocol": "TCP"}]
    });
    Service {
        metadata: meta(AGENT, Some(NAMESPACE)),
        spec: Some(serde_json::from_value(spec).expect("a valid ServiceSpec")),
        ..Default::default()
    }
}
