//! `netc sweep`: one run per combination of a grid of parameter values, then a table, a plot of
//! every validation curve, and the best combination.
//!
//! The caller hands over the grid's combinations with the spec text each one runs (rewritten and
//! checked by the front end; this module never parses a spec). Every combination runs as its own
//! `netc run` process (`SweepOptions::exe`), at most `jobs` at a time, each in a subdirectory of
//! the sweep directory named after its values; processes share the data set only through the
//! file system, and report back through their `--json` summary line and their run directory.
//! Nothing here prints: progress goes to the caller's callback.
//!
//! The runs are in process groups of their own, so a Ctrl-C at the terminal reaches the sweep
//! alone; the sweep forwards each interrupt it is told of (`SweepOptions::interrupt`) to every
//! run in progress as one SIGINT, which makes a run checkpoint and exit, and waits for them.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::checkpoint;
use crate::data::{self, DataError};
use crate::plot::{plot_compare, PlotError};
use crate::report::{atomic_write, read_history_csv, History, ReportError, Summary};
use crate::run::{self, RunError, HISTORY_FILE};

/// Files a sweep writes into its directory.
pub const TABLE_FILE: &str = "sweep.md";
pub const PLOT_FILE: &str = "sweep.png";
pub const JSON_FILE: &str = "sweep.json";
/// Subdirectory holding the spec each combination ran (also copied into its run directory).
pub const SPECS_DIR: &str = "specs";

/// How many trailing lines of a failed run's stderr an error quotes.
const STDERR_LINES: usize = 20;

/// Combinations a sweep runs unless asked for more (`--max-runs`). Each one is a whole training
/// run, and a grid is easily far larger than meant: three `--set`s of ten values are a thousand.
pub const DEFAULT_MAX_RUNS: usize = 1_000;

/// How often a run in progress is looked at for its end and for interrupts to forward.
const POLL: Duration = Duration::from_millis(20);

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum SweepError {
    #[error("the sweep has no combinations to run")]
    #[diagnostic(
        code(netc::sweep::empty),
        help("give at least one `--set PATH=VALUE[,VALUE...]`")
    )]
    Empty,

    #[error(
        "the grid has {} combinations ({}), more than the {max_runs} a sweep runs unless asked",
        .size.map_or_else(|| "more".to_string(), |n| n.to_string()),
        .counts.iter().map(ToString::to_string).collect::<Vec<_>>().join(" × ")
    )]
    #[diagnostic(code(netc::sweep::too_many_runs))]
    TooManyRuns {
        /// `None` when the product does not even fit in a `usize`.
        size: Option<usize>,
        /// The number of values of each `--set`, in order.
        counts: Vec<usize>,
        max_runs: usize,
        #[help]
        help: String,
    },

    #[error(
        "the sweep was interrupted: {} stopped, {finished} finished, {not_started} not started",
        .stopped.len()
    )]
    #[diagnostic(
        code(netc::sweep::interrupted),
        help(
            "continue each stopped run with `netc run --resume RUN_DIR`; the spec of every run \
             is in {}", dir.join(SPECS_DIR).display()
        )
    )]
    Interrupted {
        dir: PathBuf,
        /// The runs in progress when the interrupt came, in grid order.
        stopped: Vec<StoppedRun>,
        finished: usize,
        not_started: usize,
    },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Data(Box<DataError>),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Run(Box<RunError>),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Report(Box<ReportError>),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Plot(Box<PlotError>),

    #[error("cannot start {}: {source}", exe.display())]
    #[diagnostic(
        code(netc::sweep::spawn),
        help("the sweep runs each combination in a process of this program; check that it still exists")
    )]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("the run `{label}` failed ({status}); the sweep stopped starting new runs")]
    #[diagnostic(
        code(netc::sweep::run_failed),
        help("its output ended with:\n{stderr}")
    )]
    RunFailed {
        label: String,
        status: String,
        stderr: String,
    },

    #[error("the run `{label}` finished without a readable summary: {problem}")]
    #[diagnostic(
        code(netc::sweep::bad_output),
        help("this is a bug in netc; the run directory is {}", dir.display())
    )]
    BadOutput {
        label: String,
        dir: PathBuf,
        problem: String,
    },
}

