//! Managed EKS: the cluster's network (the same VPC, three subnets, gateway and routes as the
//! self-managed path), an IAM role for the control plane and one for the nodes, the EKS cluster,
//! one managed node group (min = max = desired = the request's `managed_nodes`), and a kubeconfig
//! with an `aws eks get-token`-style bearer token, sealed in state. Every create carries a
//! deterministic `clientRequestToken` and is preceded by a lookup, so a resumed phase adopts what
//! a killed one created. Delete: node groups → cluster → roles, then the network sweep.
use super::{AwsCloud, Clients, aws_err, code_of, token};
use aws_sdk_eks::types::{ClusterStatus, NodegroupScalingConfig, NodegroupStatus, VpcConfigRequest};
use backon::BackoffBuilder;
use ksctl_core::ClusterId;
use ksctl_core::messages::context_name;
use ksctl_core::records::{ClusterRecord, InfraRecord, Role};
use ksctl_runtime::{PhaseCtx, PhaseError};
use ksctl_runtime::{checkpoint, phase_record};
use std::time::{Duration, Instant};

/// EKS creates take 10–15 minutes and deletes about as long; keep polling up to this long
/// (with progress acks) before handing the phase back for a retry.
const WAIT_LIMIT: Duration = Duration::from_secs(40 * 60);
const NOT_FOUND: &str = "ResourceNotFoundException";

const CLUSTER_TRUST: &str = "eks.amazonaws.com";
const CLUSTER_POLICIES: &[&str] = &["arn:aws:iam::aws:policy/AmazonEKSClusterPolicy"];
const NODE_TRUST: &str = "ec2.amazonaws.com";
const NODE_POLICIES: &[&str] = &[
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
];

pub fn cluster_role(id: &ClusterId) -> String {
    format!("ksctl-{id}-cp")
}
pub fn node_role(id: &ClusterId) -> String {
    format!("ksctl-{id}-node")
}
pub fn nodegroup(id: &ClusterId) -> String {
    format!("{id}-pool")
}

/// EKS wants `major.minor`; requests may say `1.31`, `v1.31.2` or `1.31.2+k3s1`.
pub fn eks_version(v: &str) -> String {
    v.trim_start_matches('v').split(['.', '+', '-']).take(2).collect::<Vec<_>>().join(".")
}

fn trust_policy(service: &str) -> String {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]
    })
    .to_string()
}

fn request_token(op: &str, what: &str) -> String {
    super::client_token(op, what)
}

/// Sleeps between polls ([`ksctl_core::backoff::cloud_wait`], growing to 15 s), reporting
/// progress so the message stays ours.
struct Poll<'a> {
    ctx: &'a PhaseCtx<'a>,
    started: Instant,
    pauses: backon::ExponentialBackoff,
    what: String,
}

impl<'a> Poll<'a> {
    fn new(ctx: &'a PhaseCtx<'a>, what: String) -> Self {
        let pauses = ksctl_core::backoff::cloud_wait(Duration::from_secs(15)).build();
        Self { ctx, started: Instant::now(), pauses, what }
    }

    async fn wait(&mut self, status: &str, done: u32, total: u32) -> Result<(), PhaseError> {
        if self.started.elapsed() > WAIT_LIMIT {
            return Err(PhaseError::retryable(format!("{} still {status} after {:?}", self.what, WAIT_LIMIT)));
        }
        self.ctx.progress(format!("{} is {status}", self.what), done, total).await;
        tokio::time::sleep(self.pauses.next().unwrap_or(Duration::from_secs(15))).await;
        Ok(())
    }
}

