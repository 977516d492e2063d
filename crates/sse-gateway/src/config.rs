//! Gateway configuration: one typed struct, read from SSEGateway's environment
//! variables and overridden by equivalent command-line flags.
//!
//! Nothing else in the crate reads the environment: [`Config::from_sources`]
//! takes a lookup function, so tests inject values without touching the
//! process environment.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Parser;

/// Default heartbeat period (SSEGateway: 15 s).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);

/// The gateway's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Address the public listener binds (`0.0.0.0:PORT` unless `LISTEN_ADDR` is set).
    pub listen: SocketAddr,
    /// Backend callback URL, used verbatim. `None` → not ready, SSE requests get 503.
    pub callback_url: Option<String>,
    /// How long the connect (and disconnect) callback may take.
    pub callback_timeout: Duration,
    /// Period of the `: heartbeat` comment.
    pub heartbeat_interval: Duration,
    /// Largest accepted `/internal/send` body.
    pub max_body_bytes: usize,
    /// Bytes that may wait in one stream's queue before it is closed as a slow consumer.
    pub stream_queue_bytes: usize,
    /// How long a graceful shutdown may take before remaining connections are cut.
    pub shutdown_timeout: Duration,
    /// Routing keys for streams whose connect answer lists no `bindings`;
    /// `{request_id}` is replaced by the answer's request_id, else the
    /// `request_id` query parameter (a template without a value is skipped).
    pub default_bindings: Vec<String>,
    /// The internal listener (`/internal/*`, `/metrics`), loopback by default. `None`: off.
    pub internal_listen: Option<SocketAddr>,
    /// Bearer secret that unlocks `/internal/publish` and `/metrics` on the public listener.
    pub internal_api_secret: Option<String>,
    /// Most streams (pending + open) at once; beyond it a stream gets `retry:` and ends.
    pub max_connections: usize,
    /// Largest request head (request line + headers) accepted.
    pub max_header_bytes: usize,
    /// How long events for `connection.<request_id>` are held after its
    /// stream ended unexpectedly, for a client that comes back (0: off).
    pub resume_ttl: Duration,
    /// AMQP ingress (scale-out); `None`: HTTP mode.
    pub amqp: Option<AmqpConfig>,
}

/// The AMQP ingress settings (SSEGateway names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpConfig {
    /// `RABBITMQ_URL`.
    pub url: String,
    /// `RABBITMQ_QUEUE_TTL_MS`: also the default resume TTL in AMQP mode.
    pub queue_ttl: Duration,
    /// Exchange name: `<RABBITMQ_ENV_PREFIX>.sse.events`, or `sse.events`.
    pub exchange: String,
    /// `RABBITMQ_ENV_AUTO_DELETE`: exchange auto-delete and non-durable.
    pub auto_delete: bool,
    /// This instance's queue name (one queue per gateway instance).
    pub queue: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 3000),
            callback_url: None,
            callback_timeout: Duration::from_secs(5),
            heartbeat_interval: DEFAULT_HEARTBEAT,
            max_body_bytes: 1024 * 1024,
            stream_queue_bytes: 1024 * 1024,
            shutdown_timeout: Duration::from_secs(10),
            default_bindings: Vec::new(),
            internal_listen: None,
            internal_api_secret: None,
            max_connections: 50_000,
            max_header_bytes: 16 * 1024,
            resume_ttl: Duration::ZERO,
            amqp: None,
        }
    }
}

/// A setting that cannot be used; the gateway refuses to start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `PORT` is not an integer in 1..=65535.
    #[error("invalid PORT {0:?}: expected an integer between 1 and 65535")]
    Port(String),
    /// `LISTEN_ADDR` is not `ip:port`.
    #[error("invalid LISTEN_ADDR {0:?}: expected ip:port, e.g. 127.0.0.1:3000")]
    Listen(String),
    /// `CALLBACK_URL` is not an http URL this build can call.
    #[error("invalid CALLBACK_URL {0:?}: expected an absolute http:// URL")]
    CallbackUrl(String),
    /// A numeric limit is not a positive integer.
    #[error("invalid {name} {value:?}: expected a positive integer")]
    Number {
        /// The variable's name.
        name: &'static str,
        /// The value given.
        value: String,
    },
    /// `INTERNAL_PORT` is not an integer in 1..=65535.
    #[error("invalid INTERNAL_PORT {0:?}: expected an integer between 1 and 65535")]
    InternalPort(String),
    /// `INTERNAL_LISTEN` is not `ip:port`.
    #[error("invalid INTERNAL_LISTEN {0:?}: expected ip:port, e.g. 127.0.0.1:3001")]
    InternalListen(String),
    /// A default binding is not a valid routing key.
    #[error("invalid DEFAULT_BINDINGS entry {0:?}: keys are 1-255 bytes without whitespace or control characters")]
    Binding(String),
    /// `RABBITMQ_URL` is not an AMQP URL.
    #[error("invalid RABBITMQ_URL: expected amqp://user:pass@host:port/vhost")]
    AmqpUrl,
}

