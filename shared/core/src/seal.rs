//! Sealed secrets: SSH keys, CA keys, join tokens and kubeconfigs are encrypted with
//! ChaCha20-Poly1305 before they reach the store. The associated data binds a ciphertext to
//! its purpose, so a sealed value copied into another field does not open.
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};

/// A sealed value as stored: `v1:<base64(nonce || ciphertext)>`.
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
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// `key_b64`: 32 random bytes in base64 (`head -c32 /dev/urandom | base64`).
    pub fn from_base64(key_b64: &str) -> Result<Self, SealError> {
        let key = B64.decode(key_b64.trim()).map_err(|_| SealError::BadKey)?;
        if key.len() != 32 {
            return Err(SealError::BadKey);
        }
        Ok(Self { cipher: ChaCha20Poly1305::new(Key::from_slice(&key)) })
    }

    pub fn seal(&self, purpose: &str, plaintext: &[u8]) -> Sealed {
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = self
            .cipher
            .encrypt(&nonce, Payload { msg: plaintext, aad: purpose.as_bytes() })
            .expect("chacha20poly1305 encryption does not fail for in-memory buffers");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Sealed(format!("v1:{}", B64.encode(out)))
    }

    pub fn open(&self, purpose: &str, sealed: &Sealed) -> Result<Vec<u8>, SealError> {
        let raw = sealed.0.strip_prefix("v1:").ok_or(SealError::Malformed)?;
        let bytes = B64.decode(raw).map_err(|_| SealError::Malformed)?;
        if bytes.len() < 12 {
            return Err(SealError::Malformed);
        }
        let (nonce, ct) = bytes.split_at(12);
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: purpose.as_bytes() })
            .map_err(|_| SealError::Open)
    }

    pub fn open_string(&self, purpose: &str, sealed: &Sealed) -> Result<String, SealError> {
        String::from_utf8(self.open(purpose, sealed)?).map_err(|_| SealError::Malformed)
    }
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
    fn bad_keys_rejected() {
        assert_eq!(Sealer::from_base64("short").unwrap_err(), SealError::BadKey);
    }
}