impl AwsCloud {
    pub(super) async fn create_managed(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let id = &ctx.cluster.id;
        let aws = self.clients(&ctx.cluster.spec.region).await?;
        const TOTAL: u32 = 9;
        let subnets = self.ensure_network(&aws.ec2, ctx, TOTAL).await?;

        let cluster_role = self.ensure_role(&aws, id, &cluster_role(id), CLUSTER_TRUST, CLUSTER_POLICIES).await?;
        checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
            i.roles.insert("eks-cluster".into(), cluster_role.clone());
        })
        .await?;
        ctx.progress(format!("IAM role {cluster_role}"), 5, TOTAL).await;
        let node_role = self.ensure_role(&aws, id, &node_role(id), NODE_TRUST, NODE_POLICIES).await?;
        checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
            i.roles.insert("eks-node".into(), node_role.clone());
        })
        .await?;
        ctx.progress(format!("IAM role {node_role}"), 6, TOTAL).await;

        let op = ctx.cmd.op_id.as_str();
        let eks = &aws.eks;
        let name = id.as_str();
        match eks.describe_cluster().name(name).send().await {
            Ok(_) => {}
            Err(e) if code_of(&e) == NOT_FOUND => {
                let r = eks
                    .create_cluster()
                    .name(name)
                    .version(eks_version(&ctx.cluster.spec.kubernetes_version))
                    .role_arn(&cluster_role)
                    .resources_vpc_config(
                        VpcConfigRequest::builder()
                            .set_subnet_ids(Some(subnets.clone()))
                            .endpoint_public_access(true)
                            .build(),
                    )
                    .tags(super::TAG_CLUSTER, name)
                    .tags(super::TAG_ROLE, "eks-cluster")
                    .client_request_token(request_token(op, "eks-cluster"))
                    .send()
                    .await;
                if let Err(e) = r
                    && code_of(&e) != "ResourceInUseException"
                {
                    return Err(aws_err("create EKS cluster", e));
                }
            }
            Err(e) => return Err(aws_err("describe EKS cluster", e)),
        }
        checkpoint(&self.store, ctx, |i: &mut InfraRecord| i.managed_cluster = Some(name.to_string())).await?;
        let mut poll = Poll::new(ctx, format!("EKS cluster {name}"));
        loop {
            let c = eks.describe_cluster().name(name).send().await.map_err(|e| aws_err("describe EKS cluster", e))?;
            match c.cluster().and_then(|c| c.status()) {
                Some(ClusterStatus::Active) => break,
                Some(ClusterStatus::Failed) => {
                    return Err(PhaseError::permanent(format!("EKS cluster {name} failed to create")));
                }
                s => poll.wait(s.map(|s| s.as_str()).unwrap_or("unknown"), 7, TOTAL).await?,
            }
        }
        ctx.progress(format!("EKS cluster {name} active"), 7, TOTAL).await;

        let pool = nodegroup(id);
        let size = ctx.cluster.spec.managed_nodes as i32;
        match eks.describe_nodegroup().cluster_name(name).nodegroup_name(&pool).send().await {
            Ok(_) => {}
            Err(e) if code_of(&e) == NOT_FOUND => {
                let r = eks
                    .create_nodegroup()
                    .cluster_name(name)
                    .nodegroup_name(&pool)
                    .scaling_config(scaling(size))
                    .set_subnets(Some(subnets.clone()))
                    .instance_types(super::instance_type(ctx, Role::Managed))
                    .node_role(&node_role)
                    .tags(super::TAG_CLUSTER, name)
                    .tags(super::TAG_ROLE, "node-pool")
                    .client_request_token(request_token(op, "eks-nodegroup"))
                    .send()
                    .await;
                if let Err(e) = r
                    && code_of(&e) != "ResourceInUseException"
                {
                    return Err(aws_err("create EKS node group", e));
                }
            }
            Err(e) => return Err(aws_err("describe EKS node group", e)),
        }
        checkpoint(&self.store, ctx, |i: &mut InfraRecord| i.node_pool = Some(pool.clone())).await?;
        self.wait_nodegroup(&aws, ctx, &pool, 8, TOTAL).await?;
        checkpoint(&self.store, ctx, |i: &mut InfraRecord| i.node_pool_size = size as u32).await?;
        ctx.progress(format!("node group {pool} active with {size} nodes"), 8, TOTAL).await;

        let kubeconfig = self.eks_kubeconfig(ctx.cluster).await?;
        let sealed = ctx.rt.sealer.seal(&format!("kubeconfig/{id}"), kubeconfig.as_bytes());
        checkpoint(&self.store, ctx, |i: &mut InfraRecord| i.kubeconfig = Some(sealed.clone())).await?;
        ctx.progress("kubeconfig with an EKS token sealed in state", 9, TOTAL).await;
        Ok(())
    }

    /// Waits until the node group is ACTIVE again (after a create or a scaling update).
    async fn wait_nodegroup(
        &self,
        aws: &Clients,
        ctx: &PhaseCtx<'_>,
        pool: &str,
        done: u32,
        total: u32,
    ) -> Result<i32, PhaseError> {
        let name = ctx.cluster.id.as_str();
        let mut poll = Poll::new(ctx, format!("node group {pool}"));
        loop {
            let r = aws
                .eks
                .describe_nodegroup()
                .cluster_name(name)
                .nodegroup_name(pool)
                .send()
                .await
                .map_err(|e| aws_err("describe EKS node group", e))?;
            let ng = r.nodegroup();
            match ng.and_then(|n| n.status()) {
                Some(NodegroupStatus::Active) => {
                    return Ok(ng.and_then(|n| n.scaling_config()).and_then(|s| s.desired_size()).unwrap_or(0));
                }
                Some(s @ (NodegroupStatus::CreateFailed | NodegroupStatus::Degraded)) => {
                    return Err(PhaseError::permanent(format!("node group {pool} is {}", s.as_str())));
                }
                s => poll.wait(s.map(|s| s.as_str()).unwrap_or("unknown"), done, total).await?,
            }
        }
    }

    /// A fresh kubeconfig for the EKS cluster: endpoint and CA from `DescribeCluster`, a new token.
    pub(super) async fn eks_kubeconfig(&self, cluster: &ClusterRecord) -> Result<String, PhaseError> {
        let region = &cluster.spec.region;
        let aws = self.clients(region).await?;
        let c = aws
            .eks
            .describe_cluster()
            .name(cluster.id.as_str())
            .send()
            .await
            .map_err(|e| aws_err("describe EKS cluster", e))?;
        let c = c.cluster().ok_or_else(|| PhaseError::retryable("DescribeCluster returned no cluster".into()))?;
        let endpoint = c
            .endpoint()
            .ok_or_else(|| PhaseError::retryable(format!("EKS cluster {} has no endpoint yet", cluster.id)))?;
        let ca = c.certificate_authority().and_then(|a| a.data()).unwrap_or_default();
        let creds = self.credentials(&aws).await?;
        let token = token::token(&creds, region, cluster.id.as_str(), std::time::SystemTime::now())
            .map_err(PhaseError::permanent)?;
        Ok(ksctl_core::kubeconfig::with_token(&context_name(cluster), endpoint, ca, &token))
    }

    pub(super) async fn scale_managed(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
        let target = ctx.target_workers()? as i32;
        let aws = self.clients(&ctx.cluster.spec.region).await?;
        let pool = phase_record::<InfraRecord>(&self.store, ctx)
            .await?
            .node_pool
            .unwrap_or_else(|| nodegroup(&ctx.cluster.id));
        let name = ctx.cluster.id.as_str();
        let current = self.wait_nodegroup(&aws, ctx, &pool, 0, 2).await?;
        if current != target {
            aws.eks
                .update_nodegroup_config()
                .cluster_name(name)
                .nodegroup_name(&pool)
                .scaling_config(scaling(target))
                .client_request_token(request_token(ctx.cmd.op_id.as_str(), &format!("scale-{target}")))
                .send()
                .await
                .map_err(|e| aws_err("update EKS node group", e))?;
            ctx.progress(format!("node group {pool}: {current} → {target} nodes"), 1, 2).await;
        }
        let now = self.wait_nodegroup(&aws, ctx, &pool, 1, 2).await?;
        if now != target {
            return Err(PhaseError::retryable(format!("node group {pool} has {now} nodes, not {target} yet")));
        }
        checkpoint(&self.store, ctx, |i: &mut InfraRecord| i.node_pool_size = target as u32).await?;
        ctx.progress(format!("node group {pool} has {target} nodes"), 2, 2).await;
        Ok(())
    }

    /// Node groups → cluster → roles. "Not found" is done at every step.
    pub(super) async fn delete_managed(&self, ctx: &PhaseCtx<'_>, aws: &Clients) -> Result<(), PhaseError> {
        let name = ctx.cluster.id.as_str();
        let eks = &aws.eks;
        let exists = match eks.describe_cluster().name(name).send().await {
            Ok(_) => true,
            Err(e) if code_of(&e) == NOT_FOUND => false,
            Err(e) => return Err(aws_err("describe EKS cluster", e)),
        };
        let pools = if !exists {
            vec![]
        } else {
            match eks.list_nodegroups().cluster_name(name).send().await {
                Ok(r) => r.nodegroups().to_vec(),
                Err(e) if code_of(&e) == NOT_FOUND => vec![],
                Err(e) => return Err(aws_err("list EKS node groups", e)),
            }
        };
        for pool in &pools {
            if let Err(e) = eks.delete_nodegroup().cluster_name(name).nodegroup_name(pool).send().await
                && code_of(&e) != NOT_FOUND
                && code_of(&e) != "ResourceInUseException"
            {
                return Err(aws_err("delete EKS node group", e));
            }
            let mut poll = Poll::new(ctx, format!("node group {pool}"));
            loop {
                match eks.describe_nodegroup().cluster_name(name).nodegroup_name(pool).send().await {
                    Err(e) if code_of(&e) == NOT_FOUND => break,
                    Err(e) => return Err(aws_err("describe EKS node group", e)),
                    Ok(r) => {
                        let s = r.nodegroup().and_then(|n| n.status()).map(|s| s.as_str().to_string());
                        if s.as_deref() == Some("DELETE_FAILED") {
                            return Err(PhaseError::permanent(format!("deleting node group {pool} failed")));
                        }
                        poll.wait(s.as_deref().unwrap_or("deleting"), 1, 8).await?
                    }
                }
            }
        }
        ctx.progress(format!("deleted {} node groups", pools.len()), 1, 8).await;

        let mut poll = Poll::new(ctx, format!("EKS cluster {name}"));
        loop {
            match eks.delete_cluster().name(name).send().await {
                Ok(_) => {}
                Err(e) if code_of(&e) == NOT_FOUND => break,
                // Deleting already, or node groups still going: wait and look again.
                Err(e) if code_of(&e) == "ResourceInUseException" => {}
                Err(e) => return Err(aws_err("delete EKS cluster", e)),
            }
            match eks.describe_cluster().name(name).send().await {
                Err(e) if code_of(&e) == NOT_FOUND => break,
                Err(e) => return Err(aws_err("describe EKS cluster", e)),
                Ok(r) => {
                    let s = r.cluster().and_then(|c| c.status()).map(|s| s.as_str().to_string());
                    poll.wait(s.as_deref().unwrap_or("deleting"), 2, 8).await?
                }
            }
        }
        ctx.progress(format!("deleted EKS cluster {name}"), 2, 8).await;
        for role in [cluster_role(&ctx.cluster.id), node_role(&ctx.cluster.id)] {
            self.delete_role(aws, &role).await?;
        }
        Ok(())
    }

    async fn ensure_role(
        &self,
        aws: &Clients,
        id: &ClusterId,
        name: &str,
        trust: &str,
        policies: &[&str],
    ) -> Result<String, PhaseError> {
        use aws_sdk_iam::types::Tag;
        let iam = &aws.iam;
        let arn = match iam.get_role().role_name(name).send().await {
            Ok(r) => r.role().map(|r| r.arn().to_string()),
            Err(e) if code_of(&e) == "NoSuchEntity" => None,
            Err(e) => return Err(aws_err("get IAM role", e)),
        };
        let arn = match arn {
            Some(a) => a,
            None => {
                let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build().expect("key and value are set");
                match iam
                    .create_role()
                    .role_name(name)
                    .assume_role_policy_document(trust_policy(trust))
                    .description(format!("ksctl: {trust} for cluster {id}"))
                    .tags(tag(super::TAG_CLUSTER, id.as_str()))
                    .tags(tag("Name", name))
                    .send()
                    .await
                {
                    Ok(r) => r.role().map(|r| r.arn().to_string()).unwrap_or_default(),
                    Err(e) if code_of(&e) == "EntityAlreadyExists" => {
                        return Err(PhaseError::retryable(format!("IAM role {name} appeared meanwhile")));
                    }
                    Err(e) => return Err(aws_err("create IAM role", e)),
                }
            }
        };
        // Attaching an attached policy is a no-op, so resuming just repeats these.
        for p in policies {
            iam.attach_role_policy()
                .role_name(name)
                .policy_arn(*p)
                .send()
                .await
                .map_err(|e| aws_err("attach IAM policy", e))?;
        }
        Ok(arn)
    }

    async fn delete_role(&self, aws: &Clients, name: &str) -> Result<(), PhaseError> {
        let iam = &aws.iam;
        let attached = match iam.list_attached_role_policies().role_name(name).send().await {
            Ok(r) => {
                r.attached_policies().iter().filter_map(|p| p.policy_arn().map(str::to_string)).collect::<Vec<_>>()
            }
            Err(e) if code_of(&e) == "NoSuchEntity" => return Ok(()),
            Err(e) => return Err(aws_err("list IAM role policies", e)),
        };
        for p in attached {
            if let Err(e) = iam.detach_role_policy().role_name(name).policy_arn(&p).send().await
                && code_of(&e) != "NoSuchEntity"
            {
                return Err(aws_err("detach IAM policy", e));
            }
        }
        match iam.delete_role().role_name(name).send().await {
            Ok(_) => Ok(()),
            Err(e) if code_of(&e) == "NoSuchEntity" => Ok(()),
            Err(e) => Err(aws_err("delete IAM role", e)),
        }
    }
}

fn scaling(n: i32) -> NodegroupScalingConfig {
    NodegroupScalingConfig::builder().min_size(n).max_size(n).desired_size(n).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_become_major_minor() {
        assert_eq!(eks_version("1.31"), "1.31");
        assert_eq!(eks_version("v1.31.2"), "1.31");
        assert_eq!(eks_version("1.30.4+k3s1"), "1.30");
    }

    #[test]
    fn names_fit_iam_limits() {
        let id = ClusterId::new(&"a".repeat(50)).unwrap();
        assert!(cluster_role(&id).len() <= 64 && node_role(&id).len() <= 64);
    }

    #[test]
    fn trust_policies_name_the_service() {
        let p: serde_json::Value = serde_json::from_str(&trust_policy(CLUSTER_TRUST)).unwrap();
        assert_eq!(p["Statement"][0]["Principal"]["Service"], "eks.amazonaws.com");
        assert_eq!(p["Statement"][0]["Action"], "sts:AssumeRole");
    }
}
