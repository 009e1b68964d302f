//! Flags shared by every service; each has a `KSCTL_*` environment variable.
use crate::metrics::Metrics;
use clap::{Args, ValueEnum};
use ksctl_bus::{BusSettings, Publisher, WorkerOptions};
use ksctl_core::seal::Sealer;
use ksctl_store::{DynStore, KvStore, LeaseOptions, RedisStore};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum StoreKind {
    Redis,
    Nats,
}

#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// NATS server URL (JetStream enabled).
    #[arg(long, env = "KSCTL_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// NATS credentials file (`.creds`: user JWT and seed; `ksctl auth init` writes the
    /// services' one). Preferred over user/password.
    #[arg(long, env = "KSCTL_NATS_CREDS_FILE")]
    pub nats_creds_file: Option<String>,
    /// NATS user (with --nats-password), for servers with plain user/password authentication.
    #[arg(long, env = "KSCTL_NATS_USER")]
    pub nats_user: Option<String>,
    #[arg(long, env = "KSCTL_NATS_PASSWORD", hide_env_values = true)]
    pub nats_password: Option<String>,
    /// CA certificate (PEM) to verify the NATS server with; setting it requires TLS.
    #[arg(long, env = "KSCTL_NATS_CA_FILE")]
    pub nats_ca_file: Option<String>,
    /// Client certificate and key (PEM) for NATS servers that verify clients.
    #[arg(long, env = "KSCTL_NATS_CERT_FILE")]
    pub nats_cert_file: Option<String>,
    #[arg(long, env = "KSCTL_NATS_KEY_FILE")]
    pub nats_key_file: Option<String>,
    /// State store backend.
    #[arg(long, env = "KSCTL_STORE", value_enum, default_value = "redis")]
    pub store: StoreKind,
    /// Redis URL for `--store redis` (`redis://:password@host:port/db` for AUTH).
    #[arg(long, env = "KSCTL_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Prefix of every key: Redis key namespace, or NATS KV bucket name.
    #[arg(long, env = "KSCTL_STORE_NAMESPACE", default_value = "ksctl")]
    pub store_namespace: String,
    /// Key that seals secrets in the store: 32 bytes, base64 (several, comma-separated: the first
    /// seals, all open). Prefer --seal-key-file.
    #[arg(long, env = "KSCTL_SEAL_KEY", hide_env_values = true)]
    pub seal_key: Option<String>,
    /// File holding the seal key (base64); during a rotation, one key per line, the new first.
    #[arg(long, env = "KSCTL_SEAL_KEY_FILE")]
    pub seal_key_file: Option<String>,
    /// Copies of every stream and KV bucket across the NATS cluster (at most its node count;
    /// 3 on a 3-node cluster). Applies when a stream or bucket is created.
    #[arg(long, env = "KSCTL_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// The most the events stream holds, in bytes; the oldest events go first.
    #[arg(long, env = "KSCTL_EVENTS_MAX_BYTES", default_value_t = 1 << 30)]
    pub events_max_bytes: i64,
    /// The largest event the events stream accepts, in bytes.
    #[arg(long, env = "KSCTL_EVENTS_MAX_MSG_SIZE", default_value_t = 64 << 10)]
    pub events_max_msg_size: i32,
    /// Messages this replica handles at once.
    #[arg(long, env = "KSCTL_MAX_JOBS", default_value_t = 16)]
    pub max_jobs: usize,
    /// Address of /livez, /readyz and /metrics; `off` disables it.
    #[arg(long, env = "KSCTL_HTTP_ADDR", default_value = "off")]
    pub http_addr: String,
    /// Seconds a delivered message may go without ack or progress before redelivery.
    #[arg(long, env = "KSCTL_ACK_WAIT_SECS", default_value_t = 30)]
    pub ack_wait_secs: u64,
    /// Deliveries before a message is given up and its operation marked failed.
    #[arg(long, env = "KSCTL_MAX_DELIVER", default_value_t = 20)]
    pub max_deliver: i64,
    /// Seconds a cluster lease lives without renewal (a crashed holder blocks no longer).
    #[arg(long, env = "KSCTL_LEASE_TTL_SECS", default_value_t = 15)]
    pub lease_ttl_secs: u64,
    /// First retry delay in milliseconds (doubles per delivery, capped at 30 s).
    #[arg(long, env = "KSCTL_RETRY_BASE_MS", default_value_t = 500)]
    pub retry_base_ms: u64,
    /// This replica's name in leases and logs (default: host name and process id).
    #[arg(long, env = "KSCTL_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Seconds in-flight work may take to finish after SIGTERM before it is abandoned (and its
    /// messages redelivered to another replica).
    #[arg(long, env = "KSCTL_SHUTDOWN_DEADLINE_SECS", default_value_t = 20)]
    pub shutdown_deadline_secs: u64,
    /// Log as JSON lines.
    #[arg(long, env = "KSCTL_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
}

