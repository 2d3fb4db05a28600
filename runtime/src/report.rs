//! What a run records: per-epoch history, the run summary, and writing them to disk atomically.
//!
//! The types here are the contract between the training loop (which fills them), the CLI (which
//! prints them) and `compare`/`plot` (which read them back from run directories). Below them:
//! `atomic_write`, which every file a run leaves behind goes through, `history.csv` and
//! `summary.json` in both directions, and the two renderings of a summary for people and scripts.
//! Nothing here trains or plots; a reader must never panic on a damaged file.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::SourceSpan;
use netc_diagnostics::{Excerpt, Span};
use serde::{Deserialize, Deserializer, Serialize};

/// One row of `history.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Learning rate at the end of the epoch.
    pub lr: f32,
    /// Mean training loss over the epoch's steps (weighted by batch size).
    pub loss: f32,
    pub accuracy: f32,
    pub val_loss: f32,
    pub val_accuracy: f32,
    /// Wall-clock seconds of the epoch's training steps and validation.
    pub seconds: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub epochs: Vec<EpochRecord>,
}

/// Why training ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StopReason {
    /// All epochs ran.
    Completed,
    /// Early stopping: the monitored metric did not improve for `patience` epochs.
    EarlyStopping { patience: usize },
    /// The loss became NaN or infinite at this (0-based, global) step; the last good weights kept.
    Diverged {
        step: u64,
        epoch: usize,
        /// What made the step's loss non-finite, when training could tell.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cause: Option<DivergenceCause>,
    },
    /// The run was stopped (Ctrl-C) in this 1-based epoch after `steps` of its steps; a summary
    /// of an interrupted run says so, a checkpoint never does.
    Interrupted { epoch: usize, steps: usize },
}

/// Whether a run directory's results are final.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Trained and tested; `netc run --resume` refuses it. Summaries of netc versions that did
    /// not record a status are of finished runs.
    #[default]
    Finished,
    /// Stopped by an interrupt: the results of the epochs completed so far, without a test
    /// evaluation. `netc run --resume` continues the run and replaces them.
    Interrupted,
}

/// Why a step's loss was not finite: the parameters going into the step, checked by replaying
/// the epoch's steps from the last good state (see `train::train`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DivergenceCause {
    /// The previous step's update left this parameter (the first in layer order) non-finite.
    NonFiniteParam { param: String, layer: String },
    /// Every parameter was finite: the forward pass itself overflowed.
    FiniteParams,
}

impl DivergenceCause {
    /// One clause for a sentence: what the parameters going into the step looked like.
    pub fn describe(&self) -> String {
        match self {
            DivergenceCause::NonFiniteParam { param, layer } => format!(
                "the update before it made `{param}` non-finite ({layer} is the first layer \
                 that blew up)"
            ),
            DivergenceCause::FiniteParams => {
                "every parameter was still finite, so the forward pass overflowed".to_owned()
            }
        }
    }
}

/// Sparsity of one dense kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSparsity {
    pub layer: String,
    /// Fraction of weights that are exactly zero.
    #[serde(deserialize_with = "f64_or_nan")]
    pub zero_fraction: f64,
}

/// `summary.json` and the `--json` line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub spec: String,
    pub model: String,
    pub backend: String,
    pub seed: u64,
    pub epochs_run: usize,
    pub best_epoch: usize,
    #[serde(deserialize_with = "f64_or_nan")]
    pub best_val_acc: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub best_val_loss: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub test_acc: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub test_loss: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mc_test_acc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mc_samples: Option<usize>,
    /// Share of exactly-zero weights over all dense kernels (after pruning, when pruning ran).
    #[serde(deserialize_with = "f64_or_nan")]
    pub sparsity: f64,
    pub layer_sparsity: Vec<LayerSparsity>,
    /// Test accuracy before pruning, when the spec prunes (`test_acc` is then after pruning).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unpruned_test_acc: Option<f64>,
    pub param_count: usize,
    pub trainable_params: usize,
    /// Median seconds per epoch.
    #[serde(deserialize_with = "f64_or_nan")]
    pub sec_per_epoch: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub total_seconds: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub compile_ms: f64,
    #[serde(deserialize_with = "f64_or_nan")]
    pub peak_rss_mb: f64,
    pub stop: StopReason,
    pub run_dir: String,
    #[serde(default)]
    pub status: RunStatus,
    /// Whether `test_acc` and `test_loss` (and the MC Dropout and pruning numbers) were
    /// measured: an interrupted run stops before its test evaluation, and they are null.
    #[serde(default = "yes")]
    pub test_evaluated: bool,
    /// FNV-1a 64 of the run's `spec.net`, which `netc eval` checks before evaluating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_hash: Option<String>,
}

