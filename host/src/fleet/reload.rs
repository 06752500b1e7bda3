//! Hot swap: a new plugin version goes live without a restart.
//!
//! [`offer`] is the one way a version goes live, whatever brought it (a
//! rebuilt file, a push): it compiles and pre-instantiates the component off
//! the async executor, checks it against the world, runs the handler's
//! fixtures when it has some, and only then swaps the handler's live
//! pointer. The swap is one atomic pointer exchange: an event already
//! running keeps the version it loaded, every later event gets the new one,
//! and no event waits for a compile. A refused version changes nothing; the
//! refusal is logged, counted and kept in the handler's reload status.
//!
//! [`watch_file`] follows a plugin file. It reacts to file-system events on
//! the file's directory (so an atomic rename is seen) and also polls the
//! file's size and mtime, so a missed event only delays a reload. A file
//! caught half-written fails to load and is refused; the write that
//! completes it triggers another attempt. A refused version is refused
//! once: the same bytes are not validated (or logged) again until the file
//! changes.
//!
//! Start-up applies the same gate (`service`): a version that fails to
//! load or fails its fixtures does not serve, and the host does not start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::control::{ControlPlane, Version};
use crate::handler::Handler;
use crate::isolation::{Fixture, Profile, run_fixtures};
use crate::lock;
use crate::runtime::{Digest, Plugin};

/// Why a version was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Load(#[from] crate::runtime::LoadError),
    #[error("plugin {digest} failed its fixtures: {reason}")]
    Fixtures { digest: Digest, reason: String },
    #[error("compile task failed: {0}")]
    Task(String),
}

/// Validates `bytes` as the next version of `handler` and makes it live.
/// Returns the live digest (unchanged if `bytes` is the live version).
pub async fn offer(
    handler: &Handler,
    bytes: Vec<u8>,
    fixtures: &[Fixture],
    origin: &str,
) -> Result<Digest, ReloadError> {
    let digest = Digest::of(&bytes);
    if handler.plugin.load().digest() == &digest {
        return Ok(digest);
    }
    let result = prepare(handler, bytes, fixtures).await;
    let name = handler.name();
    match result {
        Ok(plugin) => {
            let started = std::time::Instant::now();
            let previous = handler.plugin.swap(plugin.clone());
            let swap_ns = started.elapsed().as_nanos() as u64;
            {
                let mut state = lock(&handler.reload);
                state.longest_swap_ns = state.longest_swap_ns.max(swap_ns);
            }
            handler.metrics().plugin_live(
                name,
                Some(previous.digest().as_str()),
                plugin.digest().as_str(),
            );
            handler.metrics().reload(name, true);
            tracing::info!(handler = name, from = %previous.digest(), to = %plugin.digest(), %origin, "plugin swapped");
            lock(&handler.reload).record(plugin.digest().as_str(), None, origin);
            Ok(plugin.digest().clone())
        }
        Err(error) => {
            handler.metrics().reload(name, false);
            tracing::error!(handler = name, %digest, %origin, %error, "plugin version refused; the live version keeps serving");
            lock(&handler.reload).record(digest.as_str(), Some(error.to_string()), origin);
            Err(error)
        }
    }
}

async fn prepare(
    handler: &Handler,
    bytes: Vec<u8>,
    fixtures: &[Fixture],
) -> Result<Arc<Plugin>, ReloadError> {
    let runtime = handler.runtime().clone();
    let plugin = tokio::task::spawn_blocking(move || runtime.load(&bytes))
        .await
        .map_err(|e| ReloadError::Task(e.to_string()))?;
    let plugin = plugin?;
    if !fixtures.is_empty() {
        run_fixtures(
            handler.runtime().clone(),
            plugin.clone(),
            Profile::of(&handler.config),
            fixtures,
        )
        .await
        .map_err(|reason| ReloadError::Fixtures {
            digest: plugin.digest().clone(),
            reason,
        })?;
    }
    Ok(plugin)
}

/// Reads a handler's fixtures file, if it has one.
pub fn load_fixtures(path: Option<&Path>) -> Result<Vec<Fixture>, String> {
    match path {
        None => Ok(Vec::new()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read fixtures {}: {e}", path.display()))?;
            Fixture::parse_lines(&text).map_err(|e| format!("fixtures {}: {e}", path.display()))
        }
    }
}

