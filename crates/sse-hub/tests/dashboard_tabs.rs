//! Browser tests of the dashboard for real use: the real `sse-hub` binary
//! and headless Debian chromium driven by `browser-test/tabs.mjs`
//! (playwright-core), over plain HTTP/1.1.
//!
//! * Eight tabs of one browser all go live, the hub holds ONE stream for
//!   them (the page's SharedWorker), and each tab shows a lease appended
//!   after all eight opened; then 5,000 leases added in one write arrive as
//!   one `leases_snapshot` (more than `LEASE_SNAPSHOT_THRESHOLD` changes)
//!   and every tab shows them; then the tab that started the shared stream
//!   is closed and the others still show the next change, on the same stream.
//! * With the threshold above 5,000, the same change arrives as 5,000 lease
//!   events: the page still shows it within seconds, stays responsive (a
//!   20 ms timer never waits a second) and keeps only the visible rows in
//!   the DOM.
//!
//! In both, no page reports an error. Fails (never skips) when node,
//! chromium or the npm packages are missing.

mod support;

use std::time::Duration;

use support::{BrowserScript, Hub, append_line, ensure_browser_tools, now_secs, run_browser_script};

/// Bound of a whole browser run.
const BROWSER_RUN: Duration = Duration::from_secs(180);
const BULK: usize = 5_000;
const LEASE_IP: &str = "192.168.1.178";
const BULK_FIRST_IP: &str = "10.1.0.1";
const LAST_IP: &str = "192.168.1.179";

/// `count` lease lines from 10.1.0.1 on, 250 a /24.
fn bulk_lines(count: usize) -> String {
    let expiry = now_secs() + 7200;
    (0..count)
        .map(|i| {
            let (hi, lo) = (i / 250, i % 250 + 1);
            format!("{expiry} 02:10:00:00:{:02x}:{:02x} 10.1.{hi}.{lo} bulk-{i} *\n", hi, lo)
        })
        .collect()
}

/// Open streams and stream opens so far, from the hub's metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Streams {
    open: f64,
    opened: f64,
}

async fn streams(hub: &Hub) -> Streams {
    Streams {
        open: hub.metric("sse_gateway_active_connections").await,
        opened: hub.metric("sse_gateway_connections_total{action=\"connect\"}").await,
    }
}

/// For a failed stream assertion: how the hub's streams ended (by reason)
/// and the end of its log.
async fn why(hub: &Hub) -> String {
    let m = hub.get("/internal/metrics").await;
    let text = String::from_utf8_lossy(&m.body).into_owned();
    let ended: Vec<&str> = text.lines().filter(|l| l.starts_with("sse_gateway_disconnects_total")).collect();
    let log = hub.process.stderr();
    let tail = &log[log.len().saturating_sub(20)..];
    format!("streams ended: {ended:?}; hub log (last lines): {tail:#?}")
}

/// What the run printed and the hub's streams when the tabs were live, when
/// the bulk change was shown and when the first tab had been closed.
struct Run {
    lines: Vec<String>,
    tabs_live: Streams,
    bulk_shown: Streams,
    after_close: Streams,
}

