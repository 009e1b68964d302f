//! `ksctl-manager reseal`: after a seal-key rotation, seals every stored secret again under the
//! first key (see `ksctl_core::seal`), record by record with compare-and-swap, so it can run
//! while the services work and be run again until it reports nothing left.
use ksctl_core::ClusterId;
use ksctl_core::records::{AppRecord, BootstrapRecord, InfraRecord, SealedFields};
use ksctl_core::seal::Sealer;
use ksctl_runtime::RuntimeError;
use ksctl_store::DynStore;

/// How many sealed values were moved to the first key, and how many already were under it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resealed {
    pub moved: usize,
    pub current: usize,
}

pub async fn run(store: &DynStore, sealer: &Sealer) -> Result<Resealed, RuntimeError> {
    let mut total = Resealed::default();
    for (key, _) in store.children("cloud").await? {
        total = add(total, reseal::<InfraRecord>(store, sealer, &key).await?);
    }
    for (key, _) in store.children("bootstrap").await? {
        total = add(total, reseal::<BootstrapRecord>(store, sealer, &key).await?);
    }
    // Application stacks live one level further down: `app.<cluster>.<stack>`.
    for (cluster, _) in store.children("cluster").await? {
        let Some(id) = ksctl_core::keys::cluster_of(&cluster) else { continue };
        for (key, _) in store.children(&ksctl_core::keys::apps(&id)).await? {
            total = add(total, reseal::<AppRecord>(store, sealer, &key).await?);
        }
    }
    Ok(total)
}

fn add(a: Resealed, b: Resealed) -> Resealed {
    Resealed { moved: a.moved + b.moved, current: a.current + b.current }
}

async fn reseal<T>(store: &DynStore, sealer: &Sealer, key: &str) -> Result<Resealed, RuntimeError>
where
    T: SealedFields + serde::Serialize + serde::de::DeserializeOwned + Clone,
{
    // `<kind>.<cluster>[.<more>]`
    let Some(id) = key.split('.').nth(1).and_then(|i| ClusterId::new(i).ok()) else {
        return Ok(Resealed::default());
    };
    let mut counted = Resealed::default();
    let outcome = ksctl_store::modify(store.as_ref(), key, |cur: Option<T>| {
        let Some(mut rec) = cur else { return Ok(None) };
        counted = Resealed::default();
        let mut changed = false;
        for (purpose, field) in rec.sealed_mut(&id) {
            let Some(sealed) = field.as_ref() else { continue };
            match sealer.reseal(&purpose, sealed) {
                Ok(Some(new)) => {
                    *field = Some(new);
                    changed = true;
                    counted.moved += 1;
                }
                Ok(None) => counted.current += 1,
                Err(e) => return Err(format!("{key}: {purpose}: {e}")),
            }
        }
        Ok(changed.then_some(rec))
    })
    .await?;
    outcome.map_err(RuntimeError::Config)?;
    Ok(counted)
}
