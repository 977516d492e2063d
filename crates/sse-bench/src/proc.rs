//! Readings of processes and of the machine from `/proc`: resident memory
//! (`VmRSS`) and CPU time (`utime + stime`, all threads; or per-thread
//! `schedstat` in nanoseconds for short phases) summed over the
//! server's PIDs (Nginx's master and worker, or the gateway alone), the load
//! generator's own CPU, and the whole machine's busy time, so a result shows
//! when something else was competing for the two cores; and the kernel's TCP
//! memory (`/proc/net/sockstat`) with the bytes queued in the sockets of one
//! server port, split by side (`/proc/net/tcp`). Linux only, like the whole
//! benchmark.

use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;

/// The processes being measured.
#[derive(Debug, Clone, Default)]
pub struct ProcessProbe {
    pids: Vec<u32>,
}

impl ProcessProbe {
    /// A probe of `pids` (empty: every reading is `None`).
    pub fn new(pids: Vec<u32>) -> Self {
        Self { pids }
    }

    /// The PIDs measured.
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// Summed `VmRSS` in KiB, or `None` without PIDs.
    pub fn rss_kb(&self) -> anyhow::Result<Option<u64>> {
        if self.pids.is_empty() {
            return Ok(None);
        }
        self.pids.iter().map(|&pid| rss_kb(pid)).sum::<anyhow::Result<u64>>().map(Some)
    }

    fn cpu_ticks(&self) -> anyhow::Result<u64> {
        self.pids.iter().map(|&pid| cpu_ticks(pid)).sum()
    }

    /// Summed CPU time of every thread, in nanoseconds (`None` without PIDs).
    /// For phases of milliseconds, where `utime + stime` (10 ms ticks) reads 0.
    pub fn cpu_nanos(&self) -> anyhow::Result<Option<u64>> {
        if self.pids.is_empty() {
            return Ok(None);
        }
        self.pids.iter().map(|&pid| cpu_nanos(pid)).sum::<anyhow::Result<u64>>().map(Some)
    }
}

/// CPU time of this process's threads, in nanoseconds.
pub fn own_cpu_nanos() -> anyhow::Result<u64> {
    cpu_nanos(std::process::id())
}

/// The sum over `/proc/PID/task/*/schedstat` of the time spent on a CPU
/// (first field, nanoseconds). Threads that exited are not counted.
fn cpu_nanos(pid: u32) -> anyhow::Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {dir}"))? {
        let path = entry?.path().join("schedstat");
        // A thread may exit between the listing and the read.
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        total += parse_schedstat_nanos(&text).with_context(|| format!("cannot read {}", path.display()))?;
    }
    Ok(total)
}

fn parse_schedstat_nanos(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// CPU used over a phase, as a share of its wall time.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    /// Percent of one core (200 % = both cores of a 2-core machine).
    pub percent_of_one_core: f64,
    pub cpu_secs: f64,
    pub wall_secs: f64,
}

impl CpuUse {
    fn new(ticks: u64, since: Instant) -> Self {
        let cpu_secs = ticks as f64 / clock_ticks_per_sec() as f64;
        let wall_secs = since.elapsed().as_secs_f64();
        Self { percent_of_one_core: 100.0 * cpu_secs / wall_secs.max(1e-9), cpu_secs, wall_secs }
    }
}

/// CPU over one phase of a scenario: server, load generator, whole machine.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseCpu {
    /// The server's processes (`None` without `--server-pid`).
    pub server: Option<CpuUse>,
    /// This process.
    pub load_generator: CpuUse,
    /// Every CPU of the machine (busy = not idle, not waiting for I/O).
    pub machine: CpuUse,
    /// Machine minus server minus load generator, percent of one core:
    /// anything else that ran meanwhile (kernel threads, and for our gateway
    /// the callback backend). Near 0 on a quiet machine otherwise; large
    /// values make the run suspect.
    pub other_percent_of_one_core: Option<f64>,
}