impl From<DataError> for SweepError {
    fn from(e: DataError) -> Self {
        SweepError::Data(Box::new(e))
    }
}

impl From<RunError> for SweepError {
    fn from(e: RunError) -> Self {
        SweepError::Run(Box::new(e))
    }
}

impl From<ReportError> for SweepError {
    fn from(e: ReportError) -> Self {
        SweepError::Report(Box::new(e))
    }
}

impl From<PlotError> for SweepError {
    fn from(e: PlotError) -> Self {
        SweepError::Plot(Box::new(e))
    }
}

/// A run that was in progress when the sweep was interrupted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoppedRun {
    pub label: String,
    pub run_dir: PathBuf,
    /// The spec it ran, in the sweep's `specs/`.
    pub spec: PathBuf,
    /// Whether it left a checkpoint that `netc run --resume` continues from. A run stopped
    /// before it wrote one (it had barely started) has to be started again.
    pub resumable: bool,
}

/// One swept parameter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Axis {
    /// The column name in the table and in run names: the path's last name, or the whole path
    /// when two axes end in the same name (see `column_names`).
    pub name: String,
    /// The full path in the spec (`train.optimizer.lr`).
    pub path: String,
    /// The values, as written, in the order given.
    pub values: Vec<String>,
}

/// One point of the grid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Combination {
    /// `(full path, value)` for each axis, in axis order.
    pub values: Vec<(String, String)>,
    /// `lr=3e-4,batch=32`: the run's name, also its directory's name (made file-safe).
    pub label: String,
}

/// A combination with the spec text it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedRun {
    pub combination: Combination,
    pub spec_text: String,
}

/// Column names for paths: each path's last name, or the whole path where two last names clash.
pub fn column_names(paths: &[String]) -> Vec<String> {
    let last = |p: &str| p.rsplit('.').next().unwrap_or(p).to_string();
    paths
        .iter()
        .map(|p| {
            let clashes = paths.iter().filter(|q| last(q) == last(p)).count() > 1;
            if clashes {
                p.clone()
            } else {
                last(p)
            }
        })
        .collect()
}

/// The number of combinations of axes with these numbers of values, computed without building
/// any of them; `None` when it does not fit in a `usize`.
pub fn grid_size(value_counts: &[usize]) -> Option<usize> {
    if value_counts.is_empty() {
        return Some(0);
    }
    value_counts
        .iter()
        .try_fold(1usize, |n, &c| n.checked_mul(c))
}

/// The size of the grid, or `TooManyRuns` when it has more than `max_runs` combinations; to be
/// called before building the grid, whose memory and checking grow with its size.
pub fn check_grid_size(value_counts: &[usize], max_runs: usize) -> Result<usize, SweepError> {
    match grid_size(value_counts) {
        Some(n) if n <= max_runs => Ok(n),
        size => Err(SweepError::TooManyRuns {
            size,
            counts: value_counts.to_vec(),
            max_runs,
            help: match size {
                Some(n) => format!(
                    "each combination is a whole training run: give fewer values, or pass \
                     --max-runs {n} to run them all"
                ),
                None => "that is more than netc can count: give fewer values".to_string(),
            },
        }),
    }
}

/// The cartesian product of the axes, the first axis varying slowest (the order given).
pub fn grid(axes: &[Axis]) -> Vec<Combination> {
    if axes.is_empty() || axes.iter().any(|a| a.values.is_empty()) {
        return Vec::new();
    }
    let mut points: Vec<Vec<usize>> = vec![Vec::new()];
    for axis in axes {
        points = points
            .into_iter()
            .flat_map(|p| {
                (0..axis.values.len()).map(move |i| {
                    let mut next = p.clone();
                    next.push(i);
                    next
                })
            })
            .collect();
    }
    points
        .into_iter()
        .map(|point| {
            let picked: Vec<(&Axis, &String)> = axes
                .iter()
                .zip(point)
                .map(|(a, i)| (a, &a.values[i]))
                .collect();
            Combination {
                values: picked
                    .iter()
                    .map(|(a, v)| (a.path.clone(), (*v).clone()))
                    .collect(),
                label: picked
                    .iter()
                    .map(|(a, v)| format!("{}={v}", a.name))
                    .collect::<Vec<_>>()
                    .join(","),
            }
        })
        .collect()
}

