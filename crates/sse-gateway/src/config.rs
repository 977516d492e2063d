//! Gateway configuration: one typed struct, read through an injectable
//! lookup (environment-variable names, as SSEGateway's).
//!
//! [`SETTINGS`] is the one place each setting is named, defaulted and
//! described: [`Config::from_lookup`] applies a setting's default when the
//! lookup has no value, and the binary builds its command-line flags and
//! `--help` from the same table (clap lives only in the binary). Nothing in
//! the library reads the process environment, so tests inject values.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::tls::{TlsConfig, TlsError};

/// One setting as documented: its environment variable, its flag, its
/// default (text, parsed by the same rules as a given value) and its help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Environment variable, e.g. `PORT`; also the key passed to the lookup.
    pub env: &'static str,
    /// Long flag without dashes, e.g. `port`.
    pub flag: &'static str,
    /// Default as text (`None`: unset), shown in `--help`.
    pub default: Option<&'static str>,
    /// One line for `--help`.
    pub help: &'static str,
}

impl Setting {
    /// The value the lookup gives (blank counts as unset), else the default.
    pub fn value(&self, lookup: &impl Fn(&str) -> Option<String>) -> Option<String> {
        lookup(self.env).filter(|v| !v.trim().is_empty()).or_else(|| self.default.map(str::to_owned))
    }
}

/// Declares a table of [`Setting`]s, one `pub const` each plus the table:
/// `settings_table! { TABLE: ... }` with entries of three forms: a crate's own
/// (`NAME = "ENV", "flag", default, "help";`), another crate's unchanged
/// (`shared module::NAME;`), or another crate's with its own default and help
/// (`changed module::NAME, default, "help";`). The gateway, the toolkit and
/// the hub declare their settings with it, so each is named once.
#[macro_export]
macro_rules! settings_table {
    (@acc $table:ident [$($all:ident)*]) => {
        /// Every setting in the table, in `--help` order.
        pub const $table: &[$crate::config::Setting] = &[$($all),*];
    };
    (@acc $table:ident [$($all:ident)*] shared $module:ident::$name:ident; $($rest:tt)*) => {
        #[doc = concat!("[`", stringify!($module), "::", stringify!($name), "`], unchanged.")]
        pub const $name: $crate::config::Setting = $module::$name;
        $crate::settings_table!(@acc $table [$($all)* $name] $($rest)*);
    };
    (@acc $table:ident [$($all:ident)*] changed $module:ident::$name:ident, $default:expr, $help:literal; $($rest:tt)*) => {
        #[doc = concat!("[`", stringify!($module), "::", stringify!($name), "`] with this crate's default and help.")]
        pub const $name: $crate::config::Setting = $crate::config::Setting { default: $default, help: $help, ..$module::$name };
        $crate::settings_table!(@acc $table [$($all)* $name] $($rest)*);
    };
    (@acc $table:ident [$($all:ident)*] $name:ident = $env:literal, $flag:literal, $default:expr, $help:literal; $($rest:tt)*) => {
        #[doc = concat!("The `", $env, "` setting; its `help` says what it does.")]
        pub const $name: $crate::config::Setting =
            $crate::config::Setting { env: $env, flag: $flag, default: $default, help: $help };
        $crate::settings_table!(@acc $table [$($all)* $name] $($rest)*);
    };
    ($table:ident: $($entries:tt)*) => {
        $crate::settings_table!(@acc $table [] $($entries)*);
    };
}

