//! Azure: self-managed clusters on VMs and managed AKS, through ARM over REST (`arm`). All Azure
//! code lives in this module, behind the provider trait, so it can move to the official
//! `azure_resourcemanager_*` crates when they ship.
//!
//! Everything of a cluster lives in its resource group `ksctl-resgrp-<type>-<name>`. ARM's PUT
//! is create-or-update by name, so every resource has a deterministic name; on top of that each
//! finished resource's id is checkpointed and not PUT again after a restart (no duplicate PUTs of
//! finished resources, and no needless writes against the subscription's write budget).
//! Self-managed: one NSG per role (the shared port matrix), a VNet with one subnet, and per VM a
//! static public IP, a NIC and an Ubuntu 24.04 VM with the cluster's SSH key, VMs in parallel.
//! Managed: one AKS cluster with one system node pool, network plugin from the CNI choice, the
//! admin kubeconfig sealed. Delete goes in reverse and ends with the resource group, which takes
//! along anything a crash left unrecorded; "not found" is done.
pub mod arm;
mod bodies;

use crate::CloudProvider;
use crate::firewall;
use arm::{Arm, ArmSettings, Principal};
use futures::StreamExt;
use ksctl_core::messages::context_name;
use ksctl_core::records::{InfraRecord, Role, Vm};
use ksctl_core::spec::ClusterType;
use ksctl_runtime::{Metrics, PhaseCtx, PhaseError};
use ksctl_runtime::{checkpoint, phase_record};
use ksctl_store::DynStore;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// The api-versions ksctl speaks, per resource provider.
const API_RESOURCES: &str = "2021-04-01";
const API_NETWORK: &str = "2021-05-01";
const API_COMPUTE: &str = "2021-07-01";
const API_AKS: &str = "2021-03-01";
const VNET_CIDR: &str = "10.1.0.0/16";
const SUBNET_CIDR: &str = "10.1.0.0/24";
const ROLES: [Role; 4] = [Role::LoadBalancer, Role::Datastore, Role::ControlPlane, Role::Worker];
/// The AKS node pool ksctl manages (AKS pool names: lower-case letters and digits, ≤ 12).
const POOL: &str = "ksctlpool";

pub struct AzureCloud {
    store: DynStore,
    /// The ARM client, or why there is none (missing credentials fail the phase, not the process).
    arm: Result<Arc<Arm>, String>,
}

/// The cluster's resource group.
pub fn resource_group(ctx: &PhaseCtx<'_>) -> String {
    format!("ksctl-resgrp-{}-{}", ctx.cluster.cluster_type.as_str(), ctx.cluster.id)
}

impl AzureCloud {
    pub fn new(store: DynStore, settings: ArmSettings, metrics: Arc<Metrics>) -> Self {
        let arm = Principal::from_env().and_then(|p| Arm::new(&p, settings, metrics)).map(Arc::new);
        Self { store, arm }
    }

    fn arm(&self) -> Result<&Arc<Arm>, PhaseError> {
        self.arm.as_ref().map_err(|e| PhaseError::permanent(format!("provider azure: {e}")))
    }

    fn tags(ctx: &PhaseCtx<'_>) -> Value {
        json!({"ksctl.io/cluster-id": ctx.cluster.id.as_str(), "managed-by": "ksctl"})
    }

    /// `/subscriptions/<s>/resourceGroups/<rg>` + `rest`, with the api-version.
    fn path(arm: &Arm, ctx: &PhaseCtx<'_>, rest: &str, api: &str) -> String {
        arm.id(&format!("/resourceGroups/{}{rest}?api-version={api}", resource_group(ctx)))
    }

    async fn ensure_group(&self, arm: &Arm, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        if phase_record::<InfraRecord>(&self.store, ctx).await?.resource_group.is_some() {
            return Ok(());
        }
        let body = json!({"location": ctx.cluster.spec.region, "tags": Self::tags(ctx)});
        let rg = arm.put(&Self::path(arm, ctx, "", API_RESOURCES), &body).await?;
        let id = rg["id"].as_str().unwrap_or_default().to_string();
        checkpoint(&self.store, ctx, |i: &mut InfraRecord| i.resource_group = Some(id.clone())).await?;
        Ok(())
    }

    /// PUTs `rest` unless `recorded`; returns the resource id.
    async fn ensure(
        &self,
        arm: &Arm,
        ctx: &PhaseCtx<'_>,
        recorded: Option<&String>,
        rest: &str,
        api: &str,
        body: Value,
    ) -> Result<(String, Value), PhaseError> {
        if let Some(id) = recorded {
            return Ok((id.clone(), Value::Null));
        }
        let r = arm.put(&Self::path(arm, ctx, rest, api), &body).await?;
        Ok((r["id"].as_str().unwrap_or_default().to_string(), r))
    }

