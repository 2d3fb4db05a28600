//! The IR: a checked network as a straight line of ops over values with static shapes, the
//! parameters those ops own (with their initializers), and the training and evaluation config.
//!
//! This is what every backend consumes. It never holds spans or user-facing names beyond the
//! layer names used for reports, and it is only ever built by `lower` from a program that passed
//! the checker (or by tests), so backends may assume it is well formed: widths agree from op to op,
//! every `ParamId` indexes `Program::params`, rates lie in `[0, 1)`.
//!
//! Values are numbered `v0` (the input batch, already converted to f32) to `vN` (the logits fed to
//! the loss); op `i` reads `v{i}` and writes `v{i+1}`. Every value is stored as `[batch, width]`;
//! its `Shape` says whether a row is a vector or an image (`width = height · width · channels`,
//! pixels in row-major order, channels last).

use std::fmt;

/// Index of a parameter in `Program::params`; printed as `p3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParamId(pub u32);

impl ParamId {
    /// The parameter's position in `Program::params`.
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
    /// The model's name, from the spec's `model` line. Runs are filed under it, and weight files
    /// and checkpoints record it.
    pub name: String,
    /// The data set the model reads, and how its pixels become `v0`.
    pub input: Input,
    /// Every parameter, trainable or not, in the order the ops create them; `ParamId` indexes it.
    pub params: Vec<Param>,
    /// The network in execution order: op `i` reads `v{i}` and writes `v{i+1}`.
    pub ops: Vec<Op>,
    /// The loss applied to the last value. Cross-entropy is computed on logits: when the last
    /// layer of the spec has a softmax activation, lowering folds that softmax into the loss, so
    /// the last op produces logits and `Head::SoftmaxCrossEntropy` applies softmax itself.
    pub head: Head,
    /// How the model is trained.
    pub train: TrainConfig,
    /// What the evaluation on the test set adds (MC Dropout, pruning).
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
    /// Parameters, optimizer state and activations together, in bytes (saturating).
    pub fn total(&self) -> u64 {
        self.parameters
            .saturating_add(self.optimizer)
            .saturating_add(self.activations)
    }
}

impl Program {
    /// The parameter `id` indexes.
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

    /// Number of scalars in the parameters the optimizer updates (all but the batch-norm moving
    /// statistics).
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

    /// True when some op works on images (`OpKind::is_image_op`); the input is then an image.
    pub fn has_image_ops(&self) -> bool {
        self.ops.iter().any(|op| op.kind.is_image_op())
    }
}

/// What the model reads: a data set, the width of an example, and how its pixels are prepared.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    /// Where the examples and their labels come from.
    pub dataset: Dataset,
    /// Features per example after flattening (3,072 for CIFAR-10).
    pub features: usize,
    /// What `v0` is: `Shape::Flat(features)` keeps the data set's order (CIFAR-10's red plane,
    /// then green, then blue), and a program of dense layers reads it so; a program with image
    /// layers reads `Shape::Image` (32 × 32 × 3), each pixel's channels side by side.
    pub shape: Shape,
    /// Number of classes the labels range over.
    pub classes: usize,
    /// How the raw u8 pixels become the f32 values of `v0`.
    pub preprocess: Preprocess,
    /// Over which pixels `Preprocess::Standardize` takes each mean and standard deviation;
    /// `StatsScope::Feature` (and unused) when the input is scaled.
    pub stats_scope: StatsScope,
}

/// Over which pixels standardization takes its statistics. Either way the backend is handed one
/// mean and one standard deviation per feature (`backend::InputStats`); with `Channel`, the
/// runtime gives every feature of a colour channel that channel's values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum StatsScope {
    /// Each feature (one colour of one pixel) over the training split: 3,072 means for
    /// CIFAR-10.
    #[default]
    Feature,
    /// Each colour channel over all pixels of all images of the training split: 3 means for
    /// CIFAR-10, as image models normalize.
    Channel,
}

impl StatsScope {
    /// The scope's name as the spec writes it (`standardize { per: channel }`).
    pub fn name(self) -> &'static str {
        match self {
            StatsScope::Feature => "feature",
            StatsScope::Channel => "channel",
        }
    }
}

/// A data set netc trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dataset {
    /// CIFAR-10: 32×32 RGB images in 10 classes, 50,000 for training and 10,000 for test.
    Cifar10,
}

