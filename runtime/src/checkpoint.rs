//! A run's checkpoint: `RUN_DIR/checkpoint/`, what `netc run --resume` continues from.
//!
//! The directory holds `trainer.json` and pairs of safetensors files, `params-<step>` and
//! `optimizer-<step>` (`weights::save_params`, `weights::save_optimizer`), one pair per backend
//! state the loop may need: the current state, the state at the end of the last completed epoch
//! (what a divergence falls back to) and the best epoch's state (for `restore_best`). A state is
//! named by its optimizer step, which determines it within a run, so the three share files when
//! they coincide and an unchanged state is never written twice. `trainer.json` holds the rest of
//! `train::LoopState` and the run's identity (spec hash, seed, epochs, data fingerprint).
//!
//! Consistency: every file is written with `report::atomic_write`; the state files first, under
//! names no committed `trainer.json` refers to (a committed name is reused, never rewritten),
//! then `trainer.json`, which names the files it belongs to; only then are files it does not
//! name removed. A kill at any instant therefore leaves a complete checkpoint: the new one once
//! `trainer.json` is renamed into place, the previous one before.
//!
//! Floats in `trainer.json` are strings in Rust's shortest round-trip form (`"0.1"`, `"NaN"`,
//! `"inf"`): JSON numbers cannot hold NaN or infinity, and reading them back must give the same
//! bits for a resumed run to match an uninterrupted one.
//!
//! Reading trusts nothing: `parse_trainer_json` (also the fuzz target's entry) checks every
//! value against what the loop can produce and against the others (times finite and not
//! negative, `correct <= seen`, one history row per completed epoch, steps that are whole epochs
//! plus a partial one, a best value that is the best epoch's), `Loaded::check_schedule` what
//! depends on the data and the spec, and `load` refuses states holding a NaN or an infinity.
//! A value that fails is `ResumeError::Tampered`, naming the field and the file. This module
//! never trains.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ndarray::ArrayD;
use netc_ir::backend::TrainState;
use netc_ir::ir::Program;
use serde::{Deserialize, Serialize};

use crate::data::Examples;
use crate::report::{self, EpochRecord, History, ReportError, RunStatus, StopReason};
use crate::schedule::PlateauState;
use crate::train::{LoopState, PartialEpoch, Resumed, Snapshot, TrackerState};
use crate::weights::{self, WeightsError, NETC_VERSION};

/// The checkpoint's directory inside a run directory.
pub const CHECKPOINT_DIR: &str = "checkpoint";
/// The file that makes a checkpoint: written last, it names the state files it belongs to.
pub const TRAINER_FILE: &str = "trainer.json";
/// Version of `trainer.json`'s layout; a file of another version is refused.
pub const FORMAT: u32 = 1;

/// What identifies a run, checked when it is resumed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunIdentity {
    /// The spec path as given to `netc run` (reported in the summary).
    pub spec: String,
    /// FNV-1a 64 of the bytes of the run's `spec.net`.
    pub spec_hash: String,
    pub model: String,
    /// The backend that trained; a resumed run uses it unless told otherwise.
    pub backend: String,
    /// The seed and epoch count in effect (overrides applied).
    pub seed: u64,
    pub epochs: usize,
    /// `data_fingerprint` of the training set.
    pub data: String,
    /// Where the data were read from, as an absolute path: a resumed run reads them there
    /// unless told otherwise. `None` when the path is not UTF-8 (or for checkpoints of netc
    /// versions that did not record it).
    pub data_path: Option<PathBuf>,
}

/// FNV-1a 64, as 16 hex digits: a fingerprint, not a defence against tampering.
pub fn fnv1a64(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{hash:016x}")
}

/// A cheap fingerprint of a training set: its size, an FNV-1a 64 of its labels and an XXH64 of
/// its pixels (`Examples::pixel_digest`), as `NxF:LABELS:PIXELS`. It tells another data set
/// (generated or real, another download, the same labels over other images) from the one a run
/// started with.
pub fn data_fingerprint(examples: &Examples) -> String {
    format!(
        "{}:{:016x}",
        label_fingerprint(examples),
        examples.pixel_digest()
    )
}

/// `NxF:LABELS`, the whole fingerprint of checkpoints written before pixels were fingerprinted
/// too, and the new fingerprint's prefix.
fn label_fingerprint(examples: &Examples) -> String {
    let mut bytes = (examples.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&(examples.features() as u64).to_le_bytes());
    bytes.extend_from_slice(examples.labels());
    format!(
        "{}x{}:{}",
        examples.len(),
        examples.features(),
        fnv1a64(&bytes)
    )
}

/// Checks a training set against the fingerprint a checkpoint recorded. A label-only
/// fingerprint (`NxF:LABELS`, from an older netc) is compared on what it holds, so such a run
/// still resumes; its pixels cannot be checked.
pub fn check_data(recorded: &str, examples: &Examples) -> Result<(), ResumeError> {
    let found = data_fingerprint(examples);
    let label_only = recorded.split(':').count() == 2;
    let same = if label_only {
        label_fingerprint(examples) == recorded
    } else {
        found == recorded
    };
    if same {
        return Ok(());
    }
    let labels = |fingerprint: &str| fingerprint.rsplit_once(':').map(|(l, _)| l.to_owned());
    let what = if !label_only && labels(&found) == labels(recorded) {
        "the same labels over other images"
    } else {
        "other examples or labels"
    };
    Err(ResumeError::DataMismatch {
        expected: recorded.to_owned(),
        found,
        what,
    })
}

/// Errors writing a checkpoint. The previous checkpoint is intact whenever one is returned.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum CheckpointError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Weights(Box<WeightsError>),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Report(Box<ReportError>),
    #[error("cannot create the checkpoint directory {}: {source}", path.display())]
    #[diagnostic(
        code(netc::checkpoint::create_dir),
        help(
            "check that the run directory is writable; the previous checkpoint, if any, is intact"
        )
    )]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<WeightsError> for CheckpointError {
    fn from(e: WeightsError) -> Self {
        CheckpointError::Weights(Box::new(e))
    }
}

