//! NATS JWTs (claims version 2): the operator's, the accounts' and the users', signed with
//! ed25519 nkeys. Written here because the `nats-jwt` crate has no JetStream limits, revocations
//! or operator claims, all of which operator mode needs.
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512_256};
use std::collections::BTreeMap;

const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// The claims common to every NATS JWT; `nats` holds the kind's own.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims<N> {
    pub jti: String,
    pub iat: u64,
    pub iss: String,
    pub name: String,
    pub sub: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub exp: Option<u64>,
    pub nats: N,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Operator {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub signing_keys: Vec<String>,
    pub system_account: String,
}

/// `-1` is "no limit" throughout.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountLimits {
    pub subs: i64,
    pub data: i64,
    pub payload: i64,
    pub imports: i64,
    pub exports: i64,
    pub wildcards: bool,
    pub conn: i64,
    pub leaf: i64,
    /// JetStream is on for an account whose storage limits are not zero.
    pub mem_storage: i64,
    pub disk_storage: i64,
    pub streams: i64,
    pub consumer: i64,
}

impl AccountLimits {
    pub fn unlimited(jetstream: bool) -> Self {
        let js = if jetstream { -1 } else { 0 };
        Self {
            subs: -1,
            data: -1,
            payload: -1,
            imports: -1,
            exports: -1,
            wildcards: true,
            conn: -1,
            leaf: -1,
            mem_storage: js,
            disk_storage: js,
            streams: js,
            consumer: js,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
    pub limits: AccountLimits,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub signing_keys: Vec<String>,
    /// User public key → unix seconds: that user's JWTs issued at or before it are refused, and
    /// its live connections are closed when the servers receive this account JWT.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub revocations: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub allow: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub deny: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u8,
    #[serde(rename = "pub")]
    pub publish: Permission,
    #[serde(rename = "sub")]
    pub subscribe: Permission,
    pub subs: i64,
    pub data: i64,
    pub payload: i64,
    /// The account a signing key issued this user for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub issuer_account: Option<String>,
}

/// Signs `claims` with `key` (its public key becomes `iss`); `jti` is the hash of the claims.
pub fn encode<N: Serialize>(mut claims: Claims<N>, key: &KeyPair) -> Result<String, String> {
    claims.iss = key.public_key();
    claims.jti = String::new();
    let body = serde_json::to_vec(&claims).map_err(|e| e.to_string())?;
    claims.jti = data_encoding::BASE32_NOPAD.encode(&Sha512_256::digest(&body));
    let body = serde_json::to_vec(&claims).map_err(|e| e.to_string())?;
    let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(HEADER), URL_SAFE_NO_PAD.encode(body));
    let sig = key.sign(input.as_bytes()).map_err(|e| e.to_string())?;
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}

/// The claims of `token` after checking its signature against its own `iss` (which the caller
/// then checks is a key it trusts).
pub fn decode<N: for<'de> Deserialize<'de>>(token: &str) -> Result<Claims<N>, String> {
    let mut parts = token.split('.');
    let (Some(header), Some(body), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err("not a JWT (three dot-separated parts)".into());
    };
    let bytes = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|e| format!("JWT part is not base64url: {e}"));
    let claims: Claims<N> = serde_json::from_slice(&bytes(body)?).map_err(|e| format!("JWT claims: {e}"))?;
    let issuer = KeyPair::from_public_key(&claims.iss).map_err(|e| format!("JWT issuer: {e}"))?;
    issuer
        .verify(format!("{header}.{body}").as_bytes(), &bytes(sig)?)
        .map_err(|_| "JWT signature does not match its issuer".to_string())?;
    Ok(claims)
}

pub fn claims<N>(name: &str, subject: String, iat: u64, exp: Option<u64>, nats: N) -> Claims<N> {
    Claims { jti: String::new(), iat, iss: String::new(), name: name.into(), sub: subject, exp, nats }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_claims_decode_and_tampering_is_detected() {
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let nats = User {
            kind: "user".into(),
            version: 2,
            publish: Permission { allow: vec!["a.b".into()], deny: vec![] },
            subscribe: Permission { allow: vec![], deny: vec![">".into()] },
            subs: -1,
            data: -1,
            payload: -1,
            issuer_account: None,
        };
        let token = encode(claims("u", user.public_key(), 10, Some(20), nats), &account).unwrap();
        let back: Claims<User> = decode(&token).unwrap();
        assert_eq!(back.iss, account.public_key());
        assert_eq!(back.sub, user.public_key());
        assert_eq!(back.exp, Some(20));
        assert_eq!(back.nats.publish.allow, vec!["a.b".to_string()]);
        assert!(!back.jti.is_empty());
        // Another body under the same signature is refused.
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD
            .encode(String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap().replace("a.b", "a.>"));
        parts[1] = &forged;
        assert!(decode::<User>(&parts.join(".")).unwrap_err().contains("signature"));
        assert!(decode::<User>("x.y").is_err());
    }
}
