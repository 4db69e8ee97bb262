//! The command line end to end: argv (and the environment) to [`RouterConfig`].

use std::num::NonZeroU32;
use std::time::Duration;

use clap::CommandFactory;
use wsrouter::{Backend, Backends};

use super::*;
use crate::control::watch::{OverridesWatch, WatchConfig};

#[test]
fn edge_flags_are_checked_before_anything_binds() {
    let parse = |extra: &[&str]| {
        let mut argv = vec![
            "wsrouter",
            "serve",
            "--plaintext",
            "--backend",
            "127.0.0.1:1",
        ];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Serve(a) => a.common.limits().map(|_| a.common.admin.admin_token()),
            _ => unreachable!(),
        }
    };
    assert!(matches!(
        parse(&["--proxy-protocol", "on"]),
        Err(ConfigError::ProxyProtocolUntrusted)
    ));
    assert!(parse(&["--proxy-protocol", "on", "--trusted-proxies", "10.0.0.0/8"]).is_ok());
    assert!(matches!(
        parse(&["--trusted-proxies", "10.0.0.1/8"]),
        Err(ConfigError::TrustedProxies(_))
    ));
    assert!(matches!(
        parse(&["--admin-token", "short"]),
        Ok(Err(ConfigError::AdminToken))
    ));
    let token = parse(&["--admin-token", "0123456789abcdef\n"])
        .unwrap()
        .unwrap();
    assert_eq!(
        format!("{token:?}"),
        "Some(AdminToken(16 bytes))",
        "never printed"
    );
}

fn serve(args: &[&str]) -> Result<RouterConfig, String> {
    let mut argv = vec!["wsrouter", "serve"];
    argv.extend_from_slice(args);
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    match cli.command {
        Command::Serve(s) => (*s)
            .into_config()
            .map(|(c, _)| c)
            .map_err(|e| crate::logging::DisplayChain(&e).to_string()),
        _ => Err("not serve".to_owned()),
    }
}

#[test]
fn limits_default_is_the_command_lines() {
    let c = serve(&["--plaintext", "--replicas", "1"]).unwrap();
    let d = Limits::default();
    assert_eq!(format!("{:?}", c.limits), format!("{d:?}"));
}

#[test]
fn cli_is_well_formed() {
    Cli::command().debug_assert();
}

#[test]
fn static_backends() {
    let c = serve(&[
        "--plaintext",
        "--backend",
        "127.0.0.1:9001",
        "--backend",
        "127.0.0.1:9002",
    ])
    .unwrap();
    assert_eq!(c.routing.replicas.map(NonZeroU32::get), Some(2));
    assert!(c.tls.is_none());
    assert_eq!(c.listen.to_string(), "0.0.0.0:8443");
    assert_eq!(c.path_prefix.as_str(), "/ws/");
    assert_eq!(c.drain_grace, Duration::from_secs(20));
}

#[test]
fn template_backends() {
    let c = serve(&["--plaintext", "--replicas", "3", "--pod-namespace", "prod"]).unwrap();
    let addrs = c.routing.backends.backends(c.routing.replicas.unwrap());
    assert_eq!(
        addrs[2].address().as_deref(),
        Some("backend-2.backend.prod.svc.cluster.local:9000")
    );
    let c = serve(&[
        "--plaintext",
        "--replicas",
        "2",
        "--backend-template",
        "{statefulset}-{i}.{service}:7000",
        "--statefulset",
        "echo",
        "--service",
        "echo-hl",
    ])
    .unwrap();
    assert_eq!(
        c.routing.backends.backends(c.routing.replicas.unwrap()),
        [
            Backend::Addr("echo-0.echo-hl:7000".into()),
            Backend::Addr("echo-1.echo-hl:7000".into())
        ]
    );
}

fn watch(args: &[&str]) -> WatchConfig {
    let mut argv = vec!["wsrouter", "serve", "--plaintext"];
    argv.extend_from_slice(args);
    match Cli::try_parse_from(argv).unwrap().command {
        Command::Serve(s) => (*s).into_config().unwrap().1,
        _ => unreachable!(),
    }
}

