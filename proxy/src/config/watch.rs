//! Reload triggers: file-system events on the parent directories of every configuration and
//! referenced file (so a Kubernetes ConfigMap's `..data` symlink swap is seen), SIGHUP, and a
//! slow poll as the fallback. Bursts of events are debounced into one reload; a reload whose
//! content hash is unchanged does nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::{RecursiveMode, Watcher};
use tokio::signal::unix::Signal;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::server::Server;

/// Starts the trigger task for `server`. The file watches are in place when this returns, so
/// a change made right after start is seen; `hup` is the SIGHUP stream, registered by the
/// caller before anything could send the signal (its default action ends the process).
pub fn spawn(server: Arc<Server>, watch_files: bool, hup: Option<Signal>) {
    let (tx, events) = mpsc::unbounded_channel::<()>();
    let mut watcher = None;
    if watch_files {
        match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && !matches!(ev.kind, notify::EventKind::Access(_))
            {
                let _ = tx.send(());
            }
        }) {
            Ok(w) => watcher = Some(w),
            Err(e) => tracing::error!(
                "cannot watch the configuration files; reloads come from SIGHUP and polling: {e}"
            ),
        }
    }
    let mut watched: BTreeSet<PathBuf> = BTreeSet::new();
    if let Some(w) = watcher.as_mut() {
        rewatch(w, &mut watched, &server);
    }
    tokio::spawn(run(server, watcher, watched, events, hup));
}

async fn run(
    server: Arc<Server>,
    mut watcher: Option<notify::RecommendedWatcher>,
    mut watched: BTreeSet<PathBuf>,
    mut events: mpsc::UnboundedReceiver<()>,
    mut hup: Option<Signal>,
) {
    let stop = server.watch_stopped().clone();
    loop {
        if let Some(w) = watcher.as_mut() {
            rewatch(w, &mut watched, &server);
        }
        let settings = server.shared().current.load().settings.clone();
        let poll = tokio::time::sleep(settings.reload_poll_interval);
        tokio::select! {
            _ = stop.cancelled() => return,
            Some(()) = events.recv() => {
                // Debounce: wait for a quiet period, but never longer than 5 debounce periods.
                let deadline = Instant::now() + settings.reload_debounce * 5;
                loop {
                    let quiet = Instant::now() + settings.reload_debounce;
                    tokio::select! {
                        Some(()) = events.recv() => {}
                        _ = tokio::time::sleep_until(quiet.min(deadline)) => break,
                    }
                    if Instant::now() >= deadline {
                        break;
                    }
                }
                while events.try_recv().is_ok() {}
                server.reload().await;
            }
            Some(()) = recv_hup(&mut hup) => {
                tracing::info!("SIGHUP: reloading configuration");
                server.reload().await;
            }
            _ = poll => {
                server.reload().await;
            }
        }
    }
}

async fn recv_hup(hup: &mut Option<Signal>) -> Option<()> {
    match hup {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Watches the parent directory of every file the configuration uses (and the configuration
/// directory itself). Directories that no longer matter are unwatched.
fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    server: &Server,
) {
    let snapshot = server.shared().current.load();
    let mut want: BTreeSet<PathBuf> = BTreeSet::new();
    let root = server.config_root();
    if root.is_dir() {
        want.insert(root.to_path_buf());
    }
    for f in snapshot
        .files
        .iter()
        .chain(snapshot.referenced.iter())
        .map(PathBuf::as_path)
        .chain([root])
    {
        if let Some(parent) = f.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            want.insert(parent.to_path_buf());
        }
    }
    for gone in watched.difference(&want).cloned().collect::<Vec<_>>() {
        let _ = watcher.unwatch(&gone);
        watched.remove(&gone);
    }
    for dir in want {
        if !watched.contains(&dir) {
            match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    watched.insert(dir);
                }
                Err(e) => tracing::warn!(dir = %dir.display(), "cannot watch directory: {e}"),
            }
        }
    }
}
