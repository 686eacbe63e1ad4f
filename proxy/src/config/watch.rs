//! Reload triggers: file-system events on the parent directories of every configuration and
//! referenced file (so a Kubernetes ConfigMap's `..data` symlink swap is seen), SIGHUP, and a
//! slow poll as the fallback. Only events that can concern the configuration count (see
//! [`Relevant`]): a busy directory — a log written next to the configuration — must not make
//! the proxy hash its files over and over. Bursts of events are debounced into one reload; a
//! reload whose content hash is unchanged does nothing.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
    let relevant = Arc::new(Mutex::new(Relevant::default()));
    if watch_files {
        let filter = relevant.clone();
        match notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(ev) = res
                && filter
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .concerns(&ev)
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
        rewatch(w, &mut watched, &server, &relevant);
    }
    tokio::spawn(run(server, watcher, watched, relevant, events, hup));
}

/// What a file-system event must touch to trigger a reload: a configuration or referenced file
/// (by name, in whichever watched directory: an editor's rename onto it, a symlink swapped), a
/// name starting with `..` (a Kubernetes ConfigMap or Secret volume swaps `..data`), a new
/// YAML file when the configuration is a directory, or a watched directory itself. Anything
/// else in those directories (logs, editors' swap files, other programs' files) is ignored;
/// the poll still catches whatever this misses.
#[derive(Debug, Default)]
struct Relevant {
    names: HashSet<OsString>,
    dirs: HashSet<PathBuf>,
    yaml: bool,
}

impl Relevant {
    fn concerns(&self, ev: &notify::Event) -> bool {
        if matches!(ev.kind, notify::EventKind::Access(_)) {
            return false;
        }
        // An event without paths (a rescan, an overflow) could be anything.
        ev.paths.is_empty() || ev.paths.iter().any(|p| self.concerns_path(p))
    }

    fn concerns_path(&self, path: &Path) -> bool {
        let Some(name) = path.file_name() else {
            return true;
        };
        let text = name.to_string_lossy();
        text.starts_with("..")
            || self.names.contains(name)
            || self.dirs.contains(path)
            || (self.yaml
                && !text.starts_with('.')
                && (text.ends_with(".yaml") || text.ends_with(".yml")))
    }
}

async fn run(
    server: Arc<Server>,
    mut watcher: Option<notify::RecommendedWatcher>,
    mut watched: BTreeSet<PathBuf>,
    relevant: Arc<Mutex<Relevant>>,
    mut events: mpsc::UnboundedReceiver<()>,
    mut hup: Option<Signal>,
) {
    let stop = server.watch_stopped().clone();
    loop {
        if let Some(w) = watcher.as_mut() {
            rewatch(w, &mut watched, &server, &relevant);
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
/// directory itself), and tells the watcher's filter what counts. Directories that no longer
/// matter are unwatched.
fn rewatch(
    watcher: &mut notify::RecommendedWatcher,
    watched: &mut BTreeSet<PathBuf>,
    server: &Server,
    relevant: &Mutex<Relevant>,
) {
    let snapshot = server.shared().current.load();
    let mut want: BTreeSet<PathBuf> = BTreeSet::new();
    let root = server.config_root();
    let root_is_dir = root.is_dir();
    if root_is_dir {
        want.insert(root.to_path_buf());
    }
    let mut names = HashSet::new();
    for f in snapshot
        .files
        .iter()
        .chain(snapshot.referenced.iter())
        .map(PathBuf::as_path)
        .chain([root])
    {
        if let Some(name) = f.file_name() {
            names.insert(name.to_os_string());
        }
        if let Some(parent) = f.parent() {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            want.insert(parent.to_path_buf());
        }
    }
    *relevant.lock().unwrap_or_else(|e| e.into_inner()) = Relevant {
        names,
        dirs: want.iter().cloned().chain([root.to_path_buf()]).collect(),
        yaml: root_is_dir,
    };
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

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, DataChange, EventKind, ModifyKind, RenameMode};

    use super::*;

    fn event(kind: EventKind, paths: &[&str]) -> notify::Event {
        let mut ev = notify::Event::new(kind);
        ev.paths = paths.iter().map(PathBuf::from).collect();
        ev
    }

    fn write(path: &str) -> notify::Event {
        event(
            EventKind::Modify(ModifyKind::Data(DataChange::Content)),
            &[path],
        )
    }

    /// `/etc/portico` holds the configuration (a directory), its certificate is in
    /// `/etc/tls`, and the plugin in `/opt/plugins`.
    fn relevant() -> Relevant {
        Relevant {
            names: ["portico.yaml", "tls.crt", "tls.key", "jwt.wasm", "portico"]
                .into_iter()
                .map(OsString::from)
                .collect(),
            dirs: ["/etc/portico", "/etc/tls", "/opt/plugins", "/etc"]
                .into_iter()
                .map(PathBuf::from)
                .collect(),
            yaml: true,
        }
    }

    #[test]
    fn changes_to_the_configuration_and_its_files_count() {
        let r = relevant();
        assert!(r.concerns(&write("/etc/portico/portico.yaml")));
        assert!(r.concerns(&write("/etc/tls/tls.crt")));
        assert!(r.concerns(&write("/opt/plugins/jwt.wasm")));
        // An editor writes a temporary file and renames it onto the real one.
        assert!(r.concerns(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &[
                "/etc/portico/.portico.yaml.swp",
                "/etc/portico/portico.yaml"
            ],
        )));
        // A new file of a configuration directory.
        assert!(r.concerns(&event(
            EventKind::Create(CreateKind::File),
            &["/etc/portico/routes.yml"]
        )));
        // A ConfigMap update: `..data_tmp` renamed over `..data`.
        assert!(r.concerns(&event(
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)),
            &["/etc/portico/..data_tmp", "/etc/portico/..data"],
        )));
        // A watched directory replaced, and events that name nothing.
        assert!(r.concerns(&event(
            EventKind::Remove(notify::event::RemoveKind::Folder),
            &["/etc/tls"]
        )));
        assert!(r.concerns(&event(EventKind::Other, &[])));
    }

    #[test]
    fn other_files_in_the_watched_directories_do_not() {
        let r = relevant();
        assert!(!r.concerns(&write("/etc/portico/portico.log")));
        assert!(!r.concerns(&write("/etc/portico/.portico.yaml.swp")));
        assert!(!r.concerns(&write("/opt/plugins/auth.wasm")));
        assert!(!r.concerns(&event(
            EventKind::Create(CreateKind::File),
            &["/etc/tls/ca.srl"]
        )));
        // Reading a file changes nothing.
        assert!(!r.concerns(&event(
            EventKind::Access(notify::event::AccessKind::Read),
            &["/etc/portico/portico.yaml"]
        )));
        // YAML files count only in a configuration directory.
        let single = Relevant {
            yaml: false,
            ..relevant()
        };
        assert!(!single.concerns(&write("/opt/plugins/values.yaml")));
    }
}
