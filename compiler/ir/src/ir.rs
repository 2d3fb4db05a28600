//! The IR: a checked network as a straight line of ops over values with static shapes, the
//! parameters those ops own (with their initializers), and the training and evaluation config.
//!
//! This is what every backend consumes. It never holds spans or user-facing names beyond the
//! layer names used for reports, and it is only ever built by `lower` from a program that passed
//! the checker (or by tests), so backends may assume it is well formed: widths agree from op to op,
//! every `ParamId` indexes `Program::params`, rates lie in `[0, 1)`.
//!
//! Values are numbered `v0` (the input batch, already converted to f32) to `vN` (the logits fed to
//! the loss); op `i` reads `v{i}` and writes `v{i+1}`. Every value has shape `[batch, width]`.

use std::fmt;

/// Index of a parameter in `Program::params`; printed as `p3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub u32);

impl ParamId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ParamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// Index of a value (an activation tensor of shape `[batch, width]`); printed as `v3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// A whole model with its training and evaluation settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Program {
    pub name: String,
    pub input: Input,
    pub params: Vec<Param>,
    pub ops: Vec<Op>,
    /// The loss applied to the last value. Cross-entropy is computed on logits: when the last
    /// layer of the spec has a softmax activation, lowering folds that softmax into the loss, so
    /// the last op produces logits and `Head::SoftmaxCrossEntropy` applies softmax itself.
    pub head: Head,
    pub train: TrainConfig,
    pub eval: EvalConfig,
}

/// What training a program keeps in memory at its batch size, in bytes of `f32`, rows padded to
/// four floats as the JIT lays them out. The interpreter keeps about as much; the data set
/// (about 180 MB of CIFAR-10 bytes) comes on top.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Parameters and their gradients.
    pub parameters: u64,
    /// The optimizer's state per parameter (moments, velocities).
    pub optimizer: u64,
    /// Every value of one batch and its gradient, kept for the backward pass.
    pub activations: u64,
    /// `activations` per row of the batch.
    pub per_row: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.parameters
            .saturating_add(self.optimizer)
            .saturating_add(self.activations)
    }
}

impl Program {
    pub fn param(&self, id: ParamId) -> &Param {
        &self.params[id.index()]
    }

    /// How much memory training needs (`MemoryEstimate`).
    pub fn training_memory(&self) -> MemoryEstimate {
        const F32: u64 = 4;
        let padded = |n: usize| n.div_ceil(4) as u64 * 4;
        let (mut parameters, mut optimizer) = (0u64, 0u64);
        let slots = self.train.optimizer.kind.slot_count() as u64;
        for p in &self.params {
            let (cols, rows) = p
                .shape
                .split_last()
                .map_or((1, 1), |(c, r)| (*c, r.iter().product::<usize>()));
            let floats = padded(cols).saturating_mul(rows as u64);
            let has_grad = !matches!(p.role, ParamRole::MovingMean | ParamRole::MovingVariance);
            let copies = 1 + u64::from(has_grad);
            parameters = parameters.saturating_add(floats * copies * F32);
            if p.trainable {
                optimizer = optimizer.saturating_add(floats * slots * F32);
            }
        }
        // Each value and its gradient, the input included, and the output's probabilities.
        let widths = std::iter::once(self.input.features).chain(self.ops.iter().map(|op| op.width));
        let per_row = widths
            .map(|w| 2 * padded(w))
            .fold(padded(self.output_width()), u64::saturating_add)
            .saturating_mul(F32);
        MemoryEstimate {
            parameters,
            optimizer,
            activations: per_row.saturating_mul(self.train.batch as u64),
            per_row,
        }
    }

    /// Width of the network's output (number of classes).
    pub fn output_width(&self) -> usize {
        self.ops.last().map_or(self.input.features, |op| op.width)
    }

    /// Number of scalars in all parameters (trainable and not).
    pub fn param_count(&self) -> usize {
        self.params.iter().map(Param::len).sum()
    }

    pub fn trainable_param_count(&self) -> usize {
        self.params
            .iter()
            .filter(|p| p.trainable)
            .map(Param::len)
            .sum()
    }