/// The gateway's settings, one constant each.
pub mod settings {
    crate::settings_table! { SETTINGS:
        PORT = "PORT", "port", Some("3000"), "Listen port on all interfaces, 1-65535";
        LISTEN_ADDR = "LISTEN_ADDR", "listen", None, "Listen address ip:port, overrides PORT; port 0 picks a free port (printed on stdout)";
        CALLBACK_URL = "CALLBACK_URL", "callback-url", None, "Backend callback URL (http://), used verbatim; unset: streams are answered 503";
        HEARTBEAT_INTERVAL_SECONDS = "HEARTBEAT_INTERVAL_SECONDS", "heartbeat-interval-seconds", Some("15"), "Period of the `: heartbeat` comment in seconds; an invalid value warns and uses 15";
        CALLBACK_TIMEOUT_MS = "CALLBACK_TIMEOUT_MS", "callback-timeout-ms", Some("5000"), "Connect/disconnect callback timeout in milliseconds";
        MAX_BODY_BYTES = "MAX_BODY_BYTES", "max-body-bytes", Some("1048576"), "Largest /internal/send and /internal/publish body in bytes (larger: 413)";
        STREAM_QUEUE_BYTES = "STREAM_QUEUE_BYTES", "stream-queue-bytes", Some("1048576"), "Bytes that may wait for one slow client before its stream is closed";
        SHUTDOWN_TIMEOUT_SECONDS = "SHUTDOWN_TIMEOUT_SECONDS", "shutdown-timeout-seconds", Some("10"), "Graceful drain deadline in seconds; connections still open then are cut";
        DEFAULT_BINDINGS = "DEFAULT_BINDINGS", "default-bindings", None, "Routing keys for streams whose connect answer has no bindings, comma-separated; {request_id} is substituted";
        INTERNAL_PORT = "INTERNAL_PORT", "internal-port", None, "Port of the internal listener on 127.0.0.1 (/internal/*, /metrics)";
        INTERNAL_LISTEN = "INTERNAL_LISTEN", "internal-listen", None, "Internal listener address ip:port, overrides INTERNAL_PORT; port 0 picks a free port";
        INTERNAL_API_SECRET = "INTERNAL_API_SECRET", "internal-api-secret", None, "Bearer secret that unlocks /internal/publish and /metrics on the public port";
        TLS_CERT_FILE = "TLS_CERT_FILE", "tls-cert-file", None, "PEM certificate chain (leaf first); with TLS_KEY_FILE the public listener serves HTTPS with HTTP/2 and HTTP/1.1 (ALPN); read once at start";
        TLS_KEY_FILE = "TLS_KEY_FILE", "tls-key-file", None, "PEM private key of TLS_CERT_FILE (PKCS#8, PKCS#1 or SEC1)";
        STREAM_SNDBUF_BYTES = "STREAM_SNDBUF_BYTES", "stream-sndbuf-bytes", Some("32768"), "Kernel send buffer of each stream socket (the kernel doubles it), so a client that stops reading holds little kernel memory; 0 = the kernel's default";
        STREAM_STALL_SECONDS = "STREAM_STALL_SECONDS", "stream-stall-seconds", Some("10"), "Close a stream (reason error) whose socket has taken no byte for this long while data waits; 0 = never";
        MAX_CONNECTIONS = "MAX_CONNECTIONS", "max-connections", Some("50000"), "Most streams at once; beyond it a new stream gets a retry hint and ends";
        MAX_HEADER_BYTES = "MAX_HEADER_BYTES", "max-header-bytes", Some("16384"), "Largest request head in bytes (larger: 431); at least 1024";
        RABBITMQ_URL = "RABBITMQ_URL", "rabbitmq-url", None, "AMQP URL; enables the RabbitMQ ingress (scale-out)";
        RABBITMQ_QUEUE_TTL_MS = "RABBITMQ_QUEUE_TTL_MS", "rabbitmq-queue-ttl-ms", Some("300000"), "With RabbitMQ: how long events for a request_id whose client left unexpectedly are held, ms";
        RABBITMQ_ENV_PREFIX = "RABBITMQ_ENV_PREFIX", "rabbitmq-env-prefix", None, "Exchange name prefix: <prefix>.sse.events (unset: sse.events)";
        RABBITMQ_ENV_AUTO_DELETE = "RABBITMQ_ENV_AUTO_DELETE", "rabbitmq-env-auto-delete", Some("false"), "true: the exchange is auto-delete and non-durable (tests)";
        RABBITMQ_INSTANCE_ID = "RABBITMQ_INSTANCE_ID", "rabbitmq-instance-id", None, "Older name of INSTANCE_ID (INSTANCE_ID wins)";
        RESUME_TTL_MS = "RESUME_TTL_MS", "resume-ttl-ms", None, "Hold events for connection.<request_id> this long after an unexpected disconnect, ms; 0 = off (unset: 0, or RABBITMQ_QUEUE_TTL_MS with RabbitMQ)";
        INSTANCE_ID = "INSTANCE_ID", "instance-id", None, "Name of this gateway instance in rosters, admin answers and its RabbitMQ queue (unset: RABBITMQ_INSTANCE_ID, else $HOSTNAME-<random>)";
        ROSTER_INTERVAL_SECONDS = "ROSTER_INTERVAL_SECONDS", "roster-interval-seconds", Some("0"), "Every this many seconds, POST the list of this instance's tokens to CALLBACK_URL (action roster); connect callbacks then carry the instance id; 0 = off";
        MAX_CONCURRENT_CALLBACKS = "MAX_CONCURRENT_CALLBACKS", "max-concurrent-callbacks", Some("64"), "Most callbacks (connect, disconnect, roster) in flight to the backend at once; the rest wait their turn";
        MAX_QUEUED_CONNECTS = "MAX_QUEUED_CONNECTS", "max-queued-connects", Some("10000"), "Most connect callbacks waiting for a free slot; beyond it a new stream gets 503 BACKEND_UNAVAILABLE, or a retry: hint with RETRY_ON_BACKEND_FAILURE";
        RETRY_ON_BACKEND_FAILURE = "RETRY_ON_BACKEND_FAILURE", "retry-on-backend-failure", Some("false"), "true: a connect callback that gets no answer, times out or answers 5xx gives the client 200 + a retry: hint instead of 503/504/5xx (which make EventSource give up)";
        RETRY_JITTER_MS = "RETRY_JITTER_MS", "retry-jitter-ms", None, "MIN-MAX: every stream gets retry: <random in MIN..MAX> ms before ready, spreading reconnects after a gateway loss (unset: 1000-5000 when RETRY_ON_BACKEND_FAILURE is true, else off)";
        HISTORY_SECONDS = "HISTORY_SECONDS", "history-seconds", Some("0"), "Resumable streams: every event gets an id: and is kept this long, so a client reconnecting with Last-Event-ID gets what it missed (or an event: gap); with RabbitMQ the history is a RabbitMQ stream shared by the cluster; 0 = off (the wire stays as the Node gateway's)";
        HISTORY_MAX_BYTES = "HISTORY_MAX_BYTES", "history-max-bytes", Some("67108864"), "Most memory the kept events may use (the oldest go first)";
        DISCONNECT_RETRY_SECONDS = "DISCONNECT_RETRY_SECONDS", "disconnect-retry-seconds", Some("60"), "Retry a failed disconnect callback (refused, timeout, 5xx) with backoff for up to this many seconds; 0 = no retry";
    }
}

