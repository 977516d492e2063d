//! The public listener takes a reconnect storm: a burst of connections far
//! beyond the kernel's default accept backlog (128) is queued by the kernel
//! even while the gateway is not calling `accept` at all, and every one of
//! them is served once it does.

use std::time::Duration;

use sse_testkit::{Backend, Process, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_sse-gateway");

/// Connections in the burst: well past 128, well under the 4096 backlog.
const BURST: usize = 600;

/// The accept-queue length of the listening socket on `port` (IPv4), from
/// `/proc/net/tcp`, whose `rx_queue` field is that length for a listener.
fn accept_queue_len(port: u16) -> Option<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let local_port = f.get(1)?.rsplit(':').next()?;
        let listening = f.get(3) == Some(&"0A");
        let rx_queue = f.get(4)?.split(':').nth(1)?;
        (listening && u16::from_str_radix(local_port, 16).ok()? == port)
            .then(|| usize::from_str_radix(rx_queue, 16).ok())
            .flatten()
    })
}

#[tokio::test]
async fn a_burst_beyond_128_connections_is_queued_while_the_gateway_is_stopped_and_all_are_served() {
    let backend = Backend::start().await;
    let cb = backend.callback_url();
    let gw = Process::spawn(BIN, &[], &[("LISTEN_ADDR", "127.0.0.1:0"), ("CALLBACK_URL", cb.as_str())]).await;
    let addr = gw.addr;
    // A stopped process accepts nothing: only the kernel's accept queue holds the burst.
    gw.signal(libc::SIGSTOP);
    let clients: Vec<_> = (0..BURST).map(|_| tokio::spawn(TcpStream::connect(addr))).collect();
    // With the default backlog the queue stops at 129 and the rest of the
    // SYNs are dropped, so this wait would run out.
    let queued = within("the whole burst in the accept queue", async {
        loop {
            let n = accept_queue_len(addr.port()).unwrap_or(0);
            if n >= BURST {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(queued, BURST);
    gw.signal(libc::SIGCONT);
    for (i, client) in clients.into_iter().enumerate() {
        let mut tcp = client.await.expect("connect task").unwrap_or_else(|e| panic!("connection {i} refused: {e}"));
        tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.expect("write");
        let mut answer = Vec::new();
        within("the health answer", tcp.read_to_end(&mut answer)).await.expect("read");
        assert!(answer.starts_with(b"HTTP/1.1 200"), "connection {i}: {}", String::from_utf8_lossy(&answer));
    }
}
