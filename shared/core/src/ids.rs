//! Typed ids. A cluster is identified by its name, which is unique within one control plane and
//! restricted to characters that are safe in NATS subjects and store keys.
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClusterId(String);

impl ClusterId {
    /// Builds an id from a name that already passed [`validate_name`].
    pub fn new(name: &str) -> Result<Self, String> {
        validate_name(name)?;
        Ok(Self(name.to_string()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// ksctl's rule: `^[a-z]([-a-z0-9]*[a-z0-9])?$`, at most 50 characters.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 50 {
        return Err(format!("is {} characters long; at most 50 are allowed", name.len()));
    }
    let b = name.as_bytes();
    let ok_mid = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-';
    if !b[0].is_ascii_lowercase() {
        return Err("must start with a lowercase letter (pattern ^[a-z]([-a-z0-9]*[a-z0-9])?$)".into());
    }
    if !b.iter().all(|&c| ok_mid(c)) {
        return Err("may contain only lowercase letters, digits and '-' (pattern ^[a-z]([-a-z0-9]*[a-z0-9])?$)".into());
    }
    if b[b.len() - 1] == b'-' {
        return Err("must not end with '-' (pattern ^[a-z]([-a-z0-9]*[a-z0-9])?$)".into());
    }
    Ok(())
}

/// One operation (create, delete, scale) on one cluster; every message id derives from it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OperationId(String);

impl OperationId {
    /// Derived from the caller's request id, so a re-published request maps to the same operation.
    pub fn from_request(request_id: &str) -> Self {
        Self(format!("op-{request_id}"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Request ids travel in `Nats-Msg-Id` headers and operation ids: keep them short and plain.
pub fn validate_request_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_') {
        return Err("may contain only letters, digits, '-' and '_'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_ksctl_rule() {
        for ok in ["a", "demo", "a-1", "x9", &"a".repeat(50)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "1abc", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(51)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn request_ids_are_plain() {
        assert!(validate_request_id("abc-DEF_1").is_ok());
        assert!(validate_request_id("a.b").is_err());
        assert!(validate_request_id("").is_err());
    }
}
