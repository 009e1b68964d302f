//! Who may do what on the bus: NATS in operator mode (decentralized JWT authentication).
//!
//! One operator signs two accounts: `SYS` (the servers' system account, used only to push
//! account updates) and `KSCTL` (everything ksctl does). Every user of `KSCTL` holds a JWT that
//! the account's signing key issued with the permissions of its [`Role`]: the servers check the
//! signature chain and enforce the permissions, so no server configuration lists users and a
//! credential can be minted, expire and be revoked without touching the servers' files.
//! The [`Authority`] (operator and account signing keys, the system user) is what mints and
//! revokes; the k8s-controller holds it to give each cluster's agent its own credential.
pub mod jwt;

use ksctl_core::ClusterId;
use ksctl_core::messages::health_subject;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a credential is for; its permissions follow from it alone ([`Role::permissions`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The four services: every subject, the streams and the KV buckets.
    Service,
    /// A person or a tool of theirs: publish requests, ask queries, read events, and receive
    /// replies on the credential's own inbox prefix ([`inbox_prefix`]) only.
    Cli,
    /// One cluster's agent: publish that cluster's heartbeat subject; nothing else, no subscribe.
    Agent(ClusterId),
}

/// Publish and subscribe rules of one credential.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish: jwt::Permission,
    pub subscribe: jwt::Permission,
}

/// The inbox prefix of a CLI credential: replies to it (a `switch`'s kubeconfig, say) reach no
/// other user.
pub fn inbox_prefix(user_public_key: &str) -> String {
    format!("_INBOX.{user_public_key}")
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Cli => "cli",
            Self::Agent(_) => "agent",
        }
    }

    pub fn permissions(&self, user_public_key: &str) -> Permissions {
        let allow = |s: &[String]| jwt::Permission { allow: s.to_vec(), deny: vec![] };
        match self {
            // No rules: everything in the account.
            Self::Service => Permissions::default(),
            Self::Cli => Permissions {
                publish: allow(&["ksctl.request.>".into(), "ksctl.query.>".into()]),
                subscribe: allow(&["ksctl.events.>".into(), format!("{}.>", inbox_prefix(user_public_key))]),
            },
            Self::Agent(cluster) => Permissions {
                publish: allow(&[health_subject(cluster.as_str())]),
                subscribe: jwt::Permission { allow: vec![], deny: vec![">".into()] },
            },
        }
    }
}

/// A user JWT and the seed that proves it is yours: the `.creds` file NATS tools read.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Creds {
    pub jwt: String,
    pub seed: String,
}

impl std::fmt::Debug for Creds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Creds").field("jwt", &self.jwt).field("seed", &"<redacted>").finish()
    }
}

impl Creds {
    /// The standard `.creds` text (what `nsc` writes and async-nats reads).
    pub fn file_text(&self) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\
             NKEYs are sensitive and should be treated as secrets.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n",
            self.jwt, self.seed
        )
    }

    /// Reads `.creds` text: the first armoured block is the JWT, the second the seed.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        let blocks: Vec<&str> = text
            .split("-----")
            .map(str::trim)
            .filter(|s| !s.is_empty() && !s.contains(' ') && !s.starts_with('-'))
            .filter(|s| !s.chars().all(|c| c == '-' || c == '*'))
            .collect();
        match blocks.as_slice() {
            [jwt, seed, ..] => {
                KeyPair::from_seed(seed).map_err(|e| AuthError::Creds(format!("bad seed: {e}")))?;
                Ok(Self { jwt: jwt.to_string(), seed: seed.to_string() })
            }
            _ => Err(AuthError::Creds("expected a JWT block and a seed block".into())),
        }
    }

    pub fn public_key(&self) -> Result<String, AuthError> {
        Ok(KeyPair::from_seed(&self.seed).map_err(|e| AuthError::Creds(e.to_string()))?.public_key())
    }

    /// The user claims (signature checked against the issuer the JWT names).
    pub fn claims(&self) -> Result<jwt::Claims<jwt::User>, AuthError> {
        jwt::decode(&self.jwt).map_err(AuthError::Creds)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("NATS credentials: {0}")]
    Creds(String),
    #[error("NATS authority: {0}")]
    Authority(String),
}

/// The keys that mint and revoke credentials. A secret: whoever holds it can act as anyone on
/// the bus. The operator's identity key is not in it (kept offline by whoever ran `init`).
#[derive(Clone, Serialize, Deserialize)]
pub struct Authority {
    pub operator_jwt: String,
    pub operator_signing_seed: String,
    pub account: String,
    pub account_signing_seed: String,
    pub system_account: String,
    pub system_account_jwt: String,
    /// A user of `SYS`: sends account updates ([`crate::auth::push_account`]).
    pub system_user: Creds,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority").field("account", &self.account).finish_non_exhaustive()
    }
}

