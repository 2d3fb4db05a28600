//! One complete run of a checked program: load the data, build a backend through the caller's
//! factory (so the CLI chooses `interp` or `jit`), train, evaluate on the test set (with MC
//! Dropout and magnitude pruning when the spec asks), and leave a run directory behind: a copy of
//! the spec, `history.csv`, `summary.json`, `curves.png` and `weights.safetensors`, and during
//! training a `checkpoint/` (see `checkpoint`) that `resume` continues from. A run is finished
//! once `summary.json` exists with the status `finished`; an interrupted run writes the same
//! files with the results of its completed epochs, the status `interrupted` and no test
//! evaluation, and `resume` replaces them.
//!
//! A run directory is never overwritten: the default name gets a numeric suffix when taken, and
//! an explicit `--out` that exists is an error. Every file in it is written atomically. The
//! process that trains in a run directory holds its lock (`RunLock`), so a second one is refused.

use std::fs;
use std::io::{self, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use ndarray::ArrayD;
use netc_ir::backend::{Backend, BackendError, InputStats, TrainState};
use netc_ir::ir::{OpKind, ParamId, Program};

use crate::checkpoint::{self, CheckpointError, Checkpointer, Loaded, ResumeError, RunIdentity};
use crate::data::{self, DataError};
use crate::plot::{self, PlotError};
use crate::progress::Report;
use crate::report::{self, LayerSparsity, ReportError, RunStatus, StopReason, Summary};
use crate::train::{
    self, EvalStop, Evaluation, OutOfMemory, TrainOptions, TrainOutcome, TrainStop,
};
use crate::weights::{self, WeightsError};

/// What the command line can change about a run.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Where CIFAR-10 is; see `data::locate` for where it is looked for otherwise.
    pub data: Option<PathBuf>,
    /// Overrides the spec's `epochs`.
    pub epochs: Option<usize>,
    /// Overrides the spec's `seed` (initialization, split, shuffles and dropout).
    pub seed: Option<u64>,
    /// Run directory; by default `runs/<model>-<UTC timestamp>`.
    pub out: Option<PathBuf>,
    /// Where progress and results go as the run goes (nothing by default).
    pub report: Report,
    /// Write a checkpoint after every this many epochs and when training ends; 0 writes one
    /// only when interrupted.
    pub checkpoint_every: usize,
    /// Once set (by a signal handler), training stops after the current step (the test
    /// evaluation between two batches), writes a checkpoint and the results so far, and the
    /// run returns `RunError::Interrupted`.
    pub interrupt: Option<Arc<AtomicBool>>,
}

/// Name of the spec's copy in the run directory, fixed so tools can find it.
pub const SPEC_FILE: &str = "spec.net";
pub const HISTORY_FILE: &str = "history.csv";
pub const SUMMARY_FILE: &str = "summary.json";
pub const CURVES_FILE: &str = "curves.png";
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// The file the training process locks (see `RunLock`).
pub const LOCK_FILE: &str = ".lock";

#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum RunError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Data(#[from] DataError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Backend(#[from] BackendError),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Report(Box<ReportError>),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Plot(Box<PlotError>),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Weights(Box<WeightsError>),

    #[error(transparent)]
    #[diagnostic(transparent)]
    OutOfMemory(#[from] OutOfMemory),

    #[error("the run directory {} already exists", path.display())]
    #[diagnostic(
        code(netc::run::out_exists),
        help("netc never overwrites a run: choose another --out, or move the old run away")
    )]
    OutExists { path: PathBuf },

    #[error("cannot create the run directory {}: {source}", path.display())]
    #[diagnostic(
        code(netc::run::create_dir),
        help("check that the parent directory is writable, or choose another --out")
    )]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("another netc process{holder} is training in {}", dir.display())]
    #[diagnostic(
        code(netc::run::locked),
        help(
            "two processes training one run would overwrite each other's files: wait for the \
             other one to end, or stop it (Ctrl-C writes a checkpoint) and resume then"
        )
    )]
    Locked {
        dir: PathBuf,
        /// ` (pid N)` when the lock file says which process holds it, else empty.
        holder: String,
    },

    #[error("cannot lock the run directory with {}: {source}", path.display())]
    #[diagnostic(
        code(netc::run::lock),
        help("check that the run directory is writable")
    )]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(transparent)]
    #[diagnostic(transparent)]
    Checkpoint(Box<CheckpointError>),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Resume(Box<ResumeError>),

    #[error(transparent)]
    #[diagnostic(transparent)]
    Interrupted(Interruption),

    #[error("cannot read the spec {}: {source}", path.display())]
    #[diagnostic(code(netc::run::read_spec))]
    ReadSpec {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "{} changed since the run trained: its hash is {found}, the run recorded {recorded}",
        path.display()
    )]
    #[diagnostic(
        code(netc::eval::spec_changed),
        help(
            "the weights belong to the spec the run trained, and an edited spec would compute \
             something else with them: put the original spec.net back, or train the edited \
             spec in a new run (`netc run` with it)"
        )
    )]
    SpecChanged {
        path: PathBuf,
        recorded: String,
        found: String,
    },

    #[error("{} holds a NaN or an infinity in `{tensor}`", path.display())]
    #[diagnostic(
        code(netc::eval::non_finite_weights),
        help(
            "netc never keeps such weights from a run that trained well: the file was damaged \
             or edited. Train the spec again"
        )
    )]
    NonFiniteWeights { path: PathBuf, tensor: String },
}

/// How far an interrupted run got, and what it left behind: `RunError::Interrupted`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interruption {
    pub run_dir: PathBuf,
    pub epochs_completed: usize,
    /// Steps of the next epoch done; 0 when training had ended.
    pub steps: usize,
    /// Training had ended: the test evaluation was interrupted.
    pub training_done: bool,
    /// `RUN_DIR/checkpoint/` holds the state reached: always when training was interrupted,
    /// and after it unless checkpoints were off (`checkpoint_every` 0).
    pub checkpointed: bool,
}

