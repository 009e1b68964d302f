//! NATS KV backend: records in one bucket (revision = stream sequence, so never reused). Leases
//! live in the same bucket, under `lease.<name>`, as `{holder, ttl_ms}` with a per-message TTL:
//! taken by compare-and-swap when the key is absent, renewed by compare-and-swap on its revision,
//! and expired by the server's clock alone — no two machines' wall clocks are ever compared.
//!
//! A write under a [`crate::Fence`] is one atomic batch (nats-server ≥ 2.12): the lease entry
//! written again over the revision its holder read, then the record over its own revision. If
//! anyone took the lease in between, the batch fails and nothing is stored — the same guarantee
//! as the Redis backend's script.
use crate::{Store, StoreError, Versioned};
use async_nats::HeaderMap;
use async_nats::header::{NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MESSAGE_TTL};
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Clone)]
pub struct KvStore {
    records: kv::Store,
    client: async_nats::Client,
    js: jetstream::Context,
    bucket: String,
}

#[derive(Serialize, Deserialize)]
struct LeaseValue {
    holder: String,
    /// The lease's TTL, so a fenced write that writes the entry again keeps it.
    #[serde(default)]
    ttl_ms: u64,
}

/// How long the server keeps the delete marker it writes when a lease's TTL runs out.
const MARKER_TTL: Duration = Duration::from_secs(60);

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The bucket, with per-message TTLs (leases) and atomic batches (fenced writes); a bucket made
/// before either is changed to allow them.
async fn bucket(js: &jetstream::Context, name: &str, replicas: usize) -> Result<kv::Store, StoreError> {
    let store = match js.get_key_value(name).await {
        Ok(s) => s,
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: name.into(),
                history: 1,
                num_replicas: replicas,
                limit_markers: Some(MARKER_TTL),
                ..Default::default()
            })
            .await
            .map_err(unavailable)?,
    };
    let mut stream = js.get_stream(format!("KV_{name}")).await.map_err(unavailable)?;
    let mut cfg = stream.info().await.map_err(unavailable)?.config.clone();
    if !cfg.allow_message_ttl || !cfg.allow_atomic_publish {
        cfg.allow_message_ttl = true;
        cfg.subject_delete_marker_ttl.get_or_insert(MARKER_TTL);
        cfg.allow_atomic_publish = true;
        js.update_stream(cfg).await.map_err(unavailable)?;
    }
    // A server older than 2.12 ignores both settings (and the TTL and batch headers): leases
    // would never expire and fenced writes would not be atomic. Refuse it, saying so.
    let kept = stream.info().await.map_err(unavailable)?.config.clone();
    if !kept.allow_message_ttl || !kept.allow_atomic_publish {
        return Err(unavailable(format!(
            "the NATS KV store needs nats-server 2.12 or newer (per-message TTLs and atomic batches); \
             bucket {name}'s stream did not keep them"
        )));
    }
    Ok(store)
}

fn lease_key(name: &str) -> String {
    format!("lease.{name}")
}

/// Whole seconds (the server's granularity), rounded up, never less than one.
fn ttl_header(ttl: Duration) -> String {
    ttl.as_millis().div_ceil(1000).max(1).to_string()
}

impl KvStore {
    /// Opens (creating if needed) bucket `bucket`.
    pub async fn open(client: async_nats::Client, bucket_name: &str) -> Result<Self, StoreError> {
        Self::open_replicated(client, bucket_name, 1).await
    }

    /// [`KvStore::open`], with `replicas` copies of the bucket across a NATS cluster.
    pub async fn open_replicated(
        client: async_nats::Client,
        bucket_name: &str,
        replicas: usize,
    ) -> Result<Self, StoreError> {
        let js = jetstream::new(client.clone());
        Ok(Self { records: bucket(&js, bucket_name, replicas).await?, client, js, bucket: bucket_name.into() })
    }

