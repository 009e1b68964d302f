//! Plays aws-iam-authenticator for a test EKS cluster: the API server's webhook token
//! authenticator (`--authentication-token-webhook-config-file`). An EKS token is `k8s-aws-v1.` +
//! base64url of a presigned STS `GetCallerIdentity` URL. It is accepted when the URL is STS's,
//! its signed `x-k8s-aws-id` header is this cluster, it is less than 15 minutes old, its SigV4
//! signature verifies, and STS — moto — says whose access key signed it and that caller is
//! mapped (as the `aws-auth` ConfigMap's `mapUsers` maps IAM users).
//!
//! moto does not verify signatures, and reads the caller's key only from an `Authorization`
//! header: so this authenticator verifies the signature itself with the secret moto issued for
//! that key (what STS does), then asks moto who owns the key with the signature moved into a
//! header.
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long aws-iam-authenticator accepts a token after its `X-Amz-Date`.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Who may call the cluster: IAM ARN → (Kubernetes user name, groups).
pub type UserMap = BTreeMap<String, (String, Vec<String>)>;

#[derive(Clone)]
struct Settings {
    sts: String,
    region: String,
    cluster: String,
    /// access key id → secret (the keys moto issued).
    secrets: BTreeMap<String, String>,
    users: UserMap,
}