    /// True when some op draws random numbers in training (dropout of either kind).
    pub fn has_dropout(&self) -> bool {
        self.ops.iter().any(|op| op.kind.is_dropout())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub dataset: Dataset,
    /// Features per example after flattening (3,072 for CIFAR-10).
    pub features: usize,
    /// Number of classes the labels range over.
    pub classes: usize,
    pub preprocess: Preprocess,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dataset {
    Cifar10,
}

impl Dataset {
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Cifar10 => "cifar10",
        }
    }
}

/// How u8 pixels become f32 inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preprocess {
    /// `x / 255`.
    Scale01,
    /// `(x - mean[f]) / std[f]` with per-feature statistics of the training split. The backend is
    /// handed the statistics when it is built (see `backend::InputStats`).
    Standardize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// `layer_name.role`, e.g. `dense_3.kernel`; used in reports and safetensors files.
    pub name: String,
    pub role: ParamRole,
    /// `[in, out]` for kernels (row-major, so `y = x · W`), `[width]` for everything else.
    pub shape: Vec<usize>,
    pub init: Init,
    /// False for batch-norm moving statistics: updated by the forward pass in training, never by
    /// the optimizer.
    pub trainable: bool,
}

impl Param {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamRole {
    Kernel,
    Bias,
    Gamma,
    Beta,
    MovingMean,
    MovingVariance,
    PreluAlpha,
}

impl ParamRole {
    pub fn name(self) -> &'static str {
        match self {
            ParamRole::Kernel => "kernel",
            ParamRole::Bias => "bias",
            ParamRole::Gamma => "gamma",
            ParamRole::Beta => "beta",
            ParamRole::MovingMean => "moving_mean",
            ParamRole::MovingVariance => "moving_variance",
            ParamRole::PreluAlpha => "alpha",
        }
    }
}

