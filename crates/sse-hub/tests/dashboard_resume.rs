//! Browser tests of the dashboard across reconnects (issue 10: the page
//! shows nothing missing after a hub restart or a network blip): the real
//! `sse-hub` binary (history on, as by default) and headless Debian
//! chromium driven by `browser-test/resume.mjs` (playwright-core), which
//! compares the page's lease rows with the hub's `GET /api/dhcp/leases`
//! and reads the stream counters the page shows (streams that went live,
//! events replayed, gaps, snapshots asked for).
//!
//! * Hub restart: the hub is stopped by SIGTERM (its drain gives the stream
//!   a `retry:`), the lease file changes while it is down, a new hub starts
//!   on the same port over the same data directory, and the file changes
//!   again right after. The page comes back with its `Last-Event-ID`, which
//!   the new process cannot know: it gets `gap` (counted by the gateway,
//!   cause `unknown`, and by the page), asks for a snapshot, and shows
//!   exactly the current leases; later changes arrive live.
//! * Network blip: a relay between the browser and a hub that keeps running
//!   drops the page's connections and holds its reconnect while the leases
//!   change. On reconnect the gateway replays what the page missed (the
//!   page counts as many replayed events as the gateway), no gap, no
//!   snapshot asked for (the hub sent only the reconnect's own snapshot),
//!   and the page shows exactly the current leases, no row twice (the
//!   replayed events are already in the reconnect's snapshot); later
//!   changes arrive live.
//!
//! In both, no page reports an error. Fails (never skips) when node,
//! chromium or the npm packages are missing.

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sse_testkit::{Relay, free_ports};
use support::{
    BrowserScript, Hub, append_line, ensure_browser_tools, now_secs, replace_file, run_browser_script, temp_dir,
};
use tokio::io::{AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

/// Bound of one step of the page (its own waits end at 30 s).
const STEP: Duration = Duration::from_secs(60);

/// `browser-test/resume.mjs` on one page: commands on its stdin, answers on its stdout.
struct Page {
    child: Child,
    stdin: ChildStdin,
    out: Lines<BufReader<ChildStdout>>,
    stderr: tokio::task::JoinHandle<Vec<String>>,
}

impl Page {
    /// Opens `page_url` in chromium; `hub_url` is where the script reads the hub's leases.
    async fn open(page_url: &str, hub_url: &str, tag: &str) -> Page {
        ensure_browser_tools();
        let shot = std::env::temp_dir().join(format!("sse-hub-resume-{tag}-{}.png", uuid::Uuid::new_v4().simple()));
        let BrowserScript { child, stdin, out, stderr } =
            run_browser_script("resume.mjs", &[page_url, hub_url, shot.to_str().expect("utf-8")], true);
        let stdin = stdin.expect("stdin");
        let mut page = Page { child, stdin, out, stderr };
        page.expect("live").await;
        page
    }

    /// Reads lines until one starting with `prefix`; returns it.
    async fn expect(&mut self, prefix: &str) -> String {
        let read = async {
            while let Ok(Some(line)) = self.out.next_line().await {
                println!("node: {line}");
                if line.starts_with(prefix) {
                    return Some(line);
                }
            }
            None
        };
        match tokio::time::timeout(STEP, read).await {
            Ok(Some(line)) => line,
            Ok(None) => {
                let status = self.child.wait().await.expect("node exit");
                panic!("resume.mjs ended ({status}) before {prefix:?}; its stderr is above");
            }
            Err(_) => panic!("no {prefix:?} from the page within {STEP:?}"),
        }
    }

    async fn send(&mut self, command: &str) {
        self.stdin.write_all(format!("{command}\n").as_bytes()).await.expect("write to resume.mjs");
        self.stdin.flush().await.expect("flush");
    }

    /// Waits until the page shows exactly the hub's leases, in step, with
    /// the stream counters `expect` asks for; returns the counters.
    async fn shows_the_hubs_leases(&mut self, label: &str, expect: Value) -> Value {
        self.send(&format!("match {label} {expect}")).await;
        let line = self.expect(&format!("match {label} ")).await;
        serde_json::from_str(&line[format!("match {label} ").len()..]).expect("counters JSON")
    }

    /// Waits until the header shows the stream state `state`.
    async fn shows_state(&mut self, label: &str, state: &str) {
        self.send(&format!("state {label} {state}")).await;
        self.expect(&format!("state {label}")).await;
    }

    /// Ends the run: no page error, exit 0.
    async fn finish(mut self) {
        self.send("end").await;
        self.expect("no page errors").await;
        self.expect("resume ok").await;
        let status = tokio::time::timeout(STEP, self.child.wait()).await.expect("node to exit").expect("node exit");
        let errors = self.stderr.await.unwrap_or_default();
        assert!(status.success(), "resume.mjs failed ({status}); stderr: {errors:#?}");
    }
}

/// A lease line valid for an hour.
fn lease(ip: &str, mac: &str, host: &str) -> String {
    format!("{} {mac} {ip} {host} *", now_secs() + 3600)
}

/// The demo lease file with 192.168.1.101 (laptop) gone, phone renamed and
/// `extra` added.
fn changed_demo_leases(file: &Path, renamed: &str, extra: &[String]) -> String {
    let text = std::fs::read_to_string(file).expect("read the lease file");
    assert!(text.contains(" 192.168.1.101 laptop ") && text.contains(" phone "), "demo leases expected:\n{text}");
    let mut out: String = text
        .lines()
        .filter(|l| !l.contains(" 192.168.1.101 "))
        .map(|l| format!("{}\n", l.replace(" phone ", &format!(" {renamed} "))))
        .collect();
    for l in extra {
        out.push_str(l);
        out.push('\n');
    }
    out
}

/// Has the hub re-read its lease file (`POST /internal/notify-lease-change`
/// returns once the changes are sent, whichever trigger read them first) and
/// checks that it now holds `ip` (or not): the page is then compared with
/// the changed list, never with the one before.
async fn reread(hub: &Hub, ip: &str, held: bool) {
    let r = hub.post("/internal/notify-lease-change", &json!({})).await;
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["reloaded"], true);
    let list = hub.get("/api/dhcp/leases").await.json();
    let ips: Vec<&str> = list.as_array().expect("lease list").iter().filter_map(|l| l["ip_address"].as_str()).collect();
    assert_eq!(ips.contains(&ip), held, "{ip} in the hub's leases {ips:?}");
}

