//! Test-only helpers shared by every crate's black-box tests.
//!
//! * [`Process`]: spawn a real binary (listening on port 0), learn its address
//!   from its "listening on" line, stop it with SIGTERM and check the exit.
//! * [`Backend`]: a real HTTP callback server on 127.0.0.1:0 that records every
//!   callback and answers automatically or as the test decides, call by call.
//! * [`SseClient`]: a raw-TCP HTTP/1.1 client that checks the response head,
//!   decodes the chunked body and parses it with `sse-wire`, keeping the raw
//!   bytes for byte-exact assertions.
//! * [`request`]: one plain HTTP request (JSON in, status and body out).
//!
//! Every wait is bounded by [`WAIT`] and panics with a message when it runs
//! out, so a missing behaviour fails the test instead of hanging it.

mod backend;
mod client;
mod process;

pub use backend::{Backend, Call, Reply};
pub use client::{HttpResponse, SseClient, request, send_json};
pub use process::Process;

use std::time::Duration;

/// Upper bound for any single wait in a test.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `fut` for at most [`WAIT`], panicking with `what` on timeout.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}
