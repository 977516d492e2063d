//! The hub's one configuration struct: every option is a flag with an
//! environment variable (a flag wins), documented by `sse-hub --help`.
//! [`HubConfig`] is parsed by clap in `main.rs`; tests build it with
//! [`HubConfig::parse_from`]-style argument lists, never through the
//! process environment. [`HubConfig::backend`] turns it into the toolkit's
//! typed settings.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sse_backend::identity::{JwksSource, OidcConfig};
use sse_backend::tasks::TaskConfig;
use sse_backend::version::VersionConfig;

/// `sse-hub`: the SSE gateway in-process with the backend toolkit, DHCP
/// leases, tasks, version notices, device logs and rotation nudges, and a
/// live dashboard at `/`.
///
/// With no configuration it listens on port 8080 and creates a demo data
/// directory (`./sse-hub-data`: `dnsmasq.conf` and `dnsmasq.leases`; edit the
/// lease file and watch the dashboard). MQTT, OIDC, an external gateway are
/// switched on by the options below.
#[derive(Debug, Clone, Parser)]
#[command(name = "sse-hub", version, about, long_about)]
pub struct Cli {
    /// Server options.
    #[command(flatten)]
    pub hub: HubConfig,
    /// A subcommand instead of the server.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Play the rotation cron job's role: POST {URL}/internal/rotation-nudge
    /// (with `Authorization: Bearer $INTERNAL_API_SECRET` when set); exits 1
    /// when the hub did not answer 200.
    RotationNudge(NudgeArgs),
}

/// `rotation-nudge` options.
#[derive(Debug, Clone, Args)]
pub struct NudgeArgs {
    /// Base URL of the hub, e.g. http://127.0.0.1:8080.
    #[arg(long, env = "INTERNAL_API_URL")]
    pub url: String,
    /// Request timeout in seconds.
    #[arg(long, default_value_t = 5)]
    pub timeout_seconds: u64,
}