    /// Public IP → NIC → VM for each VM not yet recorded, in parallel; each id checkpointed as
    /// soon as its resource exists.
    async fn create_vms(
        &self,
        arm: &Arm,
        ctx: &PhaseCtx<'_>,
        want: Vec<(Role, u32)>,
        done: &AtomicU32,
        total: u32,
    ) -> Result<(), PhaseError> {
        let id = &ctx.cluster.id;
        let have = phase_record::<InfraRecord>(&self.store, ctx).await?;
        let subnet = have.subnets.first().cloned().ok_or_else(|| PhaseError::permanent("no subnet recorded".into()))?;
        let public_key = crate::cluster_ssh_key(&self.store, ctx).await?;
        let missing = crate::vms_missing(ctx, &have, want, done);
        let location = ctx.cluster.spec.region.clone();
        let tags = Self::tags(ctx);
        crate::fan_out(missing, |(role, index)| {
            let (subnet, public_key, location, tags) = (&subnet, &public_key, &location, &tags);
            async move {
                let name = role.vm_name(id, index);
                let parts = phase_record::<InfraRecord>(&self.store, ctx).await?.vm_parts;
                let (pip_name, nic_name) = (format!("{name}-pip"), format!("{name}-nic"));
                let pip_body = bodies::public_ip(location, tags);
                let rest = format!("/providers/Microsoft.Network/publicIPAddresses/{pip_name}");
                let (pip, _) = self.ensure(arm, ctx, parts.get(&pip_name), &rest, API_NETWORK, pip_body).await?;
                checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
                    i.vm_parts.insert(pip_name.clone(), pip.clone());
                })
                .await?;
                let nsg = phase_record::<InfraRecord>(&self.store, ctx)
                    .await?
                    .firewalls
                    .get(role.as_str())
                    .cloned()
                    .ok_or_else(|| PhaseError::permanent(format!("no NSG recorded for the {}s", role.title())))?;
                let nic_body = bodies::nic(location, tags, &nsg, subnet, &pip);
                let rest = format!("/providers/Microsoft.Network/networkInterfaces/{nic_name}");
                let (nic, _) = self.ensure(arm, ctx, parts.get(&nic_name), &rest, API_NETWORK, nic_body).await?;
                checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
                    i.vm_parts.insert(nic_name.clone(), nic.clone());
                })
                .await?;
                let size = crate::node_size(ctx, role, "Standard_B2s", "Standard_B2ms");
                let body = bodies::vm(location, &size, &nic, &name, public_key, tags);
                let rest = format!("/providers/Microsoft.Compute/virtualMachines/{name}");
                let (vm_id, _) = self.ensure(arm, ctx, None, &rest, API_COMPUTE, body).await?;
                // The addresses, as Azure assigned them.
                let nic_now = arm.get(&arm.id(&format!("{}?api-version={API_NETWORK}", strip_sub(arm, &nic)))).await?;
                let pip_now = arm.get(&arm.id(&format!("{}?api-version={API_NETWORK}", strip_sub(arm, &pip)))).await?;
                let private_ip = nic_now
                    .as_ref()
                    .and_then(|n| n.pointer("/properties/ipConfigurations/0/properties/privateIPAddress"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let public_ip = pip_now
                    .as_ref()
                    .and_then(|p| p.pointer("/properties/ipAddress"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                let vm = Vm { id: vm_id, name, role, index, public_ip, private_ip };
                crate::record_vm(&self.store, ctx, vm, done, total).await
            }
        })
        .await
        .map(|_| ())
    }

