//! `sse-gateway`: terminates Server-Sent-Events streams for a backend.
//!
//! Two paths and nothing else (see `docs/ARCHITECTURE.md`):
//!
//! * **Connect path**: a client opens an SSE request; the gateway registers a
//!   random token as pending, asks the [`ConnectHook`] (the HTTP callback of
//!   SSEGateway, or an in-process backend), and applies the answer: an open
//!   stream with buffered events then `ready`, an in-stream `rejected` event,
//!   or an HTTP error. When an open stream ends the hook hears `disconnect`
//!   exactly once, with the reason.
//! * **Event path**: `/internal/send`, `/internal/publish`, a RabbitMQ
//!   message or an in-process [`GatewayHandle`] call is validated, encoded
//!   once, and handed by the router (by token or routing key) to each
//!   stream's bounded queue, as clones of one shared buffer.
//!
//! The public API is what an embedder needs: [`Config`] (read with
//! [`Config::from_lookup`]; its [`TlsConfig`] switches the public listener
//! to HTTPS with HTTP/2), [`Gateway::builder`], [`listen`], the
//! [`ConnectHook`] seam and its types, an embedding [`AppService`], and the
//! in-process [`GatewayHandle`]. Everything else is private to the crate.
//!
//! Architecture invariant: this crate knows nothing about tasks, leases or
//! devices; it moves opaque events to streams.

mod amqp;
mod amqp_stream;
mod api;
mod app;
mod callback_client;
mod chunk;
mod command;
pub mod config;
mod connect;
mod connection;
mod deliver;
mod disconnect;
mod error;
mod events;
mod expiry;
mod gateway;
mod headers;
mod history;
mod hook;
mod hyper_path;
mod keys;
mod metrics;
mod pacing;
mod protocols;
mod queue;
mod raw_stream;
mod retry;
mod router;
mod routes;
mod server;
mod shared;
mod tls;
mod writers;

pub use app::{AppBody, AppService};
pub use config::{AmqpConfig, Config, ConfigError, SETTINGS, Setting};
pub use deliver::{DeliveryError, SendStatus};
pub use gateway::{Gateway, GatewayBuilder, GatewayHandle, OutEvent};
pub use hook::{Accepted, ClientRequest, ConnectHook, DisconnectReason, HookFuture, HttpCallbackHook, Refusal};
pub use server::listen;
pub use tls::{TlsConfig, TlsError};

/// One glibc malloc arena for the whole process unless the operator set
/// `MALLOC_ARENA_MAX`. glibc gives each thread that allocates concurrently an
/// arena of its own (up to 8 per core); a stream's long-lived objects and
/// the short-lived ones of its connect then end up spread over several, and
/// the holes the short-lived ones leave stay resident. Measured: 2,689 →
/// 2,491 bytes of RSS per idle stream at 19,000 streams, same opens/s
/// (`docs/PERFORMANCE.md`). Small allocations mostly go through glibc's
/// per-thread caches, which take no arena lock. A binary calls it first in
/// `main`, before any thread exists (the gateway's and `sse-hub`'s do).
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter, under glibc's own lock.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
