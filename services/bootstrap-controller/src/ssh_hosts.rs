//! The bootstrap over SSH, for every provider whose VMs are real hosts (`byo`, `aws`). Follows
//! [`plan::bootstrap_waves`]: load balancer and datastores in parallel, etcd verified healthy,
//! the first control plane alone, then the other control planes and the workers in parallel.
//! Every host step is a script from [`scripts`]/[`kubeadm`] that is idempotent on the host and
//! checkpointed in the bootstrap record, so a restarted controller resumes where it stopped.
use crate::Bootstrapper;
use crate::kubeadm::{self, KubeadmSecrets};
use crate::pki::{self, CertKey, EtcdPki};
use crate::plan::{HostStep, bootstrap_waves, join_wave};
use crate::scripts::{self, Backend};
use ksctl_core::artifacts::Artifacts;
use ksctl_core::keys;
use ksctl_core::messages::context_name;
use ksctl_core::records::{BootstrapRecord, InfraRecord, Role, Vm};
use ksctl_core::spec::Distro;
use ksctl_runtime::{PhaseCtx, PhaseError, read_record};
use ksctl_ssh::{PrivateKey, Session, SshError, Target};
use ksctl_store::DynStore;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const ETCD_HEALTH_SECS: u32 = 90;

/// How long one step may run on a host (installs download packages and binaries).
fn step_timeout(step: &str) -> Duration {
    match step {
        "haproxy" => Duration::from_secs(300),
        "etcd" | "etcd-health" => Duration::from_secs(600),
        s if s.starts_with("kubeadm") => Duration::from_secs(1800),
        _ => Duration::from_secs(900),
    }
}

pub struct SshHosts {
    store: DynStore,
    artifacts: Artifacts,
    settings: Settings,
}

/// How hard the bootstrap pushes on hosts.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Hosts of one wave worked on at once.
    pub parallel: usize,
    pub connect_timeout: Duration,
    pub connect_attempts: u32,
}

/// What every step of one run needs, loaded once.
struct Run {
    infra: InfraRecord,
    key: PrivateKey,
    distro: Distro,
    version: String,
    flannel: bool,
    /// The etcd PKI, read (or made) once per run.
    pki: tokio::sync::OnceCell<EtcdPki>,
}

fn of(infra: &InfraRecord, role: Role) -> Vec<&Vm> {
    let mut v: Vec<&Vm> = infra.vms_of(role).collect();
    v.sort_by_key(|v| v.index);
    v
}

fn one(infra: &InfraRecord, role: Role) -> Result<&Vm, PhaseError> {
    of(infra, role)
        .into_iter()
        .next()
        .ok_or_else(|| PhaseError::Permanent(format!("the cloud phase recorded no {} host", role.as_str())))
}

/// A host's failure as a phase error that names the host and the step.
fn host_err(vm: &Vm, addr: &str, e: SshError) -> PhaseError {
    let text = format!("host {} ({addr}): {e}", vm.name);
    match e {
        // A failed step is retried: hosts are often still booting, apt may hold a lock, a peer
        // may not be up yet. Redelivery is bounded, then the create fails with this text.
        SshError::Failed { .. } => PhaseError::Retryable(text),
        e if e.retryable() => PhaseError::Retryable(text),
        _ => PhaseError::Permanent(text),
    }
}

/// Every recorded VM's name and addresses are what they claim before any reaches a script:
/// private addresses are IP addresses, public ones IP addresses or DNS names, names DNS names.
fn check_addresses(infra: &InfraRecord) -> Result<(), PhaseError> {
    use ksctl_core::net;
    for vm in infra.vms.values() {
        let bad = |what: &str, e: String| PhaseError::Permanent(format!("host {}: its {what} address {e}", vm.name));
        net::ip(&vm.private_ip).map_err(|e| bad("private", e))?;
        net::host_address(&vm.public_ip).map_err(|e| bad("public", e))?;
        if !net::is_dns_name(&vm.name) {
            return Err(PhaseError::Permanent(format!("host name {} is not a DNS name", net::shown(&vm.name))));
        }
    }
    Ok(())
}

