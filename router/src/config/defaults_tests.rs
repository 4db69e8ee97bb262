//! Defaults are written once, in each group's `Default`. These tests hold the command
//! line, `--help` and the README's flag tables to them: an empty command line parses to
//! each group's `Default`, the defaults `--help` shows parse back to it, and the README
//! states the same values.

use std::collections::BTreeMap;
use std::fmt::Debug;

use clap::{Arg, ArgAction, Args, CommandFactory, Parser};

use super::common::CommonArgs;
use super::edge::EdgeArgs;
use super::lifecycle::LifecycleArgs;
use super::requests::RequestArgs;
use super::routing::RoutingArgs;
use super::sockets::SocketArgs;
use super::tls::{TlsArgs, TlsFiles};
use super::upstream::UpstreamArgs;
use super::*;
use crate::config::admin::{AdminArgs, ServeAdminArgs};

/// One group of flags as a command of its own.
#[derive(Parser, Debug)]
#[command(name = "group")]
struct Only<T: Args> {
    #[command(flatten)]
    args: T,
}

fn parse_group<T: Args>(argv: &[String]) -> T {
    let mut full = vec!["group".to_owned()];
    full.extend_from_slice(argv);
    match Only::<T>::try_parse_from(full) {
        Ok(o) => o.args,
        Err(e) => panic!("{argv:?}: {e}"),
    }
}

/// Calls `check::<T>()` for every group of flags with defaults of its own.
macro_rules! for_each_group {
    ($check:ident $(, $arg:expr)*) => {
        $check::<EdgeArgs>($($arg),*);
        $check::<TlsArgs>($($arg),*);
        $check::<RequestArgs>($($arg),*);
        $check::<UpstreamArgs>($($arg),*);
        $check::<SocketArgs>($($arg),*);
        $check::<LifecycleArgs>($($arg),*);
        $check::<AdminArgs>($($arg),*);
        $check::<ServeAdminArgs>($($arg),*);
        $check::<RoutingArgs>($($arg),*);
        $check::<CommonArgs>($($arg),*);
    };
}

#[test]
fn an_empty_command_line_is_each_groups_default() {
    fn empty<T: Args + Default + PartialEq + Debug>() {
        assert_eq!(
            parse_group::<T>(&[]),
            T::default(),
            "{}",
            std::any::type_name::<T>()
        );
    }
    for_each_group!(empty);
    let Command::Dev(dev) = Cli::try_parse_from(["wsrouter", "dev"]).unwrap().command else {
        unreachable!()
    };
    assert_eq!(*dev, DevArgs::default());
    // `serve` needs a certificate or --plaintext; everything else is its default.
    let Command::Serve(serve) = Cli::try_parse_from(["wsrouter", "serve", "--plaintext"])
        .unwrap()
        .command
    else {
        unreachable!()
    };
    let want = ServeArgs {
        tls_files: TlsFiles {
            plaintext: true,
            ..TlsFiles::default()
        },
        ..ServeArgs::default()
    };
    assert_eq!(*serve, want);
}

/// `--flag` → the value its `[default: …]` line shows, in a rendered long help.
fn shown_defaults(help: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut flag = None;
    for line in help.lines().map(str::trim_start) {
        if line.starts_with('-') {
            flag = line.split([' ', ',']).find(|w| w.starts_with("--"));
        } else if let (Some(f), Some(v)) = (flag, line.strip_prefix("[default: ")) {
            out.insert(f.to_owned(), v.strip_suffix(']').unwrap_or(v).to_owned());
        }
    }
    out
}

fn long_help(sub: &str) -> String {
    let mut cli = Cli::command();
    let cmd = cli.find_subcommand_mut(sub).expect("subcommand");
    cmd.render_long_help().to_string()
}

#[test]
fn the_defaults_help_shows_are_each_groups_default() {
    /// Every flag of `T` given the default `shown` says it has: `T::default()`.
    fn shown_parse_to_default<T: Args + Default + PartialEq + Debug>(
        shown: &BTreeMap<String, String>,
    ) {
        let mut argv = Vec::new();
        for arg in Only::<T>::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            let flag = format!("--{long}");
            if let Some(v) = shown.get(&flag) {
                argv.extend([flag, v.clone()]);
            }
        }
        assert_eq!(
            parse_group::<T>(&argv),
            T::default(),
            "{}: {argv:?}",
            std::any::type_name::<T>()
        );
    }
    let serve = shown_defaults(&long_help("serve"));
    assert_eq!(serve.get("--drain-grace").map(String::as_str), Some("20s"));
    assert_eq!(
        serve.get("--max-pending-bytes").map(String::as_str),
        Some("24MiB")
    );
    for_each_group!(shown_parse_to_default, &serve);
    let dev = shown_defaults(&long_help("dev"));
    shown_parse_to_default::<CommonArgs>(&dev);
    let mut argv = vec!["wsrouter".to_owned(), "dev".to_owned()];
    for flag in ["--listen", "--admin-listen", "--backends", "--interval"] {
        argv.extend([flag.to_owned(), dev[flag].clone()]);
    }
    let Command::Dev(parsed) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!()
    };
    assert_eq!(*parsed, DevArgs::default());
}

