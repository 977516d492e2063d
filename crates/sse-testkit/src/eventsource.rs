//! A client that connects and reconnects the way the browser's `EventSource`
//! does, for storm tests: an answer other than 200 `text/event-stream` is
//! fatal (the browser gives up for good, which is what a gateway must never
//! cause by being busy); a connection that fails, or a stream that ends, is
//! tried again after the reconnection time, which the latest `retry:` field
//! sets (3 s until one arrives, the browsers' default).
//!
//! It stops at the first `ready` event and hands over the open stream, with
//! what it took to get there.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use sse_wire::Frame;

use crate::client::{SseClient, connect_from};

/// The reconnection time before any `retry:` field (what browsers use).
pub const DEFAULT_RETRY_MS: u64 = 3000;

/// A client that reached `ready`.
pub struct Opened {
    /// The open stream, right after `ready`.
    pub client: SseClient,
    /// The `retry:` the stream that opened sent before `ready`, if any.
    pub open_retry: Option<u64>,
    /// Connections tried, the one that opened included.
    pub attempts: u32,
    /// 200 streams that ended before `ready` (a `retry:` hint, or a
    /// `rejected` event), each followed by a wait and a new attempt.
    pub ended_before_ready: u32,
    /// Connections that failed or closed before a response head.
    pub failed_connections: u32,
}

/// How an `EventSource`-like client ended up.
pub enum Outcome {
    /// It reached `ready`.
    Opened(Box<Opened>),
    /// An answer the browser treats as final: it would never come back.
    Fatal {
        /// The status.
        status: u16,
        /// The `Content-Type` (must be `text/event-stream` with a 200).
        content_type: Option<String>,
    },
}

/// Connects from `source` to `addr` with `GET path` until a stream reaches
/// `ready` or an answer is fatal. Unbounded in time (as the browser is):
/// the caller bounds the whole.
pub async fn connect_until_ready(source: Ipv4Addr, addr: SocketAddr, path: &str) -> Outcome {
    let mut retry_ms = DEFAULT_RETRY_MS;
    let (mut attempts, mut ended_before_ready, mut failed_connections) = (0, 0, 0);
    loop {
        attempts += 1;
        let opened = match connect_from(source, addr).await {
            Ok(tcp) => SseClient::try_open_on(tcp, addr, path).await,
            Err(_) => None,
        };
        let Some(mut client) = opened else {
            failed_connections += 1;
            tokio::time::sleep(Duration::from_millis(retry_ms)).await;
            continue;
        };
        let content_type = client.head.header("content-type").map(str::to_owned);
        if client.head.status != 200 || content_type.as_deref() != Some("text/event-stream") {
            return Outcome::Fatal { status: client.head.status, content_type };
        }
        let mut open_retry = None;
        while let Some(frame) = client.frame_or_end().await {
            match frame {
                Frame::Retry(ms) => {
                    retry_ms = ms;
                    open_retry = Some(ms);
                }
                Frame::Event(e) if e.event_type == "ready" => {
                    return Outcome::Opened(Box::new(Opened {
                        client,
                        open_retry,
                        attempts,
                        ended_before_ready,
                        failed_connections,
                    }));
                }
                _ => {}
            }
        }
        ended_before_ready += 1;
        tokio::time::sleep(Duration::from_millis(retry_ms)).await;
    }
}