fn yes() -> bool {
    true
}

/// serde_json writes non-finite floats as `null` (JSON has no NaN), which a diverged run produces;
/// reading them back as NaN keeps such a summary loadable instead of rejecting the whole file.
fn f64_or_nan<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

impl History {
    /// The epoch with the highest validation accuracy (the earliest on ties), ignoring NaN.
    pub fn best_by_val_accuracy(&self) -> Option<&EpochRecord> {
        self.epochs
            .iter()
            .filter(|e| !e.val_accuracy.is_nan())
            .fold(None, |best: Option<&EpochRecord>, e| match best {
                Some(b) if b.val_accuracy >= e.val_accuracy => Some(b),
                _ => Some(e),
            })
    }
}

/// Errors reading or writing what a run leaves behind. Each names the file and what to do.
/// The quoted file sits behind an `Arc` to keep the error small enough to return by value.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ReportError {
    #[error("could not write {}", path.display())]
    #[diagnostic(code(netc::report::write))]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
        #[help]
        help: String,
    },
    #[error("could not read {}", path.display())]
    #[diagnostic(code(netc::report::read))]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
        #[help]
        help: String,
    },
    #[error("{} is not a valid netc history: {reason}", path.display())]
    #[diagnostic(
        code(netc::report::bad_history),
        help(
            "history.csv is written by `netc run`; rerun the training, or fix the marked \
             field by hand (header `{HISTORY_HEADER}`, one row per epoch)"
        )
    )]
    BadHistory {
        path: PathBuf,
        reason: String,
        #[source_code]
        src: Arc<Excerpt<'static>>,
        #[label("{reason}")]
        span: SourceSpan,
    },
    #[error("{} is not a valid netc summary: {reason}", path.display())]
    #[diagnostic(
        code(netc::report::bad_summary),
        help("summary.json is written by `netc run` at the end of a run; rerun the training")
    )]
    BadSummary {
        path: PathBuf,
        reason: String,
        #[source_code]
        src: Arc<Excerpt<'static>>,
        #[label("here")]
        span: SourceSpan,
    },
    #[error("could not encode the run summary as JSON: {0}")]
    #[diagnostic(code(netc::report::encode), help("this is a bug in netc"))]
    Encode(#[source] serde_json::Error),
}

impl ReportError {
    /// Wraps a failed write of `path`, with advice chosen by the kind of failure.
    pub fn write(path: &Path, source: io::Error) -> Self {
        let help = write_help(path, &source);
        ReportError::Write {
            path: path.to_path_buf(),
            source,
            help,
        }
    }

    /// Wraps a failed read of `path`, with advice chosen by the kind of failure.
    pub fn read(path: &Path, source: io::Error) -> Self {
        let help = read_help(path, &source);
        ReportError::Read {
            path: path.to_path_buf(),
            source,
            help,
        }
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn write_help(path: &Path, error: &io::Error) -> String {
    let dir = parent_dir(path).display();
    let advice = match error.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            format!("the disk holding {dir} is full: free some space and run again")
        }
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => format!(
            "netc may not create files in {dir}: make it writable or choose another output directory"
        ),
        io::ErrorKind::NotFound => format!("the directory {dir} does not exist: create it first"),
        io::ErrorKind::IsADirectory | io::ErrorKind::DirectoryNotEmpty => format!(
            "{} is a directory: move it away or choose another output path",
            path.display()
        ),
        _ => format!("check that {dir} is a writable directory on a healthy disk"),
    };
    // Every write goes through `atomic_write`, so a failure never touches the existing file.
    format!("{advice}; any previous {} was left intact", path.display())
}

