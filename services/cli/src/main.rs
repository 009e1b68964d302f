//! `ksctl`: the command line for ksctl-rs. Publishes requests onto the bus, follows their events
//! with progress bars, and asks the manager's queries.

mod auth;
mod kubeconfig;
mod output;
mod wait;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ksctl_bus::subjects::{query_subject, request_subject};
use ksctl_core::messages::{
    API_VERSION, AddonRequest, AppsRequest, ClusterInfo, ClusterSummary, CreateRequest, DeleteRequest, NameQuery,
    OperationStatus, OpsQuery, QueryReply, QueryVerb, REPLY_HEADER, RequestReply, RequestVerb, ScaleRequest,
    SwitchData,
};
use ksctl_core::spec::{ClusterSpec, NodeSizes};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::process::ExitCode;
use std::time::Duration;

/// The heading the global flags are listed under in every command's help.
const CONNECTION: &str = "Connection and output";

#[derive(Parser)]
#[command(
    name = "ksctl",
    version,
    about = "Create, scale and delete Kubernetes clusters through the ksctl-rs control plane"
)]
struct Cli {
    /// NATS server of the control plane.
    #[arg(long, global = true, env = "KSCTL_NATS_URL", default_value = "nats://127.0.0.1:4222", help_heading = CONNECTION)]
    nats_url: String,
    /// Your NATS credentials file (`.creds`, from `ksctl auth user --role cli`).
    #[arg(long, global = true, env = "KSCTL_NATS_CREDS_FILE", help_heading = CONNECTION)]
    nats_creds_file: Option<String>,
    /// NATS user name (servers with plain user/password authentication).
    #[arg(long, global = true, env = "KSCTL_NATS_USER", help_heading = CONNECTION)]
    nats_user: Option<String>,
    /// Password of --nats-user.
    #[arg(long, global = true, env = "KSCTL_NATS_PASSWORD", hide_env_values = true, help_heading = CONNECTION)]
    nats_password: Option<String>,
    /// CA certificate (PEM) to verify the NATS server with; setting it requires TLS.
    #[arg(long, global = true, env = "KSCTL_NATS_CA_FILE", help_heading = CONNECTION)]
    nats_ca_file: Option<String>,
    /// Client certificate (PEM) for NATS servers that verify clients.
    #[arg(long, global = true, env = "KSCTL_NATS_CERT_FILE", help_heading = CONNECTION)]
    nats_cert_file: Option<String>,
    /// Key (PEM) of --nats-cert-file.
    #[arg(long, global = true, env = "KSCTL_NATS_KEY_FILE", help_heading = CONNECTION)]
    nats_key_file: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value = "table", help_heading = CONNECTION)]
    output: Output,
    #[command(subcommand)]
    cmd: Top,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Top {
    /// Cluster lifecycle.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Operations under way.
    #[command(subcommand)]
    Ops(OpsCmd),
    /// What an air-gapped mirror must hold.
    #[command(subcommand)]
    Artifacts(ArtifactsCmd),
    /// The bus's keys and credentials (offline).
    #[command(subcommand)]
    Auth(auth::AuthCmd),
}

#[derive(Subcommand)]
enum ArtifactsCmd {
    /// The packages, files and images a cluster of one distribution and version installs, as
    /// upstream names them and as the configured mirrors serve them.
    List(ArtifactsList),
}

#[derive(Args)]
pub struct ArtifactsList {
    /// kubeadm or k3s.
    #[arg(long)]
    pub distro: String,
    /// The exact Kubernetes version (kubeadm pulls images of its own version), e.g. 1.20.2.
    #[arg(long)]
    pub version: String,
    /// The file mirror the bootstrap-controller is given.
    #[arg(long, env = "KSCTL_ARTIFACTS_URL")]
    pub artifacts_url: Option<String>,
    /// The image registry the controllers are given.
    #[arg(long, env = "KSCTL_IMAGE_REGISTRY")]
    pub image_registry: Option<String>,
    /// The agent image the k8s-controller is given.
    #[arg(long, env = "KSCTL_AGENT_IMAGE", default_value = concat!("ksctl-rs:", env!("CARGO_PKG_VERSION")))]
    pub agent_image: String,
    /// The cluster's CNI (flannel is installed by ksctl on kubeadm clusters; none brings none).
    #[arg(long, default_value = "flannel")]
    pub cni: String,
    /// Addons the clusters will run (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub addons: Vec<String>,
}

