//! Redis backend. Each record is a hash `{v: value, r: revision}`; revisions come from one
//! counter so a key deleted and created again never reuses a revision (no ABA). Writes are Lua
//! scripts, atomic on the shared multiplexed connection (no WATCH/MULTI across tasks). A write
//! under a [`crate::Fence`] checks, in the same script, that the lease is still its writer's.
use crate::{Store, StoreError, Versioned, parent_of};
use redis::Script;
use redis::aio::ConnectionManager;
use std::sync::LazyLock;
use std::time::Duration;

static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if ARGV[#ARGV] ~= '' and redis.call('GET', KEYS[#KEYS]) ~= ARGV[#ARGV] then return -1 end
          if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
          local rev = redis.call('INCR', KEYS[3])
          redis.call('HSET', KEYS[1], 'v', ARGV[1], 'r', rev)
          redis.call('SADD', KEYS[2], ARGV[2])
          return rev",
    )
});
static UPDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if ARGV[#ARGV] ~= '' and redis.call('GET', KEYS[#KEYS]) ~= ARGV[#ARGV] then return -1 end
          local cur = redis.call('HGET', KEYS[1], 'r')
          if not cur or cur ~= ARGV[2] then return 0 end
          local rev = redis.call('INCR', KEYS[2])
          redis.call('HSET', KEYS[1], 'v', ARGV[1], 'r', rev)
          return rev",
    )
});
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if ARGV[#ARGV] ~= '' and redis.call('GET', KEYS[#KEYS]) ~= ARGV[#ARGV] then return -1 end
          redis.call('DEL', KEYS[1])
          redis.call('SREM', KEYS[2], ARGV[1])
          return 1",
    )
});
static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"local cur = redis.call('GET', KEYS[1])
          if not cur then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end
          if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
          return 0",
    )
});
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
          return 1",
    )
});

#[derive(Clone)]
pub struct RedisStore {
    con: ConnectionManager,
    /// Prefix of every Redis key, so several control planes (or tests) can share one server.
    ns: String,
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    pub async fn connect(url: &str, namespace: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let con = ConnectionManager::new(client).await.map_err(unavailable)?;
        Ok(Self { con, ns: namespace.to_string() })
    }
    fn rec(&self, key: &str) -> String {
        format!("{}:rec:{key}", self.ns)
    }
    fn idx(&self, parent: &str) -> String {
        format!("{}:idx:{parent}", self.ns)
    }
    fn rev_counter(&self) -> String {
        format!("{}:revision", self.ns)
    }
    fn lease(&self, name: &str) -> String {
        format!("{}:lease:{name}", self.ns)
    }
    /// The fence's lease key and holder as a write script's last key and argument (an empty
    /// holder: no fence).
    fn fenced(&self, inv: &mut redis::ScriptInvocation<'_>) -> Option<String> {
        let fence = crate::current_fence();
        match &fence {
            Some(f) => inv.key(self.lease(&f.lease)).arg(&f.holder),
            None => inv.key(self.lease("-")).arg(""),
        };
        fence.map(|f| f.lease)
    }
}

fn fenced_err(key: &str, lease: Option<String>) -> StoreError {
    StoreError::Fenced { key: key.into(), lease: lease.unwrap_or_default() }
}

/// A write script's answer: the new revision, `0` (`refused`), or `-1` (fenced).
fn written(rev: i64, key: &str, lease: Option<String>, refused: StoreError) -> Result<u64, StoreError> {
    match rev {
        -1 => Err(fenced_err(key, lease)),
        0 => Err(refused),
        r => Ok(r as u64),
    }
}

#[async_trait::async_trait]
impl Store for RedisStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let mut con = self.con.clone();
        let (v, r): (Option<Vec<u8>>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.rec(key))
            .arg("v")
            .arg("r")
            .query_async(&mut con)
            .await
            .map_err(unavailable)?;
        Ok(match (v, r) {
            (Some(value), Some(revision)) => Some(Versioned { value, revision }),
            _ => None,
        })
    }

    async fn create(&self, key: &str, value: &[u8]) -> Result<u64, StoreError> {
        let mut con = self.con.clone();
        let mut inv = CREATE.prepare_invoke();
        inv.key(self.rec(key)).key(self.idx(parent_of(key))).key(self.rev_counter()).arg(value).arg(key);
        let lease = self.fenced(&mut inv);
        let rev: i64 = inv.invoke_async(&mut con).await.map_err(unavailable)?;
        written(rev, key, lease, StoreError::AlreadyExists(key.into()))
    }

    async fn update(&self, key: &str, value: &[u8], revision: u64) -> Result<u64, StoreError> {
        let mut con = self.con.clone();
        let mut inv = UPDATE.prepare_invoke();
        inv.key(self.rec(key)).key(self.rev_counter()).arg(value).arg(revision.to_string());
        let lease = self.fenced(&mut inv);
        let rev: i64 = inv.invoke_async(&mut con).await.map_err(unavailable)?;
        written(rev, key, lease, StoreError::Conflict(key.into()))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut con = self.con.clone();
        let mut inv = DELETE.prepare_invoke();
        inv.key(self.rec(key)).key(self.idx(parent_of(key))).arg(key);
        let lease = self.fenced(&mut inv);
        let done: i64 = inv.invoke_async(&mut con).await.map_err(unavailable)?;
        if done == -1 { Err(fenced_err(key, lease)) } else { Ok(()) }
    }

    async fn children(&self, parent: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let mut con = self.con.clone();
        let mut keys: Vec<String> =
            redis::cmd("SMEMBERS").arg(self.idx(parent)).query_async(&mut con).await.map_err(unavailable)?;
        keys.sort();
        if keys.is_empty() {
            return Ok(vec![]);
        }
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("HMGET").arg(self.rec(k)).arg("v").arg("r");
        }
        let rows: Vec<(Option<Vec<u8>>, Option<u64>)> = pipe.query_async(&mut con).await.map_err(unavailable)?;
        Ok(keys
            .into_iter()
            .zip(rows)
            .filter_map(|(k, row)| match row {
                (Some(value), Some(revision)) => Some((k, Versioned { value, revision })),
                _ => None,
            })
            .collect())
    }

    async fn try_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut con = self.con.clone();
        let mut inv = LEASE.prepare_invoke();
        inv.key(self.lease(name)).arg(holder).arg(ttl.as_millis().max(1) as u64);
        let got: i64 = inv.invoke_async(&mut con).await.map_err(unavailable)?;
        Ok(got == 1)
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let mut con = self.con.clone();
        let mut inv = RELEASE.prepare_invoke();
        inv.key(self.lease(name)).arg(holder);
        let _: i64 = inv.invoke_async(&mut con).await.map_err(unavailable)?;
        Ok(())
    }

    async fn lease_holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        let mut con = self.con.clone();
        redis::cmd("GET").arg(self.lease(name)).query_async(&mut con).await.map_err(unavailable)
    }
}
