//! The floor of the fan-out benchmark on this machine: what any server that
//! writes one event to N sockets must spend, measured two ways.
//!
//! * `floor-server`: an ideal SSE server for `sse-bench fanout --target
//!   ours`. It answers every stream request with the gateway's response head
//!   (chunked) and `ready`, keeps the sockets in plain vectors, and on
//!   `POST /internal/publish` encodes the event once as one HTTP chunk and
//!   writes it to every socket with one `write` each: on the publishing
//!   thread alone (`--writer-threads 1`) or split over K threads, fork-join
//!   per publish. No tasks, no queues, no wake-up per stream: the fan-out
//!   latency of the real gateway can be compared with it under the same
//!   client on the same box.
//! * `loopback-write`: the loopback write cost per stream measured alone,
//!   N TCP pairs inside one process, one reader thread draining the client
//!   sides through epoll, the main thread writing a buffer to every server
//!   side once per round.
//!
//! Plain std threads and blocking accept/reads (only the stream sockets are
//! non-blocking); the runtime of `main` stays idle.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::report::Report;
use crate::target::BROADCAST_KEY;

/// The gateway's stream head (`crates/sse-gateway/src/headers.rs`,
/// `sse_head`): 200, SSE headers, CORS, chunked.
const SSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
connection: keep-alive\r\nx-accel-buffering: no\r\naccess-control-allow-origin: *\r\n\
access-control-allow-methods: GET, POST, OPTIONS\r\n\
access-control-allow-headers: Content-Type, Cache-Control\r\ntransfer-encoding: chunked\r\n\r\n";
/// Largest request head read.
const MAX_HEAD: usize = 16 * 1024;
/// Largest publish body read.
const MAX_BODY: usize = 1024 * 1024;
/// Unwritten bytes a stream may hold before it is dropped (a reader that stopped).
const MAX_PENDING: usize = 1024 * 1024;

/// Set by SIGTERM/SIGINT: print the stats and exit.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Options of `sse-bench floor-server`.
#[derive(Debug, clap::Args)]
pub struct FloorArgs {
    /// Address of the stream listener (any GET path is a stream).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Address of the internal listener (`POST /internal/publish`, `GET /stats`).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub internal_listen: SocketAddr,
    /// Threads writing one publish: 1 writes every socket on the publishing
    /// thread; K splits the streams into K shards, the publishing thread
    /// writing one and K-1 parked threads the others (fork-join per publish).
    #[arg(long, default_value_t = 1)]
    pub writer_threads: usize,
}

/// One open stream: its socket and what a short write left unsent.
struct Stream {
    tcp: TcpStream,
    pending: Vec<u8>,
}

/// What writing one chunk to a shard did.
#[derive(Debug, Default, Clone, Copy)]
struct ShardResult {
    written: u64,
    writes: u64,
    bytes: u64,
    write_ns: u64,
    short: u64,
    would_block: u64,
    closed: u64,
}

impl ShardResult {
    fn add(&mut self, o: &ShardResult) {
        self.written += o.written;
        self.writes += o.writes;
        self.bytes += o.bytes;
        self.write_ns += o.write_ns;
        self.short += o.short;
        self.would_block += o.would_block;
        self.closed += o.closed;
    }
}

/// The writers: shard 0 is written by the publishing thread, shards 1.. by
/// their own threads.
struct Fanout {
    to_workers: Vec<Sender<Arc<[u8]>>>,
    from_workers: Receiver<ShardResult>,
}

/// Totals since start (under one lock: publishes are serialised anyway).
#[derive(Debug, Default)]
struct Totals {
    publishes: u64,
    sum: ShardResult,
    /// Per publish: first write to last write done, microseconds.
    fanout_us: Vec<u64>,
}