impl Dataset {
    /// The data set's name as the spec writes it (`input cifar10`).
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Cifar10 => "cifar10",
        }
    }

    /// How an example's bytes are laid out: one plane per colour channel, each `height` rows
    /// of `width` bytes (CIFAR-10: 3 planes of 32 × 32, red, green, blue).
    pub fn planes(self) -> Planes {
        match self {
            Dataset::Cifar10 => Planes {
                channels: 3,
                height: 32,
                width: 32,
            },
        }
    }
}

/// The byte layout of a data set's images: `channels` planes, each `height` rows of `width`
/// bytes, so byte `(c · height + y) · width + x` is channel `c` of the pixel in row `y`, column
/// `x`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planes {
    /// Colour planes per image.
    pub channels: usize,
    /// Rows per plane.
    pub height: usize,
    /// Bytes per row.
    pub width: usize,
}

impl Planes {
    /// Bytes of one plane.
    pub fn plane(self) -> usize {
        self.height * self.width
    }

    /// Bytes of one image.
    pub fn bytes(self) -> usize {
        self.channels * self.plane()
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

/// A tensor an op owns: its name, shape and starting values, and whether the optimizer updates it.
#[derive(Clone, Debug, PartialEq)]
pub struct Param {
    /// `layer_name.role`, e.g. `dense_3.kernel`; used in reports and safetensors files.
    pub name: String,
    /// What the parameter is to its op; also the suffix of `name`.
    pub role: ParamRole,
    /// `[in, out]` for dense kernels (row-major, so `y = x · W`), `[kh, kw, channels_in,
    /// filters]` for convolution kernels, `[width]` (a vector's features) or `[channels]` (an
    /// image's) for everything else.
    pub shape: Vec<usize>,
    /// How `init::init_param` draws the starting values.
    pub init: Init,
    /// False for batch-norm moving statistics: updated by the forward pass in training, never by
    /// the optimizer.
    pub trainable: bool,
}

impl Param {
    /// Number of scalars: the product of `shape`.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// True when a dimension of `shape` is 0, so the parameter holds no scalar.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a parameter is to the op that owns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamRole {
    /// A dense layer's weight matrix, `[in, out]`.
    Kernel,
    /// A dense layer's bias, `[out]`, added after the product.
    Bias,
    /// Batch norm's learned scale, `[width]`; starts at 1.
    Gamma,
    /// Batch norm's learned offset, `[width]`; starts at 0.
    Beta,
    /// Batch norm's moving average of the batch means, `[width]`; used in inference, not trainable.
    MovingMean,
    /// Batch norm's moving average of the batch variances, `[width]`; used in inference, not
    /// trainable.
    MovingVariance,
    /// PReLU's learned slopes for negative inputs, `[width]`; start at 0.
    PreluAlpha,
}

impl ParamRole {
    /// The weight's name as Keras spells it (`kernel`, `moving_mean`, `alpha`, ...): the suffix of
    /// `Param::name`.
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
    /// Every element 0.
    Zeros,
    /// Every element 1.
    Ones,
    /// Every element the given value.
    Constant(f32),
    /// Normal with the given mean and standard deviation.
    Normal {
        /// Mean of the distribution.
        mean: f32,
        /// Standard deviation of the distribution.
        stddev: f32,
    },
    /// Uniform on `[min, max)`.
    Uniform {
        /// Lower bound, included.
        min: f32,
        /// Upper bound, excluded.
        max: f32,
    },
    /// Normal re-drawn until within two standard deviations of the mean.
    TruncatedNormal {
        /// Mean of the distribution, and center of the truncation.
        mean: f32,
        /// Standard deviation of the normal before truncation (as Keras); the values drawn spread
        /// about 0.88 times as much.
        stddev: f32,
    },
    /// Variance scaling, as Keras' `VarianceScaling`: `scale / n` where `n` is fan_in, fan_out or
    /// their average; `Glorot` = (1, avg), `He` = (2, in), `LeCun` = (1, in). Normal variants
    /// draw from a truncated normal with stddev `sqrt(scale / n) / 0.87962566`, uniform variants
    /// from `±sqrt(3 * scale / n)`, exactly as Keras does.
    VarianceScaling {
        /// Numerator of the variance: 1 for Glorot and LeCun, 2 for He.
        scale: f32,
        /// Which fan divides `scale`.
        mode: FanMode,
        /// What the values are drawn from.
        distribution: Distribution,
    },
}

/// Which fan `Init::VarianceScaling` divides its scale by (Keras' `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FanMode {
    /// The kernel's number of inputs (`fan_in`).
    FanIn,
    /// The kernel's number of outputs (`fan_out`).
    FanOut,
    /// The mean of the two (`fan_avg`).
    FanAvg,
}

/// What `Init::VarianceScaling` draws from (Keras' `distribution`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Distribution {
    /// A normal truncated at two standard deviations, its stddev corrected so the values have
    /// variance `scale / n`.
    TruncatedNormal,
    /// Uniform on `±sqrt(3 * scale / n)`, which has variance `scale / n`.
    Uniform,
}