#[test]
fn what_gets_watched() {
    // A template without --replicas follows the StatefulSet, and takes its pods
    // from the EndpointSlices at the template's port.
    let w = watch(&["--pod-namespace", "prod"]);
    assert_eq!(
        (w.statefulset.as_deref(), w.endpoint_slices.clone()),
        (Some("backend"), Some(("backend".to_owned(), 9000)))
    );
    assert_eq!(w.namespace, "prod");
    assert!(w.needs_kube());
    // Fixed replicas and static backends outside a cluster: nothing to watch.
    let w = watch(&["--backend", "127.0.0.1:1"]);
    assert!(!w.needs_kube());
    assert_eq!(w.overrides, OverridesWatch::None);
    let w = watch(&["--replicas", "2", "--configmap", "routes"]);
    assert_eq!(w.overrides, OverridesWatch::ConfigMap("routes".into()));
    assert_eq!(w.statefulset, None);
    // With the API at hand, pods come from the slices, never from DNS.
    assert_eq!(w.endpoint_slices, Some(("backend".to_owned(), 9000)));
    let c = serve(&["--plaintext", "--replicas", "2", "--configmap", "routes"]).unwrap();
    assert!(matches!(c.routing.backends, Backends::Pods(_)));
    // Without it, the template's names are resolved per connection.
    let c = serve(&["--plaintext", "--replicas", "2"]).unwrap();
    assert!(matches!(c.routing.backends, Backends::Template(_)));
    let w = watch(&[
        "--replicas",
        "2",
        "--overrides-dir",
        "/etc/wsrouter/overrides",
    ]);
    assert_eq!(
        w.overrides,
        OverridesWatch::Dir("/etc/wsrouter/overrides".into())
    );
    assert!(
        serve(&["--plaintext", "--replicas", "2", "--overrides-dir", "/x"])
            .unwrap()
            .routing
            .await_overrides
    );
    assert!(serve(&[
        "--plaintext",
        "--replicas",
        "2",
        "--overrides-dir",
        "/x",
        "--configmap",
        "y"
    ])
    .is_err());
}

#[test]
fn durations_and_limits() {
    let c = serve(&[
        "--plaintext",
        "--replicas",
        "1",
        "--drain-grace",
        "500ms",
        "--backend-timeout",
        "2s",
        "--max-connections",
        "10",
    ])
    .unwrap();
    assert_eq!(c.drain_grace, Duration::from_millis(500));
    assert_eq!(c.limits.backend_timeout, Duration::from_secs(2));
    assert_eq!(c.limits.max_connections, 10);
}

#[test]
fn bad_flags_are_errors() {
    let cases: &[(&[&str], &str)] = &[
        (&["--replicas", "1"], "--tls-cert"),
        (&["--plaintext", "--replicas", "0"], "at least 1"),
        (&["--plaintext", "--backend", "nope"], "HOST:PORT"),
        (
            &["--plaintext", "--backend", "a:1", "--replicas", "2"],
            "--replicas 2 but only 1",
        ),
        (
            &[
                "--plaintext",
                "--replicas",
                "1",
                "--backend-template",
                "x:1",
            ],
            "no {i}",
        ),
        (
            &["--plaintext", "--replicas", "1", "--path-prefix", "ws"],
            "--path-prefix",
        ),
        (
            &["--plaintext", "--replicas", "1", "--drain-grace", "soon"],
            "invalid value",
        ),
        (
            &[
                "--plaintext",
                "--replicas",
                "1",
                "--max-header-bytes",
                "100",
            ],
            "8192",
        ),
        (
            &["--plaintext", "--replicas", "1", "--tls-cert", "x"],
            "cannot be used with",
        ),
        (
            &[
                "--tls-cert",
                "/nonexistent/c.pem",
                "--tls-key",
                "/nonexistent/k.pem",
                "--replicas",
                "1",
            ],
            "/nonexistent/c.pem",
        ),
    ];
    for (args, want) in cases {
        let err = serve(args).unwrap_err();
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn every_flag_has_an_env_var() {
    let cmd = Cli::command();
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments() {
            if arg.get_long().is_some() && !matches!(arg.get_id().as_str(), "help" | "version") {
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                assert!(
                    env.as_deref().is_some_and(|e| e.starts_with("WSROUTER_")),
                    "{} --{} has env {env:?}",
                    sub.get_name(),
                    arg.get_long().unwrap_or_default()
                );
            }
        }
    }
}

/// `WSROUTER_REPLICAS` means one thing wherever it is read: the number of backend pods
/// there are (`serve` routes over it, `route` computes over it). `plan`'s count to plan
/// for has a variable of its own, so a shell or pod that sets the first never turns a
/// plan into a scale.
#[test]
fn the_replicas_variable_means_the_pods_there_are() {
    let cmd = Cli::command();
    let mut readers = Vec::new();
    for sub in cmd.get_subcommands() {
        for arg in sub.get_arguments() {
            if arg.get_env() == Some(std::ffi::OsStr::new(routing::REPLICAS_ENV)) {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                readers.push((sub.get_name(), arg.get_long(), help));
            }
        }
    }
    let names: Vec<_> = readers.iter().map(|(s, l, _)| (*s, *l)).collect();
    assert_eq!(
        names,
        [("serve", Some("replicas")), ("route", Some("replicas"))]
    );
    for (sub, _, help) in &readers {
        assert!(help.starts_with("Number of backend pods"), "{sub}: {help}");
    }
    let plan = cmd.find_subcommand("plan").unwrap();
    let new = plan
        .get_arguments()
        .find(|a| a.get_long() == Some("replicas"))
        .unwrap();
    assert_eq!(
        new.get_env(),
        Some(std::ffi::OsStr::new("WSROUTER_PLAN_REPLICAS"))
    );
}
