//! Metric label sets, bounded (ordinals, reasons, statuses, directions; never tenants or
//! addresses). A leaf, so each component can label its own series without depending on
//! the registry.

use prometheus_client::encoding::EncodeLabelSet;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OrdinalLabel {
    pub ordinal: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ClosedLabels {
    pub ordinal: u32,
    pub reason: &'static str,
    /// `h1` (an HTTP/1.1 upgrade) or `h2` (an HTTP/2 stream).
    pub protocol: &'static str,
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