    fn subject(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.bucket)
    }

    /// The lease entry's revision and value, if it is a live lease.
    async fn lease_entry(&self, name: &str) -> Result<Option<(u64, LeaseValue)>, StoreError> {
        Ok(live(self.records.entry(lease_key(name)).await.map_err(unavailable)?)
            .and_then(|e| serde_json::from_slice::<LeaseValue>(&e.value).ok().map(|v| (e.revision, v))))
    }

    /// The revision a create must find: none, or the marker a delete left.
    async fn free_revision(&self, key: &str) -> Result<u64, StoreError> {
        match self.records.entry(key).await.map_err(unavailable)? {
            None => Ok(0),
            Some(e) if e.operation != kv::Operation::Put => Ok(e.revision),
            Some(_) => Err(StoreError::AlreadyExists(key.into())),
        }
    }

    /// Writes `key` (`payload`, or a delete marker) over `expected` in one batch with the fence's
    /// lease entry, so it lands only while the fence's holder still holds the lease.
    async fn fenced_write(
        &self,
        fence: &crate::Fence,
        key: &str,
        payload: Option<&[u8]>,
        expected: u64,
    ) -> Result<u64, StoreError> {
        // The lease entry also changes when its holder renews it or writes another record at
        // the same time: then the batch is tried again over the entry's new revision.
        for _ in 0..20 {
            match self.fenced_batch(fence, key, payload, expected).await? {
                Batch::Written(rev) => return Ok(rev),
                Batch::LeaseMoved => continue,
            }
        }
        Err(unavailable(format!("fenced write of {key}: the lease entry kept changing")))
    }

    async fn fenced_batch(
        &self,
        fence: &crate::Fence,
        key: &str,
        payload: Option<&[u8]>,
        expected: u64,
    ) -> Result<Batch, StoreError> {
        let fenced = || StoreError::Fenced { key: key.into(), lease: fence.lease.clone() };
        let (lease_rev, lease) = match self.lease_entry(&fence.lease).await? {
            Some((rev, v)) if v.holder == fence.holder => (rev, v),
            _ => return Err(fenced()),
        };
        let batch = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let mut first = HeaderMap::new();
        first.insert("Nats-Batch-Id", batch.as_str());
        first.insert("Nats-Batch-Sequence", "1");
        first.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, lease_rev.to_string().as_str());
        first.insert(NATS_MESSAGE_TTL, ttl_header(Duration::from_millis(lease.ttl_ms.max(1))).as_str());
        let body = serde_json::to_vec(&lease).expect("lease serialises");
        let staged = self
            .client
            .request_with_headers(self.subject(&lease_key(&fence.lease)), first, body.into())
            .await
            .map_err(unavailable)?;
        if let Some(e) = api_error(&staged.payload) {
            return self.refused(fence, key, expected, lease_rev, e).await;
        }
        let mut commit = HeaderMap::new();
        commit.insert("Nats-Batch-Id", batch.as_str());
        commit.insert("Nats-Batch-Sequence", "2");
        commit.insert("Nats-Batch-Commit", "1");
        commit.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string().as_str());
        if payload.is_none() {
            commit.insert("KV-Operation", "DEL");
        }
        let data = payload.map(|p| p.to_vec()).unwrap_or_default();
        let ack =
            self.client.request_with_headers(self.subject(key), commit, data.into()).await.map_err(unavailable)?;
        match api_error(&ack.payload) {
            None => {
                #[derive(Deserialize)]
                struct Ack {
                    seq: u64,
                }
                let ack: Ack = serde_json::from_slice(&ack.payload).map_err(unavailable)?;
                Ok(Batch::Written(ack.seq))
            }
            Some(e) => self.refused(fence, key, expected, lease_rev, e).await,
        }
    }

    /// Why a batch was refused: the lease taken over (fenced), only moved on by its holder
    /// (try again), or the record written since (a conflict).
    async fn refused(
        &self,
        fence: &crate::Fence,
        key: &str,
        expected: u64,
        lease_rev: u64,
        error: String,
    ) -> Result<Batch, StoreError> {
        if !error.contains("wrong last sequence") {
            return Err(unavailable(format!("fenced write of {key}: {error}")));
        }
        match self.lease_entry(&fence.lease).await? {
            Some((rev, v)) if v.holder == fence.holder && rev != lease_rev => Ok(Batch::LeaseMoved),
            Some((_, v)) if v.holder == fence.holder => Err(if expected == 0 {
                StoreError::AlreadyExists(key.into())
            } else {
                StoreError::Conflict(key.into())
            }),
            _ => Err(StoreError::Fenced { key: key.into(), lease: fence.lease.clone() }),
        }
    }

    /// One attempt at [`Store::try_lease`]: `Some(taken)`, or `None` when the entry changed
    /// between reading it and writing over it.
    async fn try_lease_once(&self, name: &str, holder: &str, ttl: Duration) -> Result<Option<bool>, StoreError> {
        let entry = self.records.entry(lease_key(name)).await.map_err(unavailable)?;
        // Free: never taken, or released or expired (a delete marker): take it over that
        // revision. Held: only its holder renews it, over the revision it holds.
        let expected = match &entry {
            None => 0,
            Some(e) if e.operation != kv::Operation::Put || e.value.is_empty() => e.revision,
            Some(e) => {
                let cur: LeaseValue = serde_json::from_slice(&e.value)
                    .map_err(|err| StoreError::Corrupt { key: name.into(), message: err.to_string() })?;
                if cur.holder != holder {
                    return Ok(Some(false));
                }
                e.revision
            }
        };
        let mut headers = HeaderMap::new();
        headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, expected.to_string().as_str());
        headers.insert(NATS_MESSAGE_TTL, ttl_header(ttl).as_str());
        let value = LeaseValue { holder: holder.into(), ttl_ms: ttl.as_millis() as u64 };
        let body = serde_json::to_vec(&value).expect("lease serialises");
        let ack = self.js.publish_with_headers(self.subject(&lease_key(name)), headers, body.into()).await;
        match ack.map_err(unavailable)?.await {
            Ok(_) => Ok(Some(true)),
            // Written in between (wrong last sequence): read again, by whoever wrote it.
            Err(e) if e.to_string().contains("wrong last sequence") => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }
}

