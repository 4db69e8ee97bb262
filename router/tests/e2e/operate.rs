//! The operating surface against a live router: exact metric values after known traffic,
//! the route explainer and table against the golden vectors and after a swap, and
//! `wsrouter plan` / `wsrouter route`.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use router::{Input, RejectReason};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use wsrouter::TableSource;

use crate::harness::*;

fn swap(entries: &[(&str, &str)]) -> Input {
    Input::Overrides {
        source: TableSource::File {
            path: "ops-test".into(),
        },
        data: Some(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_known_traffic_exactly() -> Result<()> {
    let h = Harness::start(Options {
        // One counter message per connection, at connect.
        interval: Duration::from_secs(3600),
        overrides: vec![("pinned", "1")],
        ..Options::default()
    })
    .await?;
    for _ in 0..3 {
        let mut ws = h.ws("ns-01").await?;
        // The counter first: the backend favours incoming messages over its ticker, so a
        // quick client could otherwise close before counter 0 is ever sent.
        assert_eq!(next_counter(&mut ws).await?.counter, 0);
        ws.send(Message::text("hello")).await?;
        let mut echoed = false;
        while !echoed {
            match within(WAIT, "echo", ws.next()).await? {
                Some(Ok(Message::Text(t))) if t.as_str() == "hello" => echoed = true,
                Some(Ok(_)) => {}
                other => anyhow::bail!("{other:?}"),
            }
        }
        ws.close(None).await?;
        while let Some(Ok(_)) = within(WAIT, "close", ws.next()).await? {}
    }
    for (path, _) in [("/ws/Bad", 400), ("/elsewhere", 404)] {
        h.raw(format!("GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n").as_bytes()).await?;
    }
    // A plain request: forwarded to the tenant's pod, counted apart from the upgrades.
    h.raw(b"GET /ws/ns-01 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await?;

    // Relays finish just after their clients see the end; wait for the third.
    let closed =
        "wsrouter_connections_closed_total{ordinal=\"2\",reason=\"client_closed\",protocol=\"h1\",set=\"stable\"}";
    let adm = h.router.admission();
    within(
        WAIT,
        "three closed relays",
        h.router.changes().until(|| adm.live_count() == 0),
    )
    .await?;
    let (text, m) = scrape_metrics(&h).await?;

    // Bytes, frame by frame: the client sends "hello" (2+4 mask+5) and an empty close
    // (2+4); the backend sends its counter, the echo (2+5) and an empty close reply (2).
    let counter_json = r#"{"server":"backend-2","counter":0,"ns":"ns-01"}"#;
    let from_client = 3.0 * ((2 + 4 + 5) + (2 + 4)) as f64;
    let from_backend = 3.0 * ((2 + counter_json.len()) + (2 + 5) + 2) as f64;
    let want: &[(&str, f64)] = &[
        ("wsrouter_connections_accepted_total", 6.0),
        (
            "wsrouter_connections_refused_total{reason=\"live_full\"}",
            0.0,
        ),
        ("wsrouter_pending_connections", 0.0),
        ("wsrouter_pending_evicted_total", 0.0),
        (
            "wsrouter_upgrade_responses_total{status=\"101\",protocol=\"h1\"}",
            3.0,
        ),
        (
            "wsrouter_upgrade_responses_total{status=\"400\",protocol=\"h1\"}",
            1.0,
        ),
        (
            "wsrouter_upgrade_responses_total{status=\"404\",protocol=\"h1\"}",
            1.0,
        ),
        (
            "wsrouter_http_requests_total{status=\"200\",protocol=\"h1\"}",
            1.0,
        ),
        (closed, 3.0),
        (
            "wsrouter_connections_active{ordinal=\"2\",set=\"stable\"}",
            0.0,
        ),
        (
            "wsrouter_relayed_bytes_total{direction=\"from_client\"}",
            from_client,
        ),
        (
            "wsrouter_relayed_bytes_total{direction=\"from_backend\"}",
            from_backend,
        ),
        ("wsrouter_tls_handshake_seconds_count", 6.0),
        // Present (at 0) from start-up, so rate() and alerts work before the first failure.
        (
            "wsrouter_tls_handshake_failures_total{reason=\"error\"}",
            0.0,
        ),
        (
            "wsrouter_tls_handshake_failures_total{reason=\"timeout\"}",
            0.0,
        ),
        ("wsrouter_upgrade_seconds_count", 3.0),
        // One backend set, under its default name.
        (
            "wsrouter_set_requests_total{set=\"stable\",kind=\"websocket\",status=\"101\"}",
            3.0,
        ),
        (
            "wsrouter_set_response_seconds_count{set=\"stable\",kind=\"websocket\"}",
            3.0,
        ),
        ("wsrouter_set_replicas{set=\"stable\"}", 4.0),
        ("wsrouter_set_weight_percent{set=\"stable\"}", 100.0),
        ("wsrouter_table_version", 1.0),
        ("wsrouter_table_replicas", 4.0),
        ("wsrouter_table_overrides", 1.0),
        ("wsrouter_table_inactive_overrides", 0.0),
        ("wsrouter_table_swaps_total", 1.0),
        ("wsrouter_draining", 0.0),
    ];
    for (k, v) in want {
        assert_eq!(m.get(*k), Some(v), "{k}\n{text}");
    }
    assert!(text.ends_with("# EOF\n"));
    // No label carries a tenant or an address.
    assert!(
        !text.contains("ns-01") && !text.contains("127.0.0.1"),
        "{text}"
    );

    // A swap and a rejected update show up.
    h.router.control().send(swap(&[("pinned", "3")]));
    h.wait_table("swap", |t| t.version() == 2).await?;
    h.router.control().send(swap(&[("Bad Key", "3")]));
    h.wait_rejected(router::RejectReason::InvalidOverrides, 1)
        .await?;
    let (text, m) = scrape_metrics(&h).await?;
    assert_eq!(m.get("wsrouter_table_version"), Some(&2.0));
    assert_eq!(m.get("wsrouter_table_swaps_total"), Some(&2.0));
    assert_eq!(
        m.get("wsrouter_table_rejected_updates_total{reason=\"invalid_overrides\"}"),
        Some(&1.0)
    );

    // Kept for a real OpenMetrics parser: .ci/run parses it with prometheus_client.
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("metrics-sample.prom"),
        text,
    )?;
    Ok(())
}

async fn route_json(h: &Harness, ns: &str) -> Result<(u16, Value)> {
    let r = h.admin_get(&format!("/route/{ns}")).await?;
    // Every 200 is a RouteView, every refusal an ErrorView: the types the commands read.
    if r.status == 200 {
        let _: router::RouteView = serde_json::from_str(&r.body)?;
    } else {
        let _: router::ErrorView = serde_json::from_str(&r.body)?;
    }
    Ok((r.status, serde_json::from_str(&r.body)?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_explainer_and_table_follow_swaps() -> Result<()> {
    let h = Harness::start(Options::default()).await?;
    // Golden vectors over 4 replicas.
    for (ns, want) in [("ns-01", 2), ("ns-02", 1), ("acme-prod", 3)] {
        let (status, v) = route_json(&h, ns).await?;
        assert_eq!(status, 200);
        assert_eq!(
            (v["ordinal"].as_u64(), v["hash_ordinal"].as_u64()),
            (Some(want), Some(want)),
            "{v}"
        );
        assert_eq!(v["source"], "hash");
        assert!(v["override"].is_null());
        assert_eq!(v["table_version"], 1);
    }
    let (status, v) = route_json(&h, "Bad_NS").await?;
    assert_eq!(status, 400);
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("position 0")),
        "{v}"
    );

    let mut live = h.ws("ns-02").await?;
    next_counter(&mut live).await?;
    h.router
        .control()
        .send(swap(&[("ns-01", "0"), ("acme-prod", "backend-9")]));
    h.wait_table("swap", |t| t.version() == 2).await?;

    let (_, v) = route_json(&h, "ns-01").await?;
    assert_eq!(
        (
            v["ordinal"].as_u64(),
            v["source"].as_str(),
            v["table_version"].as_u64()
        ),
        (Some(0), Some("override"), Some(2))
    );
    assert_eq!(v["override"]["active"], true);
    let (_, v) = route_json(&h, "acme-prod").await?;
    assert_eq!(
        (v["ordinal"].as_u64(), v["source"].as_str()),
        (Some(3), Some("hash")),
        "{v}"
    );
    assert_eq!(v["override"]["target"], 9);
    assert_eq!(v["override"]["active"], false);
    assert!(
        v["override"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("beyond the 4 replicas")),
        "{v}"
    );
    let (_, v) = route_json(&h, "ns-02").await?;
    assert_eq!(v["live_sockets"], 1);

    let body = h.admin_get("/table").await?.body;
    let _: router::TableView = serde_json::from_str(&body)?;
    let t: Value = serde_json::from_str(&body)?;
    assert_eq!(t["version"], 2);
    assert_eq!(t["replicas"], 4);
    assert_eq!(t["backends"].as_array().map(Vec::len), Some(4));
    assert_eq!(t["backends"][3]["state"], "address");
    // The fingerprint everywhere it is shown is the table's.
    let fp = h
        .router
        .current_table()
        .map(|t| t.fingerprint())
        .unwrap_or_else(|| unreachable!());
    assert_eq!(t["fingerprint"]["config"], fp.config_hex());
    assert_eq!(t["fingerprint"]["membership"], fp.membership_hex());
    assert_eq!(
        route_json(&h, "ns-01").await?.1["fingerprint"],
        t["fingerprint"]
    );
    let metrics = h.admin_get("/metrics").await?.body;
    assert!(
        metrics.contains(&format!(
            "wsrouter_routing_info{{config=\"{}\",membership=\"{}\"}} 1",
            fp.config_hex(),
            fp.membership_hex()
        )),
        "{metrics}"
    );
    assert_eq!(
        t["overrides"],
        serde_json::json!({"acme-prod": 9, "ns-01": 0})
    );
    assert_eq!(t["inactive_overrides"], serde_json::json!({"acme-prod": 9}));
    assert_eq!(t["live_tenants"], serde_json::json!({"ns-02": 1}));
    assert_eq!(t["source"], "file:ops-test");
    drop(live);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_route_commands() -> Result<()> {
    let h = Harness::start(Options {
        overrides: vec![("ns-01", "0")],
        ..Options::default()
    })
    .await?;
    let mut live = h.ws("ns-02").await?;
    next_counter(&mut live).await?;
    let admin = format!("http://{}", h.router.admin_addr().context("admin")?);

    let dir = std::env::temp_dir().join(format!("wsrouter-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let new = dir.join("new.yaml");
    std::fs::write(&new, "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: wsrouter-overrides\ndata:\n  ns-01: \"3\"\n  ns-02: backend-0\n")?;

    // As a library, against the live router's /table.
    let current = router::Current::from_admin(&admin, None, "backend").await?;
    let new_overrides = router::read_overrides(&new, "backend")?;
    let plan = router::plan(&current, new_overrides, None, "backend")?;
    let moves: Vec<_> = plan
        .moves
        .iter()
        .map(|m| (m.tenant.as_str(), m.from, m.to, m.why, m.live_sockets))
        .collect();
    assert_eq!(
        moves,
        [
            ("ns-01", 0, 3, "override changed", 0),
            ("ns-02", 1, 0, "override added", 1)
        ]
    );
    // The fingerprint it prints is the one the router shows now, and the one it shows
    // once the edit is applied.
    let now = h.router.current_table().context("table")?.fingerprint();
    assert_eq!(plan.config_before, now.config_hex());
    h.router
        .control()
        .send(swap(&[("ns-01", "3"), ("ns-02", "backend-0")]));
    h.wait_table("the planned edit applied", |t| {
        t.fingerprint().config_hex() == plan.config_after
    })
    .await?;
    assert_eq!(
        h.router
            .current_table()
            .context("table")?
            .fingerprint()
            .membership,
        now.membership
    );
    h.router.control().send(swap(&[("ns-01", "0")]));
    h.wait_table("back as it was", |t| t.fingerprint() == now)
        .await?;

    // As the binary an operator runs.
    let bin = env!("CARGO_BIN_EXE_wsrouter");
    let out = tokio::task::spawn_blocking({
        let (bin, admin, new) = (bin.to_owned(), admin.clone(), new.clone());
        move || {
            Command::new(bin)
                .args(["plan", "--admin", &admin, "--overrides"])
                .arg(new)
                .output()
        }
    })
    .await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("plan: replicas 4 → 4, overrides +1 ~1 -0"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "routing config fingerprint: {} → {}",
            plan.config_before, plan.config_after
        )),
        "{stdout}"
    );
    assert!(
        stdout.lines().any(|l| l.contains("ns-02")
            && l.contains("1 → 0")
            && l.contains("live sockets here: 1")),
        "{stdout}"
    );

    // An invalid file: the watcher's errors, every offending key, exit 1.
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "kind: ConfigMap\ndata:\n  Bad_Key: \"1\"\n  ns-03: pod-7\n",
    )?;
    let out = Command::new(bin)
        .args(["plan", "--current-replicas", "4", "--overrides"])
        .arg(&bad)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("\"Bad_Key\"")
            && stderr.contains("\"ns-03\"")
            && stderr.contains("2 invalid override(s)"),
        "{stderr}"
    );

    // The contract offline agrees with the golden vectors and with the live router.
    let out = Command::new(bin)
        .args(["route", "acme-prod", "--replicas", "8", "--json"])
        .output()?;
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        (v["ordinal"].as_u64(), v["xxh3_64"].as_str()),
        (Some(6), Some("0xf755c6ba18352c29"))
    );
    let out = Command::new(bin)
        .args(["route", "ns-02", "--replicas", "4"])
        .output()?;
    let line = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        line.trim(),
        format!(
            // The config fingerprint of 4 replicas and no overrides: a golden vector.
            "ns-02 → backend-{} (ordinal {}, hash; XXH3-64 0x0491707bc197bf27, 4 replicas; routing config d2e5e9c64cd8821e; split bucket 6761)",
            h.ordinal("ns-02"),
            h.ordinal("ns-02")
        )
    );
    std::fs::remove_dir_all(&dir)?;
    drop(live);
    Ok(())
}

/// The metric names a scrape of /metrics declares (`# TYPE` lines), with the sample
/// names each type adds (`_total`, `_bucket`, …).
fn exported_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for l in text.lines() {
        let mut words = l.split_whitespace();
        if (words.next(), words.next()) != (Some("#"), Some("TYPE")) {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            _ => &[""],
        };
        for s in suffixes {
            out.insert(format!("{name}{s}"));
        }
    }
    out
}

