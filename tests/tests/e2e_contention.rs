//! Per-cluster exclusivity under contention: three replicas of every service on the shared
//! durable consumers, many clusters at once, redeliveries forced by killing one replica of each
//! service mid-run. Every lease acquisition and release is traced (`KSCTL_LEASE_TRACE`) and the
//! trace must show, for every cluster, one holder at a time — never two tasks acting on one
//! cluster, whether in two replicas or in one.
use ksctl_tests::{System, SystemOptions, TempDir};
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const CLUSTERS: usize = 24;
const T: Duration = Duration::from_secs(180);

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

/// Checks the trace: per lease, an acquisition while another token holds it is an overlap. A
/// holder stops at its release, its drop, or the kill of its process (`kills`: replica → time).
fn overlaps(trace: &str, kills: &[(String, u128)]) -> (usize, Vec<String>) {
    let mut events: Vec<(u128, &str, &str, &str)> = trace
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.parse().ok()?, f.next()?, f.next()?, f.next()?))
        })
        .collect();
    events.sort();
    let killed_at = |token: &str, since: u128| {
        // `<replica>[@<op>:<phase>]/<random>`: controllers name the phase they hold it for.
        let replica = token.split(['@', '/']).next().unwrap_or(token);
        kills.iter().filter(|(r, t)| r == replica && *t >= since).map(|(_, t)| *t).min()
    };
    let mut held: BTreeMap<&str, (&str, u128)> = BTreeMap::new();
    let (mut acquisitions, mut bad) = (0, Vec::new());
    for (t, what, name, token) in events {
        match what {
            "acquire" => {
                acquisitions += 1;
                if let Some((other, since)) = held.get(name) {
                    let stopped = killed_at(other, *since).is_some_and(|k| k <= t);
                    if !stopped {
                        bad.push(format!("{name}: {token} acquired at {t} while {other} held it since {since}"));
                    }
                }
                held.insert(name, (token, t));
            }
            _ => {
                if held.get(name).is_some_and(|(h, _)| *h == token) {
                    held.remove(name);
                }
            }
        }
    }
    (acquisitions, bad)
}

#[test]
fn the_checker_finds_an_overlap() {
    let ok =
        "1 acquire cluster.a m-0/1\n2 release cluster.a m-0/1\n3 acquire cluster.a c-1/2\n4 drop cluster.a c-1/2\n";
    assert_eq!(overlaps(ok, &[]), (2, vec![]));
    let bad = "1 acquire cluster.a m-0/1\n2 acquire cluster.a m-0/2\n3 release cluster.a m-0/1\n";
    assert_eq!(overlaps(bad, &[]).1.len(), 1, "two tasks of one replica");
    let killed = "1 acquire cluster.a c-1/1\n5 acquire cluster.a c-2/2\n";
    assert!(overlaps(killed, &[("c-1".into(), 3)]).1.is_empty(), "the holder was killed at 3");
    assert_eq!(overlaps(killed, &[("c-1".into(), 7)]).1.len(), 1, "killed only after the second acquisition");
}

#[tokio::test(flavor = "multi_thread")]
async fn many_replicas_many_clusters_one_holder_per_cluster() {
    let dir = TempDir::new("lease-trace");
    let trace = dir.0.join("leases.trace");
    let mut sys = System::start(SystemOptions {
        replicas: 3,
        sim_latency_ms: 50,
        env: vec![("*".into(), "KSCTL_LEASE_TRACE".into(), trace.display().to_string())],
        ..Default::default()
    })
    .await;
    let names: Vec<String> = (0..CLUSTERS).map(|i| format!("c{i:02}")).collect();
    let creates = names.iter().enumerate().map(|(i, n)| {
        let sys = &sys;
        async move {
            let (code, out, err) = if i % 3 == 0 {
                sys.ksctl(&["cluster", "create", "--name", n, "--type", "managed", "--managed-nodes", "2", "--no-wait"])
                    .await
            } else {
                sys.create_ha(n, 2, &["--no-wait"]).await
            };
            assert_eq!(code, 0, "{out}{err}");
        }
    });
    futures::future::join_all(creates).await;

    // Redeliveries and takeovers: one replica of each service dies mid-run and comes back.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut unfinished = 0;
    for n in &names {
        unfinished += sys.cluster(n).await.is_none_or(|r| r.state.as_str() != "running") as usize;
    }
    assert!(unfinished > CLUSTERS / 2, "the kill must come mid-run ({unfinished} unfinished)");
    let mut kills = Vec::new();
    for b in ["ksctl-manager", "ksctl-cloud-controller", "ksctl-bootstrap-controller", "ksctl-k8s-controller"] {
        sys.kill9_replica(b, 1);
        kills.push((format!("{b}-1"), now_ns()));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for b in ["ksctl-manager", "ksctl-cloud-controller", "ksctl-bootstrap-controller", "ksctl-k8s-controller"] {
        sys.restart(b);
    }
    for n in &names {
        sys.wait_state(n, "running", T).await;
        sys.assert_no_duplicates_after_kill(n).await;
    }
    let deletes = names.iter().map(|n| {
        let sys = &sys;
        async move {
            let (code, out, err) = sys.ksctl(&["cluster", "delete", n, "--no-wait"]).await;
            assert_eq!(code, 0, "{out}{err}");
        }
    });
    futures::future::join_all(deletes).await;
    for n in &names {
        sys.wait_gone(n, T).await;
        assert!(sys.sim_resources(n).await.is_empty(), "{n} left resources behind");
    }

    let text = std::fs::read_to_string(&trace).unwrap();
    let (acquisitions, bad) = overlaps(&text, &kills);
    let holders: std::collections::BTreeSet<&str> =
        text.lines().filter_map(|l| l.split_whitespace().nth(3)?.rsplit_once('/').map(|(r, _)| r)).collect();
    eprintln!("{acquisitions} lease acquisitions by {} replicas", holders.len());
    assert!(acquisitions >= CLUSTERS * 8, "the trace holds every handler's lease ({acquisitions})");
    assert!(holders.len() >= 8, "work was spread over the replicas: {holders:?}");
    assert!(bad.is_empty(), "{} overlaps, e.g. {:?}", bad.len(), &bad[..bad.len().min(5)]);
}
