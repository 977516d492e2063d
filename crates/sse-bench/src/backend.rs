//! `backend`: a minimal callback backend for the gateway under test. It
//! answers every `POST` with 200 `{}` (accept, no bindings of its own) over
//! keep-alive connections, and keeps the set of live tokens (connect adds,
//! disconnect removes) for `GET /tokens`, which the `send` scenario reads.
//! Rosters (`"action":"roster"`) are answered 200 too, parsed, and counted
//! (how many, body bytes, tokens) for `GET /stats` (with the live token
//! count), which the `admin` and `roster` scenarios read; they never change
//! the token set.
//!
//! With `--connects-per-sec R` it is a backend of limited capacity (the
//! `storm` scenario): connect callbacks are answered at a steady R a second
//! at most, each waiting its turn (a token bucket of one). It counts the
//! callbacks it holds open at once (received, not yet answered) and the
//! connect and disconnect callbacks it heard, for `GET /stats`;
//! `POST /stats/reset-peak` starts a new peak.
//!
//! Raw HTTP/1.1 on tokio, like the client side: Content-Length bodies only
//! (what the gateway sends), nothing else of HTTP it does not need.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;

use crate::client::{Dialer, Endpoint, HttpConn};

/// Largest request body accepted (callback bodies are a few hundred bytes; a
/// roster of 19,000 tokens is about 0.75 MB).
const MAX_BODY: usize = 8 * 1024 * 1024;
const MAX_HEAD: usize = 64 * 1024;

/// Options of `sse-bench backend`.
#[derive(Debug, clap::Args)]
pub struct BackendArgs {
    /// Listen address; port 0 picks a free port (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Answer connect callbacks at this steady rate at most (a slow
    /// backend); 0: at once.
    #[arg(long, default_value_t = 0.0)]
    pub connects_per_sec: f64,
}

/// Rosters received so far, and the live token count (`GET /stats`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackendStats {
    /// Tokens connected and not yet disconnected.
    pub live_tokens: u64,
    /// Roster callbacks received.
    pub rosters: u64,
    /// Their body bytes, summed.
    pub bytes_total: u64,
    /// Body bytes of the latest one.
    pub last_bytes: u64,
    /// Tokens listed by the latest one.
    pub last_tokens: u64,
    /// Connect callbacks heard.
    #[serde(default)]
    pub connects: u64,
    /// Disconnect callbacks heard.
    #[serde(default)]
    pub disconnects: u64,
    /// Callbacks held open now (received, not yet answered).
    #[serde(default)]
    pub in_flight: u64,
    /// The most held open at once since the start or the last
    /// `POST /stats/reset-peak`.
    #[serde(default)]
    pub peak_in_flight: u64,
}

/// Reads the backend's `GET /stats` (used by the `admin` and `roster` scenarios).
pub async fn fetch_stats(dialer: &Dialer, backend: &Endpoint) -> anyhow::Result<BackendStats> {
    let path = format!("{}/stats", backend.path.trim_end_matches('/'));
    let mut conn = HttpConn::new(backend.with_path(&path));
    let resp = conn.request_default(dialer, "GET", b"").await.context("GET /stats from the backend")?;
    if resp.status != 200 {
        bail!("GET /stats from the backend answered HTTP {}", resp.status);
    }
    serde_json::from_slice(&resp.body).context("GET /stats: not the stats object")
}

/// Starts a new peak of callbacks held at once (the `storm` scenario, between its phases).
pub async fn reset_peak(dialer: &Dialer, backend: &Endpoint) -> anyhow::Result<()> {
    let path = format!("{}/stats/reset-peak", backend.path.trim_end_matches('/'));
    let mut conn = HttpConn::new(backend.with_path(&path));
    let resp = conn.request_default(dialer, "POST", b"").await.context("POST /stats/reset-peak to the backend")?;
    if resp.status != 200 {
        bail!("POST /stats/reset-peak answered HTTP {}", resp.status);
    }
    Ok(())
}

/// What the backend keeps: live tokens, roster counts, callback counts and
/// the connect pace.
#[derive(Debug, Default)]
struct State {
    tokens: Mutex<HashSet<String>>,
    rosters: Mutex<BackendStats>,
    connects: AtomicU64,
    disconnects: AtomicU64,
    in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
    /// With `--connects-per-sec`: the interval, and when the next connect may be answered.
    pace: Option<(Duration, Mutex<Instant>)>,
}