impl SshHosts {
    pub fn new(store: DynStore, artifacts: Artifacts, settings: Settings) -> Self {
        Self { store, artifacts, settings }
    }

    async fn load(&self, ctx: &PhaseCtx<'_>) -> Result<Run, PhaseError> {
        let id = &ctx.cluster.id;
        let infra: InfraRecord = read_record(&self.store, &keys::cloud(id)).await?;
        if infra.vms.is_empty() {
            return Err(PhaseError::Permanent("the cloud phase recorded no hosts to bootstrap".into()));
        }
        check_addresses(&infra)?;
        let sealed = infra
            .ssh_private_key
            .as_ref()
            .ok_or_else(|| PhaseError::Permanent("the cloud phase recorded no SSH key".into()))?;
        let pem = ctx.rt.sealer.open_string(&format!("ssh/{id}"), sealed)?;
        let key = ksctl_ssh::parse_key(&pem).map_err(|e| PhaseError::Permanent(e.to_string()))?;
        let distro =
            ctx.cluster.distro.ok_or_else(|| PhaseError::Permanent("a self-managed cluster needs a distro".into()))?;
        let spec = &ctx.cluster.spec;
        let flannel = matches!(spec.cni.as_deref(), None | Some("flannel"));
        Ok(Run { infra, key, distro, version: spec.kubernetes_version.clone(), flannel, pki: Default::default() })
    }

    /// Where to log in to `vm`: the address and user the spec lists for `byo`, else the VM's
    /// public address as `ubuntu` (the cloud images' user).
    fn target(ctx: &PhaseCtx<'_>, vm: &Vm) -> Target {
        if let Some(h) = ctx.cluster.spec.hosts.as_ref().and_then(|hosts| hosts.host(vm.role, vm.index)) {
            return Target { host: h.address.clone(), port: h.port, user: h.user.clone() };
        }
        Target { host: vm.public_ip.clone(), port: 22, user: "ubuntu".into() }
    }

    async fn session(&self, ctx: &PhaseCtx<'_>, run: &Run, vm: &Vm) -> Result<(Session, String), PhaseError> {
        let target = Self::target(ctx, vm);
        let addr = target.host.clone();
        let known = match ksctl_ssh::recorded_host_key(&run.infra.host_keys, &addr, target.port) {
            Some(k) => Some(k.to_string()),
            None => {
                let rec = crate::record(&self.store, ctx).await?;
                ksctl_ssh::recorded_host_key(&rec.host_keys, &addr, target.port).map(str::to_string)
            }
        };
        let s = ksctl_ssh::connect_with_retry(
            &target,
            &run.key,
            known.as_deref(),
            self.settings.connect_timeout,
            self.settings.connect_attempts,
        )
        .await
        .map_err(|e| host_err(vm, &addr, e))?;
        if known.is_none() {
            let hk = s.host_key.clone();
            let a = target.host_key_id();
            crate::checkpoint(&self.store, ctx, |r| {
                r.host_keys.entry(a.clone()).or_insert_with(|| hk.clone());
            })
            .await?;
        }
        Ok((s, addr))
    }

    /// Runs `script` as root on `vm`; the script goes over stdin, never onto a command line.
    async fn exec(
        &self,
        ctx: &PhaseCtx<'_>,
        run: &Run,
        vm: &Vm,
        label: &str,
        script: &str,
    ) -> Result<String, PhaseError> {
        let (s, addr) = self.session(ctx, run, vm).await?;
        let out = s.run(label, "sudo -n sh -s", Some(script.as_bytes()), step_timeout(label)).await;
        s.close().await;
        let out = out.map_err(|e| host_err(vm, &addr, e))?;
        tracing::debug!(host = %vm.name, step = label, "host step finished");
        Ok(out.stdout)
    }