/// Statistics of `floor-server` (`GET /stats`, and stderr at exit).
#[derive(Debug, Serialize)]
pub struct FloorStats {
    pub writer_threads: usize,
    pub streams_open: usize,
    pub streams_accepted: u64,
    pub publishes: u64,
    /// Socket writes (one per open stream per publish).
    pub writes: u64,
    pub bytes: u64,
    /// Time inside the write calls, summed over all writer threads.
    pub write_ns_total: u64,
    pub mean_ns_per_write: f64,
    pub short_writes: u64,
    pub would_block: u64,
    pub closed_on_write: u64,
    /// Per publish, from before the first write to the last writer done.
    pub fanout_us_p50: u64,
    pub fanout_us_p99: u64,
    pub fanout_us_max: u64,
    pub fanout_us_mean: f64,
}

struct Server {
    shards: Vec<Mutex<Vec<Stream>>>,
    fanout: Mutex<Fanout>,
    totals: Mutex<Totals>,
    accepted: AtomicU64,
    writer_threads: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Server {
    fn stats(&self) -> FloorStats {
        let t = lock(&self.totals);
        let mut us = t.fanout_us.clone();
        us.sort_unstable();
        FloorStats {
            writer_threads: self.writer_threads,
            streams_open: self.shards.iter().map(|s| lock(s).len()).sum(),
            streams_accepted: self.accepted.load(Ordering::Relaxed),
            publishes: t.publishes,
            writes: t.sum.writes,
            bytes: t.sum.bytes,
            write_ns_total: t.sum.write_ns,
            mean_ns_per_write: t.sum.write_ns as f64 / t.sum.writes.max(1) as f64,
            short_writes: t.sum.short,
            would_block: t.sum.would_block,
            closed_on_write: t.sum.closed,
            fanout_us_p50: percentile(&us, 50.0),
            fanout_us_p99: percentile(&us, 99.0),
            fanout_us_max: us.last().copied().unwrap_or(0),
            fanout_us_mean: us.iter().sum::<u64>() as f64 / us.len().max(1) as f64,
        }
    }

    /// Writes `chunk` to every stream; returns how many took it.
    fn publish(&self, chunk: Arc<[u8]>) -> u64 {
        let fanout = lock(&self.fanout);
        let started = Instant::now();
        for tx in &fanout.to_workers {
            // A worker only stops with the process.
            let _ = tx.send(Arc::clone(&chunk));
        }
        let mut sum = write_shard(&self.shards[0], &chunk);
        for _ in &fanout.to_workers {
            if let Ok(r) = fanout.from_workers.recv() {
                sum.add(&r);
            }
        }
        let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        drop(fanout);
        let mut t = lock(&self.totals);
        t.publishes += 1;
        t.sum.add(&sum);
        t.fanout_us.push(us);
        sum.written
    }
}

/// One write of `chunk` (after anything a short write left) to each stream of `shard`.
fn write_shard(shard: &Mutex<Vec<Stream>>, chunk: &[u8]) -> ShardResult {
    let mut streams = lock(shard);
    let mut r = ShardResult::default();
    streams.retain_mut(|s| {
        let had_pending = !s.pending.is_empty();
        if had_pending {
            s.pending.extend_from_slice(chunk);
        }
        let buf: &[u8] = if had_pending { &s.pending } else { chunk };
        let len = buf.len();
        let t = Instant::now();
        let res = (&s.tcp).write(buf);
        r.write_ns += u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        r.writes += 1;
        match res {
            Ok(n) => {
                r.bytes += n as u64;
                r.written += 1;
                if n < len {
                    r.short += 1;
                    if had_pending {
                        s.pending.drain(..n);
                    } else {
                        s.pending.extend_from_slice(&chunk[n..]);
                    }
                } else {
                    s.pending.clear();
                }
                s.pending.len() <= MAX_PENDING
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                r.would_block += 1;
                r.written += 1;
                if !had_pending {
                    s.pending.extend_from_slice(chunk);
                }
                s.pending.len() <= MAX_PENDING
            }
            Err(_) => {
                r.closed += 1;
                false
            }
        }
    });
    r
}

/// The event as the gateway writes it for `{"key","event":{"name","data"}}`:
/// the envelope (named) or plain data, as one HTTP chunk.
fn encode_chunk(name: Option<&str>, data: &str) -> anyhow::Result<Vec<u8>> {
    let frame = match name {
        Some(n) if !n.is_empty() => sse_wire::encode::envelope(n, data)?,
        _ => sse_wire::encode::data(data),
    };
    Ok(chunked(&frame))
}

fn chunked(frame: &[u8]) -> Vec<u8> {
    let mut c = format!("{:x}\r\n", frame.len()).into_bytes();
    c.extend_from_slice(frame);
    c.extend_from_slice(b"\r\n");
    c
}

/// Runs `floor-server` until SIGTERM or SIGINT, then prints its stats on stderr.
pub fn serve(args: FloorArgs) -> anyhow::Result<()> {
    if args.writer_threads == 0 {
        bail!("--writer-threads must be at least 1");
    }
    let streams = TcpListener::bind(args.listen).with_context(|| format!("bind {}", args.listen))?;
    let internal = TcpListener::bind(args.internal_listen).with_context(|| format!("bind {}", args.internal_listen))?;
    let (result_tx, from_workers) = channel();
    let mut to_workers = Vec::new();
    let mut worker_rx = Vec::new();
    for _ in 1..args.writer_threads {
        let (tx, rx) = channel::<Arc<[u8]>>();
        to_workers.push(tx);
        worker_rx.push(rx);
    }
    let server = Arc::new(Server {
        shards: (0..args.writer_threads).map(|_| Mutex::new(Vec::new())).collect(),
        fanout: Mutex::new(Fanout { to_workers, from_workers }),
        totals: Mutex::default(),
        accepted: AtomicU64::new(0),
        writer_threads: args.writer_threads,
    });
    for (i, rx) in worker_rx.into_iter().enumerate() {
        let (server, tx) = (Arc::clone(&server), result_tx.clone());
        thread::Builder::new().name(format!("floor-writer-{}", i + 1)).spawn(move || {
            while let Ok(chunk) = rx.recv() {
                if tx.send(write_shard(&server.shards[i + 1], &chunk)).is_err() {
                    break;
                }
            }
        })?;
    }
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    // Internal first, like the gateway: once the public line is out, both are known.
    println!("sse-bench floor-server internal listener on http://{}", internal.local_addr()?);
    println!("sse-bench floor-server listening on http://{}", streams.local_addr()?);
    {
        let server = Arc::clone(&server);
        thread::Builder::new().name("floor-accept".into()).spawn(move || accept_streams(&streams, &server))?;
    }
    {
        let server = Arc::clone(&server);
        thread::Builder::new().name("floor-internal".into()).spawn(move || {
            for conn in internal.incoming() {
                let Ok(conn) = conn else { continue };
                let server = Arc::clone(&server);
                let _ = thread::Builder::new().name("floor-publish".into()).spawn(move || {
                    if let Err(e) = internal_conn(conn, &server) {
                        eprintln!("sse-bench floor-server: internal connection: {e:#}");
                    }
                });
            }
        })?;
    }
    while !STOP.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(50));
    }
    eprintln!("sse-bench floor-server stats: {}", serde_json::to_string(&server.stats())?);
    Ok(())
}