impl std::fmt::Display for Interruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dir = self.run_dir.display();
        let so_far =
            format!("{dir}/{SUMMARY_FILE} holds the results so far (without a test evaluation)");
        match (self.training_done, self.checkpointed) {
            (false, _) => write!(
                f,
                "interrupted after {} epochs and {} steps of the next; checkpoint written to \
                 {dir}/{}, and {so_far}",
                self.epochs_completed,
                self.steps,
                checkpoint::CHECKPOINT_DIR
            ),
            (true, true) => write!(
                f,
                "interrupted during the test evaluation, after {} epochs of training; training \
                 is checkpointed in {dir}/{}, and {so_far}",
                self.epochs_completed,
                checkpoint::CHECKPOINT_DIR
            ),
            (true, false) => write!(
                f,
                "interrupted during the test evaluation, after {} epochs of training; {so_far} \
                 and {dir}/{WEIGHTS_FILE} its weights, but with --checkpoint-every 0 no \
                 checkpoint of the end of training was written",
                self.epochs_completed
            ),
        }
    }
}

impl std::error::Error for Interruption {}

impl miette::Diagnostic for Interruption {
    fn code<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new("netc::run::interrupted"))
    }

    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        Some(Box::new(self.hint()))
    }
}

impl Interruption {
    /// What to do next: resume, or evaluate what was kept (the command in backticks, as in
    /// every diagnostic's help, so the CLI can spell it the way netc was started).
    pub fn hint(&self) -> String {
        let dir = self.run_dir.display();
        match (self.training_done, self.checkpointed) {
            (false, _) => format!("resume with `netc run --resume {dir}`"),
            (true, true) => {
                format!("resume with `netc run --resume {dir}` (it only evaluates the test set)")
            }
            (true, false) => format!("evaluate the kept weights with `netc eval {dir}`"),
        }
    }
}

// The report, plot and weights errors carry a source excerpt each; boxing them keeps `RunError`
// (and every `Result` here) small.
impl From<ReportError> for RunError {
    fn from(e: ReportError) -> Self {
        RunError::Report(Box::new(e))
    }
}

impl From<PlotError> for RunError {
    fn from(e: PlotError) -> Self {
        RunError::Plot(Box::new(e))
    }
}

impl From<CheckpointError> for RunError {
    fn from(e: CheckpointError) -> Self {
        RunError::Checkpoint(Box::new(e))
    }
}

impl From<Box<ResumeError>> for RunError {
    fn from(e: Box<ResumeError>) -> Self {
        RunError::Resume(e)
    }
}

impl From<ResumeError> for RunError {
    fn from(e: ResumeError) -> Self {
        RunError::Resume(Box::new(e))
    }
}

impl From<WeightsError> for RunError {
    fn from(e: WeightsError) -> Self {
        RunError::Weights(Box::new(e))
    }
}

/// The exclusive lock on a run directory, held by the process that trains in it, so that a
/// second `netc run --resume` of the directory is refused instead of training alongside (the
/// last writer winning) and removing the first one's temporary files. It is an advisory lock
/// (`flock`) on `RUN_DIR/.lock`, which the operating system releases when the file is closed:
/// when this is dropped, or the process ends however it ends. A file system that cannot lock
/// files gets no lock rather than no run.
#[derive(Debug)]
pub struct RunLock {
    _file: fs::File,
}

impl RunLock {
    /// Locks `run_dir`, or says which process holds it; the holder's pid is written to the file.
    pub fn acquire(run_dir: &Path) -> Result<RunLock, RunError> {
        let path = run_dir.join(LOCK_FILE);
        let lock_error = |source| RunError::Lock {
            path: path.clone(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(lock_error)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                file.read_to_string(&mut text).ok();
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!(" (pid {pid})"),
                    Err(_) => String::new(),
                };
                return Err(RunError::Locked {
                    dir: run_dir.to_path_buf(),
                    holder,
                });
            }
            Err(fs::TryLockError::Error(e)) if e.kind() == io::ErrorKind::Unsupported => {}
            Err(fs::TryLockError::Error(e)) => return Err(lock_error(e)),
        }
        // Only the holder writes; the pid is a courtesy for the message above.
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()))
            .map_err(lock_error)?;
        Ok(RunLock { _file: file })
    }
}

/// The absolute form of a data path, recorded in checkpoints; `None` when there is none.
fn absolute_data_path(data: &data::Cifar10) -> Option<PathBuf> {
    std::path::absolute(data.source.path()).ok()
}

/// The text a run trains, exactly as the front end compiled it (overrides applied), and the
/// name it is reported under (the path the user gave). `run` copies the text to
/// `RUN_DIR/spec.net` and hashes it; it never reads the spec file itself, so what is recorded is
/// what was trained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecSource {
    pub name: String,
    pub text: String,
}

