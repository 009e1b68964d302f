//! Bring-your-own hosts: machines the user already has (bare metal, on-prem VMs). The cloud phase
//! creates nothing: it checks that every listed host answers over SSH with the referenced key and
//! has passwordless sudo, records each host's SSH host key (enforced from then on) and its
//! addresses, and seals the key into state for the bootstrap. Delete undoes what ksctl installed
//! and leaves the machines.
use crate::{CloudProvider, checkpoint, infra};
use futures::StreamExt;
use ksctl_core::records::Vm;
use ksctl_core::spec::HostSpec;
use ksctl_runtime::{PhaseCtx, PhaseError};
use ksctl_ssh::{Session, SshError, Target};
use ksctl_store::DynStore;
use std::path::PathBuf;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_ATTEMPTS: u32 = 3;
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
const PARALLEL_HOSTS: usize = 16;

/// What ksctl installs on a host, removed on delete; every command tolerates "not there".
pub const UNINSTALL: &str = "set -e
for unit in k3s k3s-agent kubelet ksctl-etcd haproxy; do
  sudo -n systemctl disable --now \"$unit\" >/dev/null 2>&1 || true
done
[ -x /usr/local/bin/k3s-uninstall.sh ] && sudo -n /usr/local/bin/k3s-uninstall.sh >/dev/null 2>&1 || true
[ -x /usr/local/bin/k3s-agent-uninstall.sh ] && sudo -n /usr/local/bin/k3s-agent-uninstall.sh >/dev/null 2>&1 || true
sudo -n pkill -f '^/usr/bin/etcd --name ksctl-' || true
sudo -n rm -rf /etc/ksctl /var/lib/ksctl
";

pub struct ByoCloud {
    store: DynStore,
    keys_dir: PathBuf,
}

/// A host's SSH failure as a phase error naming the host.
fn host_err(who: &str, e: SshError) -> PhaseError {
    let hint = match &e {
        SshError::Failed { label, .. } if label == "sudo check" => {
            " — the SSH user needs passwordless sudo (NOPASSWD in sudoers)"
        }
        SshError::Auth { .. } => " — is the key's public half in the user's authorized_keys?",
        _ => "",
    };
    let text = format!("host {who}: {e}{hint}");
    if e.retryable() { PhaseError::Retryable(text) } else { PhaseError::Permanent(text) }
}

impl ByoCloud {
    pub fn new(store: DynStore, keys_dir: PathBuf) -> Self {
        Self { store, keys_dir }
    }

    /// The cluster's private key: sealed in state, or read from the key directory on first use.
    async fn key(&self, ctx: &PhaseCtx<'_>) -> Result<ksctl_ssh::PrivateKey, PhaseError> {
        let id = &ctx.cluster.id;
        let purpose = format!("ssh/{id}");
        let state = infra(&self.store, ctx).await?;
        let pem = match &state.ssh_private_key {
            Some(s) => ctx.rt.sealer.open_string(&purpose, s)?,
            None => {
                let name = &ctx.cluster.spec.hosts.as_ref().expect("validated").ssh_key;
                let path = self.keys_dir.join(name);
                let pem = std::fs::read_to_string(&path).map_err(|e| {
                    PhaseError::Permanent(format!(
                        "SSH key {name:?} not found: reading {} failed ({e}); put the private key there (KSCTL_BYO_KEYS_DIR)",
                        path.display()
                    ))
                })?;
                ksctl_ssh::parse_key(&pem).map_err(|e| PhaseError::Permanent(format!("SSH key {name:?}: {e}")))?;
                let sealed = ctx.rt.sealer.seal(&purpose, pem.as_bytes());
                checkpoint(&self.store, ctx, |i| {
                    i.ssh_private_key.get_or_insert_with(|| sealed.clone());
                })
                .await?;
                pem
            }
        };
        ksctl_ssh::parse_key(&pem).map_err(|e| PhaseError::Permanent(e.to_string()))
    }

