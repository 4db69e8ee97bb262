//! [`RoutingTable`]: everything the data path needs to route a tenant, as one immutable
//! value. The control plane builds and validates a new one off the hot path and publishes
//! it whole; a connection loads it once and keeps the backend it picked for life.

use std::num::NonZeroU32;

use thiserror::Error;

use crate::backends::{Backend, Backends};
use crate::fingerprint::Fingerprint;
use crate::hash::ordinal_for;
use crate::overrides::{Overrides, TenantLimits};
use crate::split::{Hints, SetSource, Split, SplitError};

/// A backend set's place in its table's [`RoutingTable::sets`]: fixed by the router's
/// flags, so the same set has the same id in every table. `0` is the stable set.
pub type SetId = u8;

/// The stable set's id.
pub const STABLE: SetId = 0;

/// The stable set's name unless told (`--stable-set`).
pub const DEFAULT_STABLE_SET: &str = "stable";

/// One backend set (a StatefulSet, a version of the backend) as a table holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSet {
    name: Box<str>,
    /// 0 for a set with no pods (a canary scaled to zero, or a StatefulSet not there):
    /// its tenants stay on the stable set meanwhile.
    replicas: u32,
    backends: Vec<Backend>,
}

impl BackendSet {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// The backend of each ordinal, in order.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }
}

/// What a table needs to know of a set beyond the stable one.
#[derive(Debug, Clone, Copy)]
pub struct SetSpec<'a> {
    pub name: &'a str,
    pub backends: &'a Backends,
    /// 0: no pods.
    pub replicas: u32,
}

/// Where a table's overrides came from, for logs and the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableSource {
    /// No overrides source: flags only.
    Flags,
    /// A local overrides file (a ConfigMap manifest).
    File { path: String },
    /// A ConfigMap mounted as a directory (one file per key).
    Directory { path: String },
    /// A ConfigMap watched through the Kubernetes API.
    ConfigMap {
        namespace: String,
        name: String,
        /// `metadata.resourceVersion` of the object applied; empty when it does not exist.
        resource_version: String,
    },
}

impl std::fmt::Display for TableSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Flags => f.write_str("flags"),
            Self::File { path } => write!(f, "file:{path}"),
            Self::Directory { path } => write!(f, "dir:{path}"),
            Self::ConfigMap {
                namespace,
                name,
                resource_version,
            } => write!(f, "configmap:{namespace}/{name}@{resource_version}"),
        }
    }
}

/// What changed between two tables, for the one log line per swap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableDiff {
    pub added: Vec<(String, u32)>,
    /// `(namespace, old target, new target)`.
    pub changed: Vec<(String, u32, u32)>,
    pub removed: Vec<(String, u32)>,
    pub replicas_before: u32,
    pub replicas_after: u32,
    /// Whether some ordinal's backend differs (a new address or pod, or one that started
    /// or stopped taking new connections).
    pub backends_changed: bool,
    /// Whether the per-tenant settings differ.
    pub limits_changed: bool,
    /// Whether the version split differs (canary, weight, rules, pinned tenants).
    pub split_changed: bool,
    /// `(set, replicas before, after)` for each set beyond the stable one that changed.
    pub set_replicas: Vec<(String, u32, u32)>,
}

impl TableDiff {
    /// Nothing a client could notice: publishing would only bump the version.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.changed.is_empty()
            && self.removed.is_empty()
            && self.replicas_before == self.replicas_after
            && !self.backends_changed
            && !self.limits_changed
            && !self.split_changed
            && self.set_replicas.is_empty()
    }
}

impl std::fmt::Display for TableDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "overrides +{} ~{} -{}, replicas {}→{}",
            self.added.len(),
            self.changed.len(),
            self.removed.len(),
            self.replicas_before,
            self.replicas_after
        )?;
        for (set, before, after) in &self.set_replicas {
            write!(f, ", set {set} replicas {before}→{after}")?;
        }
        if self.split_changed {
            f.write_str(", split changed")?;
        }
        if self.limits_changed {
            f.write_str(", tenant limits changed")?;
        }
        if self.backends_changed {
            f.write_str(", backends changed")?;
        }
        Ok(())
    }
}

/// Whether a route came from the hash or from an override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSource {
    Hash,
    Override,
}

impl RouteSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hash => "hash",
            Self::Override => "override",
        }
    }
}

