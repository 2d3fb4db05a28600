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
//! bits for a resumed run to match an uninterrupted one. This module never trains.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use netc_compiler::backend::TrainState;
use netc_compiler::ir::Program;
use serde::{Deserialize, Serialize};

use crate::data::Examples;
use crate::report::{self, EpochRecord, History, ReportError, StopReason};
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

    /// Continues after `loaded` (its files count as written), and removes files a save that was
    /// killed half-way left behind.
    pub fn resume(run_dir: &Path, program: &Program, loaded: &Loaded) -> Self {
        let mut checkpointer = Checkpointer::new(run_dir, program, loaded.identity.clone());
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
    steps: BTreeSet<u64>,
}

/// Whether `run_dir` can be resumed at all, before its spec is compiled: it must be a run
/// directory, unfinished, and hold a checkpoint.
pub fn check_resumable(run_dir: &Path) -> Result<(), ResumeError> {
    if !run_dir.join(crate::run::SPEC_FILE).is_file() {
        return Err(ResumeError::NotARun {
            path: run_dir.to_path_buf(),
        });
    }
    if run_dir.join(crate::run::SUMMARY_FILE).exists() {
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

/// Reads the checkpoint of `run_dir` for `program`, compiled from the run's `spec.net` whose
/// bytes are `spec_bytes`, with the seed and epochs the checkpoint records applied to it by the
/// caller afterwards (`Loaded::identity`).
pub fn load(run_dir: &Path, program: &Program, spec_bytes: &[u8]) -> Result<Loaded, ResumeError> {
    check_resumable(run_dir)?;
    let dir = run_dir.join(CHECKPOINT_DIR);
    let path = dir.join(TRAINER_FILE);
    let text = fs::read_to_string(&path).map_err(|e| ReportError::read(&path, e))?;
    let bad = |reason: String| ResumeError::BadCheckpoint {
        path: path.clone(),
        reason,
    };
    let file: TrainerFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if file.format != FORMAT {
        return Err(bad(format!(
            "layout version {} (this netc reads version {FORMAT})",
            file.format
        )));
    }
    let mismatch = |reason: String| ResumeError::SpecMismatch {
        path: dir.clone(),
        reason,
    };
    let spec_hash = fnv1a64(spec_bytes);
    if file.spec_hash != spec_hash {
        return Err(mismatch(format!(
            "it was written for a spec.net of hash {}, the file now has hash {spec_hash}",
            file.spec_hash
        )));
    }
    if file.model != program.name {
        return Err(mismatch(format!(
            "it holds model `{}`, the spec declares `{}`",
            file.model, program.name
        )));
    }
    let load_state = |files: &StateFiles| -> Result<TrainState, ResumeError> {
        // Only the names this module gives are accepted, so the file cannot point elsewhere.
        let (params, optimizer) = state_files(files.step);
        if files.params != params || files.optimizer != optimizer {
            return Err(bad(format!(
                "unexpected state file names `{}` and `{}` for step {}",
                files.params, files.optimizer, files.step
            )));
        }
        let state = weights::load_train_state(&dir.join(params), &dir.join(&optimizer), program)
            .map_err(|e| match e {
                WeightsError::Mismatch { .. } => mismatch(e.to_string()),
                e => ResumeError::Weights(Box::new(e)),
            })?;
        if state.step != files.step {
            return Err(bad(format!(
                "{optimizer} holds the state of step {}, not {}",
                state.step, files.step
            )));
        }
        Ok(state)
    };
    let state = load_state(&file.state)?;
    let last_good = if file.last_good.step == file.state.step {
        state.clone()
    } else {
        load_state(&file.last_good)?
    };
    let best = match &file.best {
        None => None,
        Some(b) if b.step == file.state.step => Some(state.clone()),
        Some(b) if b.step == file.last_good.step => Some(last_good.clone()),
        Some(b) => Some(load_state(b)?),
    };
    let mut steps: BTreeSet<u64> = [file.state.step, file.last_good.step].into();
    steps.extend(file.best.as_ref().map(|b| b.step));
    let loop_state = file.loop_state().map_err(bad)?;
    Ok(Loaded {
        identity: RunIdentity {
            spec: file.spec,
            spec_hash: file.spec_hash,
            model: file.model,
            backend: file.backend,
            seed: file.seed,
            epochs: file.epochs,
            data: file.data,
        },
        state,
        resumed: Resumed {
            loop_state,
            last_good,
            best,
        },
        seconds: file.seconds.0,
        steps,
    })
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
            Err(format!("{} is not a single-precision value", self.0))
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

    /// The loop state this file records, checked for consistency.
    fn loop_state(&self) -> Result<LoopState, String> {
        let mut epochs = Vec::with_capacity(self.history.len());
        for (i, e) in self.history.iter().enumerate() {
            if e.epoch != i + 1 {
                return Err(format!("history row {} is epoch {}", i + 1, e.epoch));
            }
            epochs.push(EpochRecord {
                epoch: e.epoch,
                lr: e.lr.to_f32()?,
                loss: e.loss.to_f32()?,
                accuracy: e.accuracy.to_f32()?,
                val_loss: e.val_loss.to_f32()?,
                val_accuracy: e.val_accuracy.to_f32()?,
                seconds: e.seconds.0,
            });
        }
        if epochs.len() != self.epochs_completed || self.epochs_completed > self.epochs {
            return Err(format!(
                "{} epochs completed of {}, with {} history rows",
                self.epochs_completed,
                self.epochs,
                epochs.len()
            ));
        }
        let partial = match &self.partial {
            None => None,
            Some(p) => Some(PartialEpoch {
                steps: p.steps,
                loss_sum: p.loss_sum.0,
                correct: p.correct,
                seen: p.seen,
                lr: p.lr.to_f32()?,
                seconds: p.seconds.0,
            }),
        };
        Ok(LoopState {
            epochs_completed: self.epochs_completed,
            partial,
            history: History { epochs },
            tracker: TrackerState {
                best: self.early_stopping.best.map(|b| b.0),
                best_epoch: self.early_stopping.best_epoch,
                wait: self.early_stopping.wait,
            },
            plateau: PlateauState {
                lr: self.plateau.lr.0,
                best: self.plateau.best.0,
                wait: self.plateau.wait,
            },
            stop: self.stop.clone(),
        })
    }
}