/// Server settings.
#[derive(Debug, Clone, Args)]
pub struct HubConfig {
    /// Listen port (0 picks a free one; the address is printed on stdout).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Listen address.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// Data directory; the demo `dnsmasq.conf` (with `dhcp-leasefile=dnsmasq.leases`)
    /// and `dnsmasq.leases` are created in it when absent.
    #[arg(long, env = "SSE_HUB_DATA_DIR", default_value = "./sse-hub-data")]
    pub data_dir: PathBuf,
    /// dnsmasq main configuration (default: `<data-dir>/dnsmasq.conf`); its
    /// relative paths are resolved against its own directory.
    #[arg(long, env = "DNSMASQ_CONFIG_FILE_PATH")]
    pub dnsmasq_config: Option<PathBuf>,
    /// Re-read the lease file this often even without a file event (0: never).
    #[arg(long, env = "LEASE_POLL_SECONDS", default_value_t = 30)]
    pub lease_poll_seconds: u64,
    /// Bearer secret of the internal routes (`/internal/*`); unset: only
    /// loopback clients may call them.
    #[arg(long, env = "INTERNAL_API_SECRET")]
    pub internal_api_secret: Option<String>,
    /// Heartbeat comment period of the in-process gateway.
    #[arg(long, env = "HEARTBEAT_INTERVAL_SECONDS", default_value_t = 15)]
    pub heartbeat_interval_seconds: u64,
    /// Use an external gateway at this URL instead of the in-process one: the
    /// hub then serves `POST /api/sse/callback` and sends over HTTP.
    #[arg(long, env = "SSE_GATEWAY_URL")]
    pub sse_gateway_url: Option<String>,
    /// Bearer secret for the external gateway's internal API.
    #[arg(long, env = "SSE_GATEWAY_SECRET")]
    pub sse_gateway_secret: Option<String>,
    /// Publish broadcasts by routing key on the external gateway (`/internal/publish`).
    #[arg(long, env = "SSE_GATEWAY_PUBLISH")]
    pub sse_gateway_publish: bool,
    /// Required `secret` query parameter of `/api/sse/callback` (external gateway mode).
    #[arg(long, env = "SSE_CALLBACK_SECRET")]
    pub sse_callback_secret: Option<String>,
    /// RabbitMQ URL: the in-process gateway also consumes events that backends
    /// publish to the `sse.events` topic exchange (scale-out ingress).
    #[arg(long, env = "RABBITMQ_URL")]
    pub rabbitmq_url: Option<String>,
    /// Exchange prefix: `<prefix>.sse.events`.
    #[arg(long, env = "RABBITMQ_ENV_PREFIX")]
    pub rabbitmq_env_prefix: Option<String>,
    /// Declare the exchange auto-delete and non-durable (test environments).
    #[arg(long, env = "RABBITMQ_ENV_AUTO_DELETE")]
    pub rabbitmq_env_auto_delete: Option<String>,
    /// How long events for a request_id whose client dropped are held for its return, ms.
    #[arg(long, env = "RABBITMQ_QUEUE_TTL_MS")]
    pub rabbitmq_queue_ttl_ms: Option<String>,
    /// Frontend version document (`{"version": ...}`) sent on connect.
    #[arg(long, env = "FRONTEND_VERSION_URL", conflicts_with = "frontend_version_file")]
    pub frontend_version_url: Option<String>,
    /// A local version document served at `/version.json` and used as the
    /// version URL (re-read on every request).
    #[arg(long, env = "FRONTEND_VERSION_FILE")]
    pub frontend_version_file: Option<PathBuf>,
    /// Tasks running at once.
    #[arg(long, env = "TASK_MAX_WORKERS", default_value_t = 4)]
    pub task_max_workers: usize,
    /// A running task is cancelled and failed after this many seconds.
    #[arg(long, env = "TASK_TIMEOUT_SECONDS", default_value_t = 300)]
    pub task_timeout_seconds: u64,
    /// Finished tasks are forgotten this long after they ended.
    #[arg(long, env = "TASK_CLEANUP_INTERVAL_SECONDS", default_value_t = 600)]
    pub task_cleanup_interval_seconds: u64,
    /// Seconds the shutdown waits for running tasks.
    #[arg(long, env = "GRACEFUL_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub graceful_shutdown_timeout: u64,
    /// MQTT broker for device logs, `mqtt://host[:port]`; unset: HTTP ingest only.
    #[arg(long, env = "MQTT_URL")]
    pub mqtt_url: Option<String>,
    /// Topic of the NDJSON log messages.
    #[arg(long, env = "MQTT_TOPIC", default_value = "iotsupport/logsink")]
    pub mqtt_topic: String,
    /// MQTT client id (default: the username, else `sse-hub`).
    #[arg(long, env = "MQTT_CLIENT_ID")]
    pub mqtt_client_id: Option<String>,
    /// MQTT username.
    #[arg(long, env = "MQTT_USERNAME")]
    pub mqtt_username: Option<String>,
    /// MQTT password.
    #[arg(long, env = "MQTT_PASSWORD")]
    pub mqtt_password: Option<String>,
    /// Bind identities from JWTs (bearer header, then cookie); off: every
    /// stream is `local-user`.
    #[arg(long, env = "OIDC_ENABLED")]
    pub oidc_enabled: bool,
    /// Expected issuer (required with OIDC).
    #[arg(long, env = "OIDC_ISSUER_URL")]
    pub oidc_issuer_url: Option<String>,
    /// Expected audience (required with OIDC).
    #[arg(long, env = "OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// JWKS URL (else `--oidc-jwks-file`, else the issuer's discovery document).
    #[arg(long, env = "OIDC_JWKS_URL")]
    pub oidc_jwks_url: Option<String>,
    /// JWKS file.
    #[arg(long, env = "OIDC_JWKS_FILE")]
    pub oidc_jwks_file: Option<PathBuf>,
    /// Cookie holding the token.
    #[arg(long, env = "OIDC_COOKIE_NAME", default_value = "access_token")]
    pub oidc_cookie_name: String,
    /// Leeway for exp/nbf, seconds.
    #[arg(long, env = "OIDC_CLOCK_SKEW_SECONDS", default_value_t = 30)]
    pub oidc_clock_skew_seconds: u64,
}