/// Parameter initializers, with Keras semantics. `fan_in`/`fan_out` are the kernel's `[in, out]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    Constant(f32),
    /// Normal with the given mean and standard deviation.
    Normal {
        mean: f32,
        stddev: f32,
    },
    /// Uniform on `[min, max)`.
    Uniform {
        min: f32,
        max: f32,
    },
    /// Normal re-drawn until within two standard deviations of the mean.
    TruncatedNormal {
        mean: f32,
        stddev: f32,
    },
    /// Variance scaling, as Keras' `VarianceScaling`: `scale / n` where `n` is fan_in, fan_out or
    /// their average; `Glorot` = (1, avg), `He` = (2, in), `LeCun` = (1, in). Normal variants
    /// draw from a truncated normal with stddev `sqrt(scale / n) / 0.87962566`, uniform variants
    /// from `±sqrt(3 * scale / n)`, exactly as Keras does.
    VarianceScaling {
        scale: f32,
        mode: FanMode,
        distribution: Distribution,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanMode {
    FanIn,
    FanOut,
    FanAvg,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution {
    TruncatedNormal,
    Uniform,
}

/// One op: reads `input`, writes `output`, both `[batch, width]` values.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    /// Name of the spec layer this op comes from (`dense_3`, `batch_norm_1`, ...). A dense layer
    /// with an activation lowers to two ops that share the layer name.
    pub layer: String,
    /// Index of the op in `Program::ops`; also the `layer` key of the dropout RNG.
    pub index: u32,
    pub input: ValueId,
    pub output: ValueId,
    pub width_in: usize,
    pub width: usize,
    pub kind: OpKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum OpKind {
    /// `y = x · kernel + bias`.
    Dense {
        kernel: ParamId,
        bias: Option<ParamId>,
        /// Penalty `l1 * Σ|w| + l2 * Σw²` added to the loss (on the kernel only).
        regularizer: Regularizer,
        /// After each optimizer update, every column of the kernel (the weights into one unit)
        /// is rescaled to an L2 norm of at most this value (Keras `MaxNorm(axis=0)`).
        max_norm: Option<f32>,
    },
    Activation(Activation),
    /// `y = x` where `x >= 0`, else `alpha[j] * x`; `alpha` is learned, one per unit.
    Prelu {
        alpha: ParamId,
    },
    /// Batch normalization over the batch axis. Training uses batch statistics and updates the
    /// moving averages as `moving = moving * momentum + batch * (1 - momentum)` (Keras); inference
    /// uses the moving averages. The batch variance is the biased one (divide by n).
    BatchNorm {
        gamma: ParamId,
        beta: ParamId,
        moving_mean: ParamId,
        moving_variance: ParamId,
        momentum: f32,
        epsilon: f32,
    },
    /// Inverted dropout: in training (and MC Dropout) each element is kept with probability
    /// `1 - rate` and scaled by `1 / (1 - rate)`; identity in inference.
    Dropout {
        rate: f32,
    },
    /// Alpha dropout (Klambauer et al.): dropped elements are set to `-λα` (SELU's negative
    /// saturation), then `a * y + b` restores zero mean and unit variance, with
    /// `a = ((1 - rate) * (1 + rate * α'^2))^-1/2`, `b = -a * α' * rate`, `α' = -λα`.
    AlphaDropout {
        rate: f32,
    },
}

impl OpKind {
    pub fn is_dropout(&self) -> bool {
        matches!(self, OpKind::Dropout { .. } | OpKind::AlphaDropout { .. })
    }

    /// Short mnemonic used in IR dumps and reports.
    pub fn mnemonic(&self) -> &'static str {
        match self {
            OpKind::Dense { .. } => "dense",
            OpKind::Activation(a) => a.name(),
            OpKind::Prelu { .. } => "prelu",
            OpKind::BatchNorm { .. } => "batch_norm",
            OpKind::Dropout { .. } => "dropout",
            OpKind::AlphaDropout { .. } => "alpha_dropout",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Regularizer {
    pub l1: f32,
    pub l2: f32,
}

impl Regularizer {
    pub fn is_zero(&self) -> bool {
        self.l1 == 0.0 && self.l2 == 0.0
    }
}

/// Element-wise activations (softmax is row-wise). Constants follow Keras.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    Linear,
    Relu,
    /// `x` for `x >= 0`, else `alpha * x` (Keras default alpha 0.2 for `leaky_relu`).
    LeakyRelu {
        alpha: f32,
    },
    /// `x` for `x > 0`, else `alpha * (exp(x) - 1)`.
    Elu {
        alpha: f32,
    },
    /// `λ * elu(x, α)` with λ = 1.0507009873554805, α = 1.6732632423543772.
    Selu,
    /// Exact GELU, `0.5 * x * (1 + erf(x / √2))` (Keras' default `approximate=False`).
    Gelu,
    /// `x * sigmoid(x)` (also called SiLU).
    Swish,
    Tanh,
    Sigmoid,
    /// Row-wise softmax. Only ever an op when it is not the last layer (see `Program::head`).
    Softmax,
}

pub const SELU_LAMBDA: f32 = 1.050_701;
pub const SELU_ALPHA: f32 = 1.673_263_2;

impl Activation {
    pub fn name(self) -> &'static str {
        match self {
            Activation::Linear => "linear",
            Activation::Relu => "relu",
            Activation::LeakyRelu { .. } => "leaky_relu",
            Activation::Elu { .. } => "elu",
            Activation::Selu => "selu",
            Activation::Gelu => "gelu",
            Activation::Swish => "swish",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Softmax => "softmax",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Softmax over the last value, then mean cross-entropy against integer labels.
    SoftmaxCrossEntropy,
}

/// The most epochs a program may train for: the checker's limit, which a run's checkpoint is
/// also held to.
pub const MAX_EPOCHS: usize = 100_000;

#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub optimizer: Optimizer,
    pub schedule: Schedule,
    pub batch: usize,
    pub epochs: usize,
    /// Examples held out of the training files for validation.
    pub validation: usize,
    pub early_stopping: Option<EarlyStopping>,
    pub seed: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    pub kind: OptimizerKind,
    /// Initial (or constant) learning rate; the schedule scales it per step.
    pub lr: f32,
    /// Rescale each parameter's gradient to this L2 norm when it is larger (Keras `clipnorm`,
    /// which clips every variable's gradient on its own).
    pub clipnorm: Option<f32>,
}

/// Update rules, exactly as Keras 3 defines them. All defaults are Keras' defaults.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerKind {
    /// `v = momentum * v - lr * g; w += v` (or `w += momentum * v - lr * g` with Nesterov);
    /// `w -= lr * g` without momentum.
    Sgd { momentum: f32, nesterov: bool },
    Adam {
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
    },
    /// Keras 3 Nadam, with its momentum-cache schedule `u_t = β1 (1 - 0.5 · 0.96^t)` (tf.keras 2
    /// had `0.96^(0.004 t)`; Keras 3 dropped the 0.004).
    Nadam {
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
    },
    /// Adam with decoupled weight decay: `w -= lr * weight_decay * w` before the Adam step.
    AdamW {
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
        weight_decay: f32,
    },
    RmsProp {
        rho: f32,
        momentum: f32,
        epsilon: f32,
        centered: bool,
    },
    Adagrad {
        initial_accumulator: f32,
        epsilon: f32,
    },
}

impl OptimizerKind {
    pub fn name(&self) -> &'static str {
        match self {
            OptimizerKind::Sgd { .. } => "sgd",
            OptimizerKind::Adam { .. } => "adam",
            OptimizerKind::Nadam { .. } => "nadam",
            OptimizerKind::AdamW { .. } => "adamw",
            OptimizerKind::RmsProp { .. } => "rmsprop",
            OptimizerKind::Adagrad { .. } => "adagrad",
        }
    }

    /// Number of per-parameter state arrays the rule keeps (each the parameter's shape).
    pub fn slot_count(&self) -> usize {
        match self {
            OptimizerKind::Sgd { momentum, .. } => usize::from(*momentum != 0.0),
            OptimizerKind::Adam { .. }
            | OptimizerKind::Nadam { .. }
            | OptimizerKind::AdamW { .. } => 2,
            OptimizerKind::RmsProp {
                momentum, centered, ..
            } => 1 + usize::from(*momentum != 0.0) + usize::from(*centered),
            OptimizerKind::Adagrad { .. } => 1,
        }
    }
}

/// Learning-rate schedules. The runtime evaluates them per step and hands the rate to the backend.
#[derive(Clone, Debug, PartialEq)]
pub enum Schedule {
    Constant,
    /// `lr0 * rate^(epoch_float / every)` where `epoch_float` counts epochs with fractions
    /// (per step); with `staircase`, the exponent is floored.
    ExponentialDecay {
        rate: f32,
        every: f32,
        staircase: bool,
    },
    /// `values[i]` for epochs in `[boundaries[i-1], boundaries[i])`; `values.len() ==
    /// boundaries.len() + 1`, boundaries strictly increasing epoch numbers (0-based epochs).
    PiecewiseConstant {
        boundaries: Vec<usize>,
        values: Vec<f32>,
    },
    /// 1cycle (Smith), as Géron implements it: linear from `start_lr` up to `max_lr` over the first
    /// half of the steps before the last `final_fraction`, back down to `start_lr` over the second
    /// half, then linear to `end_lr` over the last `final_fraction` of all steps.
    OneCycle {
        max_lr: f32,
        start_lr: f32,
        end_lr: f32,
        final_fraction: f32,
    },
    /// Multiply the rate by `factor` when validation loss has not improved for `patience` epochs,
    /// never below `min_lr`.
    ReduceOnPlateau {
        factor: f32,
        patience: usize,
        min_lr: f32,
    },
}

impl Schedule {
    pub fn name(&self) -> &'static str {
        match self {
            Schedule::Constant => "constant",
            Schedule::ExponentialDecay { .. } => "exponential_decay",
            Schedule::PiecewiseConstant { .. } => "piecewise_constant",
            Schedule::OneCycle { .. } => "one_cycle",
            Schedule::ReduceOnPlateau { .. } => "reduce_on_plateau",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EarlyStopping {
    pub monitor: Monitor,
    pub patience: usize,
    /// An epoch counts as an improvement only if it beats the best by more than this.
    pub min_delta: f32,
    pub restore_best: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Monitor {
    ValLoss,
    ValAccuracy,
}

impl Monitor {
    pub fn name(self) -> &'static str {
        match self {
            Monitor::ValLoss => "val_loss",
            Monitor::ValAccuracy => "val_accuracy",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct EvalConfig {
    /// Number of stochastic forward passes averaged for MC Dropout, if asked.
    pub mc_dropout: Option<usize>,
    pub prune: Option<Prune>,
}

/// Magnitude pruning after training: in every dense kernel, the `sparsity` fraction of weights
/// with the smallest absolute value is set to zero.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prune {
    pub sparsity: f32,
}
