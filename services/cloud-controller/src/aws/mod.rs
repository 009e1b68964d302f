//! AWS, self-managed HA infrastructure on EC2 (ksctl's order): VPC, three subnets in three
//! availability zones, internet gateway, route table, one security group per role, an imported
//! ed25519 key pair, and the VMs in parallel. Every resource carries `ksctl.io/cluster-id`,
//! `ksctl.io/role` and `Name` tags, is looked up by tag before it is created, and its id is
//! checkpointed as soon as the call returns; `RunInstances` also carries a deterministic
//! `ClientToken`. Delete sweeps by tag in reverse order, so nothing is left even when state is
//! incomplete. Credentials, endpoint and retries come from the standard AWS chain
//! (`AWS_ACCESS_KEY_ID`…, profiles, `AWS_ENDPOINT_URL`). Managed EKS lives in [`eks`]; every
//! client goes through the rate limiter and call counter in [`throttle`].
//!
//! This file is the provider (its clients and the phases); the network is in [`network`], the VMs
//! in [`instances`], delete's sweep in [`sweep`], error classification in [`error`].
pub mod eks;
mod error;
mod instances;
mod network;
mod sweep;
pub mod throttle;
pub mod token;

use error::{aws_err, code_of};

use crate::CloudProvider;
use crate::firewall::{self, Source};
use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    AttributeBooleanValue, BlockDeviceMapping, EbsBlockDevice, Filter, InstanceStateName, InstanceType, IpPermission,
    IpRange, ResourceType, Tag, TagSpecification, VolumeType,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use backon::BackoffBuilder;
use ksctl_core::ClusterId;
use ksctl_core::records::{ClusterRecord, InfraRecord, Role, Vm};
use ksctl_core::spec::ClusterType;
use ksctl_runtime::Metrics;
use ksctl_runtime::{PhaseCtx, PhaseError};
use ksctl_runtime::{checkpoint, phase_record};
use ksctl_store::DynStore;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

pub const TAG_CLUSTER: &str = "ksctl.io/cluster-id";
pub const TAG_ROLE: &str = "ksctl.io/role";
const VPC_CIDR: &str = "10.0.0.0/16";
/// Canonical's account; the image name can be overridden with `KSCTL_AWS_AMI`.
const UBUNTU_OWNER: &str = "099720109477";
const UBUNTU_NAME: &str = "ubuntu/images/hvm-ssd*/ubuntu-noble-24.04-amd64-server-*";

pub struct AwsCloud {
    store: DynStore,
    /// AMI to use instead of looking up Ubuntu 24.04.
    ami: Option<String>,
    /// Client-side rate limits per region (`None`: off).
    limits: Option<throttle::Limits>,
    clients: Mutex<HashMap<String, Clients>>,
    /// AWS calls, attempts and throttles are counted by [`throttle`]; our own retries of calls
    /// (`DependencyViolation`) here, as `cloud_api_retries_total`.
    metrics: Arc<Metrics>,
}

/// The SDK clients of one region; they share that region's rate limiter.
#[derive(Clone)]
pub struct Clients {
    pub ec2: Client,
    pub eks: aws_sdk_eks::Client,
    pub iam: aws_sdk_iam::Client,
    conf: aws_config::SdkConfig,
}

fn tags(cluster: &ClusterId, role: &str, name: &str, rt: ResourceType) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(rt)
        .tags(Tag::builder().key(TAG_CLUSTER).value(cluster.as_str()).build())
        .tags(Tag::builder().key(TAG_ROLE).value(role).build())
        .tags(Tag::builder().key("Name").value(name).build())
        .build()
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn cluster_filter(cluster: &ClusterId) -> Filter {
    filter(&format!("tag:{TAG_CLUSTER}"), cluster.as_str())
}

/// A `ClientToken` for one VM of one operation: AWS returns the same instance for a repeated
/// token, so a RunInstances retried after a crash cannot create a second VM.
fn client_token(op: &str, vm: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (op, vm).hash(&mut h);
    let t = format!("ksctl-{vm}-{:016x}", h.finish());
    t.chars().rev().take(64).collect::<String>().chars().rev().collect()
}

fn instance_type(ctx: &PhaseCtx<'_>, role: Role) -> String {
    crate::node_size(ctx, role, "t3.small", "t3.medium")
}

impl AwsCloud {
    pub fn new(store: DynStore, ami: Option<String>, limits: Option<throttle::Limits>, metrics: Arc<Metrics>) -> Self {
        Self { store, ami, limits, clients: Mutex::new(HashMap::new()), metrics }
    }

