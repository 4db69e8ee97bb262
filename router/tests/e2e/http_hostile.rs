//! Hostile plain requests on the forward path: oversized and stalled bodies, pipelined
//! floods, and the request-smuggling shapes (CL+TE, differing lengths, obs-fold, odd
//! codings). Each gets a 4xx or a close, and the pod behind hears nothing it should not.

use std::time::Duration;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;
use crate::http::router_over_pods;

/// Sends `bytes` on one TLS connection; everything the router said until it closed.
async fn exchange(h: &Harness, bytes: &[u8]) -> Result<String> {
    Ok(String::from_utf8_lossy(&h.raw_bytes(bytes).await?).into_owned())
}

fn small_body_limit() -> Options {
    let mut limits = limits();
    limits.http.max_request_body = 1000;
    limits.http.timers.idle = Some(Duration::from_secs(1));
    limits.http.timers.event_streams_idle = true;
    Options {
        backends: 1,
        limits,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_413_before_the_pod_is_asked() -> Result<()> {
    let (h, pods, _cert) = router_over_pods(small_body_limit()).await?;
    // A declared length over the limit: refused at once, even with 100-continue (the
    // client is spared the upload: no 100 comes).
    for expect in ["", "Expect: 100-continue\r\n"] {
        let req =
            format!("POST /ws/t/x HTTP/1.1\r\nHost: a\r\n{expect}Content-Length: 5000\r\n\r\n");
        let answer = exchange(&h, req.as_bytes()).await?;
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(!answer.contains("100 Continue"), "{answer}");
        assert!(answer.contains("--max-request-body"), "{answer}");
    }
    assert!(pods[0].seen().is_empty(), "{:?}", pods[0].seen());
    // A chunked body that grows past it: cut, 413, and the pod never holds more.
    let mut req =
        b"POST /ws/t/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"190\r\n");
        req.extend_from_slice(&[b'x'; 400]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let answer = exchange(&h, &req).await?;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(pods[0].seen().iter().all(|r| r.body.len() <= 1000));
    // 100-continue within the limit: the 100 comes once the pod is reached, then the body.
    let mut tls = h.tls().await?;
    tls.write_all(
        b"POST /ws/t/x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await?;
    let mut buf = vec![0u8; 25];
    within(WAIT, "100 Continue", tls.read_exact(&mut buf)).await??;
    assert!(
        buf.starts_with(b"HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    tls.write_all(b"hello").await?;
    let mut rest = [0u8; 512];
    let n = within(WAIT, "the answer", tls.read(&mut rest)).await??;
    let answer = String::from_utf8_lossy(&rest[..n]);
    assert!(
        answer.contains("200 OK") && answer.contains(r#""body_len":5"#),
        "{answer}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_408_and_frees_its_place() -> Result<()> {
    let (h, _pods, _cert) = router_over_pods(small_body_limit()).await?;
    let started = std::time::Instant::now();
    let answer = exchange(
        &h,
        b"POST /ws/t/x HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly ten b",
    )
    .await?;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // The 1 s stall timeout answered, not the 60 s default.
    assert!(started.elapsed() < Duration::from_secs(8));
    let m = samples(&h.admin_get("/metrics").await?.body);
    assert_eq!(m["wsrouter_http_requests_active"], 0.0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_flood_is_served_in_order_then_closed() -> Result<()> {
    // `--max-requests-per-connection` lowered from its 10,000, so the flood passes it
    // within the harness's wait on a debug build.
    let max = 200;
    let mut options = Options {
        backends: 1,
        ..Options::default()
    };
    options.limits.http.max_requests_per_conn = max as u32;
    let (h, pods, _cert) = router_over_pods(options).await?;
    let flood: Vec<u8> = (0..max + 100)
        .flat_map(|i| format!("GET /ws/t/p{i} HTTP/1.1\r\nHost: a\r\n\r\n").into_bytes())
        .collect();
    let answer = exchange(&h, &flood).await?;
    let answered = answer.matches("HTTP/1.1 200 OK").count();
    // One connection carries at most `max` requests; the last says so and it closes.
    assert_eq!(answered, max);
    assert_eq!(
        answer.matches("connection: close").count(),
        1,
        "the last answer closes"
    );
    let seen = pods[0].seen();
    assert_eq!(seen.len(), max);
    assert!(seen
        .iter()
        .enumerate()
        .all(|(i, r)| r.target == format!("/ws/t/p{i}")));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_get_a_4xx_or_a_close_and_reach_nothing() -> Result<()> {
    let (h, pods, _cert) = router_over_pods(Options {
        backends: 1,
        ..Options::default()
    })
    .await?;
    let smuggled = "GET /ws/t/SMUGGLED HTTP/1.1\r\nHost: a\r\n\r\n";
    let cases: Vec<(String, &str)> = vec![
        // CL.TE: a Content-Length reader would take the chunked terminator as the body
        // and the smuggled request as the next one.
        (format!("POST /ws/t/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"), "close"),
        // TE.CL: the length named after the coding.
        (format!("POST /ws/t/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n{smuggled}"), "close"),
        (format!("POST /ws/t/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\nhello{smuggled}"), "400"),
        (format!("POST /ws/t/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 50\r\n\r\nhello{smuggled}"), "400"),
        (format!("POST /ws/t/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"), "400"),
        (format!("POST /ws/t/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"), "400"),
        (format!("POST /ws/t/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{smuggled}"), "400"),
        (format!("GET /ws/t/x HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n{smuggled}"), "400"),
        (format!("POST /ws/t/x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"), "400"),
        (format!("GET /ws/t/x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n{smuggled}"), "400"),
    ];
    for (req, expect) in cases {
        let first = req.lines().take(4).collect::<Vec<_>>().join(" | ");
        let answer = exchange(&h, req.as_bytes()).await?;
        match expect {
            // Read by its chunks alone, answered, and the connection closed after it.
            "close" => {
                assert!(answer.starts_with("HTTP/1.1 200"), "{first}: {answer}");
                assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{first}: {answer}");
            }
            _ => assert!(answer.starts_with("HTTP/1.1 400"), "{first}: {answer}"),
        }
        let seen = pods[0].seen();
        assert!(
            seen.iter().all(|r| !r.target.contains("SMUGGLED")),
            "{first}: smuggled through: {seen:?}"
        );
    }
    // The two read by their chunks reached the pod, each with an empty body; no other did.
    pods[0].wait_for(2).await;
    let seen = pods[0].seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|r| r.body.is_empty()));
    Ok(())
}