/// Accepts stream requests one after the other: head read, head and `ready` written.
fn accept_streams(listener: &TcpListener, server: &Server) {
    let mut next = 0usize;
    for conn in listener.incoming() {
        let Ok(tcp) = conn else { continue };
        match open_stream(tcp) {
            Ok(stream) => {
                server.accepted.fetch_add(1, Ordering::Relaxed);
                lock(&server.shards[next % server.shards.len()]).push(stream);
                next += 1;
            }
            Err(e) => eprintln!("sse-bench floor-server: stream refused: {e:#}"),
        }
    }
}

fn open_stream(mut tcp: TcpStream) -> anyhow::Result<Stream> {
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = Vec::new();
    let head = read_request(&mut tcp, &mut buf)?.context("closed before the request head")?;
    if head.method != "GET" {
        tcp.write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")?;
        bail!("{} {}", head.method, head.path);
    }
    tcp.set_nodelay(true)?;
    let mut answer = SSE_HEAD.to_vec();
    answer.extend_from_slice(&chunked(sse_wire::encode::READY));
    tcp.write_all(&answer)?;
    tcp.set_nonblocking(true)?;
    Ok(Stream { tcp, pending: Vec::new() })
}

/// A request head: method, path, body length; the whole request is consumed from `buf`.
struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