/// A label as a directory name: characters other than letters, digits and `_.=,+-` become `_`.
fn dir_name(label: &str) -> String {
    let safe: String = label
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '.' | '=' | ',' | '+' | '-' => c,
            _ => '_',
        })
        .collect();
    match safe.trim_start_matches('.') {
        "" => "run".to_string(),
        s => s.to_string(),
    }
}

/// Directory names for the runs, unique even when two labels become the same file name.
fn dir_names(runs: &[PlannedRun]) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(runs.len());
    for run in runs {
        let base = dir_name(&run.combination.label);
        let mut name = base.clone();
        let mut n = 1;
        while names.contains(&name) || name == SPECS_DIR {
            n += 1;
            name = format!("{base}-{n}");
        }
        names.push(name);
    }
    names
}

/// One run the sweep asks its launcher for: train `spec` on the data at `data` into the run
/// directory `out`.
#[derive(Clone, Copy, Debug)]
pub struct RunRequest<'a> {
    pub spec: &'a Path,
    pub data: &'a Path,
    pub out: &'a Path,
}

/// Makes the process that trains one run: given a `RunRequest`, a command that trains it and
/// prints the run's `Summary` as one JSON line, the last of its stdout. The caller supplies it
/// (the CLI: `netc run SPEC --json --quiet ...` with its own flags), so the sweep knows no
/// command line; the sweep adds the pipes and, on Unix, the process group.
#[derive(Clone)]
pub struct Launcher(Arc<dyn Fn(&RunRequest<'_>) -> Command + Send + Sync>);

impl Launcher {
    pub fn new(make: impl Fn(&RunRequest<'_>) -> Command + Send + Sync + 'static) -> Launcher {
        Launcher(Arc::new(make))
    }

    fn command(&self, request: &RunRequest<'_>) -> Command {
        (self.0)(request)
    }
}

impl std::fmt::Debug for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Launcher(..)")
    }
}

/// How the runs are made.
#[derive(Clone, Debug)]
pub struct SweepOptions {
    /// Makes each run's process.
    pub launcher: Launcher,
    /// Runs at once (at least 1).
    pub jobs: usize,
    /// Where CIFAR-10 is (`data::locate` looks for it otherwise); located once, before anything
    /// is written, and passed to every run.
    pub data: Option<PathBuf>,
    /// The sweep directory; by default `runs/sweep-<model>-<UTC time>`. Never overwritten.
    pub out: Option<PathBuf>,
    /// The model's name, for the default directory.
    pub model: String,
    /// How many interrupts (Ctrl-C, SIGTERM) the caller's signal handler has seen. Once it is
    /// above 0 no new run starts, each increase is forwarded to every run in progress as a
    /// SIGINT (the first makes a run checkpoint and stop, a second stops it at once), and the
    /// sweep returns `SweepError::Interrupted` when they have ended.
    pub interrupt: Option<Arc<AtomicUsize>>,
}

/// One finished run of the sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepRow {
    pub combination: Combination,
    pub run_dir: PathBuf,
    pub summary: Summary,
    pub history: History,
}

/// What a sweep produced.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepResult {
    pub dir: PathBuf,
    pub rows: Vec<SweepRow>,
    /// The index in `rows` of the best validation accuracy (the first on ties); `None` when no
    /// run has one (e.g. `validation: 0`).
    pub best: Option<usize>,
    /// The markdown table, also written to `table_path`.
    pub table: String,
    pub table_path: PathBuf,
    pub plot_path: PathBuf,
    pub json_path: PathBuf,
}

