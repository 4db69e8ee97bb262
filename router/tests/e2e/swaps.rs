//! Table swaps under live traffic: nothing is dropped unless asked, and only the moved
//! tenants are closed when reroute drain is on.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Result};
use futures_util::{SinkExt, StreamExt};
use router::Input;
use router::RerouteConfig;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use wsrouter::TableSource;

use crate::harness::*;

fn overrides(entries: &[(String, String)]) -> Input {
    Input::Overrides {
        source: TableSource::File {
            path: "test".into(),
        },
        data: Some(entries.iter().cloned().collect::<BTreeMap<_, _>>()),
    }
}

/// Streams until told to stop: echoes checked byte for byte, counters checked for gaps.
async fn worker(mut ws: Ws, id: usize, mut stop: watch::Receiver<bool>) -> Result<(u64, u64)> {
    let mut expected_counter = None;
    let mut pending: VecDeque<Vec<u8>> = VecDeque::new();
    let (mut sent, mut echoed, mut counters) = (0u64, 0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut stopping = false;
    loop {
        if stopping && pending.is_empty() {
            ws.close(None).await?;
            return Ok((echoed, counters));
        }
        tokio::select! {
            _ = tick.tick(), if !stopping => {
                // Sizes from tiny to several frames' worth, contents unique per message.
                let len = [7usize, 300, 4096, 16_384][(sent as usize + id) % 4];
                let payload: Vec<u8> = (0..len).map(|i| (i as u64 ^ sent ^ (id as u64) << 8) as u8).collect();
                ws.send(Message::binary(payload.clone())).await?;
                pending.push_back(payload);
                sent += 1;
            }
            _ = stop.changed(), if !stopping => stopping = true,
            msg = ws.next() => match msg {
                Some(Ok(Message::Binary(b))) => {
                    let want = pending.pop_front().ok_or_else(|| anyhow!("socket {id}: unexpected echo"))?;
                    ensure!(b.as_ref() == want.as_slice(), "socket {id}: echo differs");
                    echoed += 1;
                }
                Some(Ok(m)) => {
                    if let Some(c) = as_counter(&m) {
                        if let Some(e) = expected_counter {
                            ensure!(c.counter == e, "socket {id}: counter {} after {}", c.counter, e - 1);
                        }
                        expected_counter = Some(c.counter + 1);
                        counters += 1;
                    } else if let Message::Close(f) = m {
                        bail!("socket {id} was closed: {f:?}");
                    }
                }
                Some(Err(e)) => bail!("socket {id}: {e}"),
                None => bail!("socket {id} dropped"),
            },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_sockets_survive_two_hundred_swaps() -> Result<()> {
    let mut limits = limits();
    limits.max_connections = 2000;
    let h = Harness::start(Options {
        backends: 8,
        interval: Duration::from_millis(250),
        limits,
        ..Options::default()
    })
    .await?;
    // Start from 4 of the 8 pods, so replica changes have somewhere to go.
    h.router.control().send(Input::Replicas(4));
    h.wait_table("4 replicas", |t| t.replicas().get() == 4)
        .await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut workers = Vec::new();
    let hr = &h;
    for batch in (0..500).collect::<Vec<_>>().chunks(50) {
        let conns = batch
            .iter()
            .map(|&i| async move { (i, hr.ws(&format!("load-{i}")).await) });
        for (i, ws) in futures_util::future::join_all(conns).await {
            workers.push(tokio::spawn(worker(ws?, i, stop_rx.clone())));
        }
    }
    assert_eq!(h.router.live().snapshot().len(), 500);

    // Swaps paced over ~4 s so they overlap the sockets' traffic throughout.
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for i in 0..200u32 {
        pace.tick().await;
        let before = h.router.current_table().map_or(0, |t| t.version());
        let probe = format!("probe-{i}");
        if i % 5 == 0 {
            // 4..=8 replicas, never the same twice in a row.
            let current = h.router.current_table().map_or(4, |t| t.replicas().get());
            h.router
                .control()
                .send(Input::Replicas(4 + (current - 3) % 5));
        } else {
            let mut entries: Vec<(String, String)> = (0..20)
                .map(|k| {
                    (
                        format!("load-{}", (k * 7 + i as usize) % 500),
                        ((k + i as usize) % 4).to_string(),
                    )
                })
                .collect();
            entries.push((probe.clone(), format!("backend-{}", i % 4)));
            h.router.control().send(overrides(&entries));
        }
        let t = h.wait_table("the swap", |t| t.version() > before).await?;
        // A new connection after the swap follows the new table.
        let want = t.route(&probe).ordinal;
        let (mut ws, resp) = within(WAIT, "probe", h.ws_path(&format!("/ws/{probe}"))).await??;
        assert_eq!(
            resp.headers()
                .get("x-wsrouter-table")
                .and_then(|v| v.to_str().ok()),
            Some(t.version().to_string().as_str())
        );
        assert_eq!(
            next_counter(&mut ws).await?.server,
            format!("backend-{want}"),
            "swap {i}"
        );
        ws.close(None).await?;
    }

    stop_tx.send(true)?;
    let (mut echoes, mut counters) = (0, 0);
    for w in workers {
        let (e, c) = within(Duration::from_secs(60), "worker", w).await???;
        // At 4 messages a second each way, every socket carried traffic all through.
        assert!(
            e >= 12 && c >= 12,
            "a socket went quiet: {e} echoes, {c} counters"
        );
        echoes += e;
        counters += c;
    }
    eprintln!(
        "500 sockets, 200 swaps: {echoes} echoes and {counters} counters intact, none dropped"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reroute_drain_closes_only_moved_tenants_with_1012() -> Result<()> {
    let grace = Duration::from_millis(300);
    let h = Harness::start(Options {
        interval: Duration::from_millis(30),
        reroute: Some(RerouteConfig {
            grace,
            per_second: 1000,
        }),
        ..Options::default()
    })
    .await?;
    let moving = tenant_on(&h, 1, 0);
    let neighbour = tenant_on(&h, 1, 1);
    let elsewhere = tenant_on(&h, 2, 0);
    let mut moved_socks = vec![h.ws(&moving).await?, h.ws(&moving).await?];
    let mut kept = vec![h.ws(&neighbour).await?, h.ws(&elsewhere).await?];
    for ws in moved_socks.iter_mut().chain(kept.iter_mut()) {
        next_counter(ws).await?;
    }

    h.router
        .control()
        .send(overrides(&[(moving.clone(), "3".into())]));
    h.wait_table("the reroute", |t| t.route(&moving).ordinal == 3)
        .await?;
    let swapped = Instant::now();
    for ws in &mut moved_socks {
        assert_eq!(next_close_code(ws).await?, Some(1012));
    }
    assert!(
        swapped.elapsed() >= grace,
        "closed before the grace period: {:?}",
        swapped.elapsed()
    );
    // Everyone else streams on, in order.
    for ws in &mut kept {
        let a = next_counter(ws).await?.counter;
        assert_eq!(next_counter(ws).await?.counter, a + 1);
    }
    // The moved tenant reconnects to its new home.
    let mut ws = h.ws(&moving).await?;
    assert_eq!(next_counter(&mut ws).await?.server, "backend-3");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_leaves_the_table_has_its_sockets_closed_with_1012_spread_over_the_grace(
) -> Result<()> {
    let grace = Duration::from_secs(2);
    let h = Harness::start(Options {
        interval: Duration::from_millis(50),
        drain_grace: grace,
        ..Options::default()
    })
    .await?;
    // Sockets on pod 3, which the scale-down removes, and on pod 1, which stays.
    let mut leaving = Vec::new();
    for skip in 0..24 {
        leaving.push(h.ws(&tenant_on(&h, 3, skip)).await?);
    }
    let mut staying = [h.ws(&tenant_on(&h, 1, 0)).await?];
    for ws in leaving.iter_mut().chain(staying.iter_mut()) {
        next_counter(ws).await?;
    }

    h.router.control().send(Input::Replicas(3));
    h.wait_table("3 replicas", |t| t.replicas().get() == 3)
        .await?;
    let swapped = Instant::now();
    let closes = leaving.iter_mut().map(|ws| async move {
        let code = next_close_code(ws).await?;
        Ok::<_, anyhow::Error>((code, swapped.elapsed()))
    });
    let mut halves = [0usize; 2];
    for r in futures_util::future::join_all(closes).await {
        let (code, at) = r?;
        assert_eq!(code, Some(1012));
        ensure!(
            at < grace + Duration::from_millis(500),
            "closed {at:?} after the swap"
        );
        halves[usize::from(at >= grace / 2)] += 1;
    }
    // Spread over the grace, not all at once: 24 even draws leave neither half empty
    // (odds 2 × 0.5^24).
    ensure!(
        halves.iter().all(|&n| n > 0),
        "closes per half of the grace: {halves:?}"
    );
    // The pod still in the table streams on.
    let a = next_counter(&mut staying[0]).await?.counter;
    assert_eq!(next_counter(&mut staying[0]).await?.counter, a + 1);
    // Counted as each relay ends (its close handshake done, the clients' replies sent).
    drop(leaving);
    let want = [
        "wsrouter_drain_closes_total{reason=\"pod_gone\"}",
        "wsrouter_connections_closed_total{ordinal=\"3\",reason=\"pod_gone\",protocol=\"h1\",set=\"stable\"}",
    ];
    within(WAIT, "the closes counted", async {
        loop {
            let (_, m) = scrape_metrics(&h).await?;
            if want.iter().all(|k| m.get(*k) == Some(&24.0)) {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await??;
    Ok(())
}
