//! The control plane's cost of a big update, and the data path's cost of a routing
//! decision while tables are being swapped under it.
//!
//! - `build_validate_swap/{1000,100000}`: parse + validate 1,000 or 100,000 overrides,
//!   build the table, publish it with one `ArcSwap::store` (and free the old one), as the
//!   control loop does.
//! - `diff_*/100000`: the change summary the swap log line prints, when every override
//!   changed and when one did.
//! - `decision/*`: `ArcSwap::load` + `route` per connection, idle vs. with another thread
//!   storing a fresh 100,000-override table in a tight loop.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use wsrouter::{BackendTemplate, Backends, Overrides, RoutingTable, TableSource};

const N: usize = 100_000;

fn backends() -> Backends {
    Backends::Template(
        BackendTemplate::parse(
            "{statefulset}-{i}.{service}.prod.svc:9000",
            "backend",
            "backend",
            "prod",
        )
        .unwrap(),
    )
}

fn entries(shift: usize) -> Vec<(String, String)> {
    entries_n(N, shift)
}

fn entries_n(n: usize, shift: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                format!("tenant-{i}"),
                if i % 2 == 0 {
                    ((i + shift) % 16).to_string()
                } else {
                    format!("backend-{}", (i + shift) % 16)
                },
            )
        })
        .collect()
}

fn table(version: u64, entries: &[(String, String)]) -> RoutingTable {
    let overrides = Overrides::parse(entries.iter().map(|(k, v)| (k, v)), "backend").unwrap();
    RoutingTable::build(
        version,
        TableSource::Flags,
        &backends(),
        NonZeroU32::new(16).unwrap(),
        overrides,
    )
    .unwrap()
}

fn swap(c: &mut Criterion) {
    let data = entries(0);
    let mut g = c.benchmark_group("control_plane");
    g.sample_size(10);
    for n in [1_000, N] {
        let data = entries_n(n, 0);
        let slot = ArcSwapOption::from_pointee(table(1, &data));
        let mut version = 1;
        g.bench_with_input(
            BenchmarkId::new("build_validate_swap", n),
            &data,
            |b, data| {
                b.iter(|| {
                    version += 1;
                    slot.store(Some(Arc::new(table(version, data))));
                })
            },
        );
    }
    let a = table(1, &data);
    let b2 = table(2, &entries(1));
    g.bench_with_input(BenchmarkId::new("diff_all_changed", N), &(), |b, _| {
        b.iter(|| black_box(a.diff(&b2).changed.len()))
    });
    let mut one = data.clone();
    one[0].1 = "15".to_owned();
    let b3 = table(3, &one);
    g.bench_with_input(BenchmarkId::new("diff_one_changed", N), &(), |b, _| {
        b.iter(|| black_box(a.diff(&b3).changed.len()))
    });
    g.finish();
}

fn decision(c: &mut Criterion) {
    let slot = Arc::new(ArcSwapOption::from_pointee(table(1, &entries(0))));
    let tenants: Vec<String> = (0..1024)
        .map(|i| {
            if i % 2 == 0 {
                format!("tenant-{}", i * 97)
            } else {
                format!("other-{i}")
            }
        })
        .collect();
    let mut g = c.benchmark_group("decision");
    let mut i = 0usize;
    g.bench_function("load+route, no swaps", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            let guard = slot.load();
            black_box(guard.as_deref().map(|t| t.route(&tenants[i]).ordinal))
        })
    });

    // Another thread publishes fresh tables as fast as it can build them.
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let (slot, stop) = (slot.clone(), stop.clone());
        let (a, b) = (
            Arc::new(table(2, &entries(1))),
            Arc::new(table(3, &entries(2))),
        );
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                slot.store(Some(if swaps.is_multiple_of(2) {
                    a.clone()
                } else {
                    b.clone()
                }));
                swaps += 1;
            }
            swaps
        })
    };
    g.bench_function("load+route, while another thread swaps", |b| {
        b.iter(|| {
            i = (i + 1) & 1023;
            let guard = slot.load();
            black_box(guard.as_deref().map(|t| t.route(&tenants[i]).ordinal))
        })
    });
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().unwrap_or(0);
    eprintln!("swapper thread published {swaps} tables during the measurement");
    g.finish();
}

criterion_group!(benches, swap, decision);
criterion_main!(benches);