/// Runs every planned combination and writes `sweep.md`, `sweep.png` and `sweep.json`.
/// `on_done(finished, total, row)` is called as each run ends, from the thread that waited for
/// it. The data set is located before anything is written; if a run fails, no new run starts,
/// the ones running finish, and the first failure (in grid order) is returned.
pub fn sweep(
    axes: &[Axis],
    runs: &[PlannedRun],
    opts: &SweepOptions,
    on_done: &(dyn Fn(usize, usize, &SweepRow) + Sync),
) -> Result<SweepResult, SweepError> {
    if runs.is_empty() {
        return Err(SweepError::Empty);
    }
    let data = data::locate(opts.data.as_deref())?;
    let dir = run::create_run_dir(opts.out.as_deref(), &format!("sweep-{}", opts.model))?;
    let specs = dir.join(SPECS_DIR);
    std::fs::create_dir(&specs).map_err(|e| ReportError::write(&specs, e))?;
    let names = dir_names(runs);
    let mut jobs = Vec::with_capacity(runs.len());
    for (run, name) in runs.iter().zip(&names) {
        let spec = specs.join(format!("{name}.net"));
        atomic_write(&spec, run.spec_text.as_bytes()).map_err(|e| ReportError::write(&spec, e))?;
        jobs.push(Job {
            combination: &run.combination,
            spec,
            run_dir: dir.join(name),
        });
    }

    let rows = run_all(&dir, &jobs, data.path(), opts, on_done)?;
    let best = best_row(&rows);
    let table = markdown_table(axes, &rows, best);
    let table_path = dir.join(TABLE_FILE);
    atomic_write(&table_path, table.as_bytes()).map_err(|e| ReportError::write(&table_path, e))?;
    let plot_path = dir.join(PLOT_FILE);
    let curves: Vec<(String, History)> = rows
        .iter()
        .map(|r| (r.combination.label.clone(), r.history.clone()))
        .collect();
    plot_compare(&plot_path, &curves)?;
    let json_path = dir.join(JSON_FILE);
    let json = sweep_json(&opts.model, &dir, axes, &rows, best)?;
    atomic_write(&json_path, json.as_bytes()).map_err(|e| ReportError::write(&json_path, e))?;
    Ok(SweepResult {
        dir,
        rows,
        best,
        table,
        table_path,
        plot_path,
        json_path,
    })
}

/// One run to make.
struct Job<'a> {
    combination: &'a Combination,
    spec: PathBuf,
    run_dir: PathBuf,
}

/// How one run ended, short of a failure.
enum Outcome {
    Finished(Box<SweepRow>),
    Stopped(StoppedRun),
}

/// Runs the jobs in at most `opts.jobs` processes at a time; the rows come back in grid order.
/// After an interrupt no new job starts, and once the running ones have ended the first failure
/// (in grid order) is returned if a run failed on its own, else `Interrupted`.
fn run_all(
    dir: &Path,
    jobs: &[Job<'_>],
    data: &Path,
    opts: &SweepOptions,
    on_done: &(dyn Fn(usize, usize, &SweepRow) + Sync),
) -> Result<Vec<SweepRow>, SweepError> {
    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let interrupted = || {
        opts.interrupt
            .as_ref()
            .is_some_and(|n| n.load(Ordering::SeqCst) > 0)
    };
    let results: Mutex<Vec<Option<Result<Outcome, SweepError>>>> =
        Mutex::new((0..jobs.len()).map(|_| None).collect());
    let workers = opts.jobs.clamp(1, jobs.len());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                if failed.load(Ordering::SeqCst) || interrupted() {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(job) = jobs.get(i) else { break };
                let result = run_one(job, data, opts);
                match &result {
                    Ok(Outcome::Finished(row)) => {
                        let done = finished.fetch_add(1, Ordering::SeqCst) + 1;
                        on_done(done, jobs.len(), row);
                    }
                    Ok(Outcome::Stopped(_)) => {}
                    Err(_) => failed.store(true, Ordering::SeqCst),
                }
                // A poisoned lock only means another worker panicked; its slot stays empty.
                let mut slots = results.lock().unwrap_or_else(|e| e.into_inner());
                slots[i] = Some(result);
            });
        }
    });
    let slots = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut rows = Vec::with_capacity(jobs.len());
    let mut stopped = Vec::new();
    let mut not_started = 0;
    for (slot, job) in slots.into_iter().zip(jobs) {
        match slot {
            Some(Ok(Outcome::Finished(row))) => rows.push(*row),
            Some(Ok(Outcome::Stopped(run))) => stopped.push(run),
            Some(Err(e)) => return Err(e),
            None if failed.load(Ordering::SeqCst) || interrupted() => not_started += 1,
            None => {
                return Err(SweepError::BadOutput {
                    label: job.combination.label.clone(),
                    dir: job.run_dir.clone(),
                    problem: "the run never reported back".to_string(),
                })
            }
        }
    }
    if interrupted() {
        return Err(SweepError::Interrupted {
            dir: dir.to_path_buf(),
            stopped,
            finished: rows.len(),
            not_started,
        });
    }
    if failed.load(Ordering::SeqCst) {
        // The failure itself sits in a slot after the last row that succeeded; reaching here
        // means its slot was lost to a panicking worker.
        return Err(SweepError::BadOutput {
            label: jobs
                .get(rows.len())
                .map_or_else(String::new, |j| j.combination.label.clone()),
            dir: jobs
                .get(rows.len())
                .map_or_else(PathBuf::new, |j| j.run_dir.clone()),
            problem: "a run failed without an error report".to_string(),
        });
    }
    Ok(rows)
}

