//! Lowering: a checked spec becomes the IR. Repeats are already expanded, defaults applied and
//! shapes checked by the checker; this fills in Keras' defaults, creates the parameters, gives
//! every value its shape (`FlatLayer::output_shape`, the checker's own rule), splits a dense or
//! conv2d layer with an activation into two ops, and folds the output softmax into the loss.
//!
//! Architecture invariant: lowering never fails and never reports anything. Whatever could be
//! wrong with a spec was reported by `check`.

use crate::ast::{ActivationSpec, InitSpec, LayerKindName};
use crate::check::{Checked, FlatLayer};
use netc_ir::ir::{
    Activation, Distribution, FanMode, Head, Init, Op, OpKind, Param, ParamId, ParamRole, PoolKind,
    Program, Regularizer, Shape, ValueId,
};

pub fn lower(checked: &Checked) -> Program {
    let mut b = Lowerer {
        params: Vec::new(),
        ops: Vec::new(),
        shape: checked.input.shape,
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
    /// Shape of the value the next op reads.
    shape: Shape,
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

    fn op(&mut self, layer: &str, shape: Shape, kind: OpKind) {
        let index = self.ops.len() as u32;
        self.ops.push(Op {
            layer: layer.to_string(),
            index,
            input: ValueId(index),
            output: ValueId(index + 1),
            width_in: self.shape.len(),
            width: shape.len(),
            shape_in: self.shape,
            shape,
            kind,
        });
        self.shape = shape;
    }

    /// A dense or conv2d layer's kernel, `[.., units]`, with its initializer (Glorot uniform by
    /// default), and its bias of `units` (zeros by default) unless `use_bias` is false.
    fn weights(&mut self, l: &FlatLayer, shape: Vec<usize>) -> (ParamId, Option<ParamId>) {
        let p = &l.props;
        let units = shape.last().copied().unwrap_or(0);
        let kernel_init = p.init.as_ref().map_or(InitSpec::GlorotUniform, |i| i.value);
        let kernel = self.param(&l.name, ParamRole::Kernel, shape, init(kernel_init), true);
        let bias = if p.use_bias.as_ref().is_none_or(|b| b.value) {
            let bias_init = p.bias_init.as_ref().map_or(InitSpec::Zeros, |i| i.value);
            Some(self.param(&l.name, ParamRole::Bias, vec![units], init(bias_init), true))
        } else {
            None
        };
        (kernel, bias)
    }

    fn layer(&mut self, l: &FlatLayer, is_last: bool) {
        let p = &l.props;
        let shape = l.output_shape(self.shape);
        let regularizer = Regularizer {
            l1: p.l1.as_ref().map_or(0.0, |v| v.value as f32),
            l2: p.l2.as_ref().map_or(0.0, |v| v.value as f32),
        };
        let max_norm = p.max_norm.as_ref().map(|v| v.value as f32);
        match l.kind {
            LayerKindName::Dense => {
                let (kernel, bias) = self.weights(l, vec![self.shape.len(), shape.len()]);
                let kind = OpKind::Dense {
                    kernel,
                    bias,
                    regularizer,
                    max_norm,
                };
                self.op(&l.name, shape, kind);
                self.activation(&l.name, l.activation, is_last);
            }
            LayerKindName::Conv2d => {
                let window = l.window();
                let [kh, kw] = window.size;
                let kernel_shape = vec![kh, kw, self.shape.channels(), shape.channels()];
                let (kernel, bias) = self.weights(l, kernel_shape);
                let kind = OpKind::Conv2d {
                    kernel,
                    bias,
                    strides: window.strides,
                    padding: window.padding,
                    regularizer,
                    max_norm,
                };
                self.op(&l.name, shape, kind);
                self.activation(&l.name, l.activation, is_last);
            }
            LayerKindName::MaxPool | LayerKindName::AvgPool => {
                let window = l.window();
                let kind = OpKind::Pool {
                    kind: if l.kind == LayerKindName::MaxPool {
                        PoolKind::Max
                    } else {
                        PoolKind::Average
                    },
                    size: window.size,
                    strides: window.strides,
                    padding: window.padding,
                };
                self.op(&l.name, shape, kind);
            }
            LayerKindName::GlobalAvgPool => self.op(&l.name, shape, OpKind::GlobalAvgPool),
            LayerKindName::Flatten => self.op(&l.name, shape, OpKind::Flatten),
            LayerKindName::Activation => self.activation(&l.name, l.activation, is_last),
            LayerKindName::BatchNorm => {
                // One mean and variance per feature of a vector, per channel of an image.
                let c = self.shape.channels();
                let gamma = self.param(&l.name, ParamRole::Gamma, vec![c], Init::Ones, true);
                let beta = self.param(&l.name, ParamRole::Beta, vec![c], Init::Zeros, true);
                let moving_mean =
                    self.param(&l.name, ParamRole::MovingMean, vec![c], Init::Zeros, false);
                let moving_variance = self.param(
                    &l.name,
                    ParamRole::MovingVariance,
                    vec![c],
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
                self.op(&l.name, shape, kind);
            }
            LayerKindName::Dropout | LayerKindName::AlphaDropout => {
                let rate = p.rate.as_ref().map_or(0.0, |r| r.value as f32);
                let kind = if l.kind == LayerKindName::Dropout {
                    OpKind::Dropout { rate }
                } else {
                    OpKind::AlphaDropout { rate }
                };
                self.op(&l.name, shape, kind);
            }
        }
    }

    fn activation(&mut self, layer: &str, a: ActivationSpec, is_last: bool) {
        let shape = self.shape;
        let act = match a {
            ActivationSpec::Linear => return,
            // The output softmax is part of `Head::SoftmaxCrossEntropy`.
            ActivationSpec::Softmax if is_last => return,
            ActivationSpec::Prelu => {
                // One slope per value, an image's too (Keras' default `shared_axes=None`).
                let alpha = self.param(
                    layer,
                    ParamRole::PreluAlpha,
                    vec![shape.len()],
                    Init::Zeros,
                    true,
                );
                self.op(layer, shape, OpKind::Prelu { alpha });
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
        self.op(layer, shape, OpKind::Activation(act));
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
