//! Overrides from a local file: the same ConfigMap manifest `kubectl apply` takes, so
//! what an operator tries on a laptop is what they apply to the cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use wsrouter::{parse_configmap, ConfigMapData, Overrides, OverridesError};

#[derive(Debug, Error)]
pub enum OverridesFileError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a ConfigMap manifest")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_norway::Error,
    },
    #[error("{path} is a {kind}, not a ConfigMap")]
    WrongKind { path: PathBuf, kind: String },
    #[error("{path}: data.{key} is not a string; quote it (\"3\"), as the API server requires")]
    NotAString { path: PathBuf, key: String },
    /// The same rejection the watchers give, every offending key listed.
    #[error("{path}: rejected")]
    Invalid {
        path: PathBuf,
        #[source]
        source: OverridesError,
    },
}

#[derive(Deserialize)]
struct Manifest {
    kind: Option<String>,
    // Values must be strings, as the API server demands: `ns-01: 3` is refused here as
    // `kubectl apply` would refuse it.
    #[serde(default)]
    data: BTreeMap<String, serde_norway::Value>,
}

/// The overrides in the manifest at `path`, validated for `statefulset` exactly as the
/// control loop validates a watched update.
pub fn read_overrides(path: &Path, statefulset: &str) -> Result<Overrides, OverridesFileError> {
    read_configmap(path, statefulset).map(|d| d.overrides)
}

/// The overrides, the per-tenant settings (`max-connections.<namespace>`) and the
/// version split in the manifest at `path`, validated as the control loop validates a
/// watched update.
pub(crate) fn read_configmap(
    path: &Path,
    statefulset: &str,
) -> Result<ConfigMapData, OverridesFileError> {
    let data = read(path)?;
    parse_configmap(&data, statefulset).map_err(|source| OverridesFileError::Invalid {
        path: path.to_owned(),
        source,
    })
}

/// The `data` of the ConfigMap manifest at `path`.
pub(crate) fn read(path: &Path) -> Result<BTreeMap<String, String>, OverridesFileError> {
    parse_at(path, &read_text(path)?)
}

/// The text of the manifest at `path`, unparsed.
pub(crate) fn read_text(path: &Path) -> Result<String, OverridesFileError> {
    std::fs::read_to_string(path).map_err(|source| OverridesFileError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The `data` of `text`, the manifest read from `path` (which errors name).
pub(crate) fn parse_at(
    path: &Path,
    text: &str,
) -> Result<BTreeMap<String, String>, OverridesFileError> {
    parse(text).map_err(|e| match e {
        ParseError::Yaml(source) => OverridesFileError::Parse {
            path: path.to_owned(),
            source,
        },
        ParseError::WrongKind(kind) => OverridesFileError::WrongKind {
            path: path.to_owned(),
            kind,
        },
        ParseError::NotAString(key) => OverridesFileError::NotAString {
            path: path.to_owned(),
            key,
        },
    })
}

enum ParseError {
    Yaml(serde_norway::Error),
    WrongKind(String),
    NotAString(String),
}

fn parse(text: &str) -> Result<BTreeMap<String, String>, ParseError> {
    // An empty file is an empty ConfigMap, not an error.
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let m: Manifest = serde_norway::from_str(text).map_err(ParseError::Yaml)?;
    match m.kind {
        Some(k) if k != "ConfigMap" => Err(ParseError::WrongKind(k)),
        _ => m
            .data
            .into_iter()
            .map(|(k, v)| match v {
                serde_norway::Value::String(s) => Ok((k, s)),
                _ => Err(ParseError::NotAString(k)),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_table() {
        let ok = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: wsrouter-overrides\ndata:\n  ns-01: \"3\"\n  ns-42: backend-0\n";
        let data = parse(ok).ok().unwrap();
        assert_eq!(data.get("ns-01").map(String::as_str), Some("3"));
        assert_eq!(data.get("ns-42").map(String::as_str), Some("backend-0"));
        assert!(parse("kind: ConfigMap\nmetadata: {name: x}\n")
            .ok()
            .unwrap()
            .is_empty());
        assert!(parse("").ok().unwrap().is_empty());
        assert!(
            matches!(parse("kind: Secret\ndata: {}\n"), Err(ParseError::WrongKind(k)) if k == "Secret")
        );
        assert!(
            matches!(parse("data:\n  ns-01: 3\n"), Err(ParseError::NotAString(k)) if k == "ns-01")
        );
        assert!(matches!(parse("data: [1, 2"), Err(ParseError::Yaml(_))));
    }
}
