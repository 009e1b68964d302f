//! The VMs: the Ubuntu image, launching one idempotently (looked up by tag, `ClientToken`),
//! waiting for its addresses, terminating and listing by tag.
use super::*;

impl AwsCloud {
    pub(super) async fn ami(&self, ec2: &Client) -> Result<String, PhaseError> {
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
            .ok_or_else(|| PhaseError::permanent("no Ubuntu 24.04 AMI found in this region; set KSCTL_AWS_AMI".into()))
    }

    /// Looks the VM up by tag, else launches it; checkpoints its id at once, then waits for its IPs.
    pub(super) async fn ensure_vm(
        &self,
        ec2: &Client,
        ctx: &PhaseCtx<'_>,
        role: Role,
        index: u32,
        image: &str,
    ) -> Result<Vm, PhaseError> {
        let id = &ctx.cluster.id;
        let name = role.vm_name(id, index);
        let state = phase_record::<InfraRecord>(&self.store, ctx).await?;
        let sg =
            state.firewalls.get(role.as_str()).cloned().ok_or_else(|| {
                PhaseError::permanent(format!("no security group recorded for the {}s", role.title()))
            })?;
        let subnet = state
            .subnets
            .get(index as usize % state.subnets.len().max(1))
            .cloned()
            .ok_or_else(|| PhaseError::permanent("no subnets recorded".into()))?;
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
                    .ok_or_else(|| PhaseError::retryable("RunInstances returned no instance".into()))?
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
        checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
            i.vms.entry(name.clone()).or_insert_with(|| vm.clone());
        })
        .await?;
        let (public, private) = self.wait_running(ec2, &instance).await?;
        vm.public_ip = public;
        vm.private_ip = private;
        checkpoint(&self.store, ctx, |i: &mut InfraRecord| {
            i.vms.insert(name.clone(), vm.clone());
        })
        .await?;
        Ok(vm)
    }

    pub(super) async fn find_instance(
        &self,
        ec2: &Client,
        id: &ClusterId,
        name: &str,
    ) -> Result<Option<String>, PhaseError> {
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

    pub(super) async fn wait_running(&self, ec2: &Client, instance: &str) -> Result<(String, String), PhaseError> {
        for pause in ksctl_core::backoff::cloud_wait(Duration::from_secs(10)).build().take(120) {
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
                    return Err(PhaseError::permanent(format!("instance {instance} terminated while starting")));
                }
            }
            tokio::time::sleep(pause).await;
        }
        Err(PhaseError::retryable(format!("instance {instance} is not running yet")))
    }

    pub(super) async fn terminate(&self, ec2: &Client, ids: Vec<String>) -> Result<(), PhaseError> {
        if ids.is_empty() {
            return Ok(());
        }
        if let Err(e) = ec2.terminate_instances().set_instance_ids(Some(ids.clone())).send().await
            && !code_of(&e).ends_with(".NotFound")
        {
            return Err(aws_err("terminate instances", e));
        }
        // Security groups cannot go while instances still use them.
        for pause in ksctl_core::backoff::poll(Duration::from_secs(1)).build().take(120) {
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
            tokio::time::sleep(pause).await;
        }
        Err(PhaseError::retryable("instances are still terminating".into()))
    }

    /// Every live instance carrying the cluster's tag (optionally only one role).
    pub(super) async fn tagged_instances(
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
}
