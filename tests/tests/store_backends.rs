//! The state store against real servers, for both backends: compare-and-swap, leases, listing.
use ksctl_store::{DynStore, Fence, KvStore, Lease, LeaseOptions, RedisStore, StoreError, modify};
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
    // A crashed holder (no renewal, no release) blocks only until the TTL (NATS KV expires it
    // by the server's clock, in whole seconds: a little later).
    drop(a);
    let dropped = std::time::Instant::now();
    let b = ksctl_tests::eventually(Duration::from_secs(6), "b takes the expired lease", || async {
        Lease::acquire(&store, "cluster.x", "b", &opts).await.unwrap()
    })
    .await;
    assert!(dropped.elapsed() < opts.ttl + Duration::from_millis(2500), "took {:?}", dropped.elapsed());
    b.release().await;
    assert!(store.lease_holder("cluster.x").await.unwrap().is_none());
}

/// Writes under a lease land only while their writer holds it: once it expired and another
/// took it, the old holder's create, update and delete are refused; the new holder's land.
async fn fenced_writes_of_a_lost_lease_are_refused(store: DynStore) {
    let ttl = Duration::from_secs(1);
    assert!(store.try_lease("cluster.f", "old/1", ttl).await.unwrap());
    let old = Fence { lease: "cluster.f".into(), holder: "old/1".into() };
    let rev = old.clone().scope(store.create("k8s.f", b"1")).await.unwrap();
    // The old holder pauses past its TTL; the new one takes the lease.
    let new = Fence { lease: "cluster.f".into(), holder: "new/2".into() };
    ksctl_tests::eventually(Duration::from_secs(10), "the lease to expire", || async {
        store.try_lease("cluster.f", "new/2", Duration::from_secs(30)).await.unwrap().then_some(())
    })
    .await;
    let refused = |r: Result<u64, StoreError>| matches!(r, Err(StoreError::Fenced { .. }));
    assert!(refused(old.clone().scope(store.update("k8s.f", b"stale", rev)).await));
    assert!(refused(old.clone().scope(store.create("k8s.g", b"stale")).await));
    assert!(matches!(old.clone().scope(store.delete("k8s.f")).await, Err(StoreError::Fenced { .. })));
    assert_eq!(store.get("k8s.f").await.unwrap().unwrap().value, b"1");
    assert!(store.get("k8s.g").await.unwrap().is_none());
    new.clone().scope(store.update("k8s.f", b"2", rev)).await.unwrap();
    assert_eq!(store.get("k8s.f").await.unwrap().unwrap().value, b"2");
    // Unfenced writes (no lease in scope) are unaffected.
    store.delete("k8s.f").await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_backend() {
    let server = RedisServer::start();
    let s = redis_store(&server).await;
    cas_conflict_detected(s.clone()).await;
    cas_conflicts_are_retried(s.clone()).await;
    children_lists_one_level(s.clone()).await;
    fenced_writes_of_a_lost_lease_are_refused(s.clone()).await;
    lease_excludes_and_expires(s).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_kv_backend() {
    let server = NatsServer::start();
    let s = kv_store(&server).await;
    cas_conflict_detected(s.clone()).await;
    cas_conflicts_are_retried(s.clone()).await;
    children_lists_one_level(s.clone()).await;
    fenced_writes_of_a_lost_lease_are_refused(s.clone()).await;
    lease_excludes_and_expires(s).await;
}
