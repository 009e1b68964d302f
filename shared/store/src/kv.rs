//! NATS KV backend: records in one bucket (revision = stream sequence, so never reused), leases
//! in a second bucket as `{holder, expires_at_ms}` taken and renewed by compare-and-swap.
//! Lease expiry compares wall clocks, so replicas need roughly synchronised clocks (NTP).
use crate::{Store, StoreError, Versioned};
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Clone)]
pub struct KvStore {
    records: kv::Store,
    leases: kv::Store,
    js: jetstream::Context,
    bucket: String,
}

#[derive(Serialize, Deserialize)]
struct LeaseValue {
    holder: String,
    expires_at_ms: u64,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

async fn bucket(js: &jetstream::Context, name: &str) -> Result<kv::Store, StoreError> {
    match js.get_key_value(name).await {
        Ok(s) => Ok(s),
        Err(_) => js
            .create_key_value(kv::Config { bucket: name.into(), history: 1, ..Default::default() })
            .await
            .map_err(unavailable),
    }
}

impl KvStore {
    /// Opens (creating if needed) bucket `bucket` and `<bucket>_leases`.
    pub async fn open(client: async_nats::Client, bucket_name: &str) -> Result<Self, StoreError> {
        let js = jetstream::new(client);
        Ok(Self {
            records: bucket(&js, bucket_name).await?,
            leases: bucket(&js, &format!("{bucket_name}_leases")).await?,
            js,
            bucket: bucket_name.into(),
        })
    }
}

fn live(e: Option<kv::Entry>) -> Option<kv::Entry> {
    e.filter(|e| e.operation == kv::Operation::Put)
}

#[async_trait::async_trait]
impl Store for KvStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let e = self.records.entry(key).await.map_err(unavailable)?;
        Ok(live(e).map(|e| Versioned { value: e.value.to_vec(), revision: e.revision }))
    }

    async fn create(&self, key: &str, value: &[u8]) -> Result<u64, StoreError> {
        self.records.create(key, value.to_vec().into()).await.map_err(|e| match e.kind() {
            kv::CreateErrorKind::AlreadyExists => StoreError::AlreadyExists(key.into()),
            _ => unavailable(e),
        })
    }

    async fn update(&self, key: &str, value: &[u8], revision: u64) -> Result<u64, StoreError> {
        self.records.update(key, value.to_vec().into(), revision).await.map_err(|e| match e.kind() {
            kv::UpdateErrorKind::WrongLastRevision => StoreError::Conflict(key.into()),
            _ => unavailable(e),
        })
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.records.delete(key).await.map_err(unavailable)
    }

    async fn children(&self, parent: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        // The stream knows which subjects it holds; ask for those one level below `parent`,
        // then read each (a deleted key still has a marker and reads as absent).
        let prefix = format!("$KV.{}.", self.bucket);
        let stream = self.js.get_stream(format!("KV_{}", self.bucket)).await.map_err(unavailable)?;
        let mut subjects = stream.info_with_subjects(format!("{prefix}{parent}.*")).await.map_err(unavailable)?;
        let mut keys = Vec::new();
        while let Some(s) = subjects.next().await {
            let (subject, _) = s.map_err(unavailable)?;
            if let Some(k) = subject.strip_prefix(&prefix) {
                keys.push(k.to_string());
            }
        }
        keys.sort();
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(v) = self.get(&k).await? {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = ksctl_core::now_ms();
        let value =
            serde_json::to_vec(&LeaseValue { holder: holder.into(), expires_at_ms: now + ttl.as_millis() as u64 })
                .expect("lease serialises");
        match live(self.leases.entry(name).await.map_err(unavailable)?) {
            None => match self.leases.create(name, value.into()).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(unavailable(e)),
            },
            Some(e) => {
                let cur: LeaseValue = serde_json::from_slice(&e.value)
                    .map_err(|err| StoreError::Corrupt { key: name.into(), message: err.to_string() })?;
                if cur.holder != holder && cur.expires_at_ms > now {
                    return Ok(false);
                }
                match self.leases.update(name, value.into(), e.revision).await {
                    Ok(_) => Ok(true),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                    Err(e) => Err(unavailable(e)),
                }
            }
        }
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        if let Some(e) = live(self.leases.entry(name).await.map_err(unavailable)?) {
            let cur: Result<LeaseValue, _> = serde_json::from_slice(&e.value);
            if cur.map(|c| c.holder == holder).unwrap_or(false) {
                // Only if nobody took it over in between.
                let _ = self.leases.delete_expect_revision(name, Some(e.revision)).await;
            }
        }
        Ok(())
    }

    async fn lease_holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(live(self.leases.entry(name).await.map_err(unavailable)?).and_then(|e| {
            let cur: LeaseValue = serde_json::from_slice(&e.value).ok()?;
            (cur.expires_at_ms > ksctl_core::now_ms()).then_some(cur.holder)
        }))
    }
}
