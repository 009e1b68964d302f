//! The state store against real servers, for both backends: compare-and-swap, leases, listing.
use ksctl_store::{DynStore, KvStore, Lease, LeaseOptions, RedisStore, StoreError, modify};
use ksctl_tests::{NatsServer, RedisServer};
use std::sync::Arc;
use std::time::Duration;

async fn redis_store(server: &RedisServer) -> DynStore {
    Arc::new(RedisStore::connect(&server.url(), "test").await.unwrap())
}

async fn kv_store(server: &NatsServer) -> DynStore {
    let client = async_nats::connect(server.url()).await.unwrap();
    Arc::new(KvStore::open(client, "test").await.unwrap())
}

async fn cas_conflict_detected(store: DynStore) {
    let r1 = store.create("cluster.a", b"1").await.unwrap();
    assert!(matches!(store.create("cluster.a", b"x").await, Err(StoreError::AlreadyExists(_))));
    let r2 = store.update("cluster.a", b"2", r1).await.unwrap();
    assert!(r2 > r1);
    // A writer holding the old revision loses.
    assert!(matches!(store.update("cluster.a", b"3", r1).await, Err(StoreError::Conflict(_))));
    assert_eq!(store.get("cluster.a").await.unwrap().unwrap().value, b"2");
    // Deleted and created again: the old revision must not match (no ABA).
    store.delete("cluster.a").await.unwrap();
    store.delete("cluster.a").await.unwrap();
    assert!(store.get("cluster.a").await.unwrap().is_none());
    let r3 = store.create("cluster.a", b"4").await.unwrap();
    assert!(r3 > r2);
    assert!(matches!(store.update("cluster.a", b"5", r2).await, Err(StoreError::Conflict(_))));
}

async fn cas_conflicts_are_retried(store: DynStore) {
    // 20 concurrent read-modify-write increments: every one lands exactly once.
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move {
                modify(s.as_ref(), "counter.n", |cur: Option<u64>| Ok::<_, ()>(Some(cur.unwrap_or(0) + 1)))
                    .await
                    .unwrap()
                    .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let (n, _) = ksctl_store::get_json::<u64>(store.as_ref(), "counter.n").await.unwrap().unwrap();
    assert_eq!(n, 20);
}

async fn children_lists_one_level(store: DynStore) {
    for k in ["sim.c1.a", "sim.c1.b", "sim.c2.a", "sim.c1"] {
        store.create(k, b"{}").await.unwrap();
    }
    store.delete("sim.c1.b").await.unwrap();
    let keys: Vec<String> = store.children("sim.c1").await.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["sim.c1.a"]);
}

async fn lease_excludes_and_expires(store: DynStore) {
    let opts = LeaseOptions { ttl: Duration::from_millis(1500), wait: Duration::from_millis(100) };
    let a = Lease::acquire(&store, "cluster.x", "a", &opts).await.unwrap().expect("a takes the free lease");
    assert!(Lease::acquire(&store, "cluster.x", "b", &opts).await.unwrap().is_none(), "b must not get a held lease");
    // Renewal keeps it past the TTL while a is alive.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert!(!a.lost());
    assert_eq!(store.lease_holder("cluster.x").await.unwrap().as_deref(), Some(a.token()));
    assert!(a.token().starts_with("a/"));
    // Another task of the same holder is excluded too: each acquisition has its own token.
    assert!(Lease::acquire(&store, "cluster.x", "a", &opts).await.unwrap().is_none(), "a second task of a");
    assert!(!store.try_lease("cluster.x", "b", opts.ttl).await.unwrap());
    // A crashed holder (no renewal, no release) blocks only until the TTL.
    drop(a);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let b = Lease::acquire(&store, "cluster.x", "b", &opts).await.unwrap().expect("b takes the expired lease");
    b.release().await;
    assert!(store.lease_holder("cluster.x").await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_backend() {
    let server = RedisServer::start();
    let s = redis_store(&server).await;
    cas_conflict_detected(s.clone()).await;
    cas_conflicts_are_retried(s.clone()).await;
    children_lists_one_level(s.clone()).await;
    lease_excludes_and_expires(s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_kv_backend() {
    let server = NatsServer::start();
    let s = kv_store(&server).await;
    cas_conflict_detected(s.clone()).await;
    cas_conflicts_are_retried(s.clone()).await;
    children_lists_one_level(s.clone()).await;
    lease_excludes_and_expires(s).await;
}
