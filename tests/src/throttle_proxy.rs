//! An HTTP proxy in front of moto that throttles EC2 like EC2 does: token buckets per class of
//! action, and `503 RequestLimitExceeded` (EC2's own error document) when a bucket is empty.
//! moto has no throttling of its own; this is how the tests make the AWS provider meet it.
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// burst, refill per second
pub type Shape = (f64, f64);

/// Rewrites a response body from upstream, given the request's path (e.g. to point the
/// endpoint moto describes at a real server). Returns the body unchanged when it is not its.
pub type Rewrite = Arc<dyn Fn(&str, Bytes) -> Bytes + Send + Sync>;

/// No throttling at all.
pub const UNLIMITED: Shape = (f64::MAX, f64::MAX);

pub struct ThrottleProxy {
    pub port: u16,
    pub throttled: Arc<AtomicU64>,
    pub forwarded: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

struct Bucket {
    shape: Shape,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Takes a token if there is one (no queueing: that is what AWS does).
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.shape.1).min(self.shape.0);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

const THROTTLED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors><RequestID>ksctl-throttle-proxy</RequestID></Response>";

impl ThrottleProxy {
    /// Throttles EC2 actions with buckets `describe`, `mutate` and `run` (RunInstances);
    /// everything else (IAM, EKS, moto's own API) passes.
    pub async fn start(upstream: String, describe: Shape, mutate: Shape, run: Shape) -> Self {
        Self::start_rewriting(upstream, describe, mutate, run, Arc::new(|_, body| body)).await
    }

    /// [`Self::start`], with every upstream response body passed through `rewrite`.
    pub async fn start_rewriting(
        upstream: String,
        describe: Shape,
        mutate: Shape,
        run: Shape,
        rewrite: Rewrite,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let now = Instant::now();
        let bucket = |shape: Shape| Bucket { shape, tokens: shape.0, last: now };
        let buckets = Arc::new(Mutex::new([bucket(describe), bucket(mutate), bucket(run)]));
        let (throttled, forwarded) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let (t, f) = (throttled.clone(), forwarded.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (buckets, client, upstream, t, f, rewrite) =
                    (buckets.clone(), client.clone(), upstream.clone(), t.clone(), f.clone(), rewrite.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (buckets, client, upstream, t, f, rewrite) =
                            (buckets.clone(), client.clone(), upstream.clone(), t.clone(), f.clone(), rewrite.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let text = String::from_utf8_lossy(&body);
                            let action = text.split('&').find_map(|kv| kv.strip_prefix("Action=")).unwrap_or("");
                            let is_ec2 = text.contains("Version=2016-11-15");
                            if is_ec2 {
                                let i = if action == "RunInstances" {
                                    2
                                } else if ["Describe", "Get"].iter().any(|p| action.starts_with(p)) {
                                    0
                                } else {
                                    1
                                };
                                if !buckets.lock().unwrap()[i].take() {
                                    t.fetch_add(1, Ordering::Relaxed);
                                    return Ok::<_, hyper::Error>(
                                        Response::builder()
                                            .status(503)
                                            .header("content-type", "text/xml")
                                            .body(Full::new(Bytes::from_static(THROTTLED.as_bytes())))
                                            .unwrap(),
                                    );
                                }
                            }
                            f.fetch_add(1, Ordering::Relaxed);
                            let path = parts.uri.path().to_string();
                            let uri =
                                format!("{upstream}{}", parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"));
                            let mut out = Request::builder().method(parts.method).uri(uri);
                            for (k, v) in parts.headers.iter() {
                                out = out.header(k, v);
                            }
                            let resp = client.request(out.body(Full::new(body)).unwrap()).await;
                            Ok(match resp {
                                Ok(r) => {
                                    let (mut parts, body) = r.into_parts();
                                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                    let body = rewrite(&path, body);
                                    parts.headers.remove(hyper::header::CONTENT_LENGTH);
                                    Response::from_parts(parts, Full::new(body))
                                }
                                Err(e) => Response::builder()
                                    .status(502)
                                    .body(Full::new(Bytes::from(format!("upstream: {e}"))))
                                    .unwrap(),
                            })
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Self { port, throttled, forwarded, task }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for ThrottleProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
