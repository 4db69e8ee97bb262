use super::*;

#[test]
fn route_reproduces_the_golden_vectors() {
    let cases = [
        ("ns-01", "0x92a8b9e96c944c02", [0, 1, 2, 2, 2, 2, 2]),
        ("ns-02", "0x0491707bc197bf27", [0, 1, 1, 1, 1, 1, 9]),
        ("acme-prod", "0xf755c6ba18352c29", [0, 1, 1, 3, 3, 6, 6]),
    ];
    for (ns, key, ordinals) in cases {
        for (r, want) in [1, 2, 3, 4, 5, 8, 16].into_iter().zip(ordinals) {
            let v = route(ns, r, None, "backend").unwrap();
            assert_eq!(v.xxh3_64, key);
            assert_eq!(v.ordinal, want, "{ns} over {r}");
            assert_eq!(v.pod, format!("backend-{want}"));
            assert_eq!(v.source, "hash");
        }
    }
    assert!(matches!(
        route("Bad", 4, None, "backend"),
        Err(OpsError::Namespace { .. })
    ));
    assert!(matches!(
        route("ns-01", 0, None, "backend"),
        Err(OpsError::ZeroReplicas)
    ));
}

#[test]
fn plan_names_moved_tenants_and_why() {
    let cur = Current {
        replicas: 4,
        overrides: Overrides::parse([("ns-01", "0"), ("gone", "1"), ("stay", "3")], "backend")
            .unwrap(),
        live: [("ns-02".to_owned(), 2), ("acme-prod".to_owned(), 5)]
            .into_iter()
            .collect(),
        budget: BudgetConfig::default(),
        split: Split::default(),
        stable_set: DEFAULT_STABLE_SET.into(),
        sets: Vec::new(),
    };
    let new = Overrides::parse(
        [("ns-01", "3"), ("stay", "3"), ("acme-prod", "backend-9")],
        "backend",
    )
    .unwrap();
    let p = plan(&cur, new, Some(8), "backend").unwrap();
    let moves: Vec<_> = p
        .moves
        .iter()
        .map(|m| (m.tenant.as_str(), m.from, m.to, m.why, m.live_sockets))
        .collect();
    // ns-02 (live, hash): 1 over 4 → 1 over 8, stays; acme-prod: 3 over 4 → 6 over 8
    // with an inactive override to 9; gone: override 1 removed → hash over 8.
    let gone_hash = wsrouter::ordinal_for("gone", NonZeroU32::new(8).unwrap());
    let mut want = vec![
        ("acme-prod", 3, 6, "replicas changed", 5),
        ("ns-01", 0, 3, "override changed", 0),
    ];
    if gone_hash != 1 {
        want.insert(1, ("gone", 1, gone_hash, "override removed", 0));
    }
    assert_eq!(moves, want);
    assert_eq!((p.added, p.changed, p.removed), (1, 1, 1));
    assert!((p.hash_share_moved - 0.5).abs() < 1e-9);
    assert!(p
        .to_string()
        .starts_with("plan: replicas 4 → 8, overrides +1 ~1 -1"));
}

#[test]
fn plan_says_how_long_reconnects_take_under_the_budgets() {
    let live: BTreeMap<String, u64> = (0..40).map(|i| (format!("t-{i}"), 250)).collect();
    let busiest = {
        let mut per: BTreeMap<u32, u64> = BTreeMap::new();
        for t in live.keys() {
            *per.entry(wsrouter::ordinal_for(t, NonZeroU32::new(4).unwrap()))
                .or_default() += 250;
        }
        per.values().copied().max().unwrap()
    };
    let cur = Current {
        replicas: 4,
        overrides: Overrides::default(),
        live,
        budget: BudgetConfig {
            per_second: Some(1000),
            per_pod_per_second: Some(100),
            ..BudgetConfig::default()
        },
        split: Split::default(),
        stable_set: DEFAULT_STABLE_SET.into(),
        sets: Vec::new(),
    };
    let p = plan(&cur, Overrides::default(), Some(4), "backend").unwrap();
    let r = p.reconnects.clone().unwrap();
    // 10,000 sockets: 10 s at 1,000/s, but the busiest pod's share at 100/s is slower.
    assert_eq!(r.live, 10_000);
    assert_eq!(r.all, Duration::from_secs_f64(busiest as f64 / 100.0));
    assert_eq!((r.moved, r.of_moved), (0, Duration::ZERO));
    assert!(p.to_string().contains(&format!(
        "all 10000 live sockets here in at least {:.1}s",
        busiest as f64 / 100.0
    )));
    // No budgets, no line.
    let none = Current {
        budget: BudgetConfig::default(),
        ..cur
    };
    assert!(plan(&none, Overrides::default(), None, "backend")
        .unwrap()
        .reconnects
        .is_none());
}

