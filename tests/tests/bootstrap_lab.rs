//! The bootstrap over SSH on the lab's real hosts (sshd in network namespaces), end to end
//! through the bus with the `byo` provider: HAProxy, a 3-member etcd cluster with TLS from
//! certificates made in Rust, k3s servers and agents, then ksctl's objects installed through the
//! load balancer with `kube` (the k8s phase), scale up and down, delete.
//!
//! k3s itself cannot be had on this machine. Through ksctl's artifact source
//! (`KSCTL_ARTIFACTS_URL`) the lab serves a stand-in installer (`tests/lab/k3s-standin.sh`) that
//! runs the Debian-built kube-apiserver against the etcd cluster the bootstrap made, so the API
//! these tests reach through the load balancer is a real Kubernetes API server; Nodes are
//! registered objects (no kubelet runs). With no controller manager either, the tests' own
//! `WorkloadController` gives ksctl's Deployments the status of a finished roll-out, so that the
//! k8s phase's readiness wait can end.
use ksctl_core::ClusterId;
use ksctl_core::keys;
use ksctl_core::messages::{Event, EventKind};
use ksctl_core::records::BootstrapRecord;
use ksctl_core::saga::Phase;
use ksctl_tests::kube_server::WorkloadController;
use ksctl_tests::lab::Lab;
use ksctl_tests::{System, SystemOptions, TempDir, eventually, progress_at, wait_event};
use std::collections::BTreeMap;
use std::time::Duration;

const T: Duration = Duration::from_secs(240);

struct Env {
    lab: Lab,
    sys: System,
    specs: TempDir,
    _keys: TempDir,
    controllers: std::sync::Mutex<Vec<WorkloadController>>,
}

async fn setup(hosts: usize, extra: Vec<(String, String, String)>) -> Env {
    let mut lab = Lab::start(hosts);
    let mirror = lab.k3s_mirror();
    let keys = TempDir::new("boot-keys");
    std::fs::write(keys.0.join("lab"), &lab.key_pem).unwrap();
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    let mut env = vec![
        s("ksctl-cloud-controller", "KSCTL_BYO_KEYS_DIR", &keys.0.display().to_string()),
        s("ksctl-bootstrap-controller", "KSCTL_ARTIFACTS_URL", &mirror),
        s("ksctl-manager", "KSCTL_PROVIDERS", "sim,byo"),
    ];
    env.extend(extra);
    let sys = System::start(SystemOptions { env, ..Default::default() }).await;
    Env { lab, sys, specs: TempDir::new("boot-specs"), _keys: keys, controllers: Default::default() }
}

/// LB on host 0, etcd on 1–3, control planes on 4–6, workers on `workers` (the first
/// `worker_nodes` in use, the rest spares for scale-up).
fn spec(name: &str, lab: &Lab, worker_nodes: u32, workers: &[usize]) -> String {
    let host = |i: usize| serde_json::json!({"address": lab.hosts[i].ip});
    serde_json::json!({
        "cluster_name": name, "region": "lab", "cloud_provider": "byo", "cluster_type": "selfmanaged",
        "kubernetes_distro": "k3s", "kubernetes_version": "1.31",
        "control_plane_nodes": 3, "datastore_nodes": 3, "worker_nodes": worker_nodes,
        "hosts": {
            "ssh_key": "lab",
            "load_balancer": host(0),
            "datastores": [host(1), host(2), host(3)],
            "control_planes": [host(4), host(5), host(6)],
            "workers": workers.iter().map(|i| host(*i)).collect::<Vec<_>>()
        }
    })
    .to_string()
}

async fn create(e: &Env, name: &str, spec: String) {
    let f = e.specs.0.join(format!("{name}.json"));
    std::fs::write(&f, spec).unwrap();
    let (code, out, err) = e.sys.ksctl(&["cluster", "create", "-f", f.to_str().unwrap(), "--no-wait"]).await;
    assert_eq!(code, 0, "{out}{err}");
    // Stands in for the controller manager once the cluster has a kubeconfig.
    let (store, key, id) = (e.sys.store.clone(), e.sys.seal_key.clone(), ClusterId::new(name).unwrap());
    let controller = WorkloadController::start(move || {
        let (store, key, id) = (store.clone(), key.clone(), id.clone());
        async move {
            let rec: BootstrapRecord = ksctl_store::get_json(store.as_ref(), &keys::bootstrap(&id)).await.ok()??.0;
            let sealer = ksctl_core::seal::Sealer::from_base64(&key).ok()?;
            let kc = sealer.open_string(&format!("kubeconfig/{id}"), rec.kubeconfig.as_ref()?).ok()?;
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            ksctl_k8s_controller::kube_api::client_from(&kc).await.ok()
        }
    });
    e.controllers.lock().unwrap().push(controller);
}

