//! Who is on a stream, from the headers the gateway forwarded
//! (docs/BACKEND.md, Identity).
//!
//! The access token is the `authorization: Bearer ...` header, else the
//! cookie named by [`OidcConfig::cookie_name`]. It is validated as a JWT
//! (RS256/384/512) against a JWKS loaded from a file, a URL, or the issuer's
//! discovery document, with issuer, audience, expiry and clock-skew checks;
//! the identity is its `sub` (and optionally a role claim). With OIDC off,
//! every stream is the sentinel [`LOCAL_USER`]. This module never rejects a
//! stream: it only says who is there, or why nobody is.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// The subject bound when OIDC is off; it receives every subject-filtered send.
pub const LOCAL_USER: &str = "local-user";

/// An authenticated stream owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The JWT `sub` (or [`LOCAL_USER`]).
    pub subject: String,
    /// The configured role claim, when present and a string.
    pub role: Option<String>,
    /// When the credential behind it expires (the JWT `exp`, Unix seconds);
    /// `None` when the identity did not come from a token.
    pub expires_at: Option<u64>,
}

impl Identity {
    /// The sentinel identity of a backend without OIDC.
    pub fn local_user() -> Self {
        Self { subject: LOCAL_USER.to_owned(), role: None, expires_at: None }
    }

    /// An identity not backed by an expiring credential.
    pub fn new(subject: impl Into<String>, role: Option<String>) -> Self {
        Self { subject: subject.into(), role, expires_at: None }
    }
}

/// Where the signing keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// A JWKS document on disk (read once, re-read when a `kid` is unknown).
    File(PathBuf),
    /// A JWKS URL.
    Url(String),
    /// The issuer's `/.well-known/openid-configuration`, whose `jwks_uri` is used.
    Discovery,
}

/// OIDC settings (`OIDC_*`).
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// Expected `iss` (`OIDC_ISSUER_URL`).
    pub issuer: String,
    /// Expected `aud` (`OIDC_AUDIENCE`, else `OIDC_CLIENT_ID`).
    pub audience: String,
    /// Cookie holding the token (`OIDC_COOKIE_NAME`, default `access_token`).
    pub cookie_name: String,
    /// Leeway for `exp`/`nbf` (`OIDC_CLOCK_SKEW_SECONDS`, default 30).
    pub clock_skew: Duration,
    /// Signing keys.
    pub jwks: JwksSource,
    /// Claim read as the role (for `role.<role>` bindings), if any.
    pub role_claim: Option<String>,
    /// Timeout of a JWKS or discovery fetch.
    pub fetch_timeout: Duration,
}

impl OidcConfig {
    /// Defaults for an issuer and audience: cookie `access_token`, 30 s skew,
    /// keys from discovery.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            cookie_name: "access_token".to_owned(),
            clock_skew: Duration::from_secs(30),
            jwks: JwksSource::Discovery,
            role_claim: None,
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

/// Why no identity was bound. Logged, never shown to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Neither a bearer header nor the cookie.
    #[error("no access token in the forwarded headers")]
    NoToken,
    /// Not a JWT, bad signature, wrong issuer/audience, expired, no `sub`.
    #[error("invalid access token: {0}")]
    InvalidToken(String),
    /// The signing keys could not be loaded.
    #[error("signing keys unavailable: {0}")]
    Keys(String),
}

/// The access token in forwarded headers: bearer first, then the cookie.
pub fn access_token<'h>(headers: &'h [(String, String)], cookie_name: &str) -> Option<&'h str> {
    let bearer = headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("authorization")).find_map(|(_, v)| {
        let (scheme, token) = v.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    });
    bearer.or_else(|| {
        headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case("cookie")).find_map(|(_, v)| {
            v.split(';').find_map(|part| {
                let (name, value) = part.trim().split_once('=')?;
                (name.trim() == cookie_name).then(|| value.trim()).filter(|t| !t.is_empty())
            })
        })
    })
}

