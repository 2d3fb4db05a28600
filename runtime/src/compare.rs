//! `netc compare`: several finished runs side by side.
//!
//! Reads each run directory's `summary.json` and `history.csv` (as `report` writes them) and
//! produces a markdown table of the headline numbers plus one PNG overlaying the validation
//! curves (`plot::plot_compare`), both written into an output directory. It only reads what
//! runs left behind; it never trains or evaluates anything.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use crate::plot::{plot_compare, PlotError};
use crate::report::{atomic_write, read_history_csv, read_summary, History, ReportError, Summary};
use crate::run::{HISTORY_FILE, SUMMARY_FILE};

/// File names `compare` writes into its output directory.
pub const TABLE_FILE: &str = "compare.md";
pub const PLOT_FILE: &str = "compare.png";

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum CompareError {
    #[error("nothing to compare")]
    #[diagnostic(code(netc::compare::no_runs), help("name one or more run directories"))]
    NoRuns,
    #[error("{} is not a run directory", dir.display())]
    #[diagnostic(
        code(netc::compare::not_a_run),
        help(
            "pass run directories as `netc run` writes them (a sweep's runs are its \
             subdirectories), each holding summary.json and history.csv"
        )
    )]
    NotARun { dir: PathBuf },
    #[error("run {} could not be read", dir.display())]
    #[diagnostic(code(netc::compare::bad_run))]
    BadRun {
        dir: PathBuf,
        #[source]
        #[diagnostic_source]
        source: ReportError,
    },
    #[error("could not create the output directory {}: {source}", dir.display())]
    #[diagnostic(
        code(netc::compare::out_dir),
        help("choose an output directory netc may create and write in")
    )]
    OutDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Write(#[from] ReportError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Plot(#[from] PlotError),
}

/// One run as read back from its directory.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    /// The name the table and the legend use: the directory's last component, or the whole path
    /// when two runs share it.
    pub name: String,
    pub dir: PathBuf,
    pub summary: Summary,
    pub history: History,
}

/// What `compare` produced.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    pub runs: Vec<RunRecord>,
    /// The markdown table, also written to `table_path`.
    pub table: String,
    pub table_path: PathBuf,
    pub plot_path: PathBuf,
}

/// Reads the runs in `run_dirs`, writes `compare.md` and `compare.png` into `out` (created if
/// needed), and returns them. Every run is read before anything is written, so a bad run
/// directory leaves `out` untouched.
pub fn compare(run_dirs: &[PathBuf], out: &Path) -> Result<Comparison, CompareError> {
    if run_dirs.is_empty() {
        return Err(CompareError::NoRuns);
    }
    let names = run_names(run_dirs);
    let runs = run_dirs
        .iter()
        .zip(names)
        .map(|(dir, name)| read_run(dir, name))
        .collect::<Result<Vec<_>, _>>()?;
    let table = markdown_table(&runs);

    fs::create_dir_all(out).map_err(|source| CompareError::OutDir {
        dir: out.to_path_buf(),
        source,
    })?;
    let table_path = out.join(TABLE_FILE);
    atomic_write(&table_path, table.as_bytes()).map_err(|e| ReportError::write(&table_path, e))?;
    let plot_path = out.join(PLOT_FILE);
    let curves: Vec<(String, History)> = runs
        .iter()
        .map(|run| (run.name.clone(), run.history.clone()))
        .collect();
    plot_compare(&plot_path, &curves)?;
    Ok(Comparison {
        runs,
        table,
        table_path,
        plot_path,
    })
}

/// Reads one run directory.
pub fn read_run(dir: &Path, name: String) -> Result<RunRecord, CompareError> {
    if !dir.is_dir() {
        return Err(CompareError::NotARun {
            dir: dir.to_path_buf(),
        });
    }
    let bad_run = |source| CompareError::BadRun {
        dir: dir.to_path_buf(),
        source,
    };
    let summary = read_summary(&dir.join(SUMMARY_FILE)).map_err(bad_run)?;
    let history = read_history_csv(&dir.join(HISTORY_FILE)).map_err(bad_run)?;
    Ok(RunRecord {
        name,
        dir: dir.to_path_buf(),
        summary,
        history,
    })
}

/// Short names for the runs: the last path component, unless two runs would share it.
fn run_names(run_dirs: &[PathBuf]) -> Vec<String> {
    let short: Vec<String> = run_dirs
        .iter()
        .map(|dir| match dir.file_name() {
            Some(name) => name.to_string_lossy().into_owned(),
            None => dir.display().to_string(),
        })
        .collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for name in &short {
        *seen.entry(name).or_default() += 1;
    }
    short
        .iter()
        .zip(run_dirs)
        .map(|(name, dir)| {
            if seen.get(name.as_str()).is_some_and(|&count| count > 1) {
                dir.display().to_string()
            } else {
                name.clone()
            }
        })
        .collect()
}

fn percent(fraction: f64) -> String {
    if fraction.is_finite() {
        format!("{:.2}%", 100.0 * fraction)
    } else {
        "n/a".to_string()
    }
}