/// One combination, in the process the launcher makes.
fn run_one(job: &Job<'_>, data: &Path, opts: &SweepOptions) -> Result<Outcome, SweepError> {
    let mut command = opts.launcher.command(&RunRequest {
        spec: &job.spec,
        data,
        out: &job.run_dir,
    });
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Out of the terminal's foreground group, a run hears of a Ctrl-C only from the sweep, once.
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let exe = PathBuf::from(command.get_program());
    let spawn_error = |source| SweepError::Spawn {
        exe: exe.clone(),
        source,
    };
    let mut child = command.spawn().map_err(spawn_error)?;
    let (status, interrupted, stdout, stderr) = std::thread::scope(|scope| {
        let out = child.stdout.take();
        let err = child.stderr.take();
        let stdout = scope.spawn(move || read_all(out));
        let stderr = scope.spawn(move || read_all(err));
        let ended = wait_forwarding_interrupts(&mut child, opts.interrupt.as_deref());
        // A reader only ends at the pipe's end, which the run's exit brings.
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        ended.map(|(status, interrupted)| (status, interrupted, stdout, stderr))
    })
    .map_err(spawn_error)?;
    let label = &job.combination.label;
    if !status.success() {
        if interrupted {
            return Ok(Outcome::Stopped(StoppedRun {
                label: label.clone(),
                run_dir: job.run_dir.clone(),
                spec: job.spec.clone(),
                resumable: checkpoint::check_resumable(&job.run_dir).is_ok(),
            }));
        }
        let stderr = String::from_utf8_lossy(&stderr);
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines[lines.len().saturating_sub(STDERR_LINES)..].join("\n");
        return Err(SweepError::RunFailed {
            label: label.clone(),
            status: status.to_string(),
            stderr: tail,
        });
    }
    let bad_output = |problem: String| SweepError::BadOutput {
        label: label.clone(),
        dir: job.run_dir.clone(),
        problem,
    };
    let stdout = String::from_utf8_lossy(&stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| bad_output("it printed no summary line".to_string()))?;
    let summary: Summary = serde_json::from_str(line)
        .map_err(|e| bad_output(format!("its summary line is not a summary: {e}")))?;
    let history = read_history_csv(&job.run_dir.join(HISTORY_FILE))?;
    Ok(Outcome::Finished(Box::new(SweepRow {
        combination: job.combination.clone(),
        run_dir: job.run_dir.clone(),
        summary,
        history,
    })))
}

/// Everything a pipe of a run's gives until it closes (nothing if it cannot be read).
fn read_all(pipe: Option<impl Read>) -> Vec<u8> {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        // A read error only shortens what a failure report quotes.
        pipe.read_to_end(&mut bytes).ok();
    }
    bytes
}