async fn lease_events(hub: &Hub, event: &str) -> f64 {
    hub.metric(&format!("sse_hub_lease_events_total{{event=\"{event}\"}}")).await
}

#[tokio::test]
async fn after_a_hub_restart_the_page_gets_a_gap_asks_for_a_snapshot_and_shows_exactly_the_current_leases() {
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let [port] = free_ports::<1>();
    let hub = Hub::start_on(port, temp_dir("restart"), &secret, &[]).await;
    let file = hub.leases_file();
    let url = format!("http://{}/", hub.addr());
    let mut page = Page::open(&url, &url, "restart").await;
    page.shows_the_hubs_leases("start", json!({"streams": 1, "gaps": 0, "resyncs": 0})).await;
    append_line(&file, &lease("192.168.1.150", "02:00:00:00:c0:01", "before-restart"));
    reread(&hub, "192.168.1.150", true).await;
    page.shows_the_hubs_leases("live", json!({"streams": 1, "gaps": 0, "resyncs": 0})).await;

    let (code, dir) = hub.stop_keeping_data().await;
    assert_eq!(code, 0, "the hub's exit code after SIGTERM");
    page.shows_state("down", "reconnecting").await;
    // While the hub is down: one lease gone, one renamed, one new.
    let while_down = [lease("192.168.1.151", "02:00:00:00:c0:02", "while-down")];
    replace_file(&file, changed_demo_leases(&file, "phone-renamed", &while_down).as_bytes());
    let hub = Hub::start_on(port, dir, &secret, &[]).await;
    assert_eq!(hub.addr().port(), port, "the new hub is where the page comes back to");
    reread(&hub, "192.168.1.101", false).await;
    // Right after the start: the page may be back already, or not yet.
    append_line(&file, &lease("192.168.1.152", "02:00:00:00:c0:03", "right-after"));
    reread(&hub, "192.168.1.152", true).await;

    let counters = page.shows_the_hubs_leases("restarted", json!({"streams": 2, "gaps": 1, "resyncs": ">=1"})).await;
    assert_eq!(hub.gateway_metric("sse_gateway_history_gaps_total{cause=\"unknown\"}").await, 1.0, "the new hub's gap");
    assert_eq!(hub.gateway_metric("sse_gateway_history_replayed_events_total").await, 0.0, "nothing to replay");
    assert_eq!(counters["replayed"], 0, "{counters}");

    append_line(&file, &lease("192.168.1.153", "02:00:00:00:c0:04", "live-again"));
    reread(&hub, "192.168.1.153", true).await;
    let expect = json!({"streams": 2, "gaps": 1, "resyncs": counters["resyncs"]});
    page.shows_the_hubs_leases("live-again", expect).await;
    page.finish().await;
}

