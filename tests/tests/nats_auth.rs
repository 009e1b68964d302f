//! The bus's roles, enforced by a real nats-server in operator mode (keys from the real
//! `ksctl auth init`): a cluster's agent credential publishes that cluster's heartbeats and
//! nothing else, subscribes to nothing, expires, and dies when revoked; a CLI credential cannot
//! forge commands, results or dead letters, touch streams or KV, or read another user's replies.
use async_nats::Client;
use futures::StreamExt;
use ksctl_bus::NatsAuth;
use ksctl_bus::auth::{self, Creds, Role};
use ksctl_core::ClusterId;
use ksctl_tests::NatsServer;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A connection as `creds`, collecting the errors the server reports to it.
async fn connect(nats: &NatsServer, creds: &Creds) -> Result<(Client, Arc<Mutex<Vec<String>>>), String> {
    let errors = Arc::new(Mutex::new(vec![]));
    let sink = errors.clone();
    let opts = NatsAuth { creds: Some(creds.file_text()), ..Default::default() }
        .options()
        .unwrap()
        .connection_timeout(Duration::from_secs(3))
        .max_reconnects(1)
        .event_callback(move |e| {
            let sink = sink.clone();
            async move { sink.lock().unwrap().push(e.to_string()) }
        });
    // What the server said goes with a failure: it may close the connection before the flush.
    let said = |e: String| format!("{e}; {}", errors.lock().unwrap().join("; "));
    let client = opts.connect(nats.url()).await.map_err(|e| said(e.to_string()))?;
    // The server answers CONNECT before the client learns of a refusal: a round trip settles it.
    client.flush().await.map_err(|e| said(e.to_string()))?;
    Ok((client, errors))
}

/// What arrives on `subject` (a filter matching `ksctl.marker`, seen by the services'
/// connection) while `act` runs.
async fn seen(watcher: &Client, subject: &str, act: impl std::future::Future<Output = ()>) -> Vec<String> {
    const MARKER: &str = "ksctl.marker";
    let mut sub = watcher.subscribe(subject.to_string()).await.unwrap();
    // The subscription is live once the server has read it, which a flush does not wait for
    // (it only writes the buffer; the server reads each connection on its own, so another
    // connection's publish can overtake it — seen in nats-server's trace as the flake these tests
    // had). The watcher's own message coming back proves it: the server reads one connection in
    // order.
    watcher.publish(MARKER, "".into()).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), sub.next()).await.expect("the marker comes back");
    assert_eq!(first.unwrap().subject.as_str(), MARKER);
    act.await;
    let mut got = vec![];
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        got.push(m.subject.to_string());
    }
    got
}

/// Why the server will not keep a connection as `creds`: the connect error, or the error it
/// closes a just-made connection with (an expired JWT is authenticated first, then closed).
async fn refused(nats: &NatsServer, creds: &Creds) -> String {
    let (client, errors) = match connect(nats, creds).await {
        Err(e) => return e.to_lowercase(),
        Ok(c) => c,
    };
    ksctl_tests::eventually(Duration::from_secs(5), "the server to close the connection", || async {
        let errors = errors.lock().unwrap().join("; ").to_lowercase();
        (client.connection_state() != async_nats::connection::State::Connected && errors.contains("server error"))
            .then_some(errors)
    })
    .await
}

