//! The network a self-managed cluster's VMs live in: VPC, subnets in three zones, internet
//! gateway and route, one security group per role, and the imported SSH key.
use super::*;

impl AwsCloud {
    /// VPC, three subnets in three zones, internet gateway and default route: progress steps
    /// 1–4 of `total`. Returns the subnets.
    pub(super) async fn ensure_network(
        &self,
        ec2: &Client,
        ctx: &PhaseCtx<'_>,
        total: u32,
    ) -> Result<Vec<String>, PhaseError> {
        let id = &ctx.cluster.id;
        let state = phase_record::<InfraRecord>(&self.store, ctx).await?;
        let vpc = match state.network.clone() {
            Some(v) => v,
            None => {
                let v = self.ensure_vpc(ec2, id).await?;
                checkpoint(&self.store, ctx, |i: &mut InfraRecord| i.network = Some(v.clone())).await?;
                v
            }
        };
        ctx.progress(format!("vpc {vpc}"), 1, total).await;
        let subnets = if state.subnets.len() == 3 {
            state.subnets.clone()
        } else {
            let s = self.ensure_subnets(ec2, id, &vpc).await?;
            checkpoint(&self.store, ctx, |i: &mut InfraRecord| i.subnets = s.clone()).await?;
            s
        };
        ctx.progress(format!("subnets {}", subnets.join(", ")), 2, total).await;
        let igw = self.ensure_gateway(ec2, id, &vpc).await?;
        checkpoint(&self.store, ctx, |i: &mut InfraRecord| i.gateway = Some(igw.clone())).await?;
        ctx.progress(format!("internet gateway {igw}"), 3, total).await;
        let rt = self.ensure_routes(ec2, id, &vpc, &igw, &subnets).await?;
        checkpoint(&self.store, ctx, |i: &mut InfraRecord| i.route_table = Some(rt.clone())).await?;
        ctx.progress(format!("route table {rt}"), 4, total).await;
        Ok(subnets)
    }

    pub(super) async fn ensure_vpc(&self, ec2: &Client, id: &ClusterId) -> Result<String, PhaseError> {
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
                    .ok_or_else(|| PhaseError::retryable("CreateVpc returned no id".into()))?
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

    pub(super) async fn ensure_subnets(
        &self,
        ec2: &Client,
        id: &ClusterId,
        vpc: &str,
    ) -> Result<Vec<String>, PhaseError> {
        let zones =
            ec2.describe_availability_zones().send().await.map_err(|e| aws_err("describe availability zones", e))?;
        let mut zones: Vec<String> =
            zones.availability_zones().iter().filter_map(|z| z.zone_name().map(str::to_string)).collect();
        zones.sort();
        if zones.is_empty() {
            return Err(PhaseError::permanent("the region has no availability zones".into()));
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
                        .ok_or_else(|| PhaseError::retryable("CreateSubnet returned no id".into()))?
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

    pub(super) async fn ensure_gateway(&self, ec2: &Client, id: &ClusterId, vpc: &str) -> Result<String, PhaseError> {
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

    pub(super) async fn ensure_routes(
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

    pub(super) async fn ensure_security_group(
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
        let perms: Vec<IpPermission> = firewall::rules(role, ctx.cluster.distro, ctx.cluster.spec.cni())
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

    pub(super) async fn ensure_key(&self, ec2: &Client, ctx: &PhaseCtx<'_>) -> Result<String, PhaseError> {
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
}
