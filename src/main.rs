//! The `netc` command line: parses flags with clap, reads files, runs the compiler and the
//! runtime, and turns every error into a rendered diagnostic with a non-zero exit code.
//!
//! This is the only place where errors become `miette::Report`s and where anything is printed
//! for the user; library crates return typed errors. A panic (a bug in netc) is caught by a hook
//! that prints a short apology instead of a Rust backtrace.

mod commands;
mod progress;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    install_panic_hook();
    let cli = commands::Cli::parse();
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(report) => {
            eprintln!("{}", commands::with_invocation(&format!("{report:?}")));
            ExitCode::from(1)
        }
    }
}

/// A panic is always a bug in netc, never the user's fault: say so plainly, without the Rust
/// panic text that makes it look like the user's input crashed a program.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        // `netc ... | head`: the reader went away. Stop quietly, as a program killed by
        // SIGPIPE would (status 128 + 13), instead of calling it a bug.
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        eprintln!(
            "error[netc::internal]: netc hit an internal error{location}: {message}\n  \
             help: this is a bug in netc, not in your spec; please report it with the command you ran"
        );
    }));
}
