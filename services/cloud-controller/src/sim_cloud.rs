//! The simulated cloud: network, one firewall per role, an SSH key, VMs; or a managed cluster
//! with a node pool. Resources live in the store via [`Sim`].
use crate::CloudProvider;
use ksctl_core::messages::context_name;
use ksctl_core::records::{InfraRecord, Role, Vm};
use ksctl_core::spec::{ClusterSpec, ClusterType};
use ksctl_runtime::sim::{Sim, SimConfig, fake_pem, fake_token};
use ksctl_runtime::{PhaseCtx, PhaseError};
use ksctl_runtime::{checkpoint, phase_record};
use ksctl_store::DynStore;
use std::sync::atomic::{AtomicU32, Ordering};

const FIREWALL_ROLES: [Role; 4] = [Role::LoadBalancer, Role::Datastore, Role::ControlPlane, Role::Worker];

/// What a create makes in the simulated cloud: self-managed, the network, a firewall per
/// role, the SSH key and the VMs; managed, the network, the managed cluster and its node pool.
pub fn planned_resources(spec: &ClusterSpec, cluster_type: ClusterType) -> u32 {
    match cluster_type {
        ClusterType::Managed => 3,
        ClusterType::Selfmanaged => 1 + FIREWALL_ROLES.len() as u32 + 1 + crate::planned_vms(spec).len() as u32,
    }
}

pub struct SimCloud {
    store: DynStore,
    sim: Sim,
}

impl SimCloud {
    pub fn new(store: DynStore, cfg: SimConfig) -> Self {
        Self { sim: Sim::new(store.clone(), cfg), store }
    }

    /// Creates the VMs not yet checkpointed, in parallel; each id is written as soon as it exists.
    async fn create_vms(
        &self,
        ctx: &PhaseCtx<'_>,
        want: Vec<(Role, u32)>,
        done: &AtomicU32,
        total: u32,
    ) -> Result<(), PhaseError> {
        let id = &ctx.cluster.id;
        let have = phase_record::<InfraRecord>(&self.store, ctx).await?;
        let missing = crate::vms_missing(ctx, &have, want, done);
        crate::fan_out(missing, |(role, index)| async move {
            let name = role.vm_name(id, index);
            let r = self.sim.run("cloud.vm", self.sim.ensure(id, "vm", &name, Some(role), index, 0)).await?;
            let vm = Vm { id: r.id, name, role, index, public_ip: r.public_ip, private_ip: r.private_ip };
            crate::record_vm(&self.store, ctx, vm, done, total).await
        })
        .await
        .map(|_| ())
    }

    async fn ensure_simple(&self, ctx: &PhaseCtx<'_>, kind: &str, name: &str, size: u32) -> Result<String, PhaseError> {
        let step = format!("cloud.{kind}");
        Ok(self.sim.run(&step, self.sim.ensure(&ctx.cluster.id, kind, name, None, 0, size)).await?.id)
    }
}

