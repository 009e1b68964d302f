//! AWS, self-managed HA infrastructure on EC2 (ksctl's order): VPC, three subnets in three
//! availability zones, internet gateway, route table, one security group per role, an imported
//! ed25519 key pair, and the VMs in parallel. Every resource carries `ksctl.io/cluster-id`,
//! `ksctl.io/role` and `Name` tags, is looked up by tag before it is created, and its id is
//! checkpointed as soon as the call returns; `RunInstances` also carries a deterministic
//! `ClientToken`. Delete sweeps by tag in reverse order, so nothing is left even when state is
//! incomplete. Credentials, endpoint and retries come from the standard AWS chain
//! (`AWS_ACCESS_KEY_ID`…, profiles, `AWS_ENDPOINT_URL`). Managed EKS lives in [`eks`]; every
//! client goes through the rate limiter and call counter in [`throttle`].
pub mod eks;
pub mod throttle;
pub mod token;

use crate::firewall::{self, Source};
use crate::{CloudProvider, checkpoint, infra};
use aws_sdk_ec2::Client;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    AttributeBooleanValue, BlockDeviceMapping, EbsBlockDevice, Filter, InstanceStateName, InstanceType, IpPermission,
    IpRange, ResourceType, Tag, TagSpecification, VolumeType,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use ksctl_core::ClusterId;
use ksctl_core::records::{ClusterRecord, Role, Vm};
use ksctl_core::spec::ClusterType;
use ksctl_runtime::Metrics;
use ksctl_runtime::{PhaseCtx, PhaseError};
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

/// An EC2 error with its code, classified.
fn aws_err<E: ProvideErrorMetadata + std::fmt::Debug>(what: &str, e: SdkError<E, HttpResponse>) -> PhaseError {
    let code = e.code().unwrap_or("").to_string();
    let msg = e.message().map(str::to_string).unwrap_or_else(|| format!("{e:?}"));
    let server_error = e.raw_response().is_some_and(|r| r.status().as_u16() >= 500);
    let retryable = server_error
        || matches!(e, SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_))
        || matches!(
            code.as_str(),
            "RequestLimitExceeded"
                | "Throttling"
                | "ThrottlingException"
                | "TooManyRequestsException"
                | "DependencyViolation"
                | "InternalError"
                | "Unavailable"
                | "ServerException"
                | "ServiceUnavailableException"
                | "ServiceUnavailable"
        )
        // Right after we create something, EC2 may not know its id yet (eventual consistency);
        // delete paths treat "not found" as done before they get here. Not for what the user
        // names (an AMI, an instance type): that is a permanent mistake.
        || [
            "InvalidVpcID.NotFound",
            "InvalidSubnetID.NotFound",
            "InvalidGroup.NotFound",
            "InvalidInternetGatewayID.NotFound",
            "InvalidRouteTableID.NotFound",
            "InvalidKeyPair.NotFound",
            "InvalidInstanceID.NotFound",
        ]
        .contains(&code.as_str())
        // A create answering "exists already" although our lookup by tag just missed it (seen
        // under load against moto): the retried phase finds it by its tags and adopts it.
        || code.ends_with(".Duplicate")
        || code.ends_with(".Conflict");
    let text = format!("{what}: {code} {msg}");
    if retryable { PhaseError::Retryable(text) } else { PhaseError::Permanent(text) }
}

