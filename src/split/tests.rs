//! The split, exhaustively where it can be: the weight moves exactly the tenants in the
//! bucket range between two weights, the shares hold, rules beat the weight, and every
//! bad entry is named.

use super::*;

fn split(entries: &[(&str, &str)]) -> Split {
    Split::parse(entries.iter().copied()).unwrap_or_else(|e| panic!("{e:?}"))
}

fn weighted(percent: &str) -> Split {
    split(&[(CANARY_SET_KEY, "v2"), (CANARY_WEIGHT_KEY, percent)])
}

fn tenants() -> impl Iterator<Item = String> {
    (0..100_000).map(|i| format!("tenant-{i}"))
}

#[test]
fn raising_the_weight_moves_exactly_the_buckets_between_and_lowering_moves_them_back() {
    for (w1, w2) in [
        ("5", "10"),
        ("0", "20"),
        ("20", "50"),
        ("50", "100"),
        ("0.25", "0.5"),
    ] {
        let (a, b) = (weighted(w1), weighted(w2));
        let (lo, hi) = (
            a.canary().map_or(0, |c| c.weight),
            b.canary().map_or(0, |c| c.weight),
        );
        let mut on_v2 = 0usize;
        for t in tenants() {
            let (before, after) = (a.choose(&t, None, None).set, b.choose(&t, None, None).set);
            let bucket = split_bucket(&t);
            let moved = before != after;
            assert_eq!(
                moved,
                (lo..hi).contains(&bucket),
                "{t}: bucket {bucket}, {w1} → {w2}"
            );
            if moved {
                // Only ever onto the canary when raising; lowering is the reverse.
                assert_eq!((before, after), (None, Some("v2")), "{t}");
                assert_eq!(
                    b.choose(&t, None, None),
                    Choice {
                        set: Some("v2"),
                        why: SetSource::Weight { bucket }
                    }
                );
            }
            if after.is_some() {
                on_v2 += 1;
            }
        }
        // The share on v2 is within 1% (of all tenants) of the weight.
        let share = on_v2 as f64 / 1000.0;
        assert!(
            (share - f64::from(hi) / 100.0).abs() < 1.0,
            "{w2}%: {share}%"
        );
    }
}

#[test]
fn buckets_are_independent_of_the_pod_hash() {
    // Among the tenants on pod 0 of 4, about a tenth are in the first tenth of buckets:
    // the version draw does not follow the pod.
    let four = std::num::NonZeroU32::new(4).unwrap_or(std::num::NonZeroU32::MIN);
    let on_zero: Vec<String> = tenants()
        .filter(|t| crate::ordinal_for(t, four) == 0)
        .collect();
    let low = on_zero.iter().filter(|t| split_bucket(t) < 1000).count();
    let share = low as f64 / on_zero.len() as f64;
    assert!((0.09..0.11).contains(&share), "{share}");
    // And the contract is fixed: a golden value.
    assert_eq!(split_bucket("acme"), split_bucket("acme"));
    assert!(split_bucket("acme") < BUCKETS);
}

#[test]
fn pinned_tenants_then_header_then_cookie_then_weight() {
    let s = split(&[
        (CANARY_SET_KEY, "v2"),
        (CANARY_WEIGHT_KEY, "0"),
        ("set.acme", "v3"),
    ]);
    let always = Some(Hint::Always);
    let never = Some(Hint::Never);
    assert_eq!(
        s.choose("acme", never, never),
        Choice {
            set: Some("v3"),
            why: SetSource::Pinned
        }
    );
    assert_eq!(
        s.choose("globex", always, never),
        Choice {
            set: Some("v2"),
            why: SetSource::Header
        }
    );
    assert_eq!(
        s.choose("globex", never, always),
        Choice {
            set: None,
            why: SetSource::Header
        }
    );
    assert_eq!(
        s.choose("globex", None, always),
        Choice {
            set: Some("v2"),
            why: SetSource::Cookie
        }
    );
    assert_eq!(
        s.choose("globex", None, None),
        Choice {
            set: None,
            why: SetSource::Stable
        }
    );
    // Blue/green: 100 sends everyone, and no rule is needed.
    let all = weighted("100");
    assert!(tenants()
        .take(1000)
        .all(|t| all.choose(&t, None, None).set == Some("v2")));
    assert_eq!(
        all.choose("x", never, None).set,
        None,
        "a rule still opts out"
    );
}

