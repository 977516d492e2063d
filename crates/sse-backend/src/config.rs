//! The toolkit's settings as one typed struct, and the only place that reads
//! configuration: [`BackendConfig::from_lookup`] takes a lookup function (the
//! variable names of the original backends, listed in docs/BACKEND.md,
//! Configuration), so tests never touch the process environment.
//!
//! [`SETTINGS`] is the one place each setting is named, defaulted and
//! described (the gateway's [`Setting`] type): `from_lookup` applies a
//! setting's default when the lookup has no value, and a binary built on the
//! toolkit (the hub) puts the same constants in its own table, so its flags
//! and `--help` state the same names and defaults.

use std::str::FromStr;
use std::time::Duration;

pub use sse_gateway::config::Setting;

use crate::broadcaster::HttpBroadcasterConfig;
use crate::callback::{AnswerMode, CallbackConfig};
use crate::identity::{JwksSource, OidcConfig};
use crate::tasks::TaskConfig;
use crate::version::VersionConfig;

/// The toolkit's settings, one constant each.
pub mod settings {
    sse_gateway::settings_table! { SETTINGS:
        SSE_GATEWAY_URL = "SSE_GATEWAY_URL", "sse-gateway-url", Some("http://localhost:3002"), "Base URL of the gateway's internal API (/internal/send, /internal/publish)";
        SSE_GATEWAY_SECRET = "SSE_GATEWAY_SECRET", "sse-gateway-secret", None, "Bearer secret for the gateway's internal API";
        SSE_GATEWAY_PUBLISH = "SSE_GATEWAY_PUBLISH", "sse-gateway-publish", Some("false"), "true: publish broadcasts by routing key (/internal/publish), and connect answers list bindings";
        SSE_CALLBACK_SECRET = "SSE_CALLBACK_SECRET", "sse-callback-secret", None, "Required `secret` query parameter of the callback (unset: not checked)";
        FLASK_ENV = "FLASK_ENV", "flask-env", None, "production: the callback secret is always checked (an unset SSE_CALLBACK_SECRET is the empty secret)";
        OIDC_ENABLED = "OIDC_ENABLED", "oidc-enabled", Some("false"), "true: bind identities from JWTs (bearer header, then cookie); false: every stream is local-user";
        OIDC_ISSUER_URL = "OIDC_ISSUER_URL", "oidc-issuer-url", None, "Expected token issuer (required with OIDC)";
        OIDC_AUDIENCE = "OIDC_AUDIENCE", "oidc-audience", None, "Expected token audience (required with OIDC, else OIDC_CLIENT_ID)";
        OIDC_CLIENT_ID = "OIDC_CLIENT_ID", "oidc-client-id", None, "The audience when OIDC_AUDIENCE is unset";
        OIDC_JWKS_URL = "OIDC_JWKS_URL", "oidc-jwks-url", None, "JWKS URL (else OIDC_JWKS_FILE, else the issuer's discovery document)";
        OIDC_JWKS_FILE = "OIDC_JWKS_FILE", "oidc-jwks-file", None, "JWKS file";
        OIDC_COOKIE_NAME = "OIDC_COOKIE_NAME", "oidc-cookie-name", Some("access_token"), "Cookie holding the token";
        OIDC_CLOCK_SKEW_SECONDS = "OIDC_CLOCK_SKEW_SECONDS", "oidc-clock-skew-seconds", Some("30"), "Leeway for exp/nbf, seconds";
        OIDC_ROLE_CLAIM = "OIDC_ROLE_CLAIM", "oidc-role-claim", None, "Claim read as the role (for role.ROLE bindings)";
        FRONTEND_VERSION_URL = "FRONTEND_VERSION_URL", "frontend-version-url", None, "Frontend version document ({\"version\": ...}) sent to each new stream";
        TASK_MAX_WORKERS = "TASK_MAX_WORKERS", "task-max-workers", Some("4"), "Tasks running at once (0 counts as 1)";
        TASK_TIMEOUT_SECONDS = "TASK_TIMEOUT_SECONDS", "task-timeout-seconds", Some("300"), "A running task is cancelled and failed after this many seconds";
        TASK_CLEANUP_INTERVAL_SECONDS = "TASK_CLEANUP_INTERVAL_SECONDS", "task-cleanup-interval-seconds", Some("600"), "Finished tasks are forgotten this many seconds after they ended";
        GRACEFUL_SHUTDOWN_TIMEOUT = "GRACEFUL_SHUTDOWN_TIMEOUT", "graceful-shutdown-timeout", Some("600"), "Seconds a shutdown waits for running tasks";
        DRAIN_AUTH_KEY = "DRAIN_AUTH_KEY", "drain-auth-key", None, "Key of the drain route (unset: drain refused)";
        BACKEND_INTERNAL_SECRET = "BACKEND_INTERNAL_SECRET", "backend-internal-secret", None, "Bearer secret of the internal routes (version push)";
    }
}