impl SpecSource {
    /// Reads a spec file whole, for library users and tests; the CLI reads specs itself, once,
    /// with its size limit.
    pub fn read(path: &Path) -> Result<SpecSource, RunError> {
        let text = fs::read_to_string(path).map_err(|source| RunError::ReadSpec {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(SpecSource {
            name: path.display().to_string(),
            text,
        })
    }
}

/// Runs `program` (compiled from `spec.text`) end to end and returns its summary, also written
/// to the run directory. `make_backend` builds the executor from the program as run (seed and
/// epochs overridden by `opts`, for library users; the CLI applies its flags to the text
/// instead) and, for standardized inputs, the training split's statistics; the time it takes is
/// reported as `compile_ms`. Checkpoints go to `RUN_DIR/checkpoint/` (see `checkpoint`).
pub fn run<F>(
    program: &Program,
    spec: &SpecSource,
    opts: &RunOptions,
    make_backend: F,
) -> Result<Summary, RunError>
where
    F: FnOnce(&Program, Option<InputStats>) -> Result<Box<dyn Backend>, BackendError>,
{
    let started = Instant::now();
    let mut program = program.clone();
    if let Some(seed) = opts.seed {
        program.train.seed = seed;
    }
    if let Some(epochs) = opts.epochs {
        program.train.epochs = epochs;
    }
    let spec_text = spec.text.as_bytes();

    let inputs = Inputs::load(&program, opts.data.as_deref())?;
    let (backend, compile_ms) = inputs.backend(&program, make_backend)?;
    let Inputs { data, split, .. } = inputs;

    // Reserve the directory before the long part, so a taken `--out` fails in seconds.
    let run_dir = create_run_dir(opts.out.as_deref(), &program.name)?;
    let lock = RunLock::acquire(&run_dir)?;
    write_file(&run_dir.join(SPEC_FILE), spec_text)?;

    let identity = RunIdentity {
        spec: spec.name.clone(),
        spec_hash: checkpoint::fnv1a64(spec_text),
        model: program.name.clone(),
        backend: backend.name().to_owned(),
        seed: program.train.seed,
        epochs: program.train.epochs,
        data: checkpoint::data_fingerprint(&data.train),
        data_path: absolute_data_path(&data),
    };
    let checkpointer = Checkpointer::new(&run_dir, &program, identity.clone());
    let session = Session {
        program: &program,
        data: &data,
        split: &split,
        backend,
        run_dir,
        identity,
        compile_ms,
        started,
        report: opts.report.clone(),
        checkpoint_every: opts.checkpoint_every,
        interrupt: opts.interrupt.as_deref(),
        checkpointer,
        resumed: None,
        _lock: lock,
    };
    session.finish()
}

/// What `resume` takes from the command line; the rest comes from the checkpoint.
#[derive(Clone, Debug, Default)]
pub struct ResumeOptions {
    /// Where CIFAR-10 is (it must be the data the run started with); by default where the
    /// checkpoint says the run read it.
    pub data: Option<PathBuf>,
    /// Train until this many epochs instead of the recorded count: more extends the run, as
    /// many as are complete or fewer ends it now (see `set_epochs`).
    pub epochs: Option<usize>,
    /// As `RunOptions::report`.
    pub report: Report,
    /// As `RunOptions::checkpoint_every`.
    pub checkpoint_every: usize,
    /// As `RunOptions::interrupt`.
    pub interrupt: Option<Arc<AtomicBool>>,
}

/// Continues the run in `run_dir` from its checkpoint and finishes it as `run` would have, with
/// the same weights and history (bit for bit, on the same backend, with the same epochs).
/// `program` is compiled from `spec_text`, the run's `spec.net` as the caller read it (once),
/// which must hash to what the checkpoint recorded; the seed and epochs come from the
/// checkpoint (the epochs unless `opts.epochs` changes them). `make_backend` gets the name of
/// the backend that trained the run.
pub fn resume<F>(
    program: &Program,
    spec_text: &str,
    run_dir: &Path,
    opts: &ResumeOptions,
    make_backend: F,
) -> Result<Summary, RunError>
where
    F: FnOnce(&Program, Option<InputStats>, &str) -> Result<Box<dyn Backend>, BackendError>,
{
    let started = Instant::now();
    checkpoint::check_resumable(run_dir)?;
    // Before anything is read: another process may be writing the checkpoint.
    let lock = RunLock::acquire(run_dir)?;
    let mut loaded = checkpoint::load(run_dir, program, spec_text.as_bytes())?;
    let mut program = program.clone();
    program.train.seed = loaded.identity.seed;

    let data_path = opts.data.as_ref().or(loaded.identity.data_path.as_ref());
    let inputs = Inputs::load(&program, data_path.map(PathBuf::as_path))?;
    checkpoint::check_data(&loaded.identity.data, &inputs.data.train).map_err(Box::new)?;
    let steps_per_epoch = data::batch_count(inputs.split.train.len(), program.train.batch);
    loaded.check_schedule(steps_per_epoch, &program)?;
    let epochs_changed = opts
        .epochs
        .is_some_and(|epochs| set_epochs(&mut loaded, epochs));
    program.train.epochs = loaded.identity.epochs;

    let trained_with = loaded.identity.backend.clone();
    let (mut backend, compile_ms) =
        inputs.backend(&program, |p, stats| make_backend(p, stats, &trained_with))?;
    backend.set_state(&loaded.state);
    let Inputs { data, split, .. } = inputs;

    let mut identity = loaded.identity.clone();
    identity.backend = backend.name().to_owned();
    identity.data_path = absolute_data_path(&data);
    let mut checkpointer = Checkpointer::resume(run_dir, &program, identity.clone(), &loaded);
    if epochs_changed {
        // Recorded at once, so that a run interrupted before its next checkpoint keeps it.
        let resumed = &loaded.resumed;
        checkpointer.save(&train::Snapshot {
            loop_state: &resumed.loop_state,
            state: &loaded.state,
            last_good: &resumed.last_good,
            best: resumed.best.as_ref(),
        })?;
    }
    let session = Session {
        program: &program,
        data: &data,
        split: &split,
        backend,
        run_dir: run_dir.to_path_buf(),
        identity,
        compile_ms,
        started,
        report: opts.report.clone(),
        checkpoint_every: opts.checkpoint_every,
        interrupt: opts.interrupt.as_deref(),
        checkpointer,
        resumed: Some(loaded.resumed),
        _lock: lock,
    };
    session.finish()
}

/// Makes a loaded run end after `epochs` epochs; returns whether that changed anything. More
/// epochs than are complete extend it: a run that had completed its epochs trains on, while an
/// early stop or a divergence stands. As many or fewer end it now: the epoch in progress is
/// dropped (the run goes back to the end of its last completed epoch), training counts as
/// completed, and the run keeps all of its completed epochs.
pub fn set_epochs(loaded: &mut Loaded, epochs: usize) -> bool {
    let ls = &mut loaded.resumed.loop_state;
    let done = ls.epochs_completed;
    let before = (loaded.identity.epochs, ls.stop.clone(), ls.partial);
    if epochs > done {
        if ls.stop == Some(StopReason::Completed) {
            ls.stop = None;
        }
        loaded.identity.epochs = epochs;
    } else {
        if ls.partial.take().is_some() {
            loaded.state = loaded.resumed.last_good.clone();
        }
        ls.stop.get_or_insert(StopReason::Completed);
        loaded.identity.epochs = done;
    }
    before != (loaded.identity.epochs, ls.stop.clone(), ls.partial)
}

/// What executing a program on CIFAR-10 needs before its backend: the data, the validation
/// split, and for standardized inputs the training split's statistics. Every command that
/// executes a program (run, resume, eval, lr-find) sets up through `Inputs::load` and
/// `Inputs::backend`, in that order.
pub struct Inputs {
    pub data: data::Cifar10,
    pub split: data::Split,
    pub stats: Option<InputStats>,
}

impl Inputs {
    /// Loads the data from `data` (or where `data::load` looks) and splits it as `program`
    /// says (its seed and validation size).
    pub fn load(program: &Program, data: Option<&Path>) -> Result<Inputs, RunError> {
        let data = data::load(data)?;
        let (split, stats) = split_and_stats(program, &data.train)?;
        Ok(Inputs { data, split, stats })
    }

    /// Makes the backend for `program` with the caller's factory, and says how long that took
    /// in milliseconds (the JIT's compile time).
    pub fn backend<F>(
        &self,
        program: &Program,
        make: F,
    ) -> Result<(Box<dyn Backend>, f64), BackendError>
    where
        F: FnOnce(&Program, Option<InputStats>) -> Result<Box<dyn Backend>, BackendError>,
    {
        let started = Instant::now();
        let backend = make(program, self.stats.clone())?;
        Ok((backend, started.elapsed().as_secs_f64() * 1e3))
    }
}

/// The validation split and, for standardized inputs, the training split's statistics.
fn split_and_stats(
    program: &Program,
    train: &data::Examples,
) -> Result<(data::Split, Option<InputStats>), RunError> {
    let split = data::split_validation(train.len(), program.train.validation, program.train.seed)?;
    let stats = data::standardization(program, train, &split.train);
    Ok((split, stats))
}

/// Refuses to evaluate the run in `run_dir` when `spec_text`, its `spec.net` as the caller read
/// it (once, to compile it too), is not the one it trained: its hash must be the one the
/// summary (or, for runs of netc versions that did not record it there, the checkpoint)
/// recorded. A run that recorded none cannot be checked.
pub fn check_spec_unchanged(
    run_dir: &Path,
    summary: &Summary,
    spec_text: &str,
) -> Result<(), RunError> {
    let path = run_dir.join(SPEC_FILE);
    let recorded = summary.spec_hash.clone().or_else(|| {
        let trainer = run_dir
            .join(checkpoint::CHECKPOINT_DIR)
            .join(checkpoint::TRAINER_FILE);
        let text = fs::read_to_string(trainer).ok()?;
        checkpoint::parse_trainer_json(&text)
            .ok()
            .map(|t| t.identity.spec_hash)
    });
    let Some(recorded) = recorded else {
        return Ok(());
    };
    let found = checkpoint::fnv1a64(spec_text.as_bytes());
    if found != recorded {
        return Err(RunError::SpecChanged {
            path,
            recorded,
            found,
        });
    }
    Ok(())
}

/// What `netc eval` reports of a run: its kept weights on the test set.
#[derive(Clone, Debug)]
pub struct RunEvaluation {
    pub evaluation: Evaluation,
    /// The backend that evaluated (`interp` or `jit`).
    pub backend: &'static str,
    /// The MC Dropout samples asked for, not drawn because the model has no dropout (every
    /// sample would be the pass with dropout off).
    pub mc_skipped: Option<usize>,
}

/// Evaluates the weights the run in `run_dir` kept on the test set (`program` compiled from
/// its `spec.net`, checked by `check_spec_unchanged`), with MC Dropout (`mc` samples, else the
/// spec's, else 10) when the model has dropout.
pub fn evaluate_run<F>(
    run_dir: &Path,
    summary: &Summary,
    program: &Program,
    data: Option<&Path>,
    mc: Option<usize>,
    make_backend: F,
) -> Result<RunEvaluation, RunError>
where
    F: FnOnce(&Program, Option<InputStats>) -> Result<Box<dyn Backend>, BackendError>,
{
    let mut program = program.clone();
    program.train.seed = summary.seed;
    let inputs = Inputs::load(&program, data)?;
    let (mut backend, _) = inputs.backend(&program, make_backend)?;
    let mut state = backend.state();
    state.params = load_kept_weights(run_dir, &program)?;
    backend.set_state(&state);
    let samples = mc.or(program.eval.mc_dropout).unwrap_or(10);
    let has_dropout = program.has_dropout();
    let test = &inputs.data.test;
    let evaluation = match train::evaluate(
        backend.as_mut(),
        test,
        &test.all_indices(),
        program.input.classes,
        has_dropout.then_some(samples),
        None,
    ) {
        Ok(e) => e,
        Err(EvalStop::OutOfMemory(e)) => return Err(e.into()),
        Err(EvalStop::Interrupted) => unreachable!("no interrupt flag was given"),
    };
    Ok(RunEvaluation {
        evaluation,
        backend: backend.name(),
        mc_skipped: (!has_dropout).then_some(samples),
    })
}

/// The weights a finished (or interrupted) run kept, for `program` compiled from its
/// `spec.net`; refused when one of them is not finite.
pub fn load_kept_weights(run_dir: &Path, program: &Program) -> Result<Vec<ArrayD<f32>>, RunError> {
    let path = run_dir.join(WEIGHTS_FILE);
    let params = weights::load_params(&path, program)?;
    if let Some(tensor) = checkpoint::first_non_finite(program, &params) {
        return Err(RunError::NonFiniteWeights {
            path,
            tensor: tensor.to_owned(),
        });
    }
    Ok(params)
}

/// A run with its data, backend and directory in place: what `run` and `resume` share.
struct Session<'a> {
    program: &'a Program,
    data: &'a data::Cifar10,
    split: &'a data::Split,
    backend: Box<dyn Backend>,
    run_dir: PathBuf,
    identity: RunIdentity,
    compile_ms: f64,
    started: Instant,
    report: Report,
    checkpoint_every: usize,
    interrupt: Option<&'a AtomicBool>,
    checkpointer: Checkpointer,
    resumed: Option<train::Resumed>,
    /// Held until the run ends.
    _lock: RunLock,
}

/// The test set's numbers: the evaluation and, when the spec prunes, the accuracy before.
struct Tested {
    test: Evaluation,
    unpruned_test_acc: Option<f64>,
}

impl Session<'_> {
    /// Trains (from the checkpoint when resuming), tests, and writes the run directory. When
    /// interrupted, writes the results so far instead (see `write_interrupted`).
    fn finish(mut self) -> Result<Summary, RunError> {
        self.report
            .line(&format!("run directory: {}", self.run_dir.display()));
        // A run resumed after training ended has the end of training in its checkpoint.
        let end_checkpointed = self.checkpoint_every > 0
            || self
                .resumed
                .as_ref()
                .is_some_and(|r| r.loop_state.stop.is_some());
        let train_opts = TrainOptions {
            epochs: None,
            report: self.report.clone(),
        };
        let checkpointer = &mut self.checkpointer;
        let mut save = |snapshot: &train::Snapshot<'_>| checkpointer.save(snapshot);
        let mut control = train::Control {
            interrupt: self.interrupt,
            checkpoint_every: self.checkpoint_every,
            save: &mut save,
        };
        let outcome = train::train_from(
            self.backend.as_mut(),
            self.program,
            &self.data.train,
            self.split,
            &train_opts,
            self.resumed.take(),
            &mut control,
        );
        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(TrainStop::Save(e)) => return Err(e.into()),
            Err(TrainStop::OutOfMemory(e)) => return Err(e.into()),
            Err(TrainStop::Interrupted {
                epoch,
                steps,
                so_far,
            }) => {
                let stop = StopReason::Interrupted { epoch, steps };
                self.write_interrupted(&so_far.history, so_far.best_epoch, stop, &so_far.kept)?;
                return Err(RunError::Interrupted(Interruption {
                    run_dir: self.run_dir.clone(),
                    epochs_completed: epoch - 1,
                    steps,
                    training_done: false,
                    checkpointed: true,
                }));
            }
        };
        // The weights training ended with (before pruning), kept if the test is interrupted.
        let trained = self.backend.state();
        let tested = match self.test() {
            Ok(tested) => tested,
            Err(EvalStop::OutOfMemory(e)) => return Err(e.into()),
            Err(EvalStop::Interrupted) => {
                let history = &outcome.history;
                self.write_interrupted(
                    history,
                    outcome.best_epoch,
                    outcome.stop.clone(),
                    &trained,
                )?;
                return Err(RunError::Interrupted(Interruption {
                    run_dir: self.run_dir.clone(),
                    epochs_completed: history.epochs.len(),
                    steps: 0,
                    training_done: true,
                    checkpointed: end_checkpointed,
                }));
            }
        };
        self.write_finished(&outcome, &tested)
    }

    /// Evaluates the trained backend on the test set, pruned when the spec asks; stops between
    /// two batches when interrupted.
    fn test(&mut self) -> Result<Tested, EvalStop> {
        let program = self.program;
        let test = &self.data.test;
        let backend = self.backend.as_mut();
        let indices = test.all_indices();
        let classes = program.output_width();
        let mc_samples = program.eval.mc_dropout;
        let interrupt = self.interrupt;
        Ok(match program.eval.prune {
            Some(prune) => {
                let before = train::evaluate(backend, test, &indices, classes, None, interrupt)?;
                let mut state = backend.state();
                prune_kernels(program, &mut state, prune.sparsity)?;
                backend.set_state(&state);
                Tested {
                    test: train::evaluate(backend, test, &indices, classes, mc_samples, interrupt)?,
                    unpruned_test_acc: Some(before.standard.accuracy),
                }
            }
            None => Tested {
                test: train::evaluate(backend, test, &indices, classes, mc_samples, interrupt)?,
                unpruned_test_acc: None,
            },
        })
    }

    /// Writes the finished run's weights, history, curves and summary.
    fn write_finished(&self, outcome: &TrainOutcome, tested: &Tested) -> Result<Summary, RunError> {
        let final_state = self.backend.state();
        let mut summary = self.write_results(
            &outcome.history,
            outcome.best_epoch,
            outcome.stop.clone(),
            &final_state,
        )?;
        let test = &tested.test;
        summary.test_acc = test.standard.accuracy;
        summary.test_loss = test.standard.loss;
        summary.mc_test_acc = test.mc_dropout.as_ref().map(|m| m.metrics.accuracy);
        summary.mc_samples = test.mc_dropout.as_ref().map(|m| m.samples);
        summary.unpruned_test_acc = tested.unpruned_test_acc;
        summary.test_evaluated = true;
        summary.status = RunStatus::Finished;
        self.report.line(&test_lines(test));
        if let Some(before) = tested.unpruned_test_acc {
            self.report.line(&format!(
                "pruned dense kernels to {:.1}% zeros: test acc {before:.4} before, {:.4} after",
                summary.sparsity * 100.0,
                test.standard.accuracy
            ));
        }
        report::write_summary(&self.run_dir.join(SUMMARY_FILE), &summary)?;
        Ok(summary)
    }

    /// Writes what an interrupted run has so far: the weights it would keep, the history and
    /// curves of its completed epochs, and a summary marked `interrupted`, without test numbers.
    /// A resumed run replaces them all when it ends.
    fn write_interrupted(
        &self,
        history: &report::History,
        best_epoch: usize,
        stop: StopReason,
        kept: &TrainState,
    ) -> Result<(), RunError> {
        let summary = self.write_results(history, best_epoch, stop, kept)?;
        report::write_summary(&self.run_dir.join(SUMMARY_FILE), &summary)?;
        Ok(())
    }

    /// Writes `weights`, the history and the curves, and returns the summary of them: that of an
    /// interrupted run, without test numbers, which `write_finished` completes.
    fn write_results(
        &self,
        history: &report::History,
        best_epoch: usize,
        stop: StopReason,
        weights: &TrainState,
    ) -> Result<Summary, RunError> {
        let program = self.program;
        let run_dir = &self.run_dir;
        let (sparsity, layer_sparsity) = kernel_sparsity(program, weights);
        weights::save_params(&run_dir.join(WEIGHTS_FILE), program, weights)?;
        write_history(run_dir, history)?;
        if !history.epochs.is_empty() {
            plot::plot_curves(
                &run_dir.join(CURVES_FILE),
                &program.name,
                history,
                best_epoch,
            )?;
        }
        // The summary speaks of one epoch: the best one, whose weights the run keeps and tests.
        let best = history.epochs.iter().find(|e| e.epoch == best_epoch);
        Ok(Summary {
            spec: self.identity.spec.clone(),
            model: program.name.clone(),
            backend: self.backend.name().to_owned(),
            seed: program.train.seed,
            epochs_run: history.epochs.len(),
            best_epoch,
            best_val_acc: best.map_or(f64::NAN, |e| f64::from(e.val_accuracy)),
            best_val_loss: best.map_or(f64::NAN, |e| f64::from(e.val_loss)),
            test_acc: f64::NAN,
            test_loss: f64::NAN,
            mc_test_acc: None,
            mc_samples: None,
            sparsity,
            layer_sparsity,
            unpruned_test_acc: None,
            param_count: program.param_count(),
            trainable_params: program.trainable_param_count(),
            sec_per_epoch: median(history.epochs.iter().map(|e| e.seconds).collect()),
            total_seconds: self
                .checkpointer
                .seconds()
                .max(self.started.elapsed().as_secs_f64()),
            compile_ms: self.compile_ms,
            peak_rss_mb: peak_rss_mb(),
            stop,
            run_dir: run_dir.display().to_string(),
            status: RunStatus::Interrupted,
            test_evaluated: false,
            spec_hash: Some(self.identity.spec_hash.clone()),
        })
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    report::atomic_write(path, bytes).map_err(|e| ReportError::write(path, e).into())
}

