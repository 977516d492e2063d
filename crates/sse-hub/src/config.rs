//! The hub's one configuration struct, read through an injectable lookup of
//! environment-variable names; clap lives only in the binary.
//!
//! [`SETTINGS`] is the one place each setting is named, defaulted and
//! described (the gateway's [`Setting`] type): [`HubConfig::from_lookup`]
//! applies a setting's default when the lookup has no value, and `main.rs`
//! builds the flags and `--help` from the same table. Settings the hub shares
//! with the backend toolkit (`SSE_GATEWAY_*`, `SSE_CALLBACK_SECRET`, `OIDC_*`,
//! `FRONTEND_VERSION_URL`, `TASK_*`, `GRACEFUL_SHUTDOWN_TIMEOUT`) are the
//! toolkit's constants, read by [`BackendConfig::from_lookup`]; the
//! `RABBITMQ_*` and `TLS_*` settings are the gateway's, read by
//! [`AmqpConfig::from_lookup`] and [`TlsConfig::from_lookup`]. Two toolkit settings have a different meaning
//! or default in the hub, stated in its table: `SSE_GATEWAY_URL` has no
//! default (unset: the gateway runs in-process) and `GRACEFUL_SHUTDOWN_TIMEOUT`
//! is 30 s (the toolkit's 600 s suits long tasks, not a demo server).
//!
//! [`NudgeConfig`] is the `rotation-nudge` client's configuration, read by
//! the same rules from [`NUDGE_SETTINGS`].

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use sse_backend::broadcaster::HttpBroadcasterConfig;
use sse_backend::callback::CallbackConfig;
use sse_backend::config::BackendConfig;
use sse_backend::identity::OidcConfig;
use sse_backend::tasks::TaskConfig;
use sse_backend::version::VersionConfig;
pub use sse_gateway::config::Setting;
use sse_gateway::{AmqpConfig, TlsConfig};

use crate::mqtt::{MqttConfig, parse_url};

/// The server's settings, one constant each.
pub mod settings {
    use sse_backend::config::settings as backend;
    use sse_gateway::config::settings as gateway;