/// The shape of one example of a value. Values are stored as rows of `len()` floats; an image's
/// row holds its pixels row by row, each pixel's channels side by side (Keras'
/// `channels_last`), so flattening an image changes no float's place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shape {
    /// A vector of this many features.
    Flat(usize),
    /// An image of `height × width` pixels of `channels` channels.
    Image {
        /// Rows of pixels.
        height: usize,
        /// Pixels per row.
        width: usize,
        /// Channels per pixel.
        channels: usize,
    },
}

impl Shape {
    /// Floats per example.
    pub fn len(self) -> usize {
        match self {
            Shape::Flat(n) => n,
            Shape::Image {
                height,
                width,
                channels,
            } => height * width * channels,
        }
    }

    /// True when an example holds no float.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// What a batch norm normalizes separately: each feature of a vector, each channel of an
    /// image (over the batch and the pixels, as Keras' `axis=-1`).
    pub fn channels(self) -> usize {
        match self {
            Shape::Flat(n) => n,
            Shape::Image { channels, .. } => channels,
        }
    }

    /// `(height, width, channels)` of an image; `None` for a vector.
    pub fn image(self) -> Option<(usize, usize, usize)> {
        match self {
            Shape::Flat(_) => None,
            Shape::Image {
                height,
                width,
                channels,
            } => Some((height, width, channels)),
        }
    }
}

impl fmt::Display for Shape {
    /// Keras' notation without the batch: `(100)`, `(32, 32, 3)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shape::Flat(n) => write!(f, "({n})"),
            Shape::Image {
                height,
                width,
                channels,
            } => write!(f, "({height}, {width}, {channels})"),
        }
    }
}

/// How a convolution or a pooling window treats the image's border (Keras' `padding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Padding {
    /// Only windows inside the image: `out = (in - size) / stride + 1` (rounded down).
    Valid,
    /// `out = ceil(in / stride)`, the image padded by `max((out - 1)·stride + size - in, 0)`
    /// pixels, the smaller half before (TensorFlow's rule); zeros for a convolution, left out
    /// of a pooling window.
    Same,
}

impl Padding {
    /// The output length along one side of `len` pixels, for windows of `size` moved by
    /// `stride`; 0 when no window fits.
    pub fn output(self, len: usize, size: usize, stride: usize) -> usize {
        match self {
            Padding::Valid if len < size => 0,
            Padding::Valid => (len - size) / stride + 1,
            Padding::Same => len.div_ceil(stride),
        }
    }

    /// Pixels of padding before the first one along that side.
    pub fn before(self, len: usize, size: usize, stride: usize) -> usize {
        match self {
            Padding::Valid => 0,
            Padding::Same => {
                let out = self.output(len, size, stride);
                ((out.saturating_sub(1)) * stride + size).saturating_sub(len) / 2
            }
        }
    }

    /// The padding's name as the spec writes it.
    pub fn name(self) -> &'static str {
        match self {
            Padding::Valid => "valid",
            Padding::Same => "same",
        }
    }
}

/// What a pooling window keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// The largest value in the window.
    Max,
    /// The mean of the window's pixels inside the image.
    Average,
}

