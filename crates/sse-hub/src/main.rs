//! The `sse-hub` binary: flags, logging, signals, the `rotation-nudge`
//! subcommand. Everything else is in the library.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sse_hub::config::NudgeArgs;
use sse_hub::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Some(Command::RotationNudge(args)) => nudge(args).await,
        None => serve(cli.hub).await,
    }
}

async fn serve(cfg: sse_hub::HubConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind((cfg.host, cfg.port))
        .await
        .with_context(|| format!("cannot listen on {}:{}", cfg.host, cfg.port))?;
    let hub = sse_hub::start(cfg, listener).await?;
    println!("sse-hub listening on http://{}", hub.addr);
    shutdown_signal().await;
    tracing::info!("shutting down");
    hub.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

async fn nudge(args: NudgeArgs) -> anyhow::Result<()> {
    let url = format!("{}/internal/rotation-nudge", args.url.trim_end_matches('/'));
    let client = reqwest::Client::builder().timeout(Duration::from_secs(args.timeout_seconds)).build()?;
    let mut req = client.post(&url).json(&serde_json::json!({}));
    if let Some(secret) = std::env::var("INTERNAL_API_SECRET").ok().filter(|s| !s.is_empty()) {
        req = req.bearer_auth(secret);
    }
    let resp = req.send().await.with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    anyhow::ensure!(status.is_success(), "POST {url} answered {status}: {body}");
    println!("rotation nudge sent: {status} {body}");
    Ok(())
}