fn read_help(path: &Path, error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::NotFound => format!(
            "{} does not exist: is {} the directory of a finished netc run?",
            path.display(),
            parent_dir(path).display()
        ),
        io::ErrorKind::PermissionDenied => {
            format!(
                "netc may not read {}: check its permissions",
                path.display()
            )
        }
        io::ErrorKind::IsADirectory => format!("{} is a directory, not a file", path.display()),
        _ => format!("check that {} is a readable file", path.display()),
    }
}

/// Replaces the file at `path` with `bytes` so that readers (and a crash) see either the old
/// contents or the new ones, never a mix: the bytes go to a temporary file in the same directory
/// (a rename is only atomic within one file system), are flushed to disk, and the temporary file
/// is renamed over `path`. On any error the temporary file is removed and `path` is untouched.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = parent_dir(path);
    let mut builder = tempfile::Builder::new();
    builder.prefix(".netc-").suffix(".tmp");
    // Temporary files are private (0600) by default; the file they become should get the usual
    // permissions of a new file (0666 less the umask), as `fs::write` would give it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // Syncing the directory makes the rename itself durable. Some file systems refuse to sync a
    // directory; the new file is complete and in place by now, so that is not worth failing for.
    if let Ok(handle) = fs::File::open(dir) {
        handle.sync_all().ok();
    }
    Ok(())
}

/// The header line of `history.csv`; column order matches `EpochRecord`.
pub const HISTORY_HEADER: &str = "epoch,lr,loss,accuracy,val_loss,val_accuracy,seconds";

/// Renders a history as CSV. Floats use Rust's shortest round-trip form (`NaN`, `inf` included),
/// so reading the file back gives the exact same values.
pub fn history_csv(history: &History) -> String {
    let mut out = String::with_capacity(64 * (history.epochs.len() + 1));
    out.push_str(HISTORY_HEADER);
    out.push('\n');
    for e in &history.epochs {
        // Writing into a String cannot fail.
        writeln!(
            out,
            "{},{},{},{},{},{},{}",
            e.epoch, e.lr, e.loss, e.accuracy, e.val_loss, e.val_accuracy, e.seconds
        )
        .ok();
    }
    out
}

/// Writes `history.csv` atomically.
pub fn write_history_csv(path: &Path, history: &History) -> Result<(), ReportError> {
    atomic_write(path, history_csv(history).as_bytes()).map_err(|e| ReportError::write(path, e))
}

/// Reads a `history.csv` written by `write_history_csv`. Blank lines are ignored; anything else
/// that is not a row of seven numbers is an error pointing at the offending field.
pub fn read_history_csv(path: &Path) -> Result<History, ReportError> {
    let text = fs::read_to_string(path).map_err(|e| ReportError::read(path, e))?;
    parse_history_csv(path, text)
}

