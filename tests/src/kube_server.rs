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
        Self::start_with(None)
    }

    /// An API server that also asks a webhook token authenticator (`webhook_config`, a
    /// kubeconfig naming it) about bearer tokens, as EKS' asks aws-iam-authenticator.
    pub fn start_with_token_webhook(webhook_config: &str) -> Self {
        Self::start_with(Some(webhook_config))
    }

    fn start_with(webhook_config: Option<&str>) -> Self {
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
        let p = |f: &str| d.join(f).display().to_string();
        let mut webhook = vec![];
        if let Some(config) = webhook_config {
            std::fs::write(d.join("webhook.kubeconfig"), config).unwrap();
            webhook.push(format!("--authentication-token-webhook-config-file={}", p("webhook.kubeconfig")));
            webhook.push("--authentication-token-webhook-version=v1".into());
            // Every token is reviewed: a refused one must not be hidden behind a cached verdict.
            webhook.push("--authentication-token-webhook-cache-ttl=0s".into());
        }
        // Another test may take a port between our probe and etcd's or the API server's bind:
        // then one of them exits, and the pair is started again on new ports.
        for attempt in 1..=3 {
            let (client, peer, port) = (free_port(), free_port(), free_port());
            let log = |name: &str| std::fs::File::create(d.join(name)).unwrap();
            let _ = std::fs::remove_dir_all(d.join("etcd"));
            let etcd = Command::new(&etcd_bin)
                .args(["--data-dir", d.join("etcd").to_str().unwrap()])
                .args(["--listen-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--advertise-client-urls", &format!("http://127.0.0.1:{client}")])
                .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
                .stdout(Stdio::null())
                .stderr(log("etcd.log"))
                .spawn()
                .expect("etcd");
            let apiserver = Command::new(bins.join("kube-apiserver"))
                .args(&webhook)
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
                // As kubeadm and k3s run it: CNIs' node agents are privileged.
                .arg("--allow-privileged=true")
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
            let (mut etcd, mut apiserver) = (etcd, apiserver);
            let deadline = Instant::now() + Duration::from_secs(90);
            loop {
                let out = Command::new("curl")
                    .args(["-sf", "--cacert", &p("ca.crt"), "--cert", &p("admin.crt"), "--key", &p("admin.key")])
                    .arg(format!("{url}/readyz"))
                    .output()
                    .unwrap();
                if out.status.success() {
                    return KubeServer { url, kubeconfig, dir, etcd, apiserver };
                }
                let exited = [&mut etcd, &mut apiserver].into_iter().any(|c| c.try_wait().ok().flatten().is_some());
                if exited || Instant::now() >= deadline {
                    for c in [&mut apiserver, &mut etcd] {
                        let _ = c.kill();
                        let _ = c.wait();
                    }
                    let tail = |f: &str| {
                        let text = std::fs::read_to_string(d.join(f)).unwrap_or_default();
                        let lines: Vec<&str> = text.lines().collect();
                        lines[lines.len().saturating_sub(8)..].join("\n")
                    };
                    let why =
                        format!("etcd.log:\n{}\nkube-apiserver.log:\n{}", tail("etcd.log"), tail("kube-apiserver.log"));
                    assert!(exited && attempt < 3, "kube-apiserver not ready (attempt {attempt}):\n{why}");
                    eprintln!("kube-apiserver or etcd exited (a port taken?); starting again:\n{why}");
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        unreachable!("the last attempt returns or panics")
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
/// harness's API servers do not run: every Deployment, DaemonSet and StatefulSet that ksctl
/// applied is given the status of a rolled-out workload (generation observed, all replicas up),
/// and a namespace being deleted is finalized (without emptying it first). Runs until dropped.
/// Only statuses and finalizers are written; specs stay as ksctl applied them.
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
                let _ = finalize_namespaces(&c).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }))
    }
}

/// Finalizes every namespace being deleted, as the namespace controller does once it emptied
/// one (what was in it stays in etcd, unseen until a namespace of that name comes back).
pub async fn finalize_namespaces(c: &kube::Client) -> Result<(), kube::Error> {
    use k8s_openapi::api::core::v1::Namespace;
    for ns in kube::Api::<Namespace>::all(c.clone()).list(&Default::default()).await?.items {
        if ns.metadata.deletion_timestamp.is_none() {
            continue;
        }
        let name = ns.metadata.name.clone().unwrap_or_default();
        let mut body = ns;
        body.spec = Some(Default::default());
        let req = http::Request::put(format!("/api/v1/namespaces/{name}/finalize"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).expect("a namespace serialises"))
            .expect("a request");
        c.request::<Namespace>(req).await?;
    }
    Ok(())
}

/// One pass of [`WorkloadController`].
pub async fn roll_out(c: &kube::Client) -> Result<(), kube::Error> {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
    rolled_out::<Deployment>(c, |d| {
        let n = d.spec.replicas.unwrap_or(1);
        serde_json::json!({"observedGeneration": d.metadata.generation, "replicas": n, "updatedReplicas": n,
            "readyReplicas": n, "availableReplicas": n})
    })
    .await?;
    rolled_out::<DaemonSet>(c, |d| {
        serde_json::json!({"observedGeneration": d.metadata.generation, "currentNumberScheduled": 1,
            "desiredNumberScheduled": 1, "numberMisscheduled": 0, "numberReady": 1, "updatedNumberScheduled": 1,
            "numberAvailable": 1})
    })
    .await?;
    rolled_out::<StatefulSet>(c, |s| {
        let n = s.spec.replicas.unwrap_or(1);
        serde_json::json!({"observedGeneration": s.metadata.generation, "replicas": n, "readyReplicas": n,
            "currentReplicas": n, "updatedReplicas": n})
    })
    .await
}

/// Gives every workload of kind `K` that ksctl applied the status `status` makes for it.
async fn rolled_out<K>(c: &kube::Client, status: impl Fn(&K) -> serde_json::Value) -> Result<(), kube::Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    use kube::api::{Api, ListParams, Patch, PatchParams};
    let ours = ListParams::default().labels("app.kubernetes.io/managed-by=ksctl");
    for w in Api::<K>::all(c.clone()).list(&ours).await?.items {
        let (ns, name) = (w.meta().namespace.clone().unwrap_or_default(), w.meta().name.clone().unwrap_or_default());
        let body = serde_json::json!({"status": status(&w)});
        Api::<K>::namespaced(c.clone(), &ns).patch_status(&name, &PatchParams::default(), &Patch::Merge(&body)).await?;
    }
    Ok(())
}