impl State {
    /// Waits for this connect's turn (no wait without a pace).
    async fn connect_turn(&self) {
        let Some((interval, next)) = &self.pace else { return };
        let at = {
            let mut next = next.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let at = (*next).max(Instant::now());
            *next = at + *interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

/// One callback held open; counted until dropped.
struct Held<'a>(&'a State);

impl<'a> Held<'a> {
    fn new(state: &'a State) -> Self {
        let now = state.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        state.peak_in_flight.fetch_max(now, Ordering::Relaxed);
        Held(state)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

type Shared = Arc<State>;

/// Serves until the process is stopped.
pub async fn run(args: BackendArgs) -> anyhow::Result<()> {
    let listener = listen(args.listen).with_context(|| format!("cannot listen on {}", args.listen))?;
    // Scripts read this line to learn the port.
    println!("sse-bench backend listening on http://{}", listener.local_addr()?);
    let pace = match args.connects_per_sec {
        0.0 => None,
        r if r > 0.0 && r.is_finite() => Some((Duration::from_secs_f64(1.0 / r), Mutex::new(Instant::now()))),
        _ => bail!("--connects-per-sec must be 0 or a positive number"),
    };
    let state: Shared = Arc::new(State { pace, ..State::default() });
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    if let Err(e) = serve(tcp, state).await {
                        eprintln!("sse-bench backend: connection error: {e:#}");
                    }
                });
            }
            Err(e) => {
                eprintln!("sse-bench backend: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A listener with a deep accept queue: the gateway opens a burst of new
/// callback connections when hundreds of streams connect at once, and the
/// default backlog (128) would drop SYNs and stall them for a second.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

struct RequestHead {
    method: String,
    path: String,
    content_length: usize,
    close: bool,
    len: usize,
}

fn parse_head(buf: &[u8]) -> anyhow::Result<Option<RequestHead>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let httparse::Status::Complete(len) = req.parse(buf).context("malformed request head")? else {
        return Ok(None);
    };
    let mut head = RequestHead {
        method: req.method.unwrap_or("").to_owned(),
        path: req.path.unwrap_or("").to_owned(),
        content_length: 0,
        close: false,
        len,
    };
    for h in req.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("content-length") {
            head.content_length = value.trim().parse().context("bad Content-Length")?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("chunked request bodies are not supported");
        } else if h.name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        }
    }
    if head.content_length > MAX_BODY {
        bail!("request body of {} bytes is over {MAX_BODY}", head.content_length);
    }
    Ok(Some(head))
}

async fn serve(mut tcp: TcpStream, state: Shared) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let head = loop {
            if let Some(head) = parse_head(&buf)? {
                break head;
            }
            if buf.len() > MAX_HEAD {
                bail!("request head over {MAX_HEAD} bytes");
            }
            match tcp.read(&mut chunk).await? {
                0 => return Ok(()),
                n => buf.extend_from_slice(&chunk[..n]),
            }
        };
        buf.drain(..head.len);
        while buf.len() < head.content_length {
            match tcp.read(&mut chunk).await? {
                0 => return Ok(()),
                n => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..head.content_length).collect();
        // Callbacks are POSTs; the scenarios' own GETs are not counted.
        let _held = (head.method == "POST").then(|| Held::new(&state));
        if head.method == "POST" && is_connect(&body) {
            state.connect_turn().await;
        }
        let (status, answer) = answer(&head.method, &head.path, &body, &state);
        let mut resp =
            format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", answer.len())
                .into_bytes();
        resp.extend_from_slice(&answer);
        tcp.write_all(&resp).await?;
        if head.close {
            return Ok(());
        }
    }
}

/// A connect callback (a cheap look before the full parse in [`answer`]).
fn is_connect(body: &[u8]) -> bool {
    let needle = br#""action":"connect""#;
    body.windows(needle.len()).any(|w| w == needle)
}

