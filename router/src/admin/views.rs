//! The JSON the admin listener serves and the operator commands read or print: one set
//! of types for both sides, so a field renamed on one side fails to compile on the
//! other instead of reading back as nothing.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `GET /table`: the routing table in force, where it came from, and the live tenants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableView {
    pub version: u64,
    pub source: String,
    pub replicas: u32,
    pub fingerprint: FingerprintView,
    /// Each ordinal's backend, in order.
    pub backends: Vec<BackendView>,
    /// Every override, namespace → ordinal, active or not.
    pub overrides: BTreeMap<String, u32>,
    /// Overrides that point beyond the current replicas (the tenant follows its hash).
    pub inactive_overrides: BTreeMap<String, u32>,
    /// Tenants with their own connection cap from the ConfigMap (`null`: unlimited).
    pub tenant_max_connections: BTreeMap<String, Option<u32>>,
    /// Namespace → live sockets on this router.
    pub live_tenants: BTreeMap<String, u64>,
    /// The router's upgrade budgets (`null`: off); absent from older routers.
    #[serde(default)]
    pub upgrade_budget: UpgradeBudgetView,
    /// The backend sets beside the stable one (whose pods are `backends`); empty with
    /// one set, and from older routers.
    #[serde(default)]
    pub sets: Vec<SetView>,
    /// The stable set's name (`--stable-set`).
    #[serde(default)]
    pub stable_set: String,
    /// How tenants are split over the sets.
    #[serde(default)]
    pub split: SplitView,
}

/// A backend set beside the stable one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetView {
    pub name: String,
    /// 0: no pods (its tenants are on the stable set meanwhile).
    pub replicas: u32,
    pub backends: Vec<BackendView>,
}

/// The version split from the ConfigMap.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitView {
    /// The canary set and the percent of tenants its weight sends there.
    pub canary_set: Option<String>,
    pub canary_weight_percent: f64,
    /// The request header and cookie that say `always` or `never`.
    pub header: String,
    pub cookie: String,
    /// Tenants pinned to a set.
    pub pinned: BTreeMap<String, String>,
}

/// New upgrades per second the router lets through, in all and per pod.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeBudgetView {
    pub per_second: Option<u32>,
    pub per_pod_per_second: Option<u32>,
}

/// `GET /route/{namespace}`: how a tenant routes now, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    pub namespace: String,
    pub ordinal: u32,
    pub backend: BackendView,
    /// `hash` or `override`.
    pub source: String,
    /// Where the hash alone would send the tenant.
    pub hash_ordinal: u32,
    #[serde(rename = "override")]
    pub override_: Option<OverrideView>,
    pub live_sockets: u64,
    /// The most live sockets this tenant may hold on this router (`None`: no cap).
    pub max_connections: Option<u32>,
    pub table_version: u64,
    pub table_source: String,
    pub fingerprint: FingerprintView,
    /// The backend set (version) the tenant goes to, and why: `stable`, `override`,
    /// `pinned`, `header`, `cookie` or `weight`.
    #[serde(default)]
    pub set: String,
    #[serde(default)]
    pub set_reason: String,
    /// The tenant's split bucket (0..10,000): under the canary's weight in hundredths
    /// of a percent, it goes to the canary.
    #[serde(default)]
    pub split_bucket: u32,
    /// The set the split chose, which has no pods now (the tenant is on the stable set).
    #[serde(default)]
    pub unavailable_set: Option<String>,
}

/// The routing fingerprint: equal on every replica that routes alike.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FingerprintView {
    /// Digest of the contract, the replicas and every override (16 hex digits).
    pub config: String,
    /// Digest of which pod (or address) holds each ordinal (16 hex digits).
    pub membership: String,
}

/// One ordinal's backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendView {
    pub ordinal: u32,
    /// `HOST:PORT` (`None` while no pod is known).
    pub address: Option<String>,
    /// The pod's name and UID, when the EndpointSlices name it.
    pub pod: Option<String>,
    pub uid: Option<String>,
    /// `address` (a list or template entry, connected to as is), `serving`,
    /// `not_serving`, `terminating` or `unknown`: only `address` and `serving` get new
    /// connections.
    pub state: String,
    /// The circuit breaker for its address: `closed`, `open` (503 at once for the
    /// cool-down) or `half_open` (one probe let through).
    pub circuit: String,
}

/// The tenant's override, if it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverrideView {
    pub target: u32,
    pub active: bool,
    /// Why an inactive override does not apply.
    pub reason: Option<String>,
}

/// `wsrouter route NAMESPACE --json`: the routing contract for one namespace, offline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ContractView {
    pub namespace: String,
    /// `XXH3-64(namespace, seed 0)` as `0x` and 16 hex digits.
    pub xxh3_64: String,
    pub replicas: u32,
    pub ordinal: u32,
    pub pod: String,
    /// `hash` or `override`.
    pub source: String,
    /// An override beyond the replicas, which the hash overruled.
    pub inactive_override: Option<u32>,
    /// The routing config fingerprint of these replicas and overrides (16 hex digits),
    /// as every router holding them shows it.
    pub config_fingerprint: String,
    /// Its split bucket (0..10,000): with a canary at weight W%, it is on the canary when
    /// this is below W × 100.
    pub split_bucket: u32,
}

/// An admin endpoint's refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorView {
    pub error: String,
}
