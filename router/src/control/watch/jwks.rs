//! The JWKS file (`--jwks-file`): read at start (a bad one stops the router there),
//! then watched like the certificate. A key set that parses is swapped in whole; a bad
//! one is logged with why, and the last good set keeps verifying.
//!
//! The path is a file, or a directory mounted from a Secret: then every regular file in
//! it whose name does not start with `.` (kubelet's `..data`) is a key set, and the sets
//! are merged (a rotation can add the new key's file beside the old one).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use super::files::{watch_dirs, FileWatchError, Reloaded};
use crate::control::ControlHandle;
use crate::data::admission::auth::jwks::KeySet;
use crate::data::admission::auth::{Auth, JwksError};
use crate::logging::DisplayChain;

#[derive(Debug, Error)]
pub enum JwksFileError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: JwksError,
    },
    #[error("{0} holds no key set file")]
    EmptyDir(PathBuf),
}

/// The key set at `path` (a file, or a directory of them).
pub(crate) fn read_keys(path: &Path) -> Result<KeySet, JwksFileError> {
    parse(&read_docs(path)?, path)
}

/// The files a key set is read from and their bytes, in name order: what the watcher
/// compares to know whether anything changed, and what is parsed.
#[derive(Debug, PartialEq, Eq)]
struct Docs {
    files: Vec<PathBuf>,
    bytes: Vec<Vec<u8>>,
}

fn read_docs(path: &Path) -> Result<Docs, JwksFileError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| JwksFileError::Read { path, source }
    };
    let meta = std::fs::metadata(path).map_err(read_err(path))?;
    let mut files = Vec::new();
    if !meta.is_dir() {
        files.push(path.to_owned());
    } else {
        for entry in std::fs::read_dir(path).map_err(read_err(path))? {
            let entry = entry.map_err(read_err(path))?;
            let file = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            match std::fs::metadata(&file) {
                Ok(m) if m.is_file() => files.push(file),
                // A link whose target kubelet is swapping away: not a key set (any more).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(read_err(&file)(e)),
                Ok(_) => {}
            }
        }
        files.sort();
    }
    let mut bytes = Vec::with_capacity(files.len());
    for file in &files {
        bytes.push(std::fs::read(file).map_err(read_err(file))?);
    }
    Ok(Docs { files, bytes })
}

fn parse(docs: &Docs, path: &Path) -> Result<KeySet, JwksFileError> {
    if docs.bytes.is_empty() {
        return Err(JwksFileError::EmptyDir(path.to_owned()));
    }
    KeySet::parse_many(&docs.bytes).map_err(|(i, source)| JwksFileError::Invalid {
        path: docs
            .files
            .get(i)
            .cloned()
            .unwrap_or_else(|| path.to_owned()),
        source,
    })
}

/// The directory to watch for `path`: itself if it is one, else its parent (editors and
/// kubelet replace files by renaming, which a watch on the file would miss).
fn watched_dir(path: &Path) -> PathBuf {
    if path.is_dir() {
        return path.to_owned();
    }
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// How soon a key set that could not be read (a file vanishing mid-update) is read again.
const RETRY_READ: std::time::Duration = std::time::Duration::from_millis(500);

/// Watches `path` and swaps every good new key set into `auth`, until the router drains.
pub(crate) fn spawn(
    path: PathBuf,
    auth: Arc<Auth>,
    control: &ControlHandle,
) -> Result<tokio::task::JoinHandle<()>, FileWatchError> {
    tracing::info!(jwks = %path.display(), "watching the JWKS");
    let stats = control.stats.clone();
    // What was last read and judged, good or bad: events that change nothing do not
    // re-parse. A set caught mid-update (a file kubelet is removing) is not judged: it
    // is read again shortly.
    let mut seen: Option<Docs> = None;
    watch_dirs(&[watched_dir(&path)], control.stopping(), move |_| {
        let docs = match read_docs(&path) {
            Ok(docs) => docs,
            Err(e) => {
                tracing::debug!(error = %DisplayChain(&e), "JWKS changing; reading it again shortly");
                return Reloaded::ReadAgainAfter(RETRY_READ);
            }
        };
        if seen.as_ref() == Some(&docs) {
            return Reloaded::Done;
        }
        match parse(&docs, &path) {
            Ok(keys) => {
                let n = keys.len();
                auth.swap_keys(keys);
                stats.jwks_reloads.inc();
                tracing::info!(jwks = %path.display(), keys = n, "JWKS reloaded; tokens are checked against it");
            }
            Err(e) => {
                stats.jwks_reload_failures.inc();
                tracing::warn!(error = %DisplayChain(&e), "new JWKS unusable; keeping the last good keys");
            }
        }
        seen = Some(docs);
        Reloaded::Done
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EC_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const EC_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    fn set(kid: &str) -> String {
        format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"{kid}","x":"{EC_X}","y":"{EC_Y}"}}]}}"#
        )
    }

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wsrouter-jwks-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        dir
    }

    #[test]
    fn a_file_or_a_mounted_directory_of_them() {
        let dir = tmp("dir");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(matches!(read_keys(&dir), Err(JwksFileError::EmptyDir(_))));
        write("old.json", &set("old"));
        write("new.json", &set("new"));
        // kubelet's own entries are not key sets.
        write("..data", "not json");
        let keys = read_keys(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys.len(), 2);
        let one = read_keys(&dir.join("old.json")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(one.len(), 1);
        // A bad file names itself; the same kid in two files is refused.
        write("bad.json", "{");
        let err = read_keys(&dir)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.ends_with("bad.json"), "{err}");
        std::fs::remove_file(dir.join("bad.json")).unwrap_or_else(|e| panic!("{e}"));
        write("again.json", &set("old"));
        assert!(matches!(
            read_keys(&dir),
            Err(JwksFileError::Invalid {
                source: JwksError::DuplicateKid(_),
                ..
            })
        ));
        assert!(matches!(
            read_keys(&dir.join("missing.json")),
            Err(JwksFileError::Read { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
