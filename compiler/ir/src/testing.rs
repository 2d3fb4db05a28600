//! Builds small `ir::Program`s from a list of layers, for the tests of any backend (interp, JIT,
//! autodiff, optimizers), without going through the `.net` front end.
//!
//! Programs built here are well formed by construction (widths and shapes chain, params indexed
//! in op order: kernel then bias, gamma, beta, moving mean, moving variance, alpha) but make no
//! claim to match what `lower` produces for a spec; they must never be used outside tests. A
//! layer that cannot read the shape it is given (a dense layer on an image, a convolution on a
//! vector) panics.

use crate::ir::{
    Activation, Augment, Dataset, Distribution, EvalConfig, FanMode, Head, Init, Input, Op, OpKind,
    Optimizer, OptimizerKind, Padding, Param, ParamId, ParamRole, PoolKind, Preprocess, Program,
    Regularizer, Schedule, Shape, StatsScope, TrainConfig, ValueId,
};

/// One op of a test program. Each layer becomes exactly one op named `layer{index}`.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// Dense with a Glorot-uniform kernel and a zero bias.
    Dense(usize),
    /// Dense with every option given.
    DenseWith(DenseLayer),
    /// An activation.
    Act(Activation),
    /// PReLU with Keras' zero initial alpha.
    Prelu,
    /// Batch norm with Keras' defaults (momentum 0.99, epsilon 1e-3).
    BatchNorm,
    /// Inverted dropout at the given rate.
    Dropout(f32),
    /// Alpha dropout at the given rate.
    AlphaDropout(f32),
    /// A 2-D convolution of an image.
    Conv2d(ConvLayer),
    /// Max pooling of an image.
    MaxPool {
        /// The window's height and width.
        size: [usize; 2],
        /// Pixels between windows, down and across.
        strides: [usize; 2],
        /// What happens at the border.
        padding: Padding,
    },
    /// Average pooling of an image.
    AvgPool {
        /// The window's height and width.
        size: [usize; 2],
        /// Pixels between windows, down and across.
        strides: [usize; 2],
        /// What happens at the border.
        padding: Padding,
    },
    /// An image to the mean of each of its channels.
    GlobalAvgPool,
    /// An image's floats as a vector.
    Flatten,
}

/// A dense layer with every option spelled out.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseLayer {
    /// Width of the output.
    pub units: usize,
    /// Whether the layer has a bias (starting at zero).
    pub bias: bool,
    /// Penalty on the kernel.
    pub regularizer: Regularizer,
    /// Max-norm constraint on the kernel's columns.
    pub max_norm: Option<f32>,
    /// Initializer of the kernel.
    pub init: Init,
}

impl DenseLayer {
    /// A dense layer `units` wide, with a zero bias, a Glorot-uniform kernel, no penalty and no
    /// constraint.
    pub fn new(units: usize) -> DenseLayer {
        DenseLayer {
            units,
            bias: true,
            regularizer: Regularizer::default(),
            max_norm: None,
            init: GLOROT_UNIFORM,
        }
    }
}

/// A convolution with every option spelled out.
#[derive(Clone, Debug, PartialEq)]
pub struct ConvLayer {
    /// Output channels.
    pub filters: usize,
    /// The kernel's height and width.
    pub size: [usize; 2],
    /// Pixels between windows, down and across.
    pub strides: [usize; 2],
    /// What happens at the border.
    pub padding: Padding,
    /// Whether the layer has a bias (starting at zero).
    pub bias: bool,
    /// Penalty on the kernel.
    pub regularizer: Regularizer,
    /// Max-norm constraint on the kernel's filters.
    pub max_norm: Option<f32>,
    /// Initializer of the kernel.
    pub init: Init,
}

impl ConvLayer {
    /// A convolution of `filters` kernels of `size`, stride 1, `valid` padding, with a zero
    /// bias, a He-normal kernel, no penalty and no constraint.
    pub fn new(filters: usize, size: [usize; 2]) -> ConvLayer {
        ConvLayer {
            filters,
            size,
            strides: [1, 1],
            padding: Padding::Valid,
            bias: true,
            regularizer: Regularizer::default(),
            max_norm: None,
            init: HE_NORMAL,
        }
    }
}