fn write_history(run_dir: &Path, history: &report::History) -> Result<(), RunError> {
    report::write_history_csv(&run_dir.join(HISTORY_FILE), history)?;
    Ok(())
}

/// The test set's results, as the run reports them: a line, and one more for MC Dropout.
fn test_lines(test: &Evaluation) -> String {
    let s = &test.standard;
    let mut line = format!(
        "test  loss {:.4}  acc {:.4}  confidence {:.3}  entropy {:.3}  {:.0} ms/10k images",
        s.loss, s.accuracy, s.confidence, s.entropy, s.ms_per_10k
    );
    if let Some(mc) = &test.mc_dropout {
        let m = &mc.metrics;
        line.push_str(&format!(
            "\nMC Dropout ({} samples)  loss {:.4}  acc {:.4}  confidence {:.3}  entropy {:.3}  {:.0} ms/10k images",
            mc.samples, m.loss, m.accuracy, m.confidence, m.entropy, m.ms_per_10k
        ));
    }
    line
}

/// The median (mean of the middle two for an even count), NaN for no values.
pub(crate) fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Creates the run directory. An explicit path must not exist yet; the default
/// `runs/<model>-<timestamp>` gets `-2`, `-3`, … when two runs start in the same second.
pub fn create_run_dir(out: Option<&Path>, model: &str) -> Result<PathBuf, RunError> {
    let create_err = |path: &Path, source| RunError::CreateDir {
        path: path.to_path_buf(),
        source,
    };
    let create = |path: &Path| -> Result<bool, RunError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(|e| create_err(parent, e))?;
        }
        match fs::create_dir(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(create_err(path, e)),
        }
    };
    if let Some(path) = out {
        return match create(path)? {
            true => Ok(path.to_path_buf()),
            false => Err(RunError::OutExists {
                path: path.to_path_buf(),
            }),
        };
    }
    let base = format!("{}-{}", file_safe(model), utc_timestamp(SystemTime::now()));
    default_run_dir(Path::new("runs"), &base, create)
}