/// Resolves identities; holds the JWKS cache.
pub struct IdentityResolver {
    oidc: Option<OidcConfig>,
    client: reqwest::Client,
    keys: Mutex<Option<(JwkSet, Instant)>>,
}

/// Keys are re-fetched for an unknown `kid` at most this often.
const REFETCH_MIN: Duration = Duration::from_secs(30);
/// Keys older than this are re-fetched.
const KEYS_TTL: Duration = Duration::from_secs(3600);

impl IdentityResolver {
    /// OIDC off: every stream is [`LOCAL_USER`].
    pub fn disabled() -> Self {
        Self::new(None)
    }

    /// With `Some(config)`, tokens are validated; with `None`, OIDC is off.
    pub fn new(oidc: Option<OidcConfig>) -> Self {
        let timeout = oidc.as_ref().map_or(Duration::from_secs(5), |o| o.fetch_timeout);
        let client = reqwest::Client::builder().timeout(timeout).build().unwrap_or_default();
        Self { oidc, client, keys: Mutex::new(None) }
    }

    /// Whether tokens are validated.
    pub fn enabled(&self) -> bool {
        self.oidc.is_some()
    }

    /// The identity behind forwarded headers.
    pub async fn resolve(&self, headers: &[(String, String)]) -> Result<Identity, IdentityError> {
        let Some(oidc) = &self.oidc else { return Ok(Identity::local_user()) };
        let token = access_token(headers, &oidc.cookie_name).ok_or(IdentityError::NoToken)?;
        self.validate(oidc, token).await
    }

