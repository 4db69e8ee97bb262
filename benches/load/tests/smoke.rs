//! wsload against a real router (TLS and plaintext) and echo backends on loopback: every
//! mode runs, measures, and checks its echoes.

use std::num::NonZeroU32;
use std::time::Duration;

use anyhow::Result;
use router::Limits;
use router::RouterConfig;
use router::RoutingConfig;
use wsload::{LoadConfig, Mode, Target};
use wsrouter::{Backends, PathPrefix};

async fn router(tls: bool) -> Result<(router::RouterHandle, Vec<backend::EchoHandle>)> {
    let mut backends = Vec::new();
    for i in 0..2 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        backends.push(backend::serve(
            l,
            backend::EchoConfig::new(format!("backend-{i}"))
                .with_interval(Duration::from_secs(3600)),
        )?);
    }
    let list = Backends::static_list(
        backends
            .iter()
            .map(|b| b.local_addr().to_string())
            .collect(),
    )?;
    let cert = router::DevCert::generate(&["localhost"])?;
    let h = router::start(RouterConfig {
        pages: None,
        io_threads: 0,
        listen: "127.0.0.1:0".parse()?,
        tls: if tls {
            Some(cert.server_config(&Default::default())?)
        } else {
            None
        },
        admin_listen: None,
        admin_token: None,
        auth: None,
        forward_auth: None,
        backend_tls: None,
        path_prefix: PathPrefix::default(),
        drain_grace: Duration::from_secs(1),
        reroute: None,
        limits: Limits {
            handshake_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            backend_timeout: Duration::from_secs(5),
            close_timeout: Duration::from_secs(2),
            max_connections: 1000,
            ..Limits::default()
        },
        routing: RoutingConfig::fixed(list, NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN)),
    })
    .await?;
    Ok((h, backends))
}

fn config(url: &str, mode: Mode) -> Result<LoadConfig> {
    Ok(LoadConfig {
        target: Target::parse(url, "localhost")?,
        connections: 8,
        tenants: 5,
        tenant_prefix: "load-".into(),
        mode,
        size: 64,
        duration: Duration::from_millis(300),
        sources: Vec::new(),
        open_parallelism: 4,
        timeout: Duration::from_secs(10),
        h2_connections: 0,
        h2_client_key: false,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_runs_through_the_router() -> Result<()> {
    for tls in [true, false] {
        let (h, _backends) = router(tls).await?;
        let url = format!(
            "{}://{}/ws/",
            if tls { "wss" } else { "ws" },
            h.local_addr()
        );

        let r = wsload::run(config(&url, Mode::PingPong { rate: Some(200.0) })?).await?;
        assert_eq!((r.connections, r.errors), (8, 0), "{r:?}");
        let l = r.latency.clone().unwrap_or_default();
        assert!(
            r.messages > 8 && l.samples == r.messages && l.p50_us > 0 && l.p99_us >= l.p50_us,
            "{r:?}"
        );

        let r = wsload::run(config(&url, Mode::Throughput { window: 8 })?).await?;
        assert_eq!(r.errors, 0, "{r:?}");
        assert!(r.messages > 0 && r.megabytes_per_second > 0.0, "{r:?}");

        let mut c = config(
            &url,
            Mode::HoldIdle {
                burst: Some(16 * 1024),
            },
        )?;
        c.sources = vec!["127.0.0.2".parse()?, "127.0.0.3".parse()?];
        c.duration = Duration::from_millis(100);
        let r = wsload::run(c).await?;
        assert_eq!(r.still_echoing, Some(8), "{r:?}");
        h.close_now();
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_runs_over_http2_streams() -> Result<()> {
    let (h, _backends) = router(true).await?;
    let url = format!("wss://{}/ws/", h.local_addr());
    let over_h2 = |mode| -> Result<LoadConfig> {
        let mut c = config(&url, mode)?;
        c.h2_connections = 3;
        Ok(c)
    };

    let r = wsload::run(over_h2(Mode::PingPong { rate: Some(200.0) })?).await?;
    assert_eq!(
        (r.connections, r.tcp_connections, r.errors),
        (8, 3, 0),
        "{r:?}"
    );
    assert!(r
        .latency
        .is_some_and(|l| l.samples == r.messages && r.messages > 8));

    let r = wsload::run(over_h2(Mode::Throughput { window: 8 })?).await?;
    assert_eq!(r.errors, 0, "{r:?}");
    assert!(r.messages > 0, "{r:?}");

    let mut c = over_h2(Mode::HoldIdle {
        burst: Some(16 * 1024),
    })?;
    c.duration = Duration::from_millis(100);
    let r = wsload::run(c).await?;
    assert_eq!((r.still_echoing, r.tcp_connections), (Some(8), 3), "{r:?}");

    let plain = config(
        &format!("ws://{}/ws/", h.local_addr()),
        Mode::PingPong { rate: None },
    );
    let mut plain = plain?;
    plain.h2_connections = 1;
    assert!(matches!(
        wsload::run(plain).await,
        Err(wsload::LoadError::H2NeedsTls)
    ));
    h.close_now();
    Ok(())
}

#[tokio::test]
async fn only_loopback() {
    let c = config("ws://10.0.0.1:80/ws/", Mode::PingPong { rate: None })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        wsload::run(c).await,
        Err(wsload::LoadError::NotLoopback(_))
    ));
    assert!(Target::parse("http://127.0.0.1:1/", "x").is_err());
    assert!(
        Target::parse("ws://localhost:1/", "x").is_err(),
        "names need DNS; only IP literals"
    );
}
