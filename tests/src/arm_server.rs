//! The test ARM server (`tests/azure/arm_server.py`) on a free port, over TLS with a CA made per
//! server: it checks request bodies against the official SDK's generated models and answers
//! like the recorded ARM traffic (see the script). `tests/azure/setup.sh` caches what it reads.
use crate::{TempDir, start_on_free_port};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT_ID: &str = "ksctl-test-client";
pub const CLIENT_SECRET: &str = "ksctl-test-secret";
pub const SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000000";

pub struct ArmServer {
    child: Child,
    pub port: u16,
    /// The CA the server's certificate is signed by (PEM).
    pub ca_file: PathBuf,
    _dir: TempDir,
}

/// The cached virtualenv and recordings (set up on first use, a few minutes).
fn setup() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("azure/setup.sh");
    let out = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().expect("run tests/azure/setup.sh");
    assert!(out.status.success(), "tests/azure/setup.sh failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().lines().last().expect("a path"))
}

impl ArmServer {
    /// `polls`: how many polls a long-running operation answers `InProgress`; `retry_after`:
    /// the seconds it asks the client to wait between them.
    pub fn start(polls: u32, retry_after: u32) -> Self {
        let cache = setup();
        let dir = TempDir::new("arm-server");
        let d = dir.0.clone();
        let sh = |cmd: &str| {
            let out = Command::new("sh").arg("-c").arg(cmd).current_dir(&d).output().expect("sh");
            assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        };
        sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=arm-test-ca 2>/dev/null
            openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=127.0.0.1 2>/dev/null
            printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth\\nbasicConstraints=CA:FALSE\\n' > server.ext
            openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.crt 2>/dev/null");
        let log = std::fs::File::create(d.join("arm-server.log")).unwrap();
        let (child, port) = start_on_free_port("the ARM test server", |port| {
            Command::new(cache.join("venv/bin/python"))
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("azure/arm_server.py"))
                .args(["--port", &port.to_string(), "--polls", &polls.to_string()])
                .args(["--retry-after", &retry_after.to_string()])
                .args([
                    "--cert",
                    d.join("server.crt").to_str().unwrap(),
                    "--key",
                    d.join("server.key").to_str().unwrap(),
                ])
                .arg("--recordings")
                .arg(cache.join("recordings"))
                .env("ARM_TENANT", TENANT)
                .env("ARM_CLIENT_ID", CLIENT_ID)
                .env("ARM_CLIENT_SECRET", CLIENT_SECRET)
                .env("ARM_SUBSCRIPTION", SUBSCRIPTION)
                .stdout(Stdio::null())
                .stderr(log.try_clone().unwrap())
                .spawn()
                .expect("spawn the ARM test server")
        });
        Self { child, port, ca_file: d.join("ca.crt"), _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The environment that points a cloud-controller at this server (ARM, Entra ID, the
    /// service principal, the CA).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("KSCTL_AZURE_ARM_ENDPOINT".into(), self.url()),
            ("AZURE_AUTHORITY_HOST".into(), self.url()),
            ("KSCTL_AZURE_CA_FILE".into(), self.ca_file.display().to_string()),
            ("AZURE_TENANT_ID".into(), TENANT.into()),
            ("AZURE_CLIENT_ID".into(), CLIENT_ID.into()),
            ("AZURE_CLIENT_SECRET".into(), CLIENT_SECRET.into()),
            ("AZURE_SUBSCRIPTION_ID".into(), SUBSCRIPTION.into()),
        ]
    }

    fn control(&self, method: &str, path: &str, body: &str) -> String {
        let out = Command::new("curl")
            .args(["-sf", "-X", method, "--cacert", self.ca_file.to_str().unwrap(), "-d", body])
            .arg(format!("{}{path}", self.url()))
            .output()
            .expect("curl");
        assert!(out.status.success(), "{method} {path}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The next `count` ARM requests are answered 429 with `Retry-After: retry_after`.
    pub fn throttle(&self, count: u32, retry_after: u32) {
        self.control("POST", "/_test/throttle", &format!("{{\"count\":{count},\"retry_after\":{retry_after}}}"));
    }

    /// Every request so far: `(method, path with query, status)`.
    pub fn log(&self) -> Vec<(String, String, u16)> {
        let v: serde_json::Value = serde_json::from_str(&self.control("GET", "/_test/log", "")).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["method"].as_str().unwrap().to_string(),
                    e["path"].as_str().unwrap().to_string(),
                    e["status"].as_u64().unwrap() as u16,
                )
            })
            .collect()
    }

    /// Every resource the server holds, by id.
    pub fn resources(&self) -> serde_json::Map<String, serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&self.control("GET", "/_test/resources", "")).unwrap();
        v.as_object().unwrap().clone()
    }
}

impl Drop for ArmServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