#[test]
fn no_split_sends_everyone_to_the_stable_set_whatever_they_ask() {
    let s = Split::default();
    assert_eq!(
        s.choose("acme", Some(Hint::Always), Some(Hint::Always)),
        Choice {
            set: None,
            why: SetSource::Stable
        }
    );
    assert_eq!((s.header(), s.cookie()), (DEFAULT_HEADER, DEFAULT_COOKIE));
    assert_eq!(
        Split::parse(std::iter::empty::<(&str, &str)>()),
        Ok(Split::default())
    );
}

#[test]
fn hints_and_weights_parse_strictly() {
    assert_eq!(Hint::parse(" Always "), Some(Hint::Always));
    assert_eq!(Hint::parse("NEVER"), Some(Hint::Never));
    assert_eq!(Hint::parse("sometimes"), None);
    assert_eq!(Hint::parse(""), None);
    for (v, w) in [
        ("0", 0),
        ("5", 500),
        ("5%", 500),
        ("0.25", 25),
        ("12.5", 1250),
        ("100", 10_000),
        (" 7 ", 700),
    ] {
        assert_eq!(parse_weight(v), Some(w), "{v}");
    }
    for v in [
        "",
        "-1",
        "101",
        "100.01",
        "1.234",
        "1e2",
        "five",
        ".5",
        "5.",
        "NaN",
        "4294967296",
    ] {
        assert_eq!(parse_weight(v), None, "{v:?}");
    }
}

#[test]
fn names_are_settable_and_checked() {
    let s = split(&[
        (CANARY_HEADER_KEY, "X-Version-Pin"),
        (CANARY_COOKIE_KEY, "beta"),
    ]);
    assert_eq!((s.header(), s.cookie()), ("x-version-pin", "beta"));
    assert!(s.canary().is_none());
}

#[test]
fn every_bad_entry_is_named_and_rejects_the_update() {
    let errors = Split::parse([
        (CANARY_WEIGHT_KEY, "150"),
        (CANARY_HEADER_KEY, "has space"),
        ("set.Bad_Tenant", "v2"),
        ("set.acme", "Not A Set"),
        ("canary.colour", "blue"),
    ])
    .err()
    .unwrap_or_default();
    let keys: Vec<&str> = errors.iter().map(SplitError::key).collect();
    assert_eq!(
        keys,
        [
            "canary.weight",
            "canary.header",
            "set.Bad_Tenant",
            "set.acme",
            "canary.colour",
        ]
    );
    assert_eq!(
        Split::parse([(CANARY_WEIGHT_KEY, "5")]),
        Err(vec![SplitError::WeightWithoutSet])
    );
    assert_eq!(SplitError::WeightWithoutSet.key(), CANARY_WEIGHT_KEY);
    assert!(is_split_key("canary.set") && is_split_key("set.acme"));
    assert!(!is_split_key("max-connections.acme") && !is_split_key("acme"));
}

/// The split buckets of the contract's golden tenants, recomputed with Python's
/// `xxhash.xxh3_64_intdigest(ns, seed=0x73706c69745f7631) % 10000`: another tool must
/// give the same.
#[test]
fn split_buckets_follow_the_golden_vectors() {
    for (ns, bucket) in [("ns-01", 8130), ("ns-02", 6761), ("acme-prod", 6308)] {
        assert_eq!(split_bucket(ns), bucket, "{ns}");
    }
}
