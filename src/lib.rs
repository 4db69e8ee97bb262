//! The wsrouter routing contract. Every router replica and every tool must give the
//! same answer for the same input, so this crate is pure: no I/O, no clock, no async.
//!
//! - [`namespace`]: the tenant namespace from a request path, validated as a DNS-1123 label.
//! - [`hash`]: `XXH3-64(namespace, seed 0)` then jump consistent hash onto a replica count.
//! - [`overrides`]: per-tenant override targets (`"3"` or `"backend-3"`), parsed and validated.
//! - [`split`]: which backend set (version) a tenant goes to: pinned, header or cookie
//!   rules, then a weight over a split hash of its own, so raising it never flaps a tenant.
//! - [`backends`]: how an ordinal becomes a backend (static list, template, or pods).
//! - [`members`]: the pod at each ordinal, merged from the Service's EndpointSlices.
//! - [`fingerprint`]: digests equal on two routers exactly when they route alike.
//! - [`table`]: [`RoutingTable`], the immutable value the data path loads once per connection.

pub mod backends;
pub mod fingerprint;
pub mod hash;
pub mod members;
pub mod namespace;
pub mod overrides;
pub mod split;
pub mod table;

pub use backends::{Backend, BackendTemplate, Backends, BackendsError, TemplateError};
pub use fingerprint::Fingerprint;
pub use hash::{jump_consistent_hash, ordinal_for, tenant_key};
pub use members::{Member, Members, SliceEndpoint};
pub use namespace::{
    check_path_rest, query_param, validate_namespace, AmbiguousPath, NamespaceError, PathError,
    PathPrefix, PrefixError, RepeatedParam, TenantFrom, TenantFromError,
};
pub use overrides::{
    parse_configmap, parse_target, ConfigMapData, OverrideError, Overrides, OverridesError,
    TargetError, TenantLimits,
};
pub use split::{Hint, Hints, SetSource, Split, SplitError};
pub use table::{
    BackendSet, Route, RouteSource, RoutingTable, SetId, SetSpec, TableDiff, TableError,
    TableSource, DEFAULT_STABLE_SET, STABLE,
};