impl From<ReportError> for CheckpointError {
    fn from(e: ReportError) -> Self {
        CheckpointError::Report(Box::new(e))
    }
}

/// Why a run cannot be resumed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ResumeError {
    #[error("{} is not a run directory", path.display())]
    #[diagnostic(
        code(netc::resume::not_a_run),
        help("pass the directory `netc run` printed, the one holding spec.net and checkpoint/")
    )]
    NotARun { path: PathBuf },

    #[error("the run in {} has already finished", path.display())]
    #[diagnostic(
        code(netc::resume::finished),
        help(
            "its summary.json is written; `netc eval {0}` evaluates it again, and \
             `netc run {0}/spec.net` starts a new run",
            path.display()
        )
    )]
    Finished { path: PathBuf },

    #[error("the run in {} has no checkpoint to resume from", path.display())]
    #[diagnostic(
        code(netc::resume::no_checkpoint),
        help(
            "it stopped before its first checkpoint, or ran with --checkpoint-every 0; start it \
             again with `netc run {}/spec.net`",
            path.display()
        )
    )]
    NoCheckpoint { path: PathBuf },

    #[error("{} is not a valid netc checkpoint: {reason}", path.display())]
    #[diagnostic(
        code(netc::resume::bad_checkpoint),
        help("the checkpoint is damaged or from another netc version; start the run again")
    )]
    BadCheckpoint { path: PathBuf, reason: String },

    #[error("{} was tampered with: `{field}` {problem}", path.display())]
    #[diagnostic(
        code(netc::resume::tampered),
        help(
            "netc never writes such a value: the file was edited or damaged. Put back a copy of \
             the original, or start the run again from its spec.net"
        )
    )]
    Tampered {
        path: PathBuf,
        field: String,
        problem: String,
    },

    #[error("{} holds a NaN or an infinity in `{tensor}`", path.display())]
    #[diagnostic(
        code(netc::resume::non_finite_params),
        help(
            "training never continues from such weights: the file was damaged or edited, or the \
             run blew up in the step before it was written. Start the run again (with a lower \
             learning rate if it diverged)"
        )
    )]
    NonFiniteParams { path: PathBuf, tensor: String },

    #[error("the checkpoint in {} does not match the run's spec.net: {reason}", path.display())]
    #[diagnostic(
        code(netc::resume::spec_mismatch),
        help(
            "spec.net changed since the checkpoint was written; put the original text back, or \
             start a new run with the changed spec"
        )
    )]
    SpecMismatch { path: PathBuf, reason: String },

    #[error(
        "the data differ from those the run started with: {what} (fingerprint {found} instead of \
         {expected})"
    )]
    #[diagnostic(
        code(netc::resume::data_mismatch),
        help(
            "pass the run's data set with --data; its images and labels must be the ones the run \
             started with"
        )
    )]
    DataMismatch {
        expected: String,
        found: String,
        what: &'static str,
    },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Weights(Box<WeightsError>),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Report(Box<ReportError>),
}

impl From<ReportError> for ResumeError {
    fn from(e: ReportError) -> Self {
        ResumeError::Report(Box::new(e))
    }
}

/// Writes a run's checkpoints; `save` is what `train::train_from` calls.
pub struct Checkpointer {
    dir: PathBuf,
    program: Program,
    identity: RunIdentity,
    /// Steps whose state files the committed `trainer.json` names.
    committed: BTreeSet<u64>,
    /// Wall-clock seconds of the run before this process, and when this process started it.
    seconds_before: f64,
    started: std::time::Instant,
}

impl Checkpointer {
    /// A checkpointer for the run in `run_dir`; nothing is written before the first `save`.
    pub fn new(run_dir: &Path, program: &Program, identity: RunIdentity) -> Self {
        Checkpointer {
            dir: run_dir.join(CHECKPOINT_DIR),
            program: program.clone(),
            identity,
            committed: BTreeSet::new(),
            seconds_before: 0.0,
            started: std::time::Instant::now(),
        }
    }

    /// Continues after `loaded` (its files count as written) with the run's `identity` as it
    /// is now (another backend, epoch count or data path), and removes files a save that was
    /// killed half-way left behind. The caller holds the run directory's lock
    /// (`run::RunLock`), so those files are not another process's.
    pub fn resume(
        run_dir: &Path,
        program: &Program,
        identity: RunIdentity,
        loaded: &Loaded,
    ) -> Self {
        let mut checkpointer = Checkpointer::new(run_dir, program, identity);
        checkpointer.committed = loaded.steps.clone();
        checkpointer.seconds_before = loaded.seconds;
        checkpointer.remove_unnamed();
        checkpointer
    }

    /// The run's wall-clock seconds so far, earlier processes included.
    pub fn seconds(&self) -> f64 {
        self.seconds_before + self.started.elapsed().as_secs_f64()
    }

    /// Writes a checkpoint of `snapshot`; see the module documentation for the order.
    pub fn save(&mut self, snapshot: &Snapshot<'_>) -> Result<(), CheckpointError> {
        fs::create_dir_all(&self.dir).map_err(|source| CheckpointError::CreateDir {
            path: self.dir.clone(),
            source,
        })?;
        let mut states = vec![snapshot.state, snapshot.last_good];
        states.extend(snapshot.best);
        let mut steps = BTreeSet::new();
        for state in states {
            if steps.insert(state.step) && !self.committed.contains(&state.step) {
                let (params, optimizer) = state_files(state.step);
                weights::save_params(&self.dir.join(params), &self.program, state)?;
                weights::save_optimizer(&self.dir.join(optimizer), &self.program, state)?;
            }
        }
        let file = TrainerFile::new(&self.identity, snapshot, self.seconds());
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(ReportError::Encode)?;
        bytes.push(b'\n');
        let path = self.dir.join(TRAINER_FILE);
        report::atomic_write(&path, &bytes).map_err(|e| ReportError::write(&path, e))?;
        self.committed = steps;
        self.remove_unnamed();
        Ok(())
    }

