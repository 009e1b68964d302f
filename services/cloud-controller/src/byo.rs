//! Bring-your-own hosts: machines the user already has (bare metal, on-prem VMs). The cloud phase
//! creates nothing: it checks that every listed host answers over SSH with the referenced key and
//! has passwordless sudo, records each host's SSH host key (enforced from then on) and its
//! addresses, and seals the key into state for the bootstrap. Delete undoes what ksctl installed
//! and leaves the machines.
use crate::CloudProvider;
use futures::StreamExt;
use ksctl_core::records::{InfraRecord, Role, Vm};
use ksctl_core::spec::HostSpec;
use ksctl_runtime::{FailedCommand, PhaseCtx, PhaseError, host_error};
use ksctl_runtime::{checkpoint, phase_record};
use ksctl_ssh::{Session, SshError, Target};
use ksctl_store::DynStore;
use std::path::PathBuf;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_ATTEMPTS: u32 = 3;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const PARALLEL_HOSTS: usize = 16;

pub struct ByoCloud {
    store: DynStore,
    keys_dir: PathBuf,
}

/// A host's SSH failure: a check that ran and failed means the host is not fit.
fn host_err(who: &str, e: SshError) -> PhaseError {
    host_error(who, e, FailedCommand::Fail)
}

impl ByoCloud {
    pub fn new(store: DynStore, keys_dir: PathBuf) -> Self {
        Self { store, keys_dir }
    }

    /// The cluster's private key: sealed in state, or read from the key directory on first use.
    /// `state`: the cluster's infra record, as the caller just read it.
    async fn key(&self, ctx: &PhaseCtx<'_>, state: &InfraRecord) -> Result<ksctl_ssh::PrivateKey, PhaseError> {
        let id = &ctx.cluster.id;
        let purpose = format!("ssh/{id}");
        let pem = match &state.ssh_private_key {
            Some(s) => ctx.rt.sealer.open_string(&purpose, s)?,
            None => {
                let name = &ctx.cluster.spec.hosts.as_ref().expect("validated").ssh_key;
                let path = self.keys_dir.join(name);
                let pem = std::fs::read_to_string(&path).map_err(|e| {
                    PhaseError::permanent(format!(
                        "SSH key {name:?} not found: reading {} failed ({e}); put the private key there (KSCTL_BYO_KEYS_DIR)",
                        path.display()
                    ))
                })?;
                ksctl_ssh::parse_key(&pem).map_err(|e| PhaseError::permanent(format!("SSH key {name:?}: {e}")))?;
                let sealed = ctx.rt.sealer.seal(&purpose, pem.as_bytes());
                checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
                    i.ssh_private_key.get_or_insert_with(|| sealed.clone());
                })
                .await?;
                pem
            }
        };
        ksctl_ssh::parse_key(&pem).map_err(|e| PhaseError::caused_by(false, e))
    }

    async fn session(
        &self,
        key: &ksctl_ssh::PrivateKey,
        host: &HostSpec,
        known: Option<&str>,
        who: &str,
    ) -> Result<Session, PhaseError> {
        let target = Target { host: host.address.clone(), port: host.port, user: host.user.clone() };
        ksctl_ssh::connect_with_retry(
            &target,
            key,
            known,
            CONNECT_TIMEOUT,
            ksctl_core::backoff::ssh_connect(CONNECT_ATTEMPTS),
        )
        .await
        .map_err(|e| host_err(who, e))
    }
    /// Checks `hosts` over SSH in parallel (key, sudo, addresses) and records each as a VM with
    /// its host key. Every host is tried; the first failure is reported.
    async fn check_hosts(&self, ctx: &PhaseCtx<'_>, hosts: Vec<(Role, u32, HostSpec)>) -> Result<(), PhaseError> {
        let id = &ctx.cluster.id;
        let state = phase_record::<InfraRecord>(&self.store, ctx).await?;
        let key = self.key(ctx, &state).await?;
        let known = state.host_keys;
        let total = hosts.len() as u32;
        let done = std::sync::atomic::AtomicU32::new(0);
        let checks = futures::stream::iter(hosts)
            .map(|(role, index, host)| {
                let (key, known, done) = (&key, &known, &done);
                async move {
                    let name = role.vm_name(id, index);
                    let who = format!("{name} ({})", host.address);
                    let s = self
                        .session(key, &host, ksctl_ssh::recorded_host_key(known, &host.address, host.port), &who)
                        .await?;
                    s.run(ksctl_ssh::SUDO_CHECK, "sudo -n true", None, COMMAND_TIMEOUT)
                        .await
                        .map_err(|e| host_err(&who, e))?;
                    let ips = s
                        .run("addresses", "hostname -I", None, COMMAND_TIMEOUT)
                        .await
                        .map_err(|e| host_err(&who, e))?;
                    // Whatever the host prints is checked: only an IP address goes on to scripts.
                    let private_ip = match ips.stdout.split_whitespace().next() {
                        None => host.address.clone(),
                        Some(first) => ksctl_core::net::ip(first)
                            .map_err(|e| {
                                PhaseError::permanent(format!("host {who}: `hostname -I` printed an address that {e}"))
                            })?
                            .to_string(),
                    };
                    let host_key = s.host_key.clone();
                    s.close().await;
                    let vm = Vm {
                        // A host that leaves (scale down) and comes back is a new member: its
                        // id, which keys the bootstrap's checkpoints, names the operation too.
                        id: format!("{}:{}/{}", host.address, host.port, ctx.cmd.op_id),
                        name: name.clone(),
                        role,
                        index,
                        public_ip: host.address.clone(),
                        private_ip,
                    };
                    checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
                        i.host_keys
                            .entry(ksctl_ssh::host_key_id(&host.address, host.port))
                            .or_insert_with(|| host_key.clone());
                        i.vms.insert(name.clone(), vm.clone());
                    })
                    .await?;
                    let n = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    ctx.progress(format!("{who} answers over SSH with sudo"), n, total).await;
                    Ok::<_, PhaseError>(())
                }
            })
            .buffer_unordered(PARALLEL_HOSTS)
            .collect::<Vec<_>>()
            .await;
        checks.into_iter().collect::<Result<Vec<_>, _>>().map(|_| ())
    }

    /// Removes ksctl's software from the recorded hosts `vms` (one after another) and forgets
    /// each once done, so a retried phase does not visit it again.
    async fn uninstall(&self, ctx: &PhaseCtx<'_>, vms: Vec<Vm>) -> Result<(), PhaseError> {
        if vms.is_empty() {
            return Ok(());
        }
        let state = phase_record::<InfraRecord>(&self.store, ctx).await?;
        let key = self.key(ctx, &state).await?;
        let hosts = byo_hosts(ctx)?;
        let total = vms.len() as u32;
        for (n, vm) in vms.iter().enumerate() {
            let Some(host) = hosts.host(vm.role, vm.index) else {
                continue;
            };
            let who = format!("{} ({})", vm.name, host.address);
            let s = self
                .session(&key, host, ksctl_ssh::recorded_host_key(&state.host_keys, &host.address, host.port), &who)
                .await?;
            let script = ksctl_ssh::host::uninstall_script();
            s.run("uninstall", "sudo -n sh -s", Some(script.as_bytes()), COMMAND_TIMEOUT)
                .await
                .map_err(|e| host_err(&who, e))?;
            s.close().await;
            checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
                i.vms.remove(&vm.name);
            })
            .await?;
            ctx.progress(format!("{who}: ksctl's software removed; the machine stays"), n as u32 + 1, total).await;
        }
        Ok(())
    }
}

