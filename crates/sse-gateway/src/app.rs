//! The embedding application's service type: what an application that
//! hosts the gateway (the hub) gives it to serve every request that is
//! neither a gateway route nor the stream path.

use std::sync::Arc;

use bytes::Bytes;

use crate::hook::HookFuture;

/// The response body type of an embedding application.
pub type AppBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// An embedding application. The client's address is in the request's
/// extensions as a `std::net::SocketAddr`.
pub type AppService =
    Arc<dyn Fn(http::Request<hyper::body::Incoming>) -> HookFuture<'static, http::Response<AppBody>> + Send + Sync>;
