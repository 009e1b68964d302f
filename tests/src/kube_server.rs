//! A real Kubernetes API server for the k8s-controller's tests (see `../shared/LAB.md`): etcd
//! (the lab root's Debian etcd 3.4) and the Debian-built kube-apiserver on free loopback ports,
//! with certificates made by openssl — a CA, a serving certificate for 127.0.0.1, an admin client
//! certificate in `system:masters`, a service-account key pair. No scheduler, no kubelet.
use crate::{TempDir, free_port};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct KubeServer {
    pub url: String,
    /// An admin kubeconfig (client certificate), YAML.
    pub kubeconfig: String,
    pub dir: TempDir,
    etcd: Child,
    apiserver: Child,
}

fn sh(dir: &Path, cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).current_dir(dir).output().expect("sh");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

fn b64(path: &Path) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
}

impl KubeServer {
    pub fn start() -> Self {
        let bins = crate::lab::kube_bins();
        let etcd_bin = crate::lab::rootfs().join("usr/bin/etcd");
        let dir = TempDir::new("kube-server");
        let d = &dir.0.clone();
        sh(
            d,
            "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=test-ca 2>/dev/null
             openssl req -newkey rsa:2048 -nodes -keyout serving.key -out serving.csr -subj /CN=kube-apiserver 2>/dev/null
             printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\nextendedKeyUsage=serverAuth\\n' > serving.ext
             openssl x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile serving.ext -out serving.crt 2>/dev/null
             openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj /O=system:masters/CN=admin 2>/dev/null
             printf 'extendedKeyUsage=clientAuth\\n' > admin.ext
             openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile admin.ext -out admin.crt 2>/dev/null
             openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null",
        );
        let (client, peer, port) = (free_port(), free_port(), free_port());
        let log = |name: &str| std::fs::File::create(d.join(name)).unwrap();
        let etcd = Command::new(&etcd_bin)
            .args(["--data-dir", d.join("etcd").to_str().unwrap()])
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .stdout(Stdio::null())
            .stderr(log("etcd.log"))
            .spawn()
            .expect("etcd");
        let p = |f: &str| d.join(f).display().to_string();
        let apiserver = Command::new(bins.join("kube-apiserver"))
            .arg(format!("--etcd-servers=http://127.0.0.1:{client}"))
            .arg(format!("--secure-port={port}"))
            .arg("--bind-address=127.0.0.1")
            // Not loopback (1.20 refuses that for the service endpoints); never dialled here.
            .arg("--advertise-address=10.255.0.1")
            .arg(format!("--tls-cert-file={}", p("serving.crt")))
            .arg(format!("--tls-private-key-file={}", p("serving.key")))
            .arg(format!("--client-ca-file={}", p("ca.crt")))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", p("sa.pub")))
            .arg(format!("--service-account-signing-key-file={}", p("sa.key")))
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--authorization-mode=Node,RBAC")
            .stdout(Stdio::null())
            .stderr(log("kube-apiserver.log"))
            .spawn()
            .expect("kube-apiserver");
        let url = format!("https://127.0.0.1:{port}");
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {url}\n    certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\ncurrent-context: test\n",
            b64(&d.join("ca.crt")),
            b64(&d.join("admin.crt")),
            b64(&d.join("admin.key")),
        );
        let server = KubeServer { url, kubeconfig, dir, etcd, apiserver };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = Command::new("curl")
                .args(["-sf", "--cacert", &p("ca.crt"), "--cert", &p("admin.crt"), "--key", &p("admin.key")])
                .arg(format!("{}/readyz", server.url))
                .output()
                .unwrap();
            if out.status.success() {
                break;
            }
            assert!(Instant::now() < deadline, "kube-apiserver not ready (logs in {})", server.dir.0.display());
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }
}

impl Drop for KubeServer {
    fn drop(&mut self) {
        for c in [&mut self.apiserver, &mut self.etcd] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Plays the part of kube-controller-manager and the kubelets, which the lab's and this
/// harness's API servers do not run: every Deployment and DaemonSet that ksctl applied is given
/// the status of a rolled-out workload (generation observed, all replicas up). Runs until
/// dropped. Only the status is written; specs stay as ksctl applied them.
pub struct WorkloadController(tokio::task::JoinHandle<()>);

impl Drop for WorkloadController {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl WorkloadController {
    /// `client` is called until it yields a client (a cluster that does not exist yet has none).
    pub fn start<F, Fut>(client: F) -> Self
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Option<kube::Client>> + Send,
    {
        Self(tokio::spawn(async move {
            let c = loop {
                if let Some(c) = client().await {
                    break c;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            };
            loop {
                let _ = roll_out(&c).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }))
    }
}

/// One pass of [`WorkloadController`].
pub async fn roll_out(c: &kube::Client) -> Result<(), kube::Error> {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
    use kube::api::{Api, ListParams, Patch, PatchParams};
    let ours = ListParams::default().labels("app.kubernetes.io/managed-by=ksctl");
    let pp = PatchParams::default();
    for d in Api::<Deployment>::all(c.clone()).list(&ours).await?.items {
        let (ns, name) =
            (d.metadata.namespace.clone().unwrap_or_default(), d.metadata.name.clone().unwrap_or_default());
        let n = d.spec.replicas.unwrap_or(1);
        let status = serde_json::json!({"status": {
            "observedGeneration": d.metadata.generation, "replicas": n, "updatedReplicas": n,
            "readyReplicas": n, "availableReplicas": n
        }});
        Api::<Deployment>::namespaced(c.clone(), &ns).patch_status(&name, &pp, &Patch::Merge(&status)).await?;
    }
    for d in Api::<DaemonSet>::all(c.clone()).list(&ours).await?.items {
        let (ns, name) =
            (d.metadata.namespace.clone().unwrap_or_default(), d.metadata.name.clone().unwrap_or_default());
        let status = serde_json::json!({"status": {
            "observedGeneration": d.metadata.generation, "currentNumberScheduled": 1, "desiredNumberScheduled": 1,
            "numberMisscheduled": 0, "numberReady": 1, "updatedNumberScheduled": 1, "numberAvailable": 1
        }});
        Api::<DaemonSet>::namespaced(c.clone(), &ns).patch_status(&name, &pp, &Patch::Merge(&status)).await?;
    }
    Ok(())
}