fn parse_history_csv(path: &Path, text: String) -> Result<History, ReportError> {
    let bad = |text: &str, (start, len): (usize, usize), reason: String| {
        let (src, span) = Excerpt::owned(
            &path.display().to_string(),
            text.to_string(),
            Span::new(start, start + len),
        );
        ReportError::BadHistory {
            path: path.to_path_buf(),
            reason,
            src: Arc::new(src),
            span,
        }
    };
    let mut lines = line_offsets(&text);
    let (header_start, header) = lines.next().unwrap_or((0, ""));
    if header.trim_end() != HISTORY_HEADER {
        return Err(bad(
            &text,
            (header_start, header.len()),
            format!("expected the header `{HISTORY_HEADER}`"),
        ));
    }
    let mut epochs = Vec::new();
    for (start, line) in lines {
        let line = line.trim_end();
        if line.trim().is_empty() {
            continue;
        }
        let fields = field_offsets(line);
        if fields.len() != 7 {
            return Err(bad(
                &text,
                (start, line.len()),
                format!("expected 7 comma-separated fields, found {}", fields.len()),
            ));
        }
        let field = |i: usize| {
            let (offset, raw) = fields[i];
            (raw.trim(), (start + offset, raw.len()))
        };
        let number = |i: usize| -> Result<f64, ReportError> {
            let (raw, span) = field(i);
            raw.parse::<f64>()
                .map_err(|_| bad(&text, span, format!("`{raw}` is not a number")))
        };
        let (raw_epoch, epoch_span) = field(0);
        let epoch = raw_epoch.parse::<usize>().map_err(|_| {
            bad(
                &text,
                epoch_span,
                format!("`{raw_epoch}` is not an epoch number"),
            )
        })?;
        epochs.push(EpochRecord {
            epoch,
            // The f32 columns were written from f32 values, so narrowing restores them exactly.
            lr: number(1)? as f32,
            loss: number(2)? as f32,
            accuracy: number(3)? as f32,
            val_loss: number(4)? as f32,
            val_accuracy: number(5)? as f32,
            seconds: number(6)?,
        });
    }
    Ok(History { epochs })
}

/// Lines of `text` with their byte offsets, without the line terminators.
fn line_offsets(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.split_inclusive('\n').scan(0, |offset, raw| {
        let start = *offset;
        *offset += raw.len();
        Some((start, raw.trim_end_matches(['\n', '\r'])))
    })
}

/// Comma-separated fields of one line with their byte offsets within it.
fn field_offsets(line: &str) -> Vec<(usize, &str)> {
    let mut offset = 0;
    line.split(',')
        .map(|raw| {
            let start = offset;
            offset += raw.len() + 1;
            (start, raw)
        })
        .collect()
}

/// Writes `summary.json` atomically, as pretty-printed JSON.
pub fn write_summary(path: &Path, summary: &Summary) -> Result<(), ReportError> {
    let mut bytes = serde_json::to_vec_pretty(summary).map_err(ReportError::Encode)?;
    bytes.push(b'\n');
    atomic_write(path, &bytes).map_err(|e| ReportError::write(path, e))
}

/// Reads a `summary.json`; a malformed file is an error pointing at where parsing stopped.
pub fn read_summary(path: &Path) -> Result<Summary, ReportError> {
    let text = fs::read_to_string(path).map_err(|e| ReportError::read(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        let offset = byte_offset(&text, e.line(), e.column());
        let (src, span) =
            Excerpt::owned(&path.display().to_string(), text, Span::new(offset, offset));
        ReportError::BadSummary {
            path: path.to_path_buf(),
            reason: e.to_string(),
            src: Arc::new(src),
            span,
        }
    })
}

/// Converts serde_json's 1-based line and column (in bytes) to a byte offset into `text`.
fn byte_offset(text: &str, line: usize, column: usize) -> usize {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(line.saturating_sub(1))
        .map(str::len)
        .sum();
    (line_start + column.saturating_sub(1)).min(text.len())
}

/// The summary on one line of JSON, for `--json` (no trailing newline).
pub fn summary_json_line(summary: &Summary) -> Result<String, ReportError> {
    serde_json::to_string(summary).map_err(ReportError::Encode)
}

fn percent(fraction: f64) -> String {
    if fraction.is_finite() {
        format!("{:.2}%", 100.0 * fraction)
    } else {
        "n/a".to_string()
    }
}

/// `1578506` as `1,578,506`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn describe_stop(stop: &StopReason, epochs_run: usize) -> String {
    match stop {
        StopReason::Completed => format!("completed all {epochs_run} epochs"),
        StopReason::EarlyStopping { patience } => {
            format!("stopped early after {epochs_run} epochs: no improvement for {patience} epochs")
        }
        StopReason::Diverged { step, epoch, cause } => {
            let why = cause
                .as_ref()
                .map(|c| format!("; {}", c.describe()))
                .unwrap_or_default();
            format!(
                "diverged in epoch {epoch} (step {step}): the loss became NaN or infinite{why}; \
                 the last good weights were kept"
            )
        }
        StopReason::Interrupted { epoch, steps } => {
            format!("interrupted in epoch {epoch} after {steps} of its steps ({epochs_run} epochs complete)")
        }
    }
}