    async fn validate(&self, oidc: &OidcConfig, token: &str) -> Result<Identity, IdentityError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| IdentityError::InvalidToken(e.to_string()))?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512) {
            return Err(IdentityError::InvalidToken(format!("algorithm {:?} not accepted", header.alg)));
        }
        let key = self.key_for(oidc, header.kid.as_deref()).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&oidc.issuer]);
        validation.set_audience(&[&oidc.audience]);
        validation.leeway = oidc.clock_skew.as_secs();
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|e| IdentityError::InvalidToken(e.to_string()))?;
        let subject = data.claims["sub"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| IdentityError::InvalidToken("`sub` is not a non-empty string".into()))?
            .to_owned();
        let role = oidc.role_claim.as_deref().and_then(|c| data.claims[c].as_str()).map(str::to_owned);
        // Validation required a numeric `exp`; a fractional one is rounded down.
        let exp = &data.claims["exp"];
        let expires_at = exp.as_u64().or_else(|| exp.as_f64().filter(|f| f.is_finite() && *f >= 0.0).map(|f| f as u64));
        Ok(Identity { subject, role, expires_at })
    }

    async fn key_for(&self, oidc: &OidcConfig, kid: Option<&str>) -> Result<DecodingKey, IdentityError> {
        // (keys, fresh enough to use, old enough to re-fetch for an unknown kid)
        let (cached, fresh, may_refetch) = {
            let guard = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            match &*guard {
                Some((set, at)) => (Some(set.clone()), at.elapsed() <= KEYS_TTL, at.elapsed() >= REFETCH_MIN),
                None => (None, false, true),
            }
        };
        if let Some(set) = cached.as_ref().filter(|_| fresh) {
            if let Some(k) = find_key(set, kid) {
                return k;
            }
            if !may_refetch {
                return Err(IdentityError::InvalidToken(format!("unknown key id {kid:?}")));
            }
        }
        let set = self.fetch_keys(oidc).await?;
        *self.keys.lock().unwrap_or_else(|p| p.into_inner()) = Some((set.clone(), Instant::now()));
        find_key(&set, kid).unwrap_or_else(|| Err(IdentityError::InvalidToken(format!("unknown key id {kid:?}"))))
    }

    async fn fetch_keys(&self, oidc: &OidcConfig) -> Result<JwkSet, IdentityError> {
        let keys_err = |e: &dyn std::fmt::Display| IdentityError::Keys(e.to_string());
        match &oidc.jwks {
            JwksSource::File(path) => {
                let text = tokio::fs::read(path).await.map_err(|e| keys_err(&format!("{}: {e}", path.display())))?;
                serde_json::from_slice(&text).map_err(|e| keys_err(&e))
            }
            JwksSource::Url(url) => self.get_json(url).await,
            JwksSource::Discovery => {
                let url = format!("{}/.well-known/openid-configuration", oidc.issuer.trim_end_matches('/'));
                let doc: serde_json::Value = self.get_json(&url).await?;
                let jwks_uri =
                    doc["jwks_uri"].as_str().ok_or_else(|| keys_err(&"discovery document has no jwks_uri"))?;
                self.get_json(jwks_uri).await
            }
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, IdentityError> {
        let resp = self.client.get(url).send().await.map_err(|e| IdentityError::Keys(e.to_string()))?;
        let resp = resp.error_for_status().map_err(|e| IdentityError::Keys(e.to_string()))?;
        resp.json().await.map_err(|e| IdentityError::Keys(e.to_string()))
    }
}

/// The key for `kid` (or the only key when the token names none).
fn find_key(set: &JwkSet, kid: Option<&str>) -> Option<Result<DecodingKey, IdentityError>> {
    let jwk = match kid {
        Some(kid) => set.find(kid)?,
        None if set.keys.len() == 1 => set.keys.first()?,
        None => return None,
    };
    Some(DecodingKey::from_jwk(jwk).map_err(|e| IdentityError::Keys(e.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{claims, oidc_resolver as resolver, sign};

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn identity_bearer_header_wins_over_cookie_and_cookie_is_parsed_by_name() {
        let headers = h(&[("cookie", "a=1; access_token=from-cookie"), ("Authorization", "Bearer from-header")]);
        assert_eq!(access_token(&headers, "access_token"), Some("from-header"));
        let headers = h(&[("cookie", " other=x ;  access_token = tok ; z=1"), ("authorization", "Basic abc")]);
        assert_eq!(access_token(&headers, "access_token"), Some("tok"));
        assert_eq!(access_token(&h(&[("cookie", "x=1")]), "access_token"), None);
        assert_eq!(access_token(&h(&[("authorization", "bEaReR t")]), "c"), Some("t"));
    }

    #[tokio::test]
    async fn identity_oidc_off_binds_local_user() {
        let id = IdentityResolver::disabled().resolve(&[]).await.unwrap();
        assert_eq!(id, Identity::local_user());
        assert_eq!(id.expires_at, None, "no credential, no expiry");
    }

    #[tokio::test]
    async fn identity_valid_jwt_binds_sub_and_role() {
        let c = claims("alice", 300);
        let token = sign(c.clone(), "test-key-1");
        let id = resolver().resolve(&h(&[("cookie", &format!("access_token={token}"))])).await.unwrap();
        assert_eq!(id.subject, "alice");
        assert_eq!(id.role.as_deref(), Some("admin"));
        assert_eq!(id.expires_at, c["exp"].as_u64(), "the credential's exp");
    }

    #[tokio::test]
    async fn identity_bad_tokens_leave_the_stream_unbound() {
        let r = resolver();
        assert_eq!(r.resolve(&[]).await, Err(IdentityError::NoToken));
        let expired = sign(claims("alice", -120), "test-key-1");
        let wrong_aud = {
            let mut c = claims("alice", 300);
            c["aud"] = "other".into();
            sign(c, "test-key-1")
        };
        let unknown_kid = sign(claims("alice", 300), "nope");
        for bad in [expired, wrong_aud, unknown_kid, "not.a.jwt".to_owned()] {
            let got = r.resolve(&h(&[("authorization", &format!("Bearer {bad}"))])).await;
            assert!(matches!(got, Err(IdentityError::InvalidToken(_))), "{got:?}");
        }
        // Within the clock skew an expired token still passes.
        let skewed = sign(claims("bob", -10), "test-key-1");
        assert_eq!(r.resolve(&h(&[("authorization", &format!("Bearer {skewed}"))])).await.unwrap().subject, "bob");
    }
}
