//! netc's front end: `.net` text → syntax → AST → check → `netc_ir::ir::Program`.
//!
//! The stages are separate modules and each only talks to its neighbours. Architecture
//! invariant: pest pairs never leave `syntax` (the `Rule` type is private to it), and spans never
//! reach the IR (`netc-ir` does not depend on `netc-diagnostics`). Everything a user must be told
//! about a spec is a `Diag` from here (see `docs/ARCHITECTURE.md`).

pub mod ast;
pub mod check;
pub mod lower;
pub mod overrides;
pub mod print;
pub mod syntax;

use netc_diagnostics::{Diag, Span};
use netc_ir::ir;

/// What the front end made of a spec: the AST when it parsed, the IR when it checked, and every
/// diagnostic, sorted by position in the file.
#[derive(Debug)]
pub struct Compiled {
    pub ast: Option<ast::Spec>,
    pub program: Option<ir::Program>,
    pub diags: Vec<Diag>,
}

impl Compiled {
    pub fn has_errors(&self) -> bool {
        self.diags.iter().any(Diag::is_error)
    }
}

/// A spec file that is not UTF-8: its lossy decoding (to show) and the `syntax::not_utf8`
/// diagnostic pointing at the first bad byte.
#[derive(Clone, Debug)]
pub struct NotUtf8 {
    pub lossy: String,
    pub diag: Diag,
}

/// A spec file's bytes as text, or what to tell the user when they are not UTF-8.
pub fn decode(bytes: &[u8]) -> Result<&str, Box<NotUtf8>> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => {
            let lossy = String::from_utf8_lossy(bytes).into_owned();
            let at = String::from_utf8_lossy(&bytes[..e.valid_up_to()]).len();
            let end = at + lossy[at..].chars().next().map_or(0, char::len_utf8);
            let diag = Diag::error("syntax::not_utf8", "this file is not UTF-8 text")
                .with_label(Span::new(at, end), "invalid UTF-8 here")
                .with_help("save the spec as UTF-8; is this the right file?");
            Err(Box::new(NotUtf8 { lossy, diag }))
        }
    }
}

/// Runs the front end on one file's text: parse, build the AST, check, lower.
pub fn compile(source: &str) -> Compiled {
    let (entries, mut diags) = syntax::parse(source);
    let spec = ast::build(&entries, &mut diags);
    let checked = check::check(&spec, &mut diags);
    let program = match checked {
        Some(c) if !diags.iter().any(Diag::is_error) => {
            let program = lower::lower(&c);
            check::memory(&spec, &program, &mut diags);
            Some(program).filter(|_| !diags.iter().any(Diag::is_error))
        }
        _ => None,
    };
    diags.sort_by_key(Diag::primary_start);
    Compiled {
        ast: Some(spec),
        program,
        diags,
    }
}
