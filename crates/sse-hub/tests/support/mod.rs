//! Shared helpers of the hub's black-box tests: start the real `sse-hub`
//! binary on 127.0.0.1:0 with its own temporary data directory, open
//! streams, read application events (`{"type","payload"}` envelopes), make
//! requests, reach the test Mosquitto (`SSE_TEST_MQTT_URL`, required), and
//! check the browser tests' tools (node, Debian chromium, playwright-core).

#![allow(dead_code)] // each test file uses a different subset

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use sse_testkit::{HttpResponse, Process, SseClient, request, within};

/// A running hub and its data directory (removed on drop, unless handed
/// on by [`Hub::stop_keeping_data`]).
pub struct Hub {
    pub process: Process,
    pub dir: PathBuf,
    /// `INTERNAL_API_SECRET`, when the hub was started with one: sent as a
    /// bearer with every request of [`Hub::get`] and [`Hub::post`].
    pub secret: Option<String>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A fresh, unique temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sse-hub-test-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

impl Hub {
    /// Starts the binary with `--port 0 --host 127.0.0.1 --data-dir <tmp>` plus `args`.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Hub {
        Self::spawn(temp_dir("hub"), 0, None, args, env).await
    }

    /// Starts the binary on `port` (from [`sse_testkit::free_ports`], so a
    /// restarted hub keeps its address) over the data directory `dir` (of a
    /// hub stopped by [`Hub::stop_keeping_data`], or new), with
    /// `INTERNAL_API_SECRET` `secret`.
    pub async fn start_on(port: u16, dir: PathBuf, secret: &str, args: &[&str]) -> Hub {
        Self::spawn(dir, port, Some(secret), args, &[]).await
    }

    async fn spawn(dir: PathBuf, port: u16, secret: Option<&str>, args: &[&str], env: &[(&str, &str)]) -> Hub {
        let bin = sse_testkit::workspace_bin("sse-hub");
        let data = dir.to_string_lossy().into_owned();
        let port = port.to_string();
        let mut all = vec!["--port", port.as_str(), "--host", "127.0.0.1", "--data-dir", data.as_str()];
        if let Some(s) = secret {
            all.extend_from_slice(&["--internal-api-secret", s]);
        }
        all.extend_from_slice(args);
        let process = Process::spawn(bin.to_str().expect("utf-8 path"), &all, env).await;
        Hub { process, dir, secret: secret.map(str::to_owned) }
    }

    /// SIGTERM (the hub drains its streams: each gets a `retry:` hint),
    /// waits for the exit and returns its code and the data directory,
    /// which is kept for the next hub.
    pub async fn stop_keeping_data(mut self) -> (i32, PathBuf) {
        let code = self.process.terminate().await;
        (code, std::mem::take(&mut self.dir))
    }

    fn auth(&self) -> Option<String> {
        self.secret.as_ref().map(|s| format!("Bearer {s}"))
    }

    pub fn addr(&self) -> SocketAddr {
        self.process.addr
    }

    pub fn leases_file(&self) -> PathBuf {
        self.dir.join("dnsmasq.leases")
    }

    /// Opens a stream and reads through `ready`; returns the stream and the
    /// application events that came before `ready`.
    pub async fn open(&self, request_id: &str) -> (SseClient, Vec<(String, Value)>) {
        self.open_with(request_id, &[]).await
    }

    /// [`Hub::open`] with extra request headers (a bearer token, a cookie).
    pub async fn open_with(&self, request_id: &str, headers: &[(&str, &[u8])]) -> (SseClient, Vec<(String, Value)>) {
        let mut c = SseClient::open(self.addr(), &format!("/api/sse/stream?request_id={request_id}"), headers).await;
        assert_eq!(c.head.status, 200, "stream status");
        let mut before = Vec::new();
        loop {
            let e = c.next_event().await;
            if e.event_type == "ready" {
                return (c, before);
            }
            before.push(envelope(&e));
        }
    }

    pub async fn get(&self, path: &str) -> HttpResponse {
        let auth = self.auth();
        let h: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        request(self.addr(), "GET", path, &h, b"").await
    }

    pub async fn post(&self, path: &str, body: &Value) -> HttpResponse {
        self.post_with(path, body, &[]).await
    }