    /// Deletes a VM, then its NIC and public IP; unrecords each.
    async fn delete_vm(&self, arm: &Arm, ctx: &PhaseCtx<'_>, name: &str) -> Result<(), PhaseError> {
        let compute = format!("/providers/Microsoft.Compute/virtualMachines/{name}");
        arm.delete(&Self::path(arm, ctx, &compute, API_COMPUTE)).await?;
        checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
            i.vms.remove(name);
        })
        .await?;
        for (part, kind) in [(format!("{name}-nic"), "networkInterfaces"), (format!("{name}-pip"), "publicIPAddresses")]
        {
            let rest = format!("/providers/Microsoft.Network/{kind}/{part}");
            arm.delete(&Self::path(arm, ctx, &rest, API_NETWORK)).await?;
            checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
                i.vm_parts.remove(&part);
            })
            .await?;
        }
        Ok(())
    }

    async fn create_selfmanaged(&self, arm: &Arm, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let vms = crate::planned_vms(&ctx.cluster.spec);
        let total = 1 + ROLES.len() as u32 + 1 + vms.len() as u32;
        let done = AtomicU32::new(1);
        let location = &ctx.cluster.spec.region;
        let tags = Self::tags(ctx);
        let distro = ctx.cluster.distro;
        let cni = ctx.cluster.spec.cni();
        // One NSG per role, in parallel.
        let state = phase_record::<InfraRecord>(&self.store, ctx).await?;
        let nsgs: Vec<Result<(), PhaseError>> = futures::stream::iter(ROLES)
            .map(|role| {
                let (state, tags, done) = (&state, &tags, &done);
                async move {
                    let name = format!("{}-nsg-{}", ctx.cluster.id, role.as_str());
                    let body = bodies::nsg(location, tags, &firewall::rules(role, distro, cni));
                    let rest = format!("/providers/Microsoft.Network/networkSecurityGroups/{name}");
                    let (nsg, _) =
                        self.ensure(arm, ctx, state.firewalls.get(role.as_str()), &rest, API_NETWORK, body).await?;
                    checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
                        i.firewalls.insert(role.as_str().into(), nsg.clone());
                    })
                    .await?;
                    ctx.progress(format!("nsg {name}"), done.fetch_add(1, Ordering::SeqCst) + 1, total).await;
                    Ok(())
                }
            })
            .buffer_unordered(ROLES.len())
            .collect()
            .await;
        nsgs.into_iter().collect::<Result<(), _>>()?;
        if state.network.is_none() || state.subnets.is_empty() {
            let name = format!("{}-vnet", ctx.cluster.id);
            let body = bodies::vnet(location, &tags);
            let rest = format!("/providers/Microsoft.Network/virtualNetworks/{name}");
            let (vnet, _) = self.ensure(arm, ctx, None, &rest, API_NETWORK, body).await?;
            checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
                i.network = Some(vnet.clone());
                i.subnets = vec![format!("{vnet}/subnets/nodes")];
            })
            .await?;
        }
        ctx.progress(format!("vnet {}-vnet", ctx.cluster.id), done.fetch_add(1, Ordering::SeqCst) + 1, total).await;
        self.create_vms(arm, ctx, vms, &done, total).await
    }

    async fn create_managed(&self, arm: &Arm, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let id = &ctx.cluster.id;
        let spec = &ctx.cluster.spec;
        let state = phase_record::<InfraRecord>(&self.store, ctx).await?;
        let name = format!("{id}-aks");
        if state.managed_cluster.is_none() {
            let version = spec.kubernetes_version.trim_start_matches('v');
            let size = crate::node_size(ctx, Role::Managed, "Standard_B2ms", "Standard_B2ms");
            let body =
                bodies::aks(&spec.region, &name, version, spec.managed_nodes, &size, spec.cni(), &Self::tags(ctx));
            ctx.progress(format!("creating AKS cluster {name} ({} nodes)", spec.managed_nodes), 1, 3).await;
            let rest = format!("/providers/Microsoft.ContainerService/managedClusters/{name}");
            let (mc, _) = self.ensure(arm, ctx, None, &rest, API_AKS, body).await?;
            checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
                i.managed_cluster = Some(mc.clone());
                i.node_pool = Some(format!("{mc}/agentPools/{POOL}"));
                i.node_pool_size = spec.managed_nodes;
            })
            .await?;
        }
        ctx.progress(format!("AKS cluster {name}"), 2, 3).await;
        if state.kubeconfig.is_none() {
            let rest =
                format!("/providers/Microsoft.ContainerService/managedClusters/{name}/listClusterAdminCredential");
            let creds = arm.post(&Self::path(arm, ctx, &rest, API_AKS), None).await?;
            let b64 = creds
                .pointer("/kubeconfigs/0/value")
                .and_then(Value::as_str)
                .ok_or_else(|| PhaseError::retryable("AKS returned no admin kubeconfig".into()))?;
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| PhaseError::permanent(format!("AKS kubeconfig: {e}")))?;
            let kc = String::from_utf8_lossy(&raw).into_owned();
            let kc = ksctl_core::kubeconfig::adopt(&kc, &context_name(ctx.cluster), None)
                .map_err(|e| PhaseError::permanent(format!("AKS admin kubeconfig: {e}")))?;
            let sealed = ctx.rt.sealer.seal(&format!("kubeconfig/{id}"), kc.as_bytes());
            checkpoint(&self.store, ctx, |i: &mut InfraRecord| i.kubeconfig = Some(sealed.clone())).await?;
        }
        ctx.progress(format!("admin kubeconfig of {name}"), 3, 3).await;
        Ok(())
    }

    async fn resize_pool(&self, arm: &Arm, ctx: &PhaseCtx<'_>, target: u32) -> Result<(), PhaseError> {
        let name = format!("{}-aks", ctx.cluster.id);
        let size = crate::node_size(ctx, Role::Managed, "Standard_B2ms", "Standard_B2ms");
        let body = bodies::pool_size(target, &size);
        let rest = format!("/providers/Microsoft.ContainerService/managedClusters/{name}/agentPools/{POOL}");
        arm.put(&Self::path(arm, ctx, &rest, API_AKS), &body).await?;
        checkpoint(&self.store, ctx, |i: &mut InfraRecord| i.node_pool_size = target).await?;
        ctx.progress(format!("node pool resized to {target}"), 1, 1).await;
        Ok(())
    }
}