fn code_of<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> &str {
    e.code().unwrap_or("")
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
            .ok_or_else(|| PhaseError::Permanent("no AWS credential provider configured".into()))?;
        provider.provide_credentials().await.map_err(|e| {
            PhaseError::Permanent(format!(
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

    /// VPC, three subnets in three zones, internet gateway and default route: progress steps
    /// 1–4 of `total`. Returns the subnets.
    async fn ensure_network(&self, ec2: &Client, ctx: &PhaseCtx<'_>, total: u32) -> Result<Vec<String>, PhaseError> {
        let id = &ctx.cluster.id;
        let state = infra(&self.store, ctx).await?;
        let vpc = match state.network.clone() {
            Some(v) => v,
            None => {
                let v = self.ensure_vpc(ec2, id).await?;
                checkpoint(&self.store, ctx, |i| i.network = Some(v.clone())).await?;
                v
            }
        };
        ctx.progress(format!("vpc {vpc}"), 1, total).await;
        let subnets = if state.subnets.len() == 3 {
            state.subnets.clone()
        } else {
            let s = self.ensure_subnets(ec2, id, &vpc).await?;
            checkpoint(&self.store, ctx, |i| i.subnets = s.clone()).await?;
            s
        };
        ctx.progress(format!("subnets {}", subnets.join(", ")), 2, total).await;
        let igw = self.ensure_gateway(ec2, id, &vpc).await?;
        checkpoint(&self.store, ctx, |i| i.gateway = Some(igw.clone())).await?;
        ctx.progress(format!("internet gateway {igw}"), 3, total).await;
        let rt = self.ensure_routes(ec2, id, &vpc, &igw, &subnets).await?;
        checkpoint(&self.store, ctx, |i| i.route_table = Some(rt.clone())).await?;
        ctx.progress(format!("route table {rt}"), 4, total).await;
        Ok(subnets)
    }

    async fn ensure_vpc(&self, ec2: &Client, id: &ClusterId) -> Result<String, PhaseError> {
        let name = format!("{id}-vpc");
        let found = ec2
            .describe_vpcs()
            .filters(cluster_filter(id))
            .filters(filter("tag:Name", &name))
            .send()
            .await
            .map_err(|e| aws_err("describe VPCs", e))?;
        let vpc = match found.vpcs().first().and_then(|v| v.vpc_id()) {
            Some(v) => v.to_string(),
            None => {
                let out = ec2
                    .create_vpc()
                    .cidr_block(VPC_CIDR)
                    .tag_specifications(tags(id, "vpc", &name, ResourceType::Vpc))
                    .send()
                    .await
                    .map_err(|e| aws_err("create VPC", e))?;
                out.vpc()
                    .and_then(|v| v.vpc_id())
                    .ok_or_else(|| PhaseError::Retryable("CreateVpc returned no id".into()))?
                    .to_string()
            }
        };
        ec2.modify_vpc_attribute()
            .vpc_id(&vpc)
            .enable_dns_hostnames(AttributeBooleanValue::builder().value(true).build())
            .send()
            .await
            .map_err(|e| aws_err("enable DNS hostnames", e))?;
        Ok(vpc)
    }

    async fn ensure_subnets(&self, ec2: &Client, id: &ClusterId, vpc: &str) -> Result<Vec<String>, PhaseError> {
        let zones =
            ec2.describe_availability_zones().send().await.map_err(|e| aws_err("describe availability zones", e))?;
        let mut zones: Vec<String> =
            zones.availability_zones().iter().filter_map(|z| z.zone_name().map(str::to_string)).collect();
        zones.sort();
        if zones.is_empty() {
            return Err(PhaseError::Permanent("the region has no availability zones".into()));
        }
        let mut out = Vec::new();
        for i in 0..3 {
            let zone = &zones[i % zones.len()];
            let name = format!("{id}-subnet-{i}");
            let found = ec2
                .describe_subnets()
                .filters(cluster_filter(id))
                .filters(filter("tag:Name", &name))
                .send()
                .await
                .map_err(|e| aws_err("describe subnets", e))?;
            let subnet = match found.subnets().first().and_then(|s| s.subnet_id()) {
                Some(s) => s.to_string(),
                None => {
                    let r = ec2
                        .create_subnet()
                        .vpc_id(vpc)
                        .cidr_block(format!("10.0.{i}.0/24"))
                        .availability_zone(zone)
                        .tag_specifications(tags(id, "subnet", &name, ResourceType::Subnet))
                        .send()
                        .await
                        .map_err(|e| aws_err("create subnet", e))?;
                    r.subnet()
                        .and_then(|s| s.subnet_id())
                        .ok_or_else(|| PhaseError::Retryable("CreateSubnet returned no id".into()))?
                        .to_string()
                }
            };
            ec2.modify_subnet_attribute()
                .subnet_id(&subnet)
                .map_public_ip_on_launch(AttributeBooleanValue::builder().value(true).build())
                .send()
                .await
                .map_err(|e| aws_err("enable public IPs on launch", e))?;
            out.push(subnet);
        }
        Ok(out)
    }

    async fn ensure_gateway(&self, ec2: &Client, id: &ClusterId, vpc: &str) -> Result<String, PhaseError> {
        let name = format!("{id}-igw");
        let found = ec2
            .describe_internet_gateways()
            .filters(cluster_filter(id))
            .send()
            .await
            .map_err(|e| aws_err("describe internet gateways", e))?;
        let (igw, attached) = match found.internet_gateways().first() {
            Some(g) => (
                g.internet_gateway_id().unwrap_or_default().to_string(),
                g.attachments().iter().any(|a| a.vpc_id() == Some(vpc)),
            ),
            None => {
                let r = ec2
                    .create_internet_gateway()
                    .tag_specifications(tags(id, "igw", &name, ResourceType::InternetGateway))
                    .send()
                    .await
                    .map_err(|e| aws_err("create internet gateway", e))?;
                (r.internet_gateway().and_then(|g| g.internet_gateway_id()).unwrap_or_default().to_string(), false)
            }
        };
        if !attached
            && let Err(e) = ec2.attach_internet_gateway().internet_gateway_id(&igw).vpc_id(vpc).send().await
            && code_of(&e) != "Resource.AlreadyAssociated"
        {
            return Err(aws_err("attach internet gateway", e));
        }
        Ok(igw)
    }

    async fn ensure_routes(
        &self,
        ec2: &Client,
        id: &ClusterId,
        vpc: &str,
        igw: &str,
        subnets: &[String],
    ) -> Result<String, PhaseError> {
        let name = format!("{id}-rt");
        let found = ec2
            .describe_route_tables()
            .filters(cluster_filter(id))
            .send()
            .await
            .map_err(|e| aws_err("describe route tables", e))?;
        let (rt, associated): (String, Vec<String>) = match found.route_tables().first() {
            Some(t) => (
                t.route_table_id().unwrap_or_default().to_string(),
                t.associations().iter().filter_map(|a| a.subnet_id().map(str::to_string)).collect(),
            ),
            None => {
                let r = ec2
                    .create_route_table()
                    .vpc_id(vpc)
                    .tag_specifications(tags(id, "route-table", &name, ResourceType::RouteTable))
                    .send()
                    .await
                    .map_err(|e| aws_err("create route table", e))?;
                (r.route_table().and_then(|t| t.route_table_id()).unwrap_or_default().to_string(), vec![])
            }
        };
        if let Err(e) =
            ec2.create_route().route_table_id(&rt).destination_cidr_block("0.0.0.0/0").gateway_id(igw).send().await
            && code_of(&e) != "RouteAlreadyExists"
        {
            return Err(aws_err("create default route", e));
        }
        for s in subnets.iter().filter(|s| !associated.contains(s)) {
            if let Err(e) = ec2.associate_route_table().route_table_id(&rt).subnet_id(s).send().await
                && code_of(&e) != "Resource.AlreadyAssociated"
            {
                return Err(aws_err("associate route table", e));
            }
        }
        Ok(rt)
    }

    async fn ensure_security_group(
        &self,
        ec2: &Client,
        ctx: &PhaseCtx<'_>,
        vpc: &str,
        role: Role,
    ) -> Result<String, PhaseError> {
        let id = &ctx.cluster.id;
        let name = format!("{id}-{}", role.as_str());
        let found = ec2
            .describe_security_groups()
            .filters(filter("vpc-id", vpc))
            .filters(filter("group-name", &name))
            .send()
            .await
            .map_err(|e| aws_err("describe security groups", e))?;
        let sg = match found.security_groups().first().and_then(|g| g.group_id()) {
            Some(g) => g.to_string(),
            None => {
                let r = ec2
                    .create_security_group()
                    .group_name(&name)
                    .description(format!("ksctl {} of cluster {id}", role.as_str()))
                    .vpc_id(vpc)
                    .tag_specifications(tags(id, role.as_str(), &name, ResourceType::SecurityGroup))
                    .send()
                    .await
                    .map_err(|e| aws_err("create security group", e))?;
                r.group_id().unwrap_or_default().to_string()
            }
        };
        let perms: Vec<IpPermission> = firewall::rules(role, ctx.cluster.distro, ctx.cluster.spec.cni.as_deref())
            .into_iter()
            .map(|r| {
                let cidr = match r.source {
                    Source::Anywhere => "0.0.0.0/0",
                    Source::Network => VPC_CIDR,
                };
                IpPermission::builder()
                    .ip_protocol(r.proto.as_str())
                    .from_port(r.from_port as i32)
                    .to_port(r.to_port as i32)
                    .ip_ranges(IpRange::builder().cidr_ip(cidr).description(r.description).build())
                    .build()
            })
            .collect();
        // One call per rule: a rule that already exists (a resumed phase) does not stop the rest.
        for p in perms {
            if let Err(e) = ec2.authorize_security_group_ingress().group_id(&sg).ip_permissions(p).send().await
                && code_of(&e) != "InvalidPermission.Duplicate"
            {
                return Err(aws_err("authorize ingress", e));
            }
        }
        Ok(sg)
    }

    async fn ensure_key(&self, ec2: &Client, ctx: &PhaseCtx<'_>) -> Result<String, PhaseError> {
        let id = &ctx.cluster.id;
        let name = format!("{id}-key");
        let public = crate::cluster_ssh_key(&self.store, ctx).await?;
        match ec2
            .import_key_pair()
            .key_name(&name)
            .public_key_material(aws_sdk_ec2::primitives::Blob::new(public.into_bytes()))
            .tag_specifications(tags(id, "ssh-key", &name, ResourceType::KeyPair))
            .send()
            .await
        {
            Ok(r) => Ok(r.key_pair_id().unwrap_or(&name).to_string()),
            Err(e) if code_of(&e) == "InvalidKeyPair.Duplicate" => Ok(name),
            Err(e) => Err(aws_err("import key pair", e)),
        }
    }

    async fn ami(&self, ec2: &Client) -> Result<String, PhaseError> {
        if let Some(a) = &self.ami {
            return Ok(a.clone());
        }
        let r = ec2
            .describe_images()
            .owners(UBUNTU_OWNER)
            .filters(filter("name", UBUNTU_NAME))
            .filters(filter("architecture", "x86_64"))
            .send()
            .await
            .map_err(|e| aws_err("describe images", e))?;
        let mut images: Vec<_> = r
            .images()
            .iter()
            .filter_map(|i| Some((i.creation_date()?.to_string(), i.image_id()?.to_string())))
            .collect();
        images.sort();
        images
            .pop()
            .map(|(_, id)| id)
            .ok_or_else(|| PhaseError::Permanent("no Ubuntu 24.04 AMI found in this region; set KSCTL_AWS_AMI".into()))
    }

    /// Looks the VM up by tag, else launches it; checkpoints its id at once, then waits for its IPs.
    async fn ensure_vm(
        &self,
        ec2: &Client,
        ctx: &PhaseCtx<'_>,
        role: Role,
        index: u32,
        image: &str,
    ) -> Result<Vm, PhaseError> {
        let id = &ctx.cluster.id;
        let name = role.vm_name(id, index);
        let state = infra(&self.store, ctx).await?;
        let sg = state
            .firewalls
            .get(role.as_str())
            .cloned()
            .ok_or_else(|| PhaseError::Permanent(format!("no security group for {}", role.as_str())))?;
        let subnet = state
            .subnets
            .get(index as usize % state.subnets.len().max(1))
            .cloned()
            .ok_or_else(|| PhaseError::Permanent("no subnets recorded".into()))?;
        let key = format!("{id}-key");
        let existing = self.find_instance(ec2, id, &name).await?;
        let instance = match existing {
            Some(i) => i,
            None => {
                let op = ctx.cmd.op_id.as_str();
                // Spread across the three subnets (three zones) by index, role by role.
                let r = ec2
                    .run_instances()
                    .image_id(image)
                    .instance_type(InstanceType::from(instance_type(ctx, role).as_str()))
                    .min_count(1)
                    .max_count(1)
                    .client_token(client_token(op, &name))
                    .key_name(&key)
                    .subnet_id(&subnet)
                    .security_group_ids(&sg)
                    .block_device_mappings(
                        BlockDeviceMapping::builder()
                            .device_name("/dev/sda1")
                            .ebs(
                                EbsBlockDevice::builder()
                                    .volume_size(30)
                                    .volume_type(VolumeType::Gp3)
                                    .delete_on_termination(true)
                                    .build(),
                            )
                            .build(),
                    )
                    .tag_specifications(tags(id, role.as_str(), &name, ResourceType::Instance))
                    .send()
                    .await
                    .map_err(|e| aws_err("run instance", e))?;
                r.instances()
                    .first()
                    .and_then(|i| i.instance_id())
                    .ok_or_else(|| PhaseError::Retryable("RunInstances returned no instance".into()))?
                    .to_string()
            }
        };
        let mut vm = Vm {
            id: instance.clone(),
            name: name.clone(),
            role,
            index,
            public_ip: String::new(),
            private_ip: String::new(),
        };
        checkpoint(&self.store, ctx, |i| {
            i.vms.entry(name.clone()).or_insert_with(|| vm.clone());
        })
        .await?;
        let (public, private) = self.wait_running(ec2, &instance).await?;
        vm.public_ip = public;
        vm.private_ip = private;
        checkpoint(&self.store, ctx, |i| {
            i.vms.insert(name.clone(), vm.clone());
        })
        .await?;
        Ok(vm)
    }

    async fn find_instance(&self, ec2: &Client, id: &ClusterId, name: &str) -> Result<Option<String>, PhaseError> {
        let r = ec2
            .describe_instances()
            .filters(cluster_filter(id))
            .filters(filter("tag:Name", name))
            .filters(Filter::builder().name("instance-state-name").values("pending").values("running").build())
            .send()
            .await
            .map_err(|e| aws_err("describe instances", e))?;
        Ok(r.reservations().iter().flat_map(|r| r.instances()).find_map(|i| i.instance_id().map(str::to_string)))
    }

    async fn wait_running(&self, ec2: &Client, instance: &str) -> Result<(String, String), PhaseError> {
        let mut pause = Duration::from_millis(500);
        for _ in 0..120 {
            let r = ec2
                .describe_instances()
                .instance_ids(instance)
                .send()
                .await
                .map_err(|e| aws_err("wait for instance", e))?;
            if let Some(i) = r.reservations().iter().flat_map(|r| r.instances()).next() {
                let state = i.state().and_then(|s| s.name()).cloned();
                if state == Some(InstanceStateName::Running) && i.private_ip_address().is_some() {
                    return Ok((
                        i.public_ip_address().unwrap_or_default().to_string(),
                        i.private_ip_address().unwrap_or_default().to_string(),
                    ));
                }
                if matches!(state, Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)) {
                    return Err(PhaseError::Permanent(format!("instance {instance} terminated while starting")));
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(10));
        }
        Err(PhaseError::Retryable(format!("instance {instance} is not running yet")))
    }

    async fn terminate(&self, ec2: &Client, ids: Vec<String>) -> Result<(), PhaseError> {
        if ids.is_empty() {
            return Ok(());
        }
        if let Err(e) = ec2.terminate_instances().set_instance_ids(Some(ids.clone())).send().await
            && !code_of(&e).ends_with(".NotFound")
        {
            return Err(aws_err("terminate instances", e));
        }
        // Security groups cannot go while instances still use them.
        for _ in 0..120 {
            let r = ec2.describe_instances().set_instance_ids(Some(ids.clone())).send().await;
            let alive = match r {
                Ok(r) => r
                    .reservations()
                    .iter()
                    .flat_map(|r| r.instances())
                    .any(|i| i.state().and_then(|s| s.name()) != Some(&InstanceStateName::Terminated)),
                Err(e) if code_of(&e).ends_with(".NotFound") => false,
                Err(e) => return Err(aws_err("wait for termination", e)),
            };
            if !alive {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err(PhaseError::Retryable("instances are still terminating".into()))
    }

    /// Every live instance carrying the cluster's tag (optionally only one role).
    async fn tagged_instances(
        &self,
        ec2: &Client,
        id: &ClusterId,
        role: Option<Role>,
    ) -> Result<Vec<(String, String)>, PhaseError> {
        let mut req = ec2.describe_instances().filters(cluster_filter(id)).filters(
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .values("stopping")
                .values("stopped")
                .build(),
        );
        if let Some(r) = role {
            req = req.filters(filter(&format!("tag:{TAG_ROLE}"), r.as_str()));
        }
        let r = req.send().await.map_err(|e| aws_err("describe instances", e))?;
        Ok(r.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .filter_map(|i| {
                let name = i
                    .tags()
                    .iter()
                    .find(|t| t.key() == Some("Name"))
                    .and_then(|t| t.value())
                    .unwrap_or_default()
                    .to_string();
                Some((i.instance_id()?.to_string(), name))
            })
            .collect())
    }

    /// Retries a delete that fails with `DependencyViolation` (something still uses it).
    async fn delete_with_retry<F, Fut, E, R>(&self, what: &str, f: F) -> Result<(), PhaseError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<R, SdkError<E, aws_sdk_ec2::config::http::HttpResponse>>>,
        E: ProvideErrorMetadata + std::fmt::Debug,
    {
        let mut pause = Duration::from_millis(500);
        for _ in 0..20 {
            match f().await {
                Ok(_) => return Ok(()),
                // Gone already (or, for a detach, detached already: an earlier attempt whose answer
                // was lost did it).
                Err(e) if code_of(&e).ends_with("NotFound") || code_of(&e) == "Gateway.NotAttached" => return Ok(()),
                Err(e) if code_of(&e) == "DependencyViolation" => {
                    self.retried();
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(15));
                }
                Err(e) => return Err(aws_err(what, e)),
            }
        }
        Err(PhaseError::Retryable(format!("{what}: still in use after retries")))
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
        let vpc = infra(&self.store, ctx).await?.network.unwrap_or_default();
        let done = AtomicU32::new(4);
        let step = |m: String| ctx.progress(m, done.fetch_add(1, Ordering::SeqCst) + 1, total);
        for role in [Role::LoadBalancer, Role::Datastore, Role::ControlPlane, Role::Worker] {
            let sg = self.ensure_security_group(&ec2, ctx, &vpc, role).await?;
            checkpoint(&self.store, ctx, |i| {
                i.firewalls.insert(role.as_str().into(), sg.clone());
            })
            .await?;
            step(format!("security group {sg} ({})", role.as_str())).await;
        }
        let key = self.ensure_key(&ec2, ctx).await?;
        checkpoint(&self.store, ctx, |i| i.ssh_key_id = Some(key.clone())).await?;
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
        let id = &ctx.cluster.id;
        let aws = self.clients(&ctx.cluster.spec.region).await?;
        // Managed clusters first lose their node groups, cluster and roles (steps 1–2 of 8).
        let (base, total) = if ctx.cluster.cluster_type == ClusterType::Managed { (2, 8) } else { (0, 6) };
        if base > 0 {
            self.delete_managed(ctx, &aws).await?;
        }
        let ec2 = aws.ec2;
        // Reverse order of creation, each step a sweep by tag.
        let instances: Vec<String> = self.tagged_instances(&ec2, id, None).await?.into_iter().map(|(i, _)| i).collect();
        let n = instances.len();
        self.terminate(&ec2, instances).await?;
        ctx.progress(format!("terminated {n} instances"), base + 1, total).await;

        let sgs = ec2
            .describe_security_groups()
            .filters(cluster_filter(id))
            .send()
            .await
            .map_err(|e| aws_err("describe security groups", e))?;
        for g in sgs.security_groups().iter().filter_map(|g| g.group_id()) {
            self.delete_with_retry("delete security group", || ec2.delete_security_group().group_id(g).send()).await?;
        }
        ctx.progress("deleted security groups", base + 2, total).await;

        let keys = ec2
            .describe_key_pairs()
            .filters(cluster_filter(id))
            .send()
            .await
            .map_err(|e| aws_err("describe key pairs", e))?;
        let mut names: Vec<String> = keys.key_pairs().iter().filter_map(|k| k.key_name().map(str::to_string)).collect();
        names.push(format!("{id}-key"));
        names.dedup();
        for k in names {
            self.delete_with_retry("delete key pair", || ec2.delete_key_pair().key_name(&k).send()).await?;
        }
        ctx.progress("deleted key pair", base + 3, total).await;

        let rts = ec2
            .describe_route_tables()
            .filters(cluster_filter(id))
            .send()
            .await
            .map_err(|e| aws_err("describe route tables", e))?;
        for t in rts.route_tables() {
            for a in t
                .associations()
                .iter()
                .filter(|a| a.main() != Some(true))
                .filter_map(|a| a.route_table_association_id())
            {
                self.delete_with_retry("disassociate route table", || {
                    ec2.disassociate_route_table().association_id(a).send()
                })
                .await?;
            }
            if let Some(rt) = t.route_table_id() {
                self.delete_with_retry("delete route table", || ec2.delete_route_table().route_table_id(rt).send())
                    .await?;
            }
        }
        ctx.progress("deleted route table", base + 4, total).await;

        let igws = ec2
            .describe_internet_gateways()
            .filters(cluster_filter(id))
            .send()
            .await
            .map_err(|e| aws_err("describe internet gateways", e))?;
        for g in igws.internet_gateways() {
            let Some(gid) = g.internet_gateway_id() else { continue };
            for a in g.attachments().iter().filter_map(|a| a.vpc_id()) {
                self.delete_with_retry("detach internet gateway", || {
                    ec2.detach_internet_gateway().internet_gateway_id(gid).vpc_id(a).send()
                })
                .await?;
            }
            self.delete_with_retry("delete internet gateway", || {
                ec2.delete_internet_gateway().internet_gateway_id(gid).send()
            })
            .await?;
        }
        ctx.progress("deleted internet gateway", base + 5, total).await;

        let subnets = ec2
            .describe_subnets()
            .filters(cluster_filter(id))
            .send()
            .await
            .map_err(|e| aws_err("describe subnets", e))?;
        for s in subnets.subnets().iter().filter_map(|s| s.subnet_id()) {
            self.delete_with_retry("delete subnet", || ec2.delete_subnet().subnet_id(s).send()).await?;
        }
        let vpcs =
            ec2.describe_vpcs().filters(cluster_filter(id)).send().await.map_err(|e| aws_err("describe VPCs", e))?;
        for v in vpcs.vpcs().iter().filter_map(|v| v.vpc_id()) {
            self.delete_with_retry("delete VPC", || ec2.delete_vpc().vpc_id(v).send()).await?;
        }
        ctx.progress("deleted subnets and VPC", base + 6, total).await;
        self.store.delete(&ksctl_core::keys::cloud(id)).await?;
        Ok(())
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
        let state = infra(&self.store, ctx).await?;
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
        let state = infra(&self.store, ctx).await?;
        let remove = state.workers_beyond(target);
        self.terminate(&ec2, remove.iter().map(|v| v.id.clone()).collect()).await?;
        checkpoint(&self.store, ctx, |i| {
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
