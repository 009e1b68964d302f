//! The host steps of the SSH bootstrap: the script for each [`Step`], running it and
//! checkpointing it, the etcd health check and reading the admin kubeconfig back.
use super::*;

impl SshHosts {
    /// The script for one host step.
    pub(super) async fn script(&self, ctx: &PhaseCtx<'_>, run: &Loaded, s: &HostStep) -> Result<String, PhaseError> {
        let infra = &run.infra;
        let vm = &s.host;
        let lb = first_host(infra, Role::LoadBalancer)?;
        let endpoints = etcd_endpoints(infra);
        let cps: Vec<Backend> = hosts_of(infra, Role::ControlPlane)
            .iter()
            .map(|v| Backend { name: v.name.clone(), ip: v.private_ip.clone() })
            .collect();
        let sans = vec![lb.public_ip.clone(), lb.private_ip.clone()];
        let a = &self.artifacts;
        let first_cp = cps.first().map(|c| c.name == vm.name).unwrap_or(false);
        Ok(match s.step {
            Step::Haproxy => scripts::haproxy(&cps),
            Step::Etcd => {
                let pki = self.etcd_pki(ctx, run).await?;
                let ds = etcd_members(infra);
                let missing = || PhaseError::permanent(format!("no etcd certificate for {}", vm.name));
                scripts::etcd(&scripts::EtcdMember {
                    name: &vm.name,
                    ip: &vm.private_ip,
                    cluster: &ds,
                    token: &format!("ksctl-{}", ctx.cluster.id),
                    ca: &pki.ca.cert,
                    server: pki.server.get(&vm.name).ok_or_else(missing)?,
                    peer: pki.peer.get(&vm.name).ok_or_else(missing)?,
                    client: &pki.client,
                })
            }
            Step::K3sInit | Step::K3sServerJoin => {
                let pki = self.etcd_pki(ctx, run).await?;
                let token = if first_cp { None } else { Some(self.token(ctx).await?) };
                scripts::k3s_server(
                    &scripts::K3sServer {
                        node_name: &vm.name,
                        version: &run.version,
                        etcd_endpoints: &endpoints,
                        etcd_ca: &pki.ca.cert,
                        etcd_client: &pki.client,
                        tls_sans: &sans,
                        token: token.as_deref(),
                        flannel: run.flannel,
                    },
                    a,
                )
            }
            Step::K3sAgentJoin => {
                scripts::k3s_agent(&vm.name, &run.version, &lb.private_ip, &self.token(ctx).await?, a)
            }
            Step::KubeadmInit => {
                let pki = self.etcd_pki(ctx, run).await?;
                let secrets = self.kubeadm_secrets(ctx).await?;
                let cfg = kubeadm::ClusterConfig {
                    cluster_name: ctx.cluster.spec.cluster_name.as_str(),
                    version: &run.version,
                    node_name: &vm.name,
                    advertise_ip: &vm.private_ip,
                    lb_private_ip: &lb.private_ip,
                    lb_public_ip: &lb.public_ip,
                    etcd_endpoints: &endpoints,
                    token: &secrets.token,
                    certificate_key: &secrets.certificate_key,
                };
                kubeadm::init(&cfg, &secrets, &pki.ca.cert, &pki.client, a)
                    .map_err(|e| PhaseError::caused_by(false, e))?
            }
            Step::KubeadmCpJoin | Step::KubeadmWorkerJoin => {
                let pki = self.etcd_pki(ctx, run).await?;
                let secrets = self.refresh_kubeadm(ctx, run).await?;
                let hash = pki::ca_cert_hash(&secrets.ca.key).map_err(|e| PhaseError::caused_by(false, e))?;
                let cp = s.step == Step::KubeadmCpJoin;
                let join = kubeadm::Join {
                    version: &run.version,
                    lb_private_ip: &lb.private_ip,
                    token: &secrets.token,
                    ca_hash: &hash,
                    node_name: &vm.name,
                    node_ip: &vm.private_ip,
                    certificate_key: cp.then_some(secrets.certificate_key.as_str()),
                    wait_ready: ctx.cmd.phase == ksctl_core::saga::Phase::BootstrapJoin,
                };
                let etcd: Option<(&str, &CertKey)> = cp.then_some((pki.ca.cert.as_str(), &pki.client));
                kubeadm::join(s.step, &join, etcd, a).map_err(|e| PhaseError::caused_by(false, e))?
            }
        })
    }