/// Every `wsrouter_…` name in `text`.
fn queried_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for (i, _) in text.match_indices("wsrouter_") {
        if text[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.insert(name);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_query_only_exported_metrics() -> Result<()> {
    // Labelled families appear in /metrics once they have a series: make each happen.
    let refusing = Refusing::start().await?;
    let mut limits = limits();
    limits.backend_timeout = Duration::from_millis(300);
    limits.breaker = router::BreakerConfig {
        failures: 1,
        cooldown: Duration::from_secs(60),
    };
    let h = Harness::start(Options {
        replace: vec![(0, refusing.addr.to_string())],
        limits,
        ..Options::default()
    })
    .await?;
    let mut ws = h.ws(&tenant_on(&h, 1, 0)).await?;
    next_counter(&mut ws).await?;
    ws.close(None).await?;
    drop(ws);
    let resp = h
        .raw(&upgrade_request(&format!("/ws/{}", tenant_on(&h, 0, 0))))
        .await?;
    assert_eq!(resp.status, 502);
    let plain = format!(
        "GET /ws/{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        tenant_on(&h, 1, 0)
    );
    assert_eq!(h.raw(plain.as_bytes()).await?.status, 200);
    h.router.control().send(swap(&[("Bad_Key", "1")]));
    h.wait_rejected(RejectReason::InvalidOverrides, 1).await?;
    within(
        WAIT,
        "the closed socket to be counted",
        h.router
            .changes()
            .until(|| h.router.admission().live_count() == 0),
    )
    .await?;
    let exported = exported_names(&h.admin_get("/metrics").await?.body);
    let k8s = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../k8s/monitoring");
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(k8s.join("dashboard.json"))?)?;
    let panels = dashboard["panels"].as_array().context("panels")?;
    assert!(panels.len() >= 8);
    let mut exprs = Vec::new();
    for p in panels {
        let targets = p["targets"].as_array().context("targets")?;
        assert!(!targets.is_empty(), "{}", p["title"]);
        for t in targets {
            exprs.push(t["expr"].as_str().context("expr")?.to_owned());
        }
    }
    exprs.push(
        dashboard["templating"]["list"][1]["definition"]
            .as_str()
            .context("namespace variable")?
            .to_owned(),
    );
    let rules = std::fs::read_to_string(k8s.join("prometheusrule.yaml"))?;
    let tests = std::fs::read_to_string(k8s.join("rules-test.yaml"))?;
    for (what, text) in [
        ("dashboard.json", exprs.join("\n")),
        ("prometheusrule.yaml", rules),
        ("rules-test.yaml", tests),
    ] {
        let queried = queried_names(&text);
        assert!(!queried.is_empty(), "{what} queries nothing");
        let unknown: Vec<_> = queried.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{what} queries {unknown:?}, which /metrics does not export"
        );
    }
    Ok(())
}
