//! `/livez`, `/readyz` and `/metrics` over HTTP/1.1 with `hyper` (already in the workspace,
//! through kube and the cloud SDKs): enough for probes and Prometheus, without a web framework.
use crate::metrics::{self, Metrics};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;

/// How long a client may take to send its request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last in all (a client that takes the answer slowly, too).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 32;

/// Binds `addr` and serves until the process ends. Returns the bound address.
pub async fn serve(addr: &str, metrics: Arc<Metrics>, ready: Arc<AtomicBool>) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tracing::info!(%local, "health and metrics endpoint listening");
    // A client that connects and says nothing (or many of them) must not pile up tasks.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let (metrics, ready) = (metrics.clone(), ready.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let service = service_fn(move |req: Request<Incoming>| {
                    let answer = respond(req.uri().path(), &metrics, &ready);
                    async move { Ok::<_, std::convert::Infallible>(answer) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(sock), service);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
            });
        }
    });
    Ok(local)
}

fn respond(path: &str, metrics: &Metrics, ready: &AtomicBool) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let (status, content_type, body) = match path {
        "/livez" => (StatusCode::OK, TEXT, "ok\n".to_string()),
        "/readyz" if ready.load(Ordering::SeqCst) => (StatusCode::OK, TEXT, "ready\n".to_string()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n".to_string()),
        "/metrics" => (StatusCode::OK, metrics::CONTENT_TYPE, metrics.render()),
        _ => (StatusCode::NOT_FOUND, TEXT, "not found\n".to_string()),
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("a status, a header and a body make a response")
}
