//! Builds small `ir::Program`s from a list of layers, for the tests of any backend (interp, JIT,
//! autodiff, optimizers), without going through the `.net` front end.
//!
//! Programs built here are well formed by construction (widths chain, params indexed in op
//! order: kernel then bias, gamma, beta, moving mean, moving variance, alpha) but make no claim
//! to match what `lower` produces for a spec; they must never be used outside tests.

use crate::ir::{
    Activation, Dataset, Distribution, EvalConfig, FanMode, Head, Init, Input, Op, OpKind,
    Optimizer, OptimizerKind, Param, ParamId, ParamRole, Preprocess, Program, Regularizer,
    Schedule, TrainConfig, ValueId,
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
    let mut params = Vec::new();
    let mut ops = Vec::new();
    let mut width = features;
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
        let (kind, width_out) = match layer {
            Layer::Dense(units) => dense(&mut add, width, &DenseLayer::new(*units)),
            Layer::DenseWith(spec) => dense(&mut add, width, spec),
            Layer::Act(activation) => (OpKind::Activation(*activation), width),
            Layer::Prelu => (
                OpKind::Prelu {
                    alpha: add(ParamRole::PreluAlpha, vec![width], Init::Zeros, true),
                },
                width,
            ),
            Layer::BatchNorm => (
                OpKind::BatchNorm {
                    gamma: add(ParamRole::Gamma, vec![width], Init::Ones, true),
                    beta: add(ParamRole::Beta, vec![width], Init::Zeros, true),
                    moving_mean: add(ParamRole::MovingMean, vec![width], Init::Zeros, false),
                    moving_variance: add(ParamRole::MovingVariance, vec![width], Init::Ones, false),
                    momentum: 0.99,
                    epsilon: 1e-3,
                },
                width,
            ),
            Layer::Dropout(rate) => (OpKind::Dropout { rate: *rate }, width),
            Layer::AlphaDropout(rate) => (OpKind::AlphaDropout { rate: *rate }, width),
        };
        ops.push(Op {
            layer: name,
            index: index as u32,
            input: ValueId(index as u32),
            output: ValueId(index as u32 + 1),
            width_in: width,
            width: width_out,
            kind,
        });
        width = width_out;
    }
    Program {
        name: "test".into(),
        input: Input {
            dataset: Dataset::Cifar10,
            features,
            classes: width,
            preprocess: Preprocess::Scale01,
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
            seed: 42,
        },
        eval: EvalConfig::default(),
    }
}

fn dense(
    add: &mut impl FnMut(ParamRole, Vec<usize>, Init, bool) -> ParamId,
    width: usize,
    spec: &DenseLayer,
) -> (OpKind, usize) {
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
    (kind, spec.units)
}