    /// The clients of one region, from the standard credential chain; missing credentials are a
    /// clear, permanent error before any resource is touched.
    pub async fn clients(&self, region: &str) -> Result<Clients, PhaseError> {
        if let Some(c) = self.clients.lock().await.get(region) {
            return Ok(c.clone());
        }
        let limiter = self.limits.map(|l| Arc::new(throttle::Limiter::new(l)));
        let http = throttle::LimitedClient::new(limiter, self.metrics.clone());
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.to_string()))
            .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(8))
            .http_client(http)
            .load()
            .await;
        let clients = Clients {
            ec2: Client::from_conf(
                aws_sdk_ec2::config::Builder::from(&conf)
                    .interceptor(throttle::CallCounter(self.metrics.clone()))
                    .build(),
            ),
            eks: aws_sdk_eks::Client::from_conf(
                aws_sdk_eks::config::Builder::from(&conf)
                    .interceptor(throttle::CallCounter(self.metrics.clone()))
                    .build(),
            ),
            iam: aws_sdk_iam::Client::from_conf(
                aws_sdk_iam::config::Builder::from(&conf)
                    .interceptor(throttle::CallCounter(self.metrics.clone()))
                    .build(),
            ),
            conf,
        };
        self.credentials(&clients).await?;
        self.clients.lock().await.insert(region.to_string(), clients.clone());
        Ok(clients)
    }

    async fn credentials(&self, c: &Clients) -> Result<aws_sdk_ec2::config::Credentials, PhaseError> {
        use aws_sdk_ec2::config::ProvideCredentials;
        let provider = c
            .conf
            .credentials_provider()
            .ok_or_else(|| PhaseError::permanent("no AWS credential provider configured".into()))?;
        provider.provide_credentials().await.map_err(|e| {
            PhaseError::permanent(format!(
                "no AWS credentials (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, or a role): {e}"
            ))
        })
    }

    async fn client(&self, region: &str) -> Result<Client, PhaseError> {
        Ok(self.clients(region).await?.ec2)
    }

    fn retried(&self) {
        self.metrics.inc("cloud_api_retries_total", &[("provider", "aws")]);
    }
}

#[async_trait::async_trait]
impl CloudProvider for AwsCloud {
    async fn create(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        if ctx.cluster.cluster_type == ClusterType::Managed {
            return self.create_managed(ctx).await;
        }
        let ec2 = self.client(&ctx.cluster.spec.region).await?;
        let vms = crate::planned_vms(&ctx.cluster.spec);
        let total = 4 + 4 + 1 + vms.len() as u32;
        self.ensure_network(&ec2, ctx, total).await?;
        let vpc = phase_record::<InfraRecord>(&self.store, ctx).await?.network.unwrap_or_default();
        let done = AtomicU32::new(4);
        let step = |m: String| ctx.progress(m, done.fetch_add(1, Ordering::SeqCst) + 1, total);
        for role in [Role::LoadBalancer, Role::Datastore, Role::ControlPlane, Role::Worker] {
            let sg = self.ensure_security_group(&ec2, ctx, &vpc, role).await?;
            checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
                i.firewalls.insert(role.as_str().into(), sg.clone());
            })
            .await?;
            step(format!("security group {sg} ({}s)", role.title())).await;
        }
        let key = self.ensure_key(&ec2, ctx).await?;
        checkpoint(&self.store, ctx, |i: &mut InfraRecord| i.ssh_key_id = Some(key.clone())).await?;
        step(format!("key pair {key}")).await;
        let image = self.ami(&ec2).await?;
        crate::fan_out(vms, |(role, index)| {
            let (ec2, image, step) = (&ec2, &image, &step);
            async move {
                let vm = self.ensure_vm(ec2, ctx, role, index, image).await?;
                step(format!("vm {} {} ({})", vm.name, vm.id, vm.public_ip)).await;
                Ok(vm)
            }
        })
        .await
        .map(|_| ())
    }

    async fn delete(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        self.sweep(ctx).await
    }

    async fn fresh_kubeconfig(&self, cluster: &ClusterRecord) -> Result<Option<String>, PhaseError> {
        match cluster.cluster_type {
            ClusterType::Managed => self.eks_kubeconfig(cluster).await.map(Some),
            ClusterType::Selfmanaged => Ok(None),
        }
    }

    async fn scale_up(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        if ctx.cluster.cluster_type == ClusterType::Managed {
            return self.scale_managed(ctx).await;
        }
        let target = ctx.target_workers()?;
        let ec2 = self.client(&ctx.cluster.spec.region).await?;
        let state = phase_record::<InfraRecord>(&self.store, ctx).await?;
        let add = crate::workers_to_add(&state, target);
        let missing = add.len() as u32;
        let image = self.ami(&ec2).await?;
        for (n, (_, index)) in add.into_iter().enumerate() {
            let vm = self.ensure_vm(&ec2, ctx, Role::Worker, index, &image).await?;
            ctx.progress(format!("vm {} {}", vm.name, vm.id), n as u32 + 1, missing).await;
        }
        Ok(())
    }

    async fn scale_down(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        if ctx.cluster.cluster_type == ClusterType::Managed {
            return self.scale_managed(ctx).await;
        }
        let target = ctx.target_workers()?;
        let ec2 = self.client(&ctx.cluster.spec.region).await?;
        let state = phase_record::<InfraRecord>(&self.store, ctx).await?;
        let remove = state.workers_beyond(target);
        self.terminate(&ec2, remove.iter().map(|v| v.id.clone()).collect()).await?;
        checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
            for v in &remove {
                i.vms.remove(&v.name);
            }
        })
        .await?;
        ctx.progress(format!("terminated {} workers", remove.len()), 1, 1).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_are_stable_bounded_and_distinct() {
        let a = client_token("op-1", "demo-vm-wp-0");
        assert_eq!(a, client_token("op-1", "demo-vm-wp-0"));
        assert_ne!(a, client_token("op-2", "demo-vm-wp-0"));
        assert_ne!(a, client_token("op-1", "demo-vm-wp-1"));
        assert!(client_token("op", &"x".repeat(100)).len() <= 64);
    }
}
