//! The kubeadm configuration ksctl generates, validated by the real kubeadm (built from Debian's
//! kubernetes source package, 1.20 — so the config is generated for 1.20.2, API v1beta2) on a
//! lab host: its offline phases `init phase certs`, `kubeconfig` and `control-plane` run with
//! `--config`, and what they write is checked — the API server certificate signed by the CA ksctl
//! made (so the discovery hash ksctl computes is the one joins need), the load balancer as
//! endpoint and SAN, the external etcd wired into the API server. Real hosts need containerd and a
//! kubelet for `init` itself; the lab has neither.
use ksctl_bootstrap_controller::kubeadm::{self, ClusterConfig, KubeadmSecrets};
use ksctl_bootstrap_controller::pki;
use ksctl_bootstrap_controller::scripts::write_file;
use ksctl_core::artifacts::Artifacts;
use ksctl_tests::lab::{Lab, kube_bins};

fn ok(out: std::process::Output) -> String {
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn kubeadm_accepts_the_generated_config_and_uses_ksctls_ca() {
    let lab = Lab::start(1);
    lab.install(0, &kube_bins().join("kubeadm"), "/usr/local/bin/kubeadm");
    let ip = lab.hosts[0].ip.clone();
    let etcd = pki::etcd("kadm", &[("kadm-vm-ds-0".into(), "10.0.0.2".into())]).unwrap();
    let (ca, _) = pki::new_ca("kubernetes").unwrap();
    let secrets = KubeadmSecrets {
        ca: ca.clone(),
        token: kubeadm::new_token(),
        token_expires_ms: 0,
        certificate_key: kubeadm::new_certificate_key(),
        certs_uploaded_ms: 0,
    };
    let eps = vec!["https://10.0.0.2:2379".to_string(), "https://10.0.0.3:2379".to_string()];
    let cfg = |version: &'static str| ClusterConfig {
        cluster_name: "kadm",
        version,
        node_name: "kadm-vm-cp-0",
        advertise_ip: &ip,
        lb_private_ip: "10.0.0.9",
        lb_public_ip: "203.0.113.7",
        etcd_endpoints: &eps,
        token: &secrets.token,
        certificate_key: &secrets.certificate_key,
    };
    let files = kubeadm::pki_files(&secrets.ca, &etcd.ca.cert, &etcd.client).unwrap()
        // The first control plane decides kube-proxy's conntrack setting (here: the kernel's).
        + &write_file(
            kubeadm::CONFIG,
            &kubeadm::init_config(&cfg("1.20.2"), &Artifacts::default()).replace(kubeadm::CONNTRACK_PLACEHOLDER, "0"),
            "0600",
        )
        + &write_file(
            "/etc/ksctl/kubeadm-v1beta4.yaml",
            &kubeadm::init_config(&cfg("1.31.0"), &Artifacts::default()),
            "0600",
        );
    ok(lab.exec(0, &format!("set -e\n{files}")));

    // A configuration kubeadm does not know is refused: the phases below really validate.
    let refused = lab.exec(0, "kubeadm init phase certs ca --config /etc/ksctl/kubeadm-v1beta4.yaml");
    assert!(!refused.status.success(), "kubeadm 1.20 must refuse v1beta4");

    let c = kubeadm::CONFIG;
    ok(lab.exec(0, &format!("kubeadm init phase certs all --config {c}")));
    ok(lab.exec(0, &format!("kubeadm init phase kubeconfig all --config {c}")));
    ok(lab.exec(0, &format!("kubeadm init phase control-plane all --config {c}")));

    // kubeadm kept ksctl's CA and signed the API server's certificate with it, with the LB SANs.
    assert_eq!(lab.read(0, "/etc/kubernetes/pki/ca.crt").unwrap(), ca.cert);
    ok(lab.exec(0, "openssl verify -CAfile /etc/kubernetes/pki/ca.crt /etc/kubernetes/pki/apiserver.crt"));
    let cert = ok(lab.exec(0, "openssl x509 -in /etc/kubernetes/pki/apiserver.crt -noout -text"));
    for san in ["IP Address:10.0.0.9", "IP Address:203.0.113.7", &format!("IP Address:{ip}")] {
        assert!(cert.contains(san), "{san} missing: {cert}");
    }
    // The discovery hash ksctl gives joins is the one of the CA kubeadm uses.
    let hash = ok(lab
        .exec(0, "openssl x509 -pubkey -in /etc/kubernetes/pki/ca.crt | openssl pkey -pubin -outform der | sha256sum"));
    assert_eq!(pki::ca_cert_hash(&ca.key).unwrap(), format!("sha256:{}", hash.split_whitespace().next().unwrap()));

    // External etcd: no local etcd pod, the API server pointed at ksctl's etcd with its certs.
    assert!(!lab.exists(0, "/etc/kubernetes/manifests/etcd.yaml"));
    assert!(!lab.exists(0, "/etc/kubernetes/pki/etcd/ca.key"), "kubeadm made no etcd CA of its own");
    let apiserver = lab.read(0, "/etc/kubernetes/manifests/kube-apiserver.yaml").unwrap();
    for flag in [
        "--etcd-servers=https://10.0.0.2:2379,https://10.0.0.3:2379",
        "--etcd-cafile=/etc/kubernetes/pki/etcd/ca.crt",
        "--etcd-certfile=/etc/kubernetes/pki/apiserver-etcd-client.crt",
        &format!("--advertise-address={ip}"),
        "--service-cluster-ip-range=10.96.0.0/12",
    ] {
        assert!(apiserver.contains(flag), "{flag} missing: {apiserver}");
    }
    let cm = lab.read(0, "/etc/kubernetes/manifests/kube-controller-manager.yaml").unwrap();
    assert!(cm.contains("--cluster-cidr=10.244.0.0/16"), "{cm}");
    // Every kubeconfig goes through the load balancer.
    let admin = lab.read(0, "/etc/kubernetes/admin.conf").unwrap();
    assert!(admin.contains("server: https://10.0.0.9:6443"), "{admin}");
    assert!(admin.contains("name: kadm"), "cluster name: {admin}");
}
