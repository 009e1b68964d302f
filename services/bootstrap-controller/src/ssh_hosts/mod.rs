//! The bootstrap over SSH, for every provider whose VMs are real hosts (`byo`, `aws`, `azure`). Follows
//! [`plan::bootstrap_waves`]: load balancer and datastores in parallel, etcd verified healthy,
//! the first control plane alone, then the other control planes and the workers in parallel.
//! Every host step is a script from [`scripts`]/[`kubeadm`] that is idempotent on the host and
//! checkpointed in the bootstrap record, so a restarted controller resumes where it stopped.
//!
//! Here: loading what a run needs, SSH sessions and the provider's two entry points. The
//! cluster's secrets (etcd PKI, kubeadm's CA and tokens) are in [`secrets`]; each step's script,
//! the step runner and the kubeconfig fetch in [`steps`].
mod secrets;
mod steps;

use crate::Bootstrapper;
use crate::kubeadm::{self, KubeadmSecrets};
use crate::pki::{self, CertKey, EtcdPki};
use crate::plan::{HOST_COMMAND_TIMEOUT, HostStep, Step, bootstrap_waves, join_wave};
use crate::scripts::{self, Backend};
use ksctl_core::artifacts::Artifacts;
use ksctl_core::keys;
use ksctl_core::messages::context_name;
use ksctl_core::records::{BootstrapRecord, InfraRecord, Role, Vm};
use ksctl_core::spec::{Cni, Distro};
use ksctl_runtime::{FailedCommand, PhaseCtx, PhaseError, checkpoint, host_error, phase_record, read_record};
use ksctl_ssh::{PrivateKey, Session, SshError, Target};
use ksctl_store::DynStore;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

const ETCD_HEALTH_SECS: u32 = 90;

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

/// What every step of one bootstrap (or join) needs, loaded once at its start.
struct Loaded {
    infra: InfraRecord,
    key: PrivateKey,
    distro: Distro,
    version: String,
    flannel: bool,
    /// The etcd PKI, read (or made) once per run.
    pki: tokio::sync::OnceCell<EtcdPki>,
}

/// The hosts of one role, by index.
fn hosts_of(infra: &InfraRecord, role: Role) -> Vec<&Vm> {
    let mut v: Vec<&Vm> = infra.vms_of(role).collect();
    v.sort_by_key(|v| v.index);
    v
}

/// The etcd members: each datastore's name and private address.
fn etcd_members(infra: &InfraRecord) -> Vec<(String, String)> {
    hosts_of(infra, Role::Datastore).iter().map(|v| (v.name.clone(), v.private_ip.clone())).collect()
}

/// The etcd client endpoints, `https://<private address>:2379`.
fn etcd_endpoints(infra: &InfraRecord) -> Vec<String> {
    hosts_of(infra, Role::Datastore).iter().map(|d| format!("https://{}:2379", d.private_ip)).collect()
}

/// The first host of a role (the load balancer, the first control plane).
fn first_host(infra: &InfraRecord, role: Role) -> Result<&Vm, PhaseError> {
    hosts_of(infra, role)
        .into_iter()
        .next()
        .ok_or_else(|| PhaseError::permanent(format!("the cloud phase recorded no {} host", role.title())))
}

/// A host's failure as a phase error that names the host and the step; a failed step is
/// tried again.
fn host_err(vm: &Vm, addr: &str, e: SshError) -> PhaseError {
    host_error(&format!("{} ({addr})", vm.name), e, FailedCommand::Retry)
}

/// Every recorded VM's name and addresses are what they claim before any reaches a script:
/// private addresses are IP addresses, public ones IP addresses or DNS names, names DNS names.
fn check_addresses(infra: &InfraRecord) -> Result<(), PhaseError> {
    use ksctl_core::net;
    for vm in infra.vms.values() {
        let bad = |what: &str, e: String| PhaseError::permanent(format!("host {}: its {what} address {e}", vm.name));
        net::ip(&vm.private_ip).map_err(|e| bad("private", e))?;
        net::host_address(&vm.public_ip).map_err(|e| bad("public", e))?;
        if !net::is_dns_name(&vm.name) {
            return Err(PhaseError::permanent(format!("host name {} is not a DNS name", net::shown(&vm.name))));
        }
    }
    Ok(())
}