/// The end-of-run report printed to the terminal: plain text, no colours, one fact per line.
/// `history` supplies the training metrics of the best epoch; it may be empty (a run that
/// diverged in its first epoch), in which case those lines are left out.
pub fn render_report(summary: &Summary, history: &History) -> String {
    let mut out = String::new();
    // `write!` into a String cannot fail, hence the `.ok()` below.
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!("netc: {} ({})", summary.model, summary.spec));
    line(format!(
        "  backend {}, seed {}, {} parameters ({} trainable)",
        summary.backend,
        summary.seed,
        thousands(summary.param_count),
        thousands(summary.trainable_params)
    ));
    line(format!(
        "Training: {}",
        describe_stop(&summary.stop, summary.epochs_run)
    ));
    let best = history
        .epochs
        .iter()
        .find(|e| e.epoch == summary.best_epoch);
    let mut best_line = format!(
        "  best epoch {}: val accuracy {}, val loss {:.4}",
        summary.best_epoch,
        percent(summary.best_val_acc),
        summary.best_val_loss
    );
    if let Some(record) = best {
        write!(
            best_line,
            " (train accuracy {}, loss {:.4})",
            percent(f64::from(record.accuracy)),
            record.loss
        )
        .ok();
    }
    line(best_line);
    if summary.test_evaluated {
        line(format!(
            "Test: accuracy {}, loss {:.4}",
            percent(summary.test_acc),
            summary.test_loss
        ));
    } else {
        line("Test: not evaluated (the run was interrupted before its test evaluation)".to_owned());
    }
    if let Some(unpruned) = summary.unpruned_test_acc {
        line(format!(
            "  before pruning: accuracy {} ({:+.2} points after pruning)",
            percent(unpruned),
            100.0 * (summary.test_acc - unpruned)
        ));
    }
    if let Some(mc) = summary.mc_test_acc {
        let samples = summary
            .mc_samples
            .map_or_else(String::new, |n| format!(" ({n} samples)"));
        line(format!(
            "  MC Dropout{samples}: accuracy {} ({:+.2} points)",
            percent(mc),
            100.0 * (mc - summary.test_acc)
        ));
    }
    line(format!(
        "Sparsity: {} of the kernels' weights are zero",
        percent(summary.sparsity)
    ));
    if summary.sparsity > 0.0 {
        let width = summary
            .layer_sparsity
            .iter()
            .map(|l| l.layer.len())
            .max()
            .unwrap_or(0);
        for layer in &summary.layer_sparsity {
            line(format!(
                "  {:width$}  {}",
                layer.layer,
                percent(layer.zero_fraction)
            ));
        }
    }
    line(format!(
        "Time: {:.2} s/epoch (median), {:.1} s total, compile {:.0} ms, peak memory {:.0} MB",
        summary.sec_per_epoch, summary.total_seconds, summary.compile_ms, summary.peak_rss_mb
    ));
    line(format!("Run directory: {}", summary.run_dir));
    out
}

