//! Simulated hosts: each host step runs on the simulated VM (recorded in its history, so tests
//! see a step that ran again) and is checkpointed in the bootstrap record.
use crate::Bootstrapper;
use crate::plan::{HostStep, bootstrap_waves, join_wave};
use ksctl_core::keys;
use ksctl_core::messages::context_name;
use ksctl_core::records::{BootstrapRecord, InfraRecord, Role, Vm};
use ksctl_core::spec::Distro;
use ksctl_runtime::sim::{Sim, SimConfig, fake_pem, fake_token};
use ksctl_runtime::{PhaseCtx, PhaseError, checkpoint, phase_record, read_record};
use ksctl_store::DynStore;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct SimHosts {
    store: DynStore,
    sim: Sim,
}

impl SimHosts {
    pub fn new(store: DynStore, cfg: SimConfig) -> Self {
        Self { sim: Sim::new(store.clone(), cfg), store }
    }

    async fn vms(&self, ctx: &PhaseCtx<'_>) -> Result<Vec<Vm>, PhaseError> {
        let infra: InfraRecord = read_record(&self.store, &keys::cloud(&ctx.cluster.id)).await?;
        if infra.vms.is_empty() {
            return Err(PhaseError::permanent("the cloud phase recorded no VMs to bootstrap".into()));
        }
        if infra.ssh_private_key.is_none() {
            return Err(PhaseError::permanent("the cloud phase recorded no SSH key".into()));
        }
        Ok(infra.vms.into_values().collect())
    }

    /// Runs one wave: each step not yet checkpointed runs on its simulated host, then is checkpointed.
    async fn run_wave(
        &self,
        ctx: &PhaseCtx<'_>,
        wave: Vec<HostStep>,
        done: &AtomicU32,
        total: u32,
    ) -> Result<(), PhaseError> {
        crate::run_wave(&self.store, ctx, wave, done, total, crate::PARALLEL_HOSTS, |s| async move {
            let step = format!("bootstrap.{}", s.step);
            self.sim.run(&step, self.sim.apply_on_host(&ctx.cluster.id, &s.host.id, s.step.as_str())).await?;
            let key = s.key();
            checkpoint(&self.store, ctx, |r: &mut BootstrapRecord| {
                r.steps_done.insert(key.clone());
            })
            .await?;
            Ok(())
        })
        .await
    }

    fn distro(ctx: &PhaseCtx<'_>) -> Result<Distro, PhaseError> {
        ctx.cluster.distro.ok_or_else(|| PhaseError::permanent("a self-managed cluster needs a distro".into()))
    }
}

#[async_trait::async_trait]
impl Bootstrapper for SimHosts {
    async fn bootstrap(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let id = &ctx.cluster.id;
        let vms = self.vms(ctx).await?;
        let waves = bootstrap_waves(&vms, Self::distro(ctx)?);
        let total = 1 + waves.iter().map(|w| w.len() as u32).sum::<u32>() + 1;
        let done = AtomicU32::new(0);

        // The CA exists before any host needs a certificate; generated once, sealed, kept for renewal.
        if phase_record::<BootstrapRecord>(&self.store, ctx).await?.ca_key.is_none() {
            // Generating the CA touches nothing outside; only the checkpoint below keeps it.
            let (cert, key) = self
                .sim
                .run("bootstrap.pki", async {
                    Ok((
                        ctx.rt.sealer.seal(&format!("ca-cert/{id}"), fake_pem("CERTIFICATE").as_bytes()),
                        ctx.rt.sealer.seal(&format!("ca-key/{id}"), fake_pem("PRIVATE KEY").as_bytes()),
                    ))
                })
                .await?;
            checkpoint(&self.store, ctx, |r: &mut BootstrapRecord| {
                if r.ca_key.is_none() {
                    r.ca_cert = Some(cert.clone());
                    r.ca_key = Some(key.clone());
                }
            })
            .await?;
        }
        ctx.progress("etcd certificate authority", done.fetch_add(1, Ordering::SeqCst) + 1, total).await;

        for wave in waves {
            self.run_wave(ctx, wave, &done, total).await?;
        }

        if phase_record::<BootstrapRecord>(&self.store, ctx).await?.kubeconfig.is_none() {
            let lb = vms
                .iter()
                .find(|v| v.role == Role::LoadBalancer)
                .ok_or_else(|| PhaseError::permanent("no load balancer VM".into()))?;
            let rec = phase_record::<BootstrapRecord>(&self.store, ctx).await?;
            let ca =
                ctx.rt.sealer.open_string(&format!("ca-cert/{id}"), rec.ca_cert.as_ref().expect("written above"))?;
            let token = fake_token();
            let kc = ksctl_core::kubeconfig::with_token(
                &context_name(ctx.cluster),
                &format!("https://{}:6443", lb.public_ip),
                &ksctl_core::kubeconfig::ca_data(&ca),
                &token,
            );
            let (kc, token) = (
                ctx.rt.sealer.seal(&format!("kubeconfig/{id}"), kc.as_bytes()),
                ctx.rt.sealer.seal(&format!("join-token/{id}"), token.as_bytes()),
            );
            checkpoint(&self.store, ctx, |r: &mut BootstrapRecord| {
                if r.kubeconfig.is_none() {
                    r.kubeconfig = Some(kc.clone());
                    r.join_token = Some(token.clone());
                }
            })
            .await?;
        }
        ctx.progress("kubeconfig", done.fetch_add(1, Ordering::SeqCst) + 1, total).await;
        Ok(())
    }

    async fn join(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let vms = self.vms(ctx).await?;
        let rec = phase_record::<BootstrapRecord>(&self.store, ctx).await?;
        if rec.join_token.is_none() {
            return Err(PhaseError::permanent("the cluster has no join token; was it bootstrapped?".into()));
        }
        let wave = join_wave(&vms, Self::distro(ctx)?, &rec.steps_done);
        let total = wave.len() as u32;
        self.run_wave(ctx, wave, &AtomicU32::new(0), total).await
    }
}