    /// The etcd PKI: made once and sealed (the first writer wins, so two racing runs use one),
    /// read once per run.
    async fn etcd_pki<'r>(&self, ctx: &PhaseCtx<'_>, run: &'r Run) -> Result<&'r EtcdPki, PhaseError> {
        run.pki
            .get_or_try_init(|| async {
                let id = &ctx.cluster.id;
                let purpose = format!("etcd-pki/{id}");
                let sealed = match crate::record(&self.store, ctx).await?.etcd_pki {
                    Some(sealed) => sealed,
                    None => {
                        let ds: Vec<(String, String)> = of(&run.infra, Role::Datastore)
                            .iter()
                            .map(|v| (v.name.clone(), v.private_ip.clone()))
                            .collect();
                        let made = pki::etcd(id.as_str(), &ds).map_err(|e| PhaseError::Permanent(e.to_string()))?;
                        let bundle = ctx.rt.sealer.seal(&purpose, &serde_json::to_vec(&made).expect("serializable"));
                        let ca_cert = ctx.rt.sealer.seal(&format!("ca-cert/{id}"), made.ca.cert.as_bytes());
                        let ca_key = ctx.rt.sealer.seal(&format!("ca-key/{id}"), made.ca.key.as_bytes());
                        let written = crate::checkpoint(&self.store, ctx, |r| {
                            if r.etcd_pki.is_none() {
                                r.etcd_pki = Some(bundle.clone());
                                r.ca_cert = Some(ca_cert.clone());
                                r.ca_key = Some(ca_key.clone());
                            }
                        })
                        .await?;
                        written.etcd_pki.expect("written above")
                    }
                };
                let raw = ctx.rt.sealer.open(&purpose, &sealed)?;
                serde_json::from_slice(&raw)
                    .map_err(|e| PhaseError::Permanent(format!("stored etcd PKI unreadable: {e}")))
            })
            .await
    }

    async fn kubeadm_secrets(&self, ctx: &PhaseCtx<'_>) -> Result<KubeadmSecrets, PhaseError> {
        let purpose = format!("kubeadm/{}", ctx.cluster.id);
        let sealed = match crate::record(&self.store, ctx).await?.kubeadm {
            Some(sealed) => sealed,
            None => {
                let (ca, _) = pki::new_ca("kubernetes").map_err(|e| PhaseError::Permanent(e.to_string()))?;
                let s = KubeadmSecrets {
                    ca,
                    token: kubeadm::new_token(),
                    token_expires_ms: ksctl_core::now_ms() + kubeadm::TOKEN_TTL_SECS * 1000,
                    certificate_key: kubeadm::new_certificate_key(),
                    certs_uploaded_ms: ksctl_core::now_ms(),
                };
                self.store_kubeadm(ctx, &s, false).await?.kubeadm.expect("written")
            }
        };
        let raw = ctx.rt.sealer.open(&purpose, &sealed)?;
        serde_json::from_slice(&raw)
            .map_err(|e| PhaseError::Permanent(format!("stored kubeadm secrets unreadable: {e}")))
    }

    /// Records `s` (and its token as the join token); `replace: false` keeps what is there.
    async fn store_kubeadm(
        &self,
        ctx: &PhaseCtx<'_>,
        s: &KubeadmSecrets,
        replace: bool,
    ) -> Result<BootstrapRecord, PhaseError> {
        let sealed = ctx.rt.sealer.seal(&format!("kubeadm/{}", ctx.cluster.id), &serde_json::to_vec(s).expect("json"));
        let token = ctx.rt.sealer.seal(&format!("join-token/{}", ctx.cluster.id), s.token.as_bytes());
        crate::checkpoint(&self.store, ctx, |r| {
            if replace || r.kubeadm.is_none() {
                r.kubeadm = Some(sealed.clone());
                r.join_token = Some(token.clone());
            }
        })
        .await
    }

    /// kubeadm joins after the first hours need a fresh token and re-uploaded certificates; made
    /// here, registered on the first control plane, then recorded.
    async fn refresh_kubeadm(&self, ctx: &PhaseCtx<'_>, run: &Run) -> Result<KubeadmSecrets, PhaseError> {
        let mut s = self.kubeadm_secrets(ctx).await?;
        let now = ksctl_core::now_ms();
        let certs_stale = now + 10 * 60 * 1000 >= s.certs_uploaded_ms + kubeadm::UPLOADED_CERTS_TTL_SECS * 1000;
        if !kubeadm::token_needs_renewal(s.token_expires_ms, now) && !certs_stale {
            return Ok(s);
        }
        if kubeadm::token_needs_renewal(s.token_expires_ms, now) {
            s.token = kubeadm::new_token();
            s.token_expires_ms = now + kubeadm::TOKEN_TTL_SECS * 1000;
        }
        let cp0 = one(&run.infra, Role::ControlPlane)?;
        self.exec(ctx, run, cp0, "kubeadm token refresh", &kubeadm::refresh(&run.version, &s.token)).await?;
        s.certs_uploaded_ms = now;
        self.store_kubeadm(ctx, &s, true).await?;
        Ok(s)
    }