/// Reads one request (head and `Content-Length` body); `None` at a clean EOF.
fn read_request(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<Option<Request>> {
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(n) = req.parse(buf).context("malformed request head")? {
            let mut len = 0usize;
            for h in req.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    len = std::str::from_utf8(h.value)?.trim().parse().context("bad Content-Length")?;
                }
            }
            if len > MAX_BODY {
                bail!("body of {len} bytes");
            }
            let (method, path) = (req.method.unwrap_or("").to_owned(), req.path.unwrap_or("").to_owned());
            while buf.len() < n + len {
                let got = tcp.read(&mut chunk)?;
                if got == 0 {
                    bail!("closed inside the body");
                }
                buf.extend_from_slice(&chunk[..got]);
            }
            let body = buf[n..n + len].to_vec();
            buf.drain(..n + len);
            return Ok(Some(Request { method, path, body }));
        }
        if buf.len() > MAX_HEAD {
            bail!("request head over {MAX_HEAD} bytes");
        }
        let got = tcp.read(&mut chunk)?;
        if got == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            bail!("closed inside the request head");
        }
        buf.extend_from_slice(&chunk[..got]);
    }
}

/// Serves one keep-alive connection of the internal listener.
fn internal_conn(mut tcp: TcpStream, server: &Server) -> anyhow::Result<()> {
    tcp.set_nodelay(true)?;
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut tcp, &mut buf)? {
        let (status, body) = match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/internal/publish") => match publish_chunk(&req.body) {
                Ok(Some(chunk)) => ("200 OK", serde_json::json!({"matched": server.publish(chunk.into())})),
                Ok(None) => ("200 OK", serde_json::json!({"matched": 0})),
                Err(e) => ("400 Bad Request", serde_json::json!({"error": format!("{e:#}")})),
            },
            ("GET", "/stats") => ("200 OK", serde_json::to_value(server.stats())?),
            _ => ("404 Not Found", serde_json::json!({"error": "not found"})),
        };
        let body = body.to_string();
        let answer = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(answer.as_bytes())?;
    }
    Ok(())
}

/// The chunk of a publish body `{"key","event":{"name","data"}}`; `None`
/// for a key other than `broadcast` (the one every stream is bound to).
fn publish_chunk(body: &[u8]) -> anyhow::Result<Option<Vec<u8>>> {
    let v: serde_json::Value = serde_json::from_slice(body).context("body is not JSON")?;
    if v.get("key").and_then(serde_json::Value::as_str) != Some(BROADCAST_KEY) {
        return Ok(None);
    }
    let event = v.get("event").context("no event")?;
    let data = event.get("data").and_then(serde_json::Value::as_str).context("event.data must be a string")?;
    encode_chunk(event.get("name").and_then(serde_json::Value::as_str), data).map(Some)
}

/// The nearest-rank percentile of sorted samples (0 when empty).
fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Options of `sse-bench loopback-write`.
#[derive(Debug, clap::Args)]
pub struct LoopbackArgs {
    /// Loopback TCP pairs.
    #[arg(long, default_value_t = 2000)]
    pub streams: usize,
    /// Rounds (one write to every server side each).
    #[arg(long, default_value_t = 400)]
    pub count: usize,
    /// Bytes per write.
    #[arg(long, default_value_t = 120)]
    pub bytes: usize,
    /// Rounds per second (0: the next round as soon as the reader drained the last).
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
}

/// Percentiles of nanosecond or microsecond figures.
#[derive(Debug, Default, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
}

impl Spread {
    fn of(mut v: Vec<u64>) -> Spread {
        v.sort_unstable();
        Spread {
            mean: v.iter().sum::<u64>() as f64 / v.len().max(1) as f64,
            p50: percentile(&v, 50.0),
            p99: percentile(&v, 99.0),
            max: v.last().copied().unwrap_or(0),
        }
    }

