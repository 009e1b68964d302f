//! Sealed secrets: SSH keys, CA keys, join tokens and kubeconfigs are encrypted with
//! ChaCha20-Poly1305 before they reach the store. The associated data binds a ciphertext to
//! its purpose, so a sealed value copied into another field does not open.
//!
//! Keys rotate: a sealed value names the key that sealed it (`v2:<key id>:…`, the id a hash
//! of the key); a [`Sealer`] seals with its first key and opens with any of its keys, so a new
//! key goes first while the old ones still open what they sealed, until everything is sealed
//! again under the new one ([`Sealer::reseal`]). `v1:` values (before key ids) open with
//! whichever key does.
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};

/// A sealed value as stored: `v2:<key id>:<base64(nonce || ciphertext)>` (older: `v1:<…>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sealed(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("the seal key must be 32 bytes, base64-encoded")]
    BadKey,
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value does not open with this key (wrong key or tampered data)")]
    Open,
}

#[derive(Clone)]
pub struct Sealer {
    /// (key id, cipher); the first seals.
    keys: Vec<(String, ChaCha20Poly1305)>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// `key_b64`: 32 random bytes in base64 (`head -c32 /dev/urandom | base64`).
    pub fn from_base64(key_b64: &str) -> Result<Self, SealError> {
        Self::from_keys(&[key_b64])
    }

    /// Several keys: the first seals, every one opens.
    pub fn from_keys(keys_b64: &[&str]) -> Result<Self, SealError> {
        let mut keys = Vec::new();
        for k in keys_b64 {
            let key = B64.decode(k.trim()).map_err(|_| SealError::BadKey)?;
            if key.len() != 32 {
                return Err(SealError::BadKey);
            }
            keys.push((key_id(&key), ChaCha20Poly1305::new(Key::from_slice(&key))));
        }
        if keys.is_empty() {
            return Err(SealError::BadKey);
        }
        Ok(Self { keys })
    }

    /// The id of the key that seals.
    pub fn key_id(&self) -> &str {
        &self.keys[0].0
    }

    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Sealed {
        let (id, cipher) = &self.keys[0];
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = cipher
            .encrypt(&nonce, Payload { msg: plaintext, aad: purpose.as_bytes() })
            .expect("chacha20poly1305 encryption does not fail for in-memory buffers");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Sealed(format!("v2:{id}:{}", B64.encode(out)))
    }

    pub fn open(&self, purpose: &str, sealed: &Sealed) -> Result<Vec<u8>, SealError> {
        let (kid, raw) = match sealed.0.strip_prefix("v2:").and_then(|r| r.split_once(':')) {
            Some((kid, raw)) => (Some(kid), raw),
            None => (None, sealed.0.strip_prefix("v1:").ok_or(SealError::Malformed)?),
        };
        let bytes = B64.decode(raw).map_err(|_| SealError::Malformed)?;
        if bytes.len() < 12 {
            return Err(SealError::Malformed);
        }
        let (nonce, ct) = bytes.split_at(12);
        let payload = || Payload { msg: ct, aad: purpose.as_bytes() };
        self.keys
            .iter()
            .filter(|(id, _)| kid.is_none_or(|k| k == id))
            .find_map(|(_, cipher)| cipher.decrypt(Nonce::from_slice(nonce), payload()).ok())
            .ok_or(SealError::Open)
    }

    /// `sealed` under this sealer's first key: `None` when it already is.
    pub fn reseal(&self, purpose: &str, sealed: &Sealed) -> Result<Option<Sealed>, SealError> {
        if sealed.key_id() == Some(self.key_id()) {
            return Ok(None);
        }
        Ok(Some(self.seal(purpose, &self.open(purpose, sealed)?)))
    }

    pub fn open_string(&self, purpose: &str, sealed: &Sealed) -> Result<String, SealError> {
        String::from_utf8(self.open(purpose, sealed)?).map_err(|_| SealError::Malformed)
    }
}

impl Sealed {
    /// The id of the key that sealed it (`None` for `v1:` values).
    pub fn key_id(&self) -> Option<&str> {
        self.0.strip_prefix("v2:").and_then(|r| r.split_once(':')).map(|(k, _)| k)
    }
}

/// A key's id: the first 8 bytes of its SHA-256, in hex (names the key, reveals nothing).
fn key_id(key: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(key)[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// `n` bytes from the operating system's CSPRNG, for tokens and keys.
pub fn random_bytes(n: usize) -> Vec<u8> {
    use chacha20poly1305::aead::rand_core::RngCore;
    let mut b = vec![0u8; n];
    OsRng.fill_bytes(&mut b);
    b
}

/// A fresh random key in the base64 form [`Sealer::from_base64`] takes.
pub fn generate_key() -> String {
    B64.encode(ChaCha20Poly1305::generate_key(&mut OsRng))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_purpose_binding() {
        let s = Sealer::from_base64(&generate_key()).unwrap();
        let sealed = s.seal("kubeconfig/demo", b"secret");
        assert!(!sealed.0.contains("secret"));
        assert_eq!(s.open("kubeconfig/demo", &sealed).unwrap(), b"secret");
        assert_eq!(s.open("ssh/demo", &sealed), Err(SealError::Open));
        let other = Sealer::from_base64(&generate_key()).unwrap();
        assert_eq!(other.open("kubeconfig/demo", &sealed), Err(SealError::Open));
    }

    #[test]
    fn keys_rotate_old_values_still_open_and_reseal_moves_them() {
        let (old, new) = (generate_key(), generate_key());
        let before = Sealer::from_base64(&old).unwrap();
        let sealed = before.seal("ssh/demo", b"key");
        assert_eq!(sealed.key_id(), Some(before.key_id()));
        let both = Sealer::from_keys(&[&new, &old]).unwrap();
        assert_ne!(both.key_id(), before.key_id());
        assert_eq!(both.open("ssh/demo", &sealed).unwrap(), b"key");
        let moved = both.reseal("ssh/demo", &sealed).unwrap().unwrap();
        assert_eq!(moved.key_id(), Some(both.key_id()));
        assert!(both.reseal("ssh/demo", &moved).unwrap().is_none(), "already under the new key");
        let after = Sealer::from_base64(&new).unwrap();
        assert_eq!(after.open("ssh/demo", &moved).unwrap(), b"key");
        assert_eq!(after.open("ssh/demo", &sealed), Err(SealError::Open), "the old key is gone");
        // Values from before key ids open with whichever key made them.
        let legacy = Sealed(format!("v1:{}", sealed.0.rsplit(':').next().unwrap()));
        assert_eq!(both.open("ssh/demo", &legacy).unwrap(), b"key");
        assert!(both.reseal("ssh/demo", &legacy).unwrap().is_some());
    }

    #[test]
    fn bad_keys_rejected() {
        assert_eq!(Sealer::from_base64("short").unwrap_err(), SealError::BadKey);
    }
}
