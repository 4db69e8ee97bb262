//! Overrides from the filesystem: a ConfigMap manifest file (`--overrides-file`), or a
//! ConfigMap mounted as a volume (`--overrides-dir`, one file per key).
//!
//! Both watch a directory, not a file: editors replace files by renaming over them, and
//! kubelet updates a mounted ConfigMap by swapping the `..data` symlink, so a watch on
//! the file itself would miss the change. Any event re-reads the whole source after a
//! short quiet period; the control loop drops updates that change nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use thiserror::Error;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use wsrouter::TableSource;

use crate::control::overrides_file;
use crate::control::{ControlHandle, Input};
use crate::logging::DisplayChain;

/// Events arrive in bursts (write, chmod, rename); wait for this much quiet before reading.
const SETTLE: Duration = Duration::from_millis(100);

/// A manifest found empty after an event is believed only once it has stayed empty this
/// long: a save in place truncates the file before it writes it, and a writer on a busy
/// machine can stall between the two for longer than [`SETTLE`]. Publishing the empty
/// file meanwhile would route every tenant by its hash alone until the write lands.
const BELIEVE_EMPTY: Duration = Duration::from_secs(1);

/// Why a source is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// The first read, or files changed: what is read may be a writer's half-done work.
    /// The first read too: the router has usually read the file at its start already,
    /// and on a busy machine the watcher's first read can land in the middle of a save
    /// made since (the e2e slow-save test caught exactly that: an empty table published).
    Changed,
    /// A re-read after [`BELIEVE_EMPTY`]: what is read is meant.
    Settled,
}

/// What a read asks of the watch loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reloaded {
    Done,
    /// Read again (as [`Pass::Settled`]) after this long, unless files change first.
    ReadAgainAfter(Duration),
}

/// What a source holds.
enum Found {
    Data(BTreeMap<String, String>),
    /// A manifest with nothing in it (an empty ConfigMap, or a save in progress).
    Blank,
    /// No file (mid-replace, or removed).
    Absent,
}

#[derive(Debug, Error)]
pub enum FileWatchError {
    #[error("watching {path}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

#[derive(Debug, Error)]
pub(crate) enum DirReadError {
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not UTF-8 text")]
    NotText { path: PathBuf },
}

/// Reads a mounted ConfigMap: every regular file (or symlink to one) whose name does not
/// start with `.` is a key, its content the value. kubelet's `..data` and timestamped
/// directories start with `.`.
pub(crate) fn read_dir(dir: &Path) -> Result<BTreeMap<String, String>, DirReadError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DirReadError::Io { path, source }
    };
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name();
        let Some(key) = name.to_str() else {
            return Err(DirReadError::NotText { path: entry.path() });
        };
        if key.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Follows the symlinks kubelet makes; directories are not keys.
        if !std::fs::metadata(&path).map_err(io(&path))?.is_file() {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let value =
            String::from_utf8(bytes).map_err(|_| DirReadError::NotText { path: path.clone() })?;
        out.insert(key.to_owned(), value);
    }
    Ok(out)
}

/// What to watch.
#[derive(Debug, Clone)]
pub(crate) enum FileSource {
    /// A ConfigMap manifest file.
    Manifest(PathBuf),
    /// A mounted ConfigMap directory.
    Directory(PathBuf),
}

impl FileSource {
    fn watched_dir(&self) -> PathBuf {
        match self {
            Self::Manifest(p) => match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
                _ => PathBuf::from("."),
            },
            Self::Directory(d) => d.clone(),
        }
    }

    fn table_source(&self) -> TableSource {
        match self {
            Self::Manifest(p) => TableSource::File {
                path: p.display().to_string(),
            },
            Self::Directory(d) => TableSource::Directory {
                path: d.display().to_string(),
            },
        }
    }

    /// Reads the source.
    fn read(&self) -> Result<Found, String> {
        let chain = |e: &dyn std::error::Error| DisplayChain(e).to_string();
        match self {
            Self::Manifest(p) => match overrides_file::read_text(p) {
                Ok(text) if text.trim().is_empty() => Ok(Found::Blank),
                Ok(text) => overrides_file::parse_at(p, &text)
                    .map(Found::Data)
                    .map_err(|e| chain(&e)),
                Err(overrides_file::OverridesFileError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Ok(Found::Absent)
                }
                Err(e) => Err(chain(&e)),
            },
            Self::Directory(d) => read_dir(d).map(Found::Data).map_err(|e| chain(&e)),
        }
    }

    /// Reads and sends one update. A source that cannot be read is logged and counted;
    /// the last good table keeps serving. A manifest found empty after a change is read
    /// again before it is believed ([`BELIEVE_EMPTY`]).
    fn reload(&self, control: &ControlHandle, pass: Pass) -> Reloaded {
        let data = match self.read() {
            Ok(Found::Data(data)) => data,
            Ok(Found::Blank) if pass == Pass::Changed => {
                tracing::debug!(source = %self.table_source(), "overrides file is empty; believed if it stays so");
                return Reloaded::ReadAgainAfter(BELIEVE_EMPTY);
            }
            // An empty file is an empty ConfigMap.
            Ok(Found::Blank) => BTreeMap::new(),
            Ok(Found::Absent) => {
                tracing::warn!(source = %self.table_source(), "overrides file is gone; keeping the last good table");
                return Reloaded::Done;
            }
            Err(e) => {
                tracing::warn!(source = %self.table_source(), error = %e, "overrides unreadable; keeping the last good table");
                control.send(Input::Unreadable);
                return Reloaded::Done;
            }
        };
        control.send(Input::Overrides {
            source: self.table_source(),
            data: Some(data),
        });
        Reloaded::Done
    }
}