    fn line(&self, unit: &str) -> String {
        format!(
            "mean {:.0} {unit}, p50 {} {unit}, p99 {} {unit}, max {} {unit}",
            self.mean, self.p50, self.p99, self.max
        )
    }
}

/// Result of `loopback-write`.
#[derive(Debug, Serialize)]
pub struct LoopbackReport {
    pub scenario: &'static str,
    pub streams: usize,
    pub rounds: usize,
    pub bytes: usize,
    pub rate: f64,
    /// Per round: the round's write time / streams, ns.
    pub ns_per_write_by_round: Spread,
    /// Every single write call, ns.
    pub ns_per_write_call: Spread,
    /// Per round: first write to last write returned, µs.
    pub round_write_us: Spread,
    /// Per round: first write to the reader having read every byte of the round, µs.
    pub round_drained_us: Spread,
    /// The writing thread's CPU over all rounds / writes (getrusage, thread), ns.
    pub writer_user_ns_per_write: f64,
    pub writer_sys_ns_per_write: f64,
    pub short_or_blocked_writes: u64,
}

impl Report for LoopbackReport {
    fn summary(&self) -> String {
        format!(
            "loopback-write: {} streams × {} rounds of {} bytes ({}/s)\n\
             ns per write (round time / streams): {}\n\
             ns per write call: {}\n\
             round, writes: {}\n\
             round, until the reader drained it: {}\n\
             writer thread CPU per write: user {:.0} ns, sys {:.0} ns; short or blocked writes: {}",
            self.streams,
            self.rounds,
            self.bytes,
            self.rate,
            self.ns_per_write_by_round.line("ns"),
            self.ns_per_write_call.line("ns"),
            self.round_write_us.line("µs"),
            self.round_drained_us.line("µs"),
            self.writer_user_ns_per_write,
            self.writer_sys_ns_per_write,
            self.short_or_blocked_writes,
        )
    }
}

/// The calling thread's (user, system) CPU time, ns.
fn thread_cpu_ns() -> (u64, u64) {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above; RUSAGE_THREAD is the calling thread.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return (0, 0);
    }
    let ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1000;
    (ns(ru.ru_utime), ns(ru.ru_stime))
}