impl SshHosts {
    pub fn new(store: DynStore, artifacts: Artifacts, settings: Settings) -> Self {
        Self { store, artifacts, settings }
    }

    async fn load(&self, ctx: &PhaseCtx<'_>) -> Result<Loaded, PhaseError> {
        let id = &ctx.cluster.id;
        let infra: InfraRecord = read_record(&self.store, &keys::cloud(id)).await?;
        if infra.vms.is_empty() {
            return Err(PhaseError::permanent("the cloud phase recorded no hosts to bootstrap".into()));
        }
        check_addresses(&infra)?;
        let sealed = infra
            .ssh_private_key
            .as_ref()
            .ok_or_else(|| PhaseError::permanent("the cloud phase recorded no SSH key".into()))?;
        let pem = ctx.rt.sealer.open_string(&format!("ssh/{id}"), sealed)?;
        let key = ksctl_ssh::parse_key(&pem).map_err(|e| PhaseError::caused_by(false, e))?;
        let distro =
            ctx.cluster.distro.ok_or_else(|| PhaseError::permanent("a self-managed cluster needs a distro".into()))?;
        let spec = &ctx.cluster.spec;
        let flannel = matches!(spec.cni(), None | Some(Cni::Flannel));
        Ok(Loaded { infra, key, distro, version: spec.kubernetes_version.clone(), flannel, pki: Default::default() })
    }

    /// Where to log in to `vm`: the address and user the spec lists for `byo`, else the VM's
    /// public address as `ubuntu` (the cloud images' user).
    fn target(ctx: &PhaseCtx<'_>, vm: &Vm) -> Target {
        if let Some(h) = ctx.cluster.spec.hosts.as_ref().and_then(|hosts| hosts.host(vm.role, vm.index)) {
            return Target { host: h.address.clone(), port: h.port, user: h.user.clone() };
        }
        Target { host: vm.public_ip.clone(), port: 22, user: "ubuntu".into() }
    }

    async fn session(&self, ctx: &PhaseCtx<'_>, run: &Loaded, vm: &Vm) -> Result<(Session, String), PhaseError> {
        let target = Self::target(ctx, vm);
        let addr = target.host.clone();
        let known = match ksctl_ssh::recorded_host_key(&run.infra.host_keys, &addr, target.port) {
            Some(k) => Some(k.to_string()),
            None => {
                let rec = phase_record::<BootstrapRecord>(&self.store, ctx).await?;
                ksctl_ssh::recorded_host_key(&rec.host_keys, &addr, target.port).map(str::to_string)
            }
        };
        let s = ksctl_ssh::connect_with_retry(
            &target,
            &run.key,
            known.as_deref(),
            self.settings.connect_timeout,
            ksctl_core::backoff::ssh_connect(self.settings.connect_attempts),
        )
        .await
        .map_err(|e| host_err(vm, &addr, e))?;
        if known.is_none() {
            let hk = s.host_key.clone();
            let a = target.host_key_id();
            checkpoint(&self.store, ctx, |r: &mut BootstrapRecord| {
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
        run: &Loaded,
        vm: &Vm,
        label: &str,
        script: &str,
        timeout: Duration,
    ) -> Result<String, PhaseError> {
        let (s, addr) = self.session(ctx, run, vm).await?;
        let out = s.run(label, "sudo -n sh -s", Some(script.as_bytes()), timeout).await;
        s.close().await;
        let out = out.map_err(|e| host_err(vm, &addr, e))?;
        tracing::debug!(host = %vm.name, step = label, "host step finished");
        Ok(out.stdout)
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
        let rec = phase_record::<BootstrapRecord>(&self.store, ctx).await?;
        if rec.kubeconfig.is_none() {
            return Err(PhaseError::permanent("the cluster was never bootstrapped; nothing to join".into()));
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