fn weighted(w: &str) -> Split {
    Split::parse([("canary.set", "v2"), ("canary.weight", w)]).unwrap_or_else(|e| panic!("{e:?}"))
}

#[test]
fn a_weight_change_moves_the_bucket_range_from_one_set_to_the_other() {
    let live: BTreeMap<String, u64> = (0..400).map(|i| (format!("t-{i}"), 3)).collect();
    let cur = Current {
        replicas: 4,
        overrides: Overrides::default(),
        live: live.clone(),
        budget: BudgetConfig::default(),
        split: weighted("5"),
        stable_set: DEFAULT_STABLE_SET.into(),
        sets: vec![("v2".into(), 2)],
    };
    let new = ConfigMapData {
        split: weighted("10"),
        ..ConfigMapData::default()
    };
    let p = plan_configmap(&cur, new, None, "backend").unwrap_or_else(|e| panic!("{e}"));
    let want: Vec<&String> = live
        .keys()
        .filter(|t| (500..1000).contains(&wsrouter::split::split_bucket(t)))
        .collect();
    let moved: Vec<&String> = p.moves.iter().map(|m| &m.tenant).collect();
    assert_eq!(moved, want);
    assert!(p
        .moves
        .iter()
        .all(|m| (m.from_set.as_str(), m.to_set.as_str(), m.why)
            == ("stable", "v2", "weight changed")));
    let s = p.split.clone().unwrap_or_else(|| panic!("a split plan"));
    let n = want.len();
    let by: BTreeMap<&str, (usize, u64, usize, u64)> = s
        .sets
        .iter()
        .map(|c| {
            (
                c.set.as_str(),
                (c.tenants_in, c.sockets_in, c.tenants_out, c.sockets_out),
            )
        })
        .collect();
    assert_eq!(by["v2"], (n, 3 * n as u64, 0, 0));
    assert_eq!(by["stable"], (0, 0, n, 3 * n as u64));
    assert!((s.share_moved - 0.05).abs() < 1e-9);
    let text = p.to_string();
    assert!(
        text.contains("split: canary v2 at 5% → canary v2 at 10%"),
        "{text}"
    );
    assert!(
        text.contains("tenants not listed: 5.00% change set"),
        "{text}"
    );
    assert!(text.contains("stable/"), "{text}");
    // Blue/green back to stable, a pin, and a pod override each say why.
    let new = ConfigMapData {
        split: Split::parse([("set.t-1", "v2")]).unwrap_or_else(|e| panic!("{e:?}")),
        overrides: Overrides::parse([("t-2", "1")], "backend").unwrap_or_else(|e| panic!("{e}")),
        ..ConfigMapData::default()
    };
    let p = plan_configmap(&cur, new, None, "backend").unwrap_or_else(|e| panic!("{e}"));
    for m in &p.moves {
        let want = match m.tenant.as_str() {
            "t-1" if m.to_set == "v2" => "pinned to a set",
            "t-2" => "override added",
            _ => "weight changed",
        };
        assert_eq!(m.why, want, "{m:?}");
    }
    let share = p.split.map(|s| s.share_moved).unwrap_or_default();
    assert!((share - 0.05).abs() < 1e-9);
}