fn answer(method: &str, path: &str, body: &[u8], state: &State) -> (&'static str, Vec<u8>) {
    match method {
        "POST" if path == "/stats/reset-peak" => {
            // Less this request itself.
            state.peak_in_flight.store(state.in_flight.load(Ordering::Relaxed).saturating_sub(1), Ordering::Relaxed);
            ("200 OK", b"{}".to_vec())
        }
        "POST" => {
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else { return ("200 OK", b"{}".to_vec()) };
            let action = v.get("action").and_then(|a| a.as_str());
            if action == Some("roster") {
                let listed = v.get("tokens").and_then(|t| t.as_array()).map_or(0, Vec::len);
                let mut stats = state.rosters.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                stats.rosters += 1;
                stats.bytes_total += body.len() as u64;
                stats.last_bytes = body.len() as u64;
                stats.last_tokens = listed as u64;
            } else if let Some(token) = v.get("token").and_then(|t| t.as_str()) {
                let mut live = state.tokens.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                match action {
                    Some("connect") => {
                        state.connects.fetch_add(1, Ordering::Relaxed);
                        live.insert(token.to_owned());
                    }
                    Some("disconnect") => {
                        state.disconnects.fetch_add(1, Ordering::Relaxed);
                        live.remove(token);
                    }
                    _ => {}
                }
            }
            ("200 OK", b"{}".to_vec())
        }
        "GET" if path == "/tokens" => {
            let live = state.tokens.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let list: Vec<&String> = live.iter().collect();
            ("200 OK", serde_json::to_vec(&list).unwrap_or_else(|_| b"[]".to_vec()))
        }
        "GET" if path == "/stats" => {
            let mut stats = *state.rosters.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            stats.live_tokens = state.tokens.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len() as u64;
            stats.connects = state.connects.load(Ordering::Relaxed);
            stats.disconnects = state.disconnects.load(Ordering::Relaxed);
            stats.in_flight = state.in_flight.load(Ordering::Relaxed);
            stats.peak_in_flight = state.peak_in_flight.load(Ordering::Relaxed);
            ("200 OK", serde_json::to_vec(&stats).unwrap_or_else(|_| b"{}".to_vec()))
        }
        _ => ("404 Not Found", br#"{"error":"not found"}"#.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_adds_and_disconnect_removes_tokens() {
        let tokens = State::default();
        let connect = br#"{"action":"connect","token":"t1","request":{"url":"/s","headers":{}}}"#;
        assert_eq!(answer("POST", "/callback", connect, &tokens), ("200 OK", b"{}".to_vec()));
        assert_eq!(answer("GET", "/tokens", b"", &tokens).1, br#"["t1"]"#.to_vec());
        let disconnect = br#"{"action":"disconnect","reason":"client_closed","token":"t1","request":{}}"#;
        answer("POST", "/callback", disconnect, &tokens);
        assert_eq!(answer("GET", "/tokens", b"", &tokens).1, b"[]".to_vec());
        assert_eq!(answer("GET", "/other", b"", &tokens).0, "404 Not Found");
    }

    #[test]
    fn rosters_are_counted_and_leave_tokens_alone() {
        let state = State::default();
        let connect = br#"{"action":"connect","token":"t1","request":{"url":"/s","headers":{}}}"#;
        answer("POST", "/callback", connect, &state);
        let roster = br#"{"action":"roster","instance":"gw","tokens":["t1","t2"],"interval_seconds":1}"#;
        assert_eq!(answer("POST", "/callback", roster, &state), ("200 OK", b"{}".to_vec()));
        answer("POST", "/callback", roster, &state);
        let stats: serde_json::Value = serde_json::from_slice(&answer("GET", "/stats", b"", &state).1).expect("json");
        let n = roster.len() as u64;
        assert_eq!(
            stats,
            serde_json::json!({
                "live_tokens": 1, "rosters": 2, "bytes_total": 2 * n, "last_bytes": n, "last_tokens": 2,
                "connects": 1, "disconnects": 0, "in_flight": 0, "peak_in_flight": 0
            })
        );
        assert_eq!(answer("GET", "/tokens", b"", &state).1, br#"["t1"]"#.to_vec());
    }

    #[tokio::test]
    async fn connects_are_answered_at_the_pace_and_held_ones_counted() {
        let state = State { pace: Some((Duration::from_millis(10), Mutex::new(Instant::now()))), ..State::default() };
        assert!(is_connect(br#"{"action":"connect","token":"t"}"#));
        assert!(!is_connect(br#"{"action":"disconnect","reason":"x","token":"t"}"#));
        let started = Instant::now();
        let (a, b) = (Held::new(&state), Held::new(&state));
        for _ in 0..3 {
            state.connect_turn().await;
        }
        assert!(started.elapsed() >= Duration::from_millis(20), "three turns are 10 ms apart");
        drop((a, b));
        let _c = Held::new(&state);
        let stats: serde_json::Value = serde_json::from_slice(&answer("GET", "/stats", b"", &state).1).expect("json");
        assert_eq!((stats["in_flight"].as_u64(), stats["peak_in_flight"].as_u64()), (Some(1), Some(2)));
        answer("POST", "/stats/reset-peak", b"", &state);
        assert_eq!(state.peak_in_flight.load(Ordering::Relaxed), 0, "the reset request itself is not counted");
    }

    #[test]
    fn request_heads_are_parsed_incrementally() {
        assert!(parse_head(b"POST /cb HTTP/1.1\r\nContent-Le").expect("partial is fine").is_none());
        let head = parse_head(b"POST /cb HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            .expect("valid")
            .expect("complete");
        assert_eq!((head.method.as_str(), head.content_length, head.close, head.len), ("POST", 2, true, 59));
        assert!(parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
    }
}