use settings as s;

pub use settings::SETTINGS;

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
    /// Largest accepted `/internal/send` or `/internal/publish` body.
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
    /// `TLS_CERT_FILE` and `TLS_KEY_FILE`, loaded: the public listener
    /// serves HTTPS (h2 and HTTP/1.1). `None`: plain HTTP.
    pub tls: Option<TlsConfig>,
    /// Most streams (pending + open) at once; beyond it a stream gets `retry:` and ends.
    pub max_connections: usize,
    /// Largest request head (request line + headers) accepted.
    pub max_header_bytes: usize,
    /// How long events for `connection.<request_id>` are held after its
    /// stream ended unexpectedly, for a client that comes back (0: off).
    pub resume_ttl: Duration,
    /// AMQP ingress (scale-out); `None`: HTTP mode.
    pub amqp: Option<AmqpConfig>,
    /// This instance's name (rosters, admin answers, the AMQP queue name).
    pub instance_id: String,
    /// Period of the roster callback; zero: no rosters, and connect
    /// callbacks carry no instance id (the Node contract's bodies).
    pub roster_interval: Duration,
    /// How long a failed disconnect callback is retried; zero: not retried.
    pub disconnect_retry: Duration,
    /// Answer a failed connect callback with 200 + `retry:` instead of an
    /// HTTP error (which `EventSource` treats as final).
    pub retry_on_backend_failure: bool,
    /// `retry:` range (ms) written to every stream before `ready`; `None`: off.
    pub open_retry_jitter: Option<(u64, u64)>,
    /// Most backend callbacks in flight at once.
    pub max_concurrent_callbacks: usize,
    /// Most connect callbacks waiting for a slot.
    pub max_queued_connects: usize,
    /// `SO_SNDBUF` of stream sockets; `None`: the kernel's default.
    pub stream_sndbuf: Option<usize>,
    /// A stream whose socket takes nothing this long while data waits is
    /// closed; zero: never.
    pub stream_stall: Duration,
    /// How long events are kept for resumes (`id:` on every event); zero: off.
    pub history: Duration,
    /// Most bytes the kept events may use.
    pub history_max_bytes: usize,
}