/// `/subscriptions/<s>` stripped from an ARM id (the client adds it back).
fn strip_sub<'a>(arm: &Arm, id: &'a str) -> &'a str {
    id.strip_prefix(&format!("/subscriptions/{}", arm.subscription())).unwrap_or(id)
}

/// AKS names the admin context `<cluster>-admin`; ksctl's contexts have names of their own.

#[async_trait::async_trait]
impl CloudProvider for AzureCloud {
    async fn create(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let arm = self.arm()?.clone();
        self.ensure_group(&arm, ctx).await?;
        ctx.progress(format!("resource group {}", resource_group(ctx)), 1, 1).await;
        match ctx.cluster.cluster_type {
            ClusterType::Managed => self.create_managed(&arm, ctx).await,
            ClusterType::Selfmanaged => self.create_selfmanaged(&arm, ctx).await,
        }
    }

    async fn delete(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let arm = self.arm()?.clone();
        let state = phase_record::<InfraRecord>(&self.store, ctx).await?;
        if ctx.cluster.cluster_type == ClusterType::Managed {
            let rest = format!("/providers/Microsoft.ContainerService/managedClusters/{}-aks", ctx.cluster.id);
            arm.delete(&Self::path(&arm, ctx, &rest, API_AKS)).await?;
            ctx.progress("deleted the AKS cluster", 1, 2).await;
        } else {
            let names: Vec<String> = state.vms.keys().cloned().collect();
            let total = names.len() as u32 + 2;
            let done = AtomicU32::new(0);
            crate::fan_out(names, |name| {
                let (arm, done) = (&arm, &done);
                async move {
                    self.delete_vm(arm, ctx, &name).await?;
                    ctx.progress(format!("deleted vm {name}"), done.fetch_add(1, Ordering::SeqCst) + 1, total).await;
                    Ok(())
                }
            })
            .await?;
            let vnet = format!("/providers/Microsoft.Network/virtualNetworks/{}-vnet", ctx.cluster.id);
            arm.delete(&Self::path(&arm, ctx, &vnet, API_NETWORK)).await?;
            for role in ROLES {
                let nsg = format!(
                    "/providers/Microsoft.Network/networkSecurityGroups/{}-nsg-{}",
                    ctx.cluster.id,
                    role.as_str()
                );
                arm.delete(&Self::path(&arm, ctx, &nsg, API_NETWORK)).await?;
            }
            ctx.progress("deleted the network and its security groups", total - 1, total).await;
        }
        // Last, the group: it takes along anything a crash left unrecorded.
        arm.delete(&Self::path(&arm, ctx, "", API_RESOURCES)).await?;
        self.store.delete(&ksctl_core::keys::cloud(&ctx.cluster.id)).await?;
        ctx.progress(format!("deleted resource group {}", resource_group(ctx)), 2, 2).await;
        Ok(())
    }

    async fn scale_up(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let arm = self.arm()?.clone();
        let target = ctx.target_workers()?;
        if ctx.cluster.cluster_type == ClusterType::Managed {
            return self.resize_pool(&arm, ctx, target).await;
        }
        let state = phase_record::<InfraRecord>(&self.store, ctx).await?;
        let want = crate::workers_to_add(&state, target);
        let n = want.len() as u32;
        self.create_vms(&arm, ctx, want, &AtomicU32::new(0), n).await
    }

    async fn scale_down(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let arm = self.arm()?.clone();
        let target = ctx.target_workers()?;
        if ctx.cluster.cluster_type == ClusterType::Managed {
            return self.resize_pool(&arm, ctx, target).await;
        }
        let state = phase_record::<InfraRecord>(&self.store, ctx).await?;
        let remove = state.workers_beyond(target);
        let total = remove.len() as u32;
        for (n, vm) in remove.iter().enumerate() {
            self.delete_vm(&arm, ctx, &vm.name).await?;
            ctx.progress(format!("deleted vm {}", vm.name), n as u32 + 1, total).await;
        }
        Ok(())
    }
}
