//! Overrides from the filesystem reach the table within a bounded wait: a ConfigMap
//! mounted as a directory (kubelet's atomic `..data` swap), and the local file that
//! `wsrouter dev` watches.

use std::path::PathBuf;

use anyhow::Result;
use router::RejectReason;
use router::{OverridesWatch, WatchConfig};

use crate::harness::*;

fn temp_dir(name: &str) -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("wsrouter-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounted_configmap_follows_kubelet_data_swaps() -> Result<()> {
    let dir = temp_dir("mounted")?;
    kubelet_publish(&dir, 1, &[("ns-01", "1\n")])?;
    let h = Harness::start(Options {
        await_overrides: true,
        ..Options::default()
    })
    .await?;
    assert!(
        h.router.current_table().is_none(),
        "no table before the directory is read"
    );
    let watch = WatchConfig {
        overrides: OverridesWatch::Dir(dir.clone()),
        ..WatchConfig::default()
    };
    router::start_watch(&watch, &h.router.control(), None).await?;
    let t = h
        .wait_table("first read of the directory", |_| true)
        .await?;
    assert_eq!(t.route("ns-01").ordinal, 1);
    assert!(t.source().to_string().starts_with("dir:"));

    kubelet_publish(&dir, 2, &[("ns-01", "3"), ("ns-02", "backend-0")])?;
    let t = h
        .wait_table("after the ..data swap", |t| t.route("ns-01").ordinal == 3)
        .await?;
    assert_eq!(t.route("ns-02").ordinal, 0);
    let mut ws = h.ws("ns-01").await?;
    assert_eq!(next_counter(&mut ws).await?.server, "backend-3");

    // A key removed in the next generation is gone from the table.
    kubelet_publish(&dir, 3, &[("ns-02", "backend-0")])?;
    h.wait_table("key removed", |t| t.overrides().len() == 1)
        .await?;

    // A bad value is rejected; the last good table stays.
    let version = h.router.current_table().map(|t| t.version());
    kubelet_publish(&dir, 4, &[("ns-02", "banana")])?;
    h.wait_rejected(RejectReason::InvalidOverrides, 1).await?;
    assert_eq!(h.router.current_table().map(|t| t.version()), version);
    assert_eq!(
        h.router
            .control()
            .stats
            .rejected(RejectReason::InvalidOverrides),
        1
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_reroutes_live_when_the_overrides_file_is_edited() -> Result<()> {
    let dir = temp_dir("devfile")?;
    let file = dir.join("overrides.yaml");
    let manifest = |data: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: wsrouter-overrides\ndata:\n{data}"
        )
    };
    std::fs::write(&file, manifest("  ns-01: \"0\"\n"))?;
    let dev = start_dev(&file, &[]).await?;
    let table = |ns: &str| dev.router.current_table().map(|t| t.route(ns).ordinal);
    assert_eq!(table("ns-01"), Some(0));
    let mut changes = dev.router.control().changes();

    // An editor saves by writing a new file and renaming it over the old one.
    let tmp = dir.join(".overrides.yaml.swp");
    std::fs::write(&tmp, manifest("  ns-01: backend-3\n"))?;
    std::fs::rename(&tmp, &file)?;
    within(
        WAIT,
        "rename-over edit",
        changes.wait_for(|_| table("ns-01") == Some(3)),
    )
    .await??;

    // Or writes in place.
    std::fs::write(&file, manifest("  ns-01: \"1\"\n"))?;
    within(
        WAIT,
        "in-place edit",
        changes.wait_for(|_| table("ns-01") == Some(1)),
    )
    .await??;

    // A broken edit is rejected and counted; routing is unchanged. It is renamed into
    // place, so the watcher reads the broken text and nothing else: written in place, a
    // read between the truncate and the write (a busy machine can stall the writer past
    // the settle time) would find an empty file first.
    let control = dev.router.control();
    let mut processed = control.processed();
    std::fs::write(&tmp, "data: [this is not, a configmap")?;
    std::fs::rename(&tmp, &file)?;
    within(
        WAIT,
        "rejection",
        processed.wait_for(|_| control.stats.rejected(RejectReason::Unparsable) > 0),
    )
    .await??;
    assert_eq!(table("ns-01"), Some(1));
    dev.router.close_now();
    within(WAIT, "drain", dev.router.drained()).await?;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

/// A save in place truncates the file, then writes it; on a busy machine the writer can
/// stall between the two for longer than the watcher's settle time. The empty file read
/// meanwhile is not believed at once, so the table never routes by the hash alone on the
/// way to the new overrides; a file left empty is believed once it stays empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_save_in_place_never_publishes_the_file_it_emptied() -> Result<()> {
    let dir = temp_dir("slowsave")?;
    let file = dir.join("overrides.yaml");
    let manifest = |data: &str| format!("kind: ConfigMap\ndata:\n{data}");
    std::fs::write(&file, manifest("  ns-01: \"0\"\n"))?;
    let dev = start_dev(&file, &[]).await?;
    let mut changes = dev.router.control().changes();
    let table = |ns: &str| dev.router.current_table().map(|t| t.route(ns).ordinal);
    // Every table published while the save is under way is looked at: one without the
    // tenant's override is the emptied file, believed. (Counting versions instead would
    // also count whatever else a busy machine publishes meanwhile.)
    let emptied = || {
        dev.router
            .current_table()
            .filter(|t| t.overrides().is_empty())
            .map(|t| t.version())
    };
    // The slow writer: truncate, stall for three settle times (the scenario's own pace,
    // not a wait for the router), then write. The claim holds for a writer back within
    // the watcher's second; a run in which this busy machine kept the writer away longer
    // than that tests nothing, and is tried again (at most three times).
    let mut valid = false;
    for (attempt, want) in [(1, 1u32), (2, 0), (3, 1)] {
        let mut published_empty = Vec::new();
        let stall = std::time::Instant::now();
        std::fs::File::create(&file)?;
        let back_at = tokio::time::Instant::now() + std::time::Duration::from_millis(300);
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(back_at) => break,
                r = changes.changed() => {
                    r?;
                    published_empty.extend(emptied());
                }
            }
        }
        std::fs::write(&file, manifest(&format!("  ns-01: \"{want}\"\n")))?;
        let took = stall.elapsed();
        within(WAIT, "the saved file", async {
            loop {
                published_empty.extend(emptied());
                if table("ns-01") == Some(want) {
                    return anyhow::Ok(());
                }
                changes.changed().await?;
            }
        })
        .await??;
        if took >= std::time::Duration::from_millis(800) {
            eprintln!("attempt {attempt}: the writer took {took:?}; not a test of the claim");
            continue;
        }
        assert_eq!(
            published_empty,
            Vec::<u64>::new(),
            "the emptied file was published on the way (these versions)"
        );
        valid = true;
        break;
    }
    assert!(valid, "the machine kept the writer away in every attempt");

    // Emptied for good: after it has stayed empty a while, an empty ConfigMap.
    std::fs::File::create(&file)?;
    within(
        WAIT,
        "the file left empty",
        changes.wait_for(|_| {
            dev.router
                .current_table()
                .is_some_and(|t| t.overrides().is_empty())
        }),
    )
    .await??;
    dev.router.close_now();
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