    /// Runs one host step; the first k3s server's token is read and recorded with the checkpoint.
    pub(super) async fn run_step(&self, ctx: &PhaseCtx<'_>, run: &Loaded, s: &HostStep) -> Result<(), PhaseError> {
        let script = self.script(ctx, run, s).await?;
        let (session, addr) = self.session(ctx, run, &s.host).await?;
        let ran = async {
            session.run(s.step.as_str(), "sudo -n sh -s", Some(script.as_bytes()), s.step.timeout()).await?;
            if s.step != Step::K3sInit {
                return Ok(None);
            }
            let cat = format!("sudo -n cat {}", scripts::K3S_TOKEN_FILE);
            session.run("read k3s token", &cat, None, s.step.timeout()).await.map(Some)
        }
        .await;
        session.close().await;
        let token = match ran.map_err(|e| host_err(&s.host, &addr, e))? {
            None => None,
            Some(out) if out.stdout.trim().is_empty() => {
                return Err(PhaseError::retryable(format!("host {}: k3s wrote an empty token", s.host.name)));
            }
            Some(out) => {
                Some(ctx.rt.sealer.seal(&format!("join-token/{}", ctx.cluster.id), out.stdout.trim().as_bytes()))
            }
        };
        let key = s.key();
        checkpoint(&self.store, ctx, |r: &mut BootstrapRecord| {
            r.steps_done.insert(key.clone());
            if let Some(t) = &token {
                r.join_token = Some(t.clone());
            }
        })
        .await?;
        Ok(())
    }

    pub(super) async fn run_wave(
        &self,
        ctx: &PhaseCtx<'_>,
        run: &Loaded,
        wave: Vec<HostStep>,
        done: &AtomicU32,
        total: u32,
    ) -> Result<(), PhaseError> {
        crate::run_wave(&self.store, ctx, wave, done, total, self.settings.parallel, |s| async move {
            self.run_step(ctx, run, &s).await
        })
        .await
    }

    /// etcd answers healthy over TLS with every member, checked from the first datastore.
    pub(super) async fn check_etcd(&self, ctx: &PhaseCtx<'_>, run: &Loaded) -> Result<(), PhaseError> {
        let ds = hosts_of(&run.infra, Role::Datastore);
        let eps = etcd_endpoints(&run.infra);
        let first = ds.first().ok_or_else(|| PhaseError::permanent("no datastore hosts".into()))?;
        let health = scripts::etcd_health(&eps, ds.len(), ETCD_HEALTH_SECS);
        self.exec(ctx, run, first, "etcd-health", &health, Step::Etcd.timeout()).await?;
        Ok(())
    }

    /// The admin kubeconfig from the first control plane, pointed at the load balancer's public
    /// address under ksctl's context name, sealed in state.
    pub(super) async fn fetch_kubeconfig(&self, ctx: &PhaseCtx<'_>, run: &Loaded) -> Result<(), PhaseError> {
        let cp0 = first_host(&run.infra, Role::ControlPlane)?;
        let lb = first_host(&run.infra, Role::LoadBalancer)?;
        let path = match run.distro {
            Distro::K3s => scripts::K3S_KUBECONFIG,
            Distro::Kubeadm => kubeadm::ADMIN_KUBECONFIG,
        };
        let raw = self.exec(ctx, run, cp0, "read kubeconfig", &format!("cat {path}"), HOST_COMMAND_TIMEOUT).await?;
        let server = format!("https://{}:6443", lb.public_ip);
        // Only the server's CA and the admin's certificate, as data, survive: nothing the host
        // wrote can make the k8s-controller or a user's kubectl run or read anything.
        let kc = ksctl_core::kubeconfig::adopt(&raw, &context_name(ctx.cluster), Some(&server)).map_err(|e| {
            let text = format!("host {}: {path}: {e}", cp0.name);
            if e.starts_with("not a kubeconfig") { PhaseError::retryable(text) } else { PhaseError::permanent(text) }
        })?;
        let sealed = ctx.rt.sealer.seal(&format!("kubeconfig/{}", ctx.cluster.id), kc.as_bytes());
        checkpoint(&self.store, ctx, |r: &mut BootstrapRecord| r.kubeconfig = Some(sealed.clone())).await?;
        Ok(())
    }
}
