use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("connecting to NATS at {url}: {source}")]
    Connect { url: String, source: async_nats::ConnectError },
    /// Credentials that cannot be read or parsed: fix the configuration.
    #[error("{0}")]
    Auth(String),
    #[error("setting up stream {stream}: {message}")]
    Setup { stream: String, message: String },
    #[error("publishing to {subject}: {message}")]
    Publish { subject: String, message: String },
    #[error("consuming from {consumer}: {message}")]
    Consume { consumer: String, message: String },
}

impl BusError {
    /// Bus errors are transient from a handler's point of view: the message is retried later.
    pub fn retryable(&self) -> bool {
        !matches!(self, Self::Setup { .. } | Self::Auth(_))
    }
}

/// How a handler ends a message it could not finish; the worker picks the ack kind from it.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Try again later: NAK with a delay (`None`: the worker's backoff).
    #[error("{reason} (will retry)")]
    Retry { reason: String, delay: Option<Duration> },
    /// Never try again: TERM. The handler has already recorded the failure where users see it.
    #[error("{0}")]
    Permanent(String),
}

impl HandlerError {
    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry { reason: reason.into(), delay: None }
    }
}

impl From<BusError> for HandlerError {
    fn from(e: BusError) -> Self {
        if e.retryable() { Self::retry(e.to_string()) } else { Self::Permanent(e.to_string()) }
    }
}