impl PhaseCpu {
    /// Summary lines.
    pub fn lines(&self) -> String {
        let mut s = String::new();
        if let Some(cpu) = &self.server {
            s.push_str(&format!(
                "\nserver CPU: {:.1} % of one core ({:.2} s CPU over {:.2} s)",
                cpu.percent_of_one_core, cpu.cpu_secs, cpu.wall_secs
            ));
        }
        s.push_str(&format!(
            "\nload generator CPU: {:.1} %; whole machine {:.1} % of one core",
            self.load_generator.percent_of_one_core, self.machine.percent_of_one_core
        ));
        if let Some(other) = self.other_percent_of_one_core {
            s.push_str(&format!(" (other processes: {other:.1} %)"));
        }
        s
    }
}

/// Starts at the beginning of a phase; [`PhaseMeter::read`] at its end.
#[derive(Debug)]
pub struct PhaseMeter {
    server: ProcessProbe,
    server_ticks: Option<u64>,
    own_ticks: u64,
    machine_ticks: u64,
    since: Instant,
}

impl PhaseMeter {
    /// Takes the starting readings.
    pub fn start(server: &ProcessProbe) -> anyhow::Result<Self> {
        let server_ticks = if server.pids.is_empty() { None } else { Some(server.cpu_ticks()?) };
        Ok(Self {
            server: server.clone(),
            server_ticks,
            own_ticks: cpu_ticks(std::process::id())?,
            machine_ticks: machine_busy_ticks()?,
            since: Instant::now(),
        })
    }

    /// CPU used since the start.
    pub fn read(&self) -> anyhow::Result<PhaseCpu> {
        let server = match self.server_ticks {
            Some(start) => Some(CpuUse::new(self.server.cpu_ticks()?.saturating_sub(start), self.since)),
            None => None,
        };
        let load_generator = CpuUse::new(cpu_ticks(std::process::id())?.saturating_sub(self.own_ticks), self.since);
        let machine = CpuUse::new(machine_busy_ticks()?.saturating_sub(self.machine_ticks), self.since);
        // Clamped: tick granularity can make the difference slightly negative.
        let other_percent_of_one_core = server.as_ref().map(|s| {
            (machine.percent_of_one_core - s.percent_of_one_core - load_generator.percent_of_one_core).max(0.0)
        });
        Ok(PhaseCpu { server, load_generator, machine, other_percent_of_one_core })
    }
}

/// The kernel's TCP socket figures for the whole machine (`/proc/net/sockstat`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SockStat {
    /// TCP sockets in use.
    pub inuse: u64,
    /// Closed by their process but still holding data or state in the kernel.
    pub orphan: u64,
    pub time_wait: u64,
    /// Memory of all TCP sockets, in pages (4 KiB here): both ends of every
    /// loopback connection, so the load generator's receive buffers too.
    pub mem_pages: u64,
}

/// Reads `/proc/net/sockstat`.
pub fn sockstat() -> anyhow::Result<SockStat> {
    let text = std::fs::read_to_string("/proc/net/sockstat").context("read /proc/net/sockstat")?;
    parse_sockstat(&text).context("no TCP line in /proc/net/sockstat")
}

fn parse_sockstat(text: &str) -> Option<SockStat> {
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let fields: Vec<&str> = line.split_whitespace().skip(1).collect();
    let get = |name: &str| fields.chunks(2).find(|kv| kv[0] == name).and_then(|kv| kv.get(1)?.parse().ok());
    Some(SockStat { inuse: get("inuse")?, orphan: get("orphan")?, time_wait: get("tw")?, mem_pages: get("mem")? })
}

/// Bytes waiting in the kernel queues of the connections of one server port
/// (IPv4, from `/proc/net/tcp`): the server's side (send queues of sockets
/// on the port, orphans included) and the clients' side (receive queues of
/// sockets connected to it).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PortQueues {
    /// Bytes the server's sockets hold unsent or unacknowledged.
    pub server_send_bytes: u64,
    /// The server's sockets holding any.
    pub server_sockets_with_send_queue: u64,
    /// Bytes the clients' sockets hold unread.
    pub client_receive_bytes: u64,
}

/// Reads `/proc/net/tcp` for `port`.
pub fn port_queues(port: u16) -> anyhow::Result<PortQueues> {
    let text = std::fs::read_to_string("/proc/net/tcp").context("read /proc/net/tcp")?;
    Ok(parse_port_queues(&text, port))
}

