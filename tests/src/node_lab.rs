//! Hosts that can be Kubernetes nodes, for the kubeadm tests with real kubelets: containers on
//! the machine's Docker engine, one per host, on a private network of their own, made from the
//! image of `tests/lab/build-node-image.sh` (Debian with systemd as init, sshd, containerd,
//! runc, the CNI plugins, HAProxy and etcd; no Kubernetes — ksctl installs that from the lab's
//! mirror).
//!
//! Why containers and not the SSH lab's network namespaces ([`crate::lab`]): a kubelet needs an
//! init system (kubeadm restarts it through systemd when it writes its configuration) and a
//! cgroup tree of its own (kubelets sharing one would each delete the others' pods). A container
//! with a private cgroup namespace gives both, as kind's nodes do. This machine refuses
//! `--privileged`, so the hosts run with every capability but CAP_SYS_RESOURCE, no seccomp
//! filter, writable `/proc/sys`, `/dev/kmsg`, and their cgroup hierarchies mounted again
//! writable by the entry point (`tests/lab/node-init.sh`); `/var/lib/containerd` is a volume,
//! so containerd's overlay snapshotter works (the container's own root is fuse-overlayfs).
//!
//! Pod network (the spec says `cni: none`): the lab gives host `i` the pod range
//! `10.244.<i+1>.0/24` as a bridge + host-local CNI configuration and routes every other host's
//! range through that host — what a cloud's route table does for flannel's host-gw, done once
//! when the hosts start. flannel's image cannot be had here.
use crate::TempDir;
use crate::lab::{cached, new_key, quiet, serve_dir, sh, wait_tcp};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub struct NodeHost {
    pub name: String,
    pub ip: String,
    /// The Docker container's name.
    pub container: String,
}

pub struct NodeLab {
    pub hosts: Vec<NodeHost>,
    /// The network's gateway: this machine, as the hosts reach it (mirror, registry, NATS).
    pub gateway: String,
    network: String,
    /// The private key every host accepts, OpenSSH PEM.
    pub key_pem: String,
    pub dir: TempDir,
    servers: Vec<Child>,
}

/// The lab's mirror (apt repository and registry storage), built once and cached.
pub fn mirror() -> PathBuf {
    cached("build-mirror.sh", "the lab's package mirror and image registry")
}

/// kind v0.27.0 and the kind node image for the mirror's Kubernetes (`tests/lab/build-kind.sh`):
/// the directory holding `kind` and the `docker` wrapper kind needs on this machine.
pub fn kind() -> PathBuf {
    cached("build-kind.sh", "kind and its node image")
}

/// The pod range the lab's CNI configuration gives host `i`.
pub fn pod_range(i: usize) -> String {
    format!("10.244.{}.0/24", i + 1)
}

