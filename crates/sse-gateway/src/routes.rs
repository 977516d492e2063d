//! The route table of the gateway's HTTP surface, used by both the raw path
//! (to decide whether a first request is a stream) and the hyper path (to
//! dispatch), so a route exists in one place only.
//!
//! Without an embedding application every path that is not a gateway route
//! opens a stream (SSEGateway's rule); with one, only its stream path does
//! and every other public request the gateway does not serve goes to the
//! application.

use http::Method;

/// Which listener accepted the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listener {
    /// The public port: streams, `/internal/send`, health.
    Public,
    /// The loopback internal port: the internal API and metrics, no streams.
    Internal,
}

/// Liveness.
pub(crate) const HEALTHZ: &str = "/healthz";
/// Readiness (callback configured, broker connected, not draining).
pub(crate) const READYZ: &str = "/readyz";
/// Prometheus exposition.
pub(crate) const METRICS: &str = "/metrics";
/// Send to one token (SSEGateway).
pub(crate) const SEND: &str = "/internal/send";
/// Publish to a routing key (extension).
pub(crate) const PUBLISH: &str = "/internal/publish";
/// List open streams (admin, extension).
pub(crate) const STREAMS: &str = "/internal/streams";
/// Close streams by key or token (admin, extension).
pub(crate) const CLOSE: &str = "/internal/close";
/// The history's current position (extension): what a snapshot is valid at.
pub(crate) const HISTORY: &str = "/internal/history";
/// Everything under this prefix belongs to the gateway.
const INTERNAL_PREFIX: &str = "/internal";

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// `OPTIONS` on any path: 204 with CORS.
    Preflight,
    Health,
    Ready,
    Metrics,
    Send,
    Publish,
    Streams,
    Close,
    History,
    /// Opens an SSE stream.
    Stream,
    /// The embedding application's.
    App,
    /// A gateway path with a method it does not serve, or no route at all.
    NotFound,
    /// A stream path on the internal listener (streams are public only).
    NotOnInternal,
    /// A stream path with a method other than `GET`/`HEAD`.
    MethodNotAllowed,
}

/// True for the gateway's own paths (health, metrics, the internal API).
fn is_gateway_path(path: &str) -> bool {
    matches!(path, HEALTHZ | READYZ | METRICS)
        || path.strip_prefix(INTERNAL_PREFIX).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Resolves a request. `path` excludes the query; `app_stream_path` is the
/// embedding application's stream path, if there is an application.
pub(crate) fn resolve(method: &Method, path: &str, listener: Listener, app_stream_path: Option<&str>) -> Route {
    if method == Method::OPTIONS {
        return Route::Preflight;
    }
    let get = method == Method::GET || method == Method::HEAD;
    let post = method == Method::POST;
    match path {
        HEALTHZ if get => return Route::Health,
        READYZ if get => return Route::Ready,
        METRICS if get => return Route::Metrics,
        SEND if post => return Route::Send,
        PUBLISH if post => return Route::Publish,
        STREAMS if get => return Route::Streams,
        CLOSE if post => return Route::Close,
        HISTORY if get => return Route::History,
        _ => {}
    }
    let gateway_path = is_gateway_path(path);
    let stream_path = match app_stream_path {
        Some(p) => path == p,
        None => !gateway_path,
    };
    match listener {
        Listener::Public if get && stream_path => Route::Stream,
        // The application also serves its own paths under `/internal/`.
        Listener::Public if app_stream_path.is_some() => Route::App,
        _ if gateway_path || app_stream_path.is_some() => Route::NotFound,
        Listener::Internal => Route::NotOnInternal,
        Listener::Public => Route::MethodNotAllowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: Option<&str> = Some("/api/sse/stream");

    #[test]
    fn without_an_app_every_other_path_is_a_stream() {
        let r = |m: Method, p: &str| resolve(&m, p, Listener::Public, None);
        assert_eq!(r(Method::GET, "/"), Route::Stream);
        assert_eq!(r(Method::HEAD, "/any/path"), Route::Stream);
        assert_eq!(r(Method::GET, "/healthzz"), Route::Stream);
        assert_eq!(r(Method::GET, "/internalx"), Route::Stream);
        assert_eq!(r(Method::GET, "/healthz"), Route::Health);
        assert_eq!(r(Method::POST, "/internal/send"), Route::Send);
        assert_eq!(r(Method::GET, "/internal/streams"), Route::Streams);
        assert_eq!(r(Method::POST, "/internal/close"), Route::Close);
        assert_eq!(r(Method::GET, "/internal/history"), Route::History);
        assert_eq!(r(Method::GET, "/internal/close"), Route::NotFound);
        assert_eq!(r(Method::GET, "/internal/send"), Route::NotFound);
        assert_eq!(r(Method::GET, "/internal/other"), Route::NotFound);
        assert_eq!(r(Method::GET, "/internal"), Route::NotFound);
        assert_eq!(r(Method::POST, "/"), Route::MethodNotAllowed);
        assert_eq!(r(Method::OPTIONS, "/internal/send"), Route::Preflight);
    }

    #[test]
    fn the_internal_listener_serves_no_streams() {
        let r = |m: Method, p: &str| resolve(&m, p, Listener::Internal, None);
        assert_eq!(r(Method::GET, "/"), Route::NotOnInternal);
        assert_eq!(r(Method::POST, "/internal/publish"), Route::Publish);
        assert_eq!(r(Method::GET, "/metrics"), Route::Metrics);
    }

    #[test]
    fn with_an_app_only_its_stream_path_streams() {
        let r = |m: Method, p: &str| resolve(&m, p, Listener::Public, APP);
        assert_eq!(r(Method::GET, "/api/sse/stream"), Route::Stream);
        assert_eq!(r(Method::GET, "/"), Route::App);
        assert_eq!(r(Method::POST, "/api/tasks"), Route::App);
        assert_eq!(r(Method::POST, "/api/sse/stream"), Route::App);
        assert_eq!(r(Method::POST, "/internal/rotation-nudge"), Route::App);
        assert_eq!(resolve(&Method::GET, "/", Listener::Internal, APP), Route::NotFound);
    }
}