/// Waits for a run to end, sending it one SIGINT for each interrupt counted meanwhile. Returns
/// its status and whether it was sent any. The run is signalled only while it has not been
/// waited for, so its process id cannot have been reused by then.
fn wait_forwarding_interrupts(
    child: &mut Child,
    interrupts: Option<&AtomicUsize>,
) -> std::io::Result<(ExitStatus, bool)> {
    let mut forwarded = 0;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((status, forwarded > 0));
        }
        let seen = interrupts.map_or(0, |n| n.load(Ordering::SeqCst));
        while forwarded < seen {
            interrupt(child)?;
            forwarded += 1;
        }
        std::thread::sleep(POLL);
    }
}

/// Asks a run to stop as Ctrl-C does: it checkpoints and exits (at once, the second time).
#[cfg(unix)]
fn interrupt(child: &Child) -> std::io::Result<()> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = i32::try_from(child.id()).map_err(std::io::Error::other)?;
    kill(Pid::from_raw(pid), Signal::SIGINT).map_err(std::io::Error::from)
}

/// Without signals, the only way to stop a run is to kill it; it keeps its last checkpoint.
#[cfg(not(unix))]
fn interrupt(child: &mut Child) -> std::io::Result<()> {
    child.kill()
}

/// The row with the highest finite validation accuracy, the first on ties.
pub fn best_row(rows: &[SweepRow]) -> Option<usize> {
    rows.iter()
        .enumerate()
        .filter(|(_, r)| r.summary.best_val_acc.is_finite())
        .fold(None, |best: Option<(usize, f64)>, (i, r)| match best {
            Some((_, acc)) if acc >= r.summary.best_val_acc => best,
            _ => Some((i, r.summary.best_val_acc)),
        })
        .map(|(i, _)| i)
}

fn percent(fraction: f64) -> String {
    if fraction.is_finite() {
        format!("{:.2}%", 100.0 * fraction)
    } else {
        "n/a".to_string()
    }
}

fn decimal(value: f64, digits: usize) -> String {
    if value.is_finite() {
        format!("{value:.digits$}")
    } else {
        "n/a".to_string()
    }
}

/// Markdown cells must not contain `|`.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// One row per combination: its values, best validation accuracy (the best run's in bold) and
/// loss, the epoch of the best accuracy, and the run's seconds.
pub fn markdown_table(axes: &[Axis], rows: &[SweepRow], best: Option<usize>) -> String {
    let mut out = String::from("|");
    for axis in axes {
        // Writing into a String cannot fail.
        write!(out, " {} |", cell(&axis.name)).ok();
    }
    out.push_str(" best val acc | best val loss | epoch of best | seconds |\n|");
    out.push_str(&"---|".repeat(axes.len()));
    out.push_str("---:|---:|---:|---:|\n");
    for (i, row) in rows.iter().enumerate() {
        let s = &row.summary;
        out.push('|');
        for (_, value) in &row.combination.values {
            write!(out, " {} |", cell(value)).ok();
        }
        let mut acc = percent(s.best_val_acc);
        if best == Some(i) && rows.len() > 1 {
            acc = format!("**{acc}**");
        }
        writeln!(
            out,
            " {acc} | {} | {} | {} |",
            decimal(s.best_val_loss, 4),
            s.best_epoch,
            decimal(s.total_seconds, 1)
        )
        .ok();
    }
    out
}

/// The line naming the best combination, or saying there is none.
pub fn best_line(result: &SweepResult) -> String {
    match result.best.and_then(|i| result.rows.get(i)) {
        Some(row) => {
            let s = &row.summary;
            let values: Vec<String> = row
                .combination
                .values
                .iter()
                .map(|(path, value)| format!("{path}={value}"))
                .collect();
            format!(
                "best: {} (val acc {}, val loss {}, epoch {}) in {}",
                values.join(" "),
                percent(s.best_val_acc),
                decimal(s.best_val_loss, 4),
                s.best_epoch,
                row.run_dir.display()
            )
        }
        None => {
            "no run has a validation accuracy (is `validation` 0?), so none is best".to_string()
        }
    }
}

#[derive(Serialize)]
struct JsonSetting<'a> {
    path: &'a str,
    value: &'a str,
}

