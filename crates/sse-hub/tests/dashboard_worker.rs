//! The dashboard's stream worker (`src/dashboard-worker.js`) under node with
//! a fake EventSource and fetch (`browser-test/worker.mjs`): its lease
//! bookkeeping follows the hub's `seq` rules, and a jump in `seq` or the
//! gateway's `gap` event makes it ask for a snapshot on the stream; a
//! resumed stream (its snapshot, the replayed events, `ready`) drops what the
//! snapshot holds, applies the rest and asks for nothing; a stream the
//! browser closed is reopened with `lastEventId` (docs/BACKEND.md,
//! Dashboard). Cases a real browser cannot be made to hit on demand are
//! checked here; `dashboard_resume.rs` has the real ones. Fails (never
//! skips) without node.

mod support;

use std::path::Path;

use sse_testkit::within;
use support::browser_dir;

#[tokio::test]
async fn the_worker_applies_lease_events_in_seq_order_and_resyncs_after_a_jump_or_a_gap() {
    let worker = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/dashboard-worker.js");
    let out = within(
        "node worker.mjs",
        tokio::process::Command::new("node")
            .arg(browser_dir().join("worker.mjs"))
            .arg(&worker)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("node is required (apt-get install -y nodejs)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "worker.mjs failed:\n{stdout}\n{stderr}");
    assert!(stdout.lines().any(|l| l == "worker ok"), "{stdout}");
}