/// Creates `root/base`, or `root/base-2`, `root/base-3`, … when taken. `create` returns false when
/// the directory already exists.
fn default_run_dir(
    root: &Path,
    base: &str,
    create: impl Fn(&Path) -> Result<bool, RunError>,
) -> Result<PathBuf, RunError> {
    // Far more runs than can start in one second; past it something else is wrong.
    const MAX_SUFFIX: u32 = 10_000;
    for n in 1..=MAX_SUFFIX {
        let path = match n {
            1 => root.join(base),
            _ => root.join(format!("{base}-{n}")),
        };
        if create(&path)? {
            return Ok(path);
        }
    }
    Err(RunError::OutExists {
        path: root.join(base),
    })
}

/// The model name with every character that is awkward in a file name replaced by `_`.
fn file_safe(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' | '.' => c,
            _ => '_',
        })
        .collect();
    match safe.trim_start_matches('.') {
        "" => "model".to_owned(),
        s => s.to_owned(),
    }
}

/// `YYYYMMDD-HHMMSS` in UTC (so names sort by time whatever the time zone).
pub fn utc_timestamp(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 to a proleptic Gregorian date.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Each dense or convolution layer's name with its kernel's parameter id, in op order.
fn kernels(program: &Program) -> Vec<(&str, ParamId)> {
    program
        .ops
        .iter()
        .filter_map(|op| match op.kind {
            OpKind::Dense { kernel, .. } | OpKind::Conv2d { kernel, .. } => {
                Some((op.layer.as_str(), kernel))
            }
            _ => None,
        })
        .collect()
}

/// Magnitude pruning: in every dense and convolution kernel, sets the `sparsity` fraction of weights with the
/// smallest absolute value to zero. As TensorFlow's model-optimization toolkit, it keeps
/// `round(len · (1 - sparsity))` weights; ties in magnitude are broken by position, so the count
/// is exact.
pub fn prune_kernels(
    program: &Program,
    state: &mut TrainState,
    sparsity: f32,
) -> Result<(), OutOfMemory> {
    let sparsity = f64::from(sparsity).clamp(0.0, 1.0);
    for (_, kernel) in kernels(program) {
        let Some(weights) = state.params.get_mut(kernel.index()) else {
            continue;
        };
        let len = weights.len();
        let keep = (len as f64 * (1.0 - sparsity)).round() as usize;
        let zeroed = len - keep.min(len);
        if zeroed == 0 {
            continue;
        }
        let mut order = train::try_filled(Some(len), 0usize, "the pruning order of a kernel")?;
        order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
        let mut pruned = train::try_filled(Some(len), false, "the pruning mask of a kernel")?;
        {
            let mut values = train::try_filled(Some(len), 0.0f32, "a copy of a kernel to prune")?;
            values
                .iter_mut()
                .zip(weights.iter())
                .for_each(|(v, w)| *v = *w);
            let by_magnitude = |&a: &usize, &b: &usize| {
                values[a].abs().total_cmp(&values[b].abs()).then(a.cmp(&b))
            };
            order.select_nth_unstable_by(zeroed - 1, by_magnitude);
        }
        for &i in &order[..zeroed] {
            pruned[i] = true;
        }
        for (w, &p) in weights.iter_mut().zip(&pruned) {
            if p {
                *w = 0.0;
            }
        }
    }
    Ok(())
}

/// The share of exactly-zero weights in each dense or convolution kernel and over all of them.
pub fn kernel_sparsity(program: &Program, state: &TrainState) -> (f64, Vec<LayerSparsity>) {
    let (mut zeros, mut total) = (0usize, 0usize);
    let mut layers = Vec::new();
    for (layer, kernel) in kernels(program) {
        let Some(weights) = state.params.get(kernel.index()) else {
            continue;
        };
        let z = weights.iter().filter(|&&w| w == 0.0).count();
        zeros += z;
        total += weights.len();
        layers.push(LayerSparsity {
            layer: layer.to_owned(),
            zero_fraction: z as f64 / weights.len().max(1) as f64,
        });
    }
    (zeros as f64 / total.max(1) as f64, layers)
}

/// Peak resident memory of this process in MiB, from `VmHWM` in `/proc/self/status`; 0 where
/// the platform does not report it.
pub fn peak_rss_mb() -> f64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_vm_hwm_kb(&s))
        .map_or(0.0, |kb| kb as f64 / 1024.0)
}

