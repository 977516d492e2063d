//! The `sse-gateway` binary: flags, logging, signals; everything else lives
//! in the library. Its flags are built from the library's settings table, so
//! every setting has a flag, an environment variable and its default in
//! `--help`, stated once.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Arg, ArgMatches, Command};
use sse_gateway::{Config, Gateway, HttpCallbackHook, SETTINGS};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// The command line: one flag per setting, each with its variable as fallback.
fn command() -> Command {
    let mut cmd = Command::new("sse-gateway")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Server-Sent-Events gateway, wire-compatible with SSEGateway.")
        .after_help("A flag wins over its environment variable. RUST_LOG sets the log filter (default: info).");
    for s in SETTINGS {
        let help = match s.default {
            Some(d) => format!("{} [default: {d}]", s.help),
            None => s.help.to_owned(),
        };
        // Values from the environment stay out of --help: some are secrets.
        cmd = cmd.arg(Arg::new(s.env).long(s.flag).env(s.env).hide_env_values(true).value_name("VALUE").help(help));
    }
    cmd
}

/// Flags (with their variables, through clap) first; then the environment
/// for what is not a flag (`HOSTNAME`).
fn lookup(matches: &ArgMatches) -> impl Fn(&str) -> Option<String> + '_ {
    move |key| match SETTINGS.iter().any(|s| s.env == key) {
        true => matches.get_one::<String>(key).cloned(),
        false => std::env::var(key).ok(),
    }
}

fn main() -> ExitCode {
    sse_gateway::limit_malloc_arenas();
    let matches = command().get_matches();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let (config, warnings) = match Config::from_lookup(lookup(&matches)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sse-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    for w in warnings {
        warn!("{w}");
    }
    raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sse-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sse-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    let listener = sse_gateway::listen(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    let mut builder = Gateway::builder(config.clone());
    match &config.callback_url {
        Some(url) => {
            let uri: http::Uri = url.parse().context("CALLBACK_URL")?;
            // The query usually carries the backend's secret: never log it.
            info!(callback = %format!("{}://{}{}", uri.scheme_str().unwrap_or("http"), uri.authority().map_or("", |a| a.as_str()), uri.path()), "callback configured");
            let instance = (!config.roster_interval.is_zero()).then(|| config.instance_id.clone());
            builder = builder.hook(HttpCallbackHook::new(uri, config.callback_timeout, instance));
        }
        None => warn!("CALLBACK_URL is not set: every stream request will be answered 503"),
    }
    let internal = match config.internal_listen {
        Some(addr) => {
            let l = sse_gateway::listen(addr).with_context(|| format!("cannot listen on {addr} (internal)"))?;
            Some(l)
        }
        None => None,
    };
    if internal.is_none() && config.internal_api_secret.is_none() {
        warn!("neither INTERNAL_PORT nor INTERNAL_API_SECRET is set: /internal/publish and /metrics are not reachable");
    }
    let internal_addr = internal.as_ref().map(TcpListener::local_addr).transpose()?;
    let gateway = builder.build();
    let shutdown = gateway.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("signal received: shutting down");
        shutdown.cancel();
    });
    if let Some(a) = internal_addr {
        info!(addr = %a, "internal listener");
        println!("sse-gateway internal listener on http://{a}");
    }
    let scheme = match &config.tls {
        Some(tls) => {
            info!(cert = %tls.cert_file().display(), "TLS on the public listener: HTTP/2 and HTTP/1.1 (ALPN)");
            "https"
        }
        None => "http",
    };
    info!(%addr, "sse-gateway listening");
    // Scripts and tests read this line to learn the port when it was 0.
    println!("sse-gateway listening on {scheme}://{addr}");
    gateway.serve(listener, internal).await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            warn!("cannot install signal handlers; only Ctrl-C will stop the gateway");
            let _ = tokio::signal::ctrl_c().await;
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
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
