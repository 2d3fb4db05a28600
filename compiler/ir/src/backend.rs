//! The interface every executor implements: build once from a `Program`, then train on batches
//! and predict. The reference executor (`interp`) and the Cranelift backend (`jit`) both sit
//! behind it, so the runtime never knows which one it drives.
//!
//! Architecture invariant: a backend never reports user errors. Anything it is handed has passed
//! the checker; a backend error (`BackendError`) means netc itself is at fault or the host cannot
//! run the code (for example, no executable memory).

use ndarray::ArrayD;

/// Per-feature statistics of the training split, used when the input is standardized.
#[derive(Clone, Debug, PartialEq)]
pub struct InputStats {
    /// Mean per feature, in raw pixel units (0 to 255).
    pub mean: Vec<f32>,
    /// Standard deviation per feature; the runtime clamps it away from zero.
    pub std: Vec<f32>,
}

impl InputStats {
    /// Pixel-like statistics (mean 120, std 64 for every feature) for a program that
    /// standardizes its input, `None` for one that scales it: what compiling and timing a spec
    /// without its data set need (kernels read the statistics from buffers, so the values do
    /// not change the code).
    pub fn placeholder(program: &crate::ir::Program) -> Option<InputStats> {
        let features = program.input.features;
        (program.input.preprocess == crate::ir::Preprocess::Standardize).then(|| InputStats {
            mean: vec![120.0; features],
            std: vec![64.0; features],
        })
    }
}

/// A batch of raw examples: `pixels` is `labels.len() * features` bytes, row-major, in the
/// dataset's order (for CIFAR-10: 1,024 red, 1,024 green, 1,024 blue values per image).
#[derive(Clone, Copy, Debug)]
pub struct Batch<'a> {
    /// The examples' raw bytes, one row of `features` after another.
    pub pixels: &'a [u8],
    /// The class index of each example, in `0..classes`.
    pub labels: &'a [u8],
}

impl Batch<'_> {
    /// Number of examples in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the batch holds no example.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// What one training step measured, on the batch before the update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// Mean cross-entropy over the batch plus the regularization penalty.
    pub loss: f32,
    /// Examples whose arg-max prediction equals the label.
    pub correct: usize,
}

/// How `predict` treats the layers that behave differently in training.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Dropout off, batch norm on its moving averages.
    Inference,
    /// Dropout on (MC Dropout), batch norm on its moving averages. `sample` selects the masks:
    /// the same sample number draws the same masks on every backend.
    McDropout {
        /// Number of the MC Dropout sample; keys the masks (`rng::Stream::McDropout`).
        sample: u32,
    },
}

/// Everything a backend's training depends on, host side: enough to checkpoint, resume, compare
/// two backends, or hand the weights of one to the other.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    /// Parameter values, indexed like `Program::params`, each of the parameter's shape.
    pub params: Vec<ArrayD<f32>>,
    /// Optimizer state: for each parameter, `OptimizerKind::slot_count()` arrays of its shape
    /// (none for parameters that are not trainable).
    pub slots: Vec<Vec<ArrayD<f32>>>,
    /// Optimizer steps taken so far (Adam's `t`), also the dropout RNG's step counter.
    pub step: u64,
}

