//! The `byo` provider on the SSH lab's real hosts, through the bus: the cloud phase checks every
//! host over SSH (key, sudo) and records addresses and host keys; bad hosts fail the create with
//! an error that names the host and the step. The artifact mirror here has no k3s installer, so
//! a good create fails in the bootstrap at the first k3s server, named with its host and step
//! (`bootstrap_lab.rs` runs the whole bootstrap).
use ksctl_core::ClusterId;
use ksctl_core::keys;
use ksctl_core::records::InfraRecord;
use ksctl_tests::lab::Lab;
use ksctl_tests::{System, SystemOptions, TempDir};
use std::time::Duration;

const T: Duration = Duration::from_secs(90);

/// The spec for a cluster on hosts `0..` of the lab: LB, 3 etcd, 3 control planes, 1 worker.
fn spec(name: &str, lab: &Lab, key: &str, user_of: impl Fn(usize) -> &'static str) -> String {
    let host = |i: usize| serde_json::json!({"address": lab.hosts[i].ip, "user": user_of(i)});
    serde_json::json!({
        "cluster_name": name, "region": "lab", "cloud_provider": "byo", "cluster_type": "selfmanaged",
        "kubernetes_distro": "k3s", "control_plane_nodes": 3, "datastore_nodes": 3, "worker_nodes": 1,
        "hosts": {
            "ssh_key": key,
            "load_balancer": host(0),
            "datastores": [host(1), host(2), host(3)],
            "control_planes": [host(4), host(5), host(6)],
            "workers": [host(7)]
        }
    })
    .to_string()
}

async fn create(sys: &System, dir: &TempDir, name: &str, spec: String) {
    let f = dir.0.join(format!("{name}.json"));
    std::fs::write(&f, spec).unwrap();
    let (code, out, err) = sys.ksctl(&["cluster", "create", "-f", f.to_str().unwrap(), "--no-wait"]).await;
    assert_eq!(code, 0, "{out}{err}");
}

async fn failure(sys: &System, name: &str) -> String {
    let rec = sys.wait_state(name, "creation_failed", T).await;
    rec.last_operation.unwrap().error.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn byo_hosts_are_checked_over_ssh_and_bad_hosts_are_named() {
    let mut lab = Lab::start(8);
    let empty = TempDir::new("empty-mirror");
    let mirror = lab.serve(&empty.0);
    let keys_dir = TempDir::new("byo-keys");
    std::fs::write(keys_dir.0.join("lab"), &lab.key_pem).unwrap();
    let other = ssh_key::PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519).unwrap();
    std::fs::write(keys_dir.0.join("stranger"), other.to_openssh(ssh_key::LineEnding::LF).unwrap().as_bytes()).unwrap();
    let cc = "ksctl-cloud-controller".to_string();
    let sys = System::start(SystemOptions {
        env: vec![
            (cc.clone(), "KSCTL_BYO_KEYS_DIR".into(), keys_dir.0.display().to_string()),
            // An unreachable host is retried, then reported: two deliveries keep the test short.
            (cc, "KSCTL_MAX_DELIVER".into(), "2".into()),
            ("ksctl-manager".into(), "KSCTL_PROVIDERS".into(), "sim,byo".into()),
            ("ksctl-bootstrap-controller".into(), "KSCTL_ARTIFACTS_URL".into(), mirror),
            ("ksctl-bootstrap-controller".into(), "KSCTL_MAX_DELIVER".into(), "1".into()),
        ],
        ..Default::default()
    })
    .await;
    let specs = TempDir::new("byo-specs");

    // Every host answers: addresses and host keys recorded; the bootstrap is what is missing.
    create(&sys, &specs, "metal", spec("metal", &lab, "lab", |_| "ubuntu")).await;
    let err = failure(&sys, "metal").await;
    assert!(err.starts_with("bootstrap:") && err.contains("host metal-vm-cp-0") && err.contains("k3s-init"), "{err}");
    let id = ClusterId::new("metal").unwrap();
    let infra: InfraRecord = ksctl_store::get_json(sys.store.as_ref(), &keys::cloud(&id)).await.unwrap().unwrap().0;
    assert_eq!(infra.vms.len(), 8);
    assert_eq!(infra.host_keys.len(), 8);
    assert!(infra.host_keys.values().all(|k| k.starts_with("ssh-ed25519 ")));
    assert!(infra.ssh_private_key.is_some(), "the key is sealed into state");
    let lb = &infra.vms["metal-vm-lb-0"];
    assert_eq!((lb.public_ip.as_str(), lb.private_ip.as_str()), (lab.hosts[0].ip.as_str(), lab.hosts[0].ip.as_str()));
    let (_, info, _) = sys.ksctl(&["cluster", "info", "metal"]).await;
    assert_eq!(info.lines().filter(|l| l.starts_with("metal-vm-")).count(), 8, "{info}");

    // Delete leaves the machines (they still answer) and forgets the cluster.
    let (code, out, err) = sys.ksctl(&["cluster", "delete", "metal"]).await;
    assert_eq!(code, 0, "{out}{err}");
    sys.wait_gone("metal", T).await;
    assert!(std::net::TcpStream::connect(format!("{}:22", lab.hosts[1].ip)).is_ok(), "the machine stays");

    // A key the hosts do not accept.
    create(&sys, &specs, "wrongkey", spec("wrongkey", &lab, "stranger", |_| "ubuntu")).await;
    let err = failure(&sys, "wrongkey").await;
    assert!(err.contains("wrongkey-vm-") && err.contains("SSH key was refused"), "{err}");

    // A user without sudo on one host.
    create(&sys, &specs, "nosudo", spec("nosudo", &lab, "lab", |i| if i == 7 { "nosudo" } else { "ubuntu" })).await;
    let err = failure(&sys, "nosudo").await;
    assert!(err.contains(&format!("nosudo-vm-wp-0 ({})", lab.hosts[7].ip)) && err.contains("sudo check"), "{err}");

    // A host that does not answer.
    lab.cut(5);
    create(&sys, &specs, "cutoff", spec("cutoff", &lab, "lab", |_| "ubuntu")).await;
    let err = failure(&sys, "cutoff").await;
    assert!(err.contains(&format!("cutoff-vm-cp-1 ({})", lab.hosts[5].ip)) && err.contains("cannot connect"), "{err}");
    lab.heal(5);
    // A key file that is not there.
    create(&sys, &specs, "nokey", spec("nokey", &lab, "missing", |_| "ubuntu")).await;
    let err = failure(&sys, "nokey").await;
    assert!(err.contains("SSH key \"missing\" not found"), "{err}");
}

