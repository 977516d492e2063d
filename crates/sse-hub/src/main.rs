//! The `sse-hub` binary: flags, logging, signals, the `rotation-nudge`
//! subcommand. Everything else is in the library. The flags are built from
//! the library's settings tables, so every setting has a flag, an
//! environment variable and its default in `--help`, stated once.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Arg, ArgMatches, Command};
use sse_hub::config::{NUDGE_SETTINGS, SETTINGS, Setting};
use sse_hub::{HubConfig, NudgeConfig};

const NUDGE: &str = "rotation-nudge";

/// One flag per setting, with its variable as fallback.
fn arg(s: &Setting) -> Arg {
    let help = match s.default {
        Some(d) => format!("{} [default: {d}]", s.help),
        None => s.help.to_owned(),
    };
    // Values from the environment stay out of --help: some are secrets.
    let arg = Arg::new(s.env).long(s.flag).env(s.env).hide_env_values(true).value_name("VALUE").help(help);
    match s.default {
        // A true/false setting also works as a bare switch (`--oidc-enabled`).
        Some("false") => arg.num_args(0..=1).default_missing_value("true"),
        _ => arg,
    }
}

fn command() -> Command {
    let nudge = Command::new(NUDGE)
        .about(
            "Play the rotation cron job's role: POST <url>/internal/rotation-nudge (with `Authorization: Bearer \
             <secret>` when set); exits 1 when the hub did not answer 2xx",
        )
        .args(NUDGE_SETTINGS.iter().map(arg));
    Command::new("sse-hub")
        .version(env!("CARGO_PKG_VERSION"))
        .about(
            "The SSE gateway in-process with the backend toolkit, DHCP leases, tasks, version notices, device logs \
             and rotation nudges, and a live dashboard at /.",
        )
        .long_about(
            "The SSE gateway in-process with the backend toolkit, DHCP leases, tasks, version notices, device logs \
             and rotation nudges, and a live dashboard at /.\n\nWith no configuration it creates a demo data \
             directory (--data-dir: dnsmasq.conf and dnsmasq.leases; edit the lease file and watch the dashboard). \
             MQTT, OIDC, RabbitMQ and an external gateway are switched on by the options below.",
        )
        .after_help(
            "A flag wins over its environment variable; a true/false flag given alone means true. RUST_LOG sets \
             the log filter (default: info). SIGTERM or Ctrl-C stops the hub: running tasks are cancelled \
             (streams get task_cancelled) and streams are drained; a second signal exits at once (code 130 for \
             Ctrl-C, 143 for SIGTERM). `--help` also lists every endpoint.",
        )
        .after_long_help(format!(
            "A flag wins over its environment variable; a true/false flag given alone means true. RUST_LOG sets \
             the log filter (default: info). SIGTERM or Ctrl-C stops the hub: running tasks are cancelled \
             (streams get task_cancelled) and streams are drained; a second signal exits at once (code 130 for \
             Ctrl-C, 143 for SIGTERM).\n\n{}",
            sse_hub::endpoints::help_text()
        ))
        .args(SETTINGS.iter().map(arg))
        .subcommand(nudge)
}

/// For a table's names: the flag, else its variable (both through clap);
/// for anything else (`HOSTNAME`): the environment.
fn lookup<'a>(matches: &'a ArgMatches, table: &'static [Setting]) -> impl Fn(&str) -> Option<String> + 'a {
    move |key| match table.iter().any(|s| s.env == key) {
        true => matches.get_one::<String>(key).cloned(),
        false => std::env::var(key).ok(),
    }
}

fn main() -> ExitCode {
    // Before the runtime's threads exist (see the function's doc).
    sse_gateway::limit_malloc_arenas();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("sse-hub: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let matches = command().get_matches();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // Errors are printed as one line (their chain), never with a backtrace:
    // 2 for a setting that cannot be used, 1 for a failure at run time.
    let result = match matches.subcommand_matches(NUDGE) {
        Some(m) => match NudgeConfig::from_lookup(lookup(m, NUDGE_SETTINGS)) {
            Ok(cfg) => nudge(cfg).await,
            Err(e) => return config_error(&e),
        },
        None => match HubConfig::from_lookup(lookup(&matches, SETTINGS)) {
            Ok(cfg) => serve(cfg).await,
            Err(e) => return config_error(&e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sse-hub: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn config_error(e: &sse_hub::HubConfigError) -> ExitCode {
    eprintln!("sse-hub: {e}");
    ExitCode::from(2)
}

async fn serve(cfg: HubConfig) -> anyhow::Result<()> {
    let listener = sse_gateway::listen(std::net::SocketAddr::new(cfg.host, cfg.port))
        .with_context(|| format!("cannot listen on {}:{}", cfg.host, cfg.port))?;
    let https = cfg.tls.is_some();
    let hub = sse_hub::start(cfg, listener).await?;
    // Installed before the address is printed: a signal sent by whoever
    // waits for that line is always handled.
    let mut signals = Signals::new()?;
    // The first line is for scripts (the bound address); the second is the
    // page to open (loopback when bound to all interfaces).
    let scheme = if https { "https" } else { "http" };
    println!("sse-hub listening on {scheme}://{}", hub.addr);
    println!("sse-hub dashboard: {}/", sse_hub::local_url(hub.addr, https));
    let first = signals.recv().await;
    tracing::info!(signal = first, "shutting down (a second Ctrl-C or SIGTERM exits at once)");
    tokio::select! {
        () = hub.shutdown() => Ok(()),
        second = signals.recv() => {
            eprintln!("sse-hub: second {second}: exiting at once");
            // Skips the runtime's teardown (blocking threads, open files).
            std::process::exit(match second { "SIGTERM" => 143, _ => 130 });
        }
    }
}

/// Ctrl-C (SIGINT) and SIGTERM.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
        })
    }

    /// Waits for the next one; returns which.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

async fn nudge(cfg: NudgeConfig) -> anyhow::Result<()> {
    let url = format!("{}/internal/rotation-nudge", cfg.url);
    let client = reqwest::Client::builder().timeout(cfg.timeout).build()?;
    let mut req = client.post(&url).json(&serde_json::json!({}));
    if let Some(secret) = &cfg.secret {
        req = req.bearer_auth(secret);
    }
    let resp = req.send().await.with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "POST {url} answered {status}: {body}");
    println!("rotation nudge sent: {status} {body}");
    Ok(())
}