/// A setting combination that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubConfigError {
    /// OIDC on without issuer or audience.
    #[error("--oidc-issuer-url and --oidc-audience are required when OIDC is enabled")]
    OidcIncomplete,
}

impl HubConfig {
    /// The dnsmasq configuration path.
    pub fn dnsmasq_config_path(&self) -> PathBuf {
        self.dnsmasq_config.clone().unwrap_or_else(|| self.data_dir.join("dnsmasq.conf"))
    }

    /// OIDC settings, if enabled.
    pub fn oidc(&self) -> Result<Option<OidcConfig>, HubConfigError> {
        if !self.oidc_enabled {
            return Ok(None);
        }
        let (Some(issuer), Some(audience)) = (&self.oidc_issuer_url, &self.oidc_audience) else {
            return Err(HubConfigError::OidcIncomplete);
        };
        let mut o = OidcConfig::new(issuer.clone(), audience.clone());
        o.cookie_name = self.oidc_cookie_name.clone();
        o.clock_skew = Duration::from_secs(self.oidc_clock_skew_seconds);
        o.jwks = match (&self.oidc_jwks_url, &self.oidc_jwks_file) {
            (Some(u), _) => JwksSource::Url(u.clone()),
            (None, Some(f)) => JwksSource::File(f.clone()),
            (None, None) => JwksSource::Discovery,
        };
        Ok(Some(o))
    }

    /// Task runner settings.
    pub fn tasks(&self) -> TaskConfig {
        TaskConfig {
            max_workers: self.task_max_workers.max(1),
            timeout: Duration::from_secs(self.task_timeout_seconds.max(1)),
            cleanup_interval: Duration::from_secs(self.task_cleanup_interval_seconds.max(1)),
        }
    }

    /// Version settings for a hub whose own address is `self_url` (used
    /// when the version comes from a file served at `/version.json`).
    pub fn version(&self, self_url: &str) -> VersionConfig {
        let version_url = match (&self.frontend_version_url, &self.frontend_version_file) {
            (Some(u), _) => Some(u.clone()),
            (None, Some(_)) => Some(format!("{self_url}/version.json")),
            (None, None) => None,
        };
        VersionConfig { version_url, ..VersionConfig::default() }
    }

    /// MQTT client id: the configured one, else the username, else `sse-hub`.
    pub fn mqtt_client_id(&self) -> String {
        self.mqtt_client_id.clone().or_else(|| self.mqtt_username.clone()).unwrap_or_else(|| "sse-hub".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_interface() {
        let cli = Cli::try_parse_from(["sse-hub"]).unwrap();
        assert_eq!(cli.hub.port, 8080);
        assert_eq!(cli.hub.data_dir, PathBuf::from("./sse-hub-data"));
        assert_eq!(cli.hub.dnsmasq_config_path(), PathBuf::from("./sse-hub-data/dnsmasq.conf"));
        assert_eq!(cli.hub.mqtt_topic, "iotsupport/logsink");
        assert_eq!(cli.hub.mqtt_client_id(), "sse-hub");
        assert!(cli.hub.oidc().unwrap().is_none());
        assert!(cli.command.is_none());
    }

    #[test]
    fn subcommand_and_oidc_validation() {
        let cli = Cli::try_parse_from(["sse-hub", "rotation-nudge", "--url", "http://h:1"]).unwrap();
        assert!(matches!(cli.command, Some(Command::RotationNudge(a)) if a.url == "http://h:1"));
        let cli = Cli::try_parse_from(["sse-hub", "--oidc-enabled"]).unwrap();
        assert_eq!(cli.hub.oidc().err(), Some(HubConfigError::OidcIncomplete));
        let cli = Cli::try_parse_from([
            "sse-hub",
            "--oidc-enabled",
            "--oidc-issuer-url",
            "https://i",
            "--oidc-audience",
            "a",
            "--oidc-jwks-file",
            "/k",
        ])
        .unwrap();
        assert!(matches!(cli.hub.oidc().unwrap().unwrap().jwks, JwksSource::File(_)));
    }
}
