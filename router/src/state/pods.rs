//! Which backend pods are known not to be ready, from the Service's EndpointSlices.
//! The data path answers 503 at once for a tenant whose pod is in this set, instead of
//! waiting for a connect timeout; the tenant is not moved (its state lives on that pod).

use std::sync::Arc;

use arc_swap::ArcSwap;

/// Ordinals of pods whose endpoints say `ready: false`. Pods the slices do not mention
/// are unknown, not "not ready": they get a connection attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotReadyPods {
    sorted: Vec<u32>,
}

impl NotReadyPods {
    pub fn new(mut ordinals: Vec<u32>) -> Self {
        ordinals.sort_unstable();
        ordinals.dedup();
        Self { sorted: ordinals }
    }

    #[inline]
    pub fn contains(&self, ordinal: u32) -> bool {
        !self.sorted.is_empty() && self.sorted.binary_search(&ordinal).is_ok()
    }

    pub fn ordinals(&self) -> &[u32] {
        &self.sorted
    }
}

/// The slot the EndpointSlice watcher stores into and the data path loads from.
pub type PodReadiness = Arc<ArcSwap<NotReadyPods>>;
