//! Azure Resource Manager over REST, with one HTTP stack: a single `reqwest` client carries the
//! ARM calls and is also the transport of azure_identity's credential (Entra ID's token
//! endpoint), so TLS roots, proxies and timeouts are configured once.
//!
//! What ARM asks of a client, done here once for every resource type:
//! - a bearer token for `https://management.azure.com/.default`, cached and renewed by the
//!   credential;
//! - client-side rate limits shaped like ARM's per-subscription buckets (reads and writes), and
//!   on a `429` (or a `503` with `Retry-After`) waiting as long as the answer says, then retrying;
//!   `x-ms-ratelimit-remaining-subscription-*` is tracked so the metrics show how close we run;
//! - long-running operations: `Azure-AsyncOperation` polled until `Succeeded`/`Failed`/
//!   `Canceled`, else `Location` polled until it stops answering `202`, else the resource's
//!   `provisioningState`; each poll waits `Retry-After` (capped);
//! - errors classified: ARM's `4xx` are permanent (with ARM's code and message), `409` conflicts
//!   of a concurrent operation, `429` and `5xx` are retryable.
use crate::ratelimit::{Bucket, Rate};
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{ClientOptions, Transport};
use azure_identity::{ClientSecretCredential, ClientSecretCredentialOptions};
use backon::Retryable;
use ksctl_runtime::{Metrics, PhaseError};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SCOPE: &str = "https://management.azure.com/.default";
/// Where ARM is and how patient to be; from the cloud-controller's configuration.
#[derive(Debug, Clone)]
pub struct ArmSettings {
    /// `KSCTL_AZURE_ARM_ENDPOINT` (`https://management.azure.com`).
    pub endpoint: String,
    /// `KSCTL_AZURE_CA_FILE`: a PEM bundle trusted besides the system's roots (private clouds,
    /// TLS-inspecting proxies, tests).
    pub ca_file: Option<PathBuf>,
    /// `AZURE_AUTHORITY_HOST`: Entra ID for sovereign or private clouds (HTTPS); default public.
    pub authority_host: Option<String>,
    /// Longest wait between two polls of a long-running operation, whatever `Retry-After` says.
    pub max_poll_interval: Duration,
    /// How long a long-running operation may take before the phase gives up and retries.
    pub operation_timeout: Duration,
    /// Client-side buckets: reads and writes per subscription (ARM allows 12,000 reads and
    /// 1,200 writes an hour per subscription and principal, refilled continuously).
    pub reads: Rate,
    pub writes: Rate,
}

impl Default for ArmSettings {
    fn default() -> Self {
        Self {
            endpoint: "https://management.azure.com".into(),
            ca_file: None,
            authority_host: None,
            max_poll_interval: Duration::from_secs(30),
            operation_timeout: Duration::from_secs(1800),
            reads: Rate { burst: 250.0, per_sec: 12_000.0 / 3600.0 },
            writes: Rate { burst: 100.0, per_sec: 1_200.0 / 3600.0 },
        }
    }
}

/// The service principal, from `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_CLIENT_SECRET` and
/// `AZURE_SUBSCRIPTION_ID`, read once when the controller starts (never set per request).
#[derive(Clone)]
pub struct Principal {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub subscription_id: String,
}

impl std::fmt::Debug for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Principal")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("subscription_id", &self.subscription_id)
            .finish_non_exhaustive()
    }
}

impl Principal {
    /// The principal, or the names of the variables that are missing.
    pub fn from_env() -> Result<Self, String> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let get = |k: &str| lookup(k).filter(|v| !v.is_empty());
        let names = ["AZURE_TENANT_ID", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_SUBSCRIPTION_ID"];
        let missing: Vec<_> = names.iter().filter(|k| get(k).is_none()).copied().collect();
        if !missing.is_empty() {
            return Err(format!("Azure credentials are not configured: set {}", missing.join(", ")));
        }
        Ok(Self {
            tenant_id: get(names[0]).expect("checked"),
            client_id: get(names[1]).expect("checked"),
            client_secret: get(names[2]).expect("checked"),
            subscription_id: get(names[3]).expect("checked"),
        })
    }
}

/// An ARM answer: status, the headers a caller may need, the JSON body (`Null` if none).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub async_operation: Option<String>,
    pub location: Option<String>,
    pub retry_after: Option<Duration>,
    pub body: Value,
}

pub struct Arm {
    http: reqwest::Client,
    credential: Arc<ClientSecretCredential>,
    endpoint: String,
    subscription: String,
    settings: ArmSettings,
    /// Reads, writes.
    buckets: Mutex<[Bucket; 2]>,
    metrics: Arc<Metrics>,
}

