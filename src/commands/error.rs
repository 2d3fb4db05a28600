//! The CLI's own errors: what goes wrong in a command before or around the libraries, each with
//! a stable code, rendered by `main` like every other diagnostic.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum CliError {
    #[error("cannot read `{}`: {cause}", path.display())]
    #[diagnostic(
        code(netc::io::read),
        help("check the path; specs live in files like `specs/baseline.net`")
    )]
    ReadSpec {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("cannot create {}: {cause}", path.display())]
    #[diagnostic(code(netc::io::write))]
    CreateDir {
        path: PathBuf,
        cause: std::io::Error,
    },

    #[error("invalid learning-rate range [{min}, {max}]")]
    #[diagnostic(
        code(netc::lr_find::range),
        help("pass rates with 0 < --min < --max, e.g. --min 1e-6 --max 1")
    )]
    LrRange { min: f32, max: f32 },

    #[error("cannot install the interrupt handler: {0}")]
    #[diagnostic(code(netc::run::signals))]
    Signals(String),

    #[error("cannot find the netc binary to run each combination: {0}")]
    #[diagnostic(code(netc::sweep::exe))]
    SweepExe(std::io::Error),

    #[error("this CPU cannot run the {tier} tier")]
    #[diagnostic(
        code(netc::tier::unsupported),
        help(
            "the tiers this CPU runs: {have}; pass one of them to --tier (or NETC_TIER), or \
              leave it out for the widest"
        )
    )]
    Tier { tier: &'static str, have: String },

    #[error("cannot render the report as JSON")]
    #[diagnostic(code(netc::report::json))]
    Json(#[from] serde_json::Error),
}