/// Every write of a client (not the API server's own controllers, `system:apiserver`) that the cluster's
/// API servers answered, from their audit logs: (verb, resource, namespace, name, response code).
fn audited_writes(
    lab: &Lab,
    control_planes: std::ops::RangeInclusive<usize>,
) -> Vec<(String, String, String, String, u64, String)> {
    let mut out = Vec::new();
    for i in control_planes {
        for line in lab.read(i, "/var/log/k3s-standin-audit.log").unwrap_or_default().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let s = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_string();
            let o = &v["objectRef"];
            let code = v["responseStatus"]["code"].as_u64().unwrap_or(0);
            if s(&v["user"]["username"]) == "system:apiserver" {
                continue;
            }
            // The object's URL path, to look it up afterwards.
            let (group, version, ns) = (s(&o["apiGroup"]), s(&o["apiVersion"]), s(&o["namespace"]));
            let root = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
            // A namespace's own entry names itself as its namespace.
            let scoped = !ns.is_empty() && s(&o["resource"]) != "namespaces";
            let scope = if scoped { format!("/namespaces/{ns}") } else { String::new() };
            let path = format!("{root}{scope}/{}/{}", s(&o["resource"]), s(&o["name"]));
            out.push((s(&v["verb"]), s(&o["resource"]), ns, s(&o["name"]), code, path));
        }
    }
    out
}

async fn bootstrap_record(sys: &System, name: &str) -> BootstrapRecord {
    let id = ClusterId::new(name).unwrap();
    ksctl_store::get_json(sys.store.as_ref(), &keys::bootstrap(&id)).await.unwrap().map(|(r, _)| r).unwrap_or_default()
}

/// Calls the Kubernetes API the way a kubeconfig says: its server, CA and client certificate.
struct Api {
    server: String,
    dir: TempDir,
}

impl Api {
    fn new(kubeconfig: &str) -> Self {
        use base64::Engine;
        let v: serde_yaml::Value = serde_yaml::from_str(kubeconfig).unwrap();
        let dir = TempDir::new("api");
        let b64 =
            |x: &serde_yaml::Value| base64::engine::general_purpose::STANDARD.decode(x.as_str().unwrap()).unwrap();
        std::fs::write(dir.0.join("ca"), b64(&v["clusters"][0]["cluster"]["certificate-authority-data"])).unwrap();
        std::fs::write(dir.0.join("crt"), b64(&v["users"][0]["user"]["client-certificate-data"])).unwrap();
        std::fs::write(dir.0.join("key"), b64(&v["users"][0]["user"]["client-key-data"])).unwrap();
        Api { server: v["clusters"][0]["cluster"]["server"].as_str().unwrap().to_string(), dir }
    }

    /// (HTTP status, body); status 0 when nothing answered.
    fn get(&self, path: &str) -> (u16, String) {
        let d = &self.dir.0;
        let out = std::process::Command::new("curl")
            .args(["-s", "-m", "5", "-w", "\n%{http_code}", "--cacert"])
            .arg(d.join("ca"))
            .arg("--cert")
            .arg(d.join("crt"))
            .arg("--key")
            .arg(d.join("key"))
            .arg(format!("{}{path}", self.server))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Node name → taint keys.
    fn nodes(&self) -> BTreeMap<String, Vec<String>> {
        let (code, body) = self.get("/api/v1/nodes");
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                let taints = n["spec"]["taints"].as_array().cloned().unwrap_or_default();
                let keys = taints.iter().map(|t| t["key"].as_str().unwrap().to_string()).collect();
                (n["metadata"]["name"].as_str().unwrap().to_string(), keys)
            })
            .collect()
    }
}

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// How often each step ran on host `i`, from its step history.
fn step_runs(lab: &Lab, i: usize) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for line in lab.read(i, "/var/lib/ksctl/steps.log").unwrap_or_default().lines() {
        if let Some(step) = line.split_whitespace().nth(1) {
            *m.entry(step.to_string()).or_default() += 1;
        }
    }
    m
}

