//! Bad requests get a clear error (reply and event) and write nothing.
use futures::StreamExt;
use ksctl_core::messages::{Event, EventKind, REPLY_HEADER, RequestReply};
use ksctl_tests::{System, SystemOptions};
use std::time::Duration;

async fn raw_request(sys: &System, verb: &str, body: &[u8]) -> RequestReply {
    let inbox = sys.client.new_inbox();
    let mut sub = sys.client.subscribe(inbox.clone()).await.unwrap();
    let js = async_nats::jetstream::new(sys.client.clone());
    let mut h = async_nats::HeaderMap::new();
    h.insert(REPLY_HEADER, inbox.as_str());
    js.publish_with_headers(format!("ksctl.request.{verb}"), h, body.to_vec().into()).await.unwrap().await.unwrap();
    let m = tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("a reply").unwrap();
    serde_json::from_slice(&m.payload).unwrap()
}

async fn cluster_keys(sys: &System) -> usize {
    sys.store.children("cluster").await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_and_invalid_requests_change_nothing() {
    let sys = System::start(SystemOptions::default()).await;
    let mut rejected = sys.client.subscribe("ksctl.events.*.rejected").await.unwrap();

    let r = raw_request(&sys, "create", b"{not json").await;
    assert!(!r.accepted);
    assert!(r.message.starts_with("malformed request"), "{}", r.message);
    let ev: Event = serde_json::from_slice(
        &tokio::time::timeout(Duration::from_secs(5), rejected.next()).await.unwrap().unwrap().payload,
    )
    .unwrap();
    assert_eq!(ev.kind, EventKind::Rejected);
    assert!(ev.message.contains("malformed"));

    let r = raw_request(&sys, "explode", b"{}").await;
    assert!(r.message.contains("unknown request"), "{}", r.message);

    // Each validation rule, through the CLI: exit code 2 and the field named.
    let cases: &[(&[&str], &str)] = &[
        (&["--name", "Bad_Name", "--distro", "k3s", "--control-planes", "3", "--datastores", "3"], "cluster_name"),
        (&["--name", "x", "--distro", "k3s", "--control-planes", "2", "--datastores", "3"], "control_plane_nodes"),
        (&["--name", "x", "--distro", "k3s", "--control-planes", "3", "--datastores", "4"], "datastore_nodes"),
        (&["--name", "x", "--control-planes", "3", "--datastores", "3"], "kubernetes_distro"),
        (&["--name", "x", "--distro", "rke2", "--control-planes", "3", "--datastores", "3"], "kubernetes_distro"),
        (
            &["--name", "x", "--provider", "gcp", "--distro", "k3s", "--control-planes", "3", "--datastores", "3"],
            "cloud_provider",
        ),
        (
            &["--name", "x", "--provider", "aws", "--distro", "k3s", "--control-planes", "3", "--datastores", "3"],
            "not enabled",
        ),
        (&["--name", "x", "--type", "hosted"], "cluster_type"),
        (&["--name", "x", "--type", "managed", "--managed-nodes", "0"], "managed_nodes"),
        (&["--name", &"a".repeat(51), "--type", "managed", "--managed-nodes", "1"], "at most 50"),
        (&["--name", "x", "--type", "managed", "--managed-nodes", "1", "--version", "latest"], "kubernetes_version"),
    ];
    for (args, expect) in cases {
        let mut full = vec!["cluster", "create"];
        full.extend_from_slice(args);
        let (code, out, err) = sys.ksctl(&full).await;
        assert_eq!(code, 2, "{args:?}: {out}\n{err}");
        assert!(err.contains(expect), "{args:?}: expected {expect:?} in {err}");
    }
    assert_eq!(cluster_keys(&sys).await, 0, "a rejected request wrote state");

    // Unknown fields in a spec file are named.
    let f = sys.logs.join("spec.json");
    std::fs::write(
        &f,
        r#"{"cluster_name":"a","region":"r","cloud_provider":"sim","cluster_type":"managed","worker_count":3}"#,
    )
    .unwrap();
    let (code, _, err) = sys.ksctl(&["cluster", "create", "-f", f.to_str().unwrap()]).await;
    assert_eq!(code, 2);
    assert!(err.contains("worker_count"), "{err}");

    // A count of the wrong type names its field: in the reply's errors for a bus client, in the
    // CLI's message for a spec file.
    for bad in [r#""3""#, "-1", "1099511627776"] {
        let body = format!(
            r#"{{"api_version":"v1","request_id":"typed-1","spec":{{"cluster_name":"typed","region":"local","cloud_provider":"sim","cluster_type":"selfmanaged","kubernetes_distro":"k3s","kubernetes_version":"1.31","control_plane_nodes":3,"datastore_nodes":3,"worker_nodes":{bad}}}}}"#
        );
        let r = raw_request(&sys, "create", body.as_bytes()).await;
        assert!(!r.accepted);
        assert!(r.message.starts_with("malformed request: spec.worker_nodes: "), "{bad}: {}", r.message);
        assert_eq!(r.errors.len(), 1, "{bad}: {:?}", r.errors);
        assert_eq!(r.errors[0].field, "spec.worker_nodes", "{bad}");
        std::fs::write(
            &f,
            format!(r#"{{"cluster_name":"typed","region":"r","cloud_provider":"sim","cluster_type":"managed","managed_nodes":{bad}}}"#),
        )
        .unwrap();
        let (code, _, err) = sys.ksctl(&["cluster", "create", "-f", f.to_str().unwrap()]).await;
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(err.contains("managed_nodes: invalid"), "{bad}: {err}");
    }
    assert_eq!(cluster_keys(&sys).await, 0, "a rejected request wrote state");

    // Without counts the flags make a highly available cluster: 3 control planes, 3 etcd nodes
    // and 2 workers self-managed, 2 nodes managed.
    let (code, _, err) = sys.ksctl(&["cluster", "create", "--name", "demo", "--distro", "k3s", "--no-wait"]).await;
    assert_eq!(code, 0, "{err}");
    let s = sys.cluster("demo").await.unwrap().spec;
    assert_eq!((s.control_plane_nodes, s.datastore_nodes, s.worker_nodes, s.managed_nodes), (3, 3, 2, 0));
    let (code, _, err) = sys.ksctl(&["cluster", "create", "--name", "demo-m", "--type", "managed", "--no-wait"]).await;
    assert_eq!(code, 0, "{err}");
    let s = sys.cluster("demo-m").await.unwrap().spec;
    assert_eq!((s.control_plane_nodes, s.datastore_nodes, s.worker_nodes, s.managed_nodes), (0, 0, 0, 2));
}

#[tokio::test(flavor = "multi_thread")]
async fn forbidden_transitions_are_rejected() {
    // Slow steps keep the cluster in `creating` long enough to try things.
    let sys = System::start(SystemOptions { sim_latency_ms: 600, ..Default::default() }).await;
    let (code, _, err) = sys
        .ksctl(&[
            "cluster",
            "create",
            "--name",
            "busy",
            "--distro",
            "k3s",
            "--control-planes",
            "3",
            "--datastores",
            "3",
            "--workers",
            "0",
            "--no-wait",
        ])
        .await;
    assert_eq!(code, 0, "{err}");
    let before = sys.cluster("busy").await.unwrap();
    assert_eq!(before.state.as_str(), "creating");

    for (args, expect) in [
        (vec!["cluster", "delete", "busy"], "only reads are allowed"),
        (vec!["cluster", "scale", "busy", "--workers", "3"], "only reads are allowed"),
        (
            vec!["cluster", "create", "--name", "busy", "--type", "managed", "--managed-nodes", "1"],
            "only reads are allowed",
        ),
        (vec!["cluster", "delete", "nosuch"], "no cluster named nosuch"),
        (vec!["cluster", "scale", "nosuch", "--workers", "1"], "no cluster named nosuch"),
    ] {
        let (code, out, err) = sys.ksctl(&args).await;
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    let after = sys.cluster("busy").await.unwrap();
    assert_eq!(
        after.operation.as_ref().map(|o| &o.id),
        before.operation.as_ref().map(|o| &o.id),
        "the rejected requests changed the operation"
    );

    sys.wait_state("busy", "running", Duration::from_secs(60)).await;
    // Duplicate create of an existing name.
    let (code, _, err) =
        sys.ksctl(&["cluster", "create", "--name", "busy", "--type", "managed", "--managed-nodes", "1"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("already exists"), "{err}");
    // Scale to the current size is accepted with nothing to do.
    let (code, out, err) = sys.ksctl(&["cluster", "scale", "busy", "--workers", "0"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("nothing to do"), "{out}");
    assert!(sys.ksctl(&["cluster", "get", "nosuch"]).await.2.contains("no cluster named nosuch"));
}

#[tokio::test(flavor = "multi_thread")]
async fn same_request_published_twice_is_one_operation() {
    let sys = System::start(SystemOptions::default()).await;
    let f = sys.logs.join("req.json");
    std::fs::write(
        &f,
        r#"{"api_version":"v1","request_id":"fixed-id-1","spec":{"cluster_name":"twice","region":"local","cloud_provider":"sim","cluster_type":"managed","managed_nodes":1}}"#,
    )
    .unwrap();
    let (c1, _, e1) = sys.ksctl(&["cluster", "create", "-f", f.to_str().unwrap()]).await;
    assert_eq!(c1, 0, "{e1}");
    // The stream drops the duplicate within its window, so this one gets no answer from the
    // manager; published under another message id it is recognised as the same operation.
    let body = std::fs::read(&f).unwrap();
    let r = raw_request(&sys, "create", &body).await;
    assert!(r.accepted, "{}", r.message);
    assert!(r.message.contains("already finished"), "{}", r.message);
    sys.assert_no_duplicates("twice").await;
}
