//! `docker-compose.yml` for real, on this machine's Docker engine: NATS (JetStream, user/password
//! auth), Redis (AOF, AUTH) and the four services with `--scale cloud-controller=3`, from images
//! built without pulling (`tests/compose/build-images.sh`: the lab's Debian root, ksctl's binaries,
//! the host's nats-server and redis-server; `tests/compose/docker-compose.lab.yml` points the
//! services at it). The CLI on the host creates and deletes a cluster through the published NATS
//! port; the servers refuse clients without credentials; a stopped service exits cleanly.
use ksctl_tests::{TempDir, bin, free_port};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct Project {
    dir: TempDir,
    name: String,
}

impl Project {
    fn compose(&self, args: &[&str]) -> Output {
        Command::new("docker-compose")
            .current_dir(&self.dir.0)
            .args(["-p", &self.name, "-f", "docker-compose.yml", "-f", "docker-compose.lab.yml"])
            .args(args)
            .output()
            .expect("docker-compose")
    }
    fn ok(&self, args: &[&str]) -> String {
        let out = self.compose(args);
        assert!(out.status.success(), "docker-compose {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose(&["down", "-v", "--remove-orphans", "-t", "5"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_runs_the_control_plane_with_three_cloud_controllers() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = Command::new("bash").arg(root.join("tests/compose/build-images.sh")).arg("debug").output().unwrap();
    assert!(built.status.success(), "building the images: {}", String::from_utf8_lossy(&built.stderr));

    // A project directory of its own: the compose files, its own .env and seal key.
    let dir = TempDir::new("compose");
    std::fs::copy(root.join("docker-compose.yml"), dir.0.join("docker-compose.yml")).unwrap();
    std::fs::copy(root.join("tests/compose/docker-compose.lab.yml"), dir.0.join("docker-compose.lab.yml")).unwrap();
    std::fs::create_dir_all(dir.0.join("deploy/nats")).unwrap();
    std::fs::copy(root.join("deploy/nats/nats.conf"), dir.0.join("deploy/nats/nats.conf")).unwrap();
    std::fs::copy(root.join("deploy/env.example"), dir.0.join("deploy/env.example")).unwrap();
    std::fs::create_dir_all(dir.0.join("scripts")).unwrap();
    std::fs::copy(root.join("scripts/compose-init.sh"), dir.0.join("scripts/compose-init.sh")).unwrap();
    std::fs::copy(root.join("scripts/nats-tls.sh"), dir.0.join("scripts/nats-tls.sh")).unwrap();
    let init =
        Command::new("bash").arg(dir.0.join("scripts/compose-init.sh")).env("KSCTL", bin("ksctl")).output().unwrap();
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let port = free_port();
    let env_path = dir.0.join(".env");
    let env =
        std::fs::read_to_string(&env_path).unwrap().replace("KSCTL_NATS_PORT=4222", &format!("KSCTL_NATS_PORT={port}"));
    std::fs::write(&env_path, &env).unwrap();
    let admin = dir.0.join("deploy/nats/auth/admin.creds").display().to_string();
    let ca = dir.0.join("deploy/nats/auth/tls/ca.crt").display().to_string();
    let name = format!("ksctltest{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let p = Project { dir, name };

    p.ok(&["up", "-d", "--no-build", "--scale", "cloud-controller=3"]);
    // Every service container reports healthy (its /readyz through the compose health check).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ids = p.ok(&["ps", "-q"]);
        let ids: Vec<&str> = ids.lines().collect();
        let health = Command::new("docker")
            .args(["inspect", "-f", "{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}"])
            .args(&ids)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&health.stdout).into_owned();
        let services = text.lines().filter(|l| !l.ends_with(" none")).count();
        if services == 6 && text.lines().filter(|l| l.ends_with(" healthy")).count() == 6 {
            break;
        }
        assert!(Instant::now() < deadline, "services not healthy: {text}\n{}", p.ok(&["logs", "--tail", "20"]));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert_eq!(p.ok(&["ps", "-q", "cloud-controller"]).lines().count(), 3);

    let url = format!("tls://127.0.0.1:{port}");
    let ksctl = |args: &[&str], creds: Option<&str>| {
        let mut c = Command::new(bin("ksctl"));
        c.args(args).env("KSCTL_NATS_URL", &url).env("KSCTL_NATS_CA_FILE", &ca).env_remove("KUBECONFIG");
        if let Some(f) = creds {
            c.env("KSCTL_NATS_CREDS_FILE", f);
        }
        c.output().unwrap()
    };
    // Without credentials the bus refuses the client.
    let anon = ksctl(&["cluster", "list"], None);
    assert!(!anon.status.success());
    assert!(String::from_utf8_lossy(&anon.stderr).to_lowercase().contains("authorization"), "{anon:?}");
    // Plain NATS (no TLS) is refused.
    let plain = Command::new(bin("ksctl"))
        .args(["cluster", "list"])
        .env("KSCTL_NATS_URL", format!("nats://127.0.0.1:{port}"))
        .env("KSCTL_NATS_CREDS_FILE", &admin)
        .output()
        .unwrap();
    assert!(!plain.status.success(), "a client without TLS got in");
    // Redis is on an internal network only the services join, and wants its password too.
    let net = Command::new("docker")
        .args(["network", "inspect", "-f", "{{.Internal}}", &format!("{}_backend", p.name)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&net.stdout).trim(), "true");
    // Redis wants its password too.
    let noauth = p.ok(&["exec", "-T", "redis", "redis-cli", "ping"]);
    assert!(noauth.contains("NOAUTH"), "{noauth}");

    let args = [
        "cluster",
        "create",
        "--name",
        "composed",
        "--distro",
        "k3s",
        "--control-planes",
        "3",
        "--datastores",
        "3",
        "--workers",
        "2",
    ];
    let out = ksctl(&args, Some(&admin));
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let info = ksctl(&["cluster", "get", "composed"], Some(&admin));
    assert!(String::from_utf8_lossy(&info.stdout).contains("running"), "{info:?}");
    let out = ksctl(&["cluster", "delete", "composed"], Some(&admin));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // A stopped controller shuts down gracefully: SIGTERM, drained, exit status 0.
    p.ok(&["stop", "-t", "30", "bootstrap-controller"]);
    let id = p.ok(&["ps", "-q", "bootstrap-controller"]);
    let state = Command::new("docker").args(["inspect", "-f", "{{.State.ExitCode}}", id.trim()]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&state.stdout).trim(), "0");
}

/// deploy/env.example's placeholder Redis password is refused at start, with the reason (the
/// services never run with a password anyone can read in the repository).
#[test]
fn the_placeholder_password_is_refused_at_start() {
    let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/env.example")).unwrap();
    let placeholder = example.lines().find_map(|l| l.strip_prefix("REDIS_PASSWORD=")).unwrap();
    let out = Command::new(bin("ksctl-manager"))
        .env("KSCTL_REDIS_URL", format!("redis://:{placeholder}@127.0.0.1:1"))
        .env("KSCTL_SEAL_KEY", ksctl_core::seal::generate_key())
        .env("KSCTL_NATS_URL", "nats://127.0.0.1:1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("placeholder password"), "{err}");
}