    sse_gateway::settings_table! { SETTINGS:
        PORT = "PORT", "port", Some("8080"), "Listen port; 0 picks a free one (the address is printed on stdout)";
        HOST = "HOST", "host", Some("0.0.0.0"), "Listen address (an IP address)";
        SSE_HUB_DATA_DIR = "SSE_HUB_DATA_DIR", "data-dir", Some("./sse-hub-data"), "Data directory; the demo dnsmasq.conf (dhcp-leasefile=dnsmasq.leases) and dnsmasq.leases are created in it when absent";
        DNSMASQ_CONFIG_FILE_PATH = "DNSMASQ_CONFIG_FILE_PATH", "dnsmasq-config", None, "dnsmasq main configuration, its relative paths resolved against its own directory (unset: dnsmasq.conf in the data directory)";
        LEASE_POLL_SECONDS = "LEASE_POLL_SECONDS", "lease-poll-seconds", Some("30"), "Re-read the lease file this often even without a file event, seconds; 0: never";
        LEASE_SNAPSHOT_THRESHOLD = "LEASE_SNAPSHOT_THRESHOLD", "lease-snapshot-threshold", Some("100"), "A reload or expiry check that changes more than this many leases sends one leases_snapshot event (the whole list) instead of one event per change; 0: always a snapshot";
        INTERNAL_API_SECRET = "INTERNAL_API_SECRET", "internal-api-secret", None, "Bearer secret of the internal routes (/internal/*); unset: only loopback clients may call them";
        shared gateway::TLS_CERT_FILE;
        shared gateway::TLS_KEY_FILE;
        changed gateway::HEARTBEAT_INTERVAL_SECONDS, gateway::HEARTBEAT_INTERVAL_SECONDS.default, "Period of the in-process gateway's `: heartbeat` comment, seconds (at least 1)";
        changed gateway::HISTORY_SECONDS, Some("300"), "Resumable streams of the in-process gateway: events keep an id: and stay replayable this long, so a page that reconnects (network blip, hub restart with RabbitMQ) misses nothing or is told (event: gap); 0 = off";
        changed gateway::STREAM_QUEUE_BYTES, Some("16777216"), "Bytes that may wait for one slow client of the in-process gateway before its stream is closed (a leases_snapshot of a large lease file must fit: about 250 bytes a lease)";
        changed backend::SSE_GATEWAY_URL, None, "Use an external gateway at this URL instead of the in-process one: the hub then serves POST /api/sse/callback and sends over HTTP";
        shared backend::SSE_GATEWAY_SECRET;
        shared backend::SSE_GATEWAY_PUBLISH;
        shared backend::SSE_CALLBACK_SECRET;
        shared gateway::RABBITMQ_URL;
        shared gateway::RABBITMQ_ENV_PREFIX;
        shared gateway::RABBITMQ_ENV_AUTO_DELETE;
        shared gateway::RABBITMQ_QUEUE_TTL_MS;
        shared gateway::RABBITMQ_INSTANCE_ID;
        shared backend::FRONTEND_VERSION_URL;
        FRONTEND_VERSION_FILE = "FRONTEND_VERSION_FILE", "frontend-version-file", None, "A local version document served at /version.json and used as the version URL (re-read on every request); not with FRONTEND_VERSION_URL";
        shared backend::TASK_MAX_WORKERS;
        shared backend::TASK_TIMEOUT_SECONDS;
        shared backend::TASK_CLEANUP_INTERVAL_SECONDS;
        changed backend::GRACEFUL_SHUTDOWN_TIMEOUT, Some("30"), "Seconds a shutdown waits for the running tasks (the hub cancels them) to send their last events";
        MQTT_URL = "MQTT_URL", "mqtt-url", None, "MQTT broker for device logs, mqtt://host:port (port 1883 when omitted); unset: HTTP ingest only";
        MQTT_TOPIC = "MQTT_TOPIC", "mqtt-topic", Some("iotsupport/logsink"), "Topic of the NDJSON log messages";
        MQTT_CLIENT_ID = "MQTT_CLIENT_ID", "mqtt-client-id", None, "MQTT client id (unset: the username, else sse-hub)";
        MQTT_USERNAME = "MQTT_USERNAME", "mqtt-username", None, "MQTT username";
        MQTT_PASSWORD = "MQTT_PASSWORD", "mqtt-password", None, "MQTT password";
        shared backend::OIDC_ENABLED;
        shared backend::OIDC_ISSUER_URL;
        shared backend::OIDC_AUDIENCE;
        shared backend::OIDC_CLIENT_ID;
        shared backend::OIDC_JWKS_URL;
        shared backend::OIDC_JWKS_FILE;
        shared backend::OIDC_COOKIE_NAME;
        shared backend::OIDC_CLOCK_SKEW_SECONDS;
        shared backend::OIDC_ROLE_CLAIM;
    }
}

/// The `rotation-nudge` client's settings, one constant each.
pub mod nudge_settings {
    use super::settings as hub;

    sse_gateway::settings_table! { NUDGE_SETTINGS:
        INTERNAL_API_URL = "INTERNAL_API_URL", "url", None, "Base URL of the hub, e.g. http://127.0.0.1:8080 (required)";
        shared hub::INTERNAL_API_SECRET;
        INTERNAL_API_TIMEOUT_SECONDS = "INTERNAL_API_TIMEOUT_SECONDS", "timeout-seconds", Some("5"), "Request timeout in seconds";
    }
}

use nudge_settings as n;
use settings as s;

pub use nudge_settings::NUDGE_SETTINGS;
pub use settings::SETTINGS;

