//! kubeadm clusters on real nodes: kubelets, containerd, pods — through the bus, on the node lab
//! (`ksctl_tests::node_lab`: Docker containers with systemd, one per host) with the lab's
//! air-gapped mirror. Nothing here is a stand-in for Kubernetes: ksctl installs kubelet,
//! kubeadm and kubectl 1.20.2 from the lab's signed apt repository (`KSCTL_ARTIFACTS_URL`), every
//! image comes from the lab's registry (`KSCTL_IMAGE_REGISTRY`), `kubeadm init` runs on the first
//! control plane through HAProxy with ksctl's external TLS etcd and CA, the others join, and
//! the kubelets register their Nodes.
//!
//! What the lab supplies because this machine cannot: the pod network (`cni: none`; a bridge +
//! host-local configuration with routes between the hosts, see `node_lab`), and no CoreDNS
//! (no source of it here: its pods stay unpulled; nothing below needs cluster DNS).
use ksctl_core::messages::ClusterInfo;
use ksctl_tests::node_lab::NodeLab;
use ksctl_tests::{System, SystemOptions, TempDir};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(900);
const LB: usize = 0;
const CP0: usize = 4;
/// Hosts of the workers, in the order the spec lists them: two at first, the third a spare.
const WORKERS: [usize; 3] = [7, 8, 9];

struct Env {
    lab: NodeLab,
    sys: System,
    specs: TempDir,
    _keys: TempDir,
}

async fn setup(hosts: usize, extra: Vec<(String, String, String)>) -> Env {
    let mut lab = NodeLab::start(hosts);
    let files = lab.artifacts_url();
    let registry = lab.registry();
    let agent = std::process::Command::new("bash")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/agent-image.sh"))
        .args([&registry, "ksctl-rs:lab"])
        .output()
        .expect("agent image");
    assert!(agent.status.success(), "agent image: {}", String::from_utf8_lossy(&agent.stderr));
    let keys = TempDir::new("node-keys");
    std::fs::write(keys.0.join("lab"), &lab.key_pem).unwrap();
    let s = |a: &str, b: &str, c: &str| (a.to_string(), b.to_string(), c.to_string());
    let mut env = vec![
        s("ksctl-cloud-controller", "KSCTL_BYO_KEYS_DIR", &keys.0.display().to_string()),
        s("ksctl-bootstrap-controller", "KSCTL_ARTIFACTS_URL", &files),
        s("ksctl-k8s-controller", "KSCTL_AGENT_IMAGE", "ksctl-rs:lab"),
        s("ksctl-manager", "KSCTL_PROVIDERS", "sim,byo"),
        // Real nodes take minutes to join; the k8s phase waits for the agent's pod.
        s("ksctl-k8s-controller", "KSCTL_READY_TIMEOUT_SECS", "600"),
    ];
    env.extend(extra);
    for svc in ["ksctl-bootstrap-controller", "ksctl-k8s-controller"] {
        env.push(s(svc, "KSCTL_IMAGE_REGISTRY", &registry));
        env.push(s(svc, "KSCTL_IMAGE_REGISTRY_PLAIN_HTTP", "true"));
    }
    let sys =
        System::start(SystemOptions { env, agent_nats_host: Some(lab.gateway.clone()), ..Default::default() }).await;
    Env { lab, sys, specs: TempDir::new("node-specs"), _keys: keys }
}

fn spec(name: &str, lab: &NodeLab, workers: u32, worker_hosts: &[usize]) -> String {
    let host = |i: usize| serde_json::json!({"address": lab.hosts[i].ip});
    serde_json::json!({
        "cluster_name": name, "region": "lab", "cloud_provider": "byo", "cluster_type": "selfmanaged",
        "kubernetes_distro": "kubeadm", "kubernetes_version": "1.20.2", "cni": "none",
        "control_plane_nodes": 3, "datastore_nodes": 3, "worker_nodes": workers,
        "hosts": {
            "ssh_key": "lab",
            "load_balancer": host(LB),
            "datastores": [host(1), host(2), host(3)],
            "control_planes": [host(CP0), host(5), host(6)],
            "workers": worker_hosts.iter().map(|i| host(*i)).collect::<Vec<_>>()
        }
    })
    .to_string()
}