/// One op: reads `input`, writes `output`, both `[batch, width]` values.
#[derive(Clone, Debug, PartialEq)]
pub struct Op {
    /// Name of the spec layer this op comes from (`dense_3`, `batch_norm_1`, ...). A dense layer
    /// with an activation lowers to two ops that share the layer name.
    pub layer: String,
    /// Index of the op in `Program::ops`; also the `layer` key of the dropout RNG.
    pub index: u32,
    /// The value the op reads, `v{index}`.
    pub input: ValueId,
    /// The value the op writes, `v{index + 1}`.
    pub output: ValueId,
    /// Width of `input`: the previous op's `width`, or `Input::features` for the first op.
    pub width_in: usize,
    /// Width of `output`: a dense op's units, `width_in` for the element-wise ops.
    pub width: usize,
    /// The shape of `input`, of `width_in` floats.
    pub shape_in: Shape,
    /// The shape of `output`, of `width` floats.
    pub shape: Shape,
    /// What the op computes, and the parameters it owns.
    pub kind: OpKind,
}

/// What an op computes, with the parameters it owns. Semantics and defaults follow Keras 3.
#[derive(Clone, Debug, PartialEq)]
pub enum OpKind {
    /// `y = x · kernel + bias`.
    Dense {
        /// The `[width_in, width]` weight matrix (Glorot uniform unless the spec says otherwise).
        kernel: ParamId,
        /// The `[width]` bias, zeros unless the spec says otherwise; `None` when `use_bias` is
        /// false.
        bias: Option<ParamId>,
        /// Penalty `l1 * Σ|w| + l2 * Σw²` added to the loss (on the kernel only).
        regularizer: Regularizer,
        /// After each optimizer update, every column of the kernel (the weights into one unit)
        /// is rescaled to an L2 norm of at most this value (Keras `MaxNorm(axis=0)`).
        max_norm: Option<f32>,
    },
    /// An activation on its own, with no parameter. A dense layer's `activation` lowers to one.
    Activation(Activation),
    /// `y = x` where `x >= 0`, else `alpha[j] * x`; `alpha` is learned, one per unit.
    Prelu {
        /// The slopes for negative inputs, `[width]`; Keras starts them at 0.
        alpha: ParamId,
    },
    /// A 2-D convolution of an image (Keras' `Conv2D`, a cross-correlation), channels last:
    /// `y[i, j, o] = b[o] + Σ_{di, dj, c} x[i·sh + di - ph, j·sw + dj - pw, c] · K[di, dj, c, o]`,
    /// zero outside the image, `(ph, pw)` from `Padding::before`.
    Conv2d {
        /// The `[kernel_h, kernel_w, channels_in, filters]` kernel (Glorot uniform unless the
        /// spec says otherwise, as Keras).
        kernel: ParamId,
        /// The `[filters]` bias; `None` when `use_bias` is false.
        bias: Option<ParamId>,
        /// Pixels between windows, down and across.
        strides: [usize; 2],
        /// What happens at the border.
        padding: Padding,
        /// Penalty on the kernel, as a dense layer's.
        regularizer: Regularizer,
        /// After each update, every filter (the weights into one output channel) is rescaled
        /// to an L2 norm of at most this value (Keras `MaxNorm(axis=[0, 1, 2])`).
        max_norm: Option<f32>,
    },
    /// Max or average pooling of each channel over `size` windows moved by `strides`.
    Pool {
        /// What a window keeps.
        kind: PoolKind,
        /// The window's height and width.
        size: [usize; 2],
        /// Pixels between windows, down and across.
        strides: [usize; 2],
        /// What happens at the border: `Same` leaves the missing pixels out of a window.
        padding: Padding,
    },
    /// The mean of each channel over the image's pixels: `[h, w, c] → [c]`.
    GlobalAvgPool,
    /// An image's floats as a vector, in the same order: no arithmetic.
    Flatten,
    /// Batch normalization over the batch axis (and an image's pixels: one mean and variance per
    /// channel, as Keras' `axis=-1`). Training uses batch statistics and updates the
    /// moving averages as `moving = moving * momentum + batch * (1 - momentum)` (Keras); inference
    /// uses the moving averages. The batch variance is the biased one (divide by n).
    BatchNorm {
        /// Learned scale `γ`, one per feature or channel (`Shape::channels`).
        gamma: ParamId,
        /// Learned offset `β`, like `gamma`.
        beta: ParamId,
        /// Moving average of the batch means, like `gamma`; not trainable.
        moving_mean: ParamId,
        /// Moving average of the batch variances, like `gamma`; not trainable.
        moving_variance: ParamId,
        /// Weight of the old moving average in each update (Keras default 0.99).
        momentum: f32,
        /// Added to the variance before the square root (Keras default 1e-3).
        epsilon: f32,
    },
    /// Inverted dropout: in training (and MC Dropout) each element is kept with probability
    /// `1 - rate` and scaled by `1 / (1 - rate)`; identity in inference.
    Dropout {
        /// Probability that an element is dropped, in `[0, 1)`.
        rate: f32,
    },
    /// Alpha dropout (Klambauer et al.): dropped elements are set to `-λα` (SELU's negative
    /// saturation), then `a * y + b` restores zero mean and unit variance, with
    /// `a = ((1 - rate) * (1 + rate * α'^2))^-1/2`, `b = -a * α' * rate`, `α' = -λα`.
    AlphaDropout {
        /// Probability that an element is dropped (set to `-λα`), in `[0, 1)`.
        rate: f32,
    },
}

