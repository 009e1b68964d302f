//! The `local` provider: managed clusters on the local Docker engine with kind, driven through
//! the `kind` and `docker` CLIs (as ksctl does), on the host the cloud-controller runs on.
//!
//! The cluster is found by its name (`ksctl-<cluster>`), so a create that died half-way is
//! adopted when its API server answers and made again when it does not; delete is kind's own
//! (absent is done). kind cannot change a cluster's node count: the manager refuses scaling
//! `local` clusters before anything starts.
use crate::CloudProvider;
use ksctl_core::ClusterId;
use ksctl_core::messages::context_name;
use ksctl_core::records::InfraRecord;
use ksctl_core::spec::LOCAL_NO_SCALE;
use ksctl_runtime::{PhaseCtx, PhaseError};
use ksctl_runtime::{checkpoint, phase_record};
use ksctl_store::DynStore;
use std::path::PathBuf;
use std::time::Duration;

/// The node image per Kubernetes minor version: the images kind v0.24.0 was released with.
/// A full version (`1.30.2`) names its tag directly.
const NODE_IMAGES: [(&str, &str); 7] = [
    ("1.31", "v1.31.0"),
    ("1.30", "v1.30.4"),
    ("1.29", "v1.29.8"),
    ("1.28", "v1.28.13"),
    ("1.27", "v1.27.17"),
    ("1.26", "v1.26.15"),
    ("1.25", "v1.25.16"),
];

/// How long kind may wait for the control plane to be ready.
const READY_WAIT: &str = "300s";

pub struct KindCloud {
    store: DynStore,
    kind: PathBuf,
    docker: PathBuf,
}

/// The kind cluster of a ksctl cluster.
pub fn kind_name(id: &ClusterId) -> String {
    format!("ksctl-{id}")
}

/// `kindest/node:<tag>` for a spec's Kubernetes version (`1.31`, `v1.31`, `1.31.2`).
pub fn node_image(version: &str) -> Result<String, String> {
    let v = version.strip_prefix('v').unwrap_or(version);
    let core = v.split(['+', '-']).next().unwrap_or(v);
    let tag = match core.split('.').count() {
        3 => format!("v{core}"),
        _ => NODE_IMAGES.iter().find(|(minor, _)| *minor == core).map(|(_, t)| t.to_string()).ok_or_else(|| {
            let known: Vec<_> = NODE_IMAGES.iter().map(|(m, _)| *m).collect();
            format!(
                "kind has no node image for Kubernetes {version}: use one of {} or a full version like 1.31.0",
                known.join(", ")
            )
        })?,
    };
    Ok(format!("kindest/node:{tag}"))
}

/// kind's `Cluster` configuration (`kind.x-k8s.io/v1alpha4`), as far as ksctl sets it.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct KindConfig {
    kind: &'static str,
    api_version: &'static str,
    nodes: Vec<KindNode>,
}

#[derive(serde::Serialize)]
struct KindNode {
    role: &'static str,
}

/// The kind cluster configuration: one control plane, and workers for the other nodes.
pub fn kind_config(nodes: u32) -> String {
    let mut all = vec![KindNode { role: "control-plane" }];
    all.extend((1..nodes.max(1)).map(|_| KindNode { role: "worker" }));
    let config = KindConfig { kind: "Cluster", api_version: "kind.x-k8s.io/v1alpha4", nodes: all };
    serde_yaml::to_string(&config).expect("plain data serialises")
}

/// `kind create cluster` for `name`.
pub fn create_args(name: &str, config: &str, image: &str, kubeconfig: &str) -> Vec<String> {
    ["create", "cluster", "--name", name, "--config", config, "--image", image, "--kubeconfig", kubeconfig]
        .into_iter()
        .chain(["--wait", READY_WAIT])
        .map(str::to_string)
        .collect()
}

/// What the user must do when a tool is missing or the engine does not answer.
fn missing(tool: &str) -> PhaseError {
    PhaseError::permanent(match tool {
        "kind" => "provider local needs kind on the cloud-controller's host: install it \
                   (https://kind.sigs.k8s.io/docs/user/quick-start/#installation) or set KSCTL_KIND_BIN"
            .into(),
        _ => "provider local needs Docker on the cloud-controller's host: install Docker Engine \
              (https://docs.docker.com/engine/install/) or set KSCTL_DOCKER_BIN"
            .into(),
    })
}

