//! SSH "VMs" for the bootstrap tests (see `../shared/LAB.md`): each host is a network namespace
//! on a private bridge, with its own filesystem (an overlay on a cached Debian root built by
//! `tests/lab/build-rootfs.sh`) and its own sshd as the first process of a PID namespace. The
//! users are `ubuntu` (passwordless sudo) and `nosudo`; both accept the lab's ed25519 key.
//! Needs root. Everything is removed when the [`Lab`] is dropped.
use crate::TempDir;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct LabHost {
    pub name: String,
    pub ip: String,
    netns: String,
    veth: String,
    merged: PathBuf,
    child: Option<Child>,
}

pub struct Lab {
    pub hosts: Vec<LabHost>,
    /// The host side of the bridge: how the control plane reaches the hosts.
    pub gateway: String,
    bridge: String,
    pub dir: TempDir,
    /// The private key every host accepts, OpenSSH PEM.
    pub key_pem: String,
    /// HTTP servers the hosts download from (see [`Lab::k3s_mirror`]).
    servers: Vec<Child>,
}

pub(crate) fn sh(cmd: &str) -> std::process::Output {
    let out = Command::new("sh").arg("-c").arg(cmd).output().expect("run sh");
    assert!(
        out.status.success(),
        "lab command failed: {cmd}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(crate) fn quiet(cmd: &str) {
    let _ = Command::new("sh").arg("-c").arg(cmd).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// Runs a cached-build script of `tests/lab` and returns the path it prints last.
pub(crate) fn cached(script: &str, what: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab").join(script);
    let out = Command::new("bash").arg(&path).stderr(Stdio::inherit()).output().expect("run a lab build script");
    assert!(out.status.success(), "building {what} failed ({script})");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().lines().last().expect("a path").to_string())
}

/// The cached base root filesystem (built on first use, a few minutes).
pub fn rootfs() -> PathBuf {
    cached("build-rootfs.sh", "the lab root filesystem")
}

/// The Debian-built kube-apiserver, kube-controller-manager and kubeadm (built and cached on
/// first use by `tests/lab/build-kube.sh`, about 10 minutes).
pub fn kube_bins() -> PathBuf {
    cached("build-kube.sh", "kube-apiserver from Debian's source package")
}

/// The lab's SSH key: (private key as OpenSSH PEM, public key line).
pub(crate) fn new_key() -> (String, String) {
    let key = ssh_key::PrivateKey::random(&mut ssh_key::rand_core::OsRng, ssh_key::Algorithm::Ed25519).unwrap();
    (key.to_openssh(ssh_key::LineEnding::LF).unwrap().to_string(), key.public_key().to_openssh().unwrap())
}

/// Waits until something accepts TCP connections on `addr`.
pub(crate) fn wait_tcp(addr: &str, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_millis(300)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not come up on {addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `python3 -m http.server` for `dir` on `bind` and a free port: (process, URL).
pub(crate) fn serve_dir(bind: &str, dir: &Path) -> (Child, String) {
    let port = crate::free_port();
    let child = Command::new("python3")
        .args(["-m", "http.server", &port.to_string(), "--bind", bind, "--directory"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 -m http.server");
    wait_tcp(&format!("{bind}:{port}"), Duration::from_secs(10), "the lab's HTTP server");
    (child, format!("http://{bind}:{port}"))
}

/// A /24 in 10.78.0.0/16 that no interface on this machine uses yet.
fn free_subnet() -> u8 {
    let used = String::from_utf8_lossy(&sh("ip -4 -o addr show").stdout).into_owned();
    loop {
        let x = fastrand::u8(1..=254);
        if !used.contains(&format!("10.78.{x}.")) {
            return x;
        }
    }
}

fn uid_of(root: &Path, user: &str) -> String {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).expect("passwd");
    passwd
        .lines()
        .find(|l| l.starts_with(&format!("{user}:")))
        .and_then(|l| l.split(':').nth(2))
        .expect("user in passwd")
        .to_string()
}

impl Lab {
    /// Starts `n` hosts named `<prefix>0..n`, waits until each sshd answers.
    pub fn start(n: usize) -> Self {
        assert!(n <= 200);
        let base = rootfs();
        let tag: String = (0..5).map(|_| fastrand::lowercase()).collect();
        let dir = TempDir::new(&format!("lab-{tag}"));
        let net = free_subnet();
        let bridge = format!("kl{tag}");
        let gateway = format!("10.78.{net}.1");
        sh(&format!(
            "ip link add {bridge} type bridge && ip addr add {gateway}/24 dev {bridge} && ip link set {bridge} up"
        ));
        // Hosts talk to each other across the bridge (etcd peers, API servers, agents). With
        // br_netfilter loaded, bridged frames pass iptables' FORWARD chain, whose policy a Docker
        // engine sets to DROP: let this bridge's own traffic through, as Docker does for docker0.
        quiet(&format!("iptables -w -I FORWARD -i {bridge} -o {bridge} -j ACCEPT"));
        let (key_pem, public) = new_key();
        let mut lab = Lab { hosts: vec![], gateway, bridge, dir, key_pem, servers: vec![] };
        for i in 0..n {
            let name = format!("vm{i}");
            let ip = format!("10.78.{net}.{}", 10 + i);
            let netns = format!("kl{tag}-{i}");
            let veth = format!("kl{tag}h{i}");
            let root = lab.dir.0.join(&name);
            let (upper, work, merged) = (root.join("upper"), root.join("work"), root.join("root"));
            for d in [&upper, &work, &merged] {
                std::fs::create_dir_all(d).unwrap();
            }
            sh(&format!(
                "mount -t overlay overlay -o lowerdir={},upperdir={},workdir={} {}",
                base.display(),
                upper.display(),
                work.display(),
                merged.display()
            ));
            let mut host = LabHost { name: name.clone(), ip: ip.clone(), netns, veth, merged, child: None };
            sh(&format!(
                "ip netns add {ns} && ip link add {v} type veth peer name {v}n && ip link set {v} master {br} up \
                 && ip link set {v}n netns {ns} && ip -n {ns} addr add {ip}/24 dev {v}n \
                 && ip -n {ns} link set {v}n up && ip -n {ns} link set lo up",
                ns = host.netns,
                v = host.veth,
                br = lab.bridge,
            ));
            let m = host.merged.clone();
            for user in ["ubuntu", "nosudo"] {
                let ssh_dir = m.join(format!("home/{user}/.ssh"));
                std::fs::create_dir_all(&ssh_dir).unwrap();
                std::fs::write(ssh_dir.join("authorized_keys"), format!("{public}\n")).unwrap();
                let uid = uid_of(&m, user);
                sh(&format!("chown -R {uid}:{uid} {} && chmod 700 {}", ssh_dir.display(), ssh_dir.display()));
            }
            std::fs::write(m.join("etc/hostname"), format!("{name}\n")).unwrap();
            std::fs::write(m.join("etc/hosts"), format!("127.0.0.1 localhost\n{ip} {name}\n")).unwrap();
            sh(&format!("chroot {} ssh-keygen -A >/dev/null", m.display()));
            let log = std::fs::File::create(root.join("sshd.log")).unwrap();
            let script = format!(
                "mount -t proc proc {m}/proc && mount --rbind /dev {m}/dev && hostname {name} \
                 && exec chroot {m} /usr/sbin/sshd -D -e",
                m = m.display()
            );
            let child = Command::new("ip")
                .args(["netns", "exec", &host.netns, "unshare", "--mount", "--pid", "--uts", "--ipc", "--fork"])
                .args(["--kill-child", "sh", "-c", &script])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start sshd");
            host.child = Some(child);
            lab.hosts.push(host);
        }
        for h in &lab.hosts {
            let what = format!("sshd on {} (log in {})", h.name, lab.dir.0.display());
            wait_tcp(&format!("{}:22", h.ip), Duration::from_secs(20), &what);
        }
        lab
    }

    /// Serves `dir` over HTTP on the bridge address, where the hosts reach it; returns the URL.
    pub fn serve(&mut self, dir: &Path) -> String {
        let (child, url) = serve_dir(&self.gateway, dir);
        self.servers.push(child);
        url
    }

    /// An artifact mirror (ksctl's `KSCTL_ARTIFACTS_URL` layout) whose k3s installer is the lab's
    /// stand-in (`tests/lab/k3s-standin.sh`: the Debian-built kube-apiserver on the etcd the
    /// bootstrap made, since k3s cannot be had here) and whose release download is that binary.
    pub fn k3s_mirror(&mut self) -> String {
        let bins = kube_bins();
        let root = self.dir.0.join("mirror");
        let dl = root.join("k3s/releases/download");
        std::fs::create_dir_all(&dl).unwrap();
        std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("lab/k3s-standin.sh"), root.join("k3s/install.sh"))
            .unwrap();
        std::os::unix::fs::symlink(bins.join("kube-apiserver"), dl.join("kube-apiserver")).unwrap();
        self.serve(&root)
    }

    /// Runs `cmd` inside host `i` as root: in all its namespaces (network, PID, mount, UTS) and
    /// its root filesystem, as if logged in.
    pub fn exec(&self, i: usize, cmd: &str) -> std::process::Output {
        // `unshare --fork` makes the host's first process a child of the process we started.
        let unshare = self.hosts[i].child.as_ref().expect("host running").id();
        let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap();
        let init = children.split_whitespace().next().expect("the host's first process");
        Command::new("nsenter")
            .args(["-t", init, "-n", "-p", "-m", "-u", "-i", "-r", "-w", "sh", "-c", cmd])
            .output()
            .expect("nsenter")
    }

    /// Cuts a host off the network (its link goes down); [`Lab::heal`] brings it back.
    pub fn cut(&self, i: usize) {
        sh(&format!("ip link set {} down", self.hosts[i].veth));
    }

    pub fn heal(&self, i: usize) {
        sh(&format!("ip link set {} up", self.hosts[i].veth));
    }

    /// A file of host `i` (through its overlay), e.g. to check what a bootstrap wrote.
    pub fn read(&self, i: usize, path: &str) -> Option<String> {
        std::fs::read_to_string(self.hosts[i].merged.join(path.trim_start_matches('/'))).ok()
    }

    /// Copies a file from this machine into host `i` (mode kept).
    pub fn install(&self, i: usize, src: &Path, dest: &str) {
        let to = self.hosts[i].merged.join(dest.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(src, &to).unwrap();
    }

    /// Whether a path exists in host `i`'s filesystem.
    pub fn exists(&self, i: usize, path: &str) -> bool {
        self.hosts[i].merged.join(path.trim_start_matches('/')).exists()
    }

    /// Runs a command in host `i`'s network namespace (not its filesystem): for probing it
    /// from the inside, e.g. `curl` to its own ports.
    pub fn in_netns(&self, i: usize, cmd: &str) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.hosts[i].netns, "sh", "-c", cmd])
            .output()
            .expect("ip netns exec")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::env::var_os("KSCTL_LAB_KEEP").is_some() {
            eprintln!("KSCTL_LAB_KEEP: lab left running in {} (bridge {})", self.dir.0.display(), self.bridge);
            self.dir.0 = PathBuf::new();
            return;
        }
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        for h in &mut self.hosts {
            if let Some(mut c) = h.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
            // Anything still running in the namespace (it should not be).
            quiet(&format!("ip netns pids {} | xargs -r kill -9", h.netns));
            quiet(&format!("umount -l {}", h.merged.display()));
            quiet(&format!("ip link del {}", h.veth));
            quiet(&format!("ip netns del {}", h.netns));
        }
        quiet(&format!("iptables -w -D FORWARD -i {b} -o {b} -j ACCEPT", b = self.bridge));
        quiet(&format!("ip link del {}", self.bridge));
    }
}
