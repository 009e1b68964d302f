//! The cluster's secrets as the SSH bootstrap makes and keeps them: the etcd PKI, kubeadm's CA,
//! bootstrap token and certificate key, and the join token. Each is made once, sealed into the
//! bootstrap record (the first writer wins), and read back from there.
use super::*;

impl SshHosts {
    /// The etcd PKI: made once and sealed (the first writer wins, so two racing runs use one),
    /// read once per run.
    pub(super) async fn etcd_pki<'r>(&self, ctx: &PhaseCtx<'_>, run: &'r Loaded) -> Result<&'r EtcdPki, PhaseError> {
        run.pki
            .get_or_try_init(|| async {
                let id = &ctx.cluster.id;
                let purpose = format!("etcd-pki/{id}");
                let sealed = match phase_record::<BootstrapRecord>(&self.store, ctx).await?.etcd_pki {
                    Some(sealed) => sealed,
                    None => {
                        let ds = etcd_members(&run.infra);
                        let made = pki::etcd(id.as_str(), &ds).map_err(|e| PhaseError::caused_by(false, e))?;
                        let bundle = ctx.rt.sealer.seal(&purpose, &serde_json::to_vec(&made).expect("serializable"));
                        let ca_cert = ctx.rt.sealer.seal(&format!("ca-cert/{id}"), made.ca.cert.as_bytes());
                        let ca_key = ctx.rt.sealer.seal(&format!("ca-key/{id}"), made.ca.key.as_bytes());
                        let written = checkpoint(&self.store, ctx, |r: &mut BootstrapRecord| {
                            if r.etcd_pki.is_none() {
                                r.etcd_pki = Some(bundle.clone());
                                r.ca_cert = Some(ca_cert.clone());
                                r.ca_key = Some(ca_key.clone());
                            }
                        })
                        .await?;
                        written.etcd_pki.expect("written above")
                    }
                };
                let raw = ctx.rt.sealer.open(&purpose, &sealed)?;
                serde_json::from_slice(&raw)
                    .map_err(|e| PhaseError::permanent(format!("stored etcd PKI unreadable: {e}")))
            })
            .await
    }

    pub(super) async fn kubeadm_secrets(&self, ctx: &PhaseCtx<'_>) -> Result<KubeadmSecrets, PhaseError> {
        let purpose = format!("kubeadm/{}", ctx.cluster.id);
        let sealed = match phase_record::<BootstrapRecord>(&self.store, ctx).await?.kubeadm {
            Some(sealed) => sealed,
            None => {
                let (ca, _) = pki::new_ca("kubernetes").map_err(|e| PhaseError::caused_by(false, e))?;
                let s = KubeadmSecrets {
                    ca,
                    token: kubeadm::new_token(),
                    token_expires_ms: ksctl_core::now_ms() + kubeadm::TOKEN_TTL_SECS * 1000,
                    certificate_key: kubeadm::new_certificate_key(),
                    certs_uploaded_ms: ksctl_core::now_ms(),
                };
                self.store_kubeadm(ctx, &s, false).await?.kubeadm.expect("written")
            }
        };
        let raw = ctx.rt.sealer.open(&purpose, &sealed)?;
        serde_json::from_slice(&raw)
            .map_err(|e| PhaseError::permanent(format!("stored kubeadm secrets unreadable: {e}")))
    }

    /// Records `s` (and its token as the join token); `replace: false` keeps what is there.
    pub(super) async fn store_kubeadm(
        &self,
        ctx: &PhaseCtx<'_>,
        s: &KubeadmSecrets,
        replace: bool,
    ) -> Result<BootstrapRecord, PhaseError> {
        let sealed = ctx.rt.sealer.seal(&format!("kubeadm/{}", ctx.cluster.id), &serde_json::to_vec(s).expect("json"));
        let token = ctx.rt.sealer.seal(&format!("join-token/{}", ctx.cluster.id), s.token.as_bytes());
        checkpoint(&self.store, ctx, |r: &mut BootstrapRecord| {
            if replace || r.kubeadm.is_none() {
                r.kubeadm = Some(sealed.clone());
                r.join_token = Some(token.clone());
            }
        })
        .await
    }

    /// kubeadm joins after the first hours need a fresh token and re-uploaded certificates; made
    /// here, registered on the first control plane, then recorded.
    pub(super) async fn refresh_kubeadm(&self, ctx: &PhaseCtx<'_>, run: &Loaded) -> Result<KubeadmSecrets, PhaseError> {
        let mut s = self.kubeadm_secrets(ctx).await?;
        let now = ksctl_core::now_ms();
        let certs_stale = now + 10 * 60 * 1000 >= s.certs_uploaded_ms + kubeadm::UPLOADED_CERTS_TTL_SECS * 1000;
        if !kubeadm::token_needs_renewal(s.token_expires_ms, now) && !certs_stale {
            return Ok(s);
        }
        if kubeadm::token_needs_renewal(s.token_expires_ms, now) {
            s.token = kubeadm::new_token();
            s.token_expires_ms = now + kubeadm::TOKEN_TTL_SECS * 1000;
        }
        let cp0 = first_host(&run.infra, Role::ControlPlane)?;
        let refresh = kubeadm::refresh(&run.version, &s.token);
        self.exec(ctx, run, cp0, "kubeadm token refresh", &refresh, Step::KubeadmInit.timeout()).await?;
        s.certs_uploaded_ms = now;
        self.store_kubeadm(ctx, &s, true).await?;
        Ok(s)
    }

    pub(super) async fn token(&self, ctx: &PhaseCtx<'_>) -> Result<String, PhaseError> {
        let rec = phase_record::<BootstrapRecord>(&self.store, ctx).await?;
        let sealed = rec.join_token.ok_or_else(|| {
            PhaseError::permanent("no join token recorded; did the first control plane finish?".into())
        })?;
        Ok(ctx.rt.sealer.open_string(&format!("join-token/{}", ctx.cluster.id), &sealed)?.trim().to_string())
    }
}