fn byo_hosts<'a>(ctx: &'a PhaseCtx<'_>) -> Result<&'a ksctl_core::spec::ByoHosts, PhaseError> {
    ctx.cluster.spec.hosts.as_ref().ok_or_else(|| PhaseError::permanent("provider byo needs hosts in the spec".into()))
}

#[async_trait::async_trait]
impl CloudProvider for ByoCloud {
    async fn create(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let hosts = byo_hosts(ctx)?;
        let all = hosts.in_use(ctx.cluster.spec.worker_nodes).into_iter().map(|(r, i, h)| (r, i, h.clone())).collect();
        self.check_hosts(ctx, all).await
    }

    async fn delete(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let vms = phase_record::<InfraRecord>(&self.store, ctx).await?.vms.into_values().collect();
        self.uninstall(ctx, vms).await?;
        self.store.delete(&ksctl_core::keys::cloud(&ctx.cluster.id)).await?;
        Ok(())
    }

    /// Takes the next spare worker hosts listed in the spec (the manager refuses a target beyond them).
    async fn scale_up(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let target = ctx.target_workers()?;
        let known = phase_record::<InfraRecord>(&self.store, ctx).await?;
        let new: Vec<_> = byo_hosts(ctx)?
            .in_use(target)
            .into_iter()
            .filter(|(r, i, _)| *r == Role::Worker && !known.vms.contains_key(&r.vm_name(&ctx.cluster.id, *i)))
            .map(|(r, i, h)| (r, i, h.clone()))
            .collect();
        self.check_hosts(ctx, new).await
    }

    /// The workers with the highest indices leave the cluster (the k8s phase drained them):
    /// ksctl's software goes, the machines stay and become spares again.
    async fn scale_down(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let target = ctx.target_workers()?;
        let gone = phase_record::<InfraRecord>(&self.store, ctx).await?.workers_beyond(target);
        self.uninstall(ctx, gone).await
    }
}