#[derive(Subcommand)]
enum OpsCmd {
    /// Every operation under way, the longest-waiting phase first.
    List {
        /// Only operations whose phase is past its deadline (the phase timeout).
        #[arg(long)]
        stuck: bool,
    },
}

#[derive(Args)]
struct WaitArgs {
    /// Return once the manager accepted the request, without following it.
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting after this many seconds (the operation goes on).
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Create a cluster from a spec file (`-f`) or flags.
    Create {
        /// JSON file with a cluster spec (or a whole create request); `-` reads stdin.
        #[arg(short = 'f', long)]
        file: Option<String>,
        #[command(flatten)]
        flags: Box<SpecFlags>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete a cluster and every resource it has.
    Delete {
        /// The cluster.
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Set the number of workers (managed clusters: nodes).
    Scale {
        /// The cluster.
        name: String,
        /// The number of workers (managed clusters: nodes) the cluster should have.
        #[arg(long)]
        workers: u32,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// One cluster's state.
    Get {
        /// The cluster.
        name: String,
    },
    /// Every cluster.
    List,
    /// Resources, addresses and versions of a cluster (never secrets).
    Info {
        /// The cluster.
        name: String,
    },
    /// Fetch the kubeconfig and merge it into your kubeconfig (or print it).
    Switch {
        /// The cluster.
        name: String,
        /// File to merge into (default: first entry of $KUBECONFIG, else ~/.kube/config).
        #[arg(long)]
        kubeconfig: Option<String>,
        /// Print the kubeconfig instead of writing it.
        #[arg(long)]
        print: bool,
    },
    /// Addons: pinned stacks of manifests installed into a cluster.
    #[command(subcommand)]
    Addons(AddonsCmd),
    /// Your own applications: stacks of manifests you name, applied, pruned and deleted as one.
    #[command(subcommand)]
    Apps(AppsCmd),
}

#[derive(Subcommand)]
enum AppsCmd {
    /// Apply a manifest file as the stack NAME (CRDs and namespaces first, then the rest, waited
    /// on until ready; objects an earlier apply of NAME had and this file has not are deleted).
    /// Every object is checked by a server-side dry-run before any is applied.
    Apply {
        /// The cluster.
        cluster: String,
        /// The manifests (YAML, documents separated by `---`; `-` reads standard input).
        #[arg(short = 'f', long = "file")]
        file: String,
        /// The stack's name (a DNS label).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Delete exactly what the stack NAME applied.
    Delete {
        /// The cluster.
        cluster: String,
        /// The stack's name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
}

#[derive(Subcommand)]
enum AddonsCmd {
    /// Install an addon into a cluster (again: re-applies its manifests).
    Enable {
        /// The cluster.
        cluster: String,
        /// The addon (`ksctl cluster addons list`).
        addon: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Remove an addon's objects from a cluster.
    Disable {
        /// The cluster.
        cluster: String,
        /// The addon (`ksctl cluster addons list`).
        addon: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// The addons ksctl can install, with their pinned versions.
    List,
}

#[derive(Args, Default)]
struct SpecFlags {
    /// The cluster's name (lowercase letters, digits and `-`, at most 50); required without -f.
    #[arg(long)]
    name: Option<String>,
    /// Where the cluster runs: sim, aws, azure, local (kind) or byo (your own hosts, -f only).
    #[arg(long, default_value = "sim")]
    provider: String,
    /// The provider's region.
    #[arg(long, default_value = "local")]
    region: String,
    /// managed (the provider runs the control plane) or selfmanaged (ksctl bootstraps it on VMs).
    #[arg(long = "type", default_value = "selfmanaged")]
    cluster_type: String,
    /// k3s or kubeadm (self-managed).
    #[arg(long)]
    distro: Option<String>,
    /// Kubernetes version.
    #[arg(long, default_value = "1.31")]
    version: String,
    /// etcd version of the datastore nodes (self-managed; default: the distribution's).
    #[arg(long)]
    etcd_version: Option<String>,
    /// Control-plane nodes, odd and at least 3 (self-managed) [default: 3].
    #[arg(long)]
    control_planes: Option<u32>,
    /// etcd datastore nodes, odd and at least 3 (self-managed) [default: 3].
    #[arg(long)]
    datastores: Option<u32>,
    /// Worker nodes (self-managed) [default: 2].
    #[arg(long)]
    workers: Option<u32>,
    /// Nodes of a managed cluster's node pool [default: 2].
    #[arg(long)]
    managed_nodes: Option<u32>,
    /// The CNI of a self-managed cluster: flannel (the default), calico, cilium or none.
    #[arg(long)]
    cni: Option<String>,
    /// Instance size for every role that has no size of its own.
    #[arg(long)]
    node_size: Option<String>,
}

/// The node counts a flag left unset gets: a highly available self-managed cluster (3 control
/// planes, 3 etcd nodes, 2 workers) or a managed one with 2 nodes. The other kind's counts are 0.
fn default_counts(cluster_type: &str) -> [u32; 4] {
    if cluster_type == "managed" { [0, 0, 0, 2] } else { [3, 3, 2, 0] }
}

impl SpecFlags {
    fn spec(&self) -> Result<ClusterSpec> {
        let name = self.name.clone().context("--name is required when no -f file is given")?;
        let s = self.node_size.clone();
        let [cp, ds, wp, mp] = default_counts(&self.cluster_type);
        Ok(ClusterSpec {
            cluster_name: name,
            region: self.region.clone(),
            cloud_provider: self.provider.clone(),
            cluster_type: self.cluster_type.clone(),
            kubernetes_distro: self.distro.clone(),
            kubernetes_version: self.version.clone(),
            etcd_version: self.etcd_version.clone(),
            node_sizes: NodeSizes {
                managed: s.clone(),
                control_plane: s.clone(),
                worker: s.clone(),
                datastore: s.clone(),
                load_balancer: s,
            },
            managed_nodes: self.managed_nodes.unwrap_or(mp),
            control_plane_nodes: self.control_planes.unwrap_or(cp),
            worker_nodes: self.workers.unwrap_or(wp),
            datastore_nodes: self.datastores.unwrap_or(ds),
            cni: self.cni.clone(),
            addons: vec![],
            hosts: None,
        })
    }
}

/// A failure with its exit code: 1 for a failed operation or a transport error, 2 for a
/// request the control plane rejected.
#[derive(Debug)]
pub struct Exit(pub u8, pub String);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}
impl std::error::Error for Exit {}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = e.downcast_ref::<Exit>().map(|x| x.0).unwrap_or(1);
            eprintln!("error: {e:#}");
            ExitCode::from(code)
        }
    }
}

pub struct Ctx {
    pub client: async_nats::Client,
    pub output: Output,
}

async fn connect(cli: &Cli) -> Result<async_nats::Client> {
    let auth = ksctl_bus::NatsAuth {
        creds: None,
        creds_file: cli.nats_creds_file.clone(),
        user: cli.nats_user.clone(),
        password: cli.nats_password.clone(),
        ca_file: cli.nats_ca_file.clone(),
        ca_pem: None,
        cert_file: cli.nats_cert_file.clone(),
        key_file: cli.nats_key_file.clone(),
    };
    let opts = auth.options()?.connection_timeout(Duration::from_secs(5));
    opts.connect(&cli.nats_url)
        .await
        .with_context(|| format!("connecting to the control plane's NATS at {}", cli.nats_url))
}

async fn run(cli: Cli) -> Result<()> {
    // The catalog is built in: listing it needs no control plane.
    if let Top::Cluster(ClusterCmd::Addons(AddonsCmd::List)) = &cli.cmd {
        output::addons(cli.output);
        return Ok(());
    }
    if let Top::Artifacts(ArtifactsCmd::List(a)) = &cli.cmd {
        return output::artifacts(cli.output, a).map_err(|e| Exit(2, e).into());
    }
    if let Top::Auth(cmd) = &cli.cmd {
        return auth::run(cmd);
    }
    let client = connect(&cli).await?;
    let ctx = Ctx { client, output: cli.output };
    let cmd = match cli.cmd {
        Top::Cluster(cmd) => cmd,
        Top::Artifacts(_) | Top::Auth(_) => unreachable!("answered above without a control plane"),
        Top::Ops(OpsCmd::List { stuck }) => {
            let rows: Vec<OperationStatus> = query(&ctx.client, QueryVerb::Ops, &OpsQuery { stuck }).await?;
            output::operations(ctx.output, &rows);
            return Ok(());
        }
    };
    match cmd {
        ClusterCmd::Create { file, flags, wait } => {
            let (request_id, spec) = match file {
                Some(f) => read_spec(&f)?,
                None => (new_request_id(), flags.spec()?),
            };
            let name = spec.cluster_name.clone();
            let req = CreateRequest { api_version: API_VERSION.into(), request_id: request_id.clone(), spec };
            submit(&ctx, RequestVerb::Create, &name, &request_id, &req, &wait).await
        }
        ClusterCmd::Delete { name, wait } => {
            let request_id = new_request_id();
            let req = DeleteRequest {
                api_version: API_VERSION.into(),
                request_id: request_id.clone(),
                cluster_name: name.clone(),
            };
            submit(&ctx, RequestVerb::Delete, &name, &request_id, &req, &wait).await
        }
        ClusterCmd::Scale { name, workers, wait } => {
            let request_id = new_request_id();
            let req = ScaleRequest {
                api_version: API_VERSION.into(),
                request_id: request_id.clone(),
                cluster_name: name.clone(),
                workers,
            };
            submit(&ctx, RequestVerb::Scale, &name, &request_id, &req, &wait).await
        }
        ClusterCmd::Addons(cmd) => {
            let (cluster, addon, enable, wait) = match cmd {
                AddonsCmd::Enable { cluster, addon, wait } => (cluster, addon, true, wait),
                AddonsCmd::Disable { cluster, addon, wait } => (cluster, addon, false, wait),
                AddonsCmd::List => {
                    output::addons(ctx.output);
                    return Ok(());
                }
            };
            let request_id = new_request_id();
            let req = AddonRequest {
                api_version: API_VERSION.into(),
                request_id: request_id.clone(),
                cluster_name: cluster.clone(),
                addon,
                enable,
            };
            submit(&ctx, RequestVerb::Addon, &cluster, &request_id, &req, &wait).await
        }
        ClusterCmd::Apps(cmd) => {
            let (cluster, stack, manifests, wait) = match cmd {
                AppsCmd::Apply { cluster, file, name, wait } => {
                    let text = if file == "-" {
                        std::io::read_to_string(std::io::stdin())?
                    } else {
                        std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?
                    };
                    // Said here: a file over the bus' message limit would not even reach the manager.
                    let max = ksctl_core::apps::MAX_MANIFEST_BYTES;
                    if text.len() > max {
                        bail!("{file} is {} bytes; a stack's manifests may be at most {max}", text.len());
                    }
                    (cluster, name, Some(text), wait)
                }
                AppsCmd::Delete { cluster, name, wait } => (cluster, name, None, wait),
            };
            let request_id = new_request_id();
            let req = AppsRequest {
                api_version: API_VERSION.into(),
                request_id: request_id.clone(),
                cluster_name: cluster.clone(),
                stack,
                manifests,
            };
            submit(&ctx, RequestVerb::Apps, &cluster, &request_id, &req, &wait).await
        }
        ClusterCmd::Get { name } => {
            let s: ClusterSummary = query(&ctx.client, QueryVerb::Get, &NameQuery { cluster_name: name }).await?;
            output::summaries(ctx.output, &[s]);
            Ok(())
        }
        ClusterCmd::List => {
            let rows: Vec<ClusterSummary> = query(&ctx.client, QueryVerb::List, &serde_json::json!({})).await?;
            output::summaries(ctx.output, &rows);
            Ok(())
        }
        ClusterCmd::Info { name } => {
            let i: ClusterInfo = query(&ctx.client, QueryVerb::Info, &NameQuery { cluster_name: name }).await?;
            output::info(ctx.output, &i);
            Ok(())
        }
        ClusterCmd::Switch { name, kubeconfig: path, print } => {
            let s: SwitchData = query(&ctx.client, QueryVerb::Switch, &NameQuery { cluster_name: name }).await?;
            if print {
                print!("{}", s.kubeconfig);
                return Ok(());
            }
            let path = path.unwrap_or_else(kubeconfig::default_path);
            kubeconfig::merge_into(&path, &s.kubeconfig, &s.context)?;
            match ctx.output {
                Output::Json => println!("{}", serde_json::json!({"context": s.context, "kubeconfig": path})),
                Output::Table => println!("switched to context {} in {path}", s.context),
            }
            Ok(())
        }
    }
}

fn new_request_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A file holds either a spec or a whole create request (whose request id is then reused, so
/// submitting the same file twice is one operation).
fn read_spec(path: &str) -> Result<(String, ClusterSpec)> {
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Exit(2, format!("{path} is not valid JSON: {e}")))?;
    if v.get("spec").is_some() {
        let r: CreateRequest = ksctl_core::json::from_value(v).map_err(|e| Exit(2, format!("{path}: {e}")))?;
        Ok((r.request_id, r.spec))
    } else {
        let s: ClusterSpec = ksctl_core::json::from_value(v).map_err(|e| Exit(2, format!("{path}: {e}")))?;
        Ok((new_request_id(), s))
    }
}

/// Publishes a request durably (deduplicated by its request id), waits for the manager's
/// answer, then follows the operation unless `--no-wait`.
async fn submit<T: Serialize>(
    ctx: &Ctx,
    verb: RequestVerb,
    name: &str,
    request_id: &str,
    req: &T,
    wait: &WaitArgs,
) -> Result<()> {
    let inbox = ctx.client.new_inbox();
    let mut replies = ctx.client.subscribe(inbox.clone()).await?;
    // Subscribe to the cluster's events before publishing, so no event can be missed.
    let events = match ksctl_core::ClusterId::new(name) {
        Ok(id) => Some(ctx.client.subscribe(ksctl_bus::subjects::cluster_events(&id)).await?),
        Err(_) => None,
    };
    let js = async_nats::jetstream::new(ctx.client.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, request_id);
    headers.insert(REPLY_HEADER, inbox.as_str());
    js.publish_with_headers(request_subject(verb), headers, serde_json::to_vec(req)?.into())
        .await
        .context("publishing the request")?
        .await
        .context("the bus did not store the request (is JetStream set up? start a ksctl-manager once)")?;
    use futures::StreamExt;
    let reply = tokio::time::timeout(Duration::from_secs(30), replies.next())
        .await
        .map_err(|_| {
            Exit(
                1,
                format!(
                    "request {request_id} is queued, but no manager answered within 30s; is ksctl-manager running?"
                ),
            )
        })?
        .context("reply subscription closed")?;
    let reply: RequestReply = serde_json::from_slice(&reply.payload).context("unreadable reply from the manager")?;
    if !reply.accepted {
        if ctx.output == Output::Json {
            println!("{}", serde_json::to_string_pretty(&reply)?);
        }
        let mut msg = reply.message.clone();
        if !reply.errors.is_empty() {
            msg = "invalid request:".to_string();
            for e in &reply.errors {
                msg.push_str(&format!("\n  {}: {}", e.field, e.message));
            }
        }
        return Err(Exit(2, msg).into());
    }
    let Some(op) = reply.operation_id.clone() else {
        output::accepted(ctx.output, &reply);
        return Ok(());
    };
    if wait.no_wait || events.is_none() {
        output::accepted(ctx.output, &reply);
        return Ok(());
    }
    if ctx.output == Output::Table {
        eprintln!("{} (operation {op})", reply.message);
    }
    wait::follow(ctx, name, &op, events.expect("checked"), Duration::from_secs(wait.timeout)).await
}

/// Asks the manager a query; its error becomes ours.
pub async fn query<Q: Serialize, T: DeserializeOwned>(
    client: &async_nats::Client,
    verb: QueryVerb,
    q: &Q,
) -> Result<T> {
    let resp = tokio::time::timeout(
        Duration::from_secs(15),
        client.request(query_subject(verb), serde_json::to_vec(q)?.into()),
    )
    .await
    .map_err(|_| Exit(1, "no manager answered within 15s; is ksctl-manager running?".into()))?
    .map_err(|e| Exit(1, format!("no manager answered the {verb} query ({e}); is ksctl-manager running?")))?;
    let r: QueryReply<T> = serde_json::from_slice(&resp.payload).context("unreadable query reply")?;
    match (r.ok, r.data) {
        (true, Some(d)) => Ok(d),
        _ => bail!(Exit(1, r.error.unwrap_or_else(|| "the manager gave no reason".into()))),
    }
}