    async fn token(&self, ctx: &PhaseCtx<'_>) -> Result<String, PhaseError> {
        let rec = crate::record(&self.store, ctx).await?;
        let sealed = rec.join_token.ok_or_else(|| {
            PhaseError::Permanent("no join token recorded; did the first control plane finish?".into())
        })?;
        Ok(ctx.rt.sealer.open_string(&format!("join-token/{}", ctx.cluster.id), &sealed)?.trim().to_string())
    }

    /// The script for one host step.
    async fn script(&self, ctx: &PhaseCtx<'_>, run: &Run, s: &HostStep) -> Result<String, PhaseError> {
        let infra = &run.infra;
        let vm = &s.host;
        let lb = one(infra, Role::LoadBalancer)?;
        let endpoints: Vec<String> =
            of(infra, Role::Datastore).iter().map(|d| format!("https://{}:2379", d.private_ip)).collect();
        let cps: Vec<Backend> = of(infra, Role::ControlPlane)
            .iter()
            .map(|v| Backend { name: v.name.clone(), ip: v.private_ip.clone() })
            .collect();
        let sans = vec![lb.public_ip.clone(), lb.private_ip.clone()];
        let a = &self.artifacts;
        let first_cp = cps.first().map(|c| c.name == vm.name).unwrap_or(false);
        Ok(match s.step {
            "haproxy" => scripts::haproxy(&cps),
            "etcd" => {
                let pki = self.etcd_pki(ctx, run).await?;
                let ds: Vec<(String, String)> =
                    of(infra, Role::Datastore).iter().map(|v| (v.name.clone(), v.private_ip.clone())).collect();
                let missing = || PhaseError::Permanent(format!("no etcd certificate for {}", vm.name));
                scripts::etcd(&scripts::EtcdMember {
                    name: &vm.name,
                    ip: &vm.private_ip,
                    cluster: &ds,
                    token: &format!("ksctl-{}", ctx.cluster.id),
                    ca: &pki.ca.cert,
                    server: pki.server.get(&vm.name).ok_or_else(missing)?,
                    peer: pki.peer.get(&vm.name).ok_or_else(missing)?,
                    client: &pki.client,
                })
            }
            "k3s-init" | "k3s-server-join" => {
                let pki = self.etcd_pki(ctx, run).await?;
                let token = if first_cp { None } else { Some(self.token(ctx).await?) };
                scripts::k3s_server(
                    &scripts::K3sServer {
                        node_name: &vm.name,
                        version: &run.version,
                        etcd_endpoints: &endpoints,
                        etcd_ca: &pki.ca.cert,
                        etcd_client: &pki.client,
                        tls_sans: &sans,
                        token: token.as_deref(),
                        flannel: run.flannel,
                    },
                    a,
                )
            }
            "k3s-agent-join" => scripts::k3s_agent(&vm.name, &run.version, &lb.private_ip, &self.token(ctx).await?, a),
            "kubeadm-init" => {
                let pki = self.etcd_pki(ctx, run).await?;
                let secrets = self.kubeadm_secrets(ctx).await?;
                let cfg = kubeadm::ClusterConfig {
                    cluster_name: ctx.cluster.spec.cluster_name.as_str(),
                    version: &run.version,
                    node_name: &vm.name,
                    advertise_ip: &vm.private_ip,
                    lb_private_ip: &lb.private_ip,
                    lb_public_ip: &lb.public_ip,
                    etcd_endpoints: &endpoints,
                    token: &secrets.token,
                    certificate_key: &secrets.certificate_key,
                };
                kubeadm::init(&cfg, &secrets, &pki.ca.cert, &pki.client, a)
                    .map_err(|e| PhaseError::Permanent(e.to_string()))?
            }
            "kubeadm-cp-join" | "kubeadm-worker-join" => {
                let pki = self.etcd_pki(ctx, run).await?;
                let secrets = self.refresh_kubeadm(ctx, run).await?;
                let hash = pki::ca_cert_hash(&secrets.ca.key).map_err(|e| PhaseError::Permanent(e.to_string()))?;
                let cp = s.step == "kubeadm-cp-join";
                let join = kubeadm::Join {
                    version: &run.version,
                    lb_private_ip: &lb.private_ip,
                    token: &secrets.token,
                    ca_hash: &hash,
                    node_name: &vm.name,
                    node_ip: &vm.private_ip,
                    certificate_key: cp.then_some(secrets.certificate_key.as_str()),
                    wait_ready: ctx.cmd.phase == ksctl_core::saga::Phase::BootstrapJoin,
                };
                let etcd: Option<(&str, &CertKey)> = cp.then_some((pki.ca.cert.as_str(), &pki.client));
                kubeadm::join(s.step, &join, etcd, a).map_err(|e| PhaseError::Permanent(e.to_string()))?
            }
            other => return Err(PhaseError::Permanent(format!("unknown bootstrap step {other}"))),
        })
    }