fn parse_vm_hwm_kb(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{SyntheticFormat, SyntheticSpec};
    use crate::report::StopReason;
    use crate::train::fake;
    use miette::Diagnostic;
    use ndarray::{ArrayD, IxDyn};
    use netc_ir::ir::Prune;

    struct Fixture {
        dir: tempfile::TempDir,
        data: PathBuf,
        spec: SpecSource,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let spec = SyntheticSpec {
            records_per_file: 60,
            seed: 11,
            format: SyntheticFormat::Tarball,
        };
        let data = data::write_synthetic(&dir.path().join("data"), &spec).unwrap();
        let spec = SpecSource {
            name: dir.path().join("linear.net").display().to_string(),
            text: "model linear { }\n".to_string(),
        };
        Fixture { dir, data, spec }
    }

    fn options(f: &Fixture, out: &str) -> RunOptions {
        RunOptions {
            data: Some(f.data.clone()),
            epochs: Some(3),
            seed: Some(5),
            out: Some(f.dir.path().join(out)),
            report: Report::silent(),
            checkpoint_every: 1,
            interrupt: None,
        }
    }

    fn linear_program() -> Program {
        let mut program = fake::program(data::IMAGE_BYTES, 10, 16, 50);
        program.train.validation = 60;
        program
    }

    fn fake_backend(
        program: &Program,
        stats: Option<InputStats>,
    ) -> Result<Box<dyn Backend>, BackendError> {
        Ok(Box::new(fake::LinearSoftmax::new(program, stats)))
    }

    #[test]
    fn a_run_trains_evaluates_and_writes_its_directory() {
        let f = fixture();
        let opts = options(&f, "run1");
        let mut seen = None;
        let summary = run(&linear_program(), &f.spec, &opts, |p, stats| {
            seen = Some((
                p.train.seed,
                p.train.epochs,
                stats.as_ref().map(|s| s.mean.len()),
            ));
            fake_backend(p, stats)
        })
        .unwrap();
        assert_eq!(seen, Some((5, 3, Some(data::IMAGE_BYTES))));
        assert_eq!((summary.seed, summary.epochs_run), (5, 3));
        assert_eq!(summary.stop, StopReason::Completed);
        assert_eq!(summary.backend, "fake");
        assert!(summary.test_acc > 0.5, "{summary:?}");
        assert!((1..=3).contains(&summary.best_epoch));
        assert!(summary.best_val_acc > 0.5 && summary.best_val_loss.is_finite());
        assert_eq!(summary.mc_test_acc, None);
        assert_eq!(summary.unpruned_test_acc, None);
        // An unpruned kernel of random floats has no exact zeros.
        assert_eq!(summary.sparsity, 0.0);
        assert_eq!(summary.layer_sparsity.len(), 1);
        assert_eq!(summary.param_count, 3072 * 10 + 10);
        assert!(summary.peak_rss_mb > 0.0 && summary.sec_per_epoch > 0.0);

        let dir = PathBuf::from(&summary.run_dir);
        assert_eq!(dir, f.dir.path().join("run1"));
        assert_eq!(
            fs::read_to_string(dir.join(SPEC_FILE)).unwrap(),
            f.spec.text
        );
        let history = report::read_history_csv(&dir.join(HISTORY_FILE)).unwrap();
        assert_eq!(history.epochs.len(), 3);
        // The summary's best numbers are those of the best epoch, not extremes over epochs.
        let best = &history.epochs[summary.best_epoch - 1];
        assert_eq!(summary.best_val_acc, f64::from(best.val_accuracy));
        assert_eq!(summary.best_val_loss, f64::from(best.val_loss));
        assert_eq!(
            report::read_summary(&dir.join(SUMMARY_FILE)).unwrap(),
            summary
        );
        assert!(fs::metadata(dir.join(CURVES_FILE)).unwrap().len() > 0);
        let params = weights::load_params(&dir.join(WEIGHTS_FILE), &linear_program()).unwrap();
        assert_eq!(params[0].shape(), &[3072, 10]);
    }

    #[test]
    fn pruning_and_mc_dropout_are_reported() {
        let f = fixture();
        let mut program = linear_program();
        program.eval.prune = Some(Prune { sparsity: 0.5 });
        program.eval.mc_dropout = Some(3);
        let summary = run(&program, &f.spec, &options(&f, "pruned"), fake_backend).unwrap();
        assert_eq!(summary.layer_sparsity[0].layer, "dense_1");
        assert_eq!(summary.layer_sparsity[0].zero_fraction, 0.5);
        assert_eq!(summary.sparsity, 0.5);
        let dir = PathBuf::from(&summary.run_dir);
        let params = weights::load_params(&dir.join(WEIGHTS_FILE), &program).unwrap();
        let zeros = params[0].iter().filter(|&&w| w == 0.0).count();
        assert_eq!(
            zeros,
            3072 * 10 / 2,
            "the saved weights are the pruned ones"
        );
        assert!(summary.unpruned_test_acc.is_some_and(|a| a > 0.5));
        assert_eq!(summary.mc_samples, Some(3));
        assert!(summary.mc_test_acc.is_some_and(|a| a > 0.2), "{summary:?}");
    }

    const INTERP_SPEC: &str = "model tiny
input cifar10 { standardize }
dense 32 { init: he_normal, activation: relu }
dropout 0.2
dense 10 { activation: softmax }
train {
  loss: cross_entropy
  optimizer: adam { lr: 1e-3 }
  batch: 32
  epochs: 3
  validation: 60
  seed: 7
}
evaluate { mc_dropout: 4, prune { sparsity: 0.5 } }
";

    /// The real front end and reference executor, end to end on synthetic data.
    #[test]
    fn the_reference_interpreter_learns_synthetic_data() {
        let mut f = fixture();
        f.spec.text = INTERP_SPEC.to_string();
        let compiled = netc_front::compile(INTERP_SPEC);
        let program = compiled.program.expect("the spec checks");
        let recording = std::sync::Arc::new(crate::progress::recording::Recording::default());
        let opts = RunOptions {
            seed: None,
            epochs: None,
            report: Report::to(recording.clone()),
            ..options(&f, "interp")
        };
        let summary = run(&program, &f.spec, &opts, |p, stats| {
            Ok(Box::new(netc_interp::Interp::new(p, stats)) as Box<dyn Backend>)
        })
        .unwrap();
        assert_eq!(
            (summary.backend.as_str(), summary.epochs_run),
            ("interp", 3)
        );
        assert!(summary.best_val_acc > 0.5, "{summary:?}");
        assert!(
            summary.unpruned_test_acc.is_some_and(|a| a > 0.5),
            "{summary:?}"
        );
        assert!(summary.mc_test_acc.is_some_and(|a| a > 0.3), "{summary:?}");
        let zero: Vec<f64> = summary
            .layer_sparsity
            .iter()
            .map(|l| l.zero_fraction)
            .collect();
        assert_eq!(zero, [0.5, 0.5]);
        // What the user was told, in order: where the run goes, each epoch, the test set (with
        // MC Dropout), and what pruning cost.
        let lines = recording.lines.lock().unwrap().clone();
        assert!(lines[0].starts_with("run directory: "), "{lines:?}");
        assert!(lines[1].starts_with("epoch 1/3"), "{lines:?}");
        let test = lines
            .iter()
            .find(|l| l.starts_with("test  loss"))
            .expect("test line");
        assert!(test.contains("\nMC Dropout (4 samples)"), "{test}");
        assert!(
            lines
                .last()
                .unwrap()
                .starts_with("pruned dense kernels to 50.0% zeros"),
            "{lines:?}"
        );
    }

    #[test]
    fn an_existing_out_directory_is_never_overwritten() {
        let f = fixture();
        let out = f.dir.path().join("taken");
        fs::create_dir(&out).unwrap();
        fs::write(out.join("keep.txt"), "mine").unwrap();
        let mut built = false;
        let err = run(&linear_program(), &f.spec, &options(&f, "taken"), |p, s| {
            built = true;
            fake_backend(p, s)
        })
        .unwrap_err();
        assert_eq!(err.code().unwrap().to_string(), "netc::run::out_exists");
        assert_eq!(fs::read_dir(&out).unwrap().count(), 1);
        assert_eq!(fs::read_to_string(out.join("keep.txt")).unwrap(), "mine");
        assert!(
            built,
            "the backend is built before the directory is reserved"
        );
    }

    #[test]
    fn missing_data_is_reported_before_anything_is_written() {
        let f = fixture();
        let mut opts = options(&f, "nodata");
        opts.data = Some(f.dir.path().join("nowhere"));
        let err = run(&linear_program(), &f.spec, &opts, fake_backend).unwrap_err();
        assert_eq!(err.code().unwrap().to_string(), "netc::data::not_found");
        assert!(!f.dir.path().join("nodata").exists());
    }

    #[test]
    fn default_run_dirs_get_a_suffix_when_taken() {
        let tmp = tempfile::tempdir().unwrap();
        let create = |p: &Path| match fs::create_dir(p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => panic!("{e}"),
        };
        let root = tmp.path();
        let a = default_run_dir(root, "m-20240101-000000", create).unwrap();
        let b = default_run_dir(root, "m-20240101-000000", create).unwrap();
        let c = default_run_dir(root, "m-20240101-000000", create).unwrap();
        assert_eq!(a, root.join("m-20240101-000000"));
        assert_eq!(b, root.join("m-20240101-000000-2"));
        assert_eq!(c, root.join("m-20240101-000000-3"));
        assert_eq!(file_safe("my model/v2"), "my_model_v2");
        assert_eq!(file_safe(".."), "model");
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        let at = |s: u64| utc_timestamp(UNIX_EPOCH + std::time::Duration::from_secs(s));
        assert_eq!(at(0), "19700101-000000");
        assert_eq!(at(951_782_400), "20000229-000000");
        assert_eq!(at(1_700_000_000), "20231114-221320");
        assert_eq!(at(4_107_542_399), "21000228-235959");
    }

    fn state_of(kernel: Vec<f32>, shape: &[usize]) -> TrainState {
        TrainState {
            params: vec![
                ArrayD::from_shape_vec(IxDyn(shape), kernel).unwrap(),
                ArrayD::zeros(IxDyn(&[shape[1]])),
            ],
            slots: vec![vec![], vec![]],
            step: 0,
        }
    }

    #[test]
    fn pruning_zeroes_the_smallest_magnitudes_exactly() {
        let program = fake::program(3, 2, 1, 1);
        let mut state = state_of(vec![0.5, -0.1, 0.3, -0.7, 0.1, 0.2], &[3, 2]);
        prune_kernels(&program, &mut state, 0.5).unwrap();
        // Keeps round(6 · 0.5) = 3; of the tied ±0.1 both go, with 0.2.
        let kept: Vec<f32> = state.params[0].iter().copied().collect();
        assert_eq!(kept, vec![0.5, 0.0, 0.3, -0.7, 0.0, 0.0]);
        let (all, layers) = kernel_sparsity(&program, &state);
        assert_eq!((all, layers[0].zero_fraction), (0.5, 0.5));
        // The bias is not a kernel and is never pruned or counted.
        let mut state = state_of(vec![1.0; 6], &[3, 2]);
        state.params[1].fill(0.0);
        prune_kernels(&program, &mut state, 0.34).unwrap();
        assert_eq!(kernel_sparsity(&program, &state).0, 2.0 / 6.0);
        prune_kernels(&program, &mut state, 1.0).unwrap();
        assert_eq!(kernel_sparsity(&program, &state).0, 1.0);
    }

    #[test]
    fn helpers_handle_edge_cases() {
        assert_eq!(
            parse_vm_hwm_kb("Name:\tx\nVmHWM:\t  213752 kB\nVmRSS: 1 kB\n"),
            Some(213_752)
        );
        assert_eq!(parse_vm_hwm_kb("VmRSS: 1 kB\n"), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }
}