/// Everything `init` makes: the [`Authority`], the keys to keep offline, and the first two
/// credentials (the services', an administrator's CLI).
pub struct Init {
    pub authority: Authority,
    pub operator_seed: String,
    pub account_seed: String,
    pub services: Creds,
    pub admin: Creds,
}

fn seed(k: &KeyPair) -> String {
    k.seed().expect("a generated key pair has its seed")
}

fn key(seed: &str) -> Result<KeyPair, AuthError> {
    KeyPair::from_seed(seed).map_err(|e| AuthError::Authority(format!("bad seed: {e}")))
}

/// Unix seconds, the unit of JWT times (from the project's one clock, [`ksctl_core::now_ms`]).
pub fn now_secs() -> u64 {
    ksctl_core::now_ms() / 1000
}

/// The account name in JWTs and server logs.
pub const ACCOUNT_NAME: &str = "KSCTL";

/// Makes a new operator with its two accounts. `now`: unix seconds.
pub fn init(now: u64) -> Result<Init, AuthError> {
    let operator = KeyPair::new_operator();
    let operator_signing = KeyPair::new_operator();
    let system = KeyPair::new_account();
    let account = KeyPair::new_account();
    let account_signing = KeyPair::new_account();
    let op = jwt::Operator {
        kind: "operator".into(),
        version: 2,
        signing_keys: vec![operator_signing.public_key()],
        system_account: system.public_key(),
    };
    let operator_jwt = jwt::encode(jwt::claims("ksctl", operator.public_key(), now, None, op), &operator)
        .map_err(AuthError::Authority)?;
    let sys_claims = jwt::Account {
        kind: "account".into(),
        version: 2,
        limits: jwt::AccountLimits::unlimited(false),
        signing_keys: vec![],
        revocations: BTreeMap::new(),
    };
    let system_account_jwt =
        jwt::encode(jwt::claims("SYS", system.public_key(), now, None, sys_claims), &operator_signing)
            .map_err(AuthError::Authority)?;
    let system_user = user_creds(&system, None, "sys", None, now, None)?;
    let authority = Authority {
        operator_jwt,
        operator_signing_seed: seed(&operator_signing),
        account: account.public_key(),
        account_signing_seed: seed(&account_signing),
        system_account: system.public_key(),
        system_account_jwt,
        system_user,
    };
    let services = authority.mint(&Role::Service, "services", now, None)?;
    let admin = authority.mint(&Role::Cli, "admin", now, None)?;
    Ok(Init { authority, operator_seed: seed(&operator), account_seed: seed(&account), services, admin })
}

/// A new user key and its JWT, issued by `issuer`; `role` decides the permissions (none: all).
fn user_creds(
    issuer: &KeyPair,
    issuer_account: Option<String>,
    name: &str,
    role: Option<&Role>,
    now: u64,
    expires_at: Option<u64>,
) -> Result<Creds, AuthError> {
    let user = KeyPair::new_user();
    // A CLI's permissions name its own key (its inbox): make the key first.
    let perms = role.map(|r| r.permissions(&user.public_key())).unwrap_or_default();
    let claims = jwt::User {
        kind: "user".into(),
        version: 2,
        publish: perms.publish,
        subscribe: perms.subscribe,
        subs: -1,
        data: -1,
        payload: -1,
        issuer_account,
    };
    let token = jwt::encode(jwt::claims(name, user.public_key(), now, expires_at, claims), issuer)
        .map_err(AuthError::Authority)?;
    Ok(Creds { jwt: token, seed: seed(&user) })
}

impl Authority {
    pub fn from_json(text: &str) -> Result<Self, AuthError> {
        let a: Self =
            serde_json::from_str(text).map_err(|e| AuthError::Authority(format!("not an authority file: {e}")))?;
        key(&a.operator_signing_seed)?;
        key(&a.account_signing_seed)?;
        Ok(a)
    }

    /// A new credential of `role` in the `KSCTL` account, valid until `expires_at` (unix
    /// seconds; `None`: until revoked).
    pub fn mint(&self, role: &Role, name: &str, now: u64, expires_at: Option<u64>) -> Result<Creds, AuthError> {
        user_creds(&key(&self.account_signing_seed)?, Some(self.account.clone()), name, Some(role), now, expires_at)
    }

    /// The `KSCTL` account's JWT with `revocations` (user public key → unix seconds), issued at
    /// `now`; servers keep the newest they are given.
    pub fn account_jwt(&self, revocations: &BTreeMap<String, u64>, now: u64) -> Result<String, AuthError> {
        let signer = key(&self.operator_signing_seed)?;
        let account_signing = key(&self.account_signing_seed)?;
        let claims = jwt::Account {
            kind: "account".into(),
            version: 2,
            limits: jwt::AccountLimits::unlimited(true),
            signing_keys: vec![account_signing.public_key()],
            revocations: revocations.clone(),
        };
        jwt::encode(jwt::claims(ACCOUNT_NAME, self.account.clone(), now, None, claims), &signer)
            .map_err(AuthError::Authority)
    }