fn port_open(ip: &str, port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&format!("{ip}:{port}").parse().unwrap(), Duration::from_secs(1)).is_ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn k3s_ha_on_lab_hosts_etcd_tls_haproxy_kubeconfig_scale_delete() {
    let e = setup(9, vec![]).await;
    let (lab, sys) = (&e.lab, &e.sys);
    create(&e, "edge", spec("edge", lab, 1, &[7, 8])).await;
    sys.wait_state("edge", "running", T).await;
    let ip = |i: usize| lab.hosts[i].ip.clone();

    // etcd: three members, healthy, over TLS only, client certificates required.
    let eps = format!("https://{}:2379,https://{}:2379,https://{}:2379", ip(1), ip(2), ip(3));
    let etcdctl = format!(
        "ETCDCTL_API=3 etcdctl --endpoints={eps} --cacert=/etc/ksctl/etcd/ca.crt --cert=/etc/ksctl/etcd/client.crt --key=/etc/ksctl/etcd/client.key"
    );
    let health = ok(lab.exec(1, &format!("{etcdctl} endpoint health 2>&1")));
    assert_eq!(health.matches("is healthy").count(), 3, "{health}");
    let members = ok(lab.exec(2, &format!("{etcdctl} member list")));
    assert_eq!(members.lines().count(), 3, "{members}");
    assert!(members.lines().all(|l| l.contains(", started, ksctl-edge-vm-ds-")), "{members}");
    let anonymous = lab.exec(1, &format!("curl -sf --cacert /etc/ksctl/etcd/ca.crt https://{}:2379/version", ip(3)));
    assert!(!anonymous.status.success(), "etcd must refuse clients without a certificate");
    let plain = lab.exec(1, &format!("curl -sf http://{}:2379/version", ip(1)));
    assert!(!plain.status.success(), "etcd must not speak plain HTTP");

    // HAProxy balances the three control planes.
    let cfg = lab.read(0, "/etc/ksctl/haproxy.cfg").unwrap();
    for i in 4..=6 {
        assert!(cfg.contains(&format!("{}:6443 check", ip(i))), "{cfg}");
    }

    // The kubeconfig from `switch` reaches the API through the load balancer.
    let (code, kubeconfig, err) = sys.ksctl(&["cluster", "switch", "edge", "--print"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(kubeconfig.contains(&format!("server: https://{}:6443", ip(0))), "{kubeconfig}");
    assert!(kubeconfig.contains("current-context: edge-lab-selfmanaged-byo-ksctl"), "{kubeconfig}");
    let api = Api::new(&kubeconfig);
    let (code, body) = api.get("/healthz");
    assert_eq!((code, body.as_str()), (200, "ok"));
    let nodes = api.nodes();
    let names: Vec<&str> = nodes.keys().map(String::as_str).collect();
    assert_eq!(names, ["edge-vm-cp-0", "edge-vm-cp-1", "edge-vm-cp-2", "edge-vm-wp-0"]);
    for cp in ["edge-vm-cp-0", "edge-vm-cp-1", "edge-vm-cp-2"] {
        assert!(nodes[cp].contains(&"CriticalAddonsOnly".to_string()), "{cp}: {:?}", nodes[cp]);
    }
    assert!(!nodes["edge-vm-wp-0"].contains(&"CriticalAddonsOnly".to_string()));

    // The k8s phase installed ksctl's objects through the load balancer (server-side apply).
    let (code, body) = api.get("/api/v1/namespaces/ksctl-system/configmaps/cluster-config");
    assert_eq!(code, 200, "{body}");
    let cm: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(cm["immutable"], true);
    assert_eq!((cm["data"]["provider"].as_str(), cm["data"]["distro"].as_str()), (Some("byo"), Some("k3s")));
    assert_eq!(cm["metadata"]["managedFields"][0]["manager"], "ksctl");
    for path in [
        "/api/v1/namespaces/ksctl-system/serviceaccounts/ksctl-agent",
        "/apis/rbac.authorization.k8s.io/v1/clusterroles/ksctl-agent",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/ksctl-system/rolebindings/ksctl-agent",
    ] {
        assert_eq!(api.get(path).0, 200, "{path}");
    }

    let (code, body) = api.get("/apis/apps/v1/namespaces/ksctl-system/deployments/ksctl-agent");
    assert_eq!(code, 200, "{body}");
    assert_eq!(api.get("/api/v1/namespaces/ksctl-system/secrets/ksctl-agent-bus").0, 200);
    assert_eq!(api.get("/apis/app.ksctl.io/v1/namespaces/ksctl-system/stacks").0, 200, "the Stack CRD is served");

    // An addon through the bus, the k8s-controller and the load balancer: enabled (its
    // aggregated API registered, its Stack recorded), then disabled (gone).
    let (code, out, err) = sys.ksctl(&["cluster", "addons", "enable", "edge", "metrics-server"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(api.get("/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io").0, 200);
    assert_eq!(api.get("/apis/app.ksctl.io/v1/namespaces/ksctl-system/stacks/metrics-server").0, 200);
    let (code, body) = api.get("/apis/manage.ksctl.io/v1/namespaces/ksctl-system/clusteraddons/addons");
    assert!(code == 200 && body.contains("\"v0.7.2\""), "{body}");
    let (code, out, err) = sys.ksctl(&["cluster", "addons", "disable", "edge", "metrics-server"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(api.get("/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.metrics.k8s.io").0, 404);
    assert_eq!(api.get("/apis/apps/v1/namespaces/kube-system/deployments/metrics-server").0, 404);

    // Secrets are sealed in state: the CA key is kept (for renewals) but never in clear.
    let rec = bootstrap_record(sys, "edge").await;
    assert!(rec.ca_key.is_some() && rec.etcd_pki.is_some() && rec.join_token.is_some() && rec.kubeconfig.is_some());
    // Each field opens with the system's key to the real secret, and no secret appears in the
    // stored JSON. (Not a search for "K10": base64 ciphertext contains it by chance.)
    let raw = serde_json::to_string(&rec).unwrap();
    let sealer = ksctl_core::seal::Sealer::from_base64(&sys.seal_key).unwrap();
    let id = ClusterId::new("edge").unwrap();
    let open = |purpose: &str, s: &Option<ksctl_core::seal::Sealed>| {
        sealer.open_string(&format!("{purpose}/{id}"), s.as_ref().unwrap()).unwrap()
    };
    let (ca_key, token, kc) =
        (open("ca-key", &rec.ca_key), open("join-token", &rec.join_token), open("kubeconfig", &rec.kubeconfig));
    assert!(ca_key.contains("PRIVATE KEY") && token.len() >= 16 && kc.contains("client-key-data"));
    for secret in [ca_key.as_str(), token.as_str(), kc.as_str(), "PRIVATE KEY"] {
        assert!(!raw.contains(secret), "a secret in clear in the bootstrap record: {raw}");
    }

    // Each step ran once on each host.
    for i in 0..=7 {
        let runs = step_runs(lab, i);
        assert_eq!(runs.len(), 1, "host {i}: {runs:?}");
        assert!(runs.values().all(|n| *n == 1), "host {i}: {runs:?}");
    }
    assert!(step_runs(lab, 8).is_empty(), "the spare is untouched");

    // One control plane down: once the health checks (every 5 s, down after 3) have had their
    // time, every request through the load balancer still succeeds. (HAProxy also retries a
    // refused connection, so this holds even with checks slowed to 600 s: it shows the LB keeps
    // serving, not which of the two mechanisms did it.)
    ok(lab.exec(4, "kill $(cat /run/k3s-standin.pid)"));
    tokio::time::sleep(Duration::from_secs(18)).await;
    for n in 0..12 {
        let (code, body) = api.get("/readyz");
        assert_eq!(code, 200, "request {n} through the LB with cp-0 down: {body}");
    }

    // Scale up onto the spare host: it joins through the load balancer as a new node.
    let (code, out, err) = sys.ksctl(&["cluster", "scale", "edge", "--workers", "2"]).await;
    assert_eq!(code, 0, "{out}{err}");
    sys.wait_state("edge", "running", T).await;
    assert!(api.nodes().contains_key("edge-vm-wp-1"));
    assert_eq!(step_runs(lab, 8).get("k3s-agent-join"), Some(&1));
    assert_eq!(step_runs(lab, 7).get("k3s-agent-join"), Some(&1), "wp-0 was not joined again");
    // Beyond the listed hosts: a clear refusal, nothing changes.
    let (code, out, err) = sys.ksctl(&["cluster", "scale", "edge", "--workers", "3"]).await;
    assert_ne!(code, 0);
    assert!(format!("{out}{err}").contains("lists 2 worker hosts"), "{out}{err}");

    // Scale down: the node is drained and deleted, then ksctl's software leaves the host.
    let (code, out, err) = sys.ksctl(&["cluster", "scale", "edge", "--workers", "1"]).await;
    assert_eq!(code, 0, "{out}{err}");
    sys.wait_state("edge", "running", T).await;
    let nodes = api.nodes();
    assert!(!nodes.contains_key("edge-vm-wp-1") && nodes.contains_key("edge-vm-wp-0"), "{nodes:?}");
    assert_clean(lab, 8..=8);

    // Delete: ksctl's software leaves every host; the machines stay.
    let (code, out, err) = sys.ksctl(&["cluster", "delete", "edge"]).await;
    assert_eq!(code, 0, "{out}{err}");
    sys.wait_gone("edge", T).await;
    assert_clean(lab, 0..=7);
}

/// Nothing of ksctl's is left on hosts `range`: no files, no listeners; sshd still answers.
fn assert_clean(lab: &Lab, range: std::ops::RangeInclusive<usize>) {
    for i in range {
        for path in
            ["/etc/ksctl", "/var/lib/ksctl", "/var/lib/rancher", "/etc/rancher", "/usr/local/bin/kube-apiserver"]
        {
            assert!(!lab.exists(i, path), "host {i} still has {path}");
        }
        for port in [2379, 2380, 6443] {
            assert!(!port_open(&lab.hosts[i].ip, port), "host {i} still listens on {port}");
        }
        assert!(port_open(&lab.hosts[i].ip, 22), "host {i}: the machine stays");
    }
}

/// kill -9 of the bootstrap-controller while the other control planes and the worker are being
/// installed (the moment cp-1's API server process starts), then of the k8s-controller in the
/// middle of its install (after its third component); after each restart the create goes on and
/// completes. No step checkpointed before the kill ran again on its host (each host's step
/// history counts the runs), and every object of ksctl's was created exactly once and never
/// deleted (the API servers' audit logs count the writes).
#[tokio::test(flavor = "multi_thread")]
async fn killed_bootstrap_and_k8s_controllers_resume_without_redoing_work() {
    let mut e = setup(8, vec![]).await;
    let mut events = e.sys.client.subscribe("ksctl.events.crash.>").await.unwrap();
    create(&e, "crash", spec("crash", &e.lab, 1, &[7])).await;
    // The moment the second control plane's API server has started (its step still waits for
    // it to be ready): the re-run must cope with a server left running by the killed one.
    let done_at_kill = eventually(T, "cp-1's API server to start", || async {
        let started = e.lab.exists(5, "/run/k3s-standin.pid");
        let done = bootstrap_record(&e.sys, "crash").await.steps_done;
        started.then_some(done)
    })
    .await;
    e.sys.kill9("ksctl-bootstrap-controller");
    // Whatever finished after the snapshot and before the kill also counts as finished.
    let done_at_kill = {
        let mut all = done_at_kill;
        all.extend(bootstrap_record(&e.sys, "crash").await.steps_done);
        all
    };
    assert!(done_at_kill.len() >= 5, "LB, 3 etcd and cp-0 were done: {done_at_kill:?}");
    e.sys.restart("ksctl-bootstrap-controller");

    wait_event(&mut events, T, "the third component of the install", progress_at(Phase::K8sInstall, 3)).await;
    e.sys.kill9("ksctl-k8s-controller");
    tokio::time::sleep(Duration::from_millis(300)).await;
    e.sys.restart("ksctl-k8s-controller");
    e.sys.wait_state("crash", "running", T).await;
    let mut k8s_starts = 1; // the one before the kill, already consumed by wait_event
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_millis(200), futures::StreamExt::next(&mut events)).await
    {
        let ev: Event = serde_json::from_slice(&m.payload).unwrap();
        k8s_starts += (ev.kind == EventKind::PhaseStarted && ev.phase == Some(Phase::K8sInstall)) as u32;
    }
    assert!(k8s_starts >= 2, "the install ran again after the kill ({k8s_starts} starts)");
    let writes = audited_writes(&e.lab, 4..=6);
    let ours = |ns: &str, name: &str| {
        ns == "ksctl-system" || name == "ksctl-system" || name == "ksctl-agent" || name.ends_with(".ksctl.io")
    };
    // Every write of each of our objects, and how many of them created it (201).
    let mut created = BTreeMap::<String, (usize, Vec<(String, u64)>, String)>::new();
    for (verb, resource, ns, name, code, path) in &writes {
        if ours(ns, name) {
            assert_ne!(verb, "delete", "{resource} {ns}/{name} was deleted during the create");
            let entry = created.entry(format!("{resource} {ns}/{name}")).or_default();
            entry.0 += (*code == 201) as usize;
            entry.1.push((verb.clone(), *code));
            entry.2 = path.clone();
        }
    }
    // namespace, SA, ClusterRole(+Binding), Role(+Binding), 2 CRDs, ConfigMap, Secret,
    // Deployment, Service, ClusterAddon.
    assert_eq!(created.len(), 13, "{created:#?}");
    assert!(created.values().all(|(n, _, _)| *n <= 1), "created more than once: {created:#?}");
    // The write in flight at the kill may have created its object without a 201 reaching the
    // audit log (the client was gone); the restarted install then finds it (200). At most that
    // one object lacks its 201, and every object exists at the end (checked below).
    let unconfirmed: Vec<_> = created.iter().filter(|(_, (n, _, _))| *n == 0).collect();
    assert!(unconfirmed.len() <= 1, "objects never created with a 201: {unconfirmed:#?}");
    eprintln!("objects whose create was in flight at the kill: {unconfirmed:?}");

    let rec = bootstrap_record(&e.sys, "crash").await;
    assert_eq!(rec.steps_done.len(), 8, "{:?}", rec.steps_done);
    let names = ["lb-0", "ds-0", "ds-1", "ds-2", "cp-0", "cp-1", "cp-2", "wp-0"];
    let mut reruns = 0;
    for (i, short) in names.iter().enumerate() {
        let runs = step_runs(&e.lab, i);
        assert_eq!(runs.len(), 1, "host {i}: {runs:?}");
        let (step, n) = runs.iter().next().unwrap();
        let finished = done_at_kill.iter().any(|k| k.starts_with(&format!("{step}@crash-vm-{short}/")));
        if finished {
            assert_eq!(*n, 1, "{step} on {short} finished before the kill and ran again");
        } else {
            assert!(*n <= 2, "{step} on {short} ran {n} times");
            reruns += n - 1;
        }
    }
    eprintln!("steps finished before the kill: {}; in-flight steps run again: {reruns}", done_at_kill.len());
    let (code, kubeconfig, _) = e.sys.ksctl(&["cluster", "switch", "crash", "--print"]).await;
    assert_eq!(code, 0);
    let api = Api::new(&kubeconfig);
    assert_eq!(api.nodes().len(), 4);
    for (object, (_, _, path)) in &created {
        assert_eq!(api.get(path).0, 200, "{object} ({path}) exists after the create");
    }
}

/// `scripts/bench-bootstrap.sh`: the same HA k3s bootstrap of 8 hosts (1 LB, 3 etcd, 3 control
/// planes, 1 worker) with a wave's hosts worked on in parallel (the default) and one at a time
/// (`KSCTL_BOOTSTRAP_PARALLEL_HOSTS=1`); prints the bootstrap phase's wall time for each and
/// their ratio.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run by scripts/bench-bootstrap.sh"]
async fn bench_bootstrap_parallel_vs_serial() {
    use ksctl_core::saga::Phase;
    let mut secs = Vec::new();
    for parallel in ["16", "1"] {
        let env = vec![("ksctl-bootstrap-controller".into(), "KSCTL_BOOTSTRAP_PARALLEL_HOSTS".into(), parallel.into())];
        let e = setup(8, env).await;
        create(&e, "bench", spec("bench", &e.lab, 1, &[7])).await;
        let phase = |p: Phase| {
            let sys = &e.sys;
            async move {
                eventually(T, "the phase to finish", || async {
                    let rec = sys.cluster("bench").await?;
                    let op = rec.operation.as_ref().or(rec.last_operation.as_ref())?;
                    op.phases_done.contains(&p).then(std::time::Instant::now)
                })
                .await
            }
        };
        let started = phase(Phase::CloudCreate).await;
        let finished = phase(Phase::Bootstrap).await;
        e.sys.wait_state("bench", "running", T).await;
        secs.push((finished - started).as_secs_f64());
    }
    println!(
        "bootstrap, 8 hosts (1 LB, 3 etcd, 3 control planes, 1 worker), k3s stand-in:\n  \
         parallel waves   {:>6.1} s\n  one host at once {:>6.1} s\n  serial / parallel {:>5.2}x",
        secs[0],
        secs[1],
        secs[1] / secs[0]
    );
}