    async fn session(
        &self,
        key: &ksctl_ssh::PrivateKey,
        host: &HostSpec,
        known: Option<&str>,
        who: &str,
    ) -> Result<Session, PhaseError> {
        let target = Target { host: host.address.clone(), port: host.port, user: host.user.clone() };
        ksctl_ssh::connect_with_retry(&target, key, known, CONNECT_TIMEOUT, CONNECT_ATTEMPTS)
            .await
            .map_err(|e| host_err(who, e))
    }
}

#[async_trait::async_trait]
impl CloudProvider for ByoCloud {
    async fn create(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let id = &ctx.cluster.id;
        let hosts = ctx
            .cluster
            .spec
            .hosts
            .as_ref()
            .ok_or_else(|| PhaseError::Permanent("provider byo needs hosts in the spec".into()))?;
        let key = self.key(ctx).await?;
        let known = infra(&self.store, ctx).await?.host_keys;
        let all: Vec<_> = hosts.all().into_iter().map(|(r, i, h)| (r, i, h.clone())).collect();
        let total = all.len() as u32;
        let done = std::sync::atomic::AtomicU32::new(0);
        let checks = futures::stream::iter(all)
            .map(|(role, index, host)| {
                let (key, known, done) = (&key, &known, &done);
                async move {
                    let name = role.vm_name(id, index);
                    let who = format!("{name} ({})", host.address);
                    let s = self.session(key, &host, known.get(&host.address).map(String::as_str), &who).await?;
                    s.run("sudo check", "sudo -n true", None, COMMAND_TIMEOUT).await.map_err(|e| host_err(&who, e))?;
                    let ips = s
                        .run("addresses", "hostname -I", None, COMMAND_TIMEOUT)
                        .await
                        .map_err(|e| host_err(&who, e))?;
                    let private_ip = ips.stdout.split_whitespace().next().unwrap_or(&host.address).to_string();
                    let host_key = s.host_key.clone();
                    s.close().await;
                    let vm = Vm {
                        id: format!("{}:{}", host.address, host.port),
                        name: name.clone(),
                        role,
                        index,
                        public_ip: host.address.clone(),
                        private_ip,
                    };
                    checkpoint(&self.store, ctx, |i| {
                        i.host_keys.entry(host.address.clone()).or_insert_with(|| host_key.clone());
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
        // Report the first failure; every host was tried, so the user sees one cause at a time
        // but nothing is skipped silently.
        checks.into_iter().collect::<Result<Vec<_>, _>>().map(|_| ())
    }

    async fn delete(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let state = infra(&self.store, ctx).await?;
        if !state.vms.is_empty() {
            let key = self.key(ctx).await?;
            let hosts = ctx.cluster.spec.hosts.as_ref().map(|h| h.all()).unwrap_or_default();
            let total = state.vms.len() as u32;
            for (n, vm) in state.vms.values().enumerate() {
                let Some((_, _, host)) = hosts.iter().find(|(r, i, _)| *r == vm.role && *i == vm.index) else {
                    continue;
                };
                let who = format!("{} ({})", vm.name, host.address);
                let s = self.session(&key, host, state.host_keys.get(&host.address).map(String::as_str), &who).await?;
                s.run("uninstall", UNINSTALL, None, COMMAND_TIMEOUT).await.map_err(|e| host_err(&who, e))?;
                s.close().await;
                // Done hosts leave the record, so a retried delete does not visit them again.
                checkpoint(&self.store, ctx, |i| {
                    i.vms.remove(&vm.name);
                })
                .await?;
                ctx.progress(format!("{who}: ksctl's software removed; the machine stays"), n as u32 + 1, total).await;
            }
        }
        self.store.delete(&ksctl_core::keys::cloud(&ctx.cluster.id)).await?;
        Ok(())
    }

    async fn scale_up(&self, _ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        Err(PhaseError::Permanent(
            "byo clusters cannot be scaled by a count yet: their hosts are listed in the spec".into(),
        ))
    }

    async fn scale_down(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        self.scale_up(ctx).await
    }
}
