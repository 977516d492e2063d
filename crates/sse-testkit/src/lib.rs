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
//! * [`eventsource`]: a client that reconnects like the browser's
//!   `EventSource` (storm tests), from spread loopback source addresses
//!   ([`loopback_source`]).
//! * [`RabbitNode`], [`MosquittoNode`]: private brokers a test may stop and
//!   restart on the same port (the shared ones: [`amqp_url`], `SSE_TEST_MQTT_URL`).
//! * [`TestCert`], [`HttpsConnection`]: a self-signed certificate made at
//!   test time, and an HTTPS client (HTTP/2 or HTTP/1.1 by ALPN) trusting it.
//! * [`Relay`]: a port-0 TCP relay for two servers that must know each
//!   other's address at start.
//!
//! Every wait is bounded by [`WAIT`] and panics with a message when it runs
//! out, so a missing behaviour fails the test instead of hanging it.

mod amqp;
mod backend;
mod client;
pub mod eventsource;
mod mqtt;
mod process;
mod relay;
mod tls;

pub use amqp::{AmqpPublisher, RabbitNode, amqp_url, rabbitmqctl};
pub use backend::{Backend, Call, DownBackend, Reply};
pub use client::{HttpResponse, SseClient, connect_from, loopback_source, request, send_json};
pub use mqtt::MosquittoNode;
pub use process::Process;
pub use relay::Relay;
pub use tls::{Alpn, HttpsConnection, TestCert, TlsSseStream};

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

/// `N` distinct loopback ports that were free a moment ago, for a server that
/// must keep its port across a restart (so it cannot be handed port 0 and a
/// listener). All are held while choosing, so they differ.
///
/// They come from below the kernel's ephemeral range (`ip_local_port_range`,
/// 32768 and up by default): a port the kernel hands out for outgoing
/// connections, which the test suite opens by the thousand, could be taken
/// between this choice and the server's bind (RabbitMQ then fails to boot
/// with "could not bind to distribution port"). Nothing binds below that
/// range unless asked to.
pub fn free_ports<const N: usize>() -> [u16; N] {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001 + N as u16 * 2));
    let span = u32::from(high - low);
    let mut next = low + (uuid::Uuid::new_v4().as_u128() % u128::from(span)) as u16;
    let mut held = Vec::with_capacity(N);
    for _ in 0..span {
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", next)) {
            held.push(l);
            if held.len() == N {
                return std::array::from_fn(|i| held[i].local_addr().expect("local address").port());
            }
        }
        next = if next + 1 >= high { low } else { next + 1 };
    }
    panic!("no {N} free loopback ports below {high}");
}

/// Path of a binary of this workspace (e.g. `sse-gateway`) for black-box tests
/// in *other* packages, where `CARGO_BIN_EXE_*` is not available.
///
/// Builds it first with the same cargo and profile directory as the running
/// test (`cargo build --bin NAME`), so a test never runs a stale binary.
pub fn workspace_bin(name: &str) -> std::path::PathBuf {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile> directory").to_path_buf();
    let target_dir = profile_dir.parent().expect("target directory").to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let _guard = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", name, "--bin", name]).env("CARGO_TARGET_DIR", &target_dir);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().unwrap_or_else(|e| panic!("cannot run cargo to build {name}: {e}"));
    assert!(status.success(), "building {name} failed");
    let path = profile_dir.join(name);
    assert!(path.exists(), "{} does not exist after building", path.display());
    path
}