/// `he_normal`, the kernel initializer of netc's convolutions.
pub const HE_NORMAL: Init = Init::VarianceScaling {
    scale: 2.0,
    mode: FanMode::FanIn,
    distribution: Distribution::TruncatedNormal,
};

/// Keras' default kernel initializer, `glorot_uniform`.
pub const GLOROT_UNIFORM: Init = Init::VarianceScaling {
    scale: 1.0,
    mode: FanMode::FanAvg,
    distribution: Distribution::Uniform,
};

/// A program over `features` inputs running `layers` in order; the number of classes is the
/// last layer's width. Training defaults: Adam (Keras defaults) at lr 1e-3, batch 32, seed 42,
/// inputs scaled to `[0, 1]`.
pub fn program(features: usize, layers: &[Layer]) -> Program {
    build(Shape::Flat(features), layers)
}

/// Like `program`, over images of `height × width × channels` (`Input::shape` is the image; the
/// last layer must produce a vector).
pub fn program_image(height: usize, width: usize, channels: usize, layers: &[Layer]) -> Program {
    let shape = Shape::Image {
        height,
        width,
        channels,
    };
    build(shape, layers)
}

/// The program of `layers` over inputs of `input`, each layer reading the previous one's shape.
fn build(input: Shape, layers: &[Layer]) -> Program {
    let mut params = Vec::new();
    let mut ops = Vec::new();
    let mut shape = input;
    for (index, layer) in layers.iter().enumerate() {
        let name = format!("layer{index}");
        let mut add = |role: ParamRole, shape: Vec<usize>, init: Init, trainable: bool| {
            params.push(Param {
                name: format!("{name}.{}", role.name()),
                role,
                shape,
                init,
                trainable,
            });
            ParamId(params.len() as u32 - 1)
        };
        let width = shape.len();
        let (kind, shape_out) = match layer {
            Layer::Dense(units) => dense(&mut add, shape, &DenseLayer::new(*units)),
            Layer::DenseWith(spec) => dense(&mut add, shape, spec),
            Layer::Act(activation) => (OpKind::Activation(*activation), shape),
            Layer::Prelu => (
                OpKind::Prelu {
                    alpha: add(ParamRole::PreluAlpha, vec![width], Init::Zeros, true),
                },
                shape,
            ),
            Layer::BatchNorm => {
                let channels = shape.channels();
                let kind = OpKind::BatchNorm {
                    gamma: add(ParamRole::Gamma, vec![channels], Init::Ones, true),
                    beta: add(ParamRole::Beta, vec![channels], Init::Zeros, true),
                    moving_mean: add(ParamRole::MovingMean, vec![channels], Init::Zeros, false),
                    moving_variance: add(
                        ParamRole::MovingVariance,
                        vec![channels],
                        Init::Ones,
                        false,
                    ),
                    momentum: 0.99,
                    epsilon: 1e-3,
                };
                (kind, shape)
            }
            Layer::Dropout(rate) => (OpKind::Dropout { rate: *rate }, shape),
            Layer::AlphaDropout(rate) => (OpKind::AlphaDropout { rate: *rate }, shape),
            Layer::Conv2d(spec) => conv(&mut add, shape, spec),
            Layer::MaxPool {
                size,
                strides,
                padding,
            } => pool(PoolKind::Max, shape, *size, *strides, *padding),
            Layer::AvgPool {
                size,
                strides,
                padding,
            } => pool(PoolKind::Average, shape, *size, *strides, *padding),
            Layer::GlobalAvgPool => {
                let (_, _, channels) = image(shape, "global average pooling");
                (OpKind::GlobalAvgPool, Shape::Flat(channels))
            }
            Layer::Flatten => {
                image(shape, "flatten");
                (OpKind::Flatten, Shape::Flat(width))
            }
        };
        ops.push(Op {
            layer: name,
            index: index as u32,
            input: ValueId(index as u32),
            output: ValueId(index as u32 + 1),
            width_in: width,
            width: shape_out.len(),
            shape_in: shape,
            shape: shape_out,
            kind,
        });
        shape = shape_out;
    }
    let Shape::Flat(classes) = shape else {
        panic!("the last layer of a test program must produce a vector, not {shape}");
    };
    Program {
        name: "test".into(),
        input: Input {
            dataset: Dataset::Cifar10,
            features: input.len(),
            shape: input,
            classes,
            preprocess: Preprocess::Scale01,
            stats_scope: StatsScope::Feature,
        },
        params,
        ops,
        head: Head::SoftmaxCrossEntropy,
        train: TrainConfig {
            optimizer: Optimizer {
                kind: OptimizerKind::Adam {
                    beta_1: 0.9,
                    beta_2: 0.999,
                    epsilon: 1e-7,
                },
                lr: 1e-3,
                clipnorm: None,
            },
            schedule: Schedule::Constant,
            batch: 32,
            epochs: 1,
            validation: 0,
            early_stopping: None,
            augment: Augment::default(),
            seed: 42,
        },
        eval: EvalConfig::default(),
    }
}

