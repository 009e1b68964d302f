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

/// nats-server with the configuration `conf`, once it listens on `port`.
fn nats_with(conf: &std::path::Path, port: u16) -> Kill {
    let nats = Kill(Command::new("nats-server").arg("-c").arg(conf).stderr(Stdio::null()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server with TLS did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    nats
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
    let _nats = nats_with(&d.join("nats.conf"), port);
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

/// The deployments' TLS: certificates from `scripts/nats-tls.sh` (what the init step runs); an
/// agent trusts the CA as PEM text from its Secret (`KSCTL_NATS_CA`), without a file. A client
/// without the CA, or with another CA, cannot connect.
#[tokio::test(flavor = "multi_thread")]
async fn the_init_steps_certificates_and_a_ca_given_as_text() {
    let dir = TempDir::new("nats-tls-init");
    let d = &dir.0;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/nats-tls.sh");
    let made =
        Command::new("bash").arg(&script).arg(d.join("tls")).args(["nats", "localhost", "127.0.0.1"]).output().unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(d.join("tls/nats.key")).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the server key is readable by its owner only");
    let port = free_port();
    let p = |f: &str| d.join(f).display().to_string();
    std::fs::write(
        d.join("nats.conf"),
        format!(
            "listen: 127.0.0.1:{port}\ntls {{ cert_file: {}, key_file: {} }}\n",
            p("tls/nats.crt"),
            p("tls/nats.key")
        ),
    )
    .unwrap();
    let _nats = nats_with(&d.join("nats.conf"), port);
    let url = format!("tls://127.0.0.1:{port}");
    let connect = |ca_pem: Option<String>| {
        let url = url.clone();
        async move {
            let opts = ksctl_bus::NatsAuth { ca_pem, ..Default::default() }.options().unwrap();
            opts.connection_timeout(Duration::from_secs(3)).max_reconnects(1).connect(url).await
        }
    };
    let ca = std::fs::read_to_string(d.join("tls/ca.crt")).unwrap();
    let client = connect(Some(ca)).await.expect("the CA as text is trusted");
    client.publish("ksctl.health.x", "ok".into()).await.unwrap();
    client.flush().await.unwrap();
    assert!(connect(None).await.is_err(), "plain NATS to a TLS server");
    let other = TempDir::new("nats-tls-other");
    let made = Command::new("bash").arg(&script).arg(other.0.join("tls")).arg("localhost").output().unwrap();
    assert!(made.status.success());
    let stranger = std::fs::read_to_string(other.0.join("tls/ca.crt")).unwrap();
    assert!(connect(Some(stranger)).await.is_err(), "another CA is not trusted");
    assert!(ksctl_bus::NatsAuth { ca_pem: Some("not pem".into()), ..Default::default() }.options().is_err());
}
