//! The hub over HTTPS (`TLS_CERT_FILE`/`TLS_KEY_FILE`, a self-signed
//! certificate made here): the dashboard, streams and internal routes over
//! HTTP/2, and in real Chromium (`browser-test/h2.mjs`, the certificate
//! accepted with `--ignore-certificate-errors`) ten EventSources on the
//! dashboard's origin, beside its own stream, all open and all receive: more
//! streams than HTTP/1.1's six connections per origin allow. Settings TLS
//! cannot serve stop the hub with exit code 2.
//!
//! Fails (never skips) when node, chromium or the npm packages are missing.

mod support;

use std::time::Duration;

use http::Version;
use sse_testkit::{Alpn, HttpsConnection, TestCert, within};
use support::{BrowserScript, Hub, ensure_browser_tools, envelope, run_browser_script};

/// EventSources the browser opens beside the dashboard's own stream.
const BROWSER_STREAMS: usize = 10;
/// Bound of the whole browser run.
const BROWSER_RUN: Duration = Duration::from_secs(90);

async fn tls_hub(cert: &TestCert) -> Hub {
    let files = cert.env();
    let env: Vec<(&str, &str)> = files.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let hub = Hub::start(&[], &env).await;
    assert!(hub.process.https, "the hub announces https://");
    hub
}

#[tokio::test]
async fn the_hub_serves_its_dashboard_streams_and_internal_routes_over_h2() {
    let cert = TestCert::generate();
    let hub = tls_hub(&cert).await;
    let mut conn = HttpsConnection::connect(hub.addr(), &cert, Alpn::H2).await;
    assert_eq!(conn.alpn(), Some(&b"h2"[..]));
    let page = conn.request("GET", "/", &[], b"").await;
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("<html"), "the dashboard page");
    let leases = conn.request("GET", "/api/dhcp/leases", &[], b"").await;
    assert_eq!(leases.status, 200);
    let mut streams = Vec::new();
    for i in 0..3 {
        let mut s = conn.sse(&format!("/api/sse/stream?request_id=tls-{i}")).await;
        assert_eq!((s.status, s.version), (200, Version::HTTP_2));
        within("ready", async { while s.next_event().await.event_type != "ready" {} }).await;
        streams.push(s);
    }
    let nudge = conn.request("POST", "/internal/rotation-nudge", &[("content-type", "application/json")], b"{}").await;
    assert!((200..300).contains(&nudge.status), "nudge: {} {:?}", nudge.status, String::from_utf8_lossy(&nudge.body));
    for s in &mut streams {
        within("rotation-updated", async { while envelope(&s.next_event().await).0 != "rotation-updated" {} }).await;
    }
}

#[tokio::test]
async fn ten_event_sources_on_one_https_origin_all_receive_in_chromium_over_h2() {
    ensure_browser_tools();
    let cert = TestCert::generate();
    let hub = tls_hub(&cert).await;
    let url = format!("https://{}/", hub.addr());
    let BrowserScript { mut child, mut out, stderr, .. } =
        run_browser_script("h2.mjs", &[url.as_str(), &BROWSER_STREAMS.to_string()], false);
    let run = async {
        let mut lines = Vec::new();
        while let Ok(Some(line)) = out.next_line().await {
            println!("node: {line}");
            lines.push(line);
        }
        (child.wait().await.expect("node exit"), lines)
    };
    let (status, lines) = tokio::time::timeout(BROWSER_RUN, run)
        .await
        .unwrap_or_else(|_| panic!("the browser run did not finish within {BROWSER_RUN:?}"));
    let errors = stderr.await.unwrap_or_default();
    assert!(status.success(), "h2.mjs failed ({status}); stderr: {errors:#?}; stdout: {lines:#?}");
    for want in ["dashboard live over h2", "all ready", "all received", "h2 ok"] {
        assert!(lines.iter().any(|l| l == want), "missing {want:?} in {lines:?}");
    }
}

#[tokio::test]
async fn tls_with_an_external_gateway_or_a_version_file_exits_2() {
    let cert = TestCert::generate();
    let files = cert.env();
    let bin = sse_testkit::workspace_bin("sse-hub");
    for (name, value) in [("SSE_GATEWAY_URL", "http://127.0.0.1:9"), ("FRONTEND_VERSION_FILE", "/tmp/v.json")] {
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.env_clear().args(["--port", "0", "--host", "127.0.0.1", "--data-dir", "/nonexistent/never-created"]);
        for (k, v) in &files {
            cmd.env(k, v);
        }
        cmd.env(name, value);
        let out = within("the hub to exit", cmd.output()).await.expect("run the hub");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(stderr.contains(&format!("TLS_CERT_FILE and {name} cannot both be set")), "{stderr}");
    }
    let mut cmd = tokio::process::Command::new(&bin);
    cmd.env_clear().args(["--port", "0", "--tls-key-file", files[1].1.as_str()]);
    let out = within("the hub to exit", cmd.output()).await.expect("run the hub");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("TLS_KEY_FILE is set but TLS_CERT_FILE is not"), "{stderr}");
}
