//! Client-side rate limiting and call accounting for every AWS client of the process.
//!
//! EC2 throttles each account and region with token buckets per class of action (non-mutating,
//! mutating, resource-intensive). We keep the same buckets on our side so that a burst of
//! cluster creates queues here instead of turning into `RequestLimitExceeded`; the throttles that
//! still happen (other tools in the account, other replicas) are retried by the SDK's standard
//! retry with jittered backoff. The limiter sits in the HTTP connector because that is where
//! every *attempt* passes and where an async wait is possible (interceptors are synchronous).
use crate::ratelimit::{Bucket, Rate};
use aws_sdk_ec2::config::ConfigBag;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, Metadata};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use ksctl_runtime::Metrics;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The class of an AWS action, as EC2 buckets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `Describe*`, `Get*`, `List*` and REST `GET`s.
    Describe,
    /// Everything that changes something.
    Mutate,
    /// `RunInstances`, which EC2 meters in its own, smaller bucket.
    RunInstances,
}

/// One bucket per class. The defaults are EC2's published figures for an account and region
/// (non-mutating 100 / 20 per s, mutating 200 / 5 per s, resource-intensive 50 / 5 per s).
/// They apply per cloud-controller replica: with N replicas on one account, divide by N.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub describe: Rate,
    pub mutate: Rate,
    pub run: Rate,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            describe: Rate { burst: 100.0, per_sec: 20.0 },
            mutate: Rate { burst: 200.0, per_sec: 5.0 },
            run: Rate { burst: 50.0, per_sec: 5.0 },
        }
    }
}

impl Limits {
    /// `describe=100/20,mutate=200/5,run=50/5` (any subset; the rest keep their defaults);
    /// `off` disables client-side limiting.
    pub fn parse(s: &str) -> Result<Option<Self>, String> {
        let s = s.trim();
        if s == "off" {
            return Ok(None);
        }
        let mut l = Self::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = || {
                format!(
                    "bad AWS rate limit {part:?}: expected class=burst/per_second, class one of describe, mutate, run"
                )
            };
            let (class, shape) = part.split_once('=').ok_or_else(bad)?;
            let (burst, per_sec) = shape.split_once('/').ok_or_else(bad)?;
            let rate = Rate {
                burst: burst.trim().parse().map_err(|_| bad())?,
                per_sec: per_sec.trim().parse().map_err(|_| bad())?,
            };
            if rate.burst < 1.0 || rate.per_sec <= 0.0 {
                return Err(bad());
            }
            match class.trim() {
                "describe" => l.describe = rate,
                "mutate" => l.mutate = rate,
                "run" => l.run = rate,
                _ => return Err(bad()),
            }
        }
        Ok(Some(l))
    }
}

/// The buckets of one account and region.
#[derive(Debug)]
pub struct Limiter {
    buckets: Mutex<[Bucket; 3]>,
}

impl Limiter {
    pub fn new(l: Limits) -> Self {
        let now = Instant::now();
        Self {
            buckets: Mutex::new([Bucket::new(l.describe, now), Bucket::new(l.mutate, now), Bucket::new(l.run, now)]),
        }
    }

    /// How long the caller must wait before sending an action of `class`.
    pub fn reserve(&self, class: Class) -> Duration {
        let i = match class {
            Class::Describe => 0,
            Class::Mutate => 1,
            Class::RunInstances => 2,
        };
        self.buckets.lock().expect("limiter lock")[i].reserve(Instant::now())
    }
}

/// Classifies a request: query-protocol APIs (EC2, IAM, STS) name the action in the form body;
/// REST APIs (EKS) by their method.
pub fn classify(method: &str, body: Option<&[u8]>) -> Class {
    let action = body
        .and_then(|b| std::str::from_utf8(b).ok())
        .and_then(|b| b.split('&').find_map(|kv| kv.strip_prefix("Action=")).map(str::to_string));
    match action {
        Some(a) if a == "RunInstances" => Class::RunInstances,
        Some(a) if ["Describe", "Get", "List"].iter().any(|p| a.starts_with(p)) => Class::Describe,
        Some(_) => Class::Mutate,
        None if method == "GET" || method == "HEAD" => Class::Describe,
        None => Class::Mutate,
    }
}