/// Markdown cells must not contain `|`; names come from paths and specs, so escape them.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The comparison table; the best validation accuracy is in bold.
pub fn markdown_table(runs: &[RunRecord]) -> String {
    let best = runs
        .iter()
        .map(|r| r.summary.best_val_acc)
        .filter(|acc| acc.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    let mut out = String::from(
        "| run | model | best val acc | epoch of best | s/epoch | total s | test acc | MC test acc |\n\
         |---|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for run in runs {
        let s = &run.summary;
        let mut val_acc = percent(s.best_val_acc);
        if s.best_val_acc == best && runs.len() > 1 {
            val_acc = format!("**{val_acc}**");
        }
        let mc = s.mc_test_acc.map_or_else(|| "-".to_string(), percent);
        // Writing into a String cannot fail.
        writeln!(
            out,
            "| {} | {} | {val_acc} | {} | {:.2} | {:.1} | {} | {mc} |",
            cell(&run.name),
            cell(&s.model),
            s.best_epoch,
            s.sec_per_epoch,
            s.total_seconds,
            percent(s.test_acc),
        )
        .ok();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{fixtures, write_history_csv, write_summary};

    /// Writes a run directory as `netc run` leaves it.
    fn write_run(root: &Path, name: &str, epochs: usize, mc: Option<f64>) -> PathBuf {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        let history = fixtures::history(epochs);
        let mut summary = fixtures::summary(name, &history);
        summary.mc_test_acc = mc;
        summary.mc_samples = mc.map(|_| 30);
        write_summary(&dir.join(SUMMARY_FILE), &summary).unwrap();
        write_history_csv(&dir.join(HISTORY_FILE), &history).unwrap();
        dir
    }

    #[test]
    fn compares_two_runs_in_a_table_and_a_plot() {
        let root = tempfile::tempdir().unwrap();
        let short = write_run(root.path(), "short", 4, None);
        let long = write_run(root.path(), "long", 15, Some(0.5678));
        let out = root.path().join("cmp");
        let comparison = compare(&[short.clone(), long.clone()], &out).unwrap();

        assert_eq!(comparison.runs.len(), 2);
        assert_eq!(comparison.runs[0].name, "short");
        assert_eq!(comparison.runs[1].history, fixtures::history(15));
        let lines: Vec<&str> = comparison.table.lines().collect();
        assert_eq!(lines.len(), 4, "{}", comparison.table);
        assert_eq!(
            lines[0],
            "| run | model | best val acc | epoch of best | s/epoch | total s | test acc | MC test acc |"
        );
        let best_short = fixtures::history(4).best_by_val_accuracy().unwrap().clone();
        let best_long = fixtures::history(15)
            .best_by_val_accuracy()
            .unwrap()
            .clone();
        assert!(best_long.val_accuracy > best_short.val_accuracy);
        assert_eq!(
            lines[2],
            format!(
                "| short | short | {} | {} | 3.75 | 41.5 | 51.25% | - |",
                percent(f64::from(best_short.val_accuracy)),
                best_short.epoch
            )
        );
        assert_eq!(
            lines[3],
            format!(
                "| long | long | **{}** | {} | 3.75 | 41.5 | 51.25% | 56.78% |",
                percent(f64::from(best_long.val_accuracy)),
                best_long.epoch
            )
        );
        assert_eq!(
            fs::read_to_string(out.join(TABLE_FILE)).unwrap(),
            comparison.table
        );

        let decoder = png::Decoder::new(fs::File::open(&comparison.plot_path).unwrap());
        let info = decoder.read_info().unwrap().info().clone();
        assert_eq!((info.width, info.height), crate::plot::PANELS_SIZE);
    }

    #[test]
    fn a_missing_run_directory_is_named_and_nothing_is_written() {
        let root = tempfile::tempdir().unwrap();
        let good = write_run(root.path(), "good", 3, None);
        let missing = root.path().join("typo");
        let out = root.path().join("cmp");
        let err = compare(&[good, missing.clone()], &out).unwrap_err();
        assert!(
            matches!(&err, CompareError::NotARun { dir } if *dir == missing),
            "{err:?}"
        );
        assert!(err.to_string().contains("typo"), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn a_run_without_summary_or_with_a_corrupt_history_is_named() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("cmp");
        let unfinished = write_run(root.path(), "unfinished", 3, None);
        fs::remove_file(unfinished.join(SUMMARY_FILE)).unwrap();
        match compare(std::slice::from_ref(&unfinished), &out) {
            Err(CompareError::BadRun { dir, source }) => {
                assert_eq!(dir, unfinished);
                assert!(matches!(source, ReportError::Read { .. }), "{source:?}");
            }
            other => panic!("expected BadRun, got {other:?}"),
        }

        let damaged = write_run(root.path(), "damaged", 3, None);
        fs::write(damaged.join(HISTORY_FILE), "epoch,lr\n1,0.1\n").unwrap();
        let err = compare(std::slice::from_ref(&damaged), &out).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        match err {
            CompareError::BadRun { source, .. } => {
                assert!(
                    matches!(source, ReportError::BadHistory { .. }),
                    "{source:?}"
                );
            }
            other => panic!("expected BadRun, got {other:?}"),
        }
        assert!(!out.exists());
    }

    #[test]
    fn no_runs_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        assert!(matches!(
            compare(&[], root.path()),
            Err(CompareError::NoRuns)
        ));
    }

    #[test]
    fn runs_sharing_a_directory_name_are_told_apart_by_path() {
        let dirs = [
            PathBuf::from("a/run"),
            PathBuf::from("b/run"),
            PathBuf::from("c/other"),
        ];
        assert_eq!(run_names(&dirs), ["a/run", "b/run", "other"]);
    }

    #[test]
    fn table_cells_escape_pipes() {
        let history = fixtures::history(2);
        let run = RunRecord {
            name: "a|b".to_string(),
            dir: PathBuf::from("a|b"),
            summary: fixtures::summary("m|n", &history),
            history,
        };
        let table = markdown_table(&[run]);
        assert!(
            table
                .lines()
                .nth(2)
                .unwrap()
                .starts_with("| a\\|b | m\\|n |"),
            "{table}"
        );
    }
}