/// Follows `path` and offers every new version of it until `shutdown`.
pub async fn watch_file(handler: Arc<Handler>, path: PathBuf, shutdown: CancellationToken) {
    use notify::Watcher as _;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let file_name = path.file_name().map(|n| n.to_os_string());
    let watched = file_name.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reads (ours included) raise access events; only changes count.
        if let Ok(event) = event
            && !event.kind.is_access()
            && event
                .paths
                .iter()
                .any(|p| p.file_name().map(|n| n.to_os_string()) == watched)
        {
            let _ = tx.send(());
        }
    });
    // Watch the directory, not the file: an atomic rename replaces the
    // file's inode, which a watch on the file itself would lose.
    let directory = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let _watcher = match watcher {
        Ok(mut watcher) => match watcher.watch(&directory, notify::RecursiveMode::NonRecursive) {
            Ok(()) => Some(watcher),
            Err(error) => {
                tracing::warn!(handler = %handler.name(), directory = %directory.display(), %error, "cannot watch plugin directory; polling only");
                None
            }
        },
        Err(error) => {
            tracing::warn!(handler = %handler.name(), %error, "no file-system watcher; polling only");
            None
        }
    };
    let fixtures = match load_fixtures(handler.config.fixtures.as_deref()) {
        Ok(fixtures) => fixtures,
        Err(error) => {
            tracing::error!(handler = %handler.name(), %error, "fixtures unreadable; reloads of this handler are refused until restart");
            return;
        }
    };
    let mut seen = stamp(&path);
    // The digest last refused: the same bytes are not validated again
    // until the file holds something else.
    let mut refused: Option<Digest> = None;
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = rx.recv() => {
                // Let a burst of events (truncate, write, close) settle.
                tokio::time::sleep(Duration::from_millis(50)).await;
                while rx.try_recv().is_ok() {}
            }
            _ = poll.tick() => {
                let now = stamp(&path);
                if now == seen {
                    continue;
                }
            }
            () = shutdown.cancelled() => return,
        }
        seen = stamp(&path);
        match tokio::fs::read(&path).await {
            Ok(bytes) => {
                let digest = Digest::of(&bytes);
                if refused.as_ref() == Some(&digest) {
                    tracing::debug!(handler = %handler.name(), %digest, "plugin file unchanged since it was refused");
                    continue;
                }
                let origin = format!("file {}", path.display());
                refused = offer(&handler, bytes, &fixtures, &origin)
                    .await
                    .err()
                    .map(|_| digest);
            }
            Err(error) => {
                tracing::warn!(handler = %handler.name(), path = %path.display(), %error, "plugin file unreadable; the live version keeps serving");
            }
        }
    }
}

/// Calls `apply` with every value `key` takes in the control plane, the
/// current one first (`None` when it is deleted), watching again after an
/// interruption, until `shutdown`.
pub async fn follow<F, Fut>(
    control: &ControlPlane,
    key: &str,
    handler: &str,
    shutdown: &CancellationToken,
    mut apply: F,
) where
    F: FnMut(Option<Version>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::StreamExt;
    loop {
        let mut watch = match control.watch(key).await {
            Ok(watch) => watch,
            Err(error) => {
                tracing::warn!(handler, key, %error, "cannot watch the control plane; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = shutdown.cancelled() => return,
                }
            }
        };
        loop {
            let entry = tokio::select! {
                entry = watch.next() => entry,
                () = shutdown.cancelled() => return,
            };
            let entry = match entry {
                Some(Ok(entry)) => entry,
                Some(Err(error)) => {
                    tracing::warn!(handler, key, %error, "control-plane watch interrupted");
                    break;
                }
                None => break,
            };
            if entry.operation != async_nats::jetstream::kv::Operation::Put {
                apply(None).await;
                continue;
            }
            match serde_json::from_slice::<Version>(&entry.value) {
                Ok(version) => apply(Some(version)).await,
                Err(error) => tracing::error!(handler, key, %error, "unreadable version entry"),
            }
        }
    }
}

/// Follows the control plane's live pointer for `handler` and offers every
/// version pushed for it until `shutdown`.
pub async fn watch_object(
    handler: Arc<Handler>,
    control: ControlPlane,
    shutdown: CancellationToken,
) {
    let Some(object) = handler.config.plugin_object.clone() else {
        return;
    };
    let (handler, control_ref, object_ref) = (&handler, &control, &object);
    follow(&control, &object, handler.name(), &shutdown, |version| async move {
        let Some(version) = version else { return };
        let origin = format!("push {} by {}", version.name(), version.pushed_by);
        match control_ref.fetch(object_ref, &version).await {
            Ok((bytes, fixtures)) => {
                if offer(handler, bytes, &fixtures, &origin).await.is_ok() {
                    lock(&handler.reload).version = Some(version.name());
                }
            }
            Err(error) => {
                handler.metrics().reload(handler.name(), false);
                tracing::error!(handler = %handler.name(), digest = %version.digest, %error, "cannot fetch pushed version; the live version keeps serving");
                lock(&handler.reload).record(&version.digest, Some(format!("{error:#}")), &origin);
            }
        }
    })
    .await;
}

fn stamp(path: &Path) -> Option<(u64, SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), meta.modified().ok()?))
}