fn parse_port_queues(text: &str, port: u16) -> PortQueues {
    let port_of = |addr: &str| addr.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    let mut q = PortQueues::default();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local remote st tx_queue:rx_queue ...; state 0A is LISTEN.
        let (Some(local), Some(remote), Some(state), Some(queues)) = (f.get(1), f.get(2), f.get(3), f.get(4)) else {
            continue;
        };
        let Some((tx, rx)) = queues.split_once(':') else { continue };
        let (tx, rx) = (u64::from_str_radix(tx, 16).unwrap_or(0), u64::from_str_radix(rx, 16).unwrap_or(0));
        if port_of(local) == Some(port) && *state != "0A" {
            q.server_send_bytes += tx;
            q.server_sockets_with_send_queue += u64::from(tx > 0);
        } else if port_of(remote) == Some(port) {
            q.client_receive_bytes += rx;
        }
    }
    q
}

fn rss_kb(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_rss_kb(&status).with_context(|| format!("no VmRSS line in {path}"))
}

fn parse_rss_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    match parse_cpu_ticks(&stat) {
        Some(t) => Ok(t),
        None => bail!("cannot read utime/stime from {path}"),
    }
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line; the command
/// name (field 2) may contain spaces and parentheses, so count from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn machine_busy_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat").context("read /proc/stat")?;
    parse_machine_busy(&stat).context("no cpu line in /proc/stat")
}

/// Busy ticks of the `cpu` line: user, nice, system, irq, softirq, steal
/// (guest time is already inside user).
fn parse_machine_busy(stat: &str) -> Option<u64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let field = |i: usize| v.get(i).copied().unwrap_or(0);
    Some(field(0) + field(1) + field(2) + field(5) + field(6) + field(7))
}

fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_cpu_and_machine_fields() {
        assert_eq!(parse_rss_kb("Name:\tx\nVmRSS:\t   12345 kB\nVmSwap: 0 kB\n"), Some(12345));
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 100 1000 200";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        let machine = "cpu  100 1 20 5000 7 2 3 4 0 0\ncpu0 50 0 10 2500 3 1 1 2 0 0\n";
        assert_eq!(parse_machine_busy(machine), Some(130));
        assert_eq!(parse_schedstat_nanos("194850022 12095578 399\n"), Some(194_850_022));
        assert_eq!(parse_schedstat_nanos(""), None);
    }

    #[test]
    fn reads_tcp_memory_and_the_queues_of_one_port() {
        let sockstat = "sockets: used 35\nTCP: inuse 11 orphan 2 tw 4 alloc 14 mem 307\nUDP: inuse 0 mem 0\n";
        let st = parse_sockstat(sockstat).expect("TCP line");
        assert_eq!((st.inuse, st.orphan, st.time_wait, st.mem_pages), (11, 2, 4, 307));
        // Port 0x0BB8 = 3000: a listener, a server socket holding 0x100
        // bytes, the client of it holding 0x20 unread, another port's socket.
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:0BB8 00000000:0000 0A 00000000:00000005 00:00000000 00000000 0 0 1 1\n\
            1: 0100007F:0BB8 0200007F:9C40 01 00000100:00000000 00:00000000 00000000 0 0 2 1\n\
            2: 0200007F:9C40 0100007F:0BB8 01 00000000:00000020 00:00000000 00000000 0 0 3 1\n\
            3: 0100007F:1F90 0300007F:9C42 01 00000400:00000000 00:00000000 00000000 0 0 4 1\n";
        let q = parse_port_queues(tcp, 3000);
        assert_eq!((q.server_send_bytes, q.server_sockets_with_send_queue, q.client_receive_bytes), (0x100, 1, 0x20));
    }

    #[test]
    fn this_process_and_machine_can_be_measured() {
        let me = ProcessProbe::new(vec![std::process::id()]);
        assert!(me.rss_kb().expect("readable").unwrap_or(0) > 0);
        let phase = PhaseMeter::start(&me).expect("readable").read().expect("readable");
        assert!(phase.server.is_some());
        assert!(me.cpu_nanos().expect("readable").unwrap_or(0) > 0);
        assert!(own_cpu_nanos().expect("readable") > 0);
        assert_eq!(ProcessProbe::default().rss_kb().expect("no pids"), None);
    }
}
