//! Browser test: the real `sse-hub` binary (temp data dir, MQTT on the test
//! Mosquitto with a topic unique to this run) and its dashboard in headless
//! Debian chromium driven by `browser-test/dashboard.mjs` (playwright-core).
//! The page starts a task and watches its progress bar show a step midway and
//! then complete, subscribes to a device; then this test appends a lease to the file and publishes a
//! log line to Mosquitto, and the page must show both; then this test pushes
//! a version to every stream and the header must show it (with the reload
//! banner). The screenshot path is
//! printed (`screenshot: ...`) for CI to keep. Any error the page reports (an
//! uncaught exception, a console error) fails the run.
//!
//! Fails (never skips) when node, chromium, the npm packages (installed here
//! with `npm ci` when missing) or the broker are missing.

mod support;

use std::time::Duration;

use support::{
    BrowserScript, Hub, append_line, ensure_browser_tools, mqtt_publish, mqtt_url, now_secs, run_browser_script,
};

/// Bound of the whole browser run (browser start, page, task, events).
const BROWSER_RUN: Duration = Duration::from_secs(90);

#[tokio::test]
async fn dashboard_shows_a_new_lease_a_task_started_from_the_page_and_a_published_log_line() {
    ensure_browser_tools();
    let url = mqtt_url().await;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("sse-hub-test/{run}/logsink");
    let client_id = format!("sse-hub-dash-{run}");
    let hub = Hub::start(&["--mqtt-url", &url, "--mqtt-topic", &topic, "--mqtt-client-id", &client_id], &[]).await;
    hub.process.wait_for_log("subscribed to the log topic").await;

    let shot_dir = std::env::temp_dir().join(format!("sse-hub-dashboard-{run}"));
    std::fs::create_dir_all(&shot_dir).expect("screenshot dir");
    let shot = shot_dir.join("dashboard.png");
    let lease_ip = "192.168.1.177";
    let device = "sensor.browser";
    let message = format!("hello from mqtt {run}");
    let version = format!("9.9.{}", &run[..6]);
    let BrowserScript { mut child, mut out, stderr, .. } = run_browser_script(
        "dashboard.mjs",
        &[&format!("http://{}/", hub.addr()), shot.to_str().expect("utf-8"), lease_ip, &message, device, &version],
        false,
    );

    let run_browser = async {
        let mut lines = Vec::new();
        while let Ok(Some(line)) = out.next_line().await {
            if line == "subscribed" {
                append_line(
                    &hub.leases_file(),
                    &format!("{} 02:00:00:00:b0:01 {lease_ip} browser-box *", now_secs() + 3600),
                );
                let ndjson = format!("{{\"entity_id\":\"{device}\",\"message\":\"\\u001b[1m{message}\\u001b[0m\"}}\n");
                mqtt_publish(&url, &topic, ndjson.as_bytes()).await;
            }
            if line == "awaiting version" {
                let body = serde_json::json!({"version": version, "changelog": "browser test"});
                let r = hub.post("/internal/deployments/version", &body).await;
                assert_eq!(r.status, 202, "version push: {:?}", String::from_utf8_lossy(&r.body));
            }
            println!("node: {line}");
            lines.push(line);
        }
        let status = child.wait().await.expect("node exit");
        (status, lines)
    };
    let (status, lines) = tokio::time::timeout(BROWSER_RUN, run_browser).await.unwrap_or_else(|_| {
        panic!("the browser run did not finish within {BROWSER_RUN:?}");
    });
    let errors = stderr.await.unwrap_or_default();
    for l in &errors {
        eprintln!("node stderr: {l}");
    }
    assert!(status.success(), "dashboard.mjs failed ({status}); stderr: {errors:#?}");
    for want in [
        "progress midway",
        "task completed",
        "subscribed",
        "lease shown",
        "log line shown",
        "version shown",
        "no page errors",
        "dashboard ok",
    ] {
        assert!(lines.iter().any(|l| l == want), "missing {want:?} in {lines:?}");
    }
    let shot_line = lines.iter().find(|l| l.starts_with("screenshot: ")).expect("screenshot line");
    let path = shot_line.trim_start_matches("screenshot: ");
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    assert!(size > 1000, "screenshot {path} missing or empty");
    println!("screenshot: {path}");
}
