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
