//! "A bad configuration exits with status 64": every kind of bad configuration, as an
//! operator would type it, exits 64 before binding anything, with one line that names
//! the flag and what is wrong.

use std::process::{Command, Output};

fn wsrouter(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wsrouter"));
    cmd.args(args)
        // Nothing from the caller's environment may change the verdict.
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "error");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the binary runs")
}

/// A plaintext serve that would start (so only the flag under test is wrong), on ports
/// nothing else uses: if the binary did start, the test would see it not exit.
const OK: &[&str] = &[
    "serve",
    "--plaintext",
    "--backend",
    "127.0.0.1:9",
    "--listen",
    "127.0.0.1:1",
    "--admin-listen",
    "127.0.0.1:1",
];

#[test]
fn every_kind_of_bad_configuration_exits_64_naming_the_flag() {
    let with = |extra: &[&'static str]| {
        let mut v: Vec<&str> = OK.to_vec();
        v.extend_from_slice(extra);
        v
    };
    // (arguments, environment, what the one line must name)
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        // clap's own verdicts
        (with(&["--drain-grace", "soon"]), vec![], "--drain-grace"),
        (vec!["serve", "--replicas", "1"], vec![], "--tls-cert"),
        (with(&["--tls-cert", "x.pem"]), vec![], "--tls-cert"),
        (
            vec!["--workers", "0", "serve", "--plaintext", "--replicas", "1"],
            vec![],
            "--workers",
        ),
        (with(&["--no-such-flag"]), vec![], "--no-such-flag"),
        (
            with(&[]),
            vec![("WSROUTER_MAX_PENDING_BYTES", "lots")],
            "--max-pending-bytes",
        ),
        (vec!["frobnicate"], vec![], "frobnicate"),
        // validation after parsing
        (
            with(&["--max-header-bytes", "100"]),
            vec![],
            "--max-header-bytes",
        ),
        (
            with(&["--max-client-hello", "1MiB"]),
            vec![],
            "--max-client-hello",
        ),
        (with(&["--path-prefix", "ws"]), vec![], "--path-prefix"),
        (
            vec![
                "serve",
                "--tls-cert",
                "/nonexistent/c.pem",
                "--tls-key",
                "/nonexistent/k.pem",
                "--replicas",
                "1",
            ],
            vec![],
            "/nonexistent/c.pem",
        ),
    ];
    for (args, env, names) in cases {
        let out = wsrouter(&args, &env);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?} {env:?}: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: not one line: {stderr}");
        assert!(lines[0].contains(names), "{args:?}: {stderr}");
        assert!(
            lines[0].contains("invalid configuration"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn help_and_version_exit_0() {
    for args in [&["--help"][..], &["--version"], &["serve", "--help"]] {
        let out = wsrouter(args, &[]);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(!out.stdout.is_empty());
    }
    // No subcommand: the usage, and 64.
    let out = wsrouter(&[], &[]);
    assert_eq!(out.status.code(), Some(64));
}

/// `WSROUTER_REPLICAS` is the number of backend pods there are, wherever it is read:
/// `route` computes over it, and a `plan` run where it is set (a router pod's shell)
/// does not take it for the count to plan; that is `WSROUTER_PLAN_REPLICAS`.
#[test]
fn the_replicas_variable_is_the_pod_count_and_never_a_plans_target() {
    let out = wsrouter(&["route", "ns-02"], &[("WSROUTER_REPLICAS", "4")]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(", 4 replicas;"));

    let dir = std::env::temp_dir().join(format!("wsrouter-exits-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let manifest = dir.join("overrides.yaml");
    std::fs::write(&manifest, "kind: ConfigMap\ndata:\n  ns-01: \"3\"\n").expect("write");
    let manifest = manifest.to_str().expect("utf-8 path");
    let plan = |env: &[(&str, &str)]| {
        let out = wsrouter(
            &["plan", "--current-replicas", "4", "--overrides", manifest],
            env,
        );
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let unchanged = plan(&[("WSROUTER_REPLICAS", "8")]);
    assert!(
        unchanged.starts_with("plan: replicas 4 → 4,"),
        "{unchanged}"
    );
    let scaled = plan(&[("WSROUTER_PLAN_REPLICAS", "8")]);
    assert!(scaled.starts_with("plan: replicas 4 → 8,"), "{scaled}");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

/// `wsrouter route … | head -0`: the reader is gone before the answer is written. The
/// answer has nowhere to go, which is no failure of the command: it ends quietly, as
/// `ls | head` does, instead of panicking with a backtrace.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    use std::process::Stdio;
    let dir = std::env::temp_dir().join(format!("wsrouter-exits-pipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let overrides = dir.join("overrides.yaml");
    std::fs::write(&overrides, "kind: ConfigMap\ndata:\n  ns-01: \"3\"\n").expect("written");
    let overrides = overrides.to_string_lossy().into_owned();
    let commands: [&[&str]; 4] = [
        &["route", "ns-01", "--replicas", "4"],
        &["route", "ns-01", "--replicas", "4", "--json"],
        &["plan", "--current-replicas", "4", "--overrides", &overrides],
        &[
            "cert",
            "--host",
            "localhost",
            "--out",
            dir.to_str().expect("a UTF-8 temp path"),
        ],
    ];
    for args in commands {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsrouter"))
            .args(args)
            .env_clear()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary runs");
        // Closing our end before the command writes: its write finds no reader.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("it ends");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