/// The AMQP ingress settings (SSEGateway names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpConfig {
    /// `RABBITMQ_URL`.
    pub url: String,
    /// `RABBITMQ_QUEUE_TTL_MS`: the default resume TTL in AMQP mode.
    pub queue_ttl: Duration,
    /// Exchange name: `<RABBITMQ_ENV_PREFIX>.sse.events`, or `sse.events`.
    pub exchange: String,
    /// `RABBITMQ_ENV_AUTO_DELETE`: exchange auto-delete and non-durable.
    pub auto_delete: bool,
    /// This instance's queue name (one queue per gateway instance).
    pub queue: String,
    /// The instance id in the queue name.
    pub instance_id: String,
}

/// A setting that cannot be used; the gateway refuses to start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `PORT` or `INTERNAL_PORT` is not an integer in 1..=65535.
    #[error("invalid {name} {value:?}: expected an integer between 1 and 65535")]
    Port {
        /// The variable's name.
        name: &'static str,
        /// The value given.
        value: String,
    },
    /// `LISTEN_ADDR` or `INTERNAL_LISTEN` is not `ip:port`.
    #[error("invalid {name} {value:?}: expected ip:port, e.g. 127.0.0.1:3000")]
    Address {
        /// The variable's name.
        name: &'static str,
        /// The value given.
        value: String,
    },
    /// `CALLBACK_URL` is not an http URL this build can call.
    #[error("invalid CALLBACK_URL {0:?}: expected an absolute http:// URL")]
    CallbackUrl(String),
    /// A number is not an integer in its range.
    #[error("invalid {name} {value:?}: expected {expected}")]
    Number {
        /// The variable's name.
        name: &'static str,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// A default binding is not a valid routing key.
    #[error("invalid DEFAULT_BINDINGS entry {0:?}: keys are 1-255 bytes without whitespace or control characters")]
    Binding(String),
    /// `RABBITMQ_URL` is not an AMQP URL.
    #[error("invalid RABBITMQ_URL: expected amqp://user:pass@host:port/vhost")]
    AmqpUrl,
    /// Only one of `TLS_CERT_FILE` and `TLS_KEY_FILE` is set.
    #[error("{set} is set but {missing} is not: HTTPS needs both")]
    TlsIncomplete {
        /// The variable that is set.
        set: &'static str,
        /// The one that is missing.
        missing: &'static str,
    },
    /// The certificate or key cannot be used.
    #[error("TLS_CERT_FILE/TLS_KEY_FILE: {0}")]
    Tls(#[from] TlsError),
}

/// Reads settings through a lookup, applying each setting's default.
struct Reader<L> {
    lookup: L,
}

impl<L: Fn(&str) -> Option<String>> Reader<L> {
    fn text(&self, s: Setting) -> Option<String> {
        s.value(&self.lookup).map(|v| v.trim().to_owned())
    }

    /// A positive integer (`min` and above).
    fn number(&self, s: Setting, min: u64, expected: &'static str) -> Result<Option<u64>, ConfigError> {
        match self.text(s) {
            None => Ok(None),
            Some(v) => match v.parse::<u64>() {
                Ok(n) if n >= min => Ok(Some(n)),
                _ => Err(ConfigError::Number { name: s.env, value: v, expected }),
            },
        }
    }

    fn port(&self, s: Setting) -> Result<Option<u16>, ConfigError> {
        match self.text(s) {
            None => Ok(None),
            Some(v) => match v.parse::<u16>() {
                Ok(p) if p > 0 => Ok(Some(p)),
                _ => Err(ConfigError::Port { name: s.env, value: v }),
            },
        }
    }

    fn address(&self, s: Setting) -> Result<Option<SocketAddr>, ConfigError> {
        self.text(s).map(|v| v.parse().map_err(|_| ConfigError::Address { name: s.env, value: v.clone() })).transpose()
    }

    /// SSEGateway's rule: `true` (any case) is true, anything else false.
    fn bool(&self, s: Setting) -> bool {
        self.text(s).is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Default for Config {
    /// The documented defaults ([`SETTINGS`]), with no callback URL.
    fn default() -> Self {
        match Config::from_lookup(|_| None) {
            Ok((config, _)) => config,
            // The defaults table is constant and covered by a unit test.
            Err(e) => unreachable!("the default settings are invalid: {e}"),
        }
    }
}

impl Config {
    /// Builds the configuration from a lookup of environment-variable names
    /// (`|k| std::env::var(k).ok()`, or flags first in the binary).
    ///
    /// Returns the config and the warnings to log (lenient fallbacks, as SSEGateway does).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<(Config, Vec<String>), ConfigError> {
        let r = Reader { lookup };
        let mut warnings = Vec::new();
        let port = r.port(s::PORT)?.unwrap_or(3000);
        let listen = r.address(s::LISTEN_ADDR)?.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
        let callback_url = match r.text(s::CALLBACK_URL) {
            None => None,
            Some(url) => {
                let ok =
                    url.parse::<http::Uri>().is_ok_and(|u| u.scheme_str() == Some("http") && u.authority().is_some());
                if !ok {
                    return Err(ConfigError::CallbackUrl(url));
                }
                Some(url)
            }
        };
        let heartbeat_interval = match r.number(s::HEARTBEAT_INTERVAL_SECONDS, 1, "an integer >= 1") {
            Ok(n) => Duration::from_secs(n.unwrap_or(15)),
            Err(e) => {
                warnings.push(format!("{e}; using 15"));
                Duration::from_secs(15)
            }
        };
        let positive = "a positive integer";
        let mut default_bindings = Vec::new();
        for b in r.text(s::DEFAULT_BINDINGS).iter().flat_map(|l| l.split(',')).map(str::trim).filter(|b| !b.is_empty())
        {
            if !crate::keys::is_valid_key(&b.replace("{request_id}", "x")) {
                return Err(ConfigError::Binding(b.to_owned()));
            }
            default_bindings.push(b.to_owned());
        }
        let internal_listen = match r.address(s::INTERNAL_LISTEN)? {
            Some(addr) => Some(addr),
            None => r.port(s::INTERNAL_PORT)?.map(|p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p)),
        };
        let instance_id = instance_id(&r.lookup);
        let retry_on_backend_failure = r.bool(s::RETRY_ON_BACKEND_FAILURE);
        let open_retry_jitter = match r.text(s::RETRY_JITTER_MS) {
            Some(v) => Some(parse_range(&v).ok_or(ConfigError::Number {
                name: s::RETRY_JITTER_MS.env,
                value: v,
                expected: "MIN-MAX in milliseconds, MIN < MAX",
            })?),
            None => retry_on_backend_failure.then_some((1_000, 5_000)),
        };
        let amqp = AmqpConfig::with_instance(&r.lookup, &instance_id)?;
        let resume_ttl = match r.text(s::RESUME_TTL_MS) {
            Some(v) => Duration::from_millis(v.parse().map_err(|_| ConfigError::Number {
                name: s::RESUME_TTL_MS.env,
                value: v,
                expected: "an integer number of milliseconds (0: off)",
            })?),
            None => amqp.as_ref().map_or(Duration::ZERO, |a| a.queue_ttl),
        };
        let config = Config {
            listen,
            callback_url,
            callback_timeout: Duration::from_millis(r.number(s::CALLBACK_TIMEOUT_MS, 1, positive)?.unwrap_or(5000)),
            heartbeat_interval,
            max_body_bytes: usize_of(r.number(s::MAX_BODY_BYTES, 1, positive)?.unwrap_or(1 << 20)),
            stream_queue_bytes: usize_of(r.number(s::STREAM_QUEUE_BYTES, 1, positive)?.unwrap_or(1 << 20)),
            shutdown_timeout: Duration::from_secs(r.number(s::SHUTDOWN_TIMEOUT_SECONDS, 1, positive)?.unwrap_or(10)),
            default_bindings,
            internal_listen,
            internal_api_secret: r.text(s::INTERNAL_API_SECRET),
            tls: TlsConfig::from_lookup(&r.lookup)?,
            max_connections: usize_of(r.number(s::MAX_CONNECTIONS, 1, positive)?.unwrap_or(50_000)),
            max_header_bytes: usize_of(r.number(s::MAX_HEADER_BYTES, 1024, "an integer >= 1024")?.unwrap_or(16_384)),
            resume_ttl,
            amqp,
            instance_id,
            retry_on_backend_failure,
            open_retry_jitter,
            max_concurrent_callbacks: usize_of(r.number(s::MAX_CONCURRENT_CALLBACKS, 1, positive)?.unwrap_or(64)),
            max_queued_connects: usize_of(
                r.number(s::MAX_QUEUED_CONNECTS, 0, "an integer (0: no waiting)")?.unwrap_or(10_000),
            ),
            stream_sndbuf: r
                .number(s::STREAM_SNDBUF_BYTES, 0, "a number of bytes (0: the kernel's default)")?
                .filter(|n| *n > 0)
                .map(usize_of),
            stream_stall: Duration::from_secs(
                r.number(s::STREAM_STALL_SECONDS, 0, "an integer number of seconds (0: never)")?.unwrap_or(10),
            ),
            history: Duration::from_secs(
                r.number(s::HISTORY_SECONDS, 0, "an integer number of seconds (0: off)")?.unwrap_or(0),
            ),
            history_max_bytes: usize_of(r.number(s::HISTORY_MAX_BYTES, 1, positive)?.unwrap_or(64 << 20)),
            roster_interval: Duration::from_secs(
                r.number(s::ROSTER_INTERVAL_SECONDS, 0, "an integer number of seconds (0: off)")?.unwrap_or(0),
            ),
            disconnect_retry: Duration::from_secs(
                r.number(s::DISCONNECT_RETRY_SECONDS, 0, "an integer number of seconds (0: no retry)")?.unwrap_or(60),
            ),
        };
        Ok((config, warnings))
    }
}

/// `MIN-MAX` with MIN < MAX.
fn parse_range(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.split_once('-')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a < b).then_some((a, b))
}