pub struct EksAuthenticator {
    pub port: u16,
    /// Every review: `Ok(user)` or `Err(why it was refused)`.
    pub reviews: Arc<Mutex<Vec<Result<String, String>>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Seconds since the epoch of an `X-Amz-Date` (`20261204T101500Z`).
fn amz_date(s: &str) -> Option<u64> {
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    if s.len() != 16 || &s[8..9] != "T" || !s.ends_with('Z') {
        return None;
    }
    let (y, m, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(9..11)? * 3600 + n(11..13)? * 60 + n(13..15)?;
    u64::try_from(secs).ok()
}

fn query(url: &str) -> BTreeMap<String, String> {
    let q = url.split_once('?').map(|(_, q)| q).unwrap_or("");
    q.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// `%2F` → `/` and the like, for the few query values read here.
fn unescape(v: &str) -> String {
    let mut out = Vec::new();
    let b = v.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(x) = u8::from_str_radix(&v[i + 1..i + 3], 16)
        {
            out.push(x);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Settings {
    /// The token's presigned URL and its query, or why it is not an EKS token for this cluster.
    fn check(&self, token: &str, now: u64) -> Result<(String, BTreeMap<String, String>), String> {
        use base64::Engine;
        let b64 = token.strip_prefix("k8s-aws-v1.").ok_or("not an EKS token (no k8s-aws-v1. prefix)")?;
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64.trim_end_matches('='))
            .map_err(|_| "token is not base64url")?;
        let url = String::from_utf8(url).map_err(|_| "token is not a URL")?;
        let host = format!("https://sts.{}.amazonaws.com/?", self.region);
        if !url.starts_with(&host) {
            return Err(format!("not an STS URL of {}", self.region));
        }
        let q = query(&url);
        let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
        if get("Action") != "GetCallerIdentity" {
            return Err("not a GetCallerIdentity request".into());
        }
        if !unescape(get("X-Amz-SignedHeaders")).split(';').any(|h| h == "x-k8s-aws-id") {
            return Err("the cluster id header is not signed".into());
        }
        let date = amz_date(get("X-Amz-Date")).ok_or("no X-Amz-Date")?;
        if now > date + TOKEN_LIFETIME.as_secs() {
            return Err("X-Amz-Date parameter is expired (15 minute expiration)".into());
        }
        if date > now + 60 {
            return Err("X-Amz-Date is in the future".into());
        }
        // What STS does: recompute the signature with the key's secret, for this cluster.
        let credential = unescape(get("X-Amz-Credential"));
        let key = credential.split('/').next().unwrap_or_default().to_string();
        let secret = self.secrets.get(&key).ok_or_else(|| format!("unknown access key {key}"))?;
        let creds = aws_sdk_ec2::config::Credentials::new(&key, secret, None, None, "authenticator");
        let expected = ksctl_cloud_controller::aws::token::presigned_url(
            &creds,
            &self.region,
            &self.cluster,
            UNIX_EPOCH + Duration::from_secs(date),
        )?;
        if query(&expected).get("X-Amz-Signature") != q.get("X-Amz-Signature") {
            return Err("the signature does not match (other credentials, or another cluster)".into());
        }
        Ok((url, q))
    }

    /// The IAM ARN moto says owns the key that signed `q`.
    async fn caller(&self, q: &BTreeMap<String, String>) -> Result<String, String> {
        let get = |k: &str| unescape(q.get(k).map(String::as_str).unwrap_or(""));
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential={}, SignedHeaders={}, Signature={}",
            get("X-Amz-Credential"),
            get("X-Amz-SignedHeaders"),
            get("X-Amz-Signature")
        );
        let req = Request::get(format!("{}/?Action=GetCallerIdentity&Version=2011-06-15", self.sts))
            .header("authorization", auth)
            .header("x-k8s-aws-id", &self.cluster)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let resp = client.request(req).await.map_err(|e| format!("STS: {e}"))?;
        let status = resp.status();
        let body = resp.into_body().collect().await.map_err(|e| format!("STS: {e}"))?.to_bytes();
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            return Err(format!("STS refused: {status} {text}"));
        }
        let arn = text.split("<Arn>").nth(1).and_then(|r| r.split("</Arn>").next()).ok_or("STS named no caller")?;
        Ok(arn.to_string())
    }

    async fn review(&self, token: &str) -> Result<(String, Vec<String>), String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        let (_, q) = self.check(token, now)?;
        let arn = self.caller(&q).await?;
        self.users.get(&arn).cloned().ok_or_else(|| format!("{arn} is not mapped to a user of this cluster"))
    }
}

impl EksAuthenticator {
    /// Serves TokenReviews for `cluster` in `region`, asking `sts` (moto's URL) who signed.
    pub async fn start(
        sts: String,
        region: &str,
        cluster: &str,
        secrets: BTreeMap<String, String>,
        users: UserMap,
    ) -> Self {
        let settings = Settings { sts, region: region.into(), cluster: cluster.into(), secrets, users };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind authenticator");
        let port = listener.local_addr().unwrap().port();
        let reviews = Arc::new(Mutex::new(vec![]));
        let seen = reviews.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (settings, seen) = (settings.clone(), seen.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (settings, seen) = (settings.clone(), seen.clone());
                        async move {
                            let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                            let review: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                            let token = review["spec"]["token"].as_str().unwrap_or_default();
                            let verdict = settings.review(token).await;
                            seen.lock().unwrap().push(verdict.clone().map(|(user, _)| user));
                            let status = match verdict {
                                Ok((username, groups)) => serde_json::json!({
                                    "authenticated": true,
                                    "user": {"username": username, "groups": groups},
                                }),
                                Err(e) => serde_json::json!({"authenticated": false, "error": e}),
                            };
                            let answer = serde_json::json!({
                                "apiVersion": review["apiVersion"],
                                "kind": "TokenReview",
                                "status": status,
                            });
                            Ok::<_, hyper::Error>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(answer.to_string())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        });
        Self { port, reviews, task }
    }

    /// The API server's `--authentication-token-webhook-config-file` (a kubeconfig).
    pub fn webhook_config(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: authenticator\n  cluster:\n    server: http://127.0.0.1:{}/authenticate\nusers:\n- name: apiserver\n  user: {{}}\ncontexts:\n- name: webhook\n  context:\n    cluster: authenticator\n    user: apiserver\ncurrent-context: webhook\n",
            self.port
        )
    }

    /// The users of the reviews accepted so far.
    pub fn accepted(&self) -> Vec<String> {
        self.reviews.lock().unwrap().iter().filter_map(|r| r.clone().ok()).collect()
    }
}

impl Drop for EksAuthenticator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates_are_read_as_utc() {
        assert_eq!(amz_date("19700101T000000Z"), Some(0));
        assert_eq!(amz_date("20261204T101500Z"), Some(1_796_379_300));
        assert_eq!(amz_date("20240229T235959Z"), Some(1_709_251_199));
        assert_eq!(amz_date("2026-12-04"), None);
    }
}
