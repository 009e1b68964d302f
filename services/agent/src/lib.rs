//! ksctl-agent: runs in the cluster (or anywhere with a kubeconfig), reads the Nodes, the API
//! server's version and the `ClusterAddon` object, and publishes a heartbeat to
//! `ksctl.health.<cluster>` for the manager. It only reads (its RBAC, installed by the
//! k8s-controller): the manager acts on what the object asks for.
use clap::Parser;
use k8s_openapi::api::core::v1::Node;
use ksctl_core::addons::{CLUSTER_ADDON_OBJECT, DesiredAddons, KSCTL_NAMESPACE};
use ksctl_core::messages::{Heartbeat, NodeHealth, health_subject};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use std::time::Duration;

#[derive(Debug, Clone, Parser)]
#[command(name = "ksctl-agent", about = "ksctl-rs agent: cluster heartbeats to the control plane")]
pub struct Config {
    #[arg(long, env = "KSCTL_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// This cluster's own NATS credential (`.creds` text), minted by the k8s-controller: it may
    /// publish this cluster's heartbeat subject and nothing else.
    #[arg(long, env = "KSCTL_NATS_CREDS", hide_env_values = true)]
    pub nats_creds: Option<String>,
    #[arg(long, env = "KSCTL_NATS_USER")]
    pub nats_user: Option<String>,
    #[arg(long, env = "KSCTL_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// CA certificate (PEM) to verify the NATS server with; setting it requires TLS.
    #[arg(long, env = "KSCTL_NATS_CA_FILE")]
    pub nats_ca_file: Option<String>,
    /// The same CA as PEM text (the k8s-controller puts it in the agent's Secret).
    #[arg(long, env = "KSCTL_NATS_CA")]
    pub nats_ca: Option<String>,
    /// The cluster this agent reports for.
    #[arg(long, env = "KSCTL_CLUSTER_ID")]
    pub cluster_id: String,
    /// A kubeconfig file; without it, the in-cluster service account (or `KUBECONFIG`).
    #[arg(long, env = "KSCTL_AGENT_KUBECONFIG")]
    pub kubeconfig: Option<String>,
    #[arg(long, env = "KSCTL_AGENT_INTERVAL_SECS", default_value_t = 30)]
    pub interval_secs: u64,
    /// Address of /livez, /readyz (ready once a heartbeat went out) and /metrics; `off`
    /// disables it. The in-cluster Deployment probes it.
    #[arg(long, env = "KSCTL_HTTP_ADDR", default_value = "off")]
    pub http_addr: String,
}

/// What the cluster's `ClusterAddon` object asks for; `None` without the object (or without
/// the right to read it, as an agent installed before it had that right).
pub async fn desired_addons(client: &kube::Client) -> Option<DesiredAddons> {
    let gvk = GroupVersionKind::gvk("manage.ksctl.io", "v1", "ClusterAddon");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "clusteraddons");
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), KSCTL_NAMESPACE, &ar);
    let obj = match api.get_opt(CLUSTER_ADDON_OBJECT).await {
        Ok(o) => o?,
        Err(e) => {
            tracing::warn!(error = %e, "reading the ClusterAddon object failed");
            return None;
        }
    };
    let generation = obj.metadata.generation?;
    let uid = obj.metadata.uid.clone().unwrap_or_default();
    // The API server checked the object against the CRD's schema; anything else is not ours.
    match serde_json::from_value(obj.data["spec"]["addons"].clone()) {
        Ok(addons) => Some(DesiredAddons { uid, generation, addons }),
        Err(e) => {
            tracing::warn!(error = %e, "the ClusterAddon object's spec is not a list of addons");
            None
        }
    }
}

/// One heartbeat, read from the API.
pub async fn heartbeat(client: &kube::Client, cluster_id: &str) -> Result<Heartbeat, kube::Error> {
    let version = client.apiserver_version().await?.git_version;
    let nodes = Api::<Node>::all(client.clone()).list(&ListParams::default()).await?;
    let mut nodes: Vec<NodeHealth> = nodes
        .items
        .into_iter()
        .map(|n| {
            let labels = n.metadata.labels.unwrap_or_default();
            let status = n.status.unwrap_or_default();
            NodeHealth {
                name: n.metadata.name.unwrap_or_default(),
                ready: status.conditions.unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True"),
                control_plane: labels.contains_key("node-role.kubernetes.io/control-plane")
                    || labels.contains_key("node-role.kubernetes.io/master"),
                kubelet_version: status.node_info.map(|i| i.kubelet_version).unwrap_or_default(),
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let sent_at_ms = ksctl_core::now_ms();
    // In a pod the host name is the pod's name: who reported is visible to the control plane.
    let reporter = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    Ok(Heartbeat {
        cluster_id: cluster_id.to_string(),
        sent_at_ms,
        server_version: version,
        nodes,
        reporter,
        received_at_ms: 0,
        addons: desired_addons(client).await,
    })
}

async fn client(config: &Config) -> anyhow::Result<kube::Client> {
    let kc = match &config.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?
        }
        None => kube::Config::infer().await?,
    };
    Ok(kube::Client::try_from(kc)?)
}

pub async fn run(config: Config, mut shutdown: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let kube = client(&config).await?;
    let metrics = std::sync::Arc::new(ksctl_runtime::metrics::Metrics::default());
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if config.http_addr != "off" {
        ksctl_runtime::http::serve(&config.http_addr, metrics.clone(), ready.clone()).await?;
    }
    let auth = ksctl_bus::NatsAuth {
        creds: config.nats_creds.clone(),
        user: config.nats_user.clone(),
        password: config.nats_password.clone(),
        ca_file: config.nats_ca_file.clone(),
        ca_pem: config.nats_ca.clone(),
        ..Default::default()
    };
    let opts = auth.options()?.name("ksctl-agent");
    let nats = opts.connect(&config.nats_url).await?;
    let subject = health_subject(&config.cluster_id);
    tracing::info!(cluster_id = %config.cluster_id, %subject, "agent started");
    let mut tick = tokio::time::interval(Duration::from_secs(config.interval_secs.max(1)));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => break,
        }
        match heartbeat(&kube, &config.cluster_id).await {
            Ok(hb) => {
                let nodes = hb.nodes.len();
                if let Err(e) = nats.publish(subject.clone(), serde_json::to_vec(&hb)?.into()).await {
                    metrics.inc("agent_heartbeats_total", &[("outcome", "not_published")]);
                    tracing::warn!(error = %e, "heartbeat not published");
                } else {
                    metrics.inc("agent_heartbeats_total", &[("outcome", "published")]);
                    ready.store(true, std::sync::atomic::Ordering::SeqCst);
                    tracing::debug!(nodes, version = %hb.server_version, "heartbeat");
                }
            }
            // The next tick tries again; the manager shows how old the last heartbeat is.
            Err(e) => {
                metrics.inc("agent_heartbeats_total", &[("outcome", "api_error")]);
                tracing::warn!(error = %e, "reading the cluster failed");
            }
        }
    }
    nats.flush().await?;
    Ok(())
}