/// The routing decision for one tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'t> {
    /// The backend set, and why (see [`crate::split`]).
    pub set: SetId,
    pub why: SetSource,
    /// The pod's ordinal within its set.
    pub ordinal: u32,
    pub backend: &'t Backend,
    pub source: RouteSource,
    /// An override for this tenant that points beyond the current replicas, so the hash
    /// answered instead.
    pub inactive_override: Option<u32>,
    /// The set the split chose has no pods now, so the tenant is on the stable set.
    pub unavailable_set: Option<SetId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TableError {
    #[error(
        "{replicas} replicas requested but only {addresses} static backend addresses are known"
    )]
    TooFewAddresses { replicas: u32, addresses: usize },
    #[error("backend set {set:?}: {replicas} replicas requested but only {addresses} static backend addresses are known")]
    SetTooFewAddresses {
        set: String,
        replicas: u32,
        addresses: usize,
    },
    #[error("more than {} backend sets, or two with one name", SetId::MAX)]
    BadSets,
    /// The split names sets the table does not have, each by its key.
    #[error("the split names backend sets this router does not have: {0:?}")]
    UnknownSets(Vec<SplitError>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingTable {
    version: u64,
    source: TableSource,
    /// The stable set's, also `sets[0].replicas`.
    replicas: NonZeroU32,
    /// The stable set first, then the others in the order the flags give them.
    sets: Vec<BackendSet>,
    overrides: Overrides,
    split: Split,
    limits: TenantLimits,
    fingerprint: Fingerprint,
}

impl RoutingTable {
    /// Builds a table for `replicas` pods. A static backend list must cover every ordinal;
    /// a template renders one address per ordinal; pods not named yet are unknown.
    pub fn build(
        version: u64,
        source: TableSource,
        backends: &Backends,
        replicas: NonZeroU32,
        overrides: Overrides,
    ) -> Result<Self, TableError> {
        let backends = backends.backends(replicas);
        if backends.len() < replicas.get() as usize {
            return Err(TableError::TooFewAddresses {
                replicas: replicas.get(),
                addresses: backends.len(),
            });
        }
        let sets = vec![BackendSet {
            name: DEFAULT_STABLE_SET.into(),
            replicas: replicas.get(),
            backends,
        }];
        let split = Split::default();
        let fingerprint = Fingerprint::of_sets(&sets, &overrides, &split);
        Ok(Self {
            version,
            source,
            replicas,
            sets,
            overrides,
            split,
            limits: TenantLimits::default(),
            fingerprint,
        })
    }

    /// The table with the stable set named `stable`, the `others` beside it, and tenants
    /// split over them by `split`, which may name only these sets.
    pub fn with_sets(
        mut self,
        stable: &str,
        others: &[SetSpec<'_>],
        split: Split,
    ) -> Result<Self, TableError> {
        if others.len() >= usize::from(SetId::MAX) {
            return Err(TableError::BadSets);
        }
        self.sets.truncate(1);
        self.sets[0].name = stable.into();
        for spec in others {
            if self.sets.iter().any(|s| &*s.name == spec.name) {
                return Err(TableError::BadSets);
            }
            let backends = match NonZeroU32::new(spec.replicas) {
                Some(n) => spec.backends.backends(n),
                None => Vec::new(),
            };
            if backends.len() < spec.replicas as usize {
                return Err(TableError::SetTooFewAddresses {
                    set: spec.name.to_owned(),
                    replicas: spec.replicas,
                    addresses: backends.len(),
                });
            }
            self.sets.push(BackendSet {
                name: spec.name.into(),
                replicas: spec.replicas,
                backends,
            });
        }
        let names: Vec<&str> = self.sets.iter().map(|s| &*s.name).collect();
        let unknown = split.unknown_sets(&names);
        if !unknown.is_empty() {
            return Err(TableError::UnknownSets(unknown));
        }
        self.split = split;
        self.fingerprint = Fingerprint::of_sets(&self.sets, &self.overrides, &self.split);
        Ok(self)
    }

    /// Routes a tenant as a request without canary header or cookie. `namespace` must
    /// already be validated.
    #[inline]
    pub fn route(&self, namespace: &str) -> Route<'_> {
        self.route_for(namespace, Hints::default())
    }

    /// Routes one request of a tenant: its pod override first (a pod of the stable set),
    /// then the split picks the set (pinned, header, cookie, weight), then the pod hash
    /// picks the pod among that set's replicas.
    #[inline]
    pub fn route_for(&self, namespace: &str, hints: Hints) -> Route<'_> {
        let inactive_override = match self.overrides.get(namespace) {
            Some(o) if o < self.replicas.get() => {
                return self.stable_route(o, RouteSource::Override, SetSource::Override, None)
            }
            other => other,
        };
        let mut route = if self.split.is_none() {
            self.stable_route(
                ordinal_for(namespace, self.replicas),
                RouteSource::Hash,
                SetSource::Stable,
                None,
            )
        } else {
            self.split_route(namespace, hints)
        };
        route.inactive_override = inactive_override;
        route
    }

    fn stable_route(
        &self,
        ordinal: u32,
        source: RouteSource,
        why: SetSource,
        unavailable_set: Option<SetId>,
    ) -> Route<'_> {
        Route {
            set: STABLE,
            why,
            ordinal,
            backend: &self.sets[0].backends[ordinal as usize],
            source,
            inactive_override: None,
            unavailable_set,
        }
    }

    /// The set the split picks, and the tenant's pod in it.
    fn split_route(&self, namespace: &str, hints: Hints) -> Route<'_> {
        let choice = self.split.choose(namespace, hints.header, hints.cookie);
        let id = choice
            .set
            .and_then(|name| self.set_id(name))
            .unwrap_or(STABLE);
        let set = &self.sets[usize::from(id)];
        match NonZeroU32::new(set.replicas) {
            Some(n) if id != STABLE => {
                let ordinal = ordinal_for(namespace, n);
                Route {
                    set: id,
                    why: choice.why,
                    ordinal,
                    backend: &set.backends[ordinal as usize],
                    source: RouteSource::Hash,
                    inactive_override: None,
                    unavailable_set: None,
                }
            }
            _ => self.stable_route(
                ordinal_for(namespace, self.replicas),
                RouteSource::Hash,
                choice.why,
                (id != STABLE).then_some(id),
            ),
        }
    }

    /// The id of the set named `name`.
    pub fn set_id(&self, name: &str) -> Option<SetId> {
        let i = self.sets.iter().position(|s| &*s.name == name)?;
        SetId::try_from(i).ok()
    }

    /// The stable set first, then the others in flag order.
    pub fn sets(&self) -> &[BackendSet] {
        &self.sets
    }

    /// The set with id `id`; the stable set for an id this table does not have.
    pub fn set(&self, id: SetId) -> &BackendSet {
        self.sets.get(usize::from(id)).unwrap_or(&self.sets[0])
    }

    pub fn split(&self) -> &Split {
        &self.split
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn source(&self) -> &TableSource {
        &self.source
    }

    pub fn replicas(&self) -> NonZeroU32 {
        self.replicas
    }

    pub fn overrides(&self) -> &Overrides {
        &self.overrides
    }

    /// The stable set's backend of each ordinal, in order.
    pub fn backends(&self) -> &[Backend] {
        &self.sets[0].backends
    }

    /// The table with these per-tenant settings (they do not decide routes, so the
    /// fingerprint stays as it is).
    pub fn with_limits(mut self, limits: TenantLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &TenantLimits {
        &self.limits
    }

    /// What every replica holding the same routing state shows.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// What changes from `self` to `next`.
    pub fn diff(&self, next: &RoutingTable) -> TableDiff {
        let mut d = TableDiff {
            replicas_before: self.replicas.get(),
            replicas_after: next.replicas.get(),
            backends_changed: self
                .sets
                .iter()
                .zip(&next.sets)
                .any(|(a, b)| a.backends.len() == b.backends.len() && a.backends != b.backends),
            limits_changed: self.limits != next.limits,
            split_changed: self.split != next.split,
            set_replicas: self
                .sets
                .iter()
                .zip(&next.sets)
                .skip(1)
                .filter(|(a, b)| a.replicas != b.replicas)
                .map(|(a, b)| (b.name.to_string(), a.replicas, b.replicas))
                .collect(),
            ..TableDiff::default()
        };
        // Walk the maps as they are and sort only what differs: typically a few
        // entries out of many thousands.
        for (ns, new) in next.overrides.iter() {
            match self.overrides.get(ns) {
                None => d.added.push((ns.to_owned(), new)),
                Some(old) if old != new => d.changed.push((ns.to_owned(), old, new)),
                Some(_) => {}
            }
        }
        for (ns, old) in self.overrides.iter() {
            if next.overrides.get(ns).is_none() {
                d.removed.push((ns.to_owned(), old));
            }
        }
        d.added.sort_unstable();
        d.changed.sort_unstable();
        d.removed.sort_unstable();
        d
    }

    /// Whether `namespace` routes to a different pod (set or ordinal) under `next`.
    #[inline]
    pub fn moves(&self, next: &RoutingTable, namespace: &str) -> bool {
        let (a, b) = (self.route(namespace), next.route(namespace));
        (a.set, a.ordinal) != (b.set, b.ordinal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::BackendTemplate;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn template() -> Backends {
        Backends::Template(
            BackendTemplate::parse("{statefulset}-{i}:9000", "backend", "backend", "default")
                .unwrap(),
        )
    }

    #[test]
    fn hash_routes_follow_the_golden_vectors() {
        for (r, want) in [
            (1, [0, 0, 0]),
            (4, [2, 1, 3]),
            (8, [2, 1, 6]),
            (16, [2, 9, 6]),
        ] {
            let t = RoutingTable::build(
                1,
                TableSource::Flags,
                &template(),
                nz(r),
                Overrides::default(),
            )
            .unwrap();
            for (ns, w) in ["ns-01", "ns-02", "acme-prod"].iter().zip(want) {
                let route = t.route(ns);
                assert_eq!(route.ordinal, w, "{ns} over {r}");
                assert_eq!(route.source, RouteSource::Hash);
                assert_eq!(
                    route.backend,
                    &Backend::Addr(format!("backend-{w}:9000").into())
                );
                assert_eq!(route.inactive_override, None);
            }
        }
    }

    #[test]
    fn overrides_win_when_active_and_fall_back_when_not() {
        let o = Overrides::parse([("ns-01", "0"), ("acme-prod", "backend-5")], "backend").unwrap();
        let t = RoutingTable::build(7, TableSource::Flags, &template(), nz(4), o.clone()).unwrap();
        assert_eq!(t.version(), 7);
        let r = t.route("ns-01");
        assert_eq!(
            (r.ordinal, r.source, r.inactive_override),
            (0, RouteSource::Override, None)
        );
        // Override to ordinal 5 with 4 replicas: inactive, the hash answers.
        let r = t.route("acme-prod");
        assert_eq!(
            (r.ordinal, r.source, r.inactive_override),
            (3, RouteSource::Hash, Some(5))
        );
        // Once the StatefulSet has 6 pods, it is active.
        let t = RoutingTable::build(8, TableSource::Flags, &template(), nz(6), o).unwrap();
        let r = t.route("acme-prod");
        assert_eq!(
            (r.ordinal, r.source, r.backend.address().as_deref()),
            (5, RouteSource::Override, Some("backend-5:9000"))
        );
    }

    #[test]
    fn static_list_must_cover_replicas() {
        let b = Backends::static_list(vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()]).unwrap();
        assert!(
            RoutingTable::build(1, TableSource::Flags, &b, nz(2), Overrides::default()).is_ok()
        );
        assert_eq!(
            RoutingTable::build(1, TableSource::Flags, &b, nz(3), Overrides::default()),
            Err(TableError::TooFewAddresses {
                replicas: 3,
                addresses: 2
            })
        );
    }

    #[test]
    fn diff_names_what_changed() {
        let build = |r, entries: &[(&str, &str)]| {
            RoutingTable::build(
                1,
                TableSource::Flags,
                &template(),
                nz(r),
                Overrides::parse(entries.iter().copied(), "backend").unwrap(),
            )
            .unwrap()
        };
        let a = build(4, &[("ns-01", "0"), ("ns-02", "1"), ("gone", "2")]);
        let b = build(
            5,
            &[("ns-01", "0"), ("ns-02", "3"), ("new-one", "backend-4")],
        );
        let d = a.diff(&b);
        assert_eq!(d.added, vec![("new-one".to_owned(), 4)]);
        assert_eq!(d.changed, vec![("ns-02".to_owned(), 1, 3)]);
        assert_eq!(d.removed, vec![("gone".to_owned(), 2)]);
        assert_eq!((d.replicas_before, d.replicas_after), (4, 5));
        assert!(!d.backends_changed);
        assert_eq!(d.to_string(), "overrides +1 ~1 -1, replicas 4→5");
        assert!(!d.is_empty());
        let same_routes_new_version = RoutingTable::build(
            9,
            TableSource::Flags,
            &template(),
            nz(4),
            a.overrides().clone(),
        )
        .unwrap();
        assert!(a.diff(&same_routes_new_version).is_empty());
        // Who moves: the overridden tenant, and hash tenants that land on the new ordinal.
        assert!(a.moves(&b, "ns-02"));
        assert!(!a.moves(&b, "ns-01"));
        let moved = (0..2000).filter(|i| a.moves(&b, &format!("t-{i}"))).count();
        assert!(
            (250..550).contains(&moved),
            "about 1/5 of hash tenants move: {moved}"
        );
    }

    #[test]
    fn addresses_are_listed_in_ordinal_order() {
        let t = RoutingTable::build(
            1,
            TableSource::Flags,
            &template(),
            nz(3),
            Overrides::default(),
        )
        .unwrap();
        let v: Vec<_> = t.backends().iter().filter_map(Backend::address).collect();
        assert_eq!(v, ["backend-0:9000", "backend-1:9000", "backend-2:9000"]);
        assert_eq!(t.source().to_string(), "flags");
    }
}

#[cfg(test)]
mod sets_tests;
