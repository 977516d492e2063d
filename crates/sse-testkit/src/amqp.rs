//! RabbitMQ for tests: the shared broker's URL (required, never skipped), a
//! publisher, `rabbitmqctl`, and a throwaway node a test may stop and restart.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

/// The broker tests share: `SSE_TEST_AMQP_URL`, set by `scripts/test`.
/// Panics when unset: a test that needs RabbitMQ fails without it.
pub fn amqp_url() -> String {
    std::env::var("SSE_TEST_AMQP_URL").unwrap_or_else(|_| {
        panic!("SSE_TEST_AMQP_URL is not set: run the tests through scripts/test (it starts RabbitMQ)")
    })
}

/// Runs `rabbitmqctl` (the command in `SSE_TEST_RABBITMQCTL`, default
/// `rabbitmqctl`) against the shared broker; returns stdout.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let cmdline = std::env::var("SSE_TEST_RABBITMQCTL").unwrap_or_else(|_| "rabbitmqctl".into());
    let mut parts = cmdline.split_whitespace();
    let program = parts.next().unwrap_or("rabbitmqctl");
    let out =
        Command::new(program).args(parts).args(args).output().unwrap_or_else(|e| panic!("cannot run {cmdline}: {e}"));
    assert!(out.status.success(), "{cmdline} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Publishes JSON messages to a topic exchange.
pub struct AmqpPublisher {
    _conn: Connection,
    channel: Channel,
    exchange: String,
}

impl AmqpPublisher {
    /// Connects and declares the exchange as the gateway does (auto-delete, test mode).
    pub async fn connect(url: &str, exchange: &str) -> AmqpPublisher {
        let conn = Connection::connect(url, ConnectionProperties::default()).await.expect("connect to RabbitMQ");
        let channel = conn.create_channel().await.expect("channel");
        // Confirms: a publish returns once the broker has the message, so a
        // test's publishes are ordered with whatever it does next.
        channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirm mode");
        channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions { durable: false, auto_delete: true, ..Default::default() },
                FieldTable::default(),
            )
            .await
            .expect("declare exchange");
        AmqpPublisher { _conn: conn, channel, exchange: exchange.to_owned() }
    }

    /// Publishes raw bytes with a routing key and waits for the broker to take it.
    pub async fn publish_raw(&self, key: &str, body: &[u8]) {
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("publish confirmation");
    }

    /// Publishes raw bytes with an AMQP `type` (as a gateway's own messages
    /// carry), to see what the gateway does with one forged by a backend.
    pub async fn publish_typed(&self, key: &str, kind: &str, body: &[u8]) {
        self.channel
            .basic_publish(
                self.exchange.as_str().into(),
                key.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_type(kind.into()),
            )
            .await
            .expect("publish")
            .await
            .expect("publish confirmation");
    }

    /// Publishes `{"event": name, "data": data}`.
    pub async fn publish(&self, key: &str, name: &str, data: &str) {
        let body = serde_json::json!({"event": name, "data": data}).to_string();
        self.publish_raw(key, body.as_bytes()).await;
    }
}

/// A RabbitMQ node of the test's own (loopback, throwaway data dir), for
/// tests that stop and restart the broker. Its AMQP port is chosen free when
/// it starts and kept across restarts, so a client reconnects to the same URL.
/// Every wait is async: nothing blocks the test's runtime while the node
/// starts or stops (only [`Drop`], which must not leave a node behind).
pub struct RabbitNode {
    dir: PathBuf,
    name: String,
    port: u16,
    dist_port: u16,
    server: tokio::sync::Mutex<Option<tokio::process::Child>>,
}

/// How long a node may take to start on a loaded machine.
const RABBIT_BOOT: Duration = Duration::from_secs(90);

impl RabbitNode {
    /// Starts a node on free loopback ports and waits until it accepts work.
    pub async fn start() -> RabbitNode {
        let dir = std::env::temp_dir().join(format!("sse-rabbit-{}", uuid::Uuid::new_v4().simple()));
        for sub in ["mnesia", "log", "home"] {
            std::fs::create_dir_all(dir.join(sub)).expect("node dirs");
        }
        std::fs::write(dir.join("rabbitmq.conf"), "").expect("conf");
        std::fs::write(dir.join("enabled_plugins"), "[].").expect("plugins");
        let [port, dist_port] = crate::free_ports();
        let node =
            RabbitNode { name: format!("sse{port}@localhost"), dir, port, dist_port, server: Default::default() };
        node.boot().await;
        node
    }

    /// The node's AMQP URL.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let d = &self.dir;
        let mut cmd = Command::new(program);
        cmd.env("HOME", d.join("home"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}");
        cmd
    }

    fn ctl_command(&self, args: &[&str]) -> Command {
        let mut cmd = self.command("/usr/lib/rabbitmq/bin/rabbitmqctl");
        cmd.arg("-q").arg("-n").arg(&self.name).args(args);
        cmd
    }

    async fn ctl(&self, args: &[&str]) -> bool {
        let out = tokio::process::Command::from(self.ctl_command(args)).output().await;
        out.map(|o| o.status.success()).unwrap_or(false)
    }

    /// (Re)starts the node and waits until it accepts work.
    pub async fn boot(&self) {
        let mut cmd = self.command("/usr/lib/rabbitmq/bin/rabbitmq-server");
        let log = std::fs::File::create(self.dir.join("server.log")).expect("log file");
        cmd.stdout(log.try_clone().expect("log")).stderr(log).stdin(std::process::Stdio::null());
        let child = tokio::process::Command::from(cmd)
            .spawn()
            .expect("start rabbitmq-server (is the rabbitmq-server package installed?)");
        *self.server.lock().await = Some(child);
        let deadline = tokio::time::Instant::now() + RABBIT_BOOT;
        // `await_startup` itself waits (up to 5 s) for the node to come up.
        while !self.ctl(&["await_startup", "--timeout", "5"]).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "RabbitMQ node {} did not start within {RABBIT_BOOT:?}; log: {}",
                self.name,
                std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops the node (its data stays for the next [`RabbitNode::boot`]).
    pub async fn stop(&self) {
        assert!(self.ctl(&["stop"]).await, "stopping RabbitMQ node {}", self.name);
        if let Some(mut child) = self.server.lock().await.take() {
            let _ = child.wait().await;
        }
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        // Synchronous on purpose: a test that ends (or panics) must not leave
        // its node running, and Drop cannot await.
        let stopped = self.ctl_command(&["stop"]).output().is_ok_and(|o| o.status.success());
        if let Some(child) = self.server.get_mut().as_mut()
            && !stopped
        {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