/// `INSTANCE_ID`, else `RABBITMQ_INSTANCE_ID`, else `$HOSTNAME-<8 random hex>`.
fn instance_id(lookup: &impl Fn(&str) -> Option<String>) -> String {
    let r = Reader { lookup };
    r.text(s::INSTANCE_ID).or_else(|| r.text(s::RABBITMQ_INSTANCE_ID)).unwrap_or_else(|| {
        let host = (r.lookup)("HOSTNAME").filter(|h| !h.trim().is_empty()).unwrap_or_else(|| "gateway".into());
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        format!("{}-{}", host.trim(), &suffix[..8])
    })
}

impl TlsConfig {
    /// `TLS_CERT_FILE` and `TLS_KEY_FILE` through a lookup, loaded and
    /// checked; `None` when neither is set.
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Option<TlsConfig>, ConfigError> {
        let r = Reader { lookup };
        match (r.text(s::TLS_CERT_FILE), r.text(s::TLS_KEY_FILE)) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(TlsConfig::load(cert, key)?)),
            (Some(_), None) => {
                Err(ConfigError::TlsIncomplete { set: s::TLS_CERT_FILE.env, missing: s::TLS_KEY_FILE.env })
            }
            (None, Some(_)) => {
                Err(ConfigError::TlsIncomplete { set: s::TLS_KEY_FILE.env, missing: s::TLS_CERT_FILE.env })
            }
        }
    }
}