/// Command-line flags; each mirrors an environment variable and wins over it.
#[derive(Debug, Default, Clone, Parser)]
#[command(name = "sse-gateway", version, about = "Server-Sent-Events gateway, wire-compatible with SSEGateway.")]
pub struct Cli {
    /// Listen port on all interfaces, 1-65535 [env: PORT] [default: 3000]
    #[arg(long)]
    pub port: Option<String>,
    /// Listen address ip:port, overrides --port; port 0 picks a free port [env: LISTEN_ADDR]
    #[arg(long)]
    pub listen: Option<String>,
    /// Backend callback URL, used verbatim [env: CALLBACK_URL]
    #[arg(long)]
    pub callback_url: Option<String>,
    /// Heartbeat period in seconds; invalid values fall back to 15 [env: HEARTBEAT_INTERVAL_SECONDS]
    #[arg(long)]
    pub heartbeat_interval_seconds: Option<String>,
    /// Connect/disconnect callback timeout in milliseconds [env: CALLBACK_TIMEOUT_MS] [default: 5000]
    #[arg(long)]
    pub callback_timeout_ms: Option<String>,
    /// Largest /internal/send body in bytes [env: MAX_BODY_BYTES] [default: 1048576]
    #[arg(long)]
    pub max_body_bytes: Option<String>,
    /// Per-stream queue limit in bytes before a slow client is closed [env: STREAM_QUEUE_BYTES] [default: 1048576]
    #[arg(long)]
    pub stream_queue_bytes: Option<String>,
    /// Graceful shutdown deadline in seconds [env: SHUTDOWN_TIMEOUT_SECONDS] [default: 10]
    #[arg(long)]
    pub shutdown_timeout_seconds: Option<String>,
    /// Routing keys for streams whose connect answer has no bindings, comma-separated; {request_id} is substituted [env: DEFAULT_BINDINGS]
    #[arg(long)]
    pub default_bindings: Option<String>,
    /// Port of the internal listener on 127.0.0.1 (/internal/*, /metrics) [env: INTERNAL_PORT]
    #[arg(long)]
    pub internal_port: Option<String>,
    /// Internal listener address ip:port, overrides --internal-port; port 0 picks a free port [env: INTERNAL_LISTEN]
    #[arg(long)]
    pub internal_listen: Option<String>,
    /// Bearer secret that unlocks /internal/publish and /metrics on the public port [env: INTERNAL_API_SECRET]
    #[arg(long)]
    pub internal_api_secret: Option<String>,
    /// Most streams at once; beyond it new streams get a retry hint [env: MAX_CONNECTIONS] [default: 50000]
    #[arg(long)]
    pub max_connections: Option<String>,
    /// Largest request head in bytes [env: MAX_HEADER_BYTES] [default: 16384]
    #[arg(long)]
    pub max_header_bytes: Option<String>,
    /// AMQP URL; enables the RabbitMQ ingress (scale-out) [env: RABBITMQ_URL]
    #[arg(long)]
    pub rabbitmq_url: Option<String>,
    /// Expiry of held events for a reconnecting request_id, ms [env: RABBITMQ_QUEUE_TTL_MS] [default: 300000]
    #[arg(long)]
    pub rabbitmq_queue_ttl_ms: Option<String>,
    /// Exchange name prefix: <prefix>.sse.events [env: RABBITMQ_ENV_PREFIX]
    #[arg(long)]
    pub rabbitmq_env_prefix: Option<String>,
    /// true: exchange auto-delete and non-durable (test environments) [env: RABBITMQ_ENV_AUTO_DELETE]
    #[arg(long)]
    pub rabbitmq_env_auto_delete: Option<String>,
    /// Name of this instance, used in its queue name [env: RABBITMQ_INSTANCE_ID] [default: host name + random suffix]
    #[arg(long)]
    pub rabbitmq_instance_id: Option<String>,
    /// Hold events for connection.<request_id> this long after its stream ended unexpectedly, ms; 0 = off [env: RESUME_TTL_MS] [default: 0, or RABBITMQ_QUEUE_TTL_MS with RabbitMQ]
    #[arg(long)]
    pub resume_ttl_ms: Option<String>,
}

