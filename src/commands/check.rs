//! `netc check`.

use super::*;

/// Checks every file, then says in one line on stderr how it went, so that a clean check does
/// not look like one that never ran.
pub(super) fn check(files: &[PathBuf]) -> Result<ExitCode> {
    let (mut errors, mut warnings) = (0, 0);
    for file in files {
        let (compiled, ok) = front_end(file)?;
        let file_errors = compiled.diags.iter().filter(|d| d.is_error()).count();
        // A file that is not text has its error but no compiled diagnostics.
        errors += file_errors.max(usize::from(!ok));
        warnings += compiled.diags.len() - file_errors;
    }
    let verdict = if errors > 0 { "error" } else { "ok" };
    eprintln!(
        "{verdict}: {}, {}, {}",
        plural(files.len(), "file"),
        plural(errors, "error"),
        plural(warnings, "warning")
    );
    Ok(if errors > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