impl AmqpConfig {
    /// The RabbitMQ settings (`RABBITMQ_*`, and the instance id as
    /// [`Config::from_lookup`] reads it) through a lookup; `None` when
    /// `RABBITMQ_URL` is unset.
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Option<AmqpConfig>, ConfigError> {
        Self::with_instance(lookup, &instance_id(lookup))
    }

    fn with_instance(
        lookup: &impl Fn(&str) -> Option<String>,
        instance: &str,
    ) -> Result<Option<AmqpConfig>, ConfigError> {
        let r = Reader { lookup };
        let Some(url) = r.text(s::RABBITMQ_URL) else { return Ok(None) };
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(ConfigError::AmqpUrl);
        }
        let ttl_ms = r.number(s::RABBITMQ_QUEUE_TTL_MS, 1, "a positive integer")?.unwrap_or(300_000);
        let prefix = r.text(s::RABBITMQ_ENV_PREFIX).unwrap_or_default();
        let exchange = if prefix.is_empty() { "sse.events".to_owned() } else { format!("{prefix}.sse.events") };
        Ok(Some(AmqpConfig {
            url,
            queue_ttl: Duration::from_millis(ttl_ms),
            queue: format!("{exchange}.gw.{instance}"),
            exchange,
            auto_delete: r.bool(s::RABBITMQ_ENV_AUTO_DELETE),
            instance_id: instance.to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(env: &[(&str, &str)]) -> Result<(Config, Vec<String>), ConfigError> {
        let map: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    /// The default instance id has a random part: compare without it.
    fn same(a: &Config, b: &Config) -> bool {
        Config { instance_id: String::new(), ..a.clone() } == Config { instance_id: String::new(), ..b.clone() }
    }

    #[test]
    fn defaults_match_sseg_gateway() {
        let (cfg, warnings) = load(&[]).unwrap();
        assert!(same(&cfg, &Config::default()));
        assert_eq!(cfg.listen.port(), 3000);
        assert_eq!(cfg.callback_timeout, Duration::from_secs(5));
        assert_eq!(cfg.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(cfg.max_body_bytes, 1 << 20);
        assert_eq!(cfg.max_header_bytes, 16_384);
        assert_eq!(cfg.max_connections, 50_000);
        assert_eq!(cfg.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(cfg.resume_ttl, Duration::ZERO);
        assert_eq!((cfg.roster_interval, cfg.disconnect_retry), (Duration::ZERO, Duration::from_secs(60)));
        assert!(cfg.callback_url.is_none() && cfg.amqp.is_none() && cfg.internal_listen.is_none());
        assert!(warnings.is_empty());
    }

    #[test]
    fn every_default_in_the_table_is_the_value_used() {
        // A setting's documented default, given explicitly, changes nothing.
        for setting in SETTINGS.iter().filter(|s| s.default.is_some()) {
            let (cfg, _) = load(&[(setting.env, setting.default.unwrap())]).unwrap();
            assert!(same(&cfg, &Config::default()), "{}", setting.env);
        }
    }

    #[test]
    fn settings_have_unique_names_and_flags() {
        let mut envs: Vec<_> = SETTINGS.iter().map(|s| s.env).collect();
        let mut flags: Vec<_> = SETTINGS.iter().map(|s| s.flag).collect();
        envs.sort_unstable();
        envs.dedup();
        flags.sort_unstable();
        flags.dedup();
        assert_eq!((envs.len(), flags.len()), (SETTINGS.len(), SETTINGS.len()));
    }

    #[test]
    fn invalid_port_is_an_error() {
        for p in ["0", "65536", "abc", "-1"] {
            assert_eq!(load(&[("PORT", p)]).unwrap_err(), ConfigError::Port { name: "PORT", value: p.into() });
        }
    }

    #[test]
    fn invalid_heartbeat_warns_and_uses_15() {
        let (cfg, warnings) = load(&[("HEARTBEAT_INTERVAL_SECONDS", "0")]).unwrap();
        assert_eq!(cfg.heartbeat_interval, Duration::from_secs(15));
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn blank_values_are_unset() {
        let (cfg, _) = load(&[("PORT", " "), ("CALLBACK_URL", "")]).unwrap();
        assert!(same(&cfg, &Config::default()));
    }

    #[test]
    fn callback_url_must_be_http() {
        assert!(load(&[("CALLBACK_URL", "ftp://x/")]).is_err());
        let (cfg, _) = load(&[("CALLBACK_URL", "http://127.0.0.1:5000/cb?secret=s")]).unwrap();
        assert_eq!(cfg.callback_url.as_deref(), Some("http://127.0.0.1:5000/cb?secret=s"));
    }

    #[test]
    fn internal_listener_defaults_to_loopback() {
        let (cfg, _) = load(&[("INTERNAL_PORT", "3001")]).unwrap();
        assert_eq!(cfg.internal_listen, Some("127.0.0.1:3001".parse().unwrap()));
        assert!(load(&[("INTERNAL_PORT", "x")]).is_err());
        let (cfg, _) = load(&[("INTERNAL_PORT", "3001"), ("INTERNAL_LISTEN", "127.0.0.1:0")]).unwrap();
        assert_eq!(cfg.internal_listen, Some("127.0.0.1:0".parse().unwrap()));
    }

    #[test]
    fn retry_on_backend_failure_turns_the_open_jitter_on() {
        let (cfg, _) = load(&[]).unwrap();
        assert_eq!((cfg.retry_on_backend_failure, cfg.open_retry_jitter), (false, None));
        let (cfg, _) = load(&[("RETRY_ON_BACKEND_FAILURE", "true")]).unwrap();
        assert_eq!((cfg.retry_on_backend_failure, cfg.open_retry_jitter), (true, Some((1_000, 5_000))));
        let (cfg, _) = load(&[("RETRY_JITTER_MS", "200-300")]).unwrap();
        assert_eq!(cfg.open_retry_jitter, Some((200, 300)));
        for bad in ["300-200", "5", "a-b", "5-5"] {
            assert!(load(&[("RETRY_JITTER_MS", bad)]).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_are_validated() {
        assert!(load(&[("MAX_BODY_BYTES", "0")]).is_err());
        assert!(load(&[("MAX_HEADER_BYTES", "100")]).is_err());
        assert!(load(&[("RESUME_TTL_MS", "soon")]).is_err());
    }

    #[test]
    fn default_bindings_are_validated() {
        let (cfg, _) = load(&[("DEFAULT_BINDINGS", "broadcast, connection.{request_id}")]).unwrap();
        assert_eq!(cfg.default_bindings, vec!["broadcast", "connection.{request_id}"]);
        assert!(load(&[("DEFAULT_BINDINGS", "bad key")]).is_err());
    }

    #[test]
    fn rabbitmq_settings_follow_the_sseg_gateway_names() {
        let (cfg, _) = load(&[
            ("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            ("RABBITMQ_ENV_PREFIX", "test"),
            ("RABBITMQ_ENV_AUTO_DELETE", "true"),
            ("RABBITMQ_INSTANCE_ID", "gw1"),
        ])
        .unwrap();
        let amqp = cfg.amqp.unwrap();
        assert_eq!(amqp.exchange, "test.sse.events");
        assert_eq!(amqp.queue, "test.sse.events.gw.gw1");
        assert!(amqp.auto_delete);
        assert_eq!(cfg.resume_ttl, Duration::from_secs(300));
        let (cfg, _) = load(&[("RABBITMQ_URL", "amqp://x"), ("HOSTNAME", "node7")]).unwrap();
        let amqp = cfg.amqp.unwrap();
        assert_eq!(amqp.exchange, "sse.events");
        assert!(amqp.queue.starts_with("sse.events.gw.node7-"), "{}", amqp.queue);
        assert_eq!(amqp.queue, format!("sse.events.gw.{}", cfg.instance_id));
        let (cfg, _) =
            load(&[("RABBITMQ_URL", "amqp://x"), ("RABBITMQ_INSTANCE_ID", "old"), ("INSTANCE_ID", "new")]).unwrap();
        assert_eq!((cfg.instance_id.as_str(), cfg.amqp.unwrap().queue.as_str()), ("new", "sse.events.gw.new"));
        assert_eq!(load(&[("RABBITMQ_URL", "http://x")]).unwrap_err(), ConfigError::AmqpUrl);
        let (cfg, _) = load(&[("RABBITMQ_URL", "amqp://x"), ("RESUME_TTL_MS", "0")]).unwrap();
        assert_eq!(cfg.resume_ttl, Duration::ZERO);
    }
}