/// The hub's configuration.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// `PORT` (0: a free one).
    pub port: u16,
    /// `HOST`.
    pub host: IpAddr,
    /// `SSE_HUB_DATA_DIR`: where the demo data is created.
    pub data_dir: PathBuf,
    /// `DNSMASQ_CONFIG_FILE_PATH`; `None`: the demo data in `data_dir`.
    pub dnsmasq_config: Option<PathBuf>,
    /// `LEASE_POLL_SECONDS` (0: never poll).
    pub lease_poll_seconds: u64,
    /// `LEASE_SNAPSHOT_THRESHOLD`: more changes than this at once are sent as one snapshot.
    pub lease_snapshot_threshold: usize,
    /// `INTERNAL_API_SECRET`; `None`: internal routes are loopback-only.
    pub internal_api_secret: Option<String>,
    /// `HEARTBEAT_INTERVAL_SECONDS` of the in-process gateway (at least 1).
    pub heartbeat_interval_seconds: u64,
    /// `HISTORY_SECONDS` of the in-process gateway (0: off).
    pub history_seconds: u64,
    /// `STREAM_QUEUE_BYTES` of the in-process gateway (at least 1).
    pub stream_queue_bytes: usize,
    /// `SSE_GATEWAY_URL` (with `SSE_GATEWAY_SECRET`, `SSE_GATEWAY_PUBLISH`):
    /// an external gateway; `None`: the gateway runs in-process.
    pub external_gateway: Option<HttpBroadcasterConfig>,
    /// `SSE_CALLBACK_SECRET`, and the answer mode `SSE_GATEWAY_PUBLISH` implies.
    pub callback: CallbackConfig,
    /// `RABBITMQ_*`: the in-process gateway's AMQP ingress; `None` without `RABBITMQ_URL`.
    pub amqp: Option<AmqpConfig>,
    /// `TLS_CERT_FILE` and `TLS_KEY_FILE`, loaded: the listener serves HTTPS
    /// (HTTP/2 and HTTP/1.1); `None`: plain HTTP.
    pub tls: Option<TlsConfig>,
    /// `FRONTEND_VERSION_URL` (see [`HubConfig::version`] for the file).
    pub version: VersionConfig,
    /// `FRONTEND_VERSION_FILE`, served at `/version.json`.
    pub frontend_version_file: Option<PathBuf>,
    /// `TASK_*`.
    pub tasks: TaskConfig,
    /// `GRACEFUL_SHUTDOWN_TIMEOUT`.
    pub graceful_shutdown_timeout: Duration,
    /// `MQTT_*`; `None` without `MQTT_URL`.
    pub mqtt: Option<MqttConfig>,
    /// `OIDC_*`; `None` unless `OIDC_ENABLED` is true.
    pub oidc: Option<OidcConfig>,
}

/// The `rotation-nudge` client's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NudgeConfig {
    /// `INTERNAL_API_URL`: the hub's base URL, without a trailing `/`.
    pub url: String,
    /// `INTERNAL_API_SECRET`, sent as a bearer token when set.
    pub secret: Option<String>,
    /// `INTERNAL_API_TIMEOUT_SECONDS`.
    pub timeout: Duration,
}

/// A setting that cannot be used; the hub refuses to start.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HubConfigError {
    /// Not a valid value for the variable.
    #[error("invalid {name} {value:?}: expected {expected}")]
    Invalid {
        /// The variable's name.
        name: &'static str,
        /// The value given.
        value: String,
        /// What is accepted.
        expected: &'static str,
    },
    /// Two settings that exclude each other are both set.
    #[error("{first} and {second} cannot both be set")]
    Conflict {
        /// One variable.
        first: &'static str,
        /// The other.
        second: &'static str,
    },
    /// A required setting is unset.
    #[error("{name} (--{flag}) is required")]
    Missing {
        /// The variable's name.
        name: &'static str,
        /// Its flag.
        flag: &'static str,
    },
    /// A setting shared with the toolkit (`OIDC_*`, `TASK_*`, ...).
    #[error(transparent)]
    Backend(#[from] sse_backend::config::ConfigError),
    /// A setting read by the gateway's rules (`RABBITMQ_*`).
    #[error(transparent)]
    Gateway(#[from] sse_gateway::ConfigError),
}

/// Reads settings through a lookup, applying each setting's default.
struct Reader<'a, L> {
    lookup: &'a L,
}