impl OpKind {
    /// True for the ops that draw random numbers in training: dropout and alpha dropout.
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
            OpKind::Conv2d { .. } => "conv2d",
            OpKind::Pool {
                kind: PoolKind::Max,
                ..
            } => "max_pool",
            OpKind::Pool {
                kind: PoolKind::Average,
                ..
            } => "avg_pool",
            OpKind::GlobalAvgPool => "global_avg_pool",
            OpKind::Flatten => "flatten",
        }
    }

    /// True for the ops on images only: convolutions, pooling, and flattening.
    pub fn is_image_op(&self) -> bool {
        matches!(
            self,
            OpKind::Conv2d { .. } | OpKind::Pool { .. } | OpKind::GlobalAvgPool | OpKind::Flatten
        )
    }
}

/// Keras' `L1L2` penalty on a dense kernel: `l1 * Σ|w| + l2 * Σw²` is added to the loss.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct Regularizer {
    /// Factor of the sum of absolute weights; 0 for none.
    pub l1: f32,
    /// Factor of the sum of squared weights; 0 for none.
    pub l2: f32,
}

impl Regularizer {
    /// True when both factors are 0: the kernel has no penalty.
    pub fn is_zero(&self) -> bool {
        self.l1 == 0.0 && self.l2 == 0.0
    }
}

/// Element-wise activations (softmax is row-wise). Constants follow Keras.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// The identity, `x`. Lowering emits no op for it.
    Linear,
    /// `max(x, 0)`.
    Relu,
    /// `x` for `x >= 0`, else `alpha * x` (Keras default alpha 0.2 for `leaky_relu`).
    LeakyRelu {
        /// Slope for negative inputs.
        alpha: f32,
    },
    /// `x` for `x > 0`, else `alpha * (exp(x) - 1)`.
    Elu {
        /// Height of the negative saturation, `-alpha` (Keras default 1.0).
        alpha: f32,
    },
    /// `λ * elu(x, α)` with λ = 1.0507009873554805, α = 1.6732632423543772.
    Selu,
    /// Exact GELU, `0.5 * x * (1 + erf(x / √2))` (Keras' default `approximate=False`).
    Gelu,
    /// `x * sigmoid(x)` (also called SiLU).
    Swish,
    /// `tanh(x)`.
    Tanh,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    /// Row-wise softmax. Only ever an op when it is not the last layer (see `Program::head`).
    Softmax,
}

/// SELU's scale λ, rounded to f32 (`autodiff::SELU_LAMBDA_F64` is the full value).
pub const SELU_LAMBDA: f32 = 1.050_701;
/// SELU's α, rounded to f32 (`autodiff::SELU_ALPHA_F64` is the full value).
pub const SELU_ALPHA: f32 = 1.673_263_2;

impl Activation {
    /// The activation's name as the spec and Keras write it (`leaky_relu`, `swish`, ...); also the
    /// mnemonic of its op.
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

/// The loss applied to the last value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head {
    /// Softmax over the last value, then mean cross-entropy against integer labels.
    SoftmaxCrossEntropy,
}

/// The most epochs a program may train for: the checker's limit, which a run's checkpoint is
/// also held to.
pub const MAX_EPOCHS: usize = 100_000;