    /// Removes the state files and temporary files the committed `trainer.json` does not name.
    /// Failing to remove one costs only disk space, so errors are ignored.
    fn remove_unnamed(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        let named: BTreeSet<String> = self
            .committed
            .iter()
            .flat_map(|&s| {
                let (p, o) = state_files(s);
                [p, o]
            })
            .collect();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name.ends_with(".safetensors")
                && (name.starts_with("params-") || name.starts_with("optimizer-"));
            let temporary = name.starts_with(".netc-") && name.ends_with(".tmp");
            if (ours && !named.contains(&name)) || temporary {
                fs::remove_file(entry.path()).ok();
            }
        }
    }
}

/// File names of the state at `step`.
fn state_files(step: u64) -> (String, String) {
    (
        format!("params-{step}.safetensors"),
        format!("optimizer-{step}.safetensors"),
    )
}

/// A checkpoint read back, ready for `train::train_from`.
#[derive(Debug)]
pub struct Loaded {
    pub identity: RunIdentity,
    /// The backend state to `set_state` before resuming.
    pub state: TrainState,
    pub resumed: Resumed,
    /// Wall-clock seconds the run had taken when the checkpoint was written.
    pub seconds: f64,
    /// `trainer.json`, named by the errors of the checks that need the data or the spec.
    pub path: PathBuf,
    steps: BTreeSet<u64>,
}