enum Batch {
    Written(u64),
    /// The holder's own lease entry changed under the batch: try again.
    LeaseMoved,
}

/// The description of a JetStream API error in `payload`, if it is one.
fn api_error(payload: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
    v.get("error").map(|e| e.get("description").and_then(|d| d.as_str()).unwrap_or("error").to_string())
}

fn live(e: Option<kv::Entry>) -> Option<kv::Entry> {
    // A delete marker the server wrote when a TTL ran out may read as an empty put.
    e.filter(|e| e.operation == kv::Operation::Put && !e.value.is_empty())
}

#[async_trait::async_trait]
impl Store for KvStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let e = self.records.entry(key).await.map_err(unavailable)?;
        Ok(live(e).map(|e| Versioned { value: e.value.to_vec(), revision: e.revision }))
    }

    async fn create(&self, key: &str, value: &[u8]) -> Result<u64, StoreError> {
        if let Some(fence) = crate::current_fence() {
            let expected = self.free_revision(key).await?;
            return self.fenced_write(&fence, key, Some(value), expected).await;
        }
        self.records.create(key, value.to_vec().into()).await.map_err(|e| match e.kind() {
            kv::CreateErrorKind::AlreadyExists => StoreError::AlreadyExists(key.into()),
            _ => unavailable(e),
        })
    }

    async fn update(&self, key: &str, value: &[u8], revision: u64) -> Result<u64, StoreError> {
        if let Some(fence) = crate::current_fence() {
            return self.fenced_write(&fence, key, Some(value), revision).await;
        }
        self.records.update(key, value.to_vec().into(), revision).await.map_err(|e| match e.kind() {
            kv::UpdateErrorKind::WrongLastRevision => StoreError::Conflict(key.into()),
            _ => unavailable(e),
        })
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        if let Some(fence) = crate::current_fence() {
            // Deleting what is absent is done; else over the revision read now.
            let Some(cur) = live(self.records.entry(key).await.map_err(unavailable)?) else { return Ok(()) };
            return match self.fenced_write(&fence, key, None, cur.revision).await {
                Ok(_) => Ok(()),
                // Changed since: delete over the newer revision on the next attempt.
                Err(StoreError::Conflict(_)) => Err(StoreError::Conflict(key.into())),
                Err(e) => Err(e),
            };
        }
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
        // The holder's own fenced writes rewrite the lease entry too (moving its revision): a
        // renewal that lost that race reads again and renews over the new revision.
        for _ in 0..5 {
            match self.try_lease_once(name, holder, ttl).await? {
                Some(taken) => return Ok(taken),
                None => continue,
            }
        }
        Ok(false)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        if let Some((rev, cur)) = self.lease_entry(name).await?
            && cur.holder == holder
        {
            // Only if nobody took it over in between.
            let _ = self.records.delete_expect_revision(lease_key(name), Some(rev)).await;
        }
        Ok(())
    }

    async fn lease_holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self.lease_entry(name).await?.map(|(_, v)| v.holder))
    }
}