    /// The servers' `nats.conf` part that puts them in operator mode: the operator, the system
    /// account, a resolver that keeps account JWTs in `resolver_dir` (and takes updates over the
    /// bus), preloaded with both accounts.
    pub fn server_config(&self, resolver_dir: &str, now: u64) -> Result<String, AuthError> {
        Ok(format!(
            "# Operator mode (ksctl auth init). Account updates arrive over the bus and are kept in\n\
             # the resolver directory; the preloaded JWTs only seed a fresh one.\n\
             operator: {}\nsystem_account: {}\n\
             resolver: {{ type: full, dir: \"{}\", allow_delete: false, interval: \"2m\" }}\n\
             resolver_preload: {{\n  {}: {}\n  {}: {}\n}}\n",
            self.operator_jwt,
            self.system_account,
            resolver_dir.replace(['"', '\\'], ""),
            self.system_account,
            self.system_account_jwt,
            self.account,
            self.account_jwt(&BTreeMap::new(), now)?,
        ))
    }
}

/// Sends the `KSCTL` account's JWT to the servers as the system user: they store it and apply
/// its revocations (closing revoked users' connections) at once.
pub async fn push_account(
    nats_url: &str,
    base: crate::NatsAuth,
    authority: &Authority,
    account_jwt: String,
) -> Result<(), AuthError> {
    let system = crate::NatsAuth { creds: Some(authority.system_user.file_text()), creds_file: None, ..base };
    let opts = system.options().map_err(|e| AuthError::Creds(e.to_string()))?;
    let client = opts
        .connection_timeout(std::time::Duration::from_secs(5))
        .connect(nats_url)
        .await
        .map_err(|e| AuthError::Authority(format!("connecting as the system user: {e}")))?;
    let subject = format!("$SYS.REQ.ACCOUNT.{}.CLAIMS.UPDATE", authority.account);
    let reply = tokio::time::timeout(std::time::Duration::from_secs(10), client.request(subject, account_jwt.into()))
        .await
        .map_err(|_| AuthError::Authority("no server answered the account update".into()))?
        .map_err(|e| AuthError::Authority(format!("account update: {e}")))?;
    // {"data":{"code":200,...}} or {"error":{"code":...,"description":...}}
    let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
    if let Some(err) = v.get("error") {
        return Err(AuthError::Authority(format!("the servers refused the account update: {err}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_grant_what_the_table_says() {
        let id = ClusterId::new("alpha").unwrap();
        let agent = Role::Agent(id).permissions("UX");
        assert_eq!(agent.publish.allow, vec!["ksctl.health.alpha".to_string()]);
        assert_eq!(agent.subscribe.deny, vec![">".to_string()]);
        assert!(agent.subscribe.allow.is_empty());
        let cli = Role::Cli.permissions("UX");
        assert_eq!(cli.publish.allow, vec!["ksctl.request.>".to_string(), "ksctl.query.>".to_string()]);
        assert!(cli.subscribe.allow.contains(&"_INBOX.UX.>".to_string()));
        assert!(!cli.subscribe.allow.iter().any(|s| s == "_INBOX.>" || s == ">"));
        assert_eq!(Role::Service.permissions("UX"), Permissions::default());
    }

    #[test]
    fn init_chains_every_signature_to_the_operator() {
        let init = init(1_000).unwrap();
        let a = &init.authority;
        let op: jwt::Claims<jwt::Operator> = jwt::decode(&a.operator_jwt).unwrap();
        let account: jwt::Claims<jwt::Account> = jwt::decode(&a.account_jwt(&BTreeMap::new(), 1_000).unwrap()).unwrap();
        assert!(op.nats.signing_keys.contains(&account.iss));
        assert_eq!(op.nats.system_account, a.system_account);
        let user = init.admin.claims().unwrap();
        assert!(account.nats.signing_keys.contains(&user.iss));
        assert_eq!(user.nats.issuer_account.as_deref(), Some(a.account.as_str()));
        assert_eq!(user.sub, init.admin.public_key().unwrap());
        // The authority survives its file format.
        let back = Authority::from_json(&serde_json::to_string(a).unwrap()).unwrap();
        assert_eq!(back.account, a.account);
        assert!(!format!("{back:?}").contains(&a.account_signing_seed));
    }

    #[test]
    fn creds_files_round_trip() {
        let a = init(1).unwrap();
        let text = a.services.file_text();
        assert_eq!(Creds::parse(&text).unwrap(), a.services);
        assert!(Creds::parse("nothing here").is_err());
        assert!(!format!("{:?}", a.services).contains(&a.services.seed));
    }
}
