//! `sse-backend`: the toolkit a Rust backend uses behind the SSE gateway.
//!
//! The gateway holds the streams; this crate is the backend side of the
//! contract (`docs/PROTOCOL.md`); its behaviour and decisions are
//! `docs/BACKEND.md`:
//!
//! * [`callback`]: the `POST /api/sse/callback` handler (connect/disconnect/
//!   roster), shared by the HTTP route and the in-process [`in_process::InProcessHook`].
//! * [`connections`]: the [`ConnectionManager`], `request_id` <-> token, one
//!   live stream per `request_id`, observers, targeted / broadcast /
//!   per-subject sends, and the gateway instances' rosters (`instance_lost`).
//! * [`identity`]: who is on a stream (bearer header, then cookie; JWT against
//!   a JWKS; `local-user` when OIDC is off).
//! * [`broadcaster`]: how events reach the gateway ([`broadcaster::HttpBroadcaster`]
//!   over `/internal/send` and `/internal/publish`; [`in_process`] for a
//!   gateway in the same process; [`amqp`] through RabbitMQ to many instances).
//! * [`tasks`], [`version`], [`subscriptions`], [`change`], [`lifecycle`],
//!   [`metrics`]: the services built on top.
//!
//! Invariants: no lock is held across an `.await`; observers and listeners
//! run outside locks, each isolated (a panic is logged and the others still
//! run); the library never reads the environment except through
//! [`config::BackendConfig::from_lookup`].

pub mod amqp;
pub mod broadcaster;
pub mod callback;
pub mod change;
pub mod clock;
pub mod config;
pub mod connections;
pub mod identity;
pub mod in_process;
pub mod lifecycle;
pub mod metrics;
mod observer;
pub mod subscriptions;
pub mod tasks;
pub mod version;

#[cfg(test)]
mod testing;

pub use broadcaster::{Broadcaster, Event, HttpBroadcaster, HttpBroadcasterConfig};
pub use callback::{CallbackConfig, CallbackHandler};
pub use connections::ConnectionManager;
pub use identity::{Identity, IdentityResolver, LOCAL_USER};
pub use metrics::Metrics;

/// Boxed future used at the trait seams, so traits stay object-safe.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