impl Arm {
    pub fn new(principal: &Principal, settings: ArmSettings, metrics: Arc<Metrics>) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("ksctl-rs/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path).map_err(|e| format!("KSCTL_AZURE_CA_FILE {}: {e}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("KSCTL_AZURE_CA_FILE {}: {e}", path.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| format!("HTTP client: {e}"))?;
        let options = ClientSecretCredentialOptions {
            client_options: ClientOptions {
                transport: Some(Transport::new(Arc::new(http.clone()))),
                cloud: settings.authority_host.as_ref().map(|host| {
                    let mut custom = CustomConfiguration::default();
                    custom.authority_host = host.clone();
                    Arc::new(CloudConfiguration::from(custom))
                }),
                ..Default::default()
            },
        };
        let credential = ClientSecretCredential::new(
            &principal.tenant_id,
            principal.client_id.clone(),
            Secret::new(principal.client_secret.clone()),
            Some(options),
        )
        .map_err(|e| format!("Azure credential: {e}"))?;
        let now = Instant::now();
        Ok(Self {
            http,
            credential,
            endpoint: settings.endpoint.trim_end_matches('/').to_string(),
            subscription: principal.subscription_id.clone(),
            buckets: Mutex::new([Bucket::new(settings.reads, now), Bucket::new(settings.writes, now)]),
            settings,
            metrics,
        })
    }

    pub fn subscription(&self) -> &str {
        &self.subscription
    }

    /// `/subscriptions/<id>` + `path`.
    pub fn id(&self, path: &str) -> String {
        format!("/subscriptions/{}{path}", self.subscription)
    }

    async fn token(&self) -> Result<String, PhaseError> {
        let t = self.credential.get_token(&[SCOPE], None).await.map_err(|e| {
            // A refused secret will not get better by retrying; an unreachable endpoint may.
            let msg = format!("Azure sign-in failed: {e}");
            if matches!(e.kind(), azure_core::error::ErrorKind::Credential) {
                PhaseError::permanent(msg)
            } else {
                PhaseError::retryable(msg)
            }
        })?;
        Ok(t.token.secret().to_string())
    }

    /// One call (absolute URL or a path under the endpoint), through the rate limits, retried
    /// on throttling and transient failures. 4xx answers other than 408/409/429 are returned.
    pub async fn call(&self, method: &str, url: &str, body: Option<&Value>) -> Result<Answer, PhaseError> {
        let url = if url.starts_with("https://") || url.starts_with("http://") {
            url.to_string()
        } else {
            format!("{}{url}", self.endpoint)
        };
        let tries = AtomicU32::new(0);
        let failed = (|| self.attempt(method, &url, body, &tries))
            .retry(ksctl_core::backoff::cloud_call())
            .when(|f| matches!(f, Failure::Again { .. }))
            .adjust(|f, pause| {
                match f {
                    // ARM's own Retry-After wins over the policy's pause, both capped.
                    Failure::Again { retry_after: Some(after), .. } if pause.is_some() => Some(*after),
                    _ => pause,
                }
                .map(|d| d.min(self.settings.max_poll_interval))
            })
            .await;
        match failed {
            Ok(answer) => Ok(answer),
            Err(Failure::Stop(e)) => Err(e),
            Err(Failure::Again { why, .. }) => Err(PhaseError::retryable(format!(
                "{why} (after {} attempts)",
                ksctl_core::backoff::CLOUD_CALL_ATTEMPTS
            ))),
        }
    }