async fn run_tabs(hub: &Hub, tabs: usize) -> Run {
    ensure_browser_tools();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let shot_dir = std::env::temp_dir().join(format!("sse-hub-tabs-{run}"));
    std::fs::create_dir_all(&shot_dir).expect("screenshot dir");
    let shot = shot_dir.join("tabs.png");
    let BrowserScript { mut child, mut out, stderr, .. } = run_browser_script(
        "tabs.mjs",
        &[
            &format!("http://{}/", hub.addr()),
            &tabs.to_string(),
            LEASE_IP,
            BULK_FIRST_IP,
            &BULK.to_string(),
            shot.to_str().expect("utf-8"),
            LAST_IP,
        ],
        false,
    );
    let file = hub.leases_file();
    let drive = async {
        let mut lines = Vec::new();
        let none = Streams { open: f64::NAN, opened: f64::NAN };
        let (mut tabs_live, mut bulk_shown, mut after_close) = (none, none, none);
        while let Ok(Some(line)) = out.next_line().await {
            println!("node: {line}");
            match line.as_str() {
                "tabs live" => {
                    tabs_live = streams(hub).await;
                    append_line(&file, &format!("{} 02:00:00:00:b0:02 {LEASE_IP} tab-box *", now_secs() + 3600));
                }
                "probes ready" => {
                    use std::io::Write;
                    let mut f = std::fs::OpenOptions::new().append(true).open(&file).expect("open lease file");
                    f.write_all(bulk_lines(BULK).as_bytes()).expect("append the bulk in one write");
                }
                l if l.starts_with("bulk shown: ") => bulk_shown = streams(hub).await,
                "first tab closed" => {
                    append_line(&file, &format!("{} 02:00:00:00:b0:03 {LAST_IP} last-box *", now_secs() + 3600));
                }
                "lease after close" => after_close = streams(hub).await,
                _ => {}
            }
            lines.push(line);
        }
        let status = child.wait().await.expect("node exit");
        (status, lines, tabs_live, bulk_shown, after_close)
    };
    let (status, lines, tabs_live, bulk_shown, after_close) = tokio::time::timeout(BROWSER_RUN, drive)
        .await
        .unwrap_or_else(|_| panic!("the browser run did not finish within {BROWSER_RUN:?}"));
    let errors = stderr.await.unwrap_or_default();
    for l in &errors {
        eprintln!("node stderr: {l}");
    }
    assert!(status.success(), "tabs.mjs failed ({status}); stderr: {errors:#?}");
    let steps =
        ["tabs live", "lease in every tab", "probes ready", "bulk row shown", "first tab closed", "lease after close"];
    for want in steps.into_iter().chain(["no page errors", "tabs ok"]) {
        assert!(lines.iter().any(|l| l == want), "missing {want:?} in {lines:?}");
    }
    assert!(lines.iter().any(|l| l.starts_with("bulk shown: ")), "{lines:?}");
    Run { lines, tabs_live, bulk_shown, after_close }
}

#[tokio::test]
async fn eight_tabs_of_one_browser_share_one_stream_and_all_show_later_changes() {
    let hub = Hub::start(&[], &[]).await;
    let run = run_tabs(&hub, 8).await;
    let one = Streams { open: 1.0, opened: 1.0 };
    let why = why(&hub).await;
    assert_eq!(run.tabs_live, one, "one stream for the eight tabs, opened once; {why}");
    assert_eq!(run.bulk_shown, one, "still the one stream after the bulk change; {why}");
    assert_eq!(run.after_close, one, "and after the tab that opened it closed; {why}");
    let ids: Vec<&String> = run.lines.iter().filter(|l| l.starts_with("request ids: ")).collect();
    assert_eq!(ids.len(), 1);
    assert!(!ids[0].contains(','), "every tab shows the one stream's request_id: {}", ids[0]);
    // The bulk went as one snapshot, the single lease as one event.
    assert_eq!(hub.metric("sse_hub_lease_events_total{event=\"lease_added\"}").await, 2.0, "before and after the bulk");
    let snapshots = hub.metric("sse_hub_lease_events_total{event=\"leases_snapshot\"}").await;
    assert!(snapshots >= 2.0, "the stream's opening snapshot and the bulk's: {snapshots}");
}

#[tokio::test]
async fn five_thousand_lease_events_render_within_seconds_and_keep_the_page_responsive() {
    let hub = Hub::start(&["--lease-snapshot-threshold", "100000"], &[]).await;
    let run = run_tabs(&hub, 2).await;
    let added = hub.metric("sse_hub_lease_events_total{event=\"lease_added\"}").await;
    assert_eq!(added, (BULK + 2) as f64, "one event per lease: the page got them one by one");
    let one = Streams { open: 1.0, opened: 1.0 };
    let why = why(&hub).await;
    assert_eq!(run.bulk_shown, one, "the one stream was neither dropped nor reopened; {why}");
    assert_eq!(run.after_close, one, "{why}");
}