/// Wraps the SDK's HTTPS client: waits for the limiter before each attempt and counts attempts
/// (`cloud_api_attempts_total`) and throttled answers (`cloud_api_throttled_total`, HTTP 503
/// `RequestLimitExceeded` from EC2, 429 from REST APIs).
#[derive(Clone)]
pub struct LimitedClient {
    inner: SharedHttpClient,
    limiter: Option<Arc<Limiter>>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for LimitedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LimitedClient").field("limiter", &self.limiter).finish()
    }
}

impl LimitedClient {
    pub fn new(limiter: Option<Arc<Limiter>>, metrics: Arc<Metrics>) -> Self {
        use aws_smithy_http_client::tls;
        let inner = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::AwsLc))
            .build_https();
        Self { inner, limiter, metrics }
    }
}

impl HttpClient for LimitedClient {
    fn http_connector(&self, settings: &HttpConnectorSettings, components: &RuntimeComponents) -> SharedHttpConnector {
        SharedHttpConnector::new(LimitedConnector {
            inner: self.inner.http_connector(settings, components),
            client: self.clone(),
        })
    }
}

#[derive(Debug)]
struct LimitedConnector {
    inner: SharedHttpConnector,
    client: LimitedClient,
}

impl HttpConnector for LimitedConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let wait = match &self.client.limiter {
            Some(l) => l.reserve(classify(request.method(), request.body().bytes())),
            None => Duration::ZERO,
        };
        let (inner, metrics) = (self.inner.clone(), self.client.metrics.clone());
        HttpConnectorFuture::new(async move {
            if !wait.is_zero() {
                metrics.add("cloud_api_rate_limited_seconds_total", &[("provider", "aws")], wait.as_secs_f64());
                tokio::time::sleep(wait).await;
            }
            metrics.inc("cloud_api_attempts_total", &[("provider", "aws")]);
            let response = inner.call(request).await?;
            if matches!(response.status().as_u16(), 429 | 503) {
                metrics.inc("cloud_api_throttled_total", &[("provider", "aws")]);
            }
            Ok(response)
        })
    }
}

/// Counts every AWS call once, however many attempts it takes (`cloud_api_calls_total` by
/// service and operation); attempts minus calls is what the SDK retried.
#[derive(Clone)]
pub struct CallCounter(pub Arc<Metrics>);

impl std::fmt::Debug for CallCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallCounter")
    }
}

impl Intercept for CallCounter {
    fn name(&self) -> &'static str {
        "ksctl-call-counter"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let (service, op) = cfg.load::<Metadata>().map(|m| (m.service(), m.name())).unwrap_or(("unknown", "unknown"));
        self.0.inc("cloud_api_calls_total", &[("provider", "aws"), ("service", service), ("op", op)]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_classified_like_ec2_does() {
        assert_eq!(classify("POST", Some(b"Action=DescribeVpcs&Version=2016-11-15")), Class::Describe);
        assert_eq!(classify("POST", Some(b"Version=2016-11-15&Action=RunInstances")), Class::RunInstances);
        assert_eq!(classify("POST", Some(b"Action=CreateVpc&CidrBlock=10.0.0.0%2F16")), Class::Mutate);
        assert_eq!(classify("POST", Some(b"Action=GetRole&RoleName=x")), Class::Describe);
        assert_eq!(classify("GET", None), Class::Describe);
        assert_eq!(classify("POST", Some(b"{\"name\":\"c\"}")), Class::Mutate);
        assert_eq!(classify("DELETE", None), Class::Mutate);
    }

    #[test]
    fn limits_parse_and_reject_nonsense() {
        assert_eq!(Limits::parse("").unwrap(), Some(Limits::default()));
        assert_eq!(Limits::parse("off").unwrap(), None);
        let l = Limits::parse("describe=50/10, run=5/1").unwrap().unwrap();
        assert_eq!(l.describe, Rate { burst: 50.0, per_sec: 10.0 });
        assert_eq!(l.run, Rate { burst: 5.0, per_sec: 1.0 });
        assert_eq!(l.mutate, Limits::default().mutate);
        for bad in ["describe", "describe=1", "writes=1/1", "describe=0/1", "mutate=5/0", "run=a/b"] {
            assert!(Limits::parse(bad).is_err(), "{bad}");
        }
    }
}
