//! Isolated calls of observers and listeners: a panic in one is caught and
//! logged, and never stops the next one or undoes what triggered it.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

/// Runs an async observer, catching panics both while creating the future and
/// while polling it. Returns false if it panicked.
pub(crate) async fn run_isolated<F, Fut>(what: &str, make: F) -> bool
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let fut = match std::panic::catch_unwind(AssertUnwindSafe(make)) {
        Ok(f) => f,
        Err(p) => {
            tracing::error!(observer = what, panic = %panic_message(p.as_ref()), "observer panicked");
            return false;
        }
    };
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(()) => true,
        Err(p) => {
            tracing::error!(observer = what, panic = %panic_message(p.as_ref()), "observer panicked");
            false
        }
    }
}

/// Runs a sync listener, catching a panic. Returns false if it panicked.
pub(crate) fn call_isolated(what: &str, f: impl FnOnce()) -> bool {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => true,
        Err(p) => {
            tracing::error!(listener = what, panic = %panic_message(p.as_ref()), "listener panicked");
            false
        }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic".to_owned()
    }
}