/// Where clusters get their software (controllers that install software flatten these).
#[derive(Debug, Clone, Args)]
pub struct ArtifactArgs {
    /// A mirror of k3s' installer and releases and of the Kubernetes apt repositories
    /// (`<url>/k3s/…`, `<url>/kubernetes/v1.xx/deb/`), reachable from the hosts.
    #[arg(long, env = "KSCTL_ARTIFACTS_URL")]
    pub artifacts_url: Option<String>,
    /// A container image registry, `host[:port][/path]`, that holds every image clusters pull
    /// (kubeadm's, ksctl's agent, the CNI, the addons) under the images' upstream paths.
    #[arg(long, env = "KSCTL_IMAGE_REGISTRY")]
    pub image_registry: Option<String>,
    /// CA certificate (PEM) of that registry, installed for containerd on every host.
    #[arg(long, env = "KSCTL_IMAGE_REGISTRY_CA_FILE")]
    pub image_registry_ca_file: Option<String>,
    /// The registry speaks plain HTTP (a lab, or a registry on a trusted network).
    #[arg(long, env = "KSCTL_IMAGE_REGISTRY_PLAIN_HTTP", default_value_t = false)]
    pub image_registry_plain_http: bool,
}

impl ArtifactArgs {
    /// Parses and checks the settings; the CA file is read here, once.
    pub fn artifacts(&self) -> Result<ksctl_core::artifacts::Artifacts, String> {
        use ksctl_core::artifacts::{Artifacts, ImageRegistry, RegistryTls, parse_mirror_url};
        let mirror = match self.artifacts_url.as_deref().filter(|u| !u.trim().is_empty()) {
            Some(u) => Some(parse_mirror_url(u)?),
            None => None,
        };
        let tls = match (&self.image_registry_ca_file, self.image_registry_plain_http) {
            (Some(_), true) => {
                return Err(
                    "KSCTL_IMAGE_REGISTRY_CA_FILE and KSCTL_IMAGE_REGISTRY_PLAIN_HTTP exclude each other".into()
                );
            }
            (Some(f), false) => {
                let pem = std::fs::read_to_string(f).map_err(|e| format!("image registry CA file {f}: {e}"))?;
                RegistryTls::Ca(
                    ksctl_core::artifacts::certificates_pem(&pem)
                        .map_err(|e| format!("image registry CA file {f}: {e}"))?,
                )
            }
            (None, true) => RegistryTls::PlainHttp,
            (None, false) => RegistryTls::System,
        };
        let registry = match self.image_registry.as_deref().filter(|r| !r.trim().is_empty()) {
            Some(r) => Some(ImageRegistry::parse(r, tls)?),
            None => None,
        };
        Ok(Artifacts { mirror, registry })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Bus(#[from] ksctl_bus::BusError),
    #[error(transparent)]
    Store(#[from] ksctl_store::StoreError),
}

/// Connections and settings a service runs with.
#[derive(Clone)]
pub struct Runtime {
    pub service: &'static str,
    pub publisher: Publisher,
    pub store: DynStore,
    pub sealer: Sealer,
    pub replica: String,
    pub bus: BusSettings,
    pub lease: LeaseOptions,
    pub worker: WorkerOptions,
    pub metrics: Arc<Metrics>,
    pub http_addr: Option<String>,
}

impl CommonArgs {
    pub fn sealer(&self) -> Result<Sealer, RuntimeError> {
        let key = match (&self.seal_key, &self.seal_key_file) {
            (Some(k), _) => k.clone(),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map_err(|e| RuntimeError::Config(format!("reading seal key file {f}: {e}")))?,
            (None, None) => {
                return Err(RuntimeError::Config(
                    "no seal key: set KSCTL_SEAL_KEY_FILE (or KSCTL_SEAL_KEY) to 32 random bytes in base64, e.g. `head -c32 /dev/urandom | base64`".into(),
                ));
            }
        };
        // One key per line (or comma): the first seals, all open — a rotation puts the new
        // key first and keeps the old ones until `ksctl-manager reseal` has run.
        let keys: Vec<&str> =
            key.split(['\n', ',']).map(str::trim).filter(|k| !k.is_empty() && !k.starts_with('#')).collect();
        Sealer::from_keys(&keys).map_err(|e| RuntimeError::Config(e.to_string()))
    }

    /// How this process authenticates to NATS.
    pub fn nats_auth(&self) -> ksctl_bus::NatsAuth {
        ksctl_bus::NatsAuth {
            creds: None,
            creds_file: self.nats_creds_file.clone(),
            user: self.nats_user.clone(),
            password: self.nats_password.clone(),
            ca_file: self.nats_ca_file.clone(),
            ca_pem: None,
            cert_file: self.nats_cert_file.clone(),
            key_file: self.nats_key_file.clone(),
        }
    }

    pub async fn nats(&self) -> Result<async_nats::Client, RuntimeError> {
        let opts = self.nats_auth().options()?.retry_on_initial_connect().connection_timeout(Duration::from_secs(5));
        // retry_on_initial_connect returns at once and connects in the background; wait until
        // the first connection so start-up errors surface here.
        let client = opts
            .connect(&self.nats_url)
            .await
            .map_err(|source| ksctl_bus::BusError::Connect { url: self.nats_url.clone(), source })?;
        for _ in 0..100 {
            if client.connection_state() == async_nats::connection::State::Connected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(client)
    }

    /// Connects to the bus and the store, and ensures the streams exist.
    pub async fn connect(&self, service: &'static str) -> Result<Runtime, RuntimeError> {
        if self.store == StoreKind::Redis && redis_password(&self.redis_url).is_some_and(|p| p.starts_with("change-me"))
        {
            return Err(RuntimeError::Config(
                "KSCTL_REDIS_URL carries the placeholder password of deploy/env.example: set a real one (scripts/compose-init.sh writes a random one)".into(),
            ));
        }
        let sealer = self.sealer()?;
        let client = self.nats().await?;
        let store: DynStore = match self.store {
            StoreKind::Redis => Arc::new(RedisStore::connect(&self.redis_url, &self.store_namespace).await?),
            StoreKind::Nats => Arc::new(
                KvStore::open_replicated(client.clone(), &self.store_namespace, self.stream_replicas.max(1)).await?,
            ),
        };
        let bus = BusSettings {
            ack_wait: Duration::from_secs(self.ack_wait_secs.max(1)),
            max_deliver: self.max_deliver,
            replicas: self.stream_replicas.max(1),
            events_max_bytes: self.events_max_bytes,
            events_max_msg_size: self.events_max_msg_size,
            ..Default::default()
        };
        let publisher = Publisher::new(client);
        ksctl_bus::ensure_streams(&publisher.js, &bus).await?;
        let replica = self.replica_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "host".into());
            format!("{service}-{}-{}", host.trim(), std::process::id())
        });
        let metrics = Arc::new(Metrics::default());
        Ok(Runtime {
            service,
            publisher,
            store,
            sealer,
            replica,
            bus,
            lease: LeaseOptions { ttl: Duration::from_secs(self.lease_ttl_secs.max(1)), wait: Duration::from_secs(2) },
            worker: WorkerOptions {
                max_jobs: self.max_jobs.max(1),
                base_backoff: Duration::from_millis(self.retry_base_ms.max(1)),
                max_deliver: self.max_deliver,
                metrics: Some(metrics.clone()),
                drain_deadline: Duration::from_secs(self.shutdown_deadline_secs),
                ..Default::default()
            },
            metrics,
            http_addr: (self.http_addr != "off").then(|| self.http_addr.clone()),
        })
    }
}

/// The password in a `redis://[user]:password@host…` URL.
fn redis_password(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    Some(userinfo.split_once(':').map_or(userinfo, |(_, p)| p))
}

#[cfg(test)]
mod redis_url_tests {
    use super::redis_password;

    #[test]
    fn passwords_are_read_from_redis_urls() {
        assert_eq!(redis_password("redis://:change-me-three@redis:6379"), Some("change-me-three"));
        assert_eq!(redis_password("redis://app:s3cret@redis:6379/0"), Some("s3cret"));
        assert_eq!(redis_password("redis://127.0.0.1:6379"), None);
    }
}