fn dense(
    add: &mut impl FnMut(ParamRole, Vec<usize>, Init, bool) -> ParamId,
    shape: Shape,
    spec: &DenseLayer,
) -> (OpKind, Shape) {
    let Shape::Flat(width) = shape else {
        panic!("a dense layer reads a vector, not {shape}: flatten the image first");
    };
    let kernel = add(ParamRole::Kernel, vec![width, spec.units], spec.init, true);
    let bias = spec
        .bias
        .then(|| add(ParamRole::Bias, vec![spec.units], Init::Zeros, true));
    let kind = OpKind::Dense {
        kernel,
        bias,
        regularizer: spec.regularizer,
        max_norm: spec.max_norm,
    };
    (kind, Shape::Flat(spec.units))
}

/// `(height, width, channels)` of `shape`, which `layer` needs to be an image.
fn image(shape: Shape, layer: &str) -> (usize, usize, usize) {
    shape
        .image()
        .unwrap_or_else(|| panic!("{layer} reads an image, not {shape}"))
}

/// The image of `channels` channels that windows of `size` moved by `strides` make of `shape`.
fn windowed(
    shape: Shape,
    layer: &str,
    size: [usize; 2],
    strides: [usize; 2],
    padding: Padding,
    channels: usize,
) -> Shape {
    let (height, width, _) = image(shape, layer);
    Shape::Image {
        height: padding.output(height, size[0], strides[0]),
        width: padding.output(width, size[1], strides[1]),
        channels,
    }
}

/// A convolution op over `shape` and its kernel and bias, and the image it writes.
fn conv(
    add: &mut impl FnMut(ParamRole, Vec<usize>, Init, bool) -> ParamId,
    shape: Shape,
    spec: &ConvLayer,
) -> (OpKind, Shape) {
    let (_, _, channels) = image(shape, "a convolution");
    let [kh, kw] = spec.size;
    let kernel_shape = vec![kh, kw, channels, spec.filters];
    let kernel = add(ParamRole::Kernel, kernel_shape, spec.init, true);
    let bias = spec
        .bias
        .then(|| add(ParamRole::Bias, vec![spec.filters], Init::Zeros, true));
    let kind = OpKind::Conv2d {
        kernel,
        bias,
        strides: spec.strides,
        padding: spec.padding,
        regularizer: spec.regularizer,
        max_norm: spec.max_norm,
    };
    let out = windowed(
        shape,
        "a convolution",
        spec.size,
        spec.strides,
        spec.padding,
        spec.filters,
    );
    (kind, out)
}

/// A pooling op over `shape`, and the image it writes.
fn pool(
    kind: PoolKind,
    shape: Shape,
    size: [usize; 2],
    strides: [usize; 2],
    padding: Padding,
) -> (OpKind, Shape) {
    let (_, _, channels) = image(shape, "pooling");
    let op = OpKind::Pool {
        kind,
        size,
        strides,
        padding,
    };
    (
        op,
        windowed(shape, "pooling", size, strides, padding, channels),
    )
}