/// `kubectl` with the admin kubeconfig on the first control plane.
fn kubectl(lab: &NodeLab, args: &str) -> String {
    lab.ok(CP0, &format!("kubectl --kubeconfig /etc/kubernetes/admin.conf {args}"))
}

fn kubectl_json(lab: &NodeLab, args: &str) -> serde_json::Value {
    serde_json::from_str(&kubectl(lab, &format!("{args} -o json"))).unwrap()
}

/// Node name → (kubelet version, Ready).
fn nodes(lab: &NodeLab) -> BTreeMap<String, (String, bool)> {
    let v = kubectl_json(lab, "get nodes");
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let ready = n["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let version = n["status"]["nodeInfo"]["kubeletVersion"].as_str().unwrap().to_string();
            (n["metadata"]["name"].as_str().unwrap().to_string(), (version, ready))
        })
        .collect()
}

/// Every Node condition other than Ready that is True (DiskPressure, MemoryPressure, …), as
/// "node: type (message)".
fn node_pressure(lab: &NodeLab) -> Vec<String> {
    let v = kubectl_json(lab, "get nodes");
    let mut out = vec![];
    for n in v["items"].as_array().unwrap() {
        for c in n["status"]["conditions"].as_array().unwrap() {
            if c["type"] != "Ready" && c["status"] == "True" {
                out.push(format!("{}: {} ({})", n["metadata"]["name"], c["type"], c["message"]));
            }
        }
    }
    out
}

