//! A Kubernetes client for clusters whose bearer tokens expire (EKS: 15 minutes from minting).
//! The token is the presigned STS `GetCallerIdentity` token `switch` hands out, minted by a
//! cloud-controller over the bus — it alone holds the cloud's credentials, and no `exec` plugin
//! or AWS CLI runs here. Every request carries a token younger than [`REFRESH_AFTER`]: the
//! client asks for a new one once its token is that old, so a long install never outlives it.
use futures::future::BoxFuture;
use http::{HeaderValue, Request};
use ksctl_core::ClusterId;
use ksctl_core::kubeconfig::{Access, Auth};
use ksctl_runtime::PhaseError;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower::BoxError;
use tower::filter::{AsyncFilterLayer, AsyncPredicate};

/// EKS tokens are accepted for 15 minutes from minting; none older than this is sent.
pub const REFRESH_AFTER: Duration = Duration::from_secs(10 * 60);

/// A cluster's reach (server and CA) and a bearer token, as a cloud-controller minted them now.
async fn minted(bus: &async_nats::Client, id: &ClusterId) -> Result<(Access, String), String> {
    let kubeconfig = ksctl_bus::cloudquery::fresh_kubeconfig(bus, id).await.map_err(|e| e.to_string())?;
    let access = Access::parse_foreign(&kubeconfig)?;
    match &access.auth {
        Auth::Token(t) => {
            let token = t.clone();
            Ok((access, token))
        }
        Auth::ClientCertificate { .. } => Err(format!("the fresh kubeconfig of {id} carries no bearer token")),
    }
}

/// Mints a token (over the bus in the product).
type Mint = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// The token layer: puts a token no older than `refresh_after` on every request.
#[derive(Clone)]
struct FreshToken {
    mint: Mint,
    refresh_after: Duration,
    current: Arc<tokio::sync::Mutex<(String, Instant)>>,
}

impl FreshToken {
    async fn header(&self) -> Result<HeaderValue, BoxError> {
        let mut current = self.current.lock().await;
        if current.1.elapsed() >= self.refresh_after {
            *current = ((self.mint)().await?, Instant::now());
            tracing::debug!("bearer token refreshed");
        }
        let mut value = HeaderValue::try_from(format!("Bearer {}", current.0))?;
        value.set_sensitive(true);
        Ok(value)
    }
}

impl<B: Send + 'static> AsyncPredicate<Request<B>> for FreshToken {
    type Future = BoxFuture<'static, Result<Request<B>, BoxError>>;
    type Request = Request<B>;

    fn check(&mut self, mut request: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let value = this.header().await?;
            request.headers_mut().insert(http::header::AUTHORIZATION, value);
            Ok(request)
        })
    }
}

/// A client for `id` whose token a cloud-controller mints, refreshed as it ages.
pub async fn client(bus: &async_nats::Client, id: &ClusterId) -> Result<kube::Client, PhaseError> {
    // No answer (every cloud-controller busy or restarting) is worth waiting for; a cluster the
    // cloud does not know, or credentials it refuses, are said in the error either way.
    let (access, token) = minted(bus, id).await.map_err(PhaseError::retryable)?;
    let reach = Access { auth: Auth::Token(String::new()), ..access }.kubeconfig(id.as_str());
    let mut config = crate::kube_api::config_from(&reach).await?;
    // The layer below carries the token; the config's own (static) one would overwrite it.
    config.auth_info = Default::default();
    let (bus, id) = (bus.clone(), id.clone());
    let mint: Mint = Arc::new(move || {
        let (bus, id) = (bus.clone(), id.clone());
        Box::pin(async move { minted(&bus, &id).await.map(|(_, token)| token) })
    });
    let layer = AsyncFilterLayer::new(FreshToken {
        mint,
        refresh_after: REFRESH_AFTER,
        current: Arc::new(tokio::sync::Mutex::new((token, Instant::now()))),
    });
    let builder = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| PhaseError::permanent(format!("Kubernetes client: {e}")))?;
    // The filter clones the service it wraps per request: a buffer in front makes it cloneable.
    Ok(builder.with_layer(&tower::buffer::BufferLayer::new(64)).with_layer(&layer).build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn layer(refresh_after: Duration) -> (FreshToken, Arc<AtomicU32>) {
        let minted = Arc::new(AtomicU32::new(0));
        let n = minted.clone();
        let mint: Mint = Arc::new(move || {
            let k = n.fetch_add(1, Ordering::SeqCst) + 1;
            Box::pin(async move { Ok(format!("token-{k}")) })
        });
        let current = Arc::new(tokio::sync::Mutex::new(("token-0".to_string(), Instant::now())));
        (FreshToken { mint, refresh_after, current }, minted)
    }

    async fn sent(layer: &mut FreshToken) -> String {
        let req = layer.check(Request::new(())).await.unwrap();
        req.headers()[http::header::AUTHORIZATION].to_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn a_token_is_reused_until_it_is_old_and_then_minted_anew() {
        let (mut layer, minted) = layer(Duration::from_millis(200));
        assert_eq!(sent(&mut layer).await, "Bearer token-0");
        assert_eq!(sent(&mut layer).await, "Bearer token-0");
        assert_eq!(minted.load(Ordering::SeqCst), 0, "a young token is not replaced");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(sent(&mut layer).await, "Bearer token-1");
        assert_eq!(sent(&mut layer).await, "Bearer token-1");
        assert_eq!(minted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_failed_mint_fails_the_request_with_the_reason() {
        let (mut layer, _) = layer(Duration::ZERO);
        layer.mint = Arc::new(|| Box::pin(async { Err("no cloud-controller answered".to_string()) }));
        let err = layer.check(Request::new(())).await.unwrap_err();
        assert!(err.to_string().contains("no cloud-controller answered"), "{err}");
    }
}