async fn violations(errors: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    errors.lock().unwrap().iter().filter(|e| e.to_lowercase().contains("permissions violation")).cloned().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_credentials_reach_only_their_cluster_and_die_when_revoked_or_expired() {
    let nats = NatsServer::start_with_auth("127.0.0.1");
    let files = nats.auth.clone().unwrap();
    let authority = files.authority();
    let services = nats.connect().await;
    // Without a credential nobody gets in.
    assert!(async_nats::connect(nats.url()).await.is_err());

    let alpha = ClusterId::new("alpha").unwrap();
    let creds = authority.mint(&Role::Agent(alpha.clone()), "agent-alpha", now(), Some(now() + 3600)).unwrap();
    let (agent, errors) = connect(&nats, &creds).await.unwrap();
    let got = seen(&services, "ksctl.>", async {
        agent.publish("ksctl.health.alpha", "ok".into()).await.unwrap();
        agent.publish("ksctl.health.beta", "forged".into()).await.unwrap();
        agent.publish("ksctl.request.delete", "forged".into()).await.unwrap();
        agent.publish("ksctl.result.cloud", "forged".into()).await.unwrap();
        agent.flush().await.unwrap();
    })
    .await;
    assert_eq!(
        got,
        vec!["ksctl.health.alpha".to_string()],
        "only its own heartbeat gets through; agent errors {:?}, state {:?}",
        errors.lock().unwrap(),
        agent.connection_state()
    );
    assert_eq!(violations(&errors).await.len(), 3, "{:?}", errors.lock().unwrap());
    // No subscription at all: not its own subject, not the inboxes where kubeconfigs travel.
    errors.lock().unwrap().clear();
    let _a = agent.subscribe("_INBOX.>").await.unwrap();
    let _b = agent.subscribe("ksctl.health.alpha").await.unwrap();
    agent.flush().await.unwrap();
    assert_eq!(violations(&errors).await.len(), 2, "{:?}", errors.lock().unwrap());

    // Revoked (as the k8s-controller does when the cluster is deleted): the live connection is
    // closed and the credential no longer connects; another cluster's is untouched.
    let beta =
        authority.mint(&Role::Agent(ClusterId::new("beta").unwrap()), "agent-beta", now(), Some(now() + 3600)).unwrap();
    let (beta_client, _) = connect(&nats, &beta).await.unwrap();
    let revoked = [(creds.public_key().unwrap(), now())].into_iter().collect();
    let jwt = authority.account_jwt(&revoked, now()).unwrap();
    auth::push_account(&nats.url(), NatsAuth::default(), &authority, jwt).await.unwrap();
    ksctl_tests::eventually(Duration::from_secs(10), "the revoked agent disconnected", || async {
        (agent.connection_state() != async_nats::connection::State::Connected).then_some(())
    })
    .await;
    let err = refused(&nats, &creds).await;
    assert!(err.contains("authorization") || err.contains("revoked"), "{err}");
    assert!(connect(&nats, &beta).await.is_ok());
    // The revocation survives a server restart (the resolver keeps the newest account JWT).
    drop(beta_client);
    let mut nats = nats;
    nats.restart();
    let err = refused(&nats, &creds).await;
    assert!(err.contains("authorization") || err.contains("revoked"), "revoked after restart too: {err}");
    assert!(connect(&nats, &beta).await.is_ok());

    // Expired: refused, and a connection made before expiry is closed when it expires.
    let short = authority.mint(&Role::Agent(alpha), "agent-short", now(), Some(now() + 2)).unwrap();
    let (short_client, short_said) = connect(&nats, &short).await.unwrap();
    ksctl_tests::eventually(Duration::from_secs(10), "the expired agent disconnected", || async {
        (short_client.connection_state() != async_nats::connection::State::Connected).then_some(())
    })
    .await;
    // The server tells the live connection why it closes it; a new connection after expiry is
    // refused, with "expired" or a plain "authorization violation" (depending on which check
    // of the server's sees it first).
    let err = refused(&nats, &short).await;
    let said = format!("{}; {err}", short_said.lock().unwrap().join("; ")).to_lowercase();
    assert!(said.contains("expired"), "{said}");
    assert!(err.contains("expired") || err.contains("authorization"), "{err}");
    // Signed by a key the operator does not know: refused.
    let stranger = auth::init(now()).unwrap().authority;
    let foreign = stranger.mint(&Role::Service, "x", now(), None).unwrap();
    let err = refused(&nats, &foreign).await;
    assert!(err.contains("authorization"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_credentials_send_requests_but_cannot_forge_commands_or_read_other_replies() {
    let nats = NatsServer::start_with_auth("127.0.0.1");
    let authority = nats.auth.as_ref().unwrap().authority();
    let services = nats.connect().await;
    let cli = authority.mint(&Role::Cli, "alice", now(), None).unwrap();
    let (alice, errors) = connect(&nats, &cli).await.unwrap();
    let got = seen(&services, ">", async {
        alice.publish("ksctl.request.create", "{}".into()).await.unwrap();
        for forged in [
            "ksctl.result.cloud",
            "ksctl.cloud.create",
            "ksctl.bootstrap.create",
            "ksctl.k8s.install",
            "ksctl.dead.cloud",
            "ksctl.health.alpha",
            "$KV.ksctl.cluster.alpha",
            "$JS.API.STREAM.DELETE.KSCTL_REQUESTS",
        ] {
            alice.publish(forged, "forged".into()).await.unwrap();
        }
        alice.flush().await.unwrap();
    })
    .await;
    assert_eq!(got, vec!["ksctl.request.create".to_string()]);
    assert_eq!(violations(&errors).await.len(), 8, "{:?}", errors.lock().unwrap());

    // Queries answer on the caller's own inbox prefix; nobody else's inbox can be read.
    let mut answers = services.subscribe("ksctl.query.get").await.unwrap();
    let responder = services.clone();
    tokio::spawn(async move {
        while let Some(m) = answers.next().await {
            if let Some(reply) = m.reply {
                responder.publish(reply, "kubeconfig".into()).await.unwrap();
            }
        }
    });
    // The responder is live once the server has read its subscription: a request of its own
    // answered proves it (see `seen`).
    services.request("ksctl.query.get", "{}".into()).await.unwrap();
    let reply = alice.request("ksctl.query.get", "{}".into()).await.unwrap();
    assert_eq!(&reply.payload[..], b"kubeconfig");
    let bob_creds = authority.mint(&Role::Cli, "bob", now(), None).unwrap();
    let (bob, bob_errors) = connect(&nats, &bob_creds).await.unwrap();
    let _all = bob.subscribe("_INBOX.>").await.unwrap();
    let _alices = bob.subscribe(format!("{}.>", auth::inbox_prefix(&cli.public_key().unwrap()))).await.unwrap();
    bob.flush().await.unwrap();
    assert_eq!(violations(&bob_errors).await.len(), 2, "{:?}", bob_errors.lock().unwrap());
    // Events are readable.
    let _events = bob.subscribe("ksctl.events.>").await.unwrap();
    bob.flush().await.unwrap();
    assert_eq!(violations(&bob_errors).await.len(), 2);
}