fn docker(args: &[&str]) -> Output {
    let out = Command::new("docker").args(args).output().expect("run docker");
    assert!(
        out.status.success(),
        "docker {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl NodeLab {
    /// Starts `n` hosts named `vm0..n` and waits until each one's sshd answers.
    pub fn start(n: usize) -> Self {
        assert!(n <= 200);
        let image = String::from_utf8(
            Command::new("bash")
                .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/build-node-image.sh"))
                .stderr(Stdio::inherit())
                .output()
                .expect("build the node image")
                .stdout,
        )
        .unwrap()
        .trim()
        .to_string();
        assert!(!image.is_empty(), "no node image");
        let tag: String = (0..5).map(|_| fastrand::lowercase()).collect();
        let network = format!("kn{tag}");
        // A /24 no other Docker network or interface uses; Docker refuses overlaps, so retry.
        let mut net = 0;
        for _ in 0..50 {
            net = fastrand::u8(1..=254);
            let ok = Command::new("docker")
                .args(["network", "create", "--subnet", &format!("10.79.{net}.0/24"), &network])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("docker network create")
                .success();
            if ok {
                break;
            }
            net = 0;
        }
        assert!(net != 0, "no free subnet for a Docker network in 10.79.0.0/16");
        let gateway = format!("10.79.{net}.1");
        let (key_pem, public) = new_key();
        let mut lab = NodeLab {
            hosts: vec![],
            gateway,
            network,
            key_pem,
            dir: TempDir::new(&format!("nodes-{tag}")),
            servers: vec![],
        };
        for i in 0..n {
            let name = format!("vm{i}");
            let ip = format!("10.79.{net}.{}", 10 + i);
            let container = format!("kn{tag}-{name}");
            docker(&[
                "run",
                "-d",
                "--name",
                &container,
                "--hostname",
                &name,
                "--network",
                &lab.network,
                "--ip",
                &ip,
                "--cgroupns",
                "private",
                // Every capability but the one this machine's Docker lacks (`--privileged` fails).
                "--cap-add",
                "ALL",
                "--cap-drop",
                "SYS_RESOURCE",
                "--security-opt",
                "seccomp=unconfined",
                "--security-opt",
                "apparmor=unconfined",
                "--security-opt",
                "systempaths=unconfined",
                "--device",
                "/dev/kmsg",
                // Privileged pods (kube-proxy) need every device; a child cgroup gets no more.
                "--device-cgroup-rule",
                "a *:* rwm",
                "--tmpfs",
                "/run",
                "--tmpfs",
                "/tmp",
                "-v",
                "/var/lib/containerd",
                "--label",
                "io.ksctl.lab=nodes",
                &image,
            ]);
            lab.hosts.push(NodeHost { name, ip, container });
        }
        for (i, h) in lab.hosts.iter().enumerate() {
            let mut setup = String::from("set -e\n");
            for user in ["ubuntu", "nosudo"] {
                setup.push_str(&format!(
                    "install -d -m 700 -o {user} -g {user} /home/{user}/.ssh\n\
                     printf '%s\\n' '{public}' > /home/{user}/.ssh/authorized_keys\n\
                     chown {user}:{user} /home/{user}/.ssh/authorized_keys\n"
                ));
            }
            setup.push_str(&format!("printf '127.0.0.1 localhost\\n{} {}\\n' > /etc/hosts\n", h.ip, h.name));
            // The hosts share the machine's disk, which a CI run fills with its builds: the
            // kubelet's default eviction thresholds (10% / 15% free) then taint every node with
            // disk-pressure and no pod schedules. Turn them off as kind does for its nodes, through
            // the file the kubeadm drop-in reads for the host operator's own kubelet flags.
            setup.push_str(
                "printf '%s\\n' 'KUBELET_EXTRA_ARGS=--eviction-hard=nodefs.available<0%,nodefs.inodesFree<0%,imagefs.available<0% --image-gc-high-threshold=100' > /etc/default/kubelet\n",
            );
            // The pod network: this host's range on a bridge, the others' through their hosts.
            setup.push_str(&format!(
                "mkdir -p /etc/cni/net.d\ncat > /etc/cni/net.d/10-ksctl-lab.conflist <<'EOF'\n{}\nEOF\n",
                cni_config(&pod_range(i))
            ));
            for (j, other) in lab.hosts.iter().enumerate() {
                if j != i {
                    setup.push_str(&format!("ip route replace {} via {}\n", pod_range(j), other.ip));
                }
            }
            let out = lab.exec(i, &setup);
            assert!(out.status.success(), "setting up {}: {}", h.name, String::from_utf8_lossy(&out.stderr));
        }
        for h in &lab.hosts {
            wait_tcp(&format!("{}:22", h.ip), Duration::from_secs(60), &format!("sshd on {}", h.name));
        }
        lab
    }

    /// The lab's Docker network.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// Serves `dir` over HTTP on the gateway, where the hosts reach it; returns the URL.
    pub fn serve(&mut self, dir: &Path) -> String {
        let (child, url) = serve_dir(&self.gateway, dir);
        self.servers.push(child);
        url
    }

    /// The mirror's apt repositories, served to the hosts: the `KSCTL_ARTIFACTS_URL` to give.
    pub fn artifacts_url(&mut self) -> String {
        self.serve(&mirror().join("files"))
    }

    /// A registry (Debian's docker-registry) on the gateway holding a copy of the mirror's
    /// images (hard links: the cache is not written to); returns `host:port`, plain HTTP.
    pub fn registry(&mut self) -> String {
        let storage = self.dir.0.join("registry");
        sh(&format!("cp -al {} {}", mirror().join("registry").display(), storage.display()));
        let port = crate::free_port();
        let config = self.dir.0.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: {}:{port}}}\n",
                storage.display(),
                self.gateway
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.dir.0.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (apt-get install docker-registry)");
        self.servers.push(child);
        let addr = format!("{}:{port}", self.gateway);
        wait_tcp(&addr, Duration::from_secs(10), "the lab's registry");
        addr
    }

    /// Runs `cmd` as root inside host `i`.
    pub fn exec(&self, i: usize, cmd: &str) -> Output {
        Command::new("docker").args(["exec", &self.hosts[i].container, "sh", "-c", cmd]).output().expect("docker exec")
    }

    /// Runs `cmd` inside host `i` and returns its output; panics when it fails.
    pub fn ok(&self, i: usize, cmd: &str) -> String {
        let out = self.exec(i, cmd);
        assert!(
            out.status.success(),
            "{} on {}: {}{}",
            cmd,
            self.hosts[i].name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Cuts host `i` off the network; [`NodeLab::heal`] brings it back at its address.
    pub fn cut(&self, i: usize) {
        docker(&["network", "disconnect", &self.network, &self.hosts[i].container]);
    }

    pub fn heal(&self, i: usize) {
        docker(&["network", "connect", "--ip", &self.hosts[i].ip, &self.network, &self.hosts[i].container]);
    }
}

/// The bridge + host-local CNI configuration of one host's pod range.
fn cni_config(range: &str) -> String {
    serde_json::json!({
        "cniVersion": "0.4.0",
        "name": "ksctl-lab",
        "plugins": [
            {
                "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": range}]], "routes": [{"dst": "0.0.0.0/0"}]}
            },
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    })
    .to_string()
}

impl Drop for NodeLab {
    fn drop(&mut self) {
        if std::env::var_os("KSCTL_LAB_KEEP").is_some() {
            eprintln!("KSCTL_LAB_KEEP: node lab left running (network {}, {})", self.network, self.dir.0.display());
            self.dir.0 = PathBuf::new();
            return;
        }
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for h in &self.hosts {
            quiet(&format!("docker rm -f -v {}", h.container));
        }
        quiet(&format!("docker network rm {}", self.network));
    }
}