    /// Runs one host step; the first k3s server's token is read and recorded with the checkpoint.
    async fn run_step(&self, ctx: &PhaseCtx<'_>, run: &Run, s: &HostStep) -> Result<(), PhaseError> {
        let script = self.script(ctx, run, s).await?;
        let (session, addr) = self.session(ctx, run, &s.host).await?;
        let ran = async {
            session.run(s.step, "sudo -n sh -s", Some(script.as_bytes()), step_timeout(s.step)).await?;
            if s.step != "k3s-init" {
                return Ok(None);
            }
            let cat = format!("sudo -n cat {}", scripts::K3S_TOKEN_FILE);
            session.run("read k3s token", &cat, None, step_timeout(s.step)).await.map(Some)
        }
        .await;
        session.close().await;
        let token = match ran.map_err(|e| host_err(&s.host, &addr, e))? {
            None => None,
            Some(out) if out.stdout.trim().is_empty() => {
                return Err(PhaseError::Retryable(format!("host {}: k3s wrote an empty token", s.host.name)));
            }
            Some(out) => {
                Some(ctx.rt.sealer.seal(&format!("join-token/{}", ctx.cluster.id), out.stdout.trim().as_bytes()))
            }
        };
        let key = s.key();
        crate::checkpoint(&self.store, ctx, |r| {
            r.steps_done.insert(key.clone());
            if let Some(t) = &token {
                r.join_token = Some(t.clone());
            }
        })
        .await?;
        Ok(())
    }

    async fn run_wave(
        &self,
        ctx: &PhaseCtx<'_>,
        run: &Run,
        wave: Vec<HostStep>,
        done: &AtomicU32,
        total: u32,
    ) -> Result<(), PhaseError> {
        crate::run_wave(&self.store, ctx, wave, done, total, self.settings.parallel, |s| async move {
            self.run_step(ctx, run, &s).await
        })
        .await
    }

    /// etcd answers healthy over TLS with every member, checked from the first datastore.
    async fn check_etcd(&self, ctx: &PhaseCtx<'_>, run: &Run) -> Result<(), PhaseError> {
        let ds = of(&run.infra, Role::Datastore);
        let eps: Vec<String> = ds.iter().map(|d| format!("https://{}:2379", d.private_ip)).collect();
        let first = ds.first().ok_or_else(|| PhaseError::Permanent("no datastore hosts".into()))?;
        self.exec(ctx, run, first, "etcd-health", &scripts::etcd_health(&eps, ds.len(), ETCD_HEALTH_SECS)).await?;
        Ok(())
    }