/// Peak resident memory of a process, in KiB.
fn peak_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap()
}

/// Hosts that lie: one whose `hostname -I` answers with a shell command, one that prints
/// without end, a control plane whose admin kubeconfig runs a command. Each create fails with
/// an error naming the host and what it did; nothing a host said runs anywhere (no `/tmp/pwned`
/// on the controller or any host); the cloud-controller reads at most its output cap and stays
/// small.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_hosts_fail_the_create_and_run_nothing() {
    let mut lab = Lab::start(8);
    let mirror = lab.k3s_mirror();
    let keys_dir = TempDir::new("byo-keys-hostile");
    std::fs::write(keys_dir.0.join("lab"), &lab.key_pem).unwrap();
    let cc = "ksctl-cloud-controller".to_string();
    let sys = System::start(SystemOptions {
        env: vec![
            (cc, "KSCTL_BYO_KEYS_DIR".into(), keys_dir.0.display().to_string()),
            ("ksctl-manager".into(), "KSCTL_PROVIDERS".into(), "sim,byo".into()),
            ("ksctl-bootstrap-controller".into(), "KSCTL_ARTIFACTS_URL".into(), mirror),
        ],
        ..Default::default()
    })
    .await;
    let specs = TempDir::new("byo-specs-hostile");
    let _ = std::fs::remove_file("/tmp/pwned");
    let fake_hostname = |i: usize, body: &str| {
        let script = format!("#!/bin/sh\n{body}\n");
        let out = lab
            .exec(i, &format!("cat > /usr/local/bin/hostname <<'EOF'\n{script}EOF\nchmod 755 /usr/local/bin/hostname"));
        assert!(out.status.success(), "{out:?}");
    };
    let pwned = |lab: &Lab| (0..8).any(|i| lab.exec(i, "test -e /tmp/pwned").status.success());

    // An address that is a command: refused as an address, run nowhere.
    fake_hostname(7, "echo '1.2.3.4;touch /tmp/pwned' 10.0.0.1");
    create(&sys, &specs, "liar", spec("liar", &lab, "lab", |_| "ubuntu")).await;
    let err = failure(&sys, "liar").await;
    assert!(err.contains("liar-vm-wp-0") && err.contains("hostname -I") && err.contains("not an IP address"), "{err}");
    assert!(!std::path::Path::new("/tmp/pwned").exists() && !pwned(&lab), "a host's answer ran somewhere");

    // Endless output: cut at the cap, reported, and the controller's memory stays bounded.
    fake_hostname(7, "exec yes 'ksctl-output-flood'");
    create(&sys, &specs, "flood", spec("flood", &lab, "lab", |_| "ubuntu")).await;
    let err = failure(&sys, "flood").await;
    assert!(err.contains("flood-vm-wp-0") && err.contains("printed more than 4194304 bytes"), "{err}");
    let cc = sys.procs.iter().find(|p| p.bin == "ksctl-cloud-controller").unwrap();
    let peak = peak_kib(cc.child.as_ref().unwrap().id());
    assert!(peak < 256 * 1024, "the cloud-controller peaked at {peak} KiB");
    assert!(!pwned(&lab));

    // A control plane whose kubeconfig would run a command in the k8s-controller (which holds
    // the seal key) and in the operator's kubectl: the bootstrap refuses it; none is stored.
    assert!(lab.exec(7, "rm /usr/local/bin/hostname").status.success());
    assert!(lab.exec(4, "mkdir -p /etc/ksctl-lab && touch /etc/ksctl-lab/hostile-kubeconfig").status.success());
    create(&sys, &specs, "trap", spec("trap", &lab, "lab", |_| "ubuntu")).await;
    let err = sys
        .wait_state("trap", "creation_failed", Duration::from_secs(240))
        .await
        .last_operation
        .unwrap()
        .error
        .unwrap();
    assert!(err.contains("trap-vm-cp-0") && err.contains("`exec`"), "{err}");
    let id = ClusterId::new("trap").unwrap();
    let rec: Option<(ksctl_core::records::BootstrapRecord, u64)> =
        ksctl_store::get_json(sys.store.as_ref(), &keys::bootstrap(&id)).await.unwrap();
    assert!(rec.is_none_or(|(r, _)| r.kubeconfig.is_none()), "a refused kubeconfig is never stored");
    assert!(!std::path::Path::new("/tmp/pwned").exists() && !pwned(&lab));
}
