//! Reading and compiling specs for the commands: each file is read once, with a size limit,
//! overrides are applied to its text, and diagnostics are printed against the text compiled.

use super::*;

/// Width diagnostics are wrapped at, on a terminal or not.
pub(super) const DIAGNOSTIC_WIDTH: usize = 100;

/// A spec file's bytes, reading at most one byte past `MAX_SOURCE_LEN` (a sparse file of
/// gigabytes or `/dev/urandom` costs a megabyte, not all of memory); a longer file is the
/// `syntax::too_large` diagnostic.
pub(super) fn read_spec(
    path: &Path,
) -> Result<std::result::Result<Vec<u8>, netc_diagnostics::Diag>> {
    use netc_front::syntax::{too_large, MAX_SOURCE_LEN};
    use std::io::Read as _;
    let cannot_read = |cause| CliError::ReadSpec {
        path: path.to_path_buf(),
        cause,
    };
    let file = std::fs::File::open(path).map_err(cannot_read)?;
    let mut bytes = Vec::new();
    file.take(MAX_SOURCE_LEN as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(cannot_read)?;
    if bytes.len() <= MAX_SOURCE_LEN {
        return Ok(Ok(bytes));
    }
    let size = std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    Ok(Err(too_large(size)))
}

/// Reads and compiles a spec, printing its diagnostics to stderr. Returns the result and
/// whether it is free of errors.
pub fn front_end(path: &Path) -> Result<(netc_front::Compiled, bool)> {
    let Some(source) = read_source(path)? else {
        let compiled = netc_front::Compiled {
            ast: None,
            program: None,
            diags: Vec::new(),
        };
        return Ok((compiled, false));
    };
    Ok(compile_source(&source))
}

/// A spec as a command trains it: its file read once, the overrides applied to the text, and
/// the program the front end made of that text.
pub struct LoadedSpec {
    pub source: netc_runtime::run::SpecSource,
    pub program: Program,
    /// The warnings already printed.
    pub diags: Vec<diagnostics::Diag>,
}

/// Reads the spec at `path` once, applies `overrides` (`--set` pairs: `--epochs`, `--seed` and
/// `--batch` are such pairs) to its text, and compiles the result, printing its diagnostics, so
/// the checker's limits and lints see the spec as it will run. `None` once errors are printed.
pub fn load_spec(path: &Path, overrides: &[(String, String)]) -> Result<Option<LoadedSpec>> {
    let Some(mut source) = read_source(path)? else {
        return Ok(None);
    };
    if !overrides.is_empty() {
        match netc_front::overrides::apply_all(&source.text, overrides) {
            Ok(text) => source.text = text,
            Err(e) => {
                // A flag finds no place in a spec that is broken where it would go (no `train`
                // block, say): the spec's own errors say more than the override's.
                if compile_source(&source).1 {
                    return Err(e.into());
                }
                return Ok(None);
            }
        }
    }
    let (compiled, ok) = compile_source(&source);
    let diags = compiled.diags;
    Ok(compiled.program.filter(|_| ok).map(|program| LoadedSpec {
        source,
        program,
        diags,
    }))
}

/// The text of the spec at `path`, read once; `None` after printing why there is none it can
/// show (too large, not UTF-8).
pub(super) fn read_source(path: &Path) -> Result<Option<netc_runtime::run::SpecSource>> {
    let name = path.display().to_string();
    let color = stderr_color();
    let bytes = match read_spec(path)? {
        Ok(bytes) => bytes,
        Err(too_large) => {
            // Nothing of the file is shown: it may be megabytes of anything.
            eprint!(
                "{}",
                diagnostics::render(&name, "", &[too_large], DIAGNOSTIC_WIDTH, color)
            );
            return Ok(None);
        }
    };
    match String::from_utf8(bytes) {
        Ok(text) => Ok(Some(netc_runtime::run::SpecSource { name, text })),
        Err(e) => {
            let bad = netc_front::decode(e.as_bytes()).expect_err("not UTF-8");
            eprint!(
                "{}",
                diagnostics::render(&name, &bad.lossy, &[bad.diag], DIAGNOSTIC_WIDTH, color)
            );
            Ok(None)
        }
    }
}

/// Compiles a spec's text, printing its diagnostics to stderr. Returns the result and whether
/// it is free of errors.
pub(super) fn compile_source(
    source: &netc_runtime::run::SpecSource,
) -> (netc_front::Compiled, bool) {
    let name = &source.name;
    let compiled = netc_front::compile(&source.text);
    if !compiled.diags.is_empty() {
        eprint!(
            "{}",
            diagnostics::render(
                name,
                &source.text,
                &compiled.diags,
                DIAGNOSTIC_WIDTH,
                stderr_color()
            )
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
    (compiled, ok)
}

/// Whether diagnostics on stderr get colour: on a terminal, unless `NO_COLOR` is set.
pub(super) fn stderr_color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}
