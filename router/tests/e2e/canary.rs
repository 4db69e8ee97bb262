//! Backend sets (issue 29): a canary by weight moves only the tenants whose split bucket
//! the change covers, with `--reroute-drain` only their sockets see 1012 and reconnect
//! onto the new set, everyone else streams on; header and cookie rules and pins beat the
//! weight; and each set's requests are counted under its name.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use futures_util::future::join_all;
use futures_util::StreamExt;
use router::{Input, RerouteConfig};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use wsrouter::{RoutingTable, TableSource};

use crate::harness::*;

const SOCKETS: usize = 200;

fn configmap(entries: &[(&str, &str)]) -> Input {
    Input::Overrides {
        source: TableSource::File {
            path: "canary".into(),
        },
        data: Some(
            entries
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

fn weight(w: &str) -> Input {
    configmap(&[("canary.set", "v2"), ("canary.weight", w)])
}

/// The echo backend a tenant's socket reaches under `t`: `backend-{i}` on the stable
/// set, `backend-v2-{i}` on v2.
fn server(t: &RoutingTable, tenant: &str) -> String {
    let r = t.route(tenant);
    match r.set {
        0 => format!("backend-{}", r.ordinal),
        _ => format!("backend-{}-{}", t.set(r.set).name(), r.ordinal),
    }
}

/// Sends `h` and applies `input`, returning the table it made.
async fn apply(h: &Harness, input: Input) -> Result<std::sync::Arc<RoutingTable>> {
    let before = h.router.current_table().map_or(0, |t| t.version());
    h.router.control().send(input);
    h.wait_table("the split applied", |t| t.version() > before)
        .await
}

/// A socket for `tenant` whose first counter comes from `want`.
async fn open_on(h: &Harness, tenant: &str, want: String) -> Result<Ws> {
    let mut ws = h.ws(tenant).await?;
    let got = next_counter(&mut ws).await?.server;
    ensure!(
        got == want,
        "{tenant}: reached {got}, the table says {want}"
    );
    Ok(ws)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_closes_only_the_tenants_whose_set_changed_and_they_reconnect_to_it(
) -> Result<()> {
    let h = Harness::start(Options {
        interval: Duration::from_millis(200),
        sets: vec![("v2", 3)],
        reroute: Some(RerouteConfig {
            grace: Duration::from_millis(300),
            per_second: 2_000,
        }),
        ..Options::default()
    })
    .await?;
    let mut t = apply(&h, weight("0")).await?;
    let tenants: Vec<String> = (0..SOCKETS).map(|i| format!("tenant-{i}")).collect();
    // A few handshakes at a time: the pending pool per source is small here.
    let opened =
        futures_util::stream::iter(tenants.iter().map(|ns| open_on(&h, ns, server(&t, ns))))
            .buffered(4)
            .collect::<Vec<_>>()
            .await;
    let mut sockets: Vec<Ws> = opened.into_iter().collect::<Result<_>>()?;
    let target_tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    for (step, w) in ["20", "50", "0"].into_iter().enumerate() {
        if step == 1 {
            let (text, _) = scrape_metrics(&h).await?;
            std::fs::write(target_tmp.join("metrics-sets-before.prom"), text)?;
        }
        let next = apply(&h, weight(w)).await?;
        let moving: Vec<usize> = (0..SOCKETS)
            .filter(|&i| t.route(&tenants[i]).set != next.route(&tenants[i]).set)
            .collect();
        ensure!(!moving.is_empty(), "weight {w} moves someone");
        // Only the tenants whose set changed are closed, with 1012 ...
        let closes = join_all(
            sockets
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| moving.contains(i))
                .map(|(_, ws)| next_close_code(ws)),
        )
        .await;
        for code in closes {
            ensure!(code? == Some(1012), "a moved tenant is told 1012");
        }
        // ... and reconnect onto their new set; everyone else is still connected.
        for i in 0..SOCKETS {
            if moving.contains(&i) {
                sockets[i] = open_on(&h, &tenants[i], server(&next, &tenants[i])).await?;
            } else {
                echo_text(&mut sockets[i], &format!("{w}-{i}")).await?;
            }
        }
        eprintln!("weight {w}: {} of {SOCKETS} tenants moved", moving.len());
        t = next;
    }
    // Failures for the canary's analysis to see: sockets that asked for v2 by header
    // lose their pod (a crash: closed by the backend's fault), and the next upgrade to
    // it is refused.
    let always = [("x-canary", "always")];
    let hinted = wsrouter::Hints {
        header: Some(wsrouter::Hint::Always),
        cookie: None,
    };
    let on_v2_0: Vec<&String> = tenants
        .iter()
        .filter(|ns| t.route_for(ns, hinted).ordinal == 0)
        .take(4)
        .collect();
    let mut doomed = Vec::new();
    for ns in &on_v2_0[..3] {
        let (mut ws, _) = connect_with(&h, &format!("/ws/{ns}"), &always).await?;
        next_counter(&mut ws).await?;
        doomed.push(ws);
    }
    h.sets[0][0].kill().await;
    for ws in &mut doomed {
        ensure!(next_close_code(ws).await? != Some(1012));
    }
    let refused = h
        .raw(&upgrade_request_with(
            &format!("/ws/{}", on_v2_0[3]),
            "X-Canary: always",
        ))
        .await?;
    ensure!(refused.status >= 500, "{refused:?}");
    let (text, m) = within(WAIT, "the canary's failures counted", async {
        loop {
            let (text, m) = scrape_metrics(&h).await?;
            let faults: f64 = m
                .iter()
                .filter(|(k, _)| {
                    k.starts_with("wsrouter_connections_closed_total{")
                        && k.contains("set=\"v2\"")
                        && k.contains("reason=\"backend_")
                })
                .map(|(_, v)| v)
                .sum();
            if faults >= 3.0 {
                return Ok::<_, anyhow::Error>((text, m));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await??;
    std::fs::write(target_tmp.join("metrics-sets-after.prom"), &text)?;
    let refusals = format!(
        "wsrouter_set_requests_total{{set=\"v2\",kind=\"websocket\",status=\"{}\"}}",
        refused.status
    );
    ensure!(m.get(&refusals) == Some(&1.0), "{refusals}\n{text}");
    let v2_upgrades = m
        .get("wsrouter_set_requests_total{set=\"v2\",kind=\"websocket\",status=\"101\"}")
        .copied()
        .unwrap_or_default();
    ensure!(v2_upgrades > 0.0, "v2's upgrades counted:\n{text}");
    ensure!(
        m.get("wsrouter_set_replicas{set=\"v2\"}") == Some(&3.0)
            && m.get("wsrouter_set_weight_percent{set=\"v2\"}") == Some(&0.0),
        "{text}"
    );
    Ok(())
}

/// A WebSocket for `path` carrying `headers`.
async fn connect_with(
    h: &Harness,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(
    Ws,
    tokio_tungstenite::tungstenite::handshake::client::Response,
)> {
    let tls = h.tls().await?;
    let url = format!("wss://localhost:{}{path}", h.addr().port());
    let mut req = url.into_client_request()?;
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes())?,
            http::HeaderValue::from_str(v)?,
        );
    }
    Ok(within(
        WAIT,
        "websocket connect",
        tokio_tungstenite::client_async(req, tls),
    )
    .await??)
}

/// An upgrade request for `path` with one more header line, as raw bytes.
fn upgrade_request_with(path: &str, line: &str) -> Vec<u8> {
    let mut r = String::from_utf8_lossy(&upgrade_request(path)).into_owned();
    r.truncate(r.len() - 2);
    r.push_str(line);
    r.push_str("\r\n\r\n");
    r.into_bytes()
}

/// A WebSocket for `path` carrying `headers`, and its first counter's server.
async fn server_with(h: &Harness, path: &str, headers: &[(&str, &str)]) -> Result<String> {
    let (mut ws, _) = connect_with(h, path, headers).await?;
    let server = next_counter(&mut ws).await?.server;
    ws.close(None).await?;
    Ok(server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_cookie_rules_beat_the_weight_and_pins_and_overrides_beat_them() -> Result<()> {
    let h = Harness::start(Options {
        sets: vec![("v2", 3)],
        ..Options::default()
    })
    .await?;
    let on_v2 = |s: &str| s.starts_with("backend-v2-");
    apply(&h, weight("0")).await?;
    let ws = "/ws/acme";
    ensure!(on_v2(
        &server_with(&h, ws, &[("x-canary", "always")]).await?
    ));
    ensure!(on_v2(
        &server_with(&h, ws, &[("cookie", "a=b; canary=always")]).await?
    ));
    ensure!(!on_v2(&server_with(&h, ws, &[]).await?));
    // A plain request follows the same rules.
    let get = |hint: &str| {
        format!("GET /ws/acme HTTP/1.1\r\nHost: localhost\r\nX-Canary: {hint}\r\nConnection: close\r\n\r\n")
    };
    let r = h.raw(get("always").as_bytes()).await?;
    ensure!(
        r.status == 200 && r.body.contains("\"server\":\"backend-v2-"),
        "{r:?}"
    );
    apply(
        &h,
        configmap(&[
            ("canary.set", "v2"),
            ("canary.weight", "100"),
            ("canary.header", "X-Version"),
            ("set.pinned", "stable"),
            ("overridden", "backend-1"),
            ("max-connections.capped", "0"),
        ]),
    )
    .await?;
    ensure!(
        on_v2(&server_with(&h, ws, &[]).await?),
        "weight 100: blue/green"
    );
    let never = server_with(&h, ws, &[("x-version", "never")]).await?;
    ensure!(!on_v2(&never), "the renamed header says never: {never}");
    ensure!(
        on_v2(&server_with(&h, ws, &[("x-canary", "never")]).await?),
        "the old header is not read"
    );
    let both = [("x-version", "never"), ("cookie", "canary=always")];
    ensure!(
        !on_v2(&server_with(&h, ws, &both).await?),
        "the header beats the cookie"
    );
    ensure!(!on_v2(
        &server_with(&h, ws, &[("cookie", "canary=never")]).await?
    ));
    ensure!(
        !on_v2(&server_with(&h, "/ws/pinned", &[("x-version", "always")]).await?),
        "a pin beats the header"
    );
    let o = server_with(&h, "/ws/overridden", &[("x-version", "always")]).await?;
    ensure!(o == "backend-1", "a pod override beats everything: {o}");
    // The router's own refusal (the tenant's cap) is not the canary's failure.
    let capped = h.raw(&upgrade_request("/ws/capped")).await?;
    ensure!(capped.status == 429, "{capped:?}");
    // /route says which set and why, for a request with a given header.
    let r = h.admin_get("/route/acme?header=never").await?;
    ensure!(
        r.body.contains("\"set\":\"stable\"") && r.body.contains("\"set_reason\":\"header\""),
        "{}",
        r.body
    );
    let r = h.admin_get("/route/acme").await?;
    ensure!(
        r.body.contains("\"set\":\"v2\"") && r.body.contains("\"set_reason\":\"weight\""),
        "{}",
        r.body
    );
    let table = h.admin_get("/table").await?;
    ensure!(
        table.body.contains("\"canary_set\":\"v2\"")
            && table.body.contains("\"canary_weight_percent\":100.0"),
        "{}",
        table.body
    );
    // A split naming a set the router does not have is rejected whole, by its key.
    let before = h.router.current_table().context("table")?.version();
    h.router.control().send(weight("101"));
    h.router.control().send(configmap(&[("canary.set", "v3")]));
    let (_, m) = within(WAIT, "the rejections counted", async {
        loop {
            let (text, m) = scrape_metrics(&h).await?;
            if m.get("wsrouter_table_rejected_updates_total{reason=\"invalid_overrides\"}")
                >= Some(&2.0)
            {
                return Ok::<_, anyhow::Error>((text, m));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await??;
    ensure!(h.router.current_table().map(|t| t.version()) == Some(before));
    let v2_http = m.get("wsrouter_set_requests_total{set=\"v2\",kind=\"http\",status=\"200\"}");
    ensure!(v2_http == Some(&1.0), "{v2_http:?}");
    ensure!(
        !m.keys()
            .any(|k| k.starts_with("wsrouter_set_requests_total") && k.contains("status=\"429\"")),
        "a refusal of the router's own is not counted against a set"
    );
    Ok(())
}
