//! `FRONTEND_VERSION_FILE` watched: when the document's `version` changes,
//! every open page gets it as a `version` event (forwarded verbatim, as on
//! connect), so a deploy that rewrites the file tells the pages at once.
//!
//! The file's directory is watched (editors and deploy scripts replace the
//! file by rename); a burst of events is read once, after it settles. A
//! document that is missing or not JSON with a string `version` is skipped
//! (logged), and the last version seen stays the reference.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sse_backend::version::VersionService;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long a burst of file events is given to settle before the read.
const SETTLE: Duration = Duration::from_millis(50);

/// The document at `path` if it is JSON with a string `version`.
pub fn read(path: &Path) -> Option<(String, Value)> {
    let bytes = std::fs::read(path).ok()?;
    let doc: Value = serde_json::from_slice(&bytes).ok()?;
    let version = doc.get("version")?.as_str()?.to_owned();
    Some((version, doc))
}

/// Starts watching `path`; stops with `stop`. Returns false (logged) when
/// the directory cannot be watched.
pub fn start(path: PathBuf, version: VersionService, stop: CancellationToken) -> bool {
    use notify::Watcher;
    let name: Option<OsString> = path.file_name().map(OsString::from);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let changed = Arc::new(Notify::new());
    let wake = Arc::clone(&changed);
    let handler = move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if !event.kind.is_access() && event.paths.iter().any(|p| p.file_name().map(OsString::from) == name) {
            wake.notify_one();
        }
    };
    let watcher = match notify::recommended_watcher(handler)
        .and_then(|mut w| w.watch(&dir, notify::RecursiveMode::NonRecursive).map(|()| w))
    {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the version file; pages hear a new version only when they reconnect");
            return false;
        }
    };
    let mut last = read(&path).map(|(v, _)| v);
    tokio::spawn(async move {
        let _watcher = watcher; // dropped (unwatched) when the loop ends
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = changed.notified() => {}
            }
            tokio::time::sleep(SETTLE).await;
            let Some((v, doc)) = read(&path) else {
                tracing::warn!(path = %path.display(), "the version file is missing or has no string \"version\"; ignored");
                continue;
            };
            if last.as_deref() == Some(v.as_str()) {
                continue;
            }
            tracing::info!(version = %v, "the version file changed; telling the open pages");
            version.notify_all(&doc).await;
            last = Some(v);
        }
    });
    true
}