/// Pods of the test workload: (name, node, phase, pod IP).
fn web_pods(lab: &NodeLab) -> Vec<(String, String, String, String)> {
    let v = kubectl_json(lab, "-n default get pods -l app=web");
    let s = |x: &serde_json::Value| x.as_str().unwrap_or_default().to_string();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"].get("deletionTimestamp").is_none())
        .map(|p| {
            (s(&p["metadata"]["name"]), s(&p["spec"]["nodeName"]), s(&p["status"]["phase"]), s(&p["status"]["podIP"]))
        })
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// How often each step ran on host `i` (`ksctl_step` lines of its step history).
fn step_runs(lab: &NodeLab, i: usize) -> BTreeMap<String, usize> {
    let log = lab.exec(i, "cat /var/lib/ksctl/steps.log");
    let mut m = BTreeMap::new();
    for line in String::from_utf8_lossy(&log.stdout).lines() {
        if let Some(step) = line.split_whitespace().nth(1) {
            *m.entry(step.to_string()).or_default() += 1;
        }
    }
    m
}

/// Waits until host `i` is inside `step`, past `marker` (a file the step makes midway).
async fn wait_inside(lab: &NodeLab, i: usize, step: &str, marker: &str) {
    let deadline = Instant::now() + T;
    loop {
        if step_runs(lab, i).contains_key(step) && lab.exec(i, &format!("test -e {marker}")).status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "host {i} never got inside {step}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Nothing of Kubernetes or ksctl is left on host `i`; sshd still answers.
/// What is left of Kubernetes on host `i` (nothing, once ksctl removed it from the host).
fn leftovers(lab: &NodeLab, i: usize) -> Vec<String> {
    let h = &lab.hosts[i].name;
    let mut left = vec![];
    let mut check = |ok: bool, what: String| {
        if !ok {
            left.push(format!("{h}: {what}"));
        }
    };
    for path in
        ["/etc/ksctl", "/var/lib/ksctl", "/etc/kubernetes", "/var/lib/kubelet", "/usr/bin/kubelet", "/var/lib/cni"]
    {
        check(!lab.exec(i, &format!("test -e {path}")).status.success(), format!("still has {path}"));
    }
    check(!lab.exec(i, "systemctl is-active --quiet kubelet").status.success(), "kubelet runs".into());
    // The packages ksctl installed are purged, its apt source and key gone.
    let pkgs = lab.exec(
        i,
        "dpkg-query -W -f='${Status}\\n' kubelet kubeadm kubectl kubernetes-cni cri-tools 2>/dev/null | grep -c '^install ok installed$'",
    );
    let pkgs = String::from_utf8_lossy(&pkgs.stdout).trim().to_string();
    check(pkgs == "0", format!("{pkgs} Kubernetes packages are still installed"));
    for path in ["/etc/apt/sources.list.d/ksctl-kubernetes.list", "/etc/apt/keyrings/ksctl-kubernetes.gpg"] {
        check(!lab.exec(i, &format!("test -e {path}")).status.success(), format!("still has {path}"));
    }
    check(!lab.exec(i, "ip link show cni0").status.success(), "the CNI bridge is still there".into());
    let rules = lab.ok(i, "iptables-save; ip6tables-save");
    let kube_rules: Vec<&str> = rules.lines().filter(|l| l.contains("KUBE-")).take(5).collect();
    check(kube_rules.is_empty(), format!("Kubernetes' iptables rules are still there: {kube_rules:?}"));
    check(!lab.exec(i, "systemctl is-active --quiet containerd").status.success(), "containerd runs".into());
    let blobs = lab.ok(i, "ls /var/lib/containerd/io.containerd.content.v1.content/blobs/sha256 2>/dev/null | wc -l");
    check(blobs.trim() == "0", format!("containerd still holds {} blobs", blobs.trim()));
    for port in [2379, 2380, 6443, 10250] {
        let listens = lab.exec(i, &format!("ss -Hltnp sport = :{port}"));
        let listens = String::from_utf8_lossy(&listens.stdout).trim().to_string();
        check(listens.is_empty(), format!("listens on {port}: {listens}"));
    }
    check(std::net::TcpStream::connect((lab.hosts[i].ip.as_str(), 22)).is_ok(), "the machine is gone".into());
    left
}

/// Every host in `hosts` is clean; otherwise every leftover of every host is named at once.
fn assert_clean(lab: &NodeLab, hosts: impl IntoIterator<Item = usize>) {
    let left: Vec<String> = hosts.into_iter().flat_map(|i| leftovers(lab, i)).collect();
    assert!(left.is_empty(), "left on the hosts:\n{}", left.join("\n"));
}

const WORKLOAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: web
        image: __REGISTRY__/ksctl-lab/busybox:1
        command: ["httpd", "-f", "-p", "8080", "-h", "/www"]
        readinessProbe: {httpGet: {path: /, port: 8080}, periodSeconds: 2}
---
apiVersion: policy/v1beta1
kind: PodDisruptionBudget
metadata: {name: web, namespace: default}
spec:
  minAvailable: 2
  selector: {matchLabels: {app: web}}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn kubeadm_ha_on_real_nodes_runs_pods_drains_scales_and_deletes() {
    let mut e = setup(10, vec![]).await;
    let f = e.specs.0.join("metal.json");
    std::fs::write(&f, spec("metal", &e.lab, 2, &WORKERS)).unwrap();
    let (code, out, err) = e.sys.ksctl(&["cluster", "create", "-f", f.to_str().unwrap(), "--no-wait"]).await;
    assert_eq!(code, 0, "{out}{err}");

    // kill -9 of the bootstrap-controller while `kubeadm init` runs (its static pods written),
    // and again while a worker joins (its kubelet bootstrapping); each time it is restarted.
    wait_inside(&e.lab, CP0, "kubeadm-init-ran", "/etc/kubernetes/manifests/kube-apiserver.yaml").await;
    e.sys.kill9("ksctl-bootstrap-controller");
    e.sys.restart("ksctl-bootstrap-controller");
    wait_inside(&e.lab, WORKERS[0], "kubeadm-worker-join", "/etc/kubernetes/bootstrap-kubelet.conf").await;
    e.sys.kill9("ksctl-bootstrap-controller");
    e.sys.restart("ksctl-bootstrap-controller");
    e.sys.wait_state("metal", "running", T).await;
    let (lab, sys) = (&e.lab, &e.sys);
    // Both steps ran again after their kill. kubeadm cannot resume a half-made node: the
    // interrupted init and join were undone (kubeadm reset) and run once more, and the cluster
    // converged; once finished (its mark written), neither runs again (scale below re-runs no
    // step on these hosts).
    let cp0 = step_runs(lab, CP0);
    assert!(cp0["kubeadm-init"] >= 2, "{cp0:?}");
    assert_eq!(cp0.get("kubeadm-init-ran"), Some(&2), "{cp0:?}");
    let wp0 = step_runs(lab, WORKERS[0]);
    assert!(wp0["kubeadm-worker-join"] >= 2, "{wp0:?}");
    assert_eq!(wp0.get("kubeadm-worker-join-ran"), Some(&2), "{wp0:?}");

    // Every Node registered by its kubelet, 1.20.2, and Ready. A control plane that joined in
    // the last seconds of the create may not have reported Ready yet (its kubelet's first status
    // comes some seconds after registering), so Ready is waited for; none may be under pressure.
    let n = nodes(lab);
    let names: Vec<&str> = n.keys().map(String::as_str).collect();
    assert_eq!(names, ["metal-vm-cp-0", "metal-vm-cp-1", "metal-vm-cp-2", "metal-vm-wp-0", "metal-vm-wp-1"]);
    for (name, (version, _)) in &n {
        assert_eq!(version, "v1.20.2", "{name}");
    }
    ksctl_tests::eventually(Duration::from_secs(120), "every Node Ready", || async {
        nodes(lab).values().all(|(_, ready)| *ready).then_some(())
    })
    .await;
    let pressure = node_pressure(lab);
    assert!(pressure.is_empty(), "Nodes under pressure (the lab's kubelets must not evict): {pressure:?}");

    // ksctl's agent runs in its pod, from the lab's registry, and its heartbeats reach the
    // manager through the lab network: `info` shows every node Ready at v1.20.2.
    let agent = kubectl_json(lab, "-n ksctl-system get pods -l app.kubernetes.io/name=ksctl-agent");
    let pod = &agent["items"][0];
    assert_eq!(pod["status"]["phase"], "Running", "{pod}");
    assert!(pod["spec"]["containers"][0]["image"].as_str().unwrap().starts_with(&format!("{}:", lab.gateway)));
    let pod_name = pod["metadata"]["name"].as_str().unwrap().to_string();
    let info = ksctl_tests::eventually(Duration::from_secs(120), "a heartbeat from the agent's pod", || async {
        let (code, out, _) = sys.ksctl(&["cluster", "info", "metal", "-o", "json"]).await;
        let info: ClusterInfo = serde_json::from_str(&out).ok().filter(|_| code == 0)?;
        let h = info.health.as_ref()?;
        (h.reporter == pod_name && h.nodes.len() == 5 && h.nodes.iter().all(|n| n.ready)).then_some(info)
    })
    .await;
    let h = info.health.unwrap();
    assert!(h.server_version.starts_with("v1.20.2"), "{}", h.server_version);
    assert!(h.nodes.iter().all(|n| n.kubelet_version == "v1.20.2"));

    // A workload on the workers, answering over HTTP from another node.
    lab.ok(CP0, &format!(
        "cat > /root/web.yaml <<'EOF'\n{}\nEOF\nkubectl --kubeconfig /etc/kubernetes/admin.conf apply -f /root/web.yaml",
        WORKLOAD.replace("__REGISTRY__", &sys_registry(sys))
    ));
    wait_for("3 web pods running", Duration::from_secs(180), || {
        let p = web_pods(lab);
        p.len() == 3 && p.iter().all(|(_, _, phase, _)| phase == "Running")
    });
    kubectl(lab, "-n default rollout status deployment/web --timeout=120s");
    for (name, node, _, ip) in web_pods(lab) {
        assert!(node.contains("-wp-"), "{name} runs on {node}, not a worker");
        assert_eq!(lab.ok(CP0, &format!("curl -s -m 5 http://{ip}:8080/")).trim(), "ok", "{name}");
    }

    // A token renewal, as the bootstrap runs it hours into a cluster's life: the new token is
    // registered from a 0600 file (never on a command line), which is gone afterwards, and the
    // control-plane certificates are uploaded again under the init configuration's key.
    let token = ksctl_bootstrap_controller::kubeadm::new_token();
    lab.ok(CP0, &ksctl_bootstrap_controller::kubeadm::refresh("1.20.2", &token));
    let id = token.split('.').next().unwrap();
    assert!(lab.ok(CP0, "kubeadm token list").contains(id), "the renewed token is registered");
    assert!(!lab.exec(CP0, &format!("test -e {}", ksctl_bootstrap_controller::kubeadm::TOKEN_CONFIG)).status.success());
    kubectl(lab, "-n kube-system get secret kubeadm-certs");

    // Scale up: the spare joins, becomes Ready and takes pods.
    let (code, out, err) = sys.ksctl(&["cluster", "scale", "metal", "--workers", "3"]).await;
    assert_eq!(code, 0, "{out}{err}");
    sys.wait_state("metal", "running", T).await;
    assert!(nodes(lab)["metal-vm-wp-2"].1, "the new worker is not Ready");
    kubectl(lab, "-n default scale deployment/web --replicas=9");
    wait_for("web pods on the new worker", Duration::from_secs(180), || {
        web_pods(lab).iter().any(|(_, node, phase, _)| node == "metal-vm-wp-2" && phase == "Running")
    });
    kubectl(lab, "-n default rollout status deployment/web --timeout=180s");

    // Scale down to one worker: two nodes drained (pods evicted and rescheduled, the budget of
    // two available never broken), their Nodes deleted, their hosts cleaned.
    let watch = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (watching, cp0_container) = (watch.clone(), lab.hosts[CP0].container.clone());
    let budget = std::thread::spawn(move || {
        let (mut lowest, mut samples) = (i64::MAX, 0);
        while watching.load(std::sync::atomic::Ordering::SeqCst) {
            let out = std::process::Command::new("docker")
                .args(["exec", &cp0_container, "kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf"])
                .args(["-n", "default", "get", "pdb", "web", "-o", "jsonpath={.status.currentHealthy}"])
                .output()
                .unwrap();
            if let Ok(n) = String::from_utf8_lossy(&out.stdout).trim().parse::<i64>() {
                lowest = lowest.min(n);
                samples += 1;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        (lowest, samples)
    });
    let (code, out, err) = sys.ksctl(&["cluster", "scale", "metal", "--workers", "1"]).await;
    assert_eq!(code, 0, "{out}{err}");
    sys.wait_state("metal", "running", T).await;
    watch.store(false, std::sync::atomic::Ordering::SeqCst);
    let (lowest, samples) = budget.join().unwrap();
    assert!(samples >= 20, "the budget was read {samples} times during the drain");
    assert!(lowest >= 2, "the disruption budget was broken: {lowest} healthy pods");
    let n = nodes(lab);
    assert!(!n.contains_key("metal-vm-wp-1") && !n.contains_key("metal-vm-wp-2"), "{n:?}");
    kubectl(lab, "-n default rollout status deployment/web --timeout=180s");
    let pods = web_pods(lab);
    assert_eq!(pods.len(), 9);
    assert!(pods.iter().all(|(_, node, phase, _)| node == "metal-vm-wp-0" && phase == "Running"), "{pods:?}");
    assert_clean(lab, [WORKERS[1], WORKERS[2]]);

    assert_eq!(step_runs(lab, CP0), cp0, "a finished control plane ran a step again");
    assert_eq!(step_runs(lab, WORKERS[0]), wp0, "a finished worker ran a step again");

    // The ClusterAddon object, edited inside the real cluster, is read by the agent's pod (its
    // own RBAC) and acted on by the manager; the k8s-controller writes the outcome into the
    // object's status. (No addon image is in the lab's mirror, so the edit asks for a version
    // ksctl does not ship: the operation fails before pulling anything, visibly.)
    kubectl(
        lab,
        r#"-n ksctl-system patch clusteraddon addons --type merge -p '{"spec":{"addons":[{"name":"metrics-server","version":"v0.0.1"}]}}'"#,
    );
    let failed = ksctl_tests::eventually(Duration::from_secs(180), "the object's change tried", || async {
        let r = sys.cluster("metal").await?;
        let op = r.last_operation.clone().filter(|o| o.cluster_addon_generation.is_some())?;
        (r.operation.is_none()).then_some((r.state, op))
    })
    .await;
    assert_eq!(failed.0.as_str(), "configuring_failed");
    assert!(failed.1.error.unwrap().contains("metrics-server v0.0.1 is not available"));
    let status = kubectl_json(lab, "-n ksctl-system get clusteraddon addons");
    assert_eq!(status["status"]["addons"]["metrics-server"]["phase"], "Failed", "{status}");

    // Delete: every host clean.
    let (code, out, err) = sys.ksctl(&["cluster", "delete", "metal"]).await;
    assert_eq!(code, 0, "{out}{err}");
    sys.wait_gone("metal", T).await;
    assert_clean(lab, (0..=6).chain([WORKERS[0]]));
}

/// The registry the controllers were given (`host:port`).
fn sys_registry(sys: &System) -> String {
    sys.opts.env.iter().find(|(_, k, _)| k == "KSCTL_IMAGE_REGISTRY").map(|(_, _, v)| v.clone()).unwrap()
}

/// `scripts/bench-bootstrap.sh`: request → every Node Ready for a kubeadm HA cluster on real
/// nodes (1 LB, 3 etcd, 3 control planes, 2 workers), each wave's hosts in parallel and then
/// one host at a time, with the time each phase took.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: scripts/bench-bootstrap.sh"]
async fn bench_kubeadm_request_to_nodes_ready() {
    use ksctl_core::saga::Phase;
    let mut rows = Vec::new();
    for parallel in ["16", "1"] {
        let env = vec![("ksctl-bootstrap-controller".into(), "KSCTL_BOOTSTRAP_PARALLEL_HOSTS".into(), parallel.into())];
        let e = setup(9, env).await;
        let f = e.specs.0.join("bench.json");
        std::fs::write(&f, spec("bench", &e.lab, 2, &WORKERS[..2])).unwrap();
        let started = Instant::now();
        let (code, out, err) = e.sys.ksctl(&["cluster", "create", "-f", f.to_str().unwrap(), "--no-wait"]).await;
        assert_eq!(code, 0, "{out}{err}");
        let phases = [Phase::CloudCreate, Phase::Bootstrap, Phase::K8sInstall];
        let mut done: [Option<f64>; 3] = [None; 3];
        let mut ready = None;
        while done.iter().any(Option::is_none) || ready.is_none() {
            assert!(started.elapsed() < T, "the create took longer than {T:?}");
            if let Some(rec) = e.sys.cluster("bench").await
                && let Some(op) = rec.operation.as_ref().or(rec.last_operation.as_ref())
            {
                for (i, p) in phases.iter().enumerate() {
                    if op.phases_done.contains(p) && done[i].is_none() {
                        done[i] = Some(started.elapsed().as_secs_f64());
                    }
                }
            }
            if ready.is_none() && e.lab.exec(CP0, "test -f /etc/kubernetes/admin.conf").status.success() {
                let out = e.lab.exec(CP0, "kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes --no-headers");
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                if text.lines().count() == 5 && text.lines().all(|l| l.split_whitespace().nth(1) == Some("Ready")) {
                    ready = Some(started.elapsed().as_secs_f64());
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        e.sys.wait_state("bench", "running", T).await;
        rows.push((parallel, done, ready.unwrap()));
    }
    println!("kubeadm 1.20.2 on real nodes, 1 LB + 3 etcd + 3 control planes + 2 workers (seconds from the request):");
    println!("  {:<22} {:>8} {:>10} {:>12} {:>14}", "", "cloud", "bootstrap", "k8s install", "nodes Ready");
    for (parallel, done, ready) in &rows {
        let label = if *parallel == "1" { "one host at a time" } else { "parallel waves" };
        let [c, b, k] = done.map(|d| d.unwrap_or(f64::NAN));
        println!("  {label:<22} {c:>8.1} {:>10.1} {:>12.1} {ready:>14.1}", b - c, k - b);
    }
    println!("  (cloud: time to the end of the cloud phase; bootstrap and k8s install: each phase's own time)");
    let (p, s) = (rows[0].2, rows[1].2);
    println!("  nodes Ready: one host at a time / parallel {:.2}x", s / p);
}
