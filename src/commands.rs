//! The verbs of `netc` and the flags they take.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use miette::{miette, Result};
use netc_compiler::diagnostics::{self, Diag, Span};
use netc_compiler::print;

#[derive(Parser, Debug)]
#[command(
    name = "netc",
    version,
    about = "Compile and train declarative deep-learning specs (.net files)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check specs and print their diagnostics (errors and lints).
    Check {
        /// The `.net` files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Compile a spec and print one of its intermediate forms.
    Compile {
        file: PathBuf,
        /// What to print.
        #[arg(long, value_enum, default_value_t = Emit::Summary)]
        emit: Emit,
    },
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Emit {
    /// The typed syntax tree, with spans.
    Ast,
    /// The IR the backends consume.
    Ir,
    /// A Keras-style table of layers, output shapes and parameter counts.
    Summary,
}

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check { files } => {
            let mut failed = false;
            for file in &files {
                let (_, ok) = front_end(file)?;
                failed |= !ok;
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Compile { file, emit } => {
            let (compiled, ok) = front_end(&file)?;
            if !ok {
                return Ok(ExitCode::from(1));
            }
            let text = match emit {
                Emit::Ast => compiled.ast.as_ref().map(print::ast),
                Emit::Ir => compiled.program.as_ref().map(print::ir),
                Emit::Summary => compiled.program.as_ref().map(print::summary),
            };
            print!("{}", text.unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Width diagnostics are wrapped at, on a terminal or not.
const DIAGNOSTIC_WIDTH: usize = 100;

/// Reads and compiles a spec, printing its diagnostics to stderr. Returns the result and
/// whether it is free of errors.
pub fn front_end(path: &Path) -> Result<(netc_compiler::Compiled, bool)> {
    let bytes = std::fs::read(path).map_err(|e| {
        miette!(
            code = "netc::io::read",
            help = "check the path; specs live in files like `specs/baseline.net`",
            "cannot read `{}`: {e}",
            path.display()
        )
    })?;
    let name = path.display().to_string();
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let source = match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
            let at_lossy = String::from_utf8_lossy(&e.as_bytes()[..at]).len();
            let diag = Diag::error("syntax::not_utf8", "this file is not UTF-8 text")
                .with_label(
                    Span::new(
                        at_lossy,
                        at_lossy + lossy[at_lossy..].chars().next().map_or(0, char::len_utf8),
                    ),
                    "invalid UTF-8 here",
                )
                .with_help("save the spec as UTF-8; is this the right file?");
            eprint!(
                "{}",
                diagnostics::render(&name, &lossy, &[diag], DIAGNOSTIC_WIDTH, color)
            );
            let compiled = netc_compiler::Compiled {
                ast: None,
                program: None,
                diags: Vec::new(),
            };
            return Ok((compiled, false));
        }
    };
    let compiled = netc_compiler::compile(&source);
    if !compiled.diags.is_empty() {
        eprint!(
            "{}",
            diagnostics::render(&name, &source, &compiled.diags, DIAGNOSTIC_WIDTH, color)
        );
        let errors = compiled.diags.iter().filter(|d| d.is_error()).count();
        let warnings = compiled.diags.len() - errors;
        if errors > 0 {
            eprintln!(
                "{name}: {} and {}",
                plural(errors, "error"),
                plural(warnings, "warning")
            );
        }
    }
    let ok = !compiled.has_errors();
    Ok((compiled, ok))
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