use settings as s;

pub use settings::SETTINGS;

/// Everything a backend built on the toolkit is configured with.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// `SSE_GATEWAY_URL`, `SSE_GATEWAY_SECRET`, `SSE_GATEWAY_PUBLISH`.
    pub gateway: HttpBroadcasterConfig,
    /// `SSE_CALLBACK_SECRET` (enforced when set, and always in `FLASK_ENV=production`).
    pub callback: CallbackConfig,
    /// `OIDC_*`; `None` when `OIDC_ENABLED` is not true.
    pub oidc: Option<OidcConfig>,
    /// `FRONTEND_VERSION_URL`.
    pub version: VersionConfig,
    /// `TASK_*`.
    pub tasks: TaskConfig,
    /// `GRACEFUL_SHUTDOWN_TIMEOUT`.
    pub graceful_shutdown_timeout: Duration,
    /// `DRAIN_AUTH_KEY` (empty: drain refused).
    pub drain_auth_key: String,
    /// `BACKEND_INTERNAL_SECRET`: bearer secret of internal routes (version push).
    pub internal_secret: String,
}

/// A setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not a valid value for the key.
    #[error("invalid {key}={value:?}: {expected}")]
    Invalid {
        /// Variable name.
        key: &'static str,
        /// The value found.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// Required when another setting is on.
    #[error("{key} is required when {because}")]
    Missing {
        /// Variable name.
        key: &'static str,
        /// Why it is required.
        because: &'static str,
    },
}

/// Reads settings through a lookup, applying each setting's default.
struct Reader<'a, L> {
    lookup: &'a L,
}

impl<L: Fn(&str) -> Option<String>> Reader<'_, L> {
    fn text(&self, s: Setting) -> Option<String> {
        s.value(self.lookup).map(|v| v.trim().to_owned())
    }

    fn parse<T: FromStr>(&self, s: Setting, expected: &'static str) -> Result<Option<T>, ConfigError> {
        self.text(s).map(|v| v.parse().map_err(|_| ConfigError::Invalid { key: s.env, value: v, expected })).transpose()
    }

    /// A setting with a table default: always a value.
    fn defaulted<T: FromStr>(&self, s: Setting, expected: &'static str) -> Result<T, ConfigError> {
        self.parse(s, expected)?
            .ok_or(ConfigError::Missing { key: s.env, because: "the settings table has no default" })
    }

    fn secs(&self, s: Setting) -> Result<Duration, ConfigError> {
        self.defaulted(s, "a number of seconds").map(Duration::from_secs)
    }

    fn flag(&self, s: Setting) -> Result<bool, ConfigError> {
        match self.text(s).map(|v| v.to_ascii_lowercase()) {
            None => Ok(false),
            Some(v) if v == "false" || v == "0" || v == "no" => Ok(false),
            Some(v) if v == "true" || v == "1" || v == "yes" => Ok(true),
            Some(v) => Err(ConfigError::Invalid { key: s.env, value: v, expected: "true or false" }),
        }
    }
}

impl Default for BackendConfig {
    /// The documented defaults ([`SETTINGS`]).
    fn default() -> Self {
        match BackendConfig::from_lookup(|_| None) {
            Ok(config) => config,
            // The defaults table is constant and covered by a unit test.
            Err(e) => unreachable!("the default settings are invalid: {e}"),
        }
    }
}

impl BackendConfig {
    /// Reads the settings through `lookup` (e.g. `|k| std::env::var(k).ok()`);
    /// a blank value counts as unset, an unset one takes its [`SETTINGS`] default.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let r = Reader { lookup: &lookup };

        // SSE_GATEWAY_URL has a default, so the URL is always there.
        let mut gateway = HttpBroadcasterConfig::new(r.text(s::SSE_GATEWAY_URL).unwrap_or_default());
        gateway.secret = r.text(s::SSE_GATEWAY_SECRET);
        gateway.publish = r.flag(s::SSE_GATEWAY_PUBLISH)?;

        let production = r.text(s::FLASK_ENV).is_some_and(|e| e == "production");
        let secret = r.text(s::SSE_CALLBACK_SECRET);
        let callback = CallbackConfig {
            secret: if production { Some(secret.unwrap_or_default()) } else { secret },
            // A gateway can only publish to streams whose answer listed bindings.
            answer: if gateway.publish { AnswerMode::Routing } else { AnswerMode::Empty },
        };

