//! Delete: a sweep by tag in reverse order of creation; deletes that something still uses are
//! retried until it lets go.
use super::*;

impl AwsCloud {
    /// Deletes everything the cluster has, in reverse order of creation, each step a sweep by
    /// tag (so nothing is left even when state is incomplete).
    pub(super) async fn sweep(&self, ctx: &PhaseCtx<'_>) -> Result<(), PhaseError> {
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

    /// Retries a delete that fails with `DependencyViolation` (something still uses it), on
    /// [`ksctl_core::backoff::still_in_use`].
    async fn delete_with_retry<F, Fut, E, R>(&self, what: &str, f: F) -> Result<(), PhaseError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<R, SdkError<E, aws_sdk_ec2::config::http::HttpResponse>>>,
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        use backon::Retryable;
        let deleted = f
            .retry(ksctl_core::backoff::still_in_use())
            .when(|e| code_of(e) == "DependencyViolation")
            .notify(|_, _| self.retried())
            .await;
        match deleted {
            Ok(_) => Ok(()),
            // Gone already (or, for a detach, detached already: an earlier attempt whose answer
            // was lost did it).
            Err(e) if code_of(&e).ends_with("NotFound") || code_of(&e) == "Gateway.NotAttached" => Ok(()),
            Err(e) if code_of(&e) == "DependencyViolation" => {
                Err(PhaseError::retryable(format!("{what}: still in use after retries")))
            }
            Err(e) => Err(aws_err(what, e)),
        }
    }
}