impl<L: Fn(&str) -> Option<String>> Reader<'_, L> {
    fn text(&self, s: Setting) -> Option<String> {
        s.value(self.lookup).map(|v| v.trim().to_owned())
    }

    /// A setting with a table default: always a value.
    fn defaulted(&self, s: Setting) -> Result<String, HubConfigError> {
        self.text(s).ok_or(HubConfigError::Missing { name: s.env, flag: s.flag })
    }

    fn parse<T: std::str::FromStr>(&self, s: Setting, expected: &'static str) -> Result<T, HubConfigError> {
        let v = self.defaulted(s)?;
        v.parse().map_err(|_| HubConfigError::Invalid { name: s.env, value: v, expected })
    }

    /// An integer `min` and above.
    fn number(&self, s: Setting, min: u64, expected: &'static str) -> Result<u64, HubConfigError> {
        let v = self.defaulted(s)?;
        match v.parse::<u64>() {
            Ok(n) if n >= min => Ok(n),
            _ => Err(HubConfigError::Invalid { name: s.env, value: v, expected }),
        }
    }
}

impl Default for HubConfig {
    /// The documented defaults ([`SETTINGS`]).
    fn default() -> Self {
        match HubConfig::from_lookup(|_| None) {
            Ok(config) => config,
            // The defaults table is constant and covered by a unit test.
            Err(e) => unreachable!("the default settings are invalid: {e}"),
        }
    }
}

impl HubConfig {
    /// Builds the configuration from a lookup of environment-variable names
    /// (in the binary: a flag, else its variable, for the table's names; the
    /// environment for `HOSTNAME`, the default RabbitMQ instance id).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<HubConfig, HubConfigError> {
        let r = Reader { lookup: &lookup };
        // The toolkit reads exactly the hub's table, with the hub's defaults.
        let table = |key: &str| SETTINGS.iter().find(|s| s.env == key).and_then(|s| s.value(&lookup));
        let backend = BackendConfig::from_lookup(table)?;

        let frontend_version_file = r.text(s::FRONTEND_VERSION_FILE).map(PathBuf::from);
        if backend.version.version_url.is_some() && frontend_version_file.is_some() {
            return Err(HubConfigError::Conflict {
                first: s::FRONTEND_VERSION_URL.env,
                second: s::FRONTEND_VERSION_FILE.env,
            });
        }
        let tls = TlsConfig::from_lookup(&lookup)?;
        if tls.is_some() {
            // The in-process gateway serves HTTPS; an external one would
            // need its own TLS, and the version file is fetched from the
            // hub's own URL by a client built without TLS.
            for other in [s::SSE_GATEWAY_URL, s::FRONTEND_VERSION_FILE] {
                if r.text(other).is_some() {
                    return Err(HubConfigError::Conflict { first: s::TLS_CERT_FILE.env, second: other.env });
                }
            }
        }
        let mqtt = match r.text(s::MQTT_URL) {
            None => None,
            Some(url) => {
                if parse_url(&url).is_err() {
                    return Err(HubConfigError::Invalid {
                        name: s::MQTT_URL.env,
                        value: url,
                        expected: "mqtt://host[:port] (mqtts:// needs a TLS build, not this one)",
                    });
                }
                let username = r.text(s::MQTT_USERNAME);
                Some(MqttConfig {
                    url,
                    topic: r.defaulted(s::MQTT_TOPIC)?,
                    client_id: r
                        .text(s::MQTT_CLIENT_ID)
                        .or_else(|| username.clone())
                        .unwrap_or_else(|| "sse-hub".to_owned()),
                    username,
                    password: r.text(s::MQTT_PASSWORD),
                })
            }
        };
        Ok(HubConfig {
            port: r.parse(s::PORT, "a port number 0-65535 (0: a free one)")?,
            host: r.parse(s::HOST, "an IP address, e.g. 0.0.0.0 or 127.0.0.1")?,
            data_dir: PathBuf::from(r.defaulted(s::SSE_HUB_DATA_DIR)?),
            dnsmasq_config: r.text(s::DNSMASQ_CONFIG_FILE_PATH).map(PathBuf::from),
            lease_poll_seconds: r.number(s::LEASE_POLL_SECONDS, 0, "a number of seconds (0: never)")?,
            lease_snapshot_threshold: usize::try_from(r.number(
                s::LEASE_SNAPSHOT_THRESHOLD,
                0,
                "a number of leases (0: always a snapshot)",
            )?)
            .unwrap_or(usize::MAX),
            internal_api_secret: r.text(s::INTERNAL_API_SECRET),
            heartbeat_interval_seconds: r.number(s::HEARTBEAT_INTERVAL_SECONDS, 1, "a number of seconds >= 1")?,
            history_seconds: r.number(s::HISTORY_SECONDS, 0, "a number of seconds (0: off)")?,
            stream_queue_bytes: usize::try_from(r.number(s::STREAM_QUEUE_BYTES, 1, "a number of bytes >= 1")?)
                .unwrap_or(usize::MAX),
            external_gateway: r.text(s::SSE_GATEWAY_URL).map(|_| backend.gateway),
            callback: backend.callback,
            amqp: AmqpConfig::from_lookup(&lookup)?,
            tls,
            version: backend.version,
            frontend_version_file,
            tasks: backend.tasks,
            graceful_shutdown_timeout: backend.graceful_shutdown_timeout,
            mqtt,
            oidc: backend.oidc,
        })
    }

    /// The dnsmasq configuration path.
    pub fn dnsmasq_config_path(&self) -> PathBuf {
        self.dnsmasq_config.clone().unwrap_or_else(|| self.data_dir.join("dnsmasq.conf"))
    }

    /// Version settings for a hub whose own address is `self_url` (used
    /// when the version comes from a file served at `/version.json`).
    pub fn version(&self, self_url: &str) -> VersionConfig {
        let mut version = self.version.clone();
        // A page resumes within the in-process gateway's history window.
        version.resume_window = std::time::Duration::from_secs(self.history_seconds);
        if version.version_url.is_none() && self.frontend_version_file.is_some() {
            version.version_url = Some(format!("{self_url}/version.json"));
        }
        version
    }
}

