//! Black-box tests of the gateway process: configuration, `--help`, and the
//! graceful drain on SIGTERM/SIGINT (the drain of thousands of streams
//! against a slow backend is in `storms.rs`).

mod support;

use serde_json::json;
use sse_testkit::{Backend, Process, Reply, SseClient, request, send_json, within};
use sse_wire::Frame;
use support::{BIN, stream};

async fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    within("the process to exit", cmd.output()).await.unwrap()
}

#[tokio::test]
async fn invalid_port_exits_with_an_error() {
    for port in ["0", "70000", "abc"] {
        let out = run_to_exit(&[], &[("PORT", port)]).await;
        assert!(!out.status.success(), "PORT={port} must fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("invalid PORT"), "{err}");
    }
}

#[tokio::test]
async fn help_lists_every_setting_with_its_flag_variable_and_default_and_hides_secrets() {
    let out = run_to_exit(&["--help"], &[("INTERNAL_API_SECRET", "s3cr3t-value")]).await;
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for s in sse_gateway::SETTINGS {
        // clap wraps long lines: compare with whitespace collapsed.
        let entry = help
            .split(&format!("--{} <VALUE>", s.flag))
            .nth(1)
            .unwrap_or_else(|| panic!("--{} missing:\n{help}", s.flag))
            .split("\n      --")
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert!(entry.contains(&format!("[env: {}]", s.env)), "{}: {entry}", s.env);
        if let Some(default) = s.default {
            assert!(entry.contains(&format!("[default: {default}]")), "{}: {entry}", s.env);
        }
    }
    assert!(!help.contains("s3cr3t-value"), "--help must not show a secret from the environment");
}

#[test]
fn readme_documents_every_setting_with_its_flag() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).expect("README.md");
    for s in sse_gateway::SETTINGS {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{}`", s.env)))
            .unwrap_or_else(|| panic!("README's configuration table has no row for {}", s.env));
        assert!(row.contains(&format!("`--{}`", s.flag)), "README row of {} lacks --{}: {row}", s.env, s.flag);
    }
}

#[tokio::test]
async fn cli_flags_configure_the_gateway() {
    let backend = Backend::start().await;
    let url = backend.callback_url();
    let gw = Process::spawn(BIN, &["--listen", "127.0.0.1:0", "--callback-url", &url], &[]).await;
    let r = request(gw.addr, "GET", "/readyz", &[], b"").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn invalid_heartbeat_interval_warns_and_falls_back() {
    let backend = Backend::start().await;
    let url = backend.callback_url();
    let gw = Process::spawn(
        BIN,
        &[],
        &[("LISTEN_ADDR", "127.0.0.1:0"), ("CALLBACK_URL", &url), ("HEARTBEAT_INTERVAL_SECONDS", "zero")],
    )
    .await;
    let line = gw.wait_for_log("HEARTBEAT_INTERVAL_SECONDS").await;
    assert!(line.contains("WARN") && line.contains("using 15"), "{line}");
}

async fn drain_on(signal: i32) {
    let backend = Backend::start().await;
    let url = backend.callback_url();
    let mut gw = Process::spawn(BIN, &[], &[("LISTEN_ADDR", "127.0.0.1:0"), ("CALLBACK_URL", &url)]).await;
    let mut clients = Vec::new();
    let mut tokens = Vec::new();
    for _ in 0..3 {
        let (c, token) = stream(&gw, &backend, "/s").await;
        tokens.push(token);
        clients.push(c);
    }
    gw.signal(signal);
    for c in &mut clients {
        let Frame::Retry(ms) = c.next_frame().await else { panic!("expected a retry hint") };
        assert!((1000..=5000).contains(&ms), "jittered retry between 1 and 5 s, got {ms}");
        c.read_to_end().await;
        assert!(c.ended_cleanly(), "each stream is ended, not cut");
    }
    assert_eq!(gw.wait_exit().await, 0, "exit 0 after the drain");
    let mut reasons: Vec<(String, String)> =
        backend.drain().await.iter().map(|c| (c.token(), c.body["reason"].as_str().unwrap_or("").to_owned())).collect();
    reasons.sort();
    let mut want: Vec<(String, String)> = tokens.iter().map(|t| (t.clone(), "server_closed".to_owned())).collect();
    want.sort();
    assert_eq!(reasons, want, "one server_closed disconnect per stream");
}

#[tokio::test]
async fn sigterm_drains_every_stream_with_retry_and_server_closed_then_exits_0() {
    drain_on(libc_sig::SIGTERM).await;
}

#[tokio::test]
async fn sigint_drains_like_sigterm() {
    drain_on(libc_sig::SIGINT).await;
}

#[tokio::test]
async fn shutdown_deadline_cuts_a_stuck_stream_and_still_exits_0() {
    let backend = Backend::start().await;
    let url = backend.callback_url();
    let mut gw = Process::spawn(
        BIN,
        &[],
        &[
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("CALLBACK_URL", &url),
            ("SHUTDOWN_TIMEOUT_SECONDS", "1"),
            ("STREAM_QUEUE_BYTES", "67108864"),
        ],
    )
    .await;
    // A client that never reads: once the kernel buffers are full, the rest of
    // what we send waits in the stream's queue and the drain cannot finish.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(gw.addr).await.unwrap();
    let _stuck = SseClient::open_on(tcp, gw.addr, "GET", "/s", &[]).await;
    let token = backend.expect("connect").await.token();
    let filler = "f".repeat(256 * 1024);
    for _ in 0..48 {
        let r = send_json(gw.addr, "/internal/send", &json!({"token": token, "event": {"data": filler}})).await;
        assert_eq!(r.status, 200);
    }
    gw.signal(libc_sig::SIGTERM);
    assert_eq!(gw.wait_exit().await, 0, "the deadline cuts what is left and still exits 0");
    gw.wait_for_log("cutting them").await;
    let d = backend.expect("disconnect").await;
    assert_eq!((d.token(), d.body["reason"].as_str()), (token, Some("server_closed")));
}

#[tokio::test]
async fn a_drain_that_cannot_deliver_every_disconnect_says_how_many_it_could_not() {
    let backend = Backend::start().await;
    let url = backend.callback_url();
    let mut gw = Process::spawn(
        BIN,
        &[],
        &[
            ("LISTEN_ADDR", "127.0.0.1:0"),
            ("CALLBACK_URL", &url),
            ("SHUTDOWN_TIMEOUT_SECONDS", "1"),
            ("CALLBACK_TIMEOUT_MS", "500"),
        ],
    )
    .await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(stream(&gw, &backend, "/s").await.0);
    }
    // A backend that hears the disconnects but answers none in time.
    backend.answer_disconnects(Reply { delay: std::time::Duration::from_secs(60), ..Reply::ok("{}") });
    gw.signal(libc_sig::SIGTERM);
    assert_eq!(gw.wait_exit().await, 0, "the drain gives up at its deadline and still exits 0");
    let line = gw.wait_for_log("did not finish before exit").await;
    assert!(line.contains("WARN") && line.contains("unfinished=5"), "{line}");
}

mod libc_sig {
    pub const SIGINT: i32 = 2;
    pub const SIGTERM: i32 = 15;
}