    pub async fn post_with(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> HttpResponse {
        let auth = self.auth();
        let mut h = vec![("Content-Type", "application/json")];
        h.extend(auth.iter().map(|a| ("Authorization", a.as_str())));
        h.extend_from_slice(headers);
        request(self.addr(), "POST", path, &h, body.to_string().as_bytes()).await
    }

    /// The value of an unlabelled or labelled metric line starting with
    /// `prefix` of the hub's metrics (0 when absent).
    pub async fn metric(&self, prefix: &str) -> f64 {
        self.metric_at("/internal/metrics", prefix).await
    }

    /// Like [`Hub::metric`], of the in-process gateway's own metrics
    /// (`/metrics`: served with `INTERNAL_API_SECRET` only, see [`Hub::start_on`]).
    pub async fn gateway_metric(&self, prefix: &str) -> f64 {
        self.metric_at("/metrics", prefix).await
    }

    async fn metric_at(&self, path: &str, prefix: &str) -> f64 {
        let m = self.get(path).await;
        assert_eq!(m.status, 200, "GET {path}: {}", String::from_utf8_lossy(&m.body));
        let text = String::from_utf8_lossy(&m.body).into_owned();
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

/// `(type, payload)` of an application event.
pub fn envelope(e: &sse_wire::ParsedEvent) -> (String, Value) {
    let v: Value = serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("envelope {:?}: {err}", e.data));
    (v["type"].as_str().unwrap_or_default().to_owned(), v["payload"].clone())
}

/// The next application event.
pub async fn next_app(c: &mut SseClient) -> (String, Value) {
    envelope(&c.next_event().await)
}

/// Skips events until one of type `ty`; returns its payload and the types skipped.
pub async fn wait_for(c: &mut SseClient, ty: &str) -> (Value, Vec<String>) {
    let mut skipped = Vec::new();
    within(&format!("a {ty} event"), async {
        loop {
            let (t, p) = next_app(c).await;
            if t == ty {
                return (p, skipped);
            }
            skipped.push(t);
        }
    })
    .await
}

pub fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Appends one line in a single write (what a lease writer does).
pub fn append_line(path: &Path, line: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).expect("open lease file");
    f.write_all(format!("{line}\n").as_bytes()).expect("append");
}

/// Replaces a file atomically (write a sibling, rename over).
pub fn replace_file(path: &Path, content: &[u8]) {
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, content).expect("write temp");
    std::fs::rename(&tmp, path).expect("rename");
}

/// The test broker's URL; fails the test when unset or unreachable.
pub async fn mqtt_url() -> String {
    let url = std::env::var("SSE_TEST_MQTT_URL")
        .unwrap_or_else(|_| panic!("SSE_TEST_MQTT_URL is not set (scripts/test starts Mosquitto and sets it)"));
    let hostport = url.trim_start_matches("mqtt://").trim_end_matches('/').to_owned();
    within("the MQTT broker to accept a TCP connection", tokio::net::TcpStream::connect(&hostport))
        .await
        .unwrap_or_else(|e| panic!("MQTT broker {url} unreachable: {e}"));
    url
}

/// Publishes one message at QoS 1 and waits for the broker's acknowledgement.
pub async fn mqtt_publish(url: &str, topic: &str, payload: &[u8]) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let hostport = url.trim_start_matches("mqtt://").trim_end_matches('/');
    let (host, port) = hostport.rsplit_once(':').map_or((hostport, 1883), |(h, p)| (h, p.parse().expect("port")));
    let id = format!("sse-hub-test-pub-{}", uuid::Uuid::new_v4().simple());
    let (client, mut ev) = AsyncClient::new(MqttOptions::new(id, host, port), 10);
    client.publish(topic, QoS::AtLeastOnce, false, payload.to_vec()).await.expect("queue publish");
    within("the broker to acknowledge the publish", async {
        loop {
            match ev.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("MQTT publish failed: {e}"),
            }
        }
    })
    .await;
    let _ = client.disconnect().await;
}

const CHROMIUM: &str = "/usr/bin/chromium";

/// `browser-test/`: the playwright-core scripts of the browser tests.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser-test")
}

/// Fails (never skips) without node or chromium; installs the npm packages
/// with `npm ci` when they are missing.
pub fn ensure_browser_tools() {
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(node.is_ok_and(|o| o.status.success()), "node is required (apt-get install -y nodejs npm)");
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is required (apt-get install -y chromium)");
    let dir = browser_dir();
    if !dir.join("node_modules/playwright-core/package.json").exists() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .unwrap_or_else(|e| panic!("cannot run npm ci in {}: {e}", dir.display()));
        assert!(status.success(), "npm ci failed in {}", dir.display());
    }
}

/// A browser script (`browser-test/<script>`) running under node: its stdout
/// lines drive the test; its stderr is echoed and collected.
pub struct BrowserScript {
    pub child: tokio::process::Child,
    /// Piped when asked for.
    pub stdin: Option<tokio::process::ChildStdin>,
    pub out: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    /// Every stderr line, once the script ended.
    pub stderr: tokio::task::JoinHandle<Vec<String>>,
}

/// Starts `browser-test/<script>` with node (after [`ensure_browser_tools`]).
pub fn run_browser_script(script: &str, args: &[&str], with_stdin: bool) -> BrowserScript {
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt;
    ensure_browser_tools();
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(browser_dir().join(script)).args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
    if with_stdin {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("start node");
    let stdin = child.stdin.take();
    let out = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut err = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let stderr = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Ok(Some(l)) = err.next_line().await {
            eprintln!("node stderr: {l}");
            all.push(l);
        }
        all
    });
    BrowserScript { child, stdin, out, stderr }
}
