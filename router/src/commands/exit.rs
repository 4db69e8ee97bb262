//! Exit statuses, and how each kind of failure is reported before the process ends.

use std::io::Write;
use std::process::ExitCode;

use clap::error::ErrorKind;

use crate::logging::DisplayChain;

/// EX_USAGE from sysexits.h: the configuration is wrong, restarting will not help.
pub(crate) const EXIT_CONFIG: u8 = 64;

/// clap's verdict on the command line: help and version as asked (exit 0); anything
/// else is a configuration error, one line naming the flag and what is wrong, exit 64.
pub fn bad_command_line(e: &clap::Error) -> ExitCode {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            ExitCode::from(EXIT_CONFIG)
        }
        _ => {
            // clap's message runs to the first blank line (a list of missing flags
            // spans several); the usage and tips after it are left out.
            let text = e.to_string();
            let message: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let line = message.join(" ");
            let line = line.strip_prefix("error: ").unwrap_or(&line);
            eprintln!("wsrouter: invalid configuration: {line}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// A rejected plan or route input: the reasons on stderr, one per line, exit 1.
pub(crate) fn usage_error(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("wsrouter: {}", DisplayChain(e));
    ExitCode::FAILURE
}

/// A configuration the daemon cannot run with: logged, exit 64.
pub(crate) fn config_error(e: &dyn std::error::Error) -> ExitCode {
    tracing::error!("invalid configuration: {}", DisplayChain(e));
    ExitCode::from(EXIT_CONFIG)
}

/// Anything else that stops a command (a port taken, a thread not started): logged with
/// what was being done, exit 1.
pub(crate) fn failure(doing: &str, e: &dyn std::error::Error) -> ExitCode {
    tracing::error!("{doing}: {}", DisplayChain(e));
    ExitCode::FAILURE
}

/// A command's answer on stdout, and its status: success, or, if stdout is gone, still
/// success when its reader closed it (`wsrouter route … | head -1`: the reader has what
/// it wanted) and a failure otherwise. `print!` would panic on either.
pub(crate) fn print(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => failure("writing the answer to stdout", &e),
    }
}
