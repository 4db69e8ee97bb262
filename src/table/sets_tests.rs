//! Tables with backend sets: one set routes exactly as before (same fingerprint), the
//! split picks the set and the pod hash the pod within it, overrides beat the split, a
//! set without pods keeps its tenants on the stable set, and the split may name only
//! the sets the table has.

use std::num::NonZeroU32;

use super::*;
use crate::backends::Backends;
use crate::fingerprint::{sets_config_text, sets_membership_text};
use crate::split::{cookie_hint, split_bucket, Hint, CANARY_SET_KEY, CANARY_WEIGHT_KEY};

fn list(prefix: &str, n: u16) -> Backends {
    Backends::static_list((0..n).map(|i| format!("{prefix}:{}", 9000 + i)).collect())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn stable(overrides: &[(&str, &str)]) -> RoutingTable {
    let o =
        Overrides::parse(overrides.iter().copied(), "backend").unwrap_or_else(|e| panic!("{e}"));
    let replicas = NonZeroU32::new(4).unwrap_or(NonZeroU32::MIN);
    RoutingTable::build(1, TableSource::Flags, &list("10.0.0.1", 4), replicas, o)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn split(entries: &[(&str, &str)]) -> Split {
    Split::parse(entries.iter().copied()).unwrap_or_else(|e| panic!("{e:?}"))
}

/// The stable set of 4 beside `v2` with `v2_replicas`, split by `entries`.
fn two_sets(
    v2_replicas: u32,
    entries: &[(&str, &str)],
    overrides: &[(&str, &str)],
) -> RoutingTable {
    let v2 = list("10.0.0.2", 3);
    stable(overrides)
        .with_sets(
            "v1",
            &[SetSpec {
                name: "v2",
                backends: &v2,
                replicas: v2_replicas,
            }],
            split(entries),
        )
        .unwrap_or_else(|e| panic!("{e}"))
}

fn weight(w: &str) -> Vec<(&str, &str)> {
    vec![(CANARY_SET_KEY, "v2"), (CANARY_WEIGHT_KEY, w)]
}

fn tenants(n: usize) -> impl Iterator<Item = String> {
    (0..n).map(|i| format!("tenant-{i}"))
}

#[test]
fn one_set_without_a_split_routes_and_fingerprints_as_before() {
    let before = stable(&[("acme", "2")]);
    let after = stable(&[("acme", "2")])
        .with_sets("stable", &[], Split::default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(before.fingerprint(), after.fingerprint());
    assert_eq!(
        before.fingerprint(),
        Fingerprint::of(4, before.overrides(), before.backends())
    );
    // A weight of 0 on a set the table has changes no tenant's pod.
    let zero = two_sets(3, &weight("0"), &[("acme", "2")]);
    for t in tenants(10_000).chain(["acme".to_owned()]) {
        let (a, b) = (before.route(&t), zero.route(&t));
        assert_eq!(
            (a.set, a.ordinal, a.backend),
            (b.set, b.ordinal, b.backend),
            "{t}"
        );
        assert_eq!(a.set, STABLE);
    }
}

#[test]
fn the_weight_picks_the_set_and_the_pod_hash_the_pod_within_it() {
    let t = two_sets(3, &weight("20"), &[]);
    let mut on_v2 = 0;
    for ns in tenants(20_000) {
        let r = t.route(&ns);
        let bucket = split_bucket(&ns);
        if bucket < 2000 {
            on_v2 += 1;
            assert_eq!((r.set, r.why), (1, SetSource::Weight { bucket }), "{ns}");
            let ordinal = ordinal_for(&ns, NonZeroU32::new(3).unwrap_or(NonZeroU32::MIN));
            assert_eq!(r.ordinal, ordinal);
            assert_eq!(r.backend, &t.sets()[1].backends()[ordinal as usize]);
        } else {
            assert_eq!((r.set, r.why), (STABLE, SetSource::Stable), "{ns}");
            assert_eq!(r.ordinal, ordinal_for(&ns, t.replicas()));
        }
        assert_eq!(r.unavailable_set, None);
    }
    assert!(
        (3_800..4_200).contains(&on_v2),
        "{on_v2} of 20,000 on v2 at 20%"
    );
    assert_eq!(t.set_id("v2"), Some(1));
    assert_eq!(t.set(1).name(), "v2");
    assert_eq!(
        t.set(9).name(),
        "v1",
        "an id the table lacks reads as the stable set"
    );
}

#[test]
fn overrides_beat_pins_rules_and_weight_and_rules_beat_the_weight() {
    let mut entries = weight("100");
    entries.push(("set.pinned", "v1"));
    entries.push(("set.acme", "v2"));
    let t = two_sets(3, &entries, &[("acme", "backend-1"), ("far", "9")]);
    let r = t.route("acme");
    assert_eq!(
        (r.set, r.why, r.ordinal, r.source),
        (STABLE, SetSource::Override, 1, RouteSource::Override)
    );
    // An inactive override (pod 9 of 4) falls through to the split, and says so.
    let r = t.route("far");
    assert_eq!((r.set, r.inactive_override), (1, Some(9)));
    assert_eq!(t.route("pinned").set, STABLE);
    assert_eq!(t.route("pinned").why, SetSource::Pinned);
    let never = Hints {
        header: Some(Hint::Never),
        cookie: None,
    };
    let cookie_always = Hints {
        header: None,
        cookie: Some(Hint::Always),
    };
    let both = Hints {
        header: Some(Hint::Never),
        cookie: Some(Hint::Always),
    };
    for ns in tenants(500) {
        assert_eq!(t.route(&ns).set, 1, "weight 100: everyone on v2");
        let r = t.route_for(&ns, never);
        assert_eq!((r.set, r.why), (STABLE, SetSource::Header));
        assert_eq!(
            t.route_for(&ns, both).why,
            SetSource::Header,
            "the header beats the cookie"
        );
    }
    let w0 = two_sets(3, &weight("0"), &[]);
    for ns in tenants(500) {
        let r = w0.route_for(&ns, cookie_always);
        assert_eq!((r.set, r.why), (1, SetSource::Cookie));
    }
    // Without a canary, hints ask for nothing.
    let none = two_sets(3, &[], &[]);
    assert_eq!(none.route_for("x", cookie_always).set, STABLE);
}

#[test]
fn a_set_without_pods_keeps_its_tenants_on_the_stable_set_until_it_has_some() {
    let empty = two_sets(0, &weight("50"), &[]);
    let up = two_sets(3, &weight("50"), &[]);
    let mut moved = 0;
    for ns in tenants(5_000) {
        let (a, b) = (empty.route(&ns), up.route(&ns));
        assert_eq!(a.set, STABLE);
        let weighted = split_bucket(&ns) < 5_000;
        assert_eq!(a.unavailable_set, weighted.then_some(1), "{ns}");
        assert_eq!(a.ordinal, ordinal_for(&ns, empty.replicas()));
        assert_eq!(empty.moves(&up, &ns), weighted, "{ns}");
        moved += usize::from(weighted);
        assert_eq!(b.set, if weighted { 1 } else { STABLE });
    }
    assert!((2_300..2_700).contains(&moved));
    let d = empty.diff(&up);
    assert_eq!(d.set_replicas, [("v2".to_owned(), 0, 3)]);
    assert!(!d.split_changed && !d.is_empty());
    assert_eq!(
        d.to_string(),
        "overrides +0 ~0 -0, replicas 4→4, set v2 replicas 0→3"
    );
    assert_ne!(empty.fingerprint().config, up.fingerprint().config);
    assert_ne!(empty.fingerprint().membership, up.fingerprint().membership);
}

#[test]
fn the_split_may_name_only_sets_the_table_has() {
    let v2 = list("10.0.0.2", 1);
    let specs = [SetSpec {
        name: "v2",
        backends: &v2,
        replicas: 1,
    }];
    let e = stable(&[])
        .with_sets(
            "v1",
            &specs,
            split(&[("canary.set", "v3"), ("set.a", "v1"), ("set.b", "v9")]),
        )
        .err();
    let Some(TableError::UnknownSets(errors)) = e else {
        panic!("{e:?}");
    };
    let keys: Vec<&str> = errors.iter().map(SplitError::key).collect();
    assert_eq!(keys, ["canary.set", "set.b"]);
    // Two sets of one name, and a static list shorter than its replicas.
    let dup = [
        specs[0],
        SetSpec {
            name: "v1",
            ..specs[0]
        },
    ];
    assert_eq!(
        stable(&[]).with_sets("v1", &dup, Split::default()).err(),
        Some(TableError::BadSets)
    );
    let short = [SetSpec {
        replicas: 2,
        ..specs[0]
    }];
    assert!(matches!(
        stable(&[]).with_sets("v1", &short, Split::default()),
        Err(TableError::SetTooFewAddresses { addresses: 1, .. })
    ));
}

#[test]
fn the_diff_and_the_fingerprint_see_every_part_of_the_split() {
    let a = two_sets(3, &weight("5"), &[]);
    let b = two_sets(3, &weight("10"), &[]);
    let d = a.diff(&b);
    assert!(d.split_changed && d.set_replicas.is_empty());
    assert_eq!(
        d.to_string(),
        "overrides +0 ~0 -0, replicas 4→4, split changed"
    );
    assert_ne!(a.fingerprint().config, b.fingerprint().config);
    assert_eq!(a.fingerprint().membership, b.fingerprint().membership);
    assert!(a.diff(&two_sets(3, &weight("5"), &[])).is_empty());
    let mut pinned = weight("5");
    pinned.push(("set.acme", "v2"));
    pinned.push(("canary.header", "X-Version"));
    let c = two_sets(3, &pinned, &[]);
    assert_eq!(
        sets_config_text(c.sets(), c.overrides(), c.split()),
        "wsrouter-routing 1 xxh3-64 jump\nreplicas 4\nset v2 3\ncanary v2 500\nrules x-version canary\npin acme v2\n"
    );
    assert_eq!(
        sets_membership_text(c.sets())
            .lines()
            .skip(4)
            .collect::<Vec<_>>(),
        [
            "set v2",
            "0 addr 10.0.0.2:9000",
            "1 addr 10.0.0.2:9001",
            "2 addr 10.0.0.2:9002"
        ]
    );
    // Moving between sets is a move, whatever the ordinals.
    let to_v2 = tenants(5_000)
        .find(|t| (500..1000).contains(&split_bucket(t)))
        .unwrap_or_default();
    assert!(a.moves(&b, &to_v2));
}

#[test]
fn a_cookie_header_is_read_by_name() {
    assert_eq!(
        cookie_hint("a=1; canary=always; b=2", "canary"),
        Some(Hint::Always)
    );
    assert_eq!(cookie_hint("canary=\"never\"", "canary"), Some(Hint::Never));
    assert_eq!(
        cookie_hint("canary=never; canary=always", "canary"),
        Some(Hint::Never)
    );
    assert_eq!(cookie_hint("xcanary=always", "canary"), None);
    assert_eq!(cookie_hint("canary=maybe", "canary"), None);
    assert_eq!(cookie_hint("", "canary"), None);
    assert_eq!(cookie_hint("canary", "canary"), None);
}
