//! The bus: every stream, subject and consumer name (declared once, here), stream set-up, the
//! ack-owning envelope, durable publishing with deterministic message ids, events, and the worker
//! loop every service runs its consumers with.

pub mod auth;
pub mod cloudquery;
pub mod connect;
pub mod envelope;
pub mod error;
pub mod metrics;
pub mod publish;
pub mod subjects;
pub mod worker;

pub use connect::NatsAuth;
pub use envelope::Envelope;
pub use error::{BusError, HandlerError};
pub use metrics::Metrics;
pub use publish::Publisher;
pub use subjects::{BusSettings, ensure_streams};
pub use worker::{Handler, WorkerOptions, run_consumer};
