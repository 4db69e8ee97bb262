//! The cost of one routing decision: namespace parse + hash + table lookup.
use std::hint::black_box;
use std::num::NonZeroU32;

use criterion::{criterion_group, criterion_main, Criterion};
use wsrouter::{
    BackendTemplate, Backends, Overrides, PathPrefix, RoutingTable, SetSpec, Split, TableSource,
};

fn routing_decision(c: &mut Criterion) {
    let backends = Backends::Template(
        BackendTemplate::parse("{statefulset}-{i}:9000", "backend", "backend", "default").unwrap(),
    );
    let prefix = PathPrefix::default();
    let replicas = NonZeroU32::new(16).unwrap();
    let no_overrides = RoutingTable::build(
        1,
        TableSource::Flags,
        &backends,
        replicas,
        Overrides::default(),
    )
    .unwrap();
    let entries: Vec<(String, String)> = (0..1000)
        .map(|i| (format!("ns-{i}"), (i % 16).to_string()))
        .collect();
    let with_overrides = RoutingTable::build(
        1,
        TableSource::Flags,
        &backends,
        replicas,
        Overrides::parse(entries, "backend").unwrap(),
    )
    .unwrap();

    // A canary at 20% over a second set of 4, with 1000 tenants pinned: the split's
    // pin lookup and its bucket hash on top of the pod hash.
    let pins: Vec<(String, String)> = (0..1000)
        .map(|i| (format!("set.pinned-{i}"), "v2".to_owned()))
        .chain([
            ("canary.set".to_owned(), "v2".to_owned()),
            ("canary.weight".to_owned(), "20".to_owned()),
        ])
        .collect();
    let v2 = Backends::Template(
        BackendTemplate::parse("{statefulset}-{i}:9000", "backend-v2", "backend", "default")
            .unwrap(),
    );
    let spec = SetSpec {
        name: "v2",
        backends: &v2,
        replicas: 4,
    };
    let with_canary = no_overrides
        .clone()
        .with_sets("stable", &[spec], Split::parse(pins).unwrap())
        .unwrap();

    let mut g = c.benchmark_group("routing_decision");
    g.bench_function("parse+hash, no overrides", |b| {
        b.iter(|| {
            let ns = prefix.namespace(black_box("/ws/acme-prod/chat")).unwrap();
            black_box(no_overrides.route(ns).ordinal)
        })
    });
    g.bench_function("parse+lookup, 1000 overrides, hit", |b| {
        b.iter(|| {
            let ns = prefix.namespace(black_box("/ws/ns-500")).unwrap();
            black_box(with_overrides.route(ns).ordinal)
        })
    });
    g.bench_function("parse+hash, 1000 overrides, miss", |b| {
        b.iter(|| {
            let ns = prefix.namespace(black_box("/ws/acme-prod")).unwrap();
            black_box(with_overrides.route(ns).ordinal)
        })
    });
    g.bench_function("parse+split+hash, canary 20%, 1000 pinned", |b| {
        b.iter(|| {
            let ns = prefix.namespace(black_box("/ws/acme-prod/chat")).unwrap();
            black_box(with_canary.route(ns).ordinal)
        })
    });
    g.finish();
}

criterion_group!(benches, routing_decision);
criterion_main!(benches);