/// How a program is trained.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// The update rule, its learning rate and gradient clipping.
    pub optimizer: Optimizer,
    /// How the learning rate changes from step to step.
    pub schedule: Schedule,
    /// Examples per training step (default 32); the last batch of an epoch may be smaller.
    pub batch: usize,
    /// Passes over the training examples, at most `MAX_EPOCHS`; early stopping may end training
    /// sooner.
    pub epochs: usize,
    /// Examples held out of the training files for validation.
    pub validation: usize,
    /// Stops training once a validation metric no longer improves; `None` runs every epoch.
    pub early_stopping: Option<EarlyStopping>,
    /// Random changes to the training images; `Augment::default()` changes nothing.
    pub augment: Augment,
    /// Seed of every random draw: initial parameters, the validation split, shuffles and dropout
    /// masks (default 42).
    pub seed: u64,
}

/// An optimizer: its update rule, learning rate and gradient clipping.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer {
    /// The update rule and its hyperparameters.
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
    Sgd {
        /// Velocity decay, in `[0, 1)`; 0 (the default) keeps no velocity.
        momentum: f32,
        /// Apply Nesterov momentum (default false).
        nesterov: bool,
    },
    /// Adam: moving averages `m` of `g` and `v` of `g²`, with bias correction
    /// (`optim::adam_update`).
    Adam {
        /// Decay of the first moment `m` (default 0.9).
        beta_1: f32,
        /// Decay of the second moment `v` (default 0.999).
        beta_2: f32,
        /// Added to the second moment's root in the denominator, for stability (default 1e-7).
        epsilon: f32,
    },
    /// Keras 3 Nadam, with its momentum-cache schedule `u_t = β1 (1 - 0.5 · 0.96^t)` (tf.keras 2
    /// had `0.96^(0.004 t)`; Keras 3 dropped the 0.004).
    Nadam {
        /// Decay of the first moment `m` (default 0.9).
        beta_1: f32,
        /// Decay of the second moment `v` (default 0.999).
        beta_2: f32,
        /// Added to the second moment's root in the denominator, for stability (default 1e-7).
        epsilon: f32,
    },
    /// Adam with decoupled weight decay: `w -= lr * weight_decay * w` before the Adam step.
    AdamW {
        /// Decay of the first moment `m` (default 0.9).
        beta_1: f32,
        /// Decay of the second moment `v` (default 0.999).
        beta_2: f32,
        /// Added to the second moment's root in the denominator, for stability (default 1e-7).
        epsilon: f32,
        /// Each step removes `lr * weight_decay` of every weight (default 0.004).
        weight_decay: f32,
    },
    /// RMSprop: divides the gradient by the root of a moving average of `g²`
    /// (`optim::rmsprop_update`).
    RmsProp {
        /// Decay of the moving average of `g²` (default 0.9).
        rho: f32,
        /// Momentum on the increments; 0 (the default) keeps no momentum.
        momentum: f32,
        /// Added to the moving average under the square root, for stability (default 1e-7).
        epsilon: f32,
        /// Subtract the squared moving average of `g`, so the denominator estimates the variance
        /// (default false).
        centered: bool,
    },
    /// Adagrad: divides the gradient by the root of the sum of all past `g²`
    /// (`optim::adagrad_update`).
    Adagrad {
        /// Starting value of the accumulator (default 0.1).
        initial_accumulator: f32,
        /// Added to the accumulator under the square root, for stability (default 1e-7).
        epsilon: f32,
    },
}

