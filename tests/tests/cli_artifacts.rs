//! `ksctl artifacts list`: what an air-gapped mirror must hold, from the `ksctl` binary (no
//! control plane needed), checked against the lab's own mirror — which the node lab's kubeadm
//! test proves is enough for a cluster (all but CoreDNS, which this machine cannot build).
use ksctl_tests::bin;
use ksctl_tests::node_lab::mirror;

fn ksctl(args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(bin("ksctl"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("KSCTL_")) {
        cmd.env_remove(k);
    }
    let out = cmd.args(args).output().expect("run ksctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn lists_packages_and_images_as_the_cluster_pulls_them() {
    let (code, out, err) = ksctl(&[
        "artifacts",
        "list",
        "--distro",
        "kubeadm",
        "--version",
        "1.20.2",
        "--image-registry",
        "10.0.0.1:5000",
        "--artifacts-url",
        "http://mirror.lab/ksctl/",
        "--agent-image",
        "ksctl-rs:lab",
        "-o",
        "json",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["apt_repository"], "http://mirror.lab/ksctl/kubernetes/v1.20/deb/");
    assert_eq!(v["packages"], serde_json::json!(["kubelet", "kubeadm", "kubectl", "kubernetes-cni", "cri-tools"]));
    let pulls: Vec<&str> = v["images"].as_array().unwrap().iter().map(|i| i["pull"].as_str().unwrap()).collect();
    assert_eq!(
        pulls,
        [
            "10.0.0.1:5000/kube-apiserver:v1.20.2",
            "10.0.0.1:5000/kube-controller-manager:v1.20.2",
            "10.0.0.1:5000/kube-scheduler:v1.20.2",
            "10.0.0.1:5000/kube-proxy:v1.20.2",
            "10.0.0.1:5000/pause:3.2",
            "10.0.0.1:5000/coredns:1.7.0",
            "10.0.0.1:5000/flannel/flannel:v0.26.1",
            "10.0.0.1:5000/flannel/flannel-cni-plugin:v1.5.1-flannel2",
            "10.0.0.1:5000/ksctl-rs:lab",
        ]
    );
    assert_eq!(v["images"][0]["upstream"], "k8s.gcr.io/kube-apiserver:v1.20.2");

    // The lab's mirror holds every kubeadm image but CoreDNS, under the same names, and the
    // packages its apt repository serves are the ones listed.
    let m = mirror();
    let held = std::fs::read_to_string(m.join("images")).unwrap();
    for p in &pulls[..5] {
        let name = p.strip_prefix("10.0.0.1:5000/").unwrap();
        assert!(held.lines().any(|l| l == name), "the lab's mirror lacks {name}: {held}");
    }
    let index = std::fs::read_to_string(m.join("files/kubernetes/v1.20/deb/Packages")).unwrap();
    for p in v["packages"].as_array().unwrap() {
        assert!(index.contains(&format!("Package: {}\n", p.as_str().unwrap())), "{p} not in the repository");
    }

    // Without flannel, with an addon; the table names the registry's pulls too.
    let (code, out, err) = ksctl(&[
        "artifacts",
        "list",
        "--distro",
        "kubeadm",
        "--version",
        "v1.20.2",
        "--cni",
        "none",
        "--addons",
        "metrics-server",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("APT REPOSITORY  https://pkgs.k8s.io/core:/stable:/v1.20/deb/"), "{out}");
    assert!(!out.contains("flannel"), "{out}");
    assert!(out.contains("registry.k8s.io/metrics-server/metrics-server:v0.7.2"), "{out}");
    assert!(out.contains(concat!("ksctl-rs:", env!("CARGO_PKG_VERSION"))), "{out}");
}

#[test]
fn bad_settings_are_refused_with_the_reason() {
    for (args, says) in [
        (vec!["--version", "1.20.2", "--image-registry", "1.2.3.4;touch /tmp/pwned"], "not a host name"),
        (vec!["--version", "1.20.2", "--image-registry", "https://r.example.com"], "without a scheme"),
        (vec!["--version", "1.20.2", "--artifacts-url", "http://m/$(reboot)"], "not allowed"),
        (vec!["--version", "1.20", "--image-registry", "r.example.com"], "exact version"),
        (vec!["--version", "1.31.0"], "kubeadm config images list"),
        (vec!["--version", "1.20.2", "--addons", "nope"], "unknown addon"),
    ] {
        let mut all = vec!["artifacts", "list", "--distro", "kubeadm"];
        all.extend(args.iter());
        let (code, out, err) = ksctl(&all);
        assert_eq!(code, 2, "{all:?}: {out}{err}");
        assert!(err.contains(says), "{all:?}: {err}");
    }
    let (code, _, err) = ksctl(&["artifacts", "list", "--distro", "rke2", "--version", "1.20.2"]);
    assert_eq!(code, 2);
    assert!(err.contains("expected kubeadm or k3s"), "{err}");
    let (code, out, err) = ksctl(&["artifacts", "list", "--distro", "k3s", "--version", "1.31.2+k3s1"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("https://github.com/k3s-io/k3s/releases/download/v1.31.2+k3s1/k3s"), "{out}");
    // k3s runs its own flannel; Calico and Cilium are ksctl's, so their images are listed.
    assert!(!out.contains("flannel"), "{out}");
    for (cni, image) in [("calico", "quay.io/calico/node:v3.32.1"), ("cilium", "quay.io/cilium/cilium:v1.20.0@")] {
        let (code, out, err) =
            ksctl(&["artifacts", "list", "--distro", "k3s", "--version", "1.31.2+k3s1", "--cni", cni]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(image), "{cni}: {out}");
    }
    let (_, out, _) =
        ksctl(&["artifacts", "list", "--distro", "kubeadm", "--version", "v1.20.2", "--cni", "calico", "-o", "json"]);
    assert!(out.contains("quay.io/calico/kube-controllers:v3.32.1"), "{out}");
}