    /// One try of [`Arm::call`], through the rate limits; `tries` counts them for the metrics.
    async fn attempt(
        &self,
        method: &str,
        url: &str,
        body: Option<&Value>,
        tries: &AtomicU32,
    ) -> Result<Answer, Failure> {
        let write = method != "GET";
        let wait = self.buckets.lock().expect("bucket lock")[write as usize].reserve(Instant::now());
        if !wait.is_zero() {
            self.metrics.add("cloud_api_rate_limited_seconds_total", &[("provider", "azure")], wait.as_secs_f64());
            tokio::time::sleep(wait).await;
        }
        let token = self.token().await.map_err(Failure::Stop)?;
        let verb = method.parse().map_err(|_| Failure::Stop(PhaseError::permanent(format!("bad method {method}"))))?;
        let mut req = self.http.request(verb, url).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.metrics.inc("cloud_api_attempts_total", &[("provider", "azure")]);
        if tries.fetch_add(1, Ordering::SeqCst) == 0 {
            self.metrics
                .inc("cloud_api_calls_total", &[("provider", "azure"), ("operation", &operation_label(method, url))]);
        } else {
            self.metrics.inc("cloud_api_retries_total", &[("provider", "azure")]);
        }
        let resp =
            req.send().await.map_err(|e| Failure::Again { why: format!("{method} {url}: {e}"), retry_after: None })?;
        let (answer, remaining) = read_answer(resp).await;
        if let Some(left) = remaining {
            tracing::debug!(remaining = %left, "ARM requests left in this hour's bucket");
        }
        match answer.status {
            429 | 503 | 500 | 502 | 504 | 408 => {
                if answer.status == 429 {
                    self.metrics.inc("cloud_api_throttled_total", &[("provider", "azure")]);
                }
                let why = format!("{method} {url}: HTTP {} {}", answer.status, arm_error(&answer.body));
                Err(Failure::Again { why, retry_after: answer.retry_after })
            }
            _ => Ok(answer),
        }
    }

    /// GET; `None` when ARM answers 404.
    pub async fn get(&self, path: &str) -> Result<Option<Value>, PhaseError> {
        let a = self.call("GET", path, None).await?;
        match a.status {
            200 => Ok(Some(a.body)),
            404 => Ok(None),
            _ => Err(failure("GET", path, &a)),
        }
    }

    /// PUT (create or update) and wait for it; returns the resource as ARM has it afterwards.
    pub async fn put(&self, path: &str, body: &Value) -> Result<Value, PhaseError> {
        let a = self.call("PUT", path, Some(body)).await?;
        if !(200..300).contains(&a.status) {
            return Err(failure("PUT", path, &a));
        }
        self.wait(path, &a).await?;
        self.get(path).await?.ok_or_else(|| PhaseError::retryable(format!("{path}: gone right after its PUT")))
    }

    /// DELETE and wait for it; "not found" is done.
    pub async fn delete(&self, path: &str) -> Result<(), PhaseError> {
        let a = self.call("DELETE", path, None).await?;
        match a.status {
            404 | 204 => Ok(()),
            200..=299 => self.wait(path, &a).await,
            _ => Err(failure("DELETE", path, &a)),
        }
    }

    /// POST an action (`listClusterAdminCredential`, …) and return its answer's body.
    pub async fn post(&self, path: &str, body: Option<&Value>) -> Result<Value, PhaseError> {
        let a = self.call("POST", path, body).await?;
        if !(200..300).contains(&a.status) {
            return Err(failure("POST", path, &a));
        }
        Ok(a.body)
    }

    /// Polls a long-running operation to its end (see the module's comment for the order).
    async fn wait(&self, path: &str, first: &Answer) -> Result<(), PhaseError> {
        let deadline = Instant::now() + self.settings.operation_timeout;
        let mut retry_after = first.retry_after;
        loop {
            if Instant::now() > deadline {
                return Err(PhaseError::retryable(format!(
                    "{path}: operation still running after {:?}",
                    self.settings.operation_timeout
                )));
            }
            let state = if let Some(op) = &first.async_operation {
                self.sleep_poll(retry_after).await;
                let a = self.call("GET", op, None).await?;
                retry_after = a.retry_after;
                if a.status != 200 {
                    return Err(failure("GET", op, &a));
                }
                a.body.get("status").and_then(Value::as_str).unwrap_or("InProgress").to_string()
            } else if let Some(loc) = &first.location {
                self.sleep_poll(retry_after).await;
                let a = self.call("GET", loc, None).await?;
                retry_after = a.retry_after;
                match a.status {
                    202 => "InProgress".into(),
                    200..=299 => "Succeeded".into(),
                    _ => return Err(failure("GET", loc, &a)),
                }
            } else {
                // Synchronous answer, or one whose state is on the resource itself.
                let body = if first.body.is_null() {
                    self.get(path).await?.unwrap_or(Value::Null)
                } else {
                    first.body.clone()
                };
                match provisioning_state(&body) {
                    None | Some("Succeeded") => return Ok(()),
                    Some(_) => {
                        self.sleep_poll(retry_after).await;
                        match self.get(path).await? {
                            None => return Ok(()),
                            Some(b) => provisioning_state(&b).unwrap_or("Succeeded").to_string(),
                        }
                    }
                }
            };
            match state.as_str() {
                "Succeeded" => return Ok(()),
                "Failed" | "Canceled" => {
                    return Err(PhaseError::permanent(format!("{path}: the operation ended {state}")));
                }
                _ => {}
            }
        }
    }

