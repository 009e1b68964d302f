//! NATS over TLS with client certificates: a real nats-server (JetStream) that requires TLS and
//! verifies clients; the manager connects with the CA and its client certificate and the CLI
//! queries it the same way. Without the CA, or without a client certificate, the server is
//! not reachable.
use ksctl_tests::{RedisServer, TempDir, bin, free_port};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sh(dir: &std::path::Path, cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn services_and_cli_talk_to_nats_over_mutual_tls() {
    let dir = TempDir::new("nats-tls");
    let d = &dir.0;
    sh(
        d,
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=nats-ca 2>/dev/null
         openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=nats 2>/dev/null
         printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth\\n' > server.ext
         openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.crt 2>/dev/null
         openssl req -newkey rsa:2048 -nodes -keyout client.key -out client.csr -subj /CN=ksctl 2>/dev/null
         printf 'extendedKeyUsage=clientAuth\\n' > client.ext
         openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile client.ext -out client.crt 2>/dev/null",
    );
    let port = free_port();
    let p = |f: &str| d.join(f).display().to_string();
    std::fs::write(
        d.join("nats.conf"),
        format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {} }}\ntls {{ cert_file: {}, key_file: {}, ca_file: {}, verify: true }}\n",
            p("js"),
            p("server.crt"),
            p("server.key"),
            p("ca.crt")
        ),
    )
    .unwrap();
    let _nats = Kill(Command::new("nats-server").args(["-c", &p("nats.conf")]).stderr(Stdio::null()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server with TLS did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let redis = RedisServer::start();
    let url = format!("tls://127.0.0.1:{port}");
    let tls = [
        ("KSCTL_NATS_CA_FILE", p("ca.crt")),
        ("KSCTL_NATS_CERT_FILE", p("client.crt")),
        ("KSCTL_NATS_KEY_FILE", p("client.key")),
    ];
    let _manager = Kill(
        Command::new(bin("ksctl-manager"))
            .env("KSCTL_NATS_URL", &url)
            .env("KSCTL_REDIS_URL", redis.url())
            .env("KSCTL_SEAL_KEY", ksctl_core::seal::generate_key())
            .env("KSCTL_STORE_NAMESPACE", "tls")
            .envs(tls.iter().map(|(k, v)| (*k, v.as_str())))
            .stderr(std::fs::File::create(d.join("manager.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let ksctl = |envs: &[(&str, String)]| {
        Command::new(bin("ksctl"))
            .args(["cluster", "list"])
            .env("KSCTL_NATS_URL", &url)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap()
    };
    // The CLI reaches the manager over mutual TLS (retried while the manager starts).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = ksctl(&tls);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ksctl over TLS: {}\nmanager: {}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(d.join("manager.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Without the CA the server's certificate is not trusted; without a client certificate the
    // server refuses the client.
    assert!(!ksctl(&[]).status.success());
    assert!(!ksctl(&tls[..1]).status.success());
}
