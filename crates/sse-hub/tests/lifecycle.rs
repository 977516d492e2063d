//! The hub's lifecycle and documented surface, against the real `sse-hub`
//! binary: SIGTERM cancels running tasks (streams hear `task_cancelled`)
//! and exits 0 long before the graceful timeout; a second Ctrl-C exits at
//! once (130); the startup output has the URL to open; a change of the
//! version file and a version push reach the open pages (a push names one
//! open stream, 404 for an unknown one, or everyone); settings and the data
//! directory fail with one line before anything is written; README and
//! `--help` list every endpoint with its `curl` example.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sse_hub::endpoints::ENDPOINTS;
use sse_testkit::{SseClient, request, within};
use support::{Hub, replace_file, temp_dir, wait_for};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

// Linux signal numbers (the test kit sends raw numbers).
const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

fn rid(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::new_v4().simple())
}

/// Skips to the next `task_event` of `task_id` with `event_type`; returns its payload.
async fn task_event(c: &mut SseClient, task_id: &str, event_type: &str) -> Value {
    loop {
        let (p, _) = wait_for(c, "task_event").await;
        if p["task_id"] == task_id && p["event_type"] == event_type {
            return p;
        }
    }
}

#[tokio::test]
async fn sigterm_cancels_a_running_task_and_exits_0_well_within_the_graceful_timeout() {
    // 30 s to finish tasks (the hub's default, stated here): the old
    // behaviour waited all of it for a task that never ends.
    let mut hub = Hub::start(&["--graceful-shutdown-timeout", "30"], &[]).await;
    let (mut c, _) = hub.open(&rid("term")).await;
    let r = hub.post("/api/tasks", &json!({"task_type": "long", "params": {"delay_ms": 50}})).await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    let task_id = r.json()["task_id"].as_str().expect("task_id").to_owned();
    task_event(&mut c, &task_id, "progress_update").await; // running

    let stopped = Instant::now();
    hub.process.signal(SIGTERM);
    let cancelled = task_event(&mut c, &task_id, "task_cancelled").await;
    assert_eq!(cancelled["data"], json!({"reason": "shutdown"}));
    let code = hub.process.wait_exit_within(Duration::from_secs(5)).await;
    assert_eq!(code, Some(0), "exit code (None: still running 5 s after SIGTERM)");
    assert!(stopped.elapsed() < Duration::from_secs(5), "took {:?}", stopped.elapsed());
}

#[tokio::test]
async fn a_second_sigint_exits_at_once_with_130() {
    let mut hub = Hub::start(&[], &[]).await;
    // A request whose body never completes holds its connection open, so the
    // gateway's drain waits for it up to its shutdown deadline (10 s).
    let mut slow = tokio::net::TcpStream::connect(hub.addr()).await.expect("connect");
    let head =
        "POST /api/tasks HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
    slow.write_all(head.as_bytes()).await.expect("write");
    // Accepted before this stream; by the time the stream is ready, that
    // request's head has long been read.
    let (_c, _) = hub.open(&rid("int")).await;

    hub.process.signal(SIGINT);
    hub.process.wait_for_log("shutting down: draining streams").await;
    let second = Instant::now();
    hub.process.signal(SIGINT);
    let code = hub.process.wait_exit_within(Duration::from_secs(3)).await;
    assert_eq!(code, Some(130), "exit code (None: still draining 3 s after the second Ctrl-C)");
    assert!(second.elapsed() < Duration::from_secs(3));
    assert!(
        hub.process.stderr().iter().any(|l| l.contains("second SIGINT: exiting at once")),
        "{:?}",
        hub.process.stderr()
    );
    drop(slow);
}

