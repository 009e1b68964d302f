//! `/livez`, `/readyz` and `/metrics` on a tiny HTTP/1.0 responder: enough for probes and
//! Prometheus, without a web framework in every service.
use crate::metrics::Metrics;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// How long a client may take to send its request, or to take the answer.
const IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
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
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let (metrics, ready) = (metrics.clone(), ready.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let mut buf = [0u8; 1024];
                let n = match tokio::time::timeout(IO_TIMEOUT, sock.read(&mut buf)).await {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("/");
                let (status, body) = match path {
                    "/livez" => ("200 OK", "ok\n".to_string()),
                    "/readyz" if ready.load(Ordering::SeqCst) => ("200 OK", "ready\n".to_string()),
                    "/readyz" => ("503 Service Unavailable", "not ready\n".to_string()),
                    "/metrics" => ("200 OK", metrics.render()),
                    _ => ("404 Not Found", "not found\n".to_string()),
                };
                let resp = format!(
                    "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = tokio::time::timeout(IO_TIMEOUT, sock.write_all(resp.as_bytes())).await;
            });
        }
    });
    Ok(local)
}