/// Plausible runs shared by the tests of this module, `plot` and `compare`.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// `n` epochs of a run that learns, overfits a little, and peaks at epoch `n * 2 / 3 + 1`.
    pub(crate) fn history(n: usize) -> History {
        let peak = n * 2 / 3;
        let epochs = (0..n)
            .map(|i| {
                let t = i as f32;
                let over = i.saturating_sub(peak) as f32;
                EpochRecord {
                    epoch: i + 1,
                    lr: 1e-3 * 0.9f32.powi(i as i32),
                    loss: 2.2 / (1.0 + 0.3 * t),
                    accuracy: 0.2 + 0.5 * (1.0 - (-0.3 * t).exp()),
                    val_loss: 2.0 / (1.0 + 0.25 * t) + 0.05 * over,
                    val_accuracy: 0.25 + 0.3 * (1.0 - (-0.3 * t).exp()) - 0.02 * over,
                    seconds: 3.5 + 0.125 * t as f64,
                }
            })
            .collect();
        History { epochs }
    }

    pub(crate) fn summary(model: &str, history: &History) -> Summary {
        let best = history.best_by_val_accuracy().cloned();
        Summary {
            spec: format!("specs/{model}.net"),
            model: model.to_string(),
            backend: "jit".to_string(),
            seed: 42,
            epochs_run: history.epochs.len(),
            best_epoch: best.as_ref().map_or(0, |b| b.epoch),
            best_val_acc: best
                .as_ref()
                .map_or(f64::NAN, |b| f64::from(b.val_accuracy)),
            best_val_loss: best.as_ref().map_or(f64::NAN, |b| f64::from(b.val_loss)),
            test_acc: 0.5125,
            test_loss: 1.375,
            mc_test_acc: Some(0.5225),
            mc_samples: Some(30),
            sparsity: 0.5,
            layer_sparsity: vec![
                LayerSparsity {
                    layer: "dense_1".to_string(),
                    zero_fraction: 0.5,
                },
                LayerSparsity {
                    layer: "dense_out".to_string(),
                    zero_fraction: 0.5,
                },
            ],
            unpruned_test_acc: Some(0.5175),
            param_count: 1_578_506,
            trainable_params: 1_577_482,
            sec_per_epoch: 3.75,
            total_seconds: 41.5,
            compile_ms: 120.0,
            peak_rss_mb: 512.0,
            stop: StopReason::EarlyStopping { patience: 5 },
            run_dir: format!("runs/{model}"),
            status: RunStatus::Finished,
            test_evaluated: true,
            spec_hash: Some("0123456789abcdef".to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures;
    use super::*;

    fn same_f32(a: f32, b: f32) -> bool {
        a.to_bits() == b.to_bits()
    }

    fn temp_files_in(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".tmp"))
            .collect()
    }

    #[test]
    fn history_csv_round_trips_exactly_including_nan_and_infinity() {
        let mut history = fixtures::history(7);
        history.epochs[2].val_loss = f32::NAN;
        history.epochs[3].loss = f32::INFINITY;
        history.epochs[4].lr = 1.234_567_9e-7;
        history.epochs[5].seconds = 0.1 + 0.2;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.csv");
        write_history_csv(&path, &history).unwrap();

        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("epoch,lr,loss,accuracy,val_loss,val_accuracy,seconds\n"));
        let back = read_history_csv(&path).unwrap();
        assert_eq!(back.epochs.len(), 7);
        for (a, b) in history.epochs.iter().zip(&back.epochs) {
            assert_eq!(a.epoch, b.epoch);
            assert!(same_f32(a.lr, b.lr), "lr {} != {}", a.lr, b.lr);
            assert!(same_f32(a.loss, b.loss));
            assert!(same_f32(a.accuracy, b.accuracy));
            assert!(same_f32(a.val_loss, b.val_loss));
            assert!(same_f32(a.val_accuracy, b.val_accuracy));
            assert_eq!(a.seconds.to_bits(), b.seconds.to_bits());
        }
    }

    #[test]
    fn empty_history_round_trips_to_a_header_only_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.csv");
        write_history_csv(&path, &History::default()).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{HISTORY_HEADER}\n")
        );
        assert_eq!(read_history_csv(&path).unwrap(), History::default());
    }

    #[test]
    fn history_csv_errors_point_at_the_bad_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.csv");
        let text = format!(
            "{HISTORY_HEADER}\n1,0.001,2.0,0.3,1.9,0.35,4.0\n2,0.001,oops,0.4,1.8,0.4,4.0\n"
        );
        fs::write(&path, &text).unwrap();
        match read_history_csv(&path) {
            Err(ReportError::BadHistory { reason, span, .. }) => {
                assert!(reason.contains("`oops` is not a number"), "{reason}");
                assert_eq!(span.offset(), text.find("oops").unwrap());
                assert_eq!(span.len(), 4);
            }
            other => panic!("expected BadHistory, got {other:?}"),
        }

        fs::write(&path, format!("{HISTORY_HEADER}\n1,0.001,2.0\n")).unwrap();
        let err = read_history_csv(&path).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected 7 comma-separated fields, found 3"),
            "{err}"
        );

        fs::write(&path, "epoch,loss\n1,2.0\n").unwrap();
        let err = read_history_csv(&path).unwrap_err();
        assert!(matches!(err, ReportError::BadHistory { .. }), "{err:?}");
        assert!(err.to_string().contains("expected the header"), "{err}");

        fs::write(&path, "").unwrap();
        assert!(matches!(
            read_history_csv(&path),
            Err(ReportError::BadHistory { .. })
        ));
    }

    #[test]
    fn summary_round_trips_through_pretty_json() {
        let history = fixtures::history(9);
        let mut summary = fixtures::summary("mlp", &history);
        summary.stop = StopReason::Diverged {
            step: 1234,
            epoch: 3,
            cause: Some(DivergenceCause::NonFiniteParam {
                param: "dense_2.kernel".to_owned(),
                layer: "dense_2".to_owned(),
            }),
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        write_summary(&path, &summary).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.lines().count() > 20, "not pretty-printed:\n{text}");
        assert!(text.contains("\"kind\": \"diverged\""), "{text}");
        assert_eq!(read_summary(&path).unwrap(), summary);
        let report = render_report(&summary, &history);
        assert!(
            report.contains(
                "step 1234): the loss became NaN or infinite; the update before it \
                 made `dense_2.kernel` non-finite (dense_2 is the first layer that blew up)"
            ),
            "{report}"
        );

        summary.mc_test_acc = None;
        summary.mc_samples = None;
        summary.unpruned_test_acc = None;
        write_summary(&path, &summary).unwrap();
        assert!(!fs::read_to_string(&path).unwrap().contains("mc_test_acc"));
        assert_eq!(read_summary(&path).unwrap(), summary);
    }

    #[test]
    fn non_finite_summary_values_read_back_as_nan() {
        let history = fixtures::history(3);
        let mut summary = fixtures::summary("mlp", &history);
        summary.best_val_loss = f64::NAN;
        summary.test_loss = f64::INFINITY;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        write_summary(&path, &summary).unwrap();
        let back = read_summary(&path).unwrap();
        assert!(back.best_val_loss.is_nan());
        assert!(back.test_loss.is_nan());
        assert_eq!(back.test_acc, summary.test_acc);
    }

    #[test]
    fn a_summary_broken_far_along_a_long_line_renders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        fs::write(&path, format!("{{{}oops}}\n", " ".repeat(70_000))).unwrap();
        let err = read_summary(&path).unwrap_err();
        let mut out = String::new();
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .render_report(&mut out, &err)
            .unwrap();
        assert!(out.contains(":1:70002]"), "{out}");
        assert!(out.contains("oops") && out.len() < 2_000, "{out}");
    }

    #[test]
    fn corrupt_or_missing_summary_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.json");
        let text = "{\n  \"spec\": \"a.net\",\n  \"model\": 7\n}\n";
        fs::write(&path, text).unwrap();
        match read_summary(&path) {
            Err(ReportError::BadSummary { reason, span, .. }) => {
                assert!(reason.contains("line 3"), "{reason}");
                assert!(span.offset() > text.find("\"model\"").unwrap(), "{span:?}");
            }
            other => panic!("expected BadSummary, got {other:?}"),
        }

        let missing = dir.path().join("nope").join("summary.json");
        let err = read_summary(&missing).unwrap_err();
        let help = miette::Diagnostic::help(&err).unwrap().to_string();
        assert!(help.contains("does not exist"), "{help}");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn summary_json_line_is_one_line_that_parses_back() {
        let summary = fixtures::summary("mlp", &fixtures::history(4));
        let line = summary_json_line(&summary).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Summary>(&line).unwrap(), summary);
    }

    #[test]
    fn atomic_write_replaces_contents_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.txt");
        atomic_write(&path, b"first").unwrap();
        atomic_write(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        assert!(temp_files_in(dir.path()).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn atomic_write_gives_the_permissions_of_an_ordinary_new_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ordinary = dir.path().join("ordinary.txt");
        fs::write(&ordinary, b"x").unwrap();
        let atomic = dir.path().join("atomic.txt");
        atomic_write(&atomic, b"x").unwrap();
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&atomic), mode(&ordinary));
    }

    /// Tests may run as root, for whom permissions do not stop writes, so the failure here comes
    /// from a directory standing where the file should go: the rename fails after the temporary
    /// file was written in full.
    #[test]
    fn failed_atomic_write_keeps_what_was_there_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.csv");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("keep.txt"), b"old").unwrap();

        let err = write_history_csv(&path, &fixtures::history(2)).unwrap_err();
        assert!(matches!(err, ReportError::Write { .. }), "{err:?}");
        let help = miette::Diagnostic::help(&err).unwrap().to_string();
        assert!(help.contains("is a directory"), "{help}");
        assert!(help.contains("left intact"), "{help}");
        assert_eq!(fs::read(path.join("keep.txt")).unwrap(), b"old");
        assert!(temp_files_in(dir.path()).is_empty());
    }

    #[test]
    fn failed_atomic_write_into_a_missing_directory_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("summary.json");
        let summary = fixtures::summary("mlp", &fixtures::history(2));
        let err = write_summary(&path, &summary).unwrap_err();
        let help = miette::Diagnostic::help(&err).unwrap().to_string();
        assert!(help.contains("does not exist"), "{help}");
        assert!(!path.exists());
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(123_456_789), "123,456,789");
    }

    #[test]
    fn best_by_val_accuracy_skips_nan_and_prefers_the_earliest_tie() {
        let mut history = fixtures::history(5);
        for (e, acc) in history
            .epochs
            .iter_mut()
            .zip([0.3, f32::NAN, 0.5, 0.5, 0.4])
        {
            e.val_accuracy = acc;
        }
        assert_eq!(history.best_by_val_accuracy().unwrap().epoch, 3);
        history
            .epochs
            .iter_mut()
            .for_each(|e| e.val_accuracy = f32::NAN);
        assert!(history.best_by_val_accuracy().is_none());
    }

    #[test]
    fn report_states_the_facts_of_the_run() {
        let history = fixtures::history(9);
        let summary = fixtures::summary("mlp", &history);
        let best = history.best_by_val_accuracy().unwrap();
        let text = render_report(&summary, &history);
        assert!(
            text.contains(&format!("best epoch {}:", best.epoch)),
            "{text}"
        );
        assert!(text.contains(&format!(
            "train accuracy {}",
            percent(f64::from(best.accuracy))
        )));
        assert!(text.contains("stopped early after 9 epochs: no improvement for 5 epochs"));
        assert!(
            text.contains("Test: accuracy 51.25%, loss 1.3750"),
            "{text}"
        );
        assert!(
            text.contains("MC Dropout (30 samples): accuracy 52.25% (+1.00 points)"),
            "{text}"
        );
        assert!(text.contains("before pruning: accuracy 51.75% (-0.50 points after pruning)"));
        assert!(text.contains("dense_out  50.00%"), "{text}");
        assert!(text.contains("3.75 s/epoch"), "{text}");
        assert!(
            text.contains("1,578,506 parameters (1,577,482 trainable)"),
            "{text}"
        );

        let mut plain = summary.clone();
        plain.mc_test_acc = None;
        plain.mc_samples = None;
        plain.unpruned_test_acc = None;
        plain.sparsity = 0.0;
        plain.stop = StopReason::Completed;
        let text = render_report(&plain, &History::default());
        assert!(!text.contains("MC Dropout"), "{text}");
        assert!(!text.contains("before pruning"), "{text}");
        assert!(!text.contains("dense_1"), "{text}");
        assert!(!text.contains("train accuracy"), "{text}");
        assert!(text.contains("completed all 9 epochs"), "{text}");
    }
}
