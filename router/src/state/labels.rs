//! Metric label sets, bounded (ordinals, reasons, statuses, directions; never tenants or
//! addresses). A leaf, so each component can label its own series without depending on
//! the registry.

use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;

/// The backend sets' names by set id (the stable set's first), as label values. Fixed
/// by the flags for the router's life.
pub(crate) type SetNames = Arc<[&'static str]>;

/// `names` as label values. Each distinct name is kept once for the process (a few
/// bytes; tests start many routers with the same names), so a label is a pointer copy
/// and a connection's metrics never allocate.
pub(crate) fn set_names(names: &[String]) -> SetNames {
    static KEPT: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut kept = KEPT.lock().unwrap_or_else(|p| p.into_inner());
    names
        .iter()
        .map(|n| match kept.iter().find(|k| **k == n.as_str()) {
            Some(k) => *k,
            None => {
                let k: &'static str = Box::leak(n.clone().into_boxed_str());
                kept.push(k);
                k
            }
        })
        .collect()
}

/// A pod: its ordinal within its backend set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OrdinalLabel {
    pub ordinal: u32,
    pub set: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClosedLabels {
    pub ordinal: u32,
    pub reason: &'static str,
    /// `h1` (an HTTP/1.1 upgrade) or `h2` (an HTTP/2 stream).
    pub protocol: &'static str,
    /// The backend set of the pod.
    pub set: &'static str,
}

/// A backend set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SetLabel {
    pub set: &'static str,
}

/// What a set was asked, and what the client got.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SetRequestLabels {
    pub set: &'static str,
    /// `websocket` or `http`.
    pub kind: &'static str,
    pub status: u16,
}

/// What a set was asked.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SetKindLabels {
    pub set: &'static str,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatusLabel {
    pub status: u16,
    /// `h1` or `h2`: how the request came.
    pub protocol: &'static str,
}

/// The protocol label of a request of `version`.
pub(crate) fn protocol(version: http::Version) -> &'static str {
    if version == http::Version::HTTP_2 {
        "h2"
    } else {
        "h1"
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabel {
    pub direction: &'static str,
}

/// What a setting applies to (the upgrade budget's: `router`, `pod`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ScopeLabel {
    pub scope: &'static str,
}

/// A kind of thing counted (a TLS handshake's: `full`, `resumed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// The routing fingerprint, as hex digests: one series at a time per router.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FingerprintLabels {
    pub config: String,
    pub membership: String,
}
