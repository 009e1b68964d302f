//! The whole control plane as processes: nats-server, redis-server (or NATS KV), and N replicas
//! of each service binary, with a `ksctl` runner and store inspection.
use crate::{NatsServer, RedisServer, bin, eventually};
use ksctl_core::ClusterId;
use ksctl_core::keys;
use ksctl_core::records::ClusterRecord;
use ksctl_runtime::sim::SimResource;
use ksctl_store::{DynStore, KvStore, RedisStore};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub const SERVICES: [&str; 4] =
    ["ksctl-manager", "ksctl-cloud-controller", "ksctl-bootstrap-controller", "ksctl-k8s-controller"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Redis,
    Nats,
}

#[derive(Debug, Clone)]
pub struct SystemOptions {
    pub replicas: usize,
    pub backend: Backend,
    pub sim_latency_ms: u64,
    /// `(binary, variable, value)`: extra environment for one service (`*`: all; `<binary>#<n>`:
    /// its replica `n` only).
    pub env: Vec<(String, String, String)>,
    /// Redis with the append-only file fsynced on every write (for restart tests).
    pub durable_redis: bool,
    /// Where clusters of a lab reach this machine (a lab network's gateway): NATS then listens
    /// on every address and the k8s-controller gives in-cluster agents `nats://<it>:<port>`.
    pub agent_nats_host: Option<String>,
    /// NATS in operator mode: the services, the CLI and the agents present credentials.
    pub nats_auth: bool,
}

impl Default for SystemOptions {
    fn default() -> Self {
        Self {
            replicas: 1,
            backend: Backend::Redis,
            sim_latency_ms: 0,
            env: vec![],
            durable_redis: false,
            agent_nats_host: None,
            nats_auth: false,
        }
    }
}

pub struct ServiceProc {
    pub bin: String,
    pub replica: usize,
    pub child: Option<Child>,
}

pub struct System {
    pub nats: NatsServer,
    pub redis: Option<RedisServer>,
    pub opts: SystemOptions,
    pub seal_key: String,
    pub namespace: String,
    pub procs: Vec<ServiceProc>,
    pub logs: PathBuf,
    pub client: async_nats::Client,
    pub store: DynStore,
}

impl System {
    pub async fn start(opts: SystemOptions) -> Self {
        let listen = if opts.agent_nats_host.is_some() { "0.0.0.0" } else { "127.0.0.1" };
        let nats = if opts.nats_auth { NatsServer::start_with_auth(listen) } else { NatsServer::start_on(listen) };
        let redis = (opts.backend == Backend::Redis)
            .then(|| if opts.durable_redis { RedisServer::start_durable() } else { RedisServer::start() });
        let namespace = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let logs = std::env::temp_dir().join("ksctl-test-logs").join(&namespace);
        std::fs::create_dir_all(&logs).expect("logs dir");
        let client = nats.connect().await;
        let store: DynStore = match opts.backend {
            Backend::Redis => Arc::new(
                RedisStore::connect(&redis.as_ref().expect("redis").url(), &namespace).await.expect("redis store"),
            ),
            Backend::Nats => Arc::new(KvStore::open(client.clone(), &namespace).await.expect("kv store")),
        };
        let mut sys = Self {
            nats,
            redis,
            opts: opts.clone(),
            seal_key: ksctl_core::seal::generate_key(),
            namespace,
            procs: vec![],
            logs,
            client,
            store,
        };
        // The manager ensures the streams; start it first so controllers find them.
        for b in SERVICES {
            for r in 0..opts.replicas {
                sys.spawn(b, r);
            }
            if b == "ksctl-manager" {
                sys.wait_streams().await;
            }
        }
        sys.wait_ready().await;
        sys
    }

    async fn wait_streams(&self) {
        let js = async_nats::jetstream::new(self.client.clone());
        eventually(Duration::from_secs(30), "streams created by the manager", || {
            let js = js.clone();
            async move { js.get_stream(ksctl_bus::subjects::EVENTS_STREAM).await.ok().map(|_| ()) }
        })
        .await;
    }