#[tokio::test]
async fn after_a_network_blip_the_page_gets_the_missed_events_replayed_asks_for_no_snapshot_and_shows_exactly_the_current_leases()
 {
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let hub = Hub::start_on(0, temp_dir("blip"), &secret, &[]).await;
    let file = hub.leases_file();
    let relay = Relay::start().await;
    relay.forward_to(hub.addr());
    let mut page = Page::open(&format!("http://{}/", relay.addr), &format!("http://{}/", hub.addr()), "blip").await;
    let none = json!({"streams": 1, "replayed": 0, "gaps": 0, "resyncs": 0});
    page.shows_the_hubs_leases("start", none).await;
    let snapshots = lease_events(&hub, "leases_snapshot").await;
    assert_eq!(snapshots, 1.0, "the stream's own snapshot");

    relay.cut();
    page.shows_state("cut", "reconnecting").await;
    // While the page is away (its reconnect held by the relay): one lease
    // gone, one renamed, two new; the notify route returns once they are sent.
    let before: Vec<f64> = change_counts(&hub).await;
    let added = [
        lease("192.168.1.160", "02:00:00:00:d0:01", "while-away-1"),
        lease("192.168.1.161", "02:00:00:00:d0:02", "while-away-2"),
    ];
    replace_file(&file, changed_demo_leases(&file, "phone-away", &added).as_bytes());
    reread(&hub, "192.168.1.101", false).await;
    let after = change_counts(&hub).await;
    let sent: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(sent, [2.0, 1.0, 1.0], "lease_added, lease_removed, lease_updated sent while the page was away");

    relay.forward_to(hub.addr());
    let counters =
        page.shows_the_hubs_leases("resumed", json!({"streams": 2, "gaps": 0, "resyncs": 0, "replayed": ">=4"})).await;
    let replayed = hub.gateway_metric("sse_gateway_history_replayed_events_total").await;
    assert_eq!(counters["replayed"].as_f64(), Some(replayed), "the page counted what the gateway replayed: {counters}");
    assert_eq!(hub.gateway_metric("sse_gateway_history_gaps_total").await, 0.0, "no gap");

    append_line(&file, &lease("192.168.1.162", "02:00:00:00:d0:03", "live-again"));
    reread(&hub, "192.168.1.162", true).await;
    page.shows_the_hubs_leases("live-again", json!({"streams": 2, "gaps": 0, "resyncs": 0})).await;
    assert_eq!(
        lease_events(&hub, "leases_snapshot").await,
        snapshots + 1.0,
        "only the reconnect's own snapshot: none was asked for"
    );
    page.finish().await;
}

/// lease_added, lease_removed, lease_updated sent so far.
async fn change_counts(hub: &Hub) -> Vec<f64> {
    let mut v = Vec::new();
    for e in ["lease_added", "lease_removed", "lease_updated"] {
        v.push(lease_events(hub, e).await);
    }
    v
}