impl KindCloud {
    pub fn new(store: DynStore, kind: PathBuf, docker: PathBuf) -> Self {
        Self { store, kind, docker }
    }

    /// Runs `tool args`; stdout on success. A missing binary is a permanent error saying what
    /// to install; a failing command is retryable.
    async fn run(&self, tool: &str, args: &[String], timeout: Duration) -> Result<String, PhaseError> {
        let bin = if tool == "kind" { &self.kind } else { &self.docker };
        let child = tokio::process::Command::new(bin).args(args).kill_on_drop(true).output();
        let out = match tokio::time::timeout(timeout, child).await {
            Err(_) => return Err(PhaseError::retryable(format!("{tool} {} timed out", args.join(" ")))),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing(tool)),
            Ok(Err(e)) => return Err(PhaseError::permanent(format!("running {}: {e}", bin.display()))),
            Ok(Ok(out)) => out,
        };
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let err = err.trim().lines().last().unwrap_or("").to_string();
            return Err(PhaseError::retryable(format!("{tool} {} failed ({}): {err}", args.join(" "), out.status)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Both tools present and the engine answering, or an error saying what is missing.
    async fn preflight(&self) -> Result<(), PhaseError> {
        self.run("kind", &["version".into()], Duration::from_secs(20)).await?;
        let info = ["info".to_string(), "--format".into(), "{{.ServerVersion}}".into()];
        match self.run("docker", &info, Duration::from_secs(20)).await {
            Err(e) if e.is_retryable() => Err(PhaseError::permanent(format!(
                "provider local: the Docker engine does not answer ({e}); start it, or give the cloud-controller access to its socket"
            ))),
            other => other.map(|_| ()),
        }
    }

    async fn exists(&self, name: &str) -> Result<bool, PhaseError> {
        let out = self.run("kind", &["get".into(), "clusters".into()], Duration::from_secs(30)).await?;
        Ok(out.lines().any(|l| l.trim() == name))
    }

    async fn kubeconfig(&self, name: &str) -> Result<String, PhaseError> {
        let args = ["get", "kubeconfig", "--name", name].map(str::to_string);
        self.run("kind", &args, Duration::from_secs(30)).await
    }

    async fn delete_cluster(&self, name: &str) -> Result<(), PhaseError> {
        let args = ["delete", "cluster", "--name", name].map(str::to_string);
        self.run("kind", &args, Duration::from_secs(300)).await.map(|_| ())
    }

    /// `kind create cluster` with the config and a throw-away kubeconfig file (kind would
    /// otherwise merge into the controller's own `~/.kube/config`).
    async fn create_cluster(&self, name: &str, nodes: u32, image: &str) -> Result<(), PhaseError> {
        let dir = std::env::temp_dir().join(format!("ksctl-kind-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| PhaseError::retryable(format!("{}: {e}", dir.display())))?;
        let (config, kubeconfig) = (dir.join("kind.yaml"), dir.join("kubeconfig"));
        std::fs::write(&config, kind_config(nodes))
            .map_err(|e| PhaseError::retryable(format!("{}: {e}", config.display())))?;
        let args = create_args(name, &config.to_string_lossy(), image, &kubeconfig.to_string_lossy());
        let r = self.run("kind", &args, Duration::from_secs(900)).await;
        let _ = std::fs::remove_dir_all(&dir);
        r.map(|_| ())
    }
}

#[async_trait::async_trait]
impl CloudProvider for KindCloud {
    async fn create(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let id = &ctx.cluster.id;
        let name = kind_name(id);
        let state = phase_record::<InfraRecord>(&self.store, ctx).await?;
        if state.managed_cluster.is_some() && state.kubeconfig.is_some() {
            ctx.progress(format!("kind cluster {name}"), 1, 1).await;
            return Ok(());
        }
        let image = node_image(&ctx.cluster.spec.kubernetes_version).map_err(PhaseError::permanent)?;
        let nodes = ctx.cluster.spec.managed_nodes.max(1);
        self.preflight().await?;
        // A cluster kind made before a crash is adopted if its API server answers, else made again.
        let mut kubeconfig = None;
        if self.exists(&name).await? {
            match self.kubeconfig(&name).await {
                Ok(kc) => kubeconfig = Some(kc),
                Err(e) => {
                    tracing::warn!(cluster = %name, error = %e, "half-made kind cluster; deleting it to create it again");
                    self.delete_cluster(&name).await?;
                }
            }
        }
        if kubeconfig.is_none() {
            ctx.progress(format!("creating kind cluster {name} ({nodes} nodes, {image})"), 0, 1).await;
            self.create_cluster(&name, nodes, &image).await?;
            kubeconfig = Some(self.kubeconfig(&name).await?);
        }
        // kind names everything `kind-<name>`; ksctl's kubeconfig is its own, from kind's data.
        let kc = ksctl_core::kubeconfig::adopt(&kubeconfig.expect("set above"), &context_name(ctx.cluster), None)
            .map_err(|e| PhaseError::permanent(format!("kind's kubeconfig for {name}: {e}")))?;
        let sealed = ctx.rt.sealer.seal(&format!("kubeconfig/{id}"), kc.as_bytes());
        checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
            i.managed_cluster = Some(name.clone());
            i.node_pool_size = nodes;
            i.kubeconfig = Some(sealed.clone());
        })
        .await?;
        ctx.progress(format!("kind cluster {name} ({nodes} nodes, {image})"), 1, 1).await;
        Ok(())
    }

    async fn delete(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let name = kind_name(&ctx.cluster.id);
        // kind deletes by name and an absent cluster is done; without kind, only a cluster
        // that never got as far as kind has nothing to delete.
        match self.delete_cluster(&name).await {
            Ok(()) => {}
            Err(e) if phase_record::<InfraRecord>(&self.store, ctx).await?.managed_cluster.is_some() => return Err(e),
            Err(_) if self.exists(&name).await.unwrap_or(false) => {
                return Err(PhaseError::retryable(format!("kind cluster {name} still exists")));
            }
            Err(_) => {}
        }
        self.store.delete(&ksctl_core::keys::cloud(&ctx.cluster.id)).await?;
        ctx.progress(format!("deleted kind cluster {name}"), 1, 1).await;
        Ok(())
    }

    async fn scale_up(&self, _ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        Err(PhaseError::permanent(LOCAL_NO_SCALE.into()))
    }

    async fn scale_down(&self, _ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        Err(PhaseError::permanent(LOCAL_NO_SCALE.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_images_follow_kind_releases() {
        assert_eq!(node_image("1.31").unwrap(), "kindest/node:v1.31.0");
        assert_eq!(node_image("v1.30").unwrap(), "kindest/node:v1.30.4");
        assert_eq!(node_image("1.29.2").unwrap(), "kindest/node:v1.29.2");
        let e = node_image("1.19").unwrap_err();
        assert!(e.contains("1.31, 1.30") && e.contains("full version"), "{e}");
    }

    #[test]
    fn config_has_one_control_plane_and_workers_for_the_rest() {
        let c = kind_config(3);
        assert_eq!(c.matches("role: control-plane").count(), 1);
        assert_eq!(c.matches("role: worker").count(), 2);
        assert!(c.starts_with("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\n"));
        let v: serde_json::Value = serde_yaml::from_str(&c).expect("kind reads it as YAML");
        assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
        assert_eq!(kind_config(1).matches("role:").count(), 1);
        assert_eq!(kind_config(0).matches("role:").count(), 1, "a cluster has at least its control plane");
    }

    #[test]
    fn create_command_names_everything_it_uses() {
        let a = create_args("ksctl-demo", "/tmp/k.yaml", "kindest/node:v1.31.0", "/tmp/kc");
        assert_eq!(
            a.join(" "),
            "create cluster --name ksctl-demo --config /tmp/k.yaml --image kindest/node:v1.31.0 --kubeconfig /tmp/kc --wait 300s"
        );
    }
}