    async fn sleep_poll(&self, retry_after: Option<Duration>) {
        let d = retry_after.unwrap_or(Duration::from_secs(2)).min(self.settings.max_poll_interval);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

fn provisioning_state(body: &Value) -> Option<&str> {
    body.pointer("/properties/provisioningState").and_then(Value::as_str)
}

/// Why one try of a call did not answer.
enum Failure {
    /// Transient (a connection failure, throttling, a server error): tried again.
    Again {
        why: String,
        retry_after: Option<Duration>,
    },
    Stop(PhaseError),
}

/// `PUT Microsoft.Network/virtualNetworks` and the like, for the call metrics.
fn operation_label(method: &str, url: &str) -> String {
    let path = url.split('?').next().unwrap_or(url);
    let mut it = path.split('/').skip_while(|p| *p != "providers").skip(1);
    match (it.next(), it.next()) {
        (Some(ns), Some(t)) => format!("{method} {ns}/{t}"),
        _ if path.to_ascii_lowercase().contains("/resourcegroups/") => format!("{method} resourceGroups"),
        _ => method.to_string(),
    }
}

/// ARM's error body `{"error":{"code","message"}}` as `code: message`.
pub fn arm_error(body: &Value) -> String {
    let e = body.get("error").unwrap_or(body);
    match (e.get("code").and_then(Value::as_str), e.get("message").and_then(Value::as_str)) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        _ => body.to_string(),
    }
}

/// An answer that is not what the call wanted: permanent unless ARM says to come back.
fn failure(method: &str, path: &str, a: &Answer) -> PhaseError {
    let code = a.body.pointer("/error/code").and_then(Value::as_str).unwrap_or("");
    let msg = format!("{method} {path}: HTTP {} {}", a.status, arm_error(&a.body));
    // A concurrent operation on the same resource, or a dependency still being deleted.
    let transient = a.status == 409
        && matches!(code, "AnotherOperationInProgress" | "OperationNotAllowed" | "RetryableError" | "Conflict");
    if transient || a.status >= 500 { PhaseError::retryable(msg) } else { PhaseError::permanent(msg) }
}

/// The answer, and the smallest remaining-requests header if ARM sent one.
async fn read_answer(resp: reqwest::Response) -> (Answer, Option<String>) {
    let h = resp.headers();
    let header = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_string);
    let retry_after = header("retry-after").and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
    let remaining = header("x-ms-ratelimit-remaining-subscription-writes")
        .or_else(|| header("x-ms-ratelimit-remaining-subscription-reads"));
    let (async_operation, location) = (header("azure-asyncoperation"), header("location"));
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
    (Answer { status, async_operation, location, retry_after, body }, remaining)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_status_and_code() {
        let a = |status, code: &str| Answer {
            status,
            async_operation: None,
            location: None,
            retry_after: None,
            body: serde_json::json!({"error": {"code": code, "message": "m"}}),
        };
        assert!({
            let e = failure("PUT", "/x", &a(400, "InvalidRequestContent"));
            e.is_permanent() && e.message().contains("InvalidRequestContent: m")
        });
        assert!(failure("PUT", "/x", &a(409, "AnotherOperationInProgress")).is_retryable());
        assert!(failure("PUT", "/x", &a(409, "InvalidResourceReference")).is_permanent());
        assert!(failure("GET", "/x", &a(500, "InternalServerError")).is_retryable());
    }

    #[test]
    fn operations_are_labelled_by_resource_type() {
        let u = "https://management.azure.com/subscriptions/s/resourceGroups/g/providers/Microsoft.Network/virtualNetworks/v?api-version=1";
        assert_eq!(operation_label("PUT", u), "PUT Microsoft.Network/virtualNetworks");
        assert_eq!(
            operation_label("DELETE", "https://h/subscriptions/s/resourcegroups/g?api-version=1"),
            "DELETE resourceGroups"
        );
    }

    #[test]
    fn missing_credentials_are_named() {
        let e = Principal::from_lookup(|k| (k != "AZURE_CLIENT_SECRET").then(|| "x".to_string())).unwrap_err();
        assert_eq!(e, "Azure credentials are not configured: set AZURE_CLIENT_SECRET");
        let p = Principal::from_lookup(|k| Some(format!("v-{k}"))).unwrap();
        assert_eq!(p.subscription_id, "v-AZURE_SUBSCRIPTION_ID");
        assert!(!format!("{p:?}").contains("v-AZURE_CLIENT_SECRET"), "the secret is not printed");
    }
}