    /// The admin kubeconfig from the first control plane, pointed at the load balancer's public
    /// address under ksctl's context name, sealed in state.
    async fn fetch_kubeconfig(&self, ctx: &PhaseCtx<'_>, run: &Run) -> Result<(), PhaseError> {
        let cp0 = one(&run.infra, Role::ControlPlane)?;
        let lb = one(&run.infra, Role::LoadBalancer)?;
        let path = match run.distro {
            Distro::K3s => scripts::K3S_KUBECONFIG,
            Distro::Kubeadm => kubeadm::ADMIN_KUBECONFIG,
        };
        let raw = self.exec(ctx, run, cp0, "read kubeconfig", &format!("cat {path}")).await?;
        let server = format!("https://{}:6443", lb.public_ip);
        // Only the server's CA and the admin's certificate, as data, survive: nothing the host
        // wrote can make the k8s-controller or a user's kubectl run or read anything.
        let kc = ksctl_core::kubeconfig::adopt(&raw, &context_name(ctx.cluster), Some(&server)).map_err(|e| {
            let text = format!("host {}: {path}: {e}", cp0.name);
            if e.starts_with("not a kubeconfig") { PhaseError::Retryable(text) } else { PhaseError::Permanent(text) }
        })?;
        let sealed = ctx.rt.sealer.seal(&format!("kubeconfig/{}", ctx.cluster.id), kc.as_bytes());
        crate::checkpoint(&self.store, ctx, |r| r.kubeconfig = Some(sealed.clone())).await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Bootstrapper for SshHosts {
    async fn bootstrap(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let run = self.load(ctx).await?;
        let vms: Vec<Vm> = run.infra.vms.values().cloned().collect();
        let mut waves = bootstrap_waves(&vms, run.distro).into_iter();
        let first = waves.next().unwrap_or_default();
        let rest: Vec<Vec<HostStep>> = waves.collect();
        // + certificates, etcd health, kubeconfig.
        let total = 3 + first.len() as u32 + rest.iter().map(|w| w.len() as u32).sum::<u32>();
        let done = AtomicU32::new(0);

        self.etcd_pki(ctx, &run).await?;
        if run.distro == Distro::Kubeadm {
            self.kubeadm_secrets(ctx).await?;
        }
        ctx.progress("certificates", done.fetch_add(1, Ordering::SeqCst) + 1, total).await;

        self.run_wave(ctx, &run, first, &done, total).await?;
        self.check_etcd(ctx, &run).await?;
        ctx.progress("etcd cluster healthy", done.fetch_add(1, Ordering::SeqCst) + 1, total).await;

        for wave in rest {
            self.run_wave(ctx, &run, wave, &done, total).await?;
        }
        self.fetch_kubeconfig(ctx, &run).await?;
        ctx.progress("kubeconfig", done.fetch_add(1, Ordering::SeqCst) + 1, total).await;
        Ok(())
    }

    async fn join(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let run = self.load(ctx).await?;
        let rec = crate::record(&self.store, ctx).await?;
        if rec.kubeconfig.is_none() {
            return Err(PhaseError::Permanent("the cluster was never bootstrapped; nothing to join".into()));
        }
        let vms: Vec<Vm> = run.infra.vms.values().cloned().collect();
        let wave = join_wave(&vms, run.distro, &rec.steps_done);
        let total = wave.len() as u32;
        self.run_wave(ctx, &run, wave, &AtomicU32::new(0), total).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ksctl_core::records::Vm;

    #[test]
    fn recorded_addresses_are_checked_before_any_script() {
        let vm = |private: &str, public: &str, name: &str| {
            let mut infra = InfraRecord::default();
            let v = Vm {
                id: "i".into(),
                name: name.into(),
                role: Role::ControlPlane,
                index: 0,
                public_ip: public.into(),
                private_ip: private.into(),
            };
            infra.vms.insert(name.into(), v);
            check_addresses(&infra)
        };
        assert!(vm("10.0.0.2", "host.example.com", "demo-vm-cp-0").is_ok());
        let err = vm("1.2.3.4;touch /tmp/pwned", "1.2.3.4", "demo-vm-cp-0").unwrap_err().to_string();
        assert!(err.contains("private address") && err.contains("not an IP address"), "{err}");
        assert!(vm("10.0.0.2", "$(reboot)", "demo-vm-cp-0").is_err());
        assert!(vm("10.0.0.2", "10.0.0.3", "cp;id").is_err());
    }
}