impl NudgeConfig {
    /// The `rotation-nudge` settings ([`NUDGE_SETTINGS`]) through a lookup.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<NudgeConfig, HubConfigError> {
        let r = Reader { lookup: &lookup };
        Ok(NudgeConfig {
            url: r.defaulted(n::INTERNAL_API_URL)?.trim_end_matches('/').to_owned(),
            secret: r.text(n::INTERNAL_API_SECRET),
            timeout: Duration::from_secs(r.number(n::INTERNAL_API_TIMEOUT_SECONDS, 1, "a number of seconds >= 1")?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sse_backend::identity::JwksSource;
    use std::collections::HashMap;

    fn load(env: &[(&str, &str)]) -> Result<HubConfig, HubConfigError> {
        let map: HashMap<String, String> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        HubConfig::from_lookup(|k| map.get(k).cloned())
    }

    /// The toolkit's config types do not implement `PartialEq`; their
    /// `Debug` output shows every field.
    fn same(a: &HubConfig, b: &HubConfig) -> bool {
        format!("{a:?}") == format!("{b:?}")
    }

    #[test]
    fn defaults_are_the_documented_interface() {
        let cfg = load(&[]).unwrap();
        assert!(same(&cfg, &HubConfig::default()));
        assert_eq!((cfg.host.to_string(), cfg.port), ("0.0.0.0".to_owned(), 8080));
        assert_eq!(cfg.data_dir, PathBuf::from("./sse-hub-data"));
        assert_eq!(cfg.dnsmasq_config_path(), PathBuf::from("./sse-hub-data/dnsmasq.conf"));
        assert_eq!((cfg.lease_poll_seconds, cfg.heartbeat_interval_seconds), (30, 15));
        assert_eq!((cfg.lease_snapshot_threshold, cfg.stream_queue_bytes), (100, 16 << 20));
        assert_eq!(cfg.graceful_shutdown_timeout, Duration::from_secs(30), "the hub's own default, not the toolkit's");
        assert_eq!(
            (cfg.tasks.max_workers, cfg.tasks.timeout.as_secs(), cfg.tasks.cleanup_interval.as_secs()),
            (4, 300, 600)
        );
        assert!(cfg.external_gateway.is_none(), "no SSE_GATEWAY_URL: the gateway runs in-process");
        assert!(cfg.amqp.is_none() && cfg.mqtt.is_none() && cfg.oidc.is_none() && cfg.callback.secret.is_none());
        assert!(cfg.version("http://h:1").version_url.is_none());
    }

    #[test]
    fn every_default_in_the_table_is_the_value_used() {
        // A setting's documented default, given explicitly, changes nothing.
        let default = HubConfig::default();
        for setting in SETTINGS.iter().filter(|s| s.default.is_some()) {
            let cfg = load(&[(setting.env, setting.default.unwrap())]).unwrap();
            assert!(same(&cfg, &default), "{}", setting.env);
        }
    }

    #[test]
    fn settings_have_unique_names_and_flags() {
        for table in [SETTINGS, NUDGE_SETTINGS] {
            let mut envs: Vec<_> = table.iter().map(|s| s.env).collect();
            let mut flags: Vec<_> = table.iter().map(|s| s.flag).collect();
            envs.sort_unstable();
            envs.dedup();
            flags.sort_unstable();
            flags.dedup();
            assert_eq!((envs.len(), flags.len()), (table.len(), table.len()));
        }
    }

    #[test]
    fn hub_defaults_that_differ_from_the_toolkit_are_stated_in_the_table() {
        use sse_backend::config::settings as backend;
        assert_eq!(s::GRACEFUL_SHUTDOWN_TIMEOUT.default, Some("30"));
        assert_eq!(backend::GRACEFUL_SHUTDOWN_TIMEOUT.default, Some("600"));
        assert_eq!(s::SSE_GATEWAY_URL.default, None);
        assert_eq!(s::STREAM_QUEUE_BYTES.default, Some("16777216"), "lease snapshots must fit");
        // Everything else shared keeps the toolkit's or the gateway's entry.
        let shared = [backend::SETTINGS, sse_gateway::SETTINGS].concat();
        for setting in SETTINGS {
            if let Some(other) = shared.iter().find(|o| o.env == setting.env) {
                assert_eq!(setting.flag, other.flag, "{}", setting.env);
            }
        }
    }

    #[test]
    fn frontend_version_url_and_file_conflict() {
        let err = load(&[("FRONTEND_VERSION_URL", "http://f/v.json"), ("FRONTEND_VERSION_FILE", "/v.json")]);
        assert_eq!(
            err.unwrap_err(),
            HubConfigError::Conflict { first: "FRONTEND_VERSION_URL", second: "FRONTEND_VERSION_FILE" }
        );
        let cfg = load(&[("FRONTEND_VERSION_FILE", "/v.json")]).unwrap();
        assert_eq!(cfg.version("http://h:1").version_url.as_deref(), Some("http://h:1/version.json"));
        let cfg = load(&[("FRONTEND_VERSION_URL", "http://f/v.json")]).unwrap();
        assert_eq!(cfg.version("http://h:1").version_url.as_deref(), Some("http://f/v.json"));
    }

    #[test]
    fn invalid_values_are_typed_errors_naming_the_variable() {
        let cases: &[(&str, &str)] = &[
            ("PORT", "notaport"),
            ("PORT", "65536"),
            ("HOST", "localhost:1"),
            ("LEASE_POLL_SECONDS", "-1"),
            ("LEASE_SNAPSHOT_THRESHOLD", "many"),
            ("STREAM_QUEUE_BYTES", "0"),
            ("HEARTBEAT_INTERVAL_SECONDS", "0"),
            ("MQTT_URL", "mqtts://broker"),
            ("TASK_TIMEOUT_SECONDS", "soon"),
            ("GRACEFUL_SHUTDOWN_TIMEOUT", "x"),
            ("OIDC_ENABLED", "maybe"),
            ("SSE_GATEWAY_PUBLISH", "perhaps"),
            ("RABBITMQ_URL", "http://broker"),
            ("RABBITMQ_QUEUE_TTL_MS", "0"),
        ];
        for (name, value) in cases {
            let mut env = vec![(*name, *value)];
            if name.starts_with("RABBITMQ_") && *name != "RABBITMQ_URL" {
                env.push(("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"));
            }
            let err = load(&env).unwrap_err();
            assert!(err.to_string().contains(name), "{name}={value}: {err}");
        }
        assert_eq!(
            load(&[("PORT", "notaport")]).unwrap_err(),
            HubConfigError::Invalid {
                name: "PORT",
                value: "notaport".into(),
                expected: "a port number 0-65535 (0: a free one)"
            }
        );
        assert!(matches!(load(&[("OIDC_ENABLED", "true")]), Err(HubConfigError::Backend(_))));
        assert!(matches!(load(&[("RABBITMQ_URL", "http://x")]), Err(HubConfigError::Gateway(_))));
    }

    #[test]
    fn shared_settings_follow_the_toolkit_rules() {
        let cfg = load(&[
            ("OIDC_ENABLED", "true"),
            ("OIDC_ISSUER_URL", "https://i"),
            ("OIDC_AUDIENCE", "a"),
            ("OIDC_JWKS_FILE", "/k"),
            ("SSE_GATEWAY_URL", "http://gw:3001"),
            ("SSE_GATEWAY_SECRET", "gs"),
            ("SSE_GATEWAY_PUBLISH", "true"),
            ("SSE_CALLBACK_SECRET", "cs"),
            ("TASK_MAX_WORKERS", "2"),
        ])
        .unwrap();
        assert!(matches!(cfg.oidc.unwrap().jwks, JwksSource::File(_)));
        let gw = cfg.external_gateway.unwrap();
        assert_eq!((gw.gateway_url.as_str(), gw.secret.as_deref(), gw.publish), ("http://gw:3001", Some("gs"), true));
        assert_eq!(cfg.callback.secret.as_deref(), Some("cs"));
        assert_eq!(cfg.callback.answer, sse_backend::callback::AnswerMode::Routing);
        assert_eq!(cfg.tasks.max_workers, 2);
        // Toolkit settings that are not in the hub's table are not read.
        let cfg = load(&[("FLASK_ENV", "production"), ("GRACEFUL_SHUTDOWN_TIMEOUT", "7")]).unwrap();
        assert!(cfg.callback.secret.is_none());
        assert_eq!(cfg.graceful_shutdown_timeout, Duration::from_secs(7));
    }

    #[test]
    fn rabbitmq_and_mqtt_settings_are_typed() {
        let cfg = load(&[
            ("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            ("RABBITMQ_ENV_PREFIX", "t"),
            ("RABBITMQ_ENV_AUTO_DELETE", "true"),
            ("RABBITMQ_INSTANCE_ID", "hub1"),
            ("MQTT_URL", "mqtt://127.0.0.1:1883"),
            ("MQTT_USERNAME", "dev"),
        ])
        .unwrap();
        let amqp = cfg.amqp.unwrap();
        assert_eq!((amqp.exchange.as_str(), amqp.queue.as_str()), ("t.sse.events", "t.sse.events.gw.hub1"));
        assert!(amqp.auto_delete);
        assert_eq!(amqp.queue_ttl, Duration::from_millis(300_000));
        let mqtt = cfg.mqtt.unwrap();
        assert_eq!((mqtt.topic.as_str(), mqtt.client_id.as_str()), ("iotsupport/logsink", "dev"));
        let mqtt = load(&[("MQTT_URL", "mqtt://b")]).unwrap().mqtt.unwrap();
        assert_eq!(mqtt.client_id, "sse-hub");
    }

    #[test]
    fn nudge_settings() {
        let map = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| pairs.iter().find(|(key, _)| *key == k).map(|(_, v)| (*v).to_owned())
        };
        let cfg = NudgeConfig::from_lookup(map(&[("INTERNAL_API_URL", "http://h:1/"), ("INTERNAL_API_SECRET", "s")]));
        assert_eq!(
            cfg.unwrap(),
            NudgeConfig { url: "http://h:1".into(), secret: Some("s".into()), timeout: Duration::from_secs(5) }
        );
        assert_eq!(
            NudgeConfig::from_lookup(map(&[])).unwrap_err(),
            HubConfigError::Missing { name: "INTERNAL_API_URL", flag: "url" }
        );
        let err =
            NudgeConfig::from_lookup(map(&[("INTERNAL_API_URL", "http://h"), ("INTERNAL_API_TIMEOUT_SECONDS", "0")]));
        assert!(err.unwrap_err().to_string().contains("INTERNAL_API_TIMEOUT_SECONDS"));
    }
}