impl Config {
    /// Builds the configuration from flags (first) and an environment lookup.
    ///
    /// Returns the config and the warnings to log (lenient fallbacks, as SSEGateway does).
    pub fn from_sources(cli: &Cli, env: impl Fn(&str) -> Option<String>) -> Result<(Config, Vec<String>), ConfigError> {
        let get =
            |flag: &Option<String>, name: &str| flag.clone().or_else(|| env(name)).filter(|v| !v.trim().is_empty());
        let mut warnings = Vec::new();
        let mut cfg = Config::default();

        if let Some(port) = get(&cli.port, "PORT") {
            let p: u16 = port.trim().parse().map_err(|_| ConfigError::Port(port.clone()))?;
            if p == 0 {
                return Err(ConfigError::Port(port));
            }
            cfg.listen.set_port(p);
        }
        if let Some(listen) = get(&cli.listen, "LISTEN_ADDR") {
            cfg.listen = listen.trim().parse().map_err(|_| ConfigError::Listen(listen.clone()))?;
        }
        if let Some(url) = get(&cli.callback_url, "CALLBACK_URL") {
            let ok = url.parse::<http::Uri>().is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
            if !ok {
                return Err(ConfigError::CallbackUrl(url));
            }
            cfg.callback_url = Some(url);
        }
        if let Some(hb) = get(&cli.heartbeat_interval_seconds, "HEARTBEAT_INTERVAL_SECONDS") {
            match hb.trim().parse::<u64>() {
                Ok(s) if s >= 1 => cfg.heartbeat_interval = Duration::from_secs(s),
                _ => warnings
                    .push(format!("invalid HEARTBEAT_INTERVAL_SECONDS {hb:?}: expected an integer >= 1; using 15")),
            }
        }
        let number = |flag: &Option<String>, name: &'static str| -> Result<Option<u64>, ConfigError> {
            match get(flag, name) {
                None => Ok(None),
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if n > 0 => Ok(Some(n)),
                    _ => Err(ConfigError::Number { name, value: v }),
                },
            }
        };
        if let Some(ms) = number(&cli.callback_timeout_ms, "CALLBACK_TIMEOUT_MS")? {
            cfg.callback_timeout = Duration::from_millis(ms);
        }
        if let Some(n) = number(&cli.max_body_bytes, "MAX_BODY_BYTES")? {
            cfg.max_body_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = number(&cli.stream_queue_bytes, "STREAM_QUEUE_BYTES")? {
            cfg.stream_queue_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(s) = number(&cli.shutdown_timeout_seconds, "SHUTDOWN_TIMEOUT_SECONDS")? {
            cfg.shutdown_timeout = Duration::from_secs(s);
        }
        if let Some(list) = get(&cli.default_bindings, "DEFAULT_BINDINGS") {
            for b in list.split(',').map(str::trim).filter(|b| !b.is_empty()) {
                if !crate::command::is_valid_key(&b.replace("{request_id}", "x")) {
                    return Err(ConfigError::Binding(b.to_owned()));
                }
                cfg.default_bindings.push(b.to_owned());
            }
        }
        if let Some(port) = get(&cli.internal_port, "INTERNAL_PORT") {
            let p: u16 = port.trim().parse().map_err(|_| ConfigError::InternalPort(port.clone()))?;
            if p == 0 {
                return Err(ConfigError::InternalPort(port));
            }
            cfg.internal_listen = Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p));
        }
        if let Some(listen) = get(&cli.internal_listen, "INTERNAL_LISTEN") {
            cfg.internal_listen = Some(listen.trim().parse().map_err(|_| ConfigError::InternalListen(listen.clone()))?);
        }
        cfg.internal_api_secret = get(&cli.internal_api_secret, "INTERNAL_API_SECRET");
        if let Some(n) = number(&cli.max_connections, "MAX_CONNECTIONS")? {
            cfg.max_connections = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = number(&cli.max_header_bytes, "MAX_HEADER_BYTES")? {
            cfg.max_header_bytes = usize::try_from(n).unwrap_or(usize::MAX).max(1024);
        }
        if let Some(url) = get(&cli.rabbitmq_url, "RABBITMQ_URL") {
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                return Err(ConfigError::AmqpUrl);
            }
            let ttl_ms = number(&cli.rabbitmq_queue_ttl_ms, "RABBITMQ_QUEUE_TTL_MS")?.unwrap_or(300_000);
            let prefix = get(&cli.rabbitmq_env_prefix, "RABBITMQ_ENV_PREFIX").unwrap_or_default();
            let exchange = if prefix.is_empty() { "sse.events".to_owned() } else { format!("{prefix}.sse.events") };
            let auto_delete = get(&cli.rabbitmq_env_auto_delete, "RABBITMQ_ENV_AUTO_DELETE")
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
            let instance = get(&cli.rabbitmq_instance_id, "RABBITMQ_INSTANCE_ID").unwrap_or_else(|| {
                let host = env("HOSTNAME").unwrap_or_else(|| "gateway".into());
                let suffix = uuid::Uuid::new_v4().simple().to_string();
                format!("{host}-{}", &suffix[..8])
            });
            cfg.resume_ttl = Duration::from_millis(ttl_ms);
            cfg.amqp = Some(AmqpConfig {
                url,
                queue_ttl: Duration::from_millis(ttl_ms),
                queue: format!("{exchange}.gw.{instance}"),
                exchange,
                auto_delete,
            });
        }
        if let Some(ms) = get(&cli.resume_ttl_ms, "RESUME_TTL_MS") {
            let ms: u64 = ms.trim().parse().map_err(|_| ConfigError::Number { name: "RESUME_TTL_MS", value: ms })?;
            cfg.resume_ttl = Duration::from_millis(ms);
        }
        Ok((cfg, warnings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(env: &[(&str, &str)], cli: Cli) -> Result<(Config, Vec<String>), ConfigError> {
        let map: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_sources(&cli, |k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_sseg_gateway() {
        let (cfg, warnings) = load(&[], Cli::default()).unwrap();
        assert_eq!(cfg.listen.port(), 3000);
        assert_eq!(cfg.callback_timeout, Duration::from_secs(5));
        assert_eq!(cfg.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(cfg.max_body_bytes, 1 << 20);
        assert!(cfg.callback_url.is_none());
        assert!(warnings.is_empty());
    }

    #[test]
    fn invalid_port_is_an_error() {
        for p in ["0", "65536", "abc", "-1"] {
            assert_eq!(load(&[("PORT", p)], Cli::default()).unwrap_err(), ConfigError::Port(p.into()));
        }
    }

    #[test]
    fn invalid_heartbeat_warns_and_uses_15() {
        let (cfg, warnings) = load(&[("HEARTBEAT_INTERVAL_SECONDS", "0")], Cli::default()).unwrap();
        assert_eq!(cfg.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn flags_override_environment() {
        let cli = Cli { port: Some("4000".into()), ..Cli::default() };
        let (cfg, _) = load(&[("PORT", "5000")], cli).unwrap();
        assert_eq!(cfg.listen.port(), 4000);
    }

    #[test]
    fn callback_url_must_be_http() {
        assert!(load(&[("CALLBACK_URL", "ftp://x/")], Cli::default()).is_err());
        let (cfg, _) = load(&[("CALLBACK_URL", "http://127.0.0.1:5000/cb?secret=s")], Cli::default()).unwrap();
        assert_eq!(cfg.callback_url.as_deref(), Some("http://127.0.0.1:5000/cb?secret=s"));
    }

    #[test]
    fn internal_listener_defaults_to_loopback() {
        let (cfg, _) = load(&[("INTERNAL_PORT", "3001")], Cli::default()).unwrap();
        assert_eq!(cfg.internal_listen, Some("127.0.0.1:3001".parse().unwrap()));
        assert!(load(&[("INTERNAL_PORT", "x")], Cli::default()).is_err());
    }

    #[test]
    fn default_bindings_are_validated() {
        let (cfg, _) = load(&[("DEFAULT_BINDINGS", "broadcast, connection.{request_id}")], Cli::default()).unwrap();
        assert_eq!(cfg.default_bindings, vec!["broadcast", "connection.{request_id}"]);
        assert!(load(&[("DEFAULT_BINDINGS", "bad key")], Cli::default()).is_err());
    }

    #[test]
    fn rabbitmq_settings_follow_the_sseg_gateway_names() {
        let (cfg, _) = load(
            &[
                ("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
                ("RABBITMQ_ENV_PREFIX", "test"),
                ("RABBITMQ_ENV_AUTO_DELETE", "true"),
                ("RABBITMQ_INSTANCE_ID", "gw1"),
            ],
            Cli::default(),
        )
        .unwrap();
        let amqp = cfg.amqp.unwrap();
        assert_eq!(amqp.exchange, "test.sse.events");
        assert_eq!(amqp.queue, "test.sse.events.gw.gw1");
        assert!(amqp.auto_delete);
        assert_eq!(cfg.resume_ttl, Duration::from_secs(300));
        let (cfg, _) = load(&[("RABBITMQ_URL", "amqp://x")], Cli::default()).unwrap();
        assert_eq!(cfg.amqp.unwrap().exchange, "sse.events");
        assert_eq!(load(&[("RABBITMQ_URL", "http://x")], Cli::default()).unwrap_err(), ConfigError::AmqpUrl);
    }
}
