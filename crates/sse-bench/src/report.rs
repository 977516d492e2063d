//! How results leave the process: progress lines on stderr while a scenario
//! runs, then either a human summary or one JSON object on stdout.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;

/// Interval of progress lines.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// A scenario's result.
pub trait Report: Serialize {
    /// Multi-line human summary.
    fn summary(&self) -> String;
}

/// Prints `report` as JSON (`json`) or as its summary.
pub fn emit<R: Report>(report: &R, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        println!("{}", report.summary());
    }
    Ok(())
}

/// Prints `line()` on stderr every two seconds until dropped.
pub struct Progress {
    task: JoinHandle<()>,
}

impl Progress {
    /// Starts the ticker; `label` names the scenario phase.
    pub fn start(label: &'static str, line: impl Fn() -> String + Send + 'static) -> Progress {
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
            loop {
                tick.tick().await;
                eprintln!("[{label} {:>5.1}s] {}", started.elapsed().as_secs_f64(), line());
            }
        });
        Progress { task }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.task.abort();
    }
}