impl Loaded {
    /// The checks of the loop state that need the run's data and spec: the steps must be whole
    /// epochs of `steps_per_epoch` steps plus a partial one of full batches, and an early stop
    /// must be the spec's.
    pub fn check_schedule(
        &self,
        steps_per_epoch: usize,
        program: &Program,
    ) -> Result<(), ResumeError> {
        let ls = &self.resumed.loop_state;
        let tampered = |field: &str, problem: String| ResumeError::Tampered {
            path: self.path.clone(),
            field: field.to_owned(),
            problem,
        };
        let per_epoch = steps_per_epoch as u64;
        let expected = (ls.epochs_completed as u64).checked_mul(per_epoch);
        if expected != Some(self.resumed.last_good.step) {
            return Err(tampered(
                "last_good.step",
                format!(
                    "is {}, but {} epochs of {steps_per_epoch} steps (the data and the spec's \
                     batch size) end at step {}",
                    self.resumed.last_good.step,
                    ls.epochs_completed,
                    expected.map_or_else(|| "beyond any step".to_owned(), |s| s.to_string())
                ),
            ));
        }
        if let Some(p) = ls.partial {
            if p.steps >= steps_per_epoch {
                return Err(tampered(
                    "partial.steps",
                    format!("is {}, but an epoch has {steps_per_epoch} steps", p.steps),
                ));
            }
            let seen = p.steps.checked_mul(program.train.batch);
            if seen != Some(p.seen) {
                return Err(tampered(
                    "partial.seen",
                    format!(
                        "is {}, but {} batches of {} examples are {}",
                        p.seen,
                        p.steps,
                        program.train.batch,
                        seen.map_or_else(|| "more".to_owned(), |s| s.to_string())
                    ),
                ));
            }
        }
        match &ls.stop {
            Some(StopReason::EarlyStopping { patience }) => {
                let spec = program.train.early_stopping.map(|e| e.patience);
                if spec != Some(*patience) {
                    return Err(tampered(
                        "stop.patience",
                        match spec {
                            Some(p) => format!("is {patience}, but the spec's patience is {p}"),
                            None => "is set, but the spec has no early stopping".to_owned(),
                        },
                    ));
                }
            }
            Some(StopReason::Diverged { step, .. }) => {
                let last = self.resumed.last_good.step;
                if *step >= last.saturating_add(per_epoch) {
                    return Err(tampered(
                        "stop.step",
                        format!(
                            "is {step}, past the epoch of {steps_per_epoch} steps after step {last}"
                        ),
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Whether `run_dir` can be resumed at all, before its spec is compiled: it must be a run
/// directory, unfinished (without a summary, or with the summary of an interrupted run), and
/// hold a checkpoint.
pub fn check_resumable(run_dir: &Path) -> Result<(), ResumeError> {
    if !run_dir.join(crate::run::SPEC_FILE).is_file() {
        return Err(ResumeError::NotARun {
            path: run_dir.to_path_buf(),
        });
    }
    let summary = run_dir.join(crate::run::SUMMARY_FILE);
    if summary.exists() && report::read_summary(&summary)?.status == RunStatus::Finished {
        return Err(ResumeError::Finished {
            path: run_dir.to_path_buf(),
        });
    }
    if !run_dir.join(CHECKPOINT_DIR).join(TRAINER_FILE).is_file() {
        return Err(ResumeError::NoCheckpoint {
            path: run_dir.to_path_buf(),
        });
    }
    Ok(())
}

/// The checked `trainer.json` of a resumable `run_dir` (see `check_resumable`).
pub fn read_trainer(run_dir: &Path) -> Result<TrainerState, ResumeError> {
    check_resumable(run_dir)?;
    let path = run_dir.join(CHECKPOINT_DIR).join(TRAINER_FILE);
    let text = fs::read_to_string(&path).map_err(|e| ReportError::read(&path, e))?;
    parse_trainer_json(&text).map_err(|e| match e {
        TrainerJsonError::Tampered { field, problem } => ResumeError::Tampered {
            path,
            field,
            problem,
        },
        e => ResumeError::BadCheckpoint {
            path,
            reason: e.to_string(),
        },
    })
}

/// Reads the checkpoint of `run_dir` for `program`, compiled from the run's `spec.net` whose
/// bytes are `spec_bytes`, with the seed and epochs the checkpoint records applied to it by the
/// caller afterwards (`Loaded::identity`). What depends on the data is checked by the caller
/// with `Loaded::check_schedule`.
pub fn load(run_dir: &Path, program: &Program, spec_bytes: &[u8]) -> Result<Loaded, ResumeError> {
    let trainer = read_trainer(run_dir)?;
    let dir = run_dir.join(CHECKPOINT_DIR);
    let path = dir.join(TRAINER_FILE);
    let mismatch = |reason: String| ResumeError::SpecMismatch {
        path: dir.clone(),
        reason,
    };
    let spec_hash = fnv1a64(spec_bytes);
    if trainer.identity.spec_hash != spec_hash {
        return Err(mismatch(format!(
            "it was written for a spec.net of hash {}, the file now has hash {spec_hash}",
            trainer.identity.spec_hash
        )));
    }
    if trainer.identity.model != program.name {
        return Err(mismatch(format!(
            "it holds model `{}`, the spec declares `{}`",
            trainer.identity.model, program.name
        )));
    }
    let load_state = |step: u64| -> Result<TrainState, ResumeError> {
        let (params, optimizer) = state_files(step);
        let params = dir.join(params);
        let state = weights::load_train_state(&params, &dir.join(&optimizer), program).map_err(
            |e| match e {
                WeightsError::Mismatch { .. } => mismatch(e.to_string()),
                e => ResumeError::Weights(Box::new(e)),
            },
        )?;
        if state.step != step {
            return Err(ResumeError::BadCheckpoint {
                path: path.clone(),
                reason: format!(
                    "{optimizer} holds the state of step {}, not {step}",
                    state.step
                ),
            });
        }
        if let Some(tensor) = first_non_finite(program, &state.params) {
            return Err(ResumeError::NonFiniteParams {
                path: params,
                tensor: tensor.to_owned(),
            });
        }
        Ok(state)
    };
    let state = load_state(trainer.state_step)?;
    let last_good = if trainer.last_good_step == trainer.state_step {
        state.clone()
    } else {
        load_state(trainer.last_good_step)?
    };
    let best = match trainer.best_step {
        None => None,
        Some(b) if b == trainer.state_step => Some(state.clone()),
        Some(b) if b == trainer.last_good_step => Some(last_good.clone()),
        Some(b) => Some(load_state(b)?),
    };
    let mut steps: BTreeSet<u64> = [trainer.state_step, trainer.last_good_step].into();
    steps.extend(trainer.best_step);
    Ok(Loaded {
        identity: trainer.identity,
        state,
        resumed: Resumed {
            loop_state: trainer.loop_state,
            last_good,
            best,
        },
        seconds: trainer.seconds,
        path,
        steps,
    })
}

/// The name of the first parameter in `params` (indexed like `program.params`) that holds a
/// NaN or an infinity.
pub fn first_non_finite<'p>(program: &'p Program, params: &[ArrayD<f32>]) -> Option<&'p str> {
    program
        .params
        .iter()
        .zip(params)
        .find(|(_, values)| values.iter().any(|v| !v.is_finite()))
        .map(|(param, _)| param.name.as_str())
}

/// `trainer.json` read back and checked: the run's identity and loop state, and the optimizer
/// steps that name the backend states it belongs to.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainerState {
    pub identity: RunIdentity,
    /// Wall-clock seconds the run had taken when the checkpoint was written.
    pub seconds: f64,
    pub loop_state: LoopState,
    /// Steps of the current state, the last good one and the best one (see `Snapshot`).
    pub state_step: u64,
    pub last_good_step: u64,
    pub best_step: Option<u64>,
}

/// Why a text is not a `trainer.json` netc could have written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrainerJsonError {
    /// Not JSON, or not of `trainer.json`'s layout (a missing field, a string for a number).
    #[error("{0}")]
    Syntax(String),
    #[error("its layout version is {found} (this netc reads version {FORMAT})")]
    Format { found: u32 },
    /// Well-formed, but with a value netc never writes, or values that contradict each other.
    #[error("`{field}` {problem}")]
    Tampered { field: String, problem: String },
}

/// The longest wall-clock time a checkpoint may record, in seconds (about 300 years): anything
/// longer was not measured, and would overflow the clock arithmetic of a resumed epoch.
pub const MAX_SECONDS: f64 = 1e10;

/// The most epochs a run may have; the checker's limit for `epochs`.
pub const MAX_EPOCHS: usize = netc_ir::ir::MAX_EPOCHS;

/// Parses and checks the text of a `trainer.json`. Every number is validated: times finite and
/// non-negative, sums finite, rates and metrics in range, counters consistent with each other
/// (`correct <= seen`, one history row per completed epoch, steps that are whole epochs plus a
/// partial one, a best epoch that is in the history with the value recorded), so that a
/// checkpoint this accepts can be resumed without a panic. What depends on the data and the
/// spec is checked by `Loaded::check_schedule`. Never panics, whatever `text` holds.
pub fn parse_trainer_json(text: &str) -> Result<TrainerState, TrainerJsonError> {
    let file: TrainerFile =
        serde_json::from_str(text).map_err(|e| TrainerJsonError::Syntax(e.to_string()))?;
    file.check()
}

/// `trainer.json`.
#[derive(Debug, Serialize, Deserialize)]
struct TrainerFile {
    format: u32,
    netc_version: String,
    spec: String,
    spec_hash: String,
    model: String,
    backend: String,
    seed: u64,
    epochs: usize,
    data: String,
    /// Absent in checkpoints of netc versions that did not record it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    data_path: Option<String>,
    seconds: Exact,
    state: StateFiles,
    last_good: StateFiles,
    best: Option<StateFiles>,
    epochs_completed: usize,
    partial: Option<PartialRow>,
    history: Vec<EpochRow>,
    early_stopping: TrackerRow,
    plateau: PlateauRow,
    stop: Option<StopReason>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFiles {
    step: u64,
    params: String,
    optimizer: String,
}

impl StateFiles {
    fn of(state: &TrainState) -> Self {
        let (params, optimizer) = state_files(state.step);
        StateFiles {
            step: state.step,
            params,
            optimizer,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct PartialRow {
    steps: usize,
    loss_sum: Exact,
    correct: usize,
    seen: usize,
    lr: Exact,
    seconds: Exact,
}

#[derive(Debug, Serialize, Deserialize)]
struct EpochRow {
    epoch: usize,
    lr: Exact,
    loss: Exact,
    accuracy: Exact,
    val_loss: Exact,
    val_accuracy: Exact,
    seconds: Exact,
}

#[derive(Debug, Serialize, Deserialize)]
struct TrackerRow {
    best: Option<Exact>,
    best_epoch: usize,
    wait: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct PlateauRow {
    lr: Exact,
    best: Exact,
    wait: usize,
}

/// A float stored as a string that reads back to the same bits (see the module documentation).
/// f32 values are widened to f64 exactly and narrowed back exactly.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Exact(f64);

impl Exact {
    fn f32(x: f32) -> Self {
        Exact(f64::from(x))
    }

    /// The f32 this value was made from; an f64 that is not one is an error.
    fn to_f32(self) -> Result<f32, String> {
        let narrow = self.0 as f32;
        if f64::from(narrow).to_bits() == self.0.to_bits() || self.0.is_nan() {
            Ok(narrow)
        } else {
            Err(format!("is {}, not a single-precision value", self.0))
        }
    }
}

impl Serialize for Exact {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for Exact {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse::<f64>()
            .map(Exact)
            .map_err(|_| serde::de::Error::custom(format!("`{text}` is not a number")))
    }
}

impl TrainerFile {
    fn new(identity: &RunIdentity, snapshot: &Snapshot<'_>, seconds: f64) -> Self {
        let ls = snapshot.loop_state;
        TrainerFile {
            format: FORMAT,
            netc_version: NETC_VERSION.to_owned(),
            spec: identity.spec.clone(),
            spec_hash: identity.spec_hash.clone(),
            model: identity.model.clone(),
            backend: identity.backend.clone(),
            seed: identity.seed,
            epochs: identity.epochs,
            data: identity.data.clone(),
            data_path: identity
                .data_path
                .as_ref()
                .and_then(|p| p.to_str())
                .map(str::to_owned),
            seconds: Exact(seconds),
            state: StateFiles::of(snapshot.state),
            last_good: StateFiles::of(snapshot.last_good),
            best: snapshot.best.map(StateFiles::of),
            epochs_completed: ls.epochs_completed,
            partial: ls.partial.map(|p| PartialRow {
                steps: p.steps,
                loss_sum: Exact(p.loss_sum),
                correct: p.correct,
                seen: p.seen,
                lr: Exact::f32(p.lr),
                seconds: Exact(p.seconds),
            }),
            history: ls
                .history
                .epochs
                .iter()
                .map(|e| EpochRow {
                    epoch: e.epoch,
                    lr: Exact::f32(e.lr),
                    loss: Exact::f32(e.loss),
                    accuracy: Exact::f32(e.accuracy),
                    val_loss: Exact::f32(e.val_loss),
                    val_accuracy: Exact::f32(e.val_accuracy),
                    seconds: Exact(e.seconds),
                })
                .collect(),
            early_stopping: TrackerRow {
                best: ls.tracker.best.map(Exact),
                best_epoch: ls.tracker.best_epoch,
                wait: ls.tracker.wait,
            },
            plateau: PlateauRow {
                lr: Exact(ls.plateau.lr),
                best: Exact(ls.plateau.best),
                wait: ls.plateau.wait,
            },
            stop: ls.stop.clone(),
        }
    }

    /// The state this file records, once every value in it is one netc could have written.
    fn check(self) -> Result<TrainerState, TrainerJsonError> {
        if self.format != FORMAT {
            return Err(TrainerJsonError::Format { found: self.format });
        }
        if !(1..=MAX_EPOCHS).contains(&self.epochs) {
            return Err(tampered(
                "epochs",
                format!("is {}, not from 1 to {MAX_EPOCHS}", self.epochs),
            ));
        }
        let seconds = time("seconds", self.seconds)?;
        if self.spec_hash.len() != 16 || !self.spec_hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(tampered(
                "spec_hash",
                format!("is `{}`, not 16 hexadecimal digits", self.spec_hash),
            ));
        }
        let data_path = match &self.data_path {
            Some(p) if !Path::new(p).is_absolute() => {
                return Err(tampered(
                    "data_path",
                    format!("is `{p}`, not an absolute path"),
                ))
            }
            p => p.as_ref().map(PathBuf::from),
        };
        self.state.check("state")?;
        self.last_good.check("last_good")?;
        if let Some(best) = &self.best {
            best.check("best")?;
        }

        let history = self.history()?;
        let completed = self.epochs_completed;
        if history.len() != completed {
            return Err(tampered(
                "epochs_completed",
                format!("is {completed}, but `history` has {} rows", history.len()),
            ));
        }
        if completed > self.epochs {
            return Err(tampered(
                "epochs_completed",
                format!("is {completed}, more than the run's {} epochs", self.epochs),
            ));
        }
        // The last good state is the end of the last completed epoch, so its step tells how
        // many steps an epoch has.
        let last_good = self.last_good.step;
        let steps_per_epoch = match completed as u64 {
            0 if last_good == 0 => None,
            0 => {
                return Err(tampered(
                    "last_good.step",
                    format!("is {last_good}, but no epoch is complete, so it must be 0"),
                ))
            }
            n if last_good == 0 || !last_good.is_multiple_of(n) => {
                return Err(tampered(
                    "last_good.step",
                    format!(
                        "is {last_good}, not the same whole number of steps for each of the \
                         {completed} completed epochs"
                    ),
                ))
            }
            n => Some(last_good / n),
        };
        let partial = match &self.partial {
            None => None,
            Some(p) => Some(p.check(steps_per_epoch)?),
        };
        let partial_steps = partial.map_or(0, |p| p.steps as u64);
        if last_good.checked_add(partial_steps) != Some(self.state.step) {
            return Err(tampered(
                "state.step",
                format!(
                    "is {}, but the last good state is at step {last_good} and {partial_steps} \
                     steps of the next epoch are done",
                    self.state.step
                ),
            ));
        }
        let tracker = self.early_stopping.check(&history)?;
        self.check_stop(partial.is_some(), &tracker)?;
        if let Some(best) = &self.best {
            let at = steps_per_epoch.and_then(|s| s.checked_mul(tracker.best_epoch as u64));
            if tracker.best_epoch == 0 || at != Some(best.step) {
                return Err(tampered(
                    "best.step",
                    format!(
                        "is {}, but the best epoch, {}, ends at step {}",
                        best.step,
                        tracker.best_epoch,
                        at.unwrap_or(0)
                    ),
                ));
            }
        }
        let plateau = self.plateau.check(completed)?;
        Ok(TrainerState {
            identity: RunIdentity {
                spec: self.spec,
                spec_hash: self.spec_hash,
                model: self.model,
                backend: self.backend,
                seed: self.seed,
                epochs: self.epochs,
                data: self.data,
                data_path,
            },
            seconds,
            loop_state: LoopState {
                epochs_completed: completed,
                partial,
                history: History { epochs: history },
                tracker,
                plateau,
                stop: self.stop,
            },
            state_step: self.state.step,
            last_good_step: last_good,
            best_step: self.best.as_ref().map(|b| b.step),
        })
    }

    /// The history rows as records, each with values the loop can produce.
    fn history(&self) -> Result<Vec<EpochRecord>, TrainerJsonError> {
        let mut epochs = Vec::new();
        for (i, e) in self.history.iter().enumerate() {
            let field = |name: &str| format!("history[{i}].{name}");
            if e.epoch != i + 1 {
                return Err(tampered(
                    field("epoch"),
                    format!("is {}, but row {i} is epoch {}", e.epoch, i + 1),
                ));
            }
            let val_loss = single(&field("val_loss"), e.val_loss)?;
            if val_loss < 0.0 || val_loss.is_infinite() {
                return Err(tampered(
                    field("val_loss"),
                    format!("is {val_loss}, not a loss"),
                ));
            }
            epochs.push(EpochRecord {
                epoch: e.epoch,
                lr: rate(&field("lr"), single(&field("lr"), e.lr)?)?,
                loss: finite(&field("loss"), single(&field("loss"), e.loss)?)?,
                accuracy: fraction(&field("accuracy"), single(&field("accuracy"), e.accuracy)?)?,
                val_loss,
                val_accuracy: match single(&field("val_accuracy"), e.val_accuracy)? {
                    // No validation examples: the mean of nothing.
                    a if a.is_nan() => a,
                    a => fraction(&field("val_accuracy"), a)?,
                },
                seconds: time(&field("seconds"), e.seconds)?,
            });
        }
        Ok(epochs)
    }

    /// How training stopped, against the epochs and the early-stopping count.
    fn check_stop(&self, partial: bool, tracker: &TrackerState) -> Result<(), TrainerJsonError> {
        let completed = self.epochs_completed;
        let Some(stop) = &self.stop else {
            if completed == self.epochs {
                return Err(tampered(
                    "stop",
                    format!("is missing, but all {completed} epochs are complete"),
                ));
            }
            return Ok(());
        };
        if partial {
            return Err(tampered("partial", "is set, but training has stopped"));
        }
        match stop {
            StopReason::Completed if completed != self.epochs => Err(tampered(
                "stop",
                format!(
                    "says training completed, but {completed} of {} epochs are",
                    self.epochs
                ),
            )),
            // Early stopping stops once `wait` reaches the patience (after one epoch at 0).
            StopReason::EarlyStopping { patience } if tracker.wait != (*patience).max(1) => {
                Err(tampered(
                    "stop.patience",
                    format!(
                        "is {patience}, but training stopped after {} epochs without improvement",
                        tracker.wait
                    ),
                ))
            }
            StopReason::Diverged { epoch, .. } if *epoch != completed + 1 => Err(tampered(
                "stop.epoch",
                format!("is {epoch}, but the epoch after the {completed} completed ones diverged"),
            )),
            StopReason::Diverged { step, .. } if *step < self.last_good.step => Err(tampered(
                "stop.step",
                format!(
                    "is {step}, before the last good state's step {}",
                    self.last_good.step
                ),
            )),
            StopReason::Interrupted { .. } => Err(tampered(
                "stop",
                "says the run was interrupted, which only a summary says",
            )),
            _ => Ok(()),
        }
    }
}

impl StateFiles {
    /// Only the names this module gives are accepted, so the file cannot point elsewhere.
    fn check(&self, field: &str) -> Result<(), TrainerJsonError> {
        let (params, optimizer) = state_files(self.step);
        if self.params != params {
            return Err(tampered(
                format!("{field}.params"),
                format!("is `{}`, not `{params}`", self.params),
            ));
        }
        if self.optimizer != optimizer {
            return Err(tampered(
                format!("{field}.optimizer"),
                format!("is `{}`, not `{optimizer}`", self.optimizer),
            ));
        }
        Ok(())
    }
}

impl PartialRow {
    /// The sums of a partial epoch: at least one step (none is no partial epoch), fewer than an
    /// epoch's, each of at least one example.
    fn check(&self, steps_per_epoch: Option<u64>) -> Result<PartialEpoch, TrainerJsonError> {
        let too_many = steps_per_epoch.is_some_and(|s| self.steps as u64 >= s);
        if self.steps == 0 || too_many {
            return Err(tampered(
                "partial.steps",
                format!(
                    "is {}, not from 1 to an epoch's steps less one ({})",
                    self.steps,
                    steps_per_epoch.map_or_else(|| "unknown".to_owned(), |s| (s - 1).to_string())
                ),
            ));
        }
        if self.seen < self.steps {
            return Err(tampered(
                "partial.seen",
                format!("is {}, fewer than its {} steps", self.seen, self.steps),
            ));
        }
        if self.correct > self.seen {
            return Err(tampered(
                "partial.correct",
                format!(
                    "is {}, more than the {} examples seen",
                    self.correct, self.seen
                ),
            ));
        }
        Ok(PartialEpoch {
            steps: self.steps,
            loss_sum: finite("partial.loss_sum", self.loss_sum.0)?,
            correct: self.correct,
            seen: self.seen,
            lr: rate("partial.lr", single("partial.lr", self.lr)?)?,
            seconds: time("partial.seconds", self.seconds)?,
        })
    }
}

impl TrackerRow {
    /// Early stopping's state: its best value is the best epoch's validation metric.
    fn check(&self, history: &[EpochRecord]) -> Result<TrackerState, TrainerJsonError> {
        let completed = history.len();
        if self.best_epoch > completed {
            return Err(tampered(
                "early_stopping.best_epoch",
                format!(
                    "is {}, but {completed} epochs are complete",
                    self.best_epoch
                ),
            ));
        }
        let best = match (self.best, self.best_epoch) {
            (None, 0) => None,
            (Some(best), epoch) if epoch > 0 => {
                let row = &history[epoch - 1];
                let metrics = [f64::from(row.val_loss), f64::from(row.val_accuracy)];
                if !metrics.contains(&best.0) {
                    return Err(tampered(
                        "early_stopping.best",
                        format!(
                            "is {}, but epoch {epoch} has validation loss {} and accuracy {}",
                            best.0, row.val_loss, row.val_accuracy
                        ),
                    ));
                }
                Some(best.0)
            }
            (best, epoch) => {
                return Err(tampered(
                    "early_stopping.best",
                    format!(
                        "is {}, but the best epoch is {epoch}",
                        best.map_or_else(|| "null".to_owned(), |b| b.0.to_string())
                    ),
                ))
            }
        };
        if self.wait > completed - self.best_epoch {
            return Err(tampered(
                "early_stopping.wait",
                format!(
                    "is {}, more than the {} epochs after the best one",
                    self.wait,
                    completed - self.best_epoch
                ),
            ));
        }
        Ok(TrackerState {
            best,
            best_epoch: self.best_epoch,
            wait: self.wait,
        })
    }
}

impl PlateauRow {
    /// Reduce-on-plateau's state: a rate, the lowest validation loss (infinity before any).
    fn check(&self, completed: usize) -> Result<PlateauState, TrainerJsonError> {
        let best = self.best.0;
        if best.is_nan() || best < 0.0 {
            return Err(tampered("plateau.best", format!("is {best}, not a loss")));
        }
        if self.wait > completed {
            return Err(tampered(
                "plateau.wait",
                format!("is {}, but {completed} epochs are complete", self.wait),
            ));
        }
        Ok(PlateauState {
            lr: rate("plateau.lr", self.lr.0)?,
            best,
            wait: self.wait,
        })
    }
}

fn tampered(field: impl Into<String>, problem: impl Into<String>) -> TrainerJsonError {
    TrainerJsonError::Tampered {
        field: field.into(),
        problem: problem.into(),
    }
}

/// A wall-clock time: finite, from 0 to `MAX_SECONDS`.
fn time(field: &str, x: Exact) -> Result<f64, TrainerJsonError> {
    if (0.0..=MAX_SECONDS).contains(&x.0) {
        Ok(x.0)
    } else {
        Err(tampered(
            field,
            format!("is {}, not a time from 0 to {MAX_SECONDS:e} seconds", x.0),
        ))
    }
}

/// A sum or a mean of finite values.
fn finite<T: Into<f64> + Copy + std::fmt::Display>(
    field: &str,
    x: T,
) -> Result<T, TrainerJsonError> {
    if x.into().is_finite() {
        Ok(x)
    } else {
        Err(tampered(field, format!("is {x}, not a finite number")))
    }
}

/// A learning rate: finite and not negative.
fn rate<T: Into<f64> + Copy + std::fmt::Display>(field: &str, x: T) -> Result<T, TrainerJsonError> {
    if (0.0..f64::INFINITY).contains(&x.into()) {
        Ok(x)
    } else {
        Err(tampered(field, format!("is {x}, not a learning rate")))
    }
}

/// An accuracy: from 0 to 1.
fn fraction(field: &str, x: f32) -> Result<f32, TrainerJsonError> {
    if (0.0..=1.0).contains(&x) {
        Ok(x)
    } else {
        Err(tampered(
            field,
            format!("is {x}, not a fraction from 0 to 1"),
        ))
    }
}

/// A value the loop computed as an f32.
fn single(field: &str, x: Exact) -> Result<f32, TrainerJsonError> {
    x.to_f32().map_err(|problem| tampered(field, problem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state(step: u64) -> TrainState {
        TrainState {
            params: Vec::new(),
            slots: Vec::new(),
            step,
        }
    }

    fn record(epoch: usize, val_accuracy: f32) -> EpochRecord {
        EpochRecord {
            epoch,
            lr: 1e-3,
            loss: 2.25,
            accuracy: 0.25,
            val_loss: 2.0,
            val_accuracy,
            seconds: 1.5,
        }
    }

    /// Two epochs of four steps and three steps of the third, of five; the best epoch is the
    /// first, whose state early stopping keeps.
    fn loop_state() -> LoopState {
        LoopState {
            epochs_completed: 2,
            partial: Some(PartialEpoch {
                steps: 3,
                loss_sum: 100.5,
                correct: 30,
                seen: 96,
                lr: 1e-3,
                seconds: 0.25,
            }),
            history: History {
                epochs: vec![record(1, 0.5), record(2, 0.375)],
            },
            tracker: TrackerState {
                best: Some(0.5),
                best_epoch: 1,
                wait: 1,
            },
            plateau: PlateauState {
                lr: 1e-3,
                best: f64::INFINITY,
                wait: 0,
            },
            stop: None,
        }
    }

    fn identity() -> RunIdentity {
        RunIdentity {
            spec: "specs/m.net".to_owned(),
            spec_hash: fnv1a64(b"model m"),
            model: "m".to_owned(),
            backend: "jit".to_owned(),
            seed: 7,
            epochs: 5,
            data: "480x3072:0123456789abcdef".to_owned(),
            data_path: Some(PathBuf::from("/data/cifar-10-binary.tar.gz")),
        }
    }

    fn trainer_json(ls: &LoopState) -> String {
        let (current, last_good, best) = (state(11), state(8), state(4));
        let snapshot = Snapshot {
            loop_state: ls,
            state: &current,
            last_good: &last_good,
            best: Some(&best),
        };
        serde_json::to_string_pretty(&TrainerFile::new(&identity(), &snapshot, 12.5)).unwrap()
    }

    #[test]
    fn what_a_checkpoint_writes_reads_back_exactly() {
        let ls = loop_state();
        let parsed = parse_trainer_json(&trainer_json(&ls)).unwrap();
        assert_eq!(parsed.loop_state, ls);
        assert_eq!(parsed.identity, identity());
        assert_eq!(parsed.seconds, 12.5);
        assert_eq!(
            (parsed.state_step, parsed.last_good_step, parsed.best_step),
            (11, 8, Some(4))
        );
    }

    #[test]
    fn inconsistent_counters_name_their_field() {
        let field = |edit: &dyn Fn(&mut LoopState)| {
            let mut ls = loop_state();
            edit(&mut ls);
            match parse_trainer_json(&trainer_json(&ls)) {
                Err(TrainerJsonError::Tampered { field, .. }) => field,
                other => panic!("expected a tampered field, got {other:?}"),
            }
        };
        assert_eq!(
            field(&|ls| ls.partial.as_mut().unwrap().correct = 97),
            "partial.correct"
        );
        assert_eq!(
            field(&|ls| ls.partial.as_mut().unwrap().seen = 2),
            "partial.seen"
        );
        assert_eq!(
            field(&|ls| ls.partial.as_mut().unwrap().steps = 4),
            "partial.steps"
        );
        assert_eq!(field(&|ls| ls.partial = None), "state.step");
        assert_eq!(
            field(&|ls| ls.tracker.best = Some(0.25)),
            "early_stopping.best"
        );
        assert_eq!(
            field(&|ls| ls.tracker.best_epoch = 3),
            "early_stopping.best_epoch"
        );
        assert_eq!(field(&|ls| ls.plateau.wait = 3), "plateau.wait");
        assert_eq!(
            field(&|ls| ls.history.epochs[1].epoch = 1),
            "history[1].epoch"
        );
        assert_eq!(
            field(&|ls| ls.history.epochs[0].val_accuracy = f32::NAN),
            "early_stopping.best"
        );
        assert_eq!(
            field(&|ls| {
                ls.partial = None;
                ls.stop = Some(StopReason::Completed);
            }),
            "state.step"
        );
    }

    /// A value that may trip the checks: extremes, non-numbers, wrong types.
    fn nasty() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            Just(serde_json::json!("NaN")),
            Just(serde_json::json!("inf")),
            Just(serde_json::json!("-inf")),
            Just(serde_json::json!("-1")),
            Just(serde_json::json!("1e30")),
            Just(serde_json::json!("1e-320")),
            Just(serde_json::json!(u64::MAX)),
            Just(serde_json::json!(-1)),
            Just(serde_json::json!(0)),
            Just(serde_json::json!(null)),
            Just(serde_json::json!([])),
            Just(serde_json::json!("")),
            any::<u64>().prop_map(|n| serde_json::json!(n)),
            any::<f64>().prop_map(|x| serde_json::json!(x.to_string())),
        ]
    }

    /// Every place in a JSON value, as a path of keys and indices.
    fn places(value: &serde_json::Value, here: Vec<String>, out: &mut Vec<Vec<String>>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let mut path = here.clone();
                    path.push(k.clone());
                    places(v, path, out);
                }
            }
            serde_json::Value::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    let mut path = here.clone();
                    path.push(i.to_string());
                    places(v, path, out);
                }
            }
            _ => {}
        }
        out.push(here);
    }

    fn place_mut<'v>(
        value: &'v mut serde_json::Value,
        path: &[String],
    ) -> &'v mut serde_json::Value {
        path.iter().fold(value, |v, key| match v {
            serde_json::Value::Array(items) => &mut items[key.parse::<usize>().unwrap()],
            v => &mut v[key.as_str()],
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// `parse_trainer_json` never panics, whatever values a file holds.
        #[test]
        fn parsing_never_panics_on_edited_values(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), nasty()), 1..4),
        ) {
            let text = trainer_json(&loop_state());
            let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
            for (at, new) in edits {
                let mut all = Vec::new();
                places(&value, Vec::new(), &mut all);
                let path = all[at.index(all.len())].clone();
                *place_mut(&mut value, &path) = new;
            }
            let _ = parse_trainer_json(&value.to_string());
        }

        /// Nor on arbitrary bytes spliced into a valid file.
        #[test]
        fn parsing_never_panics_on_damaged_text(
            at in any::<prop::sample::Index>(),
            cut in 0usize..40,
            insert in "[0-9eE.+-]{0,12}",
        ) {
            let text = trainer_json(&loop_state());
            let start = at.index(text.len());
            let end = (start + cut).min(text.len());
            let damaged = format!("{}{insert}{}", &text[..start], &text[end..]);
            let _ = parse_trainer_json(&damaged);
        }
    }
}