#[derive(Serialize)]
struct JsonRun<'a> {
    label: &'a str,
    values: Vec<JsonSetting<'a>>,
    run_dir: String,
    best_val_acc: f64,
    best_val_loss: f64,
    best_epoch: usize,
    epochs_run: usize,
    test_acc: f64,
    seconds: f64,
}

#[derive(Serialize)]
struct JsonSweep<'a> {
    model: &'a str,
    dir: String,
    parameters: &'a [Axis],
    runs: Vec<JsonRun<'a>>,
    /// The best run's label.
    best: Option<&'a str>,
}

fn sweep_json(
    model: &str,
    dir: &Path,
    axes: &[Axis],
    rows: &[SweepRow],
    best: Option<usize>,
) -> Result<String, ReportError> {
    let runs = rows
        .iter()
        .map(|r| JsonRun {
            label: &r.combination.label,
            values: r
                .combination
                .values
                .iter()
                .map(|(path, value)| JsonSetting { path, value })
                .collect(),
            run_dir: r.run_dir.display().to_string(),
            best_val_acc: r.summary.best_val_acc,
            best_val_loss: r.summary.best_val_loss,
            best_epoch: r.summary.best_epoch,
            epochs_run: r.summary.epochs_run,
            test_acc: r.summary.test_acc,
            seconds: r.summary.total_seconds,
        })
        .collect();
    let sweep = JsonSweep {
        model,
        dir: dir.display().to_string(),
        parameters: axes,
        runs,
        best: best
            .and_then(|i| rows.get(i))
            .map(|r| r.combination.label.as_str()),
    };
    let mut text = serde_json::to_string_pretty(&sweep).map_err(ReportError::Encode)?;
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::fixtures;

    fn axis(name: &str, path: &str, values: &[&str]) -> Axis {
        Axis {
            name: name.to_string(),
            path: path.to_string(),
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    #[test]
    fn the_grid_is_the_product_in_the_order_given() {
        let axes = [
            axis("lr", "train.optimizer.lr", &["1e-3", "3e-4"]),
            axis("batch", "train.batch", &["32", "128"]),
        ];
        let labels: Vec<String> = grid(&axes).into_iter().map(|c| c.label).collect();
        assert_eq!(
            labels,
            [
                "lr=1e-3,batch=32",
                "lr=1e-3,batch=128",
                "lr=3e-4,batch=32",
                "lr=3e-4,batch=128"
            ]
        );
        assert_eq!(
            grid(&axes)[1].values,
            [
                ("train.optimizer.lr".to_string(), "1e-3".to_string()),
                ("train.batch".to_string(), "128".to_string())
            ]
        );
        assert!(grid(&[]).is_empty());
        assert!(grid(&[axis("lr", "lr", &[])]).is_empty());
    }

    #[test]
    fn the_grid_size_is_checked_without_building_it() {
        assert_eq!(grid_size(&[3, 4]), Some(12));
        assert_eq!(grid_size(&[]), Some(0));
        assert_eq!(grid_size(&[usize::MAX, 2]), None);
        assert_eq!(
            check_grid_size(&[10, 100], DEFAULT_MAX_RUNS).unwrap(),
            1_000
        );
        let err = check_grid_size(&[10, 10, 11], DEFAULT_MAX_RUNS).unwrap_err();
        assert!(matches!(
            &err,
            SweepError::TooManyRuns { size: Some(1_100), max_runs: 1_000, help, .. }
                if help.contains("--max-runs 1100")
        ));
        assert_eq!(
            err.to_string(),
            "the grid has 1100 combinations (10 × 10 × 11), more than the 1000 a sweep runs \
             unless asked"
        );
        // 1000 values for each of 8 axes is 10^24: no `usize` holds it, and no flag helps.
        let err = check_grid_size(&[1_000; 8], usize::MAX).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the grid has more combinations"),
            "{err}"
        );
        assert!(
            matches!(&err, SweepError::TooManyRuns { size: None, help, .. }
            if !help.contains("--max-runs"))
        );
    }

    #[test]
    fn columns_use_the_last_name_unless_it_clashes() {
        let paths = [
            "train.optimizer.lr".to_string(),
            "train.early_stopping.patience".to_string(),
            "train.schedule.patience".to_string(),
        ];
        assert_eq!(
            column_names(&paths),
            [
                "lr",
                "train.early_stopping.patience",
                "train.schedule.patience"
            ]
        );
    }

    #[test]
    fn directory_names_are_file_safe_and_unique() {
        let planned = |label: &str| PlannedRun {
            combination: Combination {
                values: Vec::new(),
                label: label.to_string(),
            },
            spec_text: String::new(),
        };
        let runs = [
            planned("b=[5, 15]"),
            planned("b=[5,_15]"),
            planned("specs"),
            planned("lr=3e-4,batch=32"),
        ];
        assert_eq!(
            dir_names(&runs),
            ["b=_5,_15_", "b=_5,_15_-2", "specs-2", "lr=3e-4,batch=32"]
        );
        assert_eq!(dir_name("../x"), "_x");
    }

    fn row(label: &str, value: &str, acc: f64) -> SweepRow {
        let history = fixtures::history(3);
        let mut summary = fixtures::summary(label, &history);
        summary.best_val_acc = acc;
        SweepRow {
            combination: Combination {
                values: vec![("train.optimizer.lr".to_string(), value.to_string())],
                label: label.to_string(),
            },
            run_dir: PathBuf::from(format!("sweep/{label}")),
            summary,
            history,
        }
    }

    #[test]
    fn the_table_has_a_row_per_run_and_marks_the_best() {
        let axes = [axis("lr", "train.optimizer.lr", &["1e-3", "3e-4", "1e-4"])];
        let rows = [
            row("lr=1e-3", "1e-3", 0.25),
            row("lr=3e-4", "3e-4", 0.5),
            row("lr=1e-4", "1e-4", f64::NAN),
        ];
        let best = best_row(&rows);
        assert_eq!(best, Some(1));
        let table = markdown_table(&axes, &rows, best);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "| lr | best val acc | best val loss | epoch of best | seconds |"
        );
        assert_eq!(lines[1], "|---|---:|---:|---:|---:|");
        assert!(lines[2].starts_with("| 1e-3 | 25.00% |"), "{table}");
        assert!(lines[3].starts_with("| 3e-4 | **50.00%** |"), "{table}");
        assert!(lines[4].starts_with("| 1e-4 | n/a |"), "{table}");
        assert_eq!(lines.len(), 5);
        let result = SweepResult {
            dir: PathBuf::from("sweep"),
            rows: rows.to_vec(),
            best,
            table,
            table_path: PathBuf::new(),
            plot_path: PathBuf::new(),
            json_path: PathBuf::new(),
        };
        assert!(
            best_line(&result).starts_with("best: train.optimizer.lr=3e-4 (val acc 50.00%"),
            "{}",
            best_line(&result)
        );
        assert_eq!(best_row(&rows[2..]), None);
        let json = sweep_json("m", Path::new("sweep"), &axes, &rows, best).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["best"], "lr=3e-4");
        assert_eq!(value["runs"][2]["best_val_acc"], serde_json::Value::Null);
        assert_eq!(value["runs"][0]["values"][0]["value"], "1e-3");
    }

    #[test]
    fn an_empty_plan_and_missing_data_write_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = SweepOptions {
            launcher: Launcher::new(|_| Command::new("netc")),
            jobs: 1,
            data: Some(tmp.path().join("nowhere")),
            out: Some(tmp.path().join("sweep")),
            model: "m".to_string(),
            interrupt: None,
        };
        let none = |_: usize, _: usize, _: &SweepRow| {};
        assert!(matches!(
            sweep(&[], &[], &opts, &none),
            Err(SweepError::Empty)
        ));
        let axes = [axis("lr", "lr", &["1"])];
        let runs: Vec<PlannedRun> = grid(&axes)
            .into_iter()
            .map(|combination| PlannedRun {
                combination,
                spec_text: "model m\n".to_string(),
            })
            .collect();
        let err = sweep(&axes, &runs, &opts, &none).unwrap_err();
        assert!(matches!(err, SweepError::Data(_)), "{err:?}");
        assert!(!tmp.path().join("sweep").exists());
    }
}