        let oidc = if r.flag(s::OIDC_ENABLED)? {
            let because = "OIDC_ENABLED is true";
            let issuer =
                r.text(s::OIDC_ISSUER_URL).ok_or(ConfigError::Missing { key: s::OIDC_ISSUER_URL.env, because })?;
            let audience = r
                .text(s::OIDC_AUDIENCE)
                .or_else(|| r.text(s::OIDC_CLIENT_ID))
                .ok_or(ConfigError::Missing { key: s::OIDC_AUDIENCE.env, because })?;
            let mut o = OidcConfig::new(issuer, audience);
            if let Some(c) = r.text(s::OIDC_COOKIE_NAME) {
                o.cookie_name = c;
            }
            o.clock_skew = r.secs(s::OIDC_CLOCK_SKEW_SECONDS)?;
            o.jwks = match (r.text(s::OIDC_JWKS_URL), r.text(s::OIDC_JWKS_FILE)) {
                (Some(url), _) => JwksSource::Url(url),
                (None, Some(path)) => JwksSource::File(path.into()),
                (None, None) => JwksSource::Discovery,
            };
            o.role_claim = r.text(s::OIDC_ROLE_CLAIM);
            Some(o)
        } else {
            None
        };

        let tasks = TaskConfig {
            max_workers: r.defaulted::<usize>(s::TASK_MAX_WORKERS, "a positive integer")?.max(1),
            timeout: r.secs(s::TASK_TIMEOUT_SECONDS)?,
            cleanup_interval: r.secs(s::TASK_CLEANUP_INTERVAL_SECONDS)?,
        };

        Ok(Self {
            gateway,
            callback,
            oidc,
            version: VersionConfig { version_url: r.text(s::FRONTEND_VERSION_URL), ..VersionConfig::default() },
            tasks,
            graceful_shutdown_timeout: r.secs(s::GRACEFUL_SHUTDOWN_TIMEOUT)?,
            drain_auth_key: r.text(s::DRAIN_AUTH_KEY).unwrap_or_default(),
            internal_secret: r.text(s::BACKEND_INTERNAL_SECRET).unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<BackendConfig, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        BackendConfig::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = cfg(&[]).unwrap();
        assert_eq!(format!("{c:?}"), format!("{:?}", BackendConfig::default()));
        assert_eq!(c.gateway.gateway_url, "http://localhost:3002");
        assert_eq!(c.gateway.timeout, Duration::from_secs(2));
        assert!(c.callback.secret.is_none());
        assert!(c.oidc.is_none());
        assert_eq!((c.tasks.max_workers, c.tasks.timeout.as_secs(), c.tasks.cleanup_interval.as_secs()), (4, 300, 600));
        assert_eq!(c.graceful_shutdown_timeout, Duration::from_secs(600));
    }

    #[test]
    fn every_default_in_the_table_is_the_value_used() {
        let default = format!("{:?}", BackendConfig::default());
        for setting in SETTINGS.iter().filter(|s| s.default.is_some()) {
            let given = cfg(&[(setting.env, setting.default.unwrap())]).unwrap();
            assert_eq!(format!("{given:?}"), default, "{}", setting.env);
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
    fn invalid_numbers_name_their_variable() {
        let err = cfg(&[("GRACEFUL_SHUTDOWN_TIMEOUT", "soon")]).unwrap_err();
        assert_eq!(
            err,
            ConfigError::Invalid {
                key: "GRACEFUL_SHUTDOWN_TIMEOUT",
                value: "soon".into(),
                expected: "a number of seconds"
            }
        );
        assert!(err.to_string().contains("GRACEFUL_SHUTDOWN_TIMEOUT"), "{err}");
    }

    #[test]
    fn callback_secret_is_enforced_in_production_even_when_empty() {
        assert_eq!(cfg(&[("FLASK_ENV", "production")]).unwrap().callback.secret.as_deref(), Some(""));
        assert_eq!(cfg(&[("SSE_CALLBACK_SECRET", "s")]).unwrap().callback.secret.as_deref(), Some("s"));
    }

    #[test]
    fn oidc_settings_and_errors() {
        let c = cfg(&[
            ("OIDC_ENABLED", "true"),
            ("OIDC_ISSUER_URL", "https://i"),
            ("OIDC_CLIENT_ID", "app"),
            ("OIDC_JWKS_FILE", "/k.json"),
        ])
        .unwrap();
        let o = c.oidc.unwrap();
        assert_eq!((o.audience.as_str(), o.cookie_name.as_str(), o.clock_skew.as_secs()), ("app", "access_token", 30));
        assert!(matches!(o.jwks, JwksSource::File(_)));
        assert!(matches!(cfg(&[("OIDC_ENABLED", "true")]), Err(ConfigError::Missing { .. })));
        assert!(matches!(cfg(&[("TASK_MAX_WORKERS", "x")]), Err(ConfigError::Invalid { .. })));
        assert!(matches!(cfg(&[("OIDC_ENABLED", "maybe")]), Err(ConfigError::Invalid { .. })));
    }

    #[test]
    fn publish_turns_on_the_routing_answer() {
        let c = cfg(&[("SSE_GATEWAY_PUBLISH", "true")]).unwrap();
        assert!(c.gateway.publish);
        assert_eq!(c.callback.answer, AnswerMode::Routing);
    }
}