impl OptimizerKind {
    /// The rule's name as the spec writes it (`sgd`, `adamw`, ...).
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
    /// The optimizer's `lr` at every step.
    Constant,
    /// `lr0 * rate^(epoch_float / every)` where `epoch_float` counts epochs with fractions
    /// (per step); with `staircase`, the exponent is floored.
    ExponentialDecay {
        /// Factor the rate is multiplied by every `every` epochs, in `(0, 1]`.
        rate: f32,
        /// Epochs per multiplication by `rate`; may be fractional.
        every: f32,
        /// Decay in jumps at whole multiples of `every` instead of continuously.
        staircase: bool,
    },
    /// `values[i]` for epochs in `[boundaries[i-1], boundaries[i])`; `values.len() ==
    /// boundaries.len() + 1`, boundaries strictly increasing epoch numbers (0-based epochs).
    PiecewiseConstant {
        /// Epochs at which the rate changes, strictly increasing.
        boundaries: Vec<usize>,
        /// The rates: one before the first boundary, then one from each boundary on.
        values: Vec<f32>,
    },
    /// 1cycle (Smith), as Géron implements it: linear from `start_lr` up to `max_lr` over the first
    /// half of the steps before the last `final_fraction`, back down to `start_lr` over the second
    /// half, then linear to `end_lr` over the last `final_fraction` of all steps.
    OneCycle {
        /// Peak rate, reached at the end of the rising half (by default the optimizer's `lr`).
        max_lr: f32,
        /// Rate at the start and at the end of the cycle (by default `max_lr / 10`).
        start_lr: f32,
        /// Rate at the last step (by default `start_lr / 1000`).
        end_lr: f32,
        /// Fraction of all steps spent annealing from `start_lr` to `end_lr`, in `(0, 1)` (default
        /// 0.1).
        final_fraction: f32,
    },
    /// Multiply the rate by `factor` when validation loss has not improved for `patience` epochs,
    /// never below `min_lr`.
    ReduceOnPlateau {
        /// Multiplier of each reduction, in `(0, 1)` (default 0.1).
        factor: f32,
        /// Epochs without an improvement of the validation loss before a reduction (default 10).
        patience: usize,
        /// Floor the rate never goes below (default 0).
        min_lr: f32,
    },
}

impl Schedule {
    /// The schedule's name as the spec writes it (`one_cycle`, ...).
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

/// Keras' `EarlyStopping`: training stops once the monitored validation metric has not improved for
/// `patience` epochs in a row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EarlyStopping {
    /// The validation metric followed (default `val_loss`).
    pub monitor: Monitor,
    /// Epochs in a row without an improvement before training stops (default 10).
    pub patience: usize,
    /// An epoch counts as an improvement only if it beats the best by more than this.
    pub min_delta: f32,
    /// End with the weights of the best epoch, whatever stopped training (default true, unlike
    /// Keras).
    pub restore_best: bool,
}

/// Data augmentation: random changes the runtime makes to the u8 pixels of each training batch,
/// in the data set's byte layout (`Dataset::planes`), before the backend sees them. Validation
/// and test images, and the batches of `lr-find` and `bench`, are never changed.
///
/// Each training image draws its changes from `rng::augment_key(seed, epoch, image)`, where
/// `image` is its index among the training files, so an image changes differently from epoch
/// to epoch, the same way on every backend and in every run with the same seed, and a resumed
/// run draws what it would have drawn. The crop comes first, then the flip.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Augment {
    /// Random crop with zero padding (torchvision's `RandomCrop(size, padding)`): each plane is
    /// padded with `crop` black pixels (byte 0, before scaling or standardizing) on every side,
    /// then an image of the original size is cut out at an offset drawn uniformly in
    /// `0..=2 · crop` down and across, independently. An offset of `crop` both ways gives the
    /// original image back. 0 (the default) crops nothing.
    pub crop: u32,
    /// Mirror the image left to right (every row reversed, in every plane) with probability 1/2.
    pub flip_horizontal: bool,
}

impl Augment {
    /// True when augmentation changes no image.
    pub fn is_identity(&self) -> bool {
        self.crop == 0 && !self.flip_horizontal
    }
}

/// A validation metric early stopping follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Monitor {
    /// Validation loss; lower is better.
    ValLoss,
    /// Validation accuracy; higher is better.
    ValAccuracy,
}

impl Monitor {
    /// The metric's name as the spec and Keras write it (`val_loss`, `val_accuracy`).
    pub fn name(self) -> &'static str {
        match self {
            Monitor::ValLoss => "val_loss",
            Monitor::ValAccuracy => "val_accuracy",
        }
    }
}

/// What the evaluation on the test set does besides one plain forward pass.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct EvalConfig {
    /// Number of stochastic forward passes averaged for MC Dropout, if asked.
    pub mc_dropout: Option<usize>,
    /// Prunes the dense kernels before the test evaluation, if asked; the accuracy before pruning
    /// is reported too.
    pub prune: Option<Prune>,
}

/// Magnitude pruning after training: in every dense kernel, the `sparsity` fraction of weights
/// with the smallest absolute value is set to zero.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Prune {
    /// Fraction of each kernel's weights set to zero, in `[0, 1)`.
    pub sparsity: f32,
}
