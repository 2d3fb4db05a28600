//! `netc compare`.

use super::*;

/// Compares finished runs: a table on stdout, the table and a plot of their curves in `out`.
pub(super) fn compare(run_dirs: &[PathBuf], out: &Path) -> Result<ExitCode> {
    let comparison = netc_runtime::compare::compare(run_dirs, out)?;
    println!("{}", comparison.table);
    eprintln!(
        "wrote {} and {}",
        comparison.table_path.display(),
        comparison.plot_path.display()
    );
    Ok(ExitCode::SUCCESS)
}