#[tokio::test]
async fn startup_prints_the_dashboard_url_and_it_opens_the_dashboard() {
    let dir = temp_dir("url");
    let data = dir.to_string_lossy().into_owned();
    let mut child = tokio::process::Command::new(sse_testkit::workspace_bin("sse-hub"))
        .args(["--port", "0", "--host", "127.0.0.1", "--data-dir", &data])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start sse-hub");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let url = within("the dashboard line", async {
        loop {
            let line = lines.next_line().await.expect("read stdout").expect("sse-hub exited before printing its URL");
            if let Some(url) = line.strip_prefix("sse-hub dashboard: ") {
                return url.to_owned();
            }
        }
    })
    .await;
    let hostport = url
        .strip_prefix("http://")
        .and_then(|r| r.strip_suffix('/'))
        .unwrap_or_else(|| panic!("not http://HOST:PORT/: {url}"));
    assert!(hostport.starts_with("127.0.0.1:") && !hostport.ends_with(":0"), "{url}");
    let page = request(hostport.parse().expect("HOST:PORT"), "GET", "/", &[], b"").await;
    assert_eq!(page.status, 200);
    assert!(String::from_utf8_lossy(&page.body).contains("<title>sse-hub dashboard</title>"));
    child.kill().await.expect("kill");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_change_of_the_version_file_reaches_the_open_pages() {
    let dir = temp_dir("version");
    let file = dir.join("version.json");
    std::fs::write(&file, br#"{"version":"1.0.0"}"#).expect("write version file");
    let hub = Hub::start(&["--frontend-version-file", file.to_str().expect("utf-8")], &[]).await;
    let (mut a, before) = hub.open(&rid("vf-a")).await;
    let (mut b, _) = hub.open(&rid("vf-b")).await;
    let version = before.iter().find(|(t, _)| t == "version").expect("a version event before ready");
    assert_eq!(version.1["version"], "1.0.0", "{before:?}");

    replace_file(&file, br#"{"version":"1.1.0","changelog":"new leases view"}"#);
    for c in [&mut a, &mut b] {
        let (p, _) = wait_for(c, "version").await;
        assert_eq!(p, json!({"version": "1.1.0", "changelog": "new leases view"}));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_version_push_names_an_open_stream_or_everyone_and_an_unknown_id_is_404() {
    let hub = Hub::start(&[], &[]).await;
    let (r1, r2) = (rid("vp-1"), rid("vp-2"));
    let (mut a, _) = hub.open(&r1).await;
    let (mut b, _) = hub.open(&r2).await;
    let push = "/internal/deployments/version";

    let r = hub.post(push, &json!({"request_id": rid("vp-unknown"), "version": "2.0.0"})).await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));

    let r = hub.post(push, &json!({"request_id": r1, "version": "2.0.1", "changelog": "only r1"})).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json(), json!({"request_id": r1, "delivered": true, "status": "delivered"}));
    let (p, _) = wait_for(&mut a, "version").await;
    assert_eq!(p, json!({"version": "2.0.1", "changelog": "only r1"}));

    let r = hub.post(push, &json!({"version": "2.1.0"})).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json(), json!({"request_id": null, "delivered": true, "status": "delivered"}));
    let (p, _) = wait_for(&mut a, "version").await;
    assert_eq!(p, json!({"version": "2.1.0"}));
    // r2's first version event after ready is the broadcast: the targeted one never reached it.
    let (p, _) = wait_for(&mut b, "version").await;
    assert_eq!(p, json!({"version": "2.1.0"}));

    let r = hub.post(push, &json!({"version": ""})).await;
    assert_eq!(r.status, 400);
}

/// Runs the binary with a clean environment; returns (exit code, stderr).
async fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(sse_testkit::workspace_bin("sse-hub"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_BACKTRACE", "1")
        .kill_on_drop(true)
        .output();
    let out = within(&format!("sse-hub {args:?}"), out).await.expect("run sse-hub");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test]
async fn an_invalid_mqtt_url_or_an_unusable_data_dir_is_one_line_and_nothing_is_written() {
    let parent = temp_dir("nowrite");
    let data = parent.join("data");
    let data_s = data.to_string_lossy().into_owned();
    let (code, stderr) =
        run(&["--port", "0", "--host", "127.0.0.1", "--data-dir", &data_s, "--mqtt-url", "http://broker"]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("MQTT_URL") && stderr.contains("http://broker"), "{stderr}");
    assert!(!data.exists(), "the data directory was created although the settings were refused");
    let _ = std::fs::remove_dir_all(&parent);

    let (code, stderr) = run(&["--port", "0", "--host", "127.0.0.1", "--data-dir", "/proc/nope"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("sse-hub: cannot create the data directory /proc/nope: "), "{stderr}");
    assert_eq!(stderr.matches("(os error").count(), 1, "the OS error once: {stderr}");
    assert!(!stderr.to_lowercase().contains("backtrace"), "{stderr}");
}

/// README's hub section: from its heading to the next `## `.
fn readme_hub_section() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md");
    let readme = std::fs::read_to_string(&path).expect("README.md");
    let start = readme.find("## The reference server: `sse-hub`").expect("the hub section");
    let rest = &readme[start + 3..];
    let end = rest.find("\n## ").map_or(rest.len(), |i| i);
    rest[..end].to_owned()
}

#[tokio::test]
async fn readme_and_help_list_every_endpoint_with_its_curl_example() {
    let section = readme_hub_section();
    let out = within(
        "sse-hub --help",
        tokio::process::Command::new(sse_testkit::workspace_bin("sse-hub")).arg("--help").output(),
    )
    .await
    .expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for e in ENDPOINTS {
        assert!(e.example.starts_with("curl ") || e.example.contains("| curl "), "{e:?}");
        let route = format!("{} {}", e.method, e.path);
        assert!(help.contains(&route), "--help does not list {route}");
        assert!(help.contains(e.example), "--help lacks the example of {route}: {}", e.example);
        assert!(section.contains(&format!("`{route}`")), "README's hub section does not list `{route}`");
        assert!(section.contains(e.example), "README's hub section lacks the example of {route}:\n{}", e.example);
    }
    // The list is complete: each documented route the hub serves answers (not 404).
    let dir = temp_dir("endpoints");
    let file = dir.join("version.json");
    std::fs::write(&file, br#"{"version":"1"}"#).expect("write");
    let hub = Hub::start(&["--frontend-version-file", file.to_str().expect("utf-8")], &[]).await;
    for e in ENDPOINTS.iter().filter(|e| e.method == "GET" && !e.path.contains('{') && e.path != "/api/sse/stream") {
        assert_ne!(hub.get(e.path).await.status, 404, "GET {}", e.path);
    }
    for e in ENDPOINTS.iter().filter(|e| e.method == "POST" && !e.path.contains('{')) {
        assert_ne!(hub.post(e.path, &json!({})).await.status, 404, "POST {}", e.path);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
