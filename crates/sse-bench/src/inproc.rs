//! `inproc-gateway`: the gateway library with an in-process connect hook
//! that accepts every stream at once, with the answer `sse-bench backend`
//! gives (`{}`: no request_id, no bindings of its own) but no HTTP callback.
//!
//! It splits the churn benchmark's cost of a connect in two: the gateway
//! with its two callback round trips (`ours`, against `sse-bench backend`)
//! and the same gateway without them (this). The difference is what the
//! contract's connect and disconnect callbacks cost on this machine, in
//! the gateway and in the backend together. Same defaults as the
//! `sse-gateway` binary; runs on the runtime of `sse-bench`'s `main` (a
//! worker per core, as the binary's).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use sse_gateway::{Accepted, ClientRequest, Config, ConnectHook, DisconnectReason, Gateway, HookFuture, Refusal};
use uuid::Uuid;

/// Options of `sse-bench inproc-gateway`.
#[derive(Debug, clap::Args)]
pub struct InprocArgs {
    /// Address of the stream listener (any GET path is a stream).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

/// Accepts every stream and every disconnect at once.
struct AcceptAll;

impl ConnectHook for AcceptAll {
    fn connect<'a>(&'a self, _: Uuid, _: &'a ClientRequest) -> HookFuture<'a, Result<Accepted, Refusal>> {
        Box::pin(async { Ok(Accepted::default()) })
    }

    fn disconnect<'a>(
        &'a self,
        _: Uuid,
        _: DisconnectReason,
        _: &'a ClientRequest,
    ) -> HookFuture<'a, Result<(), Refusal>> {
        Box::pin(async { Ok(()) })
    }
}

/// Serves streams until the process is stopped.
pub async fn serve(args: InprocArgs) -> anyhow::Result<()> {
    // The binary's listener: the same accept backlog.
    let listener = sse_gateway::listen(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    // Scripts read this line to learn the port.
    println!("sse-bench inproc-gateway listening on http://{}", listener.local_addr()?);
    run(listener).await;
    Ok(())
}

async fn run(listener: tokio::net::TcpListener) {
    let hook: Arc<dyn ConnectHook> = Arc::new(AcceptAll);
    Gateway::builder(Config::default()).hook(hook).build().serve(listener, None).await;
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn every_stream_is_accepted_at_once_and_gets_ready() {
        let listener = sse_gateway::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(run(listener));
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /stream?request_id=a HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let read = async {
            while !String::from_utf8_lossy(&got).contains("event: ready") {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "the stream ended before ready: {}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), read).await.expect("ready within 10 s");
        let head = String::from_utf8_lossy(&got);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("text/event-stream"), "{head}");
        server.abort();
    }
}
