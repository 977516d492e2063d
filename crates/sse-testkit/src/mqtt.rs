//! A Mosquitto broker of the test's own, for tests that stop and restart the
//! broker: loopback only, its port chosen free at the first start and kept
//! across restarts (a client reconnects to the same URL), its config, log and
//! nothing else in a throwaway directory. Needs the Debian `mosquitto` binary.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// How long the broker may take to accept connections on a loaded machine.
const MOSQUITTO_BOOT: Duration = Duration::from_secs(10);

/// A running (or stopped) private Mosquitto. Killed and removed on drop.
pub struct MosquittoNode {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl MosquittoNode {
    /// Starts a broker on a free loopback port and waits until it accepts connections.
    pub async fn start() -> MosquittoNode {
        let dir = std::env::temp_dir().join(format!("sse-mosquitto-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("broker dir");
        let [port] = crate::free_ports();
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest file {}\n",
            dir.join("mosquitto.log").display()
        );
        std::fs::write(dir.join("mosquitto.conf"), conf).expect("broker config");
        let mut node = MosquittoNode { dir, port, child: None };
        node.boot().await;
        node
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// What the broker logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// (Re)starts the broker on its port and waits until it accepts connections.
    pub async fn boot(&mut self) {
        assert!(self.child.is_none(), "the broker is already running");
        let child = Command::new(MOSQUITTO)
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {MOSQUITTO} (apt-get install -y mosquitto): {e}"));
        let child = self.child.insert(child);
        let deadline = tokio::time::Instant::now() + MOSQUITTO_BOOT;
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mosquitto exited ({status}) before listening on {}; log:\n{}", self.port, self.log());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "mosquitto did not listen on {} within {MOSQUITTO_BOOT:?}; log:\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the broker (SIGTERM) and waits for it to exit; every client loses its connection.
    pub async fn stop(&mut self) {
        let mut child = self.child.take().expect("the broker is running");
        if let Some(pid) = child.id() {
            // SAFETY: kill(2) on our own child's pid, which it still is (not reaped yet).
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        crate::within("mosquitto to exit", child.wait()).await.expect("wait for mosquitto");
    }
}

impl Drop for MosquittoNode {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
