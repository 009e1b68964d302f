//! JSON records on top of the raw store, with the compare-and-swap retry loop in one place.
use crate::{Store, StoreError};
use serde::{Serialize, de::DeserializeOwned};

pub async fn get_json<T: DeserializeOwned>(store: &dyn Store, key: &str) -> Result<Option<(T, u64)>, StoreError> {
    match store.get(key).await? {
        None => Ok(None),
        Some(v) => {
            let t = serde_json::from_slice(&v.value)
                .map_err(|e| StoreError::Corrupt { key: key.into(), message: e.to_string() })?;
            Ok(Some((t, v.revision)))
        }
    }
}

/// Creates a record that must not exist yet.
pub async fn put_new<T: Serialize>(store: &dyn Store, key: &str, value: &T) -> Result<u64, StoreError> {
    store.create(key, &serde_json::to_vec(value).expect("records serialise")).await
}

/// Read-modify-write with compare-and-swap, retried on conflict. `f` sees the current record
/// (`None` if absent) and returns the new one, or `None` to leave the store unchanged.
/// Returns what is stored afterwards.
pub async fn modify<T, F, E>(store: &dyn Store, key: &str, mut f: F) -> Result<Result<Option<T>, E>, StoreError>
where
    T: Serialize + DeserializeOwned + Clone,
    F: FnMut(Option<T>) -> Result<Option<T>, E>,
{
    for attempt in 0u32.. {
        let current = get_json::<T>(store, key).await?;
        let (old, rev) = match current {
            Some((t, r)) => (Some(t), Some(r)),
            None => (None, None),
        };
        let new = match f(old.clone()) {
            Err(e) => return Ok(Err(e)),
            Ok(None) => return Ok(Ok(old)),
            Ok(Some(n)) => n,
        };
        let bytes = serde_json::to_vec(&new).expect("records serialise");
        let res = match rev {
            Some(r) => store.update(key, &bytes, r).await,
            None => store.create(key, &bytes).await,
        };
        match res {
            Ok(_) => return Ok(Ok(Some(new))),
            Err(StoreError::Conflict(_) | StoreError::AlreadyExists(_)) if attempt < 50 => {
                // Back off a little so many writers of one key make progress.
                tokio::time::sleep(std::time::Duration::from_millis(fastrand::u64(0..=2 + 2 * attempt.min(10) as u64)))
                    .await;
            }
            Err(e) => return Err(e),
        }
    }
    unreachable!()
}
