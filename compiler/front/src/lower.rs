//! Lowering: a checked spec becomes the IR. Repeats are already expanded and defaults applied by
//! the checker; this fills in Keras' defaults, creates the parameters, splits a dense layer with
//! an activation into two ops, and folds the output softmax into the loss.
//!
//! Architecture invariant: lowering never fails and never reports anything. Whatever could be
//! wrong with a spec was reported by `check`.

use crate::ast::{ActivationSpec, InitSpec, LayerKindName};
use crate::check::{Checked, FlatLayer};
use netc_ir::ir::{
    Activation, Distribution, FanMode, Head, Init, Op, OpKind, Param, ParamId, ParamRole, Program,
    Regularizer, ValueId,
};

pub fn lower(checked: &Checked) -> Program {
    let mut b = Lowerer {
        params: Vec::new(),
        ops: Vec::new(),
        width: checked.input.features,
    };
    let last = checked.layers.len().saturating_sub(1);
    for (i, layer) in checked.layers.iter().enumerate() {
        b.layer(layer, i == last);
    }
    Program {
        name: checked.name.clone(),
        input: checked.input.clone(),
        params: b.params,
        ops: b.ops,
        head: Head::SoftmaxCrossEntropy,
        train: checked.train.clone(),
        eval: checked.eval.clone(),
    }
}

struct Lowerer {
    params: Vec<Param>,
    ops: Vec<Op>,
    /// Width of the value the next op reads.
    width: usize,
}

impl Lowerer {
    fn param(
        &mut self,
        layer: &str,
        role: ParamRole,
        shape: Vec<usize>,
        init: Init,
        trainable: bool,
    ) -> ParamId {
        let id = ParamId(self.params.len() as u32);
        self.params.push(Param {
            name: format!("{layer}.{}", role.name()),
            role,
            shape,
            init,
            trainable,
        });
        id
    }

    fn op(&mut self, layer: &str, width: usize, kind: OpKind) {
        let index = self.ops.len() as u32;
        self.ops.push(Op {
            layer: layer.to_string(),
            index,
            input: ValueId(index),
            output: ValueId(index + 1),
            width_in: self.width,
            width,
            kind,
        });
        self.width = width;
    }

    fn layer(&mut self, l: &FlatLayer, is_last: bool) {
        let p = &l.props;
        match l.kind {
            LayerKindName::Dense => {
                let units = l.units as usize;
                let kernel_init = p.init.as_ref().map_or(InitSpec::GlorotUniform, |i| i.value);
                let kernel = self.param(
                    &l.name,
                    ParamRole::Kernel,
                    vec![self.width, units],
                    init(kernel_init),
                    true,
                );
                let bias = if p.use_bias.as_ref().is_none_or(|b| b.value) {
                    let bias_init = p.bias_init.as_ref().map_or(InitSpec::Zeros, |i| i.value);
                    Some(self.param(&l.name, ParamRole::Bias, vec![units], init(bias_init), true))
                } else {
                    None
                };
                let regularizer = Regularizer {
                    l1: p.l1.as_ref().map_or(0.0, |v| v.value as f32),
                    l2: p.l2.as_ref().map_or(0.0, |v| v.value as f32),
                };
                let max_norm = p.max_norm.as_ref().map(|v| v.value as f32);
                self.op(
                    &l.name,
                    units,
                    OpKind::Dense {
                        kernel,
                        bias,
                        regularizer,
                        max_norm,
                    },
                );
                self.activation(&l.name, l.activation, is_last);
            }
            LayerKindName::Activation => self.activation(&l.name, l.activation, is_last),
            LayerKindName::BatchNorm => {
                let w = self.width;
                let gamma = self.param(&l.name, ParamRole::Gamma, vec![w], Init::Ones, true);
                let beta = self.param(&l.name, ParamRole::Beta, vec![w], Init::Zeros, true);
                let moving_mean =
                    self.param(&l.name, ParamRole::MovingMean, vec![w], Init::Zeros, false);
                let moving_variance = self.param(
                    &l.name,
                    ParamRole::MovingVariance,
                    vec![w],
                    Init::Ones,
                    false,
                );
                let kind = OpKind::BatchNorm {
                    gamma,
                    beta,
                    moving_mean,
                    moving_variance,
                    momentum: p.momentum.as_ref().map_or(0.99, |v| v.value as f32),
                    epsilon: p.epsilon.as_ref().map_or(1e-3, |v| v.value as f32),
                };
                self.op(&l.name, w, kind);
            }
            LayerKindName::Dropout | LayerKindName::AlphaDropout => {
                let rate = p.rate.as_ref().map_or(0.0, |r| r.value as f32);
                let kind = if l.kind == LayerKindName::Dropout {
                    OpKind::Dropout { rate }
                } else {
                    OpKind::AlphaDropout { rate }
                };
                self.op(&l.name, self.width, kind);
            }
        }
    }

    fn activation(&mut self, layer: &str, a: ActivationSpec, is_last: bool) {
        let w = self.width;
        let act = match a {
            ActivationSpec::Linear => return,
            // The output softmax is part of `Head::SoftmaxCrossEntropy`.
            ActivationSpec::Softmax if is_last => return,
            ActivationSpec::Prelu => {
                let alpha = self.param(layer, ParamRole::PreluAlpha, vec![w], Init::Zeros, true);
                self.op(layer, w, OpKind::Prelu { alpha });
                return;
            }
            ActivationSpec::Relu => Activation::Relu,
            ActivationSpec::LeakyRelu { alpha } => Activation::LeakyRelu {
                alpha: alpha as f32,
            },
            ActivationSpec::Elu { alpha } => Activation::Elu {
                alpha: alpha as f32,
            },
            ActivationSpec::Selu => Activation::Selu,
            ActivationSpec::Gelu => Activation::Gelu,
            ActivationSpec::Swish => Activation::Swish,
            ActivationSpec::Tanh => Activation::Tanh,
            ActivationSpec::Sigmoid => Activation::Sigmoid,
            ActivationSpec::Softmax => Activation::Softmax,
        };
        self.op(layer, w, OpKind::Activation(act));
    }
}

fn init(spec: InitSpec) -> Init {
    let vs = |scale: f32, mode: FanMode, distribution: Distribution| Init::VarianceScaling {
        scale,
        mode,
        distribution,
    };
    match spec {
        InitSpec::Zeros => Init::Zeros,
        InitSpec::Ones => Init::Ones,
        InitSpec::Constant { value } => Init::Constant(value as f32),
        InitSpec::Normal { mean, stddev } => Init::Normal {
            mean: mean as f32,
            stddev: stddev as f32,
        },
        InitSpec::Uniform { min, max } => Init::Uniform {
            min: min as f32,
            max: max as f32,
        },
        InitSpec::TruncatedNormal { mean, stddev } => Init::TruncatedNormal {
            mean: mean as f32,
            stddev: stddev as f32,
        },
        InitSpec::GlorotNormal => vs(1.0, FanMode::FanAvg, Distribution::TruncatedNormal),
        InitSpec::GlorotUniform => vs(1.0, FanMode::FanAvg, Distribution::Uniform),
        InitSpec::HeNormal => vs(2.0, FanMode::FanIn, Distribution::TruncatedNormal),
        InitSpec::HeUniform => vs(2.0, FanMode::FanIn, Distribution::Uniform),
        InitSpec::LecunNormal => vs(1.0, FanMode::FanIn, Distribution::TruncatedNormal),
        InitSpec::LecunUniform => vs(1.0, FanMode::FanIn, Distribution::Uniform),
    }
}
