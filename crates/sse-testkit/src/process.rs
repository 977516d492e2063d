//! A child process under test: started with a clean environment, stopped by handle.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::within;

/// A running binary. Killed on drop if still running.
pub struct Process {
    child: Child,
    /// The address from its "listening on http://ADDR" (or `https://`) line.
    pub addr: SocketAddr,
    /// True when that line said `https://`.
    pub https: bool,
    /// The address from an "internal listener on http://ADDR" line printed before it, if any.
    pub internal: Option<SocketAddr>,
    stderr: Arc<Mutex<Vec<String>>>,
    new_line: Arc<tokio::sync::Notify>,
}

impl Process {
    /// Spawns `bin` with only `env` (plus PATH) in its environment and waits
    /// for its "listening on http://ADDR" (or `https://ADDR`) line on stdout.
    pub async fn spawn(bin: &str, args: &[&str], env: &[(&str, &str)]) -> Process {
        let mut cmd = Command::new(bin);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let err_pipe = child.stderr.take().expect("stderr piped");
        let sink = Arc::clone(&stderr);
        let new_line = Arc::new(tokio::sync::Notify::new());
        let notify = Arc::clone(&new_line);
        let err_reader = tokio::spawn(async move {
            let mut lines = BufReader::new(err_pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
                notify.notify_waiters();
            }
        });
        let out = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(out).lines();
        let found = within("the process to print its listening address", async {
            let mut internal = None;
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.split("internal listener on http://").nth(1) {
                    internal = Some(rest.trim().parse::<SocketAddr>().expect("address after 'internal listener on'"));
                } else if let Some(rest) = line.split("listening on ").nth(1) {
                    let (https, rest) = match rest.strip_prefix("https://") {
                        Some(r) => (true, r),
                        None => (false, rest.strip_prefix("http://").expect("http(s):// after 'listening on'")),
                    };
                    let addr = rest.trim().parse::<SocketAddr>().expect("address after 'listening on'");
                    return Some((addr, https, internal));
                }
            }
            None
        })
        .await;
        let Some((addr, https, internal)) = found else {
            // The process exited: show what it said (its stderr ends with it).
            let _ = within("the exited process's stderr", err_reader).await;
            panic!("{bin} exited before listening; stderr:\n{}", stderr.lock().unwrap().join("\n"));
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Process { child, addr, https, internal, stderr, new_line }
    }

    /// `http://ADDR` (or `https://`) of the process.
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", if self.https { "https" } else { "http" }, self.addr, path)
    }

    /// The internal listener's address (panics if the process has none).
    pub fn internal_addr(&self) -> SocketAddr {
        self.internal.expect("the process printed no internal listener address")
    }

    /// Lines the process wrote on stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (bounded) until a stderr line contains `needle`; returns that line.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_logs(needle, 1).await.remove(0)
    }

    /// Waits (bounded) until `n` stderr lines contain `needle`; returns them.
    pub async fn wait_for_logs(&self, needle: &str, n: usize) -> Vec<String> {
        self.wait_for_logs_within(needle, n, crate::WAIT).await
    }

    /// Like [`Process::wait_for_logs`], for a wait the test bounds itself
    /// because it can legitimately take longer than [`crate::WAIT`] (a
    /// reconnect backoff); panics after `limit`.
    pub async fn wait_for_logs_within(&self, needle: &str, n: usize, limit: Duration) -> Vec<String> {
        let found = async {
            loop {
                let notified = self.new_line.notified();
                let found: Vec<String> = self.stderr().into_iter().filter(|l| l.contains(needle)).collect();
                if found.len() >= n {
                    return found;
                }
                notified.await;
            }
        };
        match tokio::time::timeout(limit, found).await {
            Ok(lines) => lines,
            Err(_) => panic!(
                "no {n} log line(s) containing {needle:?} within {limit:?}; stderr:\n{}",
                self.stderr().join("\n")
            ),
        }
    }

    /// Sends SIGTERM and waits (bounded) for the exit; returns the exit code.
    pub async fn terminate(&mut self) -> i32 {
        self.signal(libc::SIGTERM);
        self.wait_exit().await
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.child.id() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// Waits (bounded) for the process to exit; returns the exit code (-1 if by signal).
    pub async fn wait_exit(&mut self) -> i32 {
        let status = within("the process to exit", self.child.wait()).await.expect("wait");
        status.code().unwrap_or(-1)
    }

    /// Waits for a process that should exit by itself, with its own bound.
    pub async fn wait_exit_within(&mut self, limit: Duration) -> Option<i32> {
        tokio::time::timeout(limit, self.child.wait()).await.ok().map(|s| s.expect("wait").code().unwrap_or(-1))
    }
}
