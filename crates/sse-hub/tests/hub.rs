//! Black-box: the real `sse-hub` binary on 127.0.0.1:0 with a temporary data
//! directory, real SSE streams over TCP. Leases (file watcher, notify
//! endpoint, expiry timer, failed reads), tasks, version notices, rotation
//! nudges and the internal access rule (loopback and secret side; a
//! non-loopback peer cannot be produced here, that side is unit-tested).

mod support;

use serde_json::{Value, json};
use sse_testkit::within;
use support::{Hub, append_line, next_app, now_secs, replace_file, wait_for};

#[tokio::test]
async fn demo_data_is_created_and_leases_pools_and_usage_are_served() {
    let hub = Hub::start(&[], &[]).await;
    assert!(hub.dir.join("dnsmasq.conf").exists());
    let leases = hub.get("/api/dhcp/leases").await.json();
    let list = leases.as_array().expect("array");
    assert_eq!(list.len(), 4);
    let printer = list.iter().find(|l| l["ip_address"] == "192.168.1.10").expect("static lease");
    assert_eq!((printer["is_static"].as_bool(), &printer["lease_time"]), (Some(true), &Value::Null));
    assert!(list.iter().all(|l| l["is_active"] == true));
    let laptop = list.iter().find(|l| l["hostname"] == "laptop").expect("laptop");
    assert!(laptop["lease_time"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(laptop["pool_name"], "lan");
    let pools = hub.get("/api/dhcp/pools").await.json();
    assert_eq!(
        pools[0],
        json!({"pool_name":"lan","start_ip":"192.168.1.100","end_ip":"192.168.1.199",
        "netmask":"255.255.255.0","lease_duration":43200,"total_addresses":100})
    );
    let usage = hub.get("/api/dhcp/pools/usage").await.json();
    assert_eq!((usage[0]["used_addresses"].as_u64(), usage[0]["usage_percentage"].as_f64()), (Some(2), Some(2.0)));
    assert_eq!(hub.get("/").await.status, 200, "dashboard page");
}

#[tokio::test]
async fn lease_appended_removed_and_expiring_are_sent_once_each() {
    let hub = Hub::start(&[], &[]).await;
    let (mut c, _) = hub.open("leases1").await;
    let file = hub.leases_file();

    // Appended to the file: the watcher sees it.
    let expiry = now_secs() + 3;
    append_line(&file, &format!("{expiry} 02:00:00:00:aa:01 192.168.1.150 shortlived *"));
    let (p, skipped) = wait_for(&mut c, "lease_added").await;
    assert!(skipped.is_empty(), "nothing before lease_added: {skipped:?}");
    assert_eq!(p["event_type"], "lease_added");
    assert_eq!(p["lease"]["ip_address"], "192.168.1.150");
    assert_eq!(p["lease"]["hostname"], "shortlived");
    assert!(p["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(next_app(&mut c).await.0, "data_changed");

    // Expires while the file stays the same: the timer sends it once.
    let (p, skipped) = wait_for(&mut c, "lease_expired").await;
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(p["lease"]["ip_address"], "192.168.1.150");
    assert_eq!(p["lease"]["is_active"], false);
    assert_eq!(next_app(&mut c).await.0, "data_changed");
    // A re-read of the unchanged file does not fire it again.
    let r = hub.post("/internal/notify-lease-change", &json!({})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "success");
    assert_eq!(next_app(&mut c).await.0, "data_changed", "notify always sends data_changed, no lease event");

    // Removed (file replaced without it).
    let content = std::fs::read_to_string(&file).expect("read");
    let without: String = content.lines().filter(|l| !l.contains("192.168.1.150")).map(|l| format!("{l}\n")).collect();
    replace_file(&file, without.as_bytes());
    let (p, skipped) = wait_for(&mut c, "lease_removed").await;
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(p["lease"]["hostname"], "shortlived");
    assert!(hub.get("/api/dhcp/leases").await.json().as_array().is_some_and(|l| l.len() == 4));
}

#[tokio::test]
async fn notify_endpoint_rereads_updates_and_a_garbled_file_keeps_the_snapshot() {
    // No poll; the watcher is not needed for this test's guarantees.
    let hub = Hub::start(&["--lease-poll-seconds", "0"], &[]).await;
    let (mut c, _) = hub.open("leases2").await;
    let file = hub.leases_file();
    let content = std::fs::read_to_string(&file).expect("read");
    let renamed = content.replace(" phone ", " phone-renamed ");
    replace_file(&file, renamed.as_bytes());
    // Whether the watcher or the notify call reads first, exactly one update is sent.
    let r = hub.post("/internal/notify-lease-change", &json!({})).await;
    assert_eq!(r.json()["reloaded"], true);
    let (p, _) = wait_for(&mut c, "lease_updated").await;
    assert_eq!(p["lease"]["hostname"], "phone-renamed");

    let before = hub.get("/api/dhcp/leases").await.body;
    let failures = hub.metric("sse_hub_lease_read_failures_total").await;
    replace_file(&file, b"\xff\xfe garbage \x00\x01\n");
    let r = hub.post("/internal/notify-lease-change", &json!({})).await;
    assert_eq!((r.status, &r.json()["reloaded"]), (200, &json!(false)));
    assert_eq!(hub.get("/api/dhcp/leases").await.body, before, "snapshot kept");
    assert!(hub.metric("sse_hub_lease_read_failures_total").await > failures, "failure counted");
    replace_file(&file, b"not a lease\nstill not one\n");
    assert_eq!(hub.post("/internal/notify-lease-change", &json!({})).await.json()["reloaded"], false);
    std::fs::remove_file(&file).expect("remove");
    assert_eq!(hub.post("/internal/notify-lease-change", &json!({})).await.json()["reloaded"], false);
    assert_eq!(hub.get("/api/dhcp/leases").await.body, before, "snapshot kept");
    // No lease event was sent for any failed read: the next event is the rotation barrier.
    assert_eq!(hub.post("/internal/rotation-nudge", &json!({})).await.status, 200);
    let (_, skipped) = wait_for(&mut c, "rotation-updated").await;
    assert!(skipped.iter().all(|t| t == "data_changed" || t == "lease_updated"), "{skipped:?}");
}

fn task_events(types: &[(String, Value)], id: &str) -> Vec<String> {
    types
        .iter()
        .filter(|(t, p)| t == "task_event" && p["task_id"] == id)
        .map(|(_, p)| p["event_type"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn task_until_end(c: &mut sse_testkit::SseClient, id: &str) -> Vec<(String, Value)> {
    within("the task's terminal event", async {
        let mut seen = Vec::new();
        loop {
            let (t, p) = next_app(c).await;
            let end = t == "task_event"
                && p["task_id"] == id
                && ["task_completed", "task_failed", "task_cancelled"]
                    .contains(&p["event_type"].as_str().unwrap_or(""));
            seen.push((t, p));
            if end {
                return seen;
            }
        }
    })
    .await
}

#[tokio::test]
async fn tasks_demo_failing_long_cancel_and_timeout() {
    let hub = Hub::start(&["--task-timeout-seconds", "1"], &[]).await;
    let (mut c, _) = hub.open("tasks1").await;

    let r = hub.post("/api/tasks", &json!({"task_type":"demo","params":{"steps":3,"delay_ms":50}})).await;
    assert_eq!(r.status, 201);
    let body = r.json();
    assert_eq!(body["status"], "pending");
    let id = body["task_id"].as_str().expect("task_id").to_owned();
    let seen = task_until_end(&mut c, &id).await;
    assert_eq!(
        task_events(&seen, &id),
        ["task_started", "progress_update", "progress_update", "progress_update", "task_completed"]
    );
    let ours: Vec<&Value> = seen.iter().filter(|(_, p)| p["task_id"] == id.as_str()).map(|(_, p)| p).collect();
    assert_eq!(ours[2]["data"], json!({"text": "Step 2/3", "value": 2.0 / 3.0}));
    assert_eq!(ours[4]["data"], json!({"status": "success"}));
    assert!(ours.iter().all(|p| p["timestamp"].as_str().is_some_and(|t| t.ends_with('Z'))));
    let status = hub.get(&format!("/api/tasks/{id}/status")).await.json();
    assert_eq!((status["status"].as_str(), &status["result"]), (Some("completed"), &json!({"status": "success"})));

    let r =
        hub.post("/api/tasks", &json!({"task_type":"failing","params":{"delay_ms":10,"error_message":"boom"}})).await;
    let id = r.json()["task_id"].as_str().expect("id").to_owned();
    let seen = task_until_end(&mut c, &id).await;
    assert_eq!(task_events(&seen, &id), ["task_started", "task_failed"]);
    assert_eq!(seen.last().map(|(_, p)| p["data"]["error"].clone()), Some(json!("boom")));

    let r = hub.post("/api/tasks", &json!({"task_type":"long","params":{"delay_ms":20}})).await;
    let id = r.json()["task_id"].as_str().expect("id").to_owned();
    let (p, _) = wait_for(&mut c, "task_event").await;
    assert_eq!((p["task_id"].as_str(), p["event_type"].as_str()), (Some(id.as_str()), Some("task_started")));
    let r = hub.post(&format!("/api/tasks/{id}/cancel"), &json!({})).await;
    assert_eq!((r.status, &r.json()["success"]), (200, &json!(true)));
    let seen = task_until_end(&mut c, &id).await;
    assert_eq!(task_events(&seen, &id).last().map(String::as_str), Some("task_cancelled"));
    assert_eq!(hub.post(&format!("/api/tasks/{id}/cancel"), &json!({})).await.status, 404, "already ended");
    assert_eq!(hub.get(&format!("/api/tasks/{id}/status")).await.json()["status"], "cancelled");
    let del = hub.addr();
    assert_eq!(sse_testkit::request(del, "DELETE", &format!("/api/tasks/{id}"), &[], b"").await.status, 200);
    assert_eq!(hub.get(&format!("/api/tasks/{id}/status")).await.status, 404);

    let r = hub.post("/api/tasks", &json!({"task_type":"long","params":{"delay_ms":100}})).await;
    let id = r.json()["task_id"].as_str().expect("id").to_owned();
    let seen = task_until_end(&mut c, &id).await;
    let last = &seen.last().expect("end").1;
    assert_eq!(
        (last["event_type"].as_str(), last["data"]["code"].as_str()),
        (Some("task_failed"), Some("TASK_TIMEOUT"))
    );

    assert_eq!(hub.post("/api/tasks", &json!({"task_type":"nope"})).await.status, 400);
    assert_eq!(hub.post("/api/tasks", &json!({"task_type":"demo","params":{"steps":0}})).await.status, 400);
    assert_eq!(hub.get("/api/tasks/unknown/status").await.status, 404);
}

#[tokio::test]
async fn version_push_needs_the_secret_reaches_streams_and_is_pending_on_connect() {
    let dir = support::temp_dir("version");
    let vfile = dir.join("version.json");
    std::fs::write(&vfile, br#"{"version":"v-file"}"#).expect("write version");
    let vpath = vfile.to_string_lossy().into_owned();
    let hub = Hub::start(&["--frontend-version-file", &vpath], &[("INTERNAL_API_SECRET", "s3cret")]).await;
    let (mut a, before) = hub.open("va").await;
    assert_eq!(before, vec![("version".to_owned(), json!({"version": "v-file"}))], "fetched version before ready");

    let body = json!({"request_id": "vb", "version": "v2", "changelog": "fixes"});
    assert_eq!(hub.post("/internal/deployments/version", &body).await.status, 401);
    let bad = [("Authorization", "Bearer wrong")];
    assert_eq!(hub.post_with("/internal/deployments/version", &body, &bad).await.status, 401);
    let auth = [("Authorization", "Bearer s3cret")];
    let r = hub.post_with("/internal/deployments/version", &body, &auth).await;
    assert_eq!(r.status, 404, "no stream vb is open");
    let (b, _) = hub.open("vb").await;
    let r = hub.post_with("/internal/deployments/version", &body, &auth).await;
    assert_eq!(r.status, 202);
    assert_eq!(r.json(), json!({"request_id": "vb", "delivered": true, "status": "delivered"}));
    b.close().await;
    let (_b, before) = hub.open("vb").await;
    assert_eq!(before, vec![("version".to_owned(), json!({"version": "v2", "changelog": "fixes"}))], "pending");
    let all = json!({"version": "v3"});
    assert_eq!(hub.post_with("/internal/deployments/version", &all, &auth).await.status, 202);
    // va's next event is the broadcast: the push to vb did not reach it.
    assert_eq!(next_app(&mut a).await, ("version".to_owned(), json!({"version": "v3"})));

    // Rotation: the secret is required, and the subcommand sends it.
    assert_eq!(hub.post("/internal/rotation-nudge", &json!({})).await.status, 401);
    assert_eq!(hub.get("/internal/metrics").await.status, 401);
    let bin = sse_testkit::workspace_bin("sse-hub");
    let out = within(
        "the rotation-nudge subcommand",
        tokio::process::Command::new(&bin)
            .args(["rotation-nudge", "--url", &format!("http://{}", hub.addr())])
            .env("INTERNAL_API_SECRET", "s3cret")
            .output(),
    )
    .await
    .expect("run subcommand");
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rotation nudge sent"));
    let (p, _) = wait_for(&mut a, "rotation-updated").await;
    assert_eq!(p, json!({}));
    let out = tokio::process::Command::new(&bin)
        .args(["rotation-nudge", "--url", &format!("http://{}", hub.addr())])
        .output()
        .await
        .expect("run subcommand");
    assert!(!out.status.success(), "without the secret the hub refuses and the command fails");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn rotation_nudge_reaches_every_stream_and_internal_routes_are_open_on_loopback_without_secret() {
    let hub = Hub::start(&[], &[]).await;
    let (mut a, _) = hub.open("ra").await;
    let (mut b, _) = hub.open("rb").await;
    let r = hub.post("/internal/rotation-nudge", &json!({"ignored": true})).await;
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    assert_eq!(next_app(&mut a).await, ("rotation-updated".to_owned(), json!({})));
    assert_eq!(next_app(&mut b).await, ("rotation-updated".to_owned(), json!({})));
    assert!(hub.metric("sse_hub_rotation_nudges_total").await >= 1.0);
    let r = hub.post("/internal/deployments/version", &json!({"request_id": "ra", "version": "v3"})).await;
    assert_eq!(r.status, 202, "loopback without a secret is allowed");
    assert_eq!(hub.get("/healthz").await.status, 200);
    let mut hub = hub;
    assert_eq!(hub.process.terminate().await, 0, "graceful exit");
}

/// Lease lines `10.9.{i/250}.{i%250+1}`, `n` of them from `from` on.
fn lease_lines(from: usize, n: usize) -> String {
    let expiry = now_secs() + 3600;
    (from..from + n)
        .map(|i| {
            format!(
                "{expiry} 02:09:00:00:{:02x}:{:02x} 10.9.{}.{} many-{i} *\n",
                i / 250,
                i % 250,
                i / 250,
                i % 250 + 1
            )
        })
        .collect()
}

fn append_all(file: &std::path::Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(file).expect("open lease file");
    f.write_all(text.as_bytes()).expect("append in one write");
}

fn ips(list: &Value) -> Vec<String> {
    let mut ips: Vec<String> =
        list.as_array().expect("a list").iter().map(|l| l["ip_address"].as_str().unwrap_or("").to_owned()).collect();
    ips.sort();
    ips
}

#[tokio::test]
async fn a_stream_asking_for_the_lease_snapshot_gets_it_before_ready_and_later_events_carry_the_next_seq() {
    let hub = Hub::start(&[], &[]).await;
    let (mut c, before) = hub.open("snap1&snapshot=leases").await;
    let snapshots: Vec<&Value> = before.iter().filter(|(t, _)| t == "leases_snapshot").map(|(_, p)| p).collect();
    assert_eq!(snapshots.len(), 1, "one snapshot before ready: {before:?}");
    let snap = snapshots[0];
    assert_eq!(snap["event_type"], "leases_snapshot");
    assert_eq!(ips(&snap["leases"]), ips(&hub.get("/api/dhcp/leases").await.json()), "every lease");
    assert_eq!(snap["leases"], hub.get("/api/dhcp/leases").await.json(), "in the lease JSON of the API");
    let seq = snap["seq"].as_u64().expect("seq");

    append_line(&hub.leases_file(), &format!("{} 02:00:00:00:aa:31 192.168.1.131 seqbox *", now_secs() + 3600));
    let (p, skipped) = wait_for(&mut c, "lease_added").await;
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!((p["seq"].as_u64(), &p["lease"]["hostname"]), (Some(seq + 1), &json!("seqbox")));

    // A later stream's snapshot has the seq of that last event; a stream
    // without the parameter gets none.
    let (_b, before) = hub.open("snap2&snapshot=leases").await;
    let (_, snap) = before.iter().find(|(t, _)| t == "leases_snapshot").expect("snapshot");
    assert_eq!(snap["seq"].as_u64(), Some(seq + 1));
    assert!(snap["leases"].as_array().is_some_and(|l| l.iter().any(|l| l["hostname"] == "seqbox")));
    let (_d, before) = hub.open("snap3").await;
    assert!(before.iter().all(|(t, _)| t != "leases_snapshot"), "{before:?}");
}

#[tokio::test]
async fn a_reload_changing_more_than_the_threshold_sends_one_snapshot_instead_of_an_event_per_lease() {
    let hub = Hub::start(&["--lease-snapshot-threshold", "3", "--lease-poll-seconds", "0"], &[]).await;
    let (mut c, _) = hub.open("bulk1").await;
    let file = hub.leases_file();

    // Three changes (not more than the threshold): one event each, seq by seq.
    append_all(&file, &lease_lines(0, 3));
    let mut seqs = Vec::new();
    for _ in 0..3 {
        let (ty, p) = next_app(&mut c).await;
        assert_eq!(ty, "lease_added", "{p}");
        seqs.push(p["seq"].as_u64().expect("seq"));
    }
    assert_eq!(next_app(&mut c).await.0, "data_changed");
    assert_eq!(seqs, vec![seqs[0], seqs[0] + 1, seqs[0] + 2], "consecutive");

    // Four: one snapshot with every lease, one step further, then data_changed.
    append_all(&file, &lease_lines(3, 4));
    let (ty, p) = next_app(&mut c).await;
    assert_eq!(ty, "leases_snapshot", "instead of four lease_added: {p}");
    assert_eq!(p["seq"].as_u64(), Some(seqs[2] + 1));
    assert_eq!(ips(&p["leases"]), ips(&hub.get("/api/dhcp/leases").await.json()));
    assert!(p["leases"].as_array().is_some_and(|l| l.iter().any(|l| l["hostname"] == "many-6")));
    assert_eq!(next_app(&mut c).await.0, "data_changed");
    assert_eq!(hub.metric("sse_hub_lease_events_total{event=\"leases_snapshot\"}").await, 1.0);
    assert_eq!(hub.metric("sse_hub_lease_events_total{event=\"lease_added\"}").await, 3.0);
}

#[tokio::test]
async fn the_snapshot_route_sends_the_snapshot_on_that_stream_only() {
    let hub = Hub::start(&[], &[]).await;
    let (mut a, _) = hub.open("sr-a").await;
    let (mut b, _) = hub.open("sr-b").await;
    let r = hub.post("/api/dhcp/leases/snapshot", &json!({"request_id": "sr-a"})).await;
    assert_eq!((r.status, r.json()), (202, json!({"request_id": "sr-a", "delivered": true})));
    let (p, skipped) = wait_for(&mut a, "leases_snapshot").await;
    assert!(skipped.is_empty(), "{skipped:?}");
    assert_eq!(ips(&p["leases"]), ips(&hub.get("/api/dhcp/leases").await.json()));
    let base = p["seq"].as_u64().expect("seq");
    assert!(base > 1_700_000_000_000_000, "no lease event yet: seq is the process's start in µs, {base}");

    assert_eq!(hub.post("/api/dhcp/leases/snapshot", &json!({"request_id": "nobody"})).await.status, 404);
    assert_eq!(hub.post("/api/dhcp/leases/snapshot", &json!({})).await.status, 400);
    // b got nothing: its next event is the barrier.
    assert_eq!(hub.post("/internal/rotation-nudge", &json!({})).await.status, 200);
    assert_eq!(next_app(&mut b).await.0, "rotation-updated");
}

#[tokio::test]
async fn a_stream_dropped_as_a_slow_consumer_is_logged_as_a_warning_with_its_token_and_request_id() {
    let hub = Hub::start(&["--stream-queue-bytes", "65536", "--lease-poll-seconds", "0"], &[]).await;
    // A lease file whose snapshot is bigger than the stream queue.
    append_all(&hub.leases_file(), &lease_lines(0, 1000));
    assert_eq!(hub.post("/internal/notify-lease-change", &json!({})).await.json()["reloaded"], true);
    // A client that reads nothing after `ready`, with a small receive buffer.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = socket.connect(hub.addr()).await.expect("connect");
    let mut c = sse_testkit::SseClient::open_on(tcp, hub.addr(), "GET", "/api/sse/stream?request_id=slow1", &[]).await;
    within("ready", async { while c.next_event().await.event_type != "ready" {} }).await;
    let mut answers = Vec::new();
    for _ in 0..20 {
        let r = hub.post("/api/dhcp/leases/snapshot", &json!({"request_id": "slow1"})).await;
        answers.push(r.status);
        if r.status != 202 || r.json()["delivered"] != true {
            break;
        }
    }
    let line = hub.process.wait_for_log("closed a stream with error").await;
    assert!(
        line.contains("WARN") && line.contains("token=") && line.contains("request_id=slow1"),
        "a warning naming the token and the request_id: {line}"
    );
    let gateway = hub.process.wait_for_log("closed streams whose clients did not keep up").await;
    assert!(gateway.contains("WARN"), "{gateway}");
    assert!(answers.len() < 20, "the queue bound was hit: {answers:?}");
    drop(c);
}
