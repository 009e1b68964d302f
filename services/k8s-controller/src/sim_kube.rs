//! The simulated Kubernetes API: our objects are `k8s_object` resources of the simulated world.
use crate::{ClusterApi, PlanItem, install_plan};
use ksctl_core::keys;
use ksctl_core::records::{BootstrapRecord, InfraRecord, K8sRecord};
use ksctl_core::spec::ClusterType;
use ksctl_runtime::sim::{Sim, SimConfig};
use ksctl_runtime::{PhaseCtx, PhaseError, read_record, update_record};
use ksctl_store::DynStore;

pub struct SimKube {
    store: DynStore,
    sim: Sim,
}

impl SimKube {
    pub fn new(store: DynStore, cfg: SimConfig) -> Self {
        Self { sim: Sim::new(store.clone(), cfg), store }
    }

    /// The cluster's kubeconfig, opened: managed clusters get it from the cloud, self-managed
    /// ones from the bootstrap. `None` if the cluster never got that far.
    async fn kubeconfig(&self, ctx: &PhaseCtx<'_>) -> Result<Option<String>, PhaseError> {
        let id = &ctx.cluster.id;
        let sealed = match ctx.cluster.cluster_type {
            ClusterType::Managed => read_record::<InfraRecord>(&self.store, &keys::cloud(id)).await?.kubeconfig,
            ClusterType::Selfmanaged => {
                read_record::<BootstrapRecord>(&self.store, &keys::bootstrap(id)).await?.kubeconfig
            }
        };
        sealed.map(|s| ctx.rt.sealer.open_string(&format!("kubeconfig/{id}"), &s)).transpose().map_err(Into::into)
    }
}

#[async_trait::async_trait]
impl ClusterApi for SimKube {
    async fn install(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let id = &ctx.cluster.id;
        let kc = self
            .kubeconfig(ctx)
            .await?
            .ok_or_else(|| PhaseError::permanent("no kubeconfig recorded for the cluster".into()))?;
        if !kc.contains("server:") {
            return Err(PhaseError::permanent("the recorded kubeconfig names no API server".into()));
        }
        let installed = read_record::<K8sRecord>(&self.store, &keys::k8s(id)).await?.installed;
        let plan = install_plan(ctx.cluster);
        let total = plan.len() as u32;
        for (n, item) in plan.iter().enumerate() {
            let c = item.key();
            if !installed.contains(&c) {
                let kind = c.split('/').next().unwrap_or(&c);
                self.sim.run(&format!("k8s.{kind}"), self.sim.ensure(id, "k8s_object", &c, None, 0, 0)).await?;
                update_record(&self.store, &keys::k8s(id), |r: &mut K8sRecord| {
                    r.installed.insert(c.clone());
                })
                .await?;
            }
            ctx.progress(format!("applied {c}"), n as u32 + 1, total).await;
        }
        Ok(())
    }

    async fn uninstall(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let id = &ctx.cluster.id;
        let mut objects: Vec<_> = self.sim.list(id).await?.into_iter().filter(|r| r.kind == "k8s_object").collect();
        // Reverse install order: the agent goes before the namespace it lives in.
        let plan = install_plan(ctx.cluster);
        objects.sort_by_key(|o| std::cmp::Reverse(plan.iter().position(|c| c.key() == o.name)));
        let total = objects.len() as u32;
        for (n, o) in objects.iter().enumerate() {
            self.sim.run("k8s.delete", self.sim.delete(id, &o.id)).await?;
            ctx.progress(format!("deleted {}", o.name), n as u32 + 1, total).await;
        }
        self.store.delete(&keys::k8s(id)).await?;
        Ok(())
    }

    async fn addon(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let id = &ctx.cluster.id;
        let (name, enable) = crate::addon_change(ctx)?;
        let object = PlanItem::Addon(name.clone()).key();
        self.sim
            .run("k8s.addon", async {
                if enable {
                    self.sim.ensure(id, "k8s_object", &object, None, 0, 0).await?;
                } else if let Some(o) =
                    self.sim.list(id).await?.into_iter().find(|r| r.kind == "k8s_object" && r.name == object)
                {
                    self.sim.delete(id, &o.id).await?;
                }
                Ok(())
            })
            .await?;
        let verb = if enable { "applied" } else { "deleted" };
        ctx.progress(format!("{verb} {object}"), 1, 1).await;
        Ok(())
    }

    async fn apps(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let id = &ctx.cluster.id;
        let (stack, manifests) = crate::apps::change(&self.store, ctx).await?;
        let object = format!("app/{stack}");
        self.sim
            .run("k8s.apps", async {
                match &manifests {
                    Some(yaml) => {
                        ksctl_core::apps::parse(yaml).map_err(PhaseError::permanent)?;
                        self.sim.ensure(id, "k8s_object", &object, None, 0, 0).await?;
                    }
                    None => {
                        if let Some(o) =
                            self.sim.list(id).await?.into_iter().find(|r| r.kind == "k8s_object" && r.name == object)
                        {
                            self.sim.delete(id, &o.id).await?;
                        }
                        self.store.delete(&keys::app(id, &stack)).await?;
                    }
                }
                Ok(())
            })
            .await?;
        let verb = if manifests.is_some() { "applied" } else { "deleted" };
        ctx.progress(format!("{verb} {object}"), 1, 1).await;
        Ok(())
    }

    async fn drain(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        crate::drain_workers(&self.store, ctx, |vm| async move {
            self.sim.run("k8s.drain", self.sim.apply_on_host(&ctx.cluster.id, &vm.id, "drain")).await
        })
        .await
    }
}