#[async_trait::async_trait]
impl CloudProvider for SimCloud {
    async fn create(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let id = &ctx.cluster.id;
        let spec = &ctx.cluster.spec;
        let managed = ctx.cluster.cluster_type == ClusterType::Managed;
        let vms = if managed { vec![] } else { crate::planned_vms(spec) };
        let total = planned_resources(spec, ctx.cluster.cluster_type);
        let done = AtomicU32::new(0);
        let step = |s: String| {
            let n = done.fetch_add(1, Ordering::SeqCst) + 1;
            ctx.progress(s, n, total)
        };

        let state = phase_record::<InfraRecord>(&self.store, ctx).await?;
        if state.network.is_none() {
            let net = self.ensure_simple(ctx, "network", &format!("{id}-net"), 0).await?;
            checkpoint(&self.store, ctx, |i: &mut InfraRecord| i.network = Some(net.clone())).await?;
        }
        step(format!("network {id}-net")).await;

        if managed {
            if state.managed_cluster.is_none() {
                let mc = self.ensure_simple(ctx, "managed_cluster", &format!("{id}-mc"), 0).await?;
                checkpoint(&self.store, ctx, |i: &mut InfraRecord| i.managed_cluster = Some(mc.clone())).await?;
            }
            step(format!("managed cluster {id}-mc")).await;
            if state.node_pool.is_none() {
                let np = self.ensure_simple(ctx, "node_pool", &format!("{id}-np"), spec.managed_nodes).await?;
                let ctx_name = context_name(ctx.cluster);
                let kc = ksctl_core::kubeconfig::with_token(
                    &ctx_name,
                    &format!("https://{id}.sim.ksctl.local:443"),
                    &ksctl_core::kubeconfig::ca_data(&fake_pem("CERTIFICATE")),
                    &fake_token(),
                );
                let sealed = ctx.rt.sealer.seal(&format!("kubeconfig/{id}"), kc.as_bytes());
                checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
                    i.node_pool = Some(np.clone());
                    i.node_pool_size = spec.managed_nodes;
                    if i.kubeconfig.is_none() {
                        i.kubeconfig = Some(sealed.clone());
                    }
                })
                .await?;
            }
            step(format!("node pool {id}-np ({} nodes)", spec.managed_nodes)).await;
            return Ok(());
        }

        for role in FIREWALL_ROLES {
            if !state.firewalls.contains_key(role.as_str()) {
                let fw = self.ensure_simple(ctx, "firewall", &format!("{id}-fw-{}", role.as_str()), 0).await?;
                checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
                    i.firewalls.insert(role.as_str().into(), fw.clone());
                })
                .await?;
            }
            step(format!("firewall {id}-fw-{}", role.as_str())).await;
        }

        // The private half is generated and sealed into state before the public half is
        // imported, so a crash in between can never leave an imported key we cannot use.
        if state.ssh_private_key.is_none() {
            let sealed = ctx.rt.sealer.seal(&format!("ssh/{id}"), fake_pem("OPENSSH PRIVATE KEY").as_bytes());
            checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
                if i.ssh_private_key.is_none() {
                    i.ssh_private_key = Some(sealed.clone());
                }
            })
            .await?;
        }
        if state.ssh_key_id.is_none() {
            let key = self.ensure_simple(ctx, "ssh_key", &format!("{id}-ssh"), 0).await?;
            checkpoint(&self.store, ctx, |i: &mut InfraRecord| i.ssh_key_id = Some(key.clone())).await?;
        }
        step(format!("ssh key {id}-ssh")).await;

        self.create_vms(ctx, vms, &done, total).await
    }

    async fn delete(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let id = &ctx.cluster.id;
        // Sweep by tag: whatever exists for this cluster goes, whether or not state recorded it.
        // Reverse order of creation, so nothing is deleted while something depends on it.
        let order = ["vm", "node_pool", "managed_cluster", "ssh_key", "firewall", "network"];
        let mut all = self.sim.list(id).await?;
        all.sort_by_key(|r| order.iter().position(|k| *k == r.kind).unwrap_or(order.len()));
        let total = all.len() as u32;
        for (n, r) in all.iter().enumerate() {
            self.sim.run(&format!("cloud.delete.{}", r.kind), self.sim.delete(id, &r.id)).await?;
            ctx.progress(format!("deleted {} {}", r.kind, r.name), n as u32 + 1, total).await;
        }
        self.store.delete(&ksctl_core::keys::cloud(id)).await?;
        Ok(())
    }

    async fn scale_up(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let target = ctx.target_workers()?;
        let state = phase_record::<InfraRecord>(&self.store, ctx).await?;
        if ctx.cluster.cluster_type == ClusterType::Managed {
            return self.resize_pool(ctx, target).await;
        }
        let want = crate::workers_to_add(&state, target);
        let n = want.len() as u32;
        self.create_vms(ctx, want, &AtomicU32::new(0), n).await
    }

    async fn scale_down(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let target = ctx.target_workers()?;
        if ctx.cluster.cluster_type == ClusterType::Managed {
            return self.resize_pool(ctx, target).await;
        }
        let state = phase_record::<InfraRecord>(&self.store, ctx).await?;
        let remove = state.workers_beyond(target);
        let total = remove.len() as u32;
        for (n, vm) in remove.iter().enumerate() {
            self.sim.run("cloud.delete.vm", self.sim.delete(&ctx.cluster.id, &vm.id)).await?;
            checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
                i.vms.remove(&vm.name);
            })
            .await?;
            ctx.progress(format!("deleted vm {}", vm.name), n as u32 + 1, total).await;
        }
        Ok(())
    }
}

impl SimCloud {
    async fn resize_pool(&self, ctx: &PhaseCtx<'_>, target: u32) -> Result<(), PhaseError> {
        let state = phase_record::<InfraRecord>(&self.store, ctx).await?;
        let np =
            state.node_pool.ok_or_else(|| PhaseError::permanent("the cluster has no node pool recorded".into()))?;
        self.sim.run("cloud.node_pool.resize", self.sim.update(&ctx.cluster.id, &np, |r| r.size = target)).await?;
        checkpoint(&self.store, ctx, |i: &mut InfraRecord| i.node_pool_size = target).await?;
        ctx.progress(format!("node pool resized to {target}"), 1, 1).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan the end-to-end tests count against, pinned: 1 network, 4 firewalls, 1 key and
    /// 1 + 3 + 3 + 2 VMs; a managed cluster's network, cluster and node pool.
    #[test]
    fn planned_resources_of_an_ha_cluster() {
        let spec: ClusterSpec = serde_json::from_value(serde_json::json!({
            "cluster_name": "demo", "region": "local", "cloud_provider": "sim",
            "cluster_type": "selfmanaged", "kubernetes_distro": "k3s",
            "control_plane_nodes": 3, "datastore_nodes": 3, "worker_nodes": 2
        }))
        .unwrap();
        assert_eq!(planned_resources(&spec, ClusterType::Selfmanaged), 6 + 9);
        assert_eq!(planned_resources(&spec, ClusterType::Managed), 3);
    }
}