/// Runs `loopback-write`.
pub fn loopback_write(args: LoopbackArgs) -> anyhow::Result<LoopbackReport> {
    if args.streams == 0 || args.count == 0 || args.bytes == 0 {
        bail!("--streams, --count and --bytes must be positive");
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        bail!("--rate must be 0 or a positive number");
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (mut servers, mut clients) = (Vec::with_capacity(args.streams), Vec::with_capacity(args.streams));
    for _ in 0..args.streams {
        let client = TcpStream::connect(addr).context("connect")?;
        let (server, _) = listener.accept().context("accept")?;
        for s in [&client, &server] {
            s.set_nodelay(true)?;
            s.set_nonblocking(true)?;
        }
        clients.push(client);
        servers.push(server);
    }
    let drained = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (drained, stop) = (Arc::clone(&drained), Arc::clone(&stop));
        thread::Builder::new().name("loopback-reader".into()).spawn(move || drain(clients, &drained, &stop))?
    };
    let buf = vec![b'x'; args.bytes];
    let per_round = (args.streams * args.bytes) as u64;
    let mut calls = Vec::with_capacity(args.streams * args.count);
    let (mut per_write, mut round_us, mut drained_us) = (Vec::new(), Vec::new(), Vec::new());
    let mut short = 0u64;
    let mut cpu = (0u64, 0u64);
    let started = Instant::now();
    for round in 0..args.count {
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64(round as f64 / args.rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                thread::sleep(wait);
            }
        }
        let cpu_before = thread_cpu_ns();
        let t0 = Instant::now();
        for s in &servers {
            let t = Instant::now();
            let res = (&*s).write(&buf);
            calls.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
            match res {
                Ok(n) if n == buf.len() => {}
                Ok(_) => short += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => short += 1,
                Err(e) => return Err(e).context("write"),
            }
        }
        let wrote = t0.elapsed();
        let cpu_after = thread_cpu_ns();
        cpu.0 += cpu_after.0 - cpu_before.0;
        cpu.1 += cpu_after.1 - cpu_before.1;
        per_write.push(u64::try_from(wrote.as_nanos()).unwrap_or(u64::MAX) / args.streams as u64);
        round_us.push(u64::try_from(wrote.as_micros()).unwrap_or(u64::MAX));
        // The reader has all of this round before the next begins (no buffer fills up).
        let target = per_round * (round as u64 + 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while drained.load(Ordering::Acquire) < target.saturating_sub(short * args.bytes as u64) {
            if Instant::now() > deadline {
                bail!("the reader did not drain round {round} within 10 s");
            }
            thread::sleep(Duration::from_micros(20));
        }
        drained_us.push(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    let writes = (args.streams * args.count) as f64;
    Ok(LoopbackReport {
        scenario: "loopback-write",
        streams: args.streams,
        rounds: args.count,
        bytes: args.bytes,
        rate: args.rate,
        ns_per_write_by_round: Spread::of(per_write),
        ns_per_write_call: Spread::of(calls),
        round_write_us: Spread::of(round_us),
        round_drained_us: Spread::of(drained_us),
        writer_user_ns_per_write: cpu.0 as f64 / writes,
        writer_sys_ns_per_write: cpu.1 as f64 / writes,
        short_or_blocked_writes: short,
    })
}

/// Reads every client socket until `stop`, through one level-triggered epoll
/// set; adds what it read to `drained`.
fn drain(clients: Vec<TcpStream>, drained: &AtomicU64, stop: &AtomicBool) {
    // SAFETY: plain epoll calls on descriptors this function owns (through
    // `clients`, alive until it returns); `events` outlives every epoll_wait.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        eprintln!("sse-bench loopback-write: epoll_create1: {}", io::Error::last_os_error());
        return;
    }
    for (i, c) in clients.iter().enumerate() {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: i as u64 };
        // SAFETY: see above.
        if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, c.as_raw_fd(), &mut ev) } != 0 {
            eprintln!("sse-bench loopback-write: epoll_ctl: {}", io::Error::last_os_error());
        }
    }
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: see above.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, 50) };
        for ev in events.iter().take(usize::try_from(n).unwrap_or(0)) {
            let Some(mut c) = clients.get(ev.u64 as usize) else { continue };
            loop {
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => {
                        drained.fetch_add(k as u64, Ordering::Release);
                    }
                    Err(_) => break,
                }
            }
        }
    }
    // SAFETY: epfd is ours and closed once.
    unsafe { libc::close(epfd) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::EVENT_NAME;

    #[test]
    fn a_publish_is_the_gateway_s_chunk() {
        let body = crate::target::Target::Ours.publish_body(r#"{"seq":1,"ts":2}"#);
        let chunk = publish_chunk(&body).unwrap().unwrap();
        let frame = format!("data: {{\"type\":\"{EVENT_NAME}\",\"payload\":{{\"seq\":1,\"ts\":2}}}}\n\n");
        assert_eq!(String::from_utf8(chunk).unwrap(), format!("{:x}\r\n{frame}\r\n", frame.len()));
        assert!(publish_chunk(br#"{"key":"other","event":{"data":"x"}}"#).unwrap().is_none());
        assert!(publish_chunk(br#"{"key":"broadcast","event":{}}"#).is_err());
    }

    #[test]
    fn a_stream_gets_the_gateway_head_ready_then_one_chunk_per_publish() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(b"GET /stream?request_id=a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let shard = Mutex::new(vec![open_stream(server_side).unwrap()]);
        let chunk = chunked(b"data: 1\n\n");
        let r = write_shard(&shard, &chunk);
        assert_eq!((r.written, r.writes, r.bytes, r.closed), (1, 1, chunk.len() as u64, 0));
        drop(shard); // closes the server side: the client reads to the end
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        let mut want = SSE_HEAD.to_vec();
        want.extend_from_slice(b"14\r\nevent: ready\ndata:\n\n\r\n");
        want.extend_from_slice(&chunk);
        assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&want));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!((percentile(&v, 50.0), percentile(&v, 99.0), percentile(&[], 50.0)), (50, 99, 0));
    }
}
