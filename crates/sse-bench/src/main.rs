//! `sse-bench`: load generator and benchmark runner for sse-gateway, with
//! Nginx + Nchan as the comparison target.
//!
//! This file owns the command line, the fd limit and the runtime; each
//! scenario lives in its own module. The load generator is meant to run on
//! the same machine as the server (latency is measured against the same
//! clock), over loopback only.
//!
//! Modules: `client` (raw HTTP/1.1 and SSE over TCP; chunked decoding is
//! `sse_wire::Dechunker`), `fleet` (N client streams and what they receive), `payload`
//! (the `{seq,ts}` payload), `target` (ours vs Nchan), `stats`
//! (percentiles), `proc` (server RSS and CPU, kernel TCP memory),
//! `publisher` (publishing over HTTP or RabbitMQ), `report` (progress and
//! output), one module per scenario (`admin` and `roster` measure the
//! control plane; `storm` and `stall` the faults: a gateway killed under
//! thousands of `EventSource` clients, clients that stop reading; `resume`
//! the replay of missed events; `soak` memory and delivery over minutes;
//! `floor` the ideal server and the loopback write cost that bound the
//! fan-out latency; `inproc` the gateway library without the HTTP callback,
//! for the churn's split), `h2` (HTTP/2 over TLS streams and the `cert` command),
//! and `compare` (the results table).

mod admin;
mod backend;
mod churn;
mod client;
mod compare;
mod fanout;
mod fleet;
mod floor;
mod h2;
mod hold;
mod inproc;
mod payload;
mod proc;
mod publisher;
mod report;
mod resume;
mod roster;
mod send;
mod soak;
mod stall;
mod stats;
mod storm;
mod target;

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::client::Dialer;
use crate::report::emit;

/// Load generator and benchmark runner for sse-gateway (and Nchan, to compare).
#[derive(Debug, Parser)]
#[command(name = "sse-bench", version)]
struct Cli {
    /// Print one JSON object with the results instead of a summary.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A callback backend for the gateway: accepts every stream and roster; GET /tokens, GET /stats.
    Backend(backend::BackendArgs),
    /// N idle streams; server RSS per stream.
    Hold(hold::HoldArgs),
    /// N streams, M broadcasts at R/s; delivery latency, losses, server CPU.
    Fanout(fanout::FanoutArgs),
    /// Token sends per second to /internal/send (our gateway only).
    Send(send::SendArgs),
    /// Admin API under N open streams: list all, page by key, close one, close all (our gateway only).
    Admin(admin::AdminArgs),
    /// Roster callbacks under N idle streams: bytes per roster, gateway and backend CPU (our gateway only).
    Roster(roster::RosterArgs),
    /// History on: one stream misses N events, resumes with Last-Event-ID; time to `ready`, order checked.
    Resume(resume::ResumeArgs),
    /// Connect, wait until open, close, repeat; connects per second.
    Churn(churn::ChurnArgs),
    /// N EventSource-like clients through a gateway in front of a slow backend, before and after
    /// the gateway is killed and restarted: time until all are back, fatal answers, backend peak (ours only).
    Storm(storm::StormArgs),
    /// Healthy streams under a steady publish rate next to streams that never read: healthy
    /// latency, server RSS, kernel TCP memory, stalled streams closed over time.
    Stall(stall::StallArgs),
    /// N streams for D minutes under R broadcasts/s: server RSS every few seconds and its slope,
    /// every event checked on every stream, latency per window, server CPU.
    Soak(soak::SoakArgs),
    /// Print the ours-vs-Nchan table of a results directory.
    Compare(compare::CompareArgs),
    /// An ideal fan-out server (the floor): streams answered with the gateway's head and `ready`,
    /// each publish written to every socket with one write, on 1 or K threads; GET /stats.
    FloorServer(floor::FloorArgs),
    /// N loopback TCP pairs in one process: ns per socket write of one buffer to every stream.
    LoopbackWrite(floor::LoopbackArgs),
    /// The gateway library with an in-process hook that accepts every stream (no HTTP callback):
    /// what a connect costs without the callback round trips.
    InprocGateway(inproc::InprocArgs),
    /// Write a self-signed certificate (cert.pem, key.pem) for a gateway under test with TLS.
    Cert(h2::CertArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sse-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sse-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let dialer = Arc::new(Dialer::default());
    match cli.command {
        Command::Backend(args) => backend::run(args).await,
        Command::Hold(args) => emit(&hold::run(args, dialer).await?, cli.json),
        Command::Fanout(args) => emit(&fanout::run(args, dialer).await?, cli.json),
        Command::Send(args) => emit(&send::run(args, dialer).await?, cli.json),
        Command::Admin(args) => emit(&admin::run(args, dialer).await?, cli.json),
        Command::Roster(args) => emit(&roster::run(args, dialer).await?, cli.json),
        Command::Resume(args) => emit(&resume::run(args, dialer).await?, cli.json),
        Command::Churn(args) => emit(&churn::run(args, dialer).await?, cli.json),
        Command::Cert(args) => h2::write_cert(&args),
        Command::FloorServer(args) => tokio::task::spawn_blocking(move || floor::serve(args)).await?,
        Command::LoopbackWrite(args) => {
            emit(&tokio::task::spawn_blocking(move || floor::loopback_write(args)).await??, cli.json)
        }
        Command::InprocGateway(args) => inproc::serve(args).await,
        Command::Storm(args) => emit(&storm::run(args, dialer).await?, cli.json),
        Command::Stall(args) => emit(&stall::run(args, dialer).await?, cli.json),
        Command::Soak(args) => emit(&soak::run(args, dialer).await?, cli.json),
        Command::Compare(args) => {
            print!("{}", compare::table(&args.dir)?);
            Ok(())
        }
    }
}

/// Every stream is a file descriptor: raise the soft limit to the hard limit.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                eprintln!("sse-bench: cannot raise the open-file limit to {}", lim.rlim_max);
            }
        }
    }
}