/// Why a backend could not be made or run. None of these is the user's doing (the checker has
/// refused every spec a backend cannot take); each names what failed, with a stable code, and
/// no help here names a command-line flag: how to work around it is the caller's to say.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum BackendError {
    /// Cranelift refused a setting of the target it was configured with.
    #[error("the JIT could not configure its target ({setting}): {detail}")]
    #[diagnostic(
        code(netc::backend::isa),
        help("this is a bug in netc; the interpreter backend runs the same spec without the JIT")
    )]
    Isa {
        /// The setting Cranelift refused (`opt_level`, `has_avx`, ...).
        setting: String,
        /// Cranelift's message.
        detail: String,
    },
    /// Generating or placing the machine code of a kernel failed.
    #[error("the JIT could not compile kernel `{kernel}`: {detail}")]
    #[diagnostic(
        code(netc::backend::codegen),
        help("this is a bug in netc; the interpreter backend runs the same spec without the JIT")
    )]
    Codegen {
        /// Symbol of the kernel that failed.
        kernel: String,
        /// Cranelift's message.
        detail: String,
    },
    /// The backend was handed something its plan cannot take (a contract between netc's
    /// crates, not a user error).
    #[error("the JIT cannot plan this program: {0}")]
    #[diagnostic(
        code(netc::backend::plan),
        help("this is a bug in netc; the interpreter backend runs the same spec without the JIT")
    )]
    Plan(String),
    /// The backend's buffers need more memory than the host can give.
    #[error("could not allocate {bytes} bytes for the backend's buffers")]
    #[diagnostic(
        code(netc::backend::out_of_memory),
        help(
            "the machine has less free memory than the spec needs (the compile summary shows \
             the estimate); use a smaller batch or fewer or narrower layers"
        )
    )]
    OutOfMemory {
        /// Size of the allocation that was refused.
        bytes: u64,
    },
    /// The program has an op this backend does not compile (a user's spec, not a bug).
    #[error("the JIT cannot run this spec: it does not compile {what} yet")]
    #[diagnostic(
        code(netc::backend::unsupported),
        help(
            "the interpreter backend runs every layer of the language, far more slowly; the JIT \
             compiles dense networks (dense, activations, batch norm, dropout)"
        )
    )]
    Unsupported {
        /// The ops it does not compile, as the spec names them (`conv2d layers`).
        what: String,
    },
    /// This machine or process cannot do what the JIT needs (executable memory, threads).
    #[error("this machine cannot run the JIT: {what}: {detail}")]
    #[diagnostic(
        code(netc::backend::host),
        help("the interpreter backend runs the same spec without the JIT")
    )]
    Host {
        /// What failed (`detecting the CPU`, `starting 7 threads`, ...).
        what: String,
        /// The host's error message.
        detail: String,
    },
}

/// An executor of one `Program`, built for it by `interp` or `jit`: it trains on batches, predicts,
/// and hands over or takes its whole state.
pub trait Backend {
    /// `interp` or `jit`.
    fn name(&self) -> &'static str;

    /// One step of training on a batch of at most `train.batch` examples: forward in training
    /// mode, loss, backward, optimizer update with learning rate `lr`, then constraints.
    fn train_step(&mut self, batch: Batch<'_>, lr: f32) -> StepStats;

    /// Class probabilities for `pixels.len() / features` examples, written row-major into
    /// `probs` (`[n, classes]`). Handles any number of examples.
    fn predict(&mut self, pixels: &[u8], mode: Mode, probs: &mut [f32]);

    /// A copy of the full training state.
    fn state(&self) -> TrainState;

    /// Replace the full training state (shapes must match the program's).
    fn set_state(&mut self, state: &TrainState);

    /// Threads a training step runs on.
    fn threads(&self) -> usize {
        1
    }

    /// Runs of step phases so far that all threads shared, and that one thread ran alone
    /// because sharing was measured to be slower (other work on the cores); `(0, 0)` for a
    /// backend that runs on one thread.
    fn dispatch_runs(&self) -> (u64, u64) {
        (0, 0)
    }

    /// The time of each call of a training step on `batch` (median of `reps`), where the
    /// backend can tell; empty otherwise.
    fn profile(&mut self, _batch: Batch<'_>, _lr: f32, _reps: usize) -> Vec<CallTime> {
        Vec::new()
    }
}

/// The kernel name of a `CallTime` that times a whole forward or backward phase on several
/// threads, meetings included, beside its calls on their own.
pub const WHOLE_PHASE: &str = "whole phase";

/// The time of one call, or of a group of calls, of a training step (`Backend::profile`).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CallTime {
    /// `forward`, `backward`, `optimizer` or `transposes`.
    pub phase: &'static str,
    /// The kernel's symbol, or how many calls the group holds.
    pub kernel: String,
    /// Duration in milliseconds: the median over the repetitions.
    pub ms: f64,
}
