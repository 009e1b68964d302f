//! Each cluster's own NATS credential (README, "Security model"): minted when the agent is
//! installed, rotated before it expires, revoked when the cluster is deleted. A credential may
//! publish its cluster's heartbeat subject and nothing else ([`Role::Agent`]).
//!
//! Revocation is NATS's own: the revoked users go into the `KSCTL` account's JWT, which is
//! re-signed and pushed to the servers; they refuse those users and close their connections.
use ksctl_bus::NatsAuth;
use ksctl_bus::auth::{self, Authority, Creds, Role};
use ksctl_core::ClusterId;
use ksctl_core::keys;
use ksctl_core::records::{AgentCredential, K8sRecord, Revocations, Revoked};
use ksctl_runtime::{PhaseError, update_record};
use ksctl_store::DynStore;
use std::time::Duration;

pub struct AgentCredentials {
    authority: Authority,
    ttl: Duration,
    nats_url: String,
    /// How this controller reaches NATS (TLS settings), for pushing account updates.
    nats_auth: NatsAuth,
    store: DynStore,
}

pub use ksctl_bus::auth::now_secs as now;

fn authority_err(e: auth::AuthError) -> PhaseError {
    PhaseError::caused_by(true, e)
}

impl AgentCredentials {
    pub fn new(authority: Authority, ttl: Duration, nats_url: String, nats_auth: NatsAuth, store: DynStore) -> Self {
        Self { authority, ttl, nats_url, nats_auth, store }
    }

    /// A new credential for `cluster`'s agent and the record that names it.
    pub fn mint(&self, cluster: &ClusterId) -> Result<(Creds, AgentCredential), PhaseError> {
        let now = now();
        let expires_at = now + self.ttl.as_secs();
        let creds = self
            .authority
            .mint(&Role::Agent(cluster.clone()), &format!("agent-{cluster}"), now, Some(expires_at))
            .map_err(|e| PhaseError::caused_by(false, e))?;
        let user = creds.public_key().map_err(|e| PhaseError::caused_by(false, e))?;
        Ok((creds, AgentCredential { user, issued_at: now, expires_at }))
    }

    /// Records `new` as the credential the cluster's agent holds (it is in the cluster's Secret
    /// now) and revokes the one it replaces.
    pub async fn record(&self, cluster: &ClusterId, new: AgentCredential) -> Result<(), PhaseError> {
        // The closure may run again on a write conflict: the last run's value is the one written.
        let previous = std::sync::Mutex::new(None);
        update_record(&self.store, &keys::k8s(cluster), |r: &mut K8sRecord| {
            *previous.lock().expect("not poisoned") = r.agent_credential.replace(new.clone());
        })
        .await?;
        match previous.into_inner().expect("not poisoned") {
            Some(old) if old.user != new.user => self.revoke(&[old]).await,
            _ => Ok(()),
        }
    }

    /// Revokes the credential the cluster's agent holds, if any, and forgets it.
    pub async fn revoke_cluster(&self, cluster: &ClusterId) -> Result<(), PhaseError> {
        let record: K8sRecord = ksctl_runtime::read_record(&self.store, &keys::k8s(cluster)).await?;
        let Some(cred) = record.agent_credential else { return Ok(()) };
        self.revoke(std::slice::from_ref(&cred)).await?;
        update_record(&self.store, &keys::k8s(cluster), |r: &mut K8sRecord| r.agent_credential = None).await?;
        Ok(())
    }

    async fn revoke(&self, creds: &[AgentCredential]) -> Result<(), PhaseError> {
        let now = now();
        ksctl_store::modify(self.store.as_ref(), keys::NATS_REVOCATIONS, |cur: Option<Revocations>| {
            let mut r = cur.unwrap_or_default();
            // Expired users need no revoking: the servers refuse them anyway.
            r.users.retain(|_, v| v.expires_at > now);
            for c in creds {
                // A user is revoked only if revoked at or after its JWT was issued (by a replica
                // whose clock may run ahead of this one's).
                r.users.insert(c.user.clone(), Revoked { at: now.max(c.issued_at), expires_at: c.expires_at });
            }
            r.version = now.max(r.version + 1);
            Ok::<_, std::convert::Infallible>(Some(r))
        })
        .await?
        .expect("infallible");
        self.push().await
    }

    /// Gives the servers the account JWT with every current revocation (also at start-up, so a
    /// server that lost its resolver directory learns them again).
    pub async fn push(&self) -> Result<(), PhaseError> {
        let now = now();
        let current: Revocations = ksctl_runtime::read_record(&self.store, keys::NATS_REVOCATIONS).await?;
        let users = current.users.into_iter().filter(|(_, v)| v.expires_at > now).map(|(k, v)| (k, v.at)).collect();
        // Issued at the record's version: a push of an older record never replaces a newer one.
        let jwt = self.authority.account_jwt(&users, current.version.max(1)).map_err(authority_err)?;
        auth::push_account(&self.nats_url, self.nats_auth.clone(), &self.authority, jwt).await.map_err(authority_err)
    }
}

/// Whether a credential should be replaced now: less than a third of its life is left.
pub fn rotation_due(cred: &AgentCredential, now: u64) -> bool {
    let life = cred.expires_at.saturating_sub(cred.issued_at);
    cred.expires_at.saturating_sub(now) < life / 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_is_due_in_the_last_third() {
        let cred = AgentCredential { user: "U".into(), issued_at: 1000, expires_at: 1300 };
        assert!(!rotation_due(&cred, 1000));
        assert!(!rotation_due(&cred, 1200));
        assert!(rotation_due(&cred, 1201));
        assert!(rotation_due(&cred, 5000));
    }
}
