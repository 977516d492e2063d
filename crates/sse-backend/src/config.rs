//! The toolkit's settings as one typed struct, and the only place that reads
//! configuration: [`BackendConfig::from_lookup`] takes a lookup function (the
//! variable names of the original backends, listed in docs/BACKEND.md,
//! Configuration), so tests never touch the process environment.

use std::str::FromStr;
use std::time::Duration;

use crate::broadcaster::HttpBroadcasterConfig;
use crate::callback::{AnswerMode, CallbackConfig};
use crate::identity::{JwksSource, OidcConfig};
use crate::tasks::TaskConfig;
use crate::version::VersionConfig;

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
    /// `GRACEFUL_SHUTDOWN_TIMEOUT` (600 s).
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

fn parse<T: FromStr>(
    lookup: &impl Fn(&str) -> Option<String>,
    key: &'static str,
    default: T,
    expected: &'static str,
) -> Result<T, ConfigError> {
    match lookup(key).filter(|v| !v.trim().is_empty()) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| ConfigError::Invalid { key, value: v, expected }),
    }
}

fn flag(lookup: &impl Fn(&str) -> Option<String>, key: &'static str) -> Result<bool, ConfigError> {
    match lookup(key).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if v.is_empty() || v == "false" || v == "0" || v == "no" => Ok(false),
        Some(v) if v == "true" || v == "1" || v == "yes" => Ok(true),
        Some(v) => Err(ConfigError::Invalid { key, value: v, expected: "true or false" }),
    }
}

impl BackendConfig {
    /// Reads the settings through `lookup` (e.g. `|k| std::env::var(k).ok()`).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str| lookup(k).filter(|v| !v.is_empty());
        let secs = |key, default| parse(&lookup, key, default, "a number of seconds").map(Duration::from_secs);

        let mut gateway =
            HttpBroadcasterConfig::new(get("SSE_GATEWAY_URL").unwrap_or_else(|| "http://localhost:3002".to_owned()));
        gateway.secret = get("SSE_GATEWAY_SECRET");
        gateway.publish = flag(&lookup, "SSE_GATEWAY_PUBLISH")?;

        let production = lookup("FLASK_ENV").is_some_and(|e| e == "production");
        let secret = get("SSE_CALLBACK_SECRET");
        let callback = CallbackConfig {
            secret: if production { Some(secret.unwrap_or_default()) } else { secret },
            // A gateway can only publish to streams whose answer listed bindings.
            answer: if gateway.publish { AnswerMode::Routing } else { AnswerMode::Empty },
        };

        let oidc = if flag(&lookup, "OIDC_ENABLED")? {
            let issuer = get("OIDC_ISSUER_URL")
                .ok_or(ConfigError::Missing { key: "OIDC_ISSUER_URL", because: "OIDC_ENABLED is true" })?;
            let audience = get("OIDC_AUDIENCE")
                .or_else(|| get("OIDC_CLIENT_ID"))
                .ok_or(ConfigError::Missing { key: "OIDC_AUDIENCE", because: "OIDC_ENABLED is true" })?;
            let mut o = OidcConfig::new(issuer, audience);
            if let Some(c) = get("OIDC_COOKIE_NAME") {
                o.cookie_name = c;
            }
            o.clock_skew = secs("OIDC_CLOCK_SKEW_SECONDS", 30)?;
            o.jwks = match (get("OIDC_JWKS_URL"), get("OIDC_JWKS_FILE")) {
                (Some(url), _) => JwksSource::Url(url),
                (None, Some(path)) => JwksSource::File(path.into()),
                (None, None) => JwksSource::Discovery,
            };
            o.role_claim = get("OIDC_ROLE_CLAIM");
            Some(o)
        } else {
            None
        };

        let tasks = TaskConfig {
            max_workers: parse(&lookup, "TASK_MAX_WORKERS", 4, "a positive integer")?.max(1),
            timeout: secs("TASK_TIMEOUT_SECONDS", 300)?,
            cleanup_interval: secs("TASK_CLEANUP_INTERVAL_SECONDS", 600)?,
        };

        Ok(Self {
            gateway,
            callback,
            oidc,
            version: VersionConfig { version_url: get("FRONTEND_VERSION_URL"), fetch_timeout: Duration::from_secs(2) },
            tasks,
            graceful_shutdown_timeout: secs("GRACEFUL_SHUTDOWN_TIMEOUT", 600)?,
            drain_auth_key: get("DRAIN_AUTH_KEY").unwrap_or_default(),
            internal_secret: get("BACKEND_INTERNAL_SECRET").unwrap_or_default(),
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
        assert_eq!(c.gateway.gateway_url, "http://localhost:3002");
        assert_eq!(c.gateway.timeout, Duration::from_secs(2));
        assert!(c.callback.secret.is_none());
        assert!(c.oidc.is_none());
        assert_eq!((c.tasks.max_workers, c.tasks.timeout.as_secs(), c.tasks.cleanup_interval.as_secs()), (4, 300, 600));
        assert_eq!(c.graceful_shutdown_timeout, Duration::from_secs(600));
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