/// Watches `source` and sends every change to the control loop, starting with its
/// current contents, until the router drains.
pub(crate) fn spawn(
    source: FileSource,
    control: ControlHandle,
) -> Result<tokio::task::JoinHandle<()>, FileWatchError> {
    tracing::info!(source = %source.table_source(), "watching overrides");
    watch_dirs(&[source.watched_dir()], control.stopping(), move |pass| {
        source.reload(&control, pass)
    })
}

/// Calls `reload` once now, then once after each burst of filesystem events in `dirs`
/// has settled (and again when it asks to read again), until `stop` is cancelled.
pub(crate) fn watch_dirs(
    dirs: &[PathBuf],
    stop: CancellationToken,
    mut reload: impl FnMut(Pass) -> Reloaded + Send + 'static,
) -> Result<tokio::task::JoinHandle<()>, FileWatchError> {
    let (tx, mut events) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        // Only the fact of a change matters: the whole source is re-read.
        if res.is_ok_and(|ev| changes_files(&ev.kind)) {
            let _ = tx.send(());
        }
    })
    .map_err(|source| FileWatchError::Watch {
        path: dirs.first().cloned().unwrap_or_default(),
        source,
    })?;
    for dir in dirs {
        watcher
            .watch(dir, RecursiveMode::NonRecursive)
            .map_err(|source| FileWatchError::Watch {
                path: dir.clone(),
                source,
            })?;
    }
    Ok(tokio::spawn(async move {
        // The watcher stops when dropped; it lives as long as this task.
        let _watcher = watcher;
        let mut next = reload(Pass::Changed);
        loop {
            let again = async {
                match next {
                    Reloaded::ReadAgainAfter(after) => tokio::time::sleep(after).await,
                    Reloaded::Done => std::future::pending().await,
                }
            };
            let pass = tokio::select! {
                _ = stop.cancelled() => return,
                () = again => Pass::Settled,
                ev = events.recv() => match ev {
                    Some(()) => Pass::Changed,
                    None => return,
                },
            };
            // After a change, let the burst settle, then read once.
            if pass == Pass::Changed && !settled(&mut events, &stop).await {
                return;
            }
            next = reload(pass);
        }
    }))
}

/// Whether an event can mean new contents. Opening or reading a file is not one: the
/// watcher's own reads would otherwise wake it again, and it would re-read the source
/// every [`SETTLE`] for as long as it runs. A writer closing its file is one.
fn changes_files(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(access) => *access == AccessKind::Close(AccessMode::Write),
        _ => true,
    }
}

/// Waits until no event has come for [`SETTLE`]; `false` if the watch is over first.
async fn settled(events: &mut mpsc::UnboundedReceiver<()>, stop: &CancellationToken) -> bool {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(SETTLE) => return true,
            ev = events.recv() => if ev.is_none() { return false },
        }
    }
}

#[cfg(test)]
mod tests {
    use notify::event::{CreateKind, ModifyKind, RemoveKind};

    use super::*;

    #[test]
    fn reads_are_not_changes_and_writes_are() {
        let read = [
            AccessKind::Any,
            AccessKind::Read,
            AccessKind::Open(AccessMode::Any),
            AccessKind::Close(AccessMode::Read),
        ];
        for a in read {
            assert!(!changes_files(&EventKind::Access(a)), "{a:?}");
        }
        for kind in [
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            EventKind::Create(CreateKind::File),
            EventKind::Modify(ModifyKind::Any),
            EventKind::Remove(RemoveKind::File),
            EventKind::Any,
        ] {
            assert!(changes_files(&kind), "{kind:?}");
        }
    }

    /// The first read is a `Changed` pass, so a blank file found by it is believed only
    /// once it stays blank, as after any change.
    #[tokio::test]
    async fn the_first_read_may_be_a_save_under_way() {
        let dir = std::env::temp_dir().join(format!("wsrouter-first-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let stop = CancellationToken::new();
        let (tx, mut passes) = mpsc::unbounded_channel();
        let task = watch_dirs(std::slice::from_ref(&dir), stop.clone(), move |pass| {
            let _ = tx.send(pass);
            Reloaded::Done
        })
        .unwrap();
        assert_eq!(passes.recv().await, Some(Pass::Changed));
        stop.cancel();
        task.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mounted_configmap_layout_reads_keys_only() {
        // kubelet's layout: ..2025_01_01/key files, ..data -> ..2025_01_01, key -> ..data/key
        let dir = std::env::temp_dir().join(format!("wsrouter-readdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let ts = dir.join("..2025_01_01_00_00_00.1");
        std::fs::create_dir_all(&ts).unwrap();
        std::fs::write(ts.join("ns-01"), "3\n").unwrap();
        std::fs::write(ts.join("ns-42"), "backend-0").unwrap();
        std::os::unix::fs::symlink("..2025_01_01_00_00_00.1", dir.join("..data")).unwrap();
        for k in ["ns-01", "ns-42"] {
            std::os::unix::fs::symlink(format!("..data/{k}"), dir.join(k)).unwrap();
        }
        let data = read_dir(&dir).unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data["ns-01"], "3\n");
        assert_eq!(data["ns-42"], "backend-0");
        std::fs::write(ts.join("bin"), [0xff, 0xfe]).unwrap();
        std::os::unix::fs::symlink("..data/bin", dir.join("bin")).unwrap();
        assert!(matches!(read_dir(&dir), Err(DirReadError::NotText { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