/// A README flag row: its variable and default cells.
struct Row<'a> {
    env: &'a str,
    default: &'a str,
}

/// README rows by subcommand (`serve`, `dev`, …) and flag (`--listen`).
type Rows<'a> = BTreeMap<(&'a str, &'a str), Row<'a>>;

/// The README's flag tables, and each subcommand's section text.
fn readme_tables(readme: &str) -> (Rows<'_>, BTreeMap<&str, String>) {
    let (mut rows, mut sections) = (BTreeMap::new(), BTreeMap::new());
    let mut section: Option<&str> = None;
    for line in readme.lines() {
        if line.starts_with("#") {
            section = line
                .strip_prefix("### `wsrouter ")
                .and_then(|s| s.split([' ', '`']).next());
            continue;
        }
        let Some(sub) = section else { continue };
        sections
            .entry(sub)
            .or_insert_with(String::new)
            .push_str(line);
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let [_, flag, env, default, ..] = cells[..] {
            if let Some(flag) = code(flag).filter(|f| f.starts_with("--")) {
                rows.insert((sub, flag), Row { env, default });
            }
        }
    }
    (rows, sections)
}

/// The first `code span` in a cell.
fn code(cell: &str) -> Option<&str> {
    cell.split('`').nth(1)
}

/// The README's default cell says what `--help` does: the same value where clap has
/// one, "off" for a switch, a prose default only where the help has one too.
fn check_default(sub: &str, arg: &Arg, cell: &str) {
    let flag = arg.get_long().unwrap_or_default();
    let shown: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        assert!(
            cell.starts_with("off"),
            "{sub} --{flag}: README says {cell}"
        );
    } else if !shown.is_empty() {
        assert!(
            cell.starts_with('`') && code(cell) == Some(&shown.join(",")),
            "{sub} --{flag}: --help says {shown:?}, README says {cell}"
        );
    } else if help.contains("[default") {
        assert!(
            !matches!(cell, "—" | "(required)"),
            "{sub} --{flag}: --help names a default, README says {cell}"
        );
    } else {
        assert!(
            !cell.starts_with('`'),
            "{sub} --{flag}: README says {cell}, --help shows no default"
        );
        if arg.is_required_set() {
            assert_eq!(cell, "(required)", "{sub} --{flag}");
        }
    }
}

/// The README documents every flag, its variable and its default, so it cannot fall
/// behind. `dev`'s table lists its own flags; the ones it shares with `serve` are named
/// in its section and documented in `serve`'s, as are the global ones.
#[test]
fn readme_documents_every_flag() {
    let readme = include_str!("../../../README.md");
    let (rows, sections) = readme_tables(readme);
    let cli = Cli::command();
    let globals = cli.get_arguments().map(|a| ("serve", a));
    let subs = cli
        .get_subcommands()
        .flat_map(|s| s.get_arguments().map(move |a| (s.get_name(), a)));
    let mut checked = 0;
    for (sub, arg) in globals.chain(subs) {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let flag = format!("--{long}");
        assert!(
            readme.contains(&format!("`{flag}`")),
            "README lacks {sub} {flag}"
        );
        let row = match rows.get(&(sub, flag.as_str())) {
            Some(row) => row,
            None if sub == "dev" => {
                assert!(
                    sections["dev"].contains(&format!("`{flag}`")),
                    "README's dev section does not name {flag}"
                );
                &rows[&("serve", flag.as_str())]
            }
            None => panic!("README's `wsrouter {sub}` table lacks {flag}"),
        };
        if let Some(env) = arg.get_env() {
            let env = env.to_string_lossy();
            assert!(readme.contains(&format!("`{env}`")), "README lacks {env}");
            assert_eq!(code(row.env), Some(&*env), "{sub} {flag}");
        }
        check_default(sub, arg, row.default);
        checked += 1;
    }
    assert!(checked > 60, "{checked} flags checked");
}