    /// Every controller's durable consumer exists once the controllers are up.
    async fn wait_ready(&self) {
        let js = async_nats::jetstream::new(self.client.clone());
        for (stream, consumer) in [
            (ksctl_bus::subjects::CLOUD_STREAM, "cloud-controller"),
            (ksctl_bus::subjects::BOOTSTRAP_STREAM, "bootstrap-controller"),
            (ksctl_bus::subjects::K8S_STREAM, "k8s-controller"),
            (ksctl_bus::subjects::RESULTS_STREAM, "manager"),
        ] {
            eventually(Duration::from_secs(30), "controller consumers", || {
                let js = js.clone();
                async move {
                    let s = js.get_stream(stream).await.ok()?;
                    s.consumer_info(consumer).await.ok().map(|_| ())
                }
            })
            .await;
        }
    }

    pub fn base_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("KSCTL_NATS_URL".into(), self.nats.url()),
            ("KSCTL_SEAL_KEY".into(), self.seal_key.clone()),
            ("KSCTL_STORE_NAMESPACE".into(), self.namespace.clone()),
            ("KSCTL_STORE".into(), if self.opts.backend == Backend::Redis { "redis".into() } else { "nats".into() }),
            // Short timers so crash recovery happens within a test's patience.
            ("KSCTL_ACK_WAIT_SECS".into(), "3".into()),
            ("KSCTL_LEASE_TTL_SECS".into(), "3".into()),
            ("KSCTL_RETRY_BASE_MS".into(), "100".into()),
            ("KSCTL_RECONCILE_INTERVAL_SECS".into(), "2".into()),
            ("KSCTL_PHASE_TIMEOUT_SECS".into(), "20".into()),
            ("KSCTL_SIM_LATENCY_MS".into(), self.opts.sim_latency_ms.to_string()),
            ("RUST_LOG".into(), "info,ksctl_runtime::controller=debug".into()),
        ];
        if let Some(r) = &self.redis {
            env.push(("KSCTL_REDIS_URL".into(), r.url()));
        }
        if let Some(a) = &self.nats.auth {
            env.push(("KSCTL_NATS_CREDS_FILE".into(), a.services()));
            env.push(("KSCTL_NATS_AUTHORITY_FILE".into(), a.authority_file()));
        }
        if let Some(host) = &self.opts.agent_nats_host {
            env.push(("KSCTL_AGENT_NATS_URL".into(), format!("nats://{host}:{}", self.nats.port)));
        }
        env
    }

    pub fn spawn(&mut self, b: &str, replica: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{b}-{replica}.log")))
            .expect("log file");
        let mut cmd = Command::new(bin(b));
        cmd.envs(self.base_env()).env("KSCTL_REPLICA_ID", format!("{b}-{replica}"));
        for (target, k, v) in &self.opts.env {
            // `<binary>`, `<binary>#<replica>` or `*`.
            if target == b || target == "*" || *target == format!("{b}#{replica}") {
                cmd.env(k, v);
            }
        }
        let child = cmd.stdout(Stdio::null()).stderr(log).spawn().unwrap_or_else(|e| panic!("spawn {b}: {e}"));
        match self.procs.iter_mut().find(|p| p.bin == b && p.replica == replica) {
            Some(p) => p.child = Some(child),
            None => self.procs.push(ServiceProc { bin: b.into(), replica, child: Some(child) }),
        }
    }

    /// SIGKILL every replica of `b`.
    pub fn kill9(&mut self, b: &str) {
        for p in self.procs.iter_mut().filter(|p| p.bin == b) {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// SIGKILL replica `r` of `b`.
    pub fn kill9_replica(&mut self, b: &str, r: usize) {
        for p in self.procs.iter_mut().filter(|p| p.bin == b && p.replica == r) {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// SIGTERM to every replica of `b`; waits for them to exit and returns how long that took
    /// and whether all exited successfully.
    pub fn terminate(&mut self, b: &str) -> (Duration, bool) {
        let started = std::time::Instant::now();
        let mut all_ok = true;
        for p in self.procs.iter_mut().filter(|p| p.bin == b) {
            if let Some(mut c) = p.child.take() {
                let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
                all_ok &= c.wait().is_ok_and(|s| s.success());
            }
        }
        (started.elapsed(), all_ok)
    }

    /// Whether every replica of `b` is still running.
    pub fn alive(&mut self, b: &str) -> bool {
        self.procs
            .iter_mut()
            .filter(|p| p.bin == b)
            .all(|p| p.child.as_mut().is_some_and(|c| c.try_wait().ok().flatten().is_none()))
    }

    /// Sets (or with `None` removes) one environment variable of `b` for its next start.
    pub fn set_env(&mut self, b: &str, key: &str, value: Option<&str>) {
        self.opts.env.retain(|(t, k, _)| !(t == b && k == key));
        if let Some(v) = value {
            self.opts.env.push((b.into(), key.into(), v.into()));
        }
    }

    /// Starts again every replica of `b` that is not running (killed or crashed).
    pub fn restart(&mut self, b: &str) {
        let dead: Vec<usize> = self
            .procs
            .iter_mut()
            .filter(|p| p.bin == b)
            .filter_map(|p| p.child.as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some()).then_some(p.replica))
            .collect();
        for r in dead {
            self.spawn(b, r);
        }
    }

    /// Runs the CLI; returns (exit code, stdout, stderr).
    pub async fn ksctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = tokio::process::Command::new(bin("ksctl"))
            .args(args)
            .env("KSCTL_NATS_URL", self.nats.url())
            .env("KSCTL_NATS_CREDS_FILE", self.nats.auth.as_ref().map(|a| a.admin()).unwrap_or_default())
            .env("HOME", &self.logs)
            .env_remove("KUBECONFIG")
            .output()
            .await
            .expect("run ksctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into(),
            String::from_utf8_lossy(&out.stderr).into(),
        )
    }

    /// `ksctl cluster create` of a self-managed HA k3s cluster (3 control planes, 3 datastores)
    /// with `workers` workers, plus `extra` flags; (exit code, stdout, stderr).
    pub async fn create_ha(&self, name: &str, workers: u32, extra: &[&str]) -> (i32, String, String) {
        let w = workers.to_string();
        let mut args = vec!["cluster", "create", "--name", name, "--type", "selfmanaged", "--distro", "k3s"];
        args.extend(["--control-planes", "3", "--datastores", "3", "--workers", &w]);
        args.extend(extra);
        self.ksctl(&args).await
    }

    pub async fn cluster(&self, name: &str) -> Option<ClusterRecord> {
        let id = ClusterId::new(name).expect("valid name");
        // A restarted Redis answers the first call on the old connection with an error; the
        // connection manager reconnects for the next.
        for _ in 0..50 {
            match ksctl_store::get_json(self.store.as_ref(), &keys::cluster(&id)).await {
                Ok(r) => return r.map(|(r, _)| r),
                Err(ksctl_store::StoreError::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("store: {e}"),
            }
        }
        panic!("the store stayed unavailable for 5 s")
    }

    pub async fn sim_resources(&self, name: &str) -> Vec<SimResource> {
        let id = ClusterId::new(name).expect("valid name");
        let parent = keys::sim_prefix(&id);
        self.store
            .children(parent.trim_end_matches('.'))
            .await
            .expect("store")
            .into_iter()
            .map(|(_, v)| serde_json::from_slice(&v.value).expect("sim resource"))
            .collect()
    }

    /// Panics if any simulated resource name exists more than once (created twice) or a host
    /// step ran twice on a host.
    pub async fn assert_no_duplicates(&self, name: &str) {
        self.check_duplicates(name, |_| 1).await
    }

    /// After a kill at an arbitrary moment (or a store restart): no resource made twice, and no
    /// host step run more than twice — a step the kill caught between its effect and its
    /// checkpoint runs again (host steps are idempotent on the host; that is their contract).
    pub async fn assert_no_duplicates_after_kill(&self, name: &str) {
        self.check_duplicates(name, |_| 2).await
    }

    /// As [`Self::assert_no_duplicates`], except that host steps `rerun` may have run twice: a
    /// crash after a step's effect and before its checkpoint runs it again, on each host where
    /// it was in flight (the steps are idempotent on the host; what matters is that nothing
    /// else ran again and no resource was made twice).
    pub async fn assert_no_duplicates_but(&self, name: &str, rerun: &[&str]) {
        self.check_duplicates(name, |s| if rerun.iter().any(|x| x.ends_with(&format!(".{s}"))) { 2 } else { 1 }).await
    }

    /// Each resource name once; host step `s` at most `allowed(s)` times per host.
    async fn check_duplicates(&self, name: &str, allowed: impl Fn(&str) -> usize) {
        let mut seen = std::collections::BTreeMap::<String, usize>::new();
        for r in self.sim_resources(name).await {
            *seen.entry(r.name).or_default() += 1;
            for s in &r.applied {
                let runs = r.applied.iter().filter(|a| *a == s).count();
                assert!(runs <= allowed(s), "host step {s} ran {runs} times on {}: {:?}", r.id, r.applied);
            }
        }
        let dups: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(dups.is_empty(), "resources created twice: {dups:?} (logs in {})", self.logs.display());
    }

    /// Marks a cluster `running` in the store, standing in for phases that cannot run against an
    /// emulated cloud (SSH bootstrap, a Kubernetes API), so that scale requests are allowed.
    pub async fn mark_running(&self, name: &str) {
        let id = ClusterId::new(name).expect("valid name");
        ksctl_store::modify::<ClusterRecord, _, ()>(self.store.as_ref(), &keys::cluster(&id), |r| {
            let mut r = r.expect("cluster exists");
            r.state = ksctl_core::state::ClusterState::Running;
            r.operation = None;
            Ok(Some(r))
        })
        .await
        .expect("store")
        .expect("written");
    }

    pub async fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> ClusterRecord {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let cur = self.cluster(name).await;
            match cur {
                Some(r) if r.state.as_str() == state && r.operation.is_none() => return r,
                _ if tokio::time::Instant::now() >= deadline => {
                    panic!("timed out after {timeout:?} waiting for cluster {name} to be {state}: {}", self.stuck(cur))
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    pub async fn wait_gone(&self, name: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while let Some(r) = self.cluster(name).await {
            if tokio::time::Instant::now() >= deadline {
                panic!("timed out after {timeout:?} waiting for cluster {name} to be deleted: {}", self.stuck(Some(r)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where a cluster that did not get where a test waited for it stands, and what the services
    /// last said: CI keeps only the test's output, not the log directory.
    fn stuck(&self, record: Option<ClusterRecord>) -> String {
        let mut out = match record {
            None => "no such cluster".to_string(),
            Some(r) => {
                let op = r.operation.as_ref().or(r.last_operation.as_ref());
                format!(
                    "state {}, operation {:?} in phase {:?} (dispatched {} times, error {:?})",
                    r.state.as_str(),
                    op.map(|o| o.kind),
                    op.map(|o| o.phase),
                    op.map_or(0, |o| o.dispatch),
                    op.and_then(|o| o.error.as_deref())
                )
            }
        };
        out.push_str(&format!("\nlogs in {}", self.logs.display()));
        let mut files: Vec<_> =
            std::fs::read_dir(&self.logs).into_iter().flatten().flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files.into_iter().filter(|f| f.extension().is_some_and(|e| e == "log")) {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("\n--- last lines of {}:", f.display()));
            for l in &lines[lines.len().saturating_sub(15)..] {
                out.push_str("\n  ");
                out.push_str(&l.chars().take(400).collect::<String>());
            }
        }
        out
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for p in &mut self.procs {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
