//! JSON from callers (bus requests, spec files): an error names the field it is in as a path
//! (`spec.worker_nodes`, `spec.hosts.workers[1].address`), so a count sent as a string or a
//! negative number is reported against its field, not only as a line and column.
use serde::de::DeserializeOwned;
use std::fmt;

/// Why a JSON document could not be read as the type asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    /// The path of the field the error is in; `None` when the document itself is broken
    /// (not JSON, truncated) or the error is about the top level.
    pub field: Option<String>,
    /// serde's message (with its line and column for text input).
    pub message: String,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for JsonError {}

fn error<E: fmt::Display>(e: serde_path_to_error::Error<E>) -> JsonError {
    use serde_path_to_error::Segment;
    // The path as far as it is known (a broken document ends in an unknown segment).
    let mut field = String::new();
    for segment in e.path().iter() {
        match segment {
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(key);
            }
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Unknown => break,
        }
    }
    JsonError { field: (!field.is_empty()).then_some(field), message: e.into_inner().to_string() }
}

/// Reads `bytes` as a `T`.
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(error)?;
    // Trailing characters after the document are an error of the document, as in
    // `serde_json::from_slice`.
    de.end().map_err(|e| JsonError { field: None, message: e.to_string() })?;
    Ok(value)
}

/// Reads an already parsed document as a `T`.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, JsonError> {
    serde_path_to_error::deserialize(value).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::CreateRequest;
    use serde_json::json;

    fn create(spec: serde_json::Value) -> serde_json::Value {
        json!({"api_version": "v1", "request_id": "r1", "spec": spec})
    }

    fn spec() -> serde_json::Value {
        json!({"cluster_name": "a", "region": "r", "cloud_provider": "sim", "cluster_type": "selfmanaged",
               "kubernetes_distro": "k3s", "kubernetes_version": "1.31",
               "control_plane_nodes": 3, "datastore_nodes": 3, "worker_nodes": 2})
    }

    fn field_of(v: serde_json::Value) -> JsonError {
        let text = serde_json::to_vec(&v).unwrap();
        let e = from_slice::<CreateRequest>(&text).unwrap_err();
        assert_eq!(from_value::<CreateRequest>(v).unwrap_err().field, e.field, "text and value agree");
        e
    }

    #[test]
    fn a_valid_request_reads() {
        from_slice::<CreateRequest>(&serde_json::to_vec(&create(spec())).unwrap()).unwrap();
    }

    #[test]
    fn type_errors_name_their_field() {
        for (value, why) in [(json!("3"), "a string"), (json!(-1), "negative"), (json!(1u64 << 40), "too large")] {
            let mut s = spec();
            s["worker_nodes"] = value;
            let e = field_of(create(s));
            assert_eq!(e.field.as_deref(), Some("spec.worker_nodes"), "{why}: {e}");
            assert!(e.to_string().starts_with("spec.worker_nodes: "), "{e}");
        }
        let mut s = spec();
        s["hosts"] = json!({"workers": [{"address": "10.0.0.1"}, {"address": 7}]});
        let e = field_of(create(s));
        assert!(e.field.as_deref().unwrap_or("").starts_with("spec.hosts"), "{e}");
    }

    #[test]
    fn unknown_fields_and_broken_documents() {
        let mut s = spec();
        s["worker_count"] = json!(3);
        let e = field_of(create(s));
        assert!(e.message.contains("worker_count"), "{e}");
        let e = from_slice::<CreateRequest>(b"{not json").unwrap_err();
        assert_eq!(e.field, None);
        let e = from_slice::<CreateRequest>(&[serde_json::to_vec(&create(spec())).unwrap(), b" x".to_vec()].concat())
            .unwrap_err();
        assert_eq!(e.field, None, "{e}");
        assert!(e.message.contains("trailing"), "{e}");
    }
}
