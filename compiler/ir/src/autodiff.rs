//! Reverse-mode differentiation of the IR: `GradProgram::new` derives, from a `Program`, the list
//! of gradient steps a backend runs after the forward pass, which forward results each step
//! reads (so the forward pass knows what to keep), and which steps must produce their input's
//! gradient.
//!
//! This module only describes the backward pass; it computes nothing. The reference executor
//! (`interp`) and the JIT both consume the same `GradProgram`, and the doc comments of `GradRule`
//! are the definition of every op's gradient that they implement. It must not special-case
//! models: everything here is derived op by op from the IR.
//!
//! Notation: `dvK` is the gradient of the loss with respect to value `vK`, `dpK` the gradient
//! with respect to parameter `pK`; `n` is the number of rows of the batch; sums `Σrows` run over
//! the batch axis. The derivative of a piecewise activation at exactly `x = 0` is the negative
//! side's (TensorFlow's choice): 0 for relu, `alpha` for leaky_relu and prelu, `alpha` for elu,
//! `λα` for selu.

use std::fmt;

use crate::ir::{Activation, Head, Op, OpKind, ParamId, Program, ValueId};

/// The backward pass of a program: the head's gradient, then one step per op in reverse order.
#[derive(Clone, Debug, PartialEq)]
pub struct GradProgram {
    /// The first gradient computed: the loss's, with respect to the logits.
    pub head: HeadGrad,
    /// Steps in the order they run: from the last op back to the first op that owns a trainable
    /// parameter. Ops before that one get no step at all, since nothing upstream of them learns.
    /// `steps[k].dy` is the previous step's `dx` (or the head's output for `steps[0]`).
    pub steps: Vec<GradStep>,
    /// Everything the forward pass in training must keep for the backward pass, without
    /// duplicates, values first (by id), then per-op records (by op).
    pub saved: Vec<Saved>,
}

/// The gradient of the head with respect to the logits.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadGrad {
    /// The loss, as `Program::head`.
    pub kind: Head,
    /// The value the head reads (the last one).
    pub logits: ValueId,
}

impl HeadGrad {
    /// Softmax cross-entropy, averaged over the batch: with `p = softmax(logits)` row-wise,
    /// `loss = mean(logsumexp(z) - z[label])` and `dlogits = (p - onehot(label)) / n`.
    /// Reads the saved logits.
    pub fn saves(&self) -> Vec<Saved> {
        vec![Saved::Value(self.logits)]
    }
}

/// The backward step of one op: reads `dy` (gradient of the op's output), accumulates its
/// parameters' gradients, and writes `dx` (gradient of its input) when an earlier op needs it.
#[derive(Clone, Debug, PartialEq)]
pub struct GradStep {
    /// Index of the op in `Program::ops`.
    pub op: u32,
    /// The op's layer name, for dumps.
    pub layer: String,
    /// The op's output: this step reads `d{dy}`.
    pub dy: ValueId,
    /// The op's input, when its gradient is needed: this step then writes `d{dx}`. `None` for the
    /// first op with trainable parameters (for a first dense layer, this skips the widest matmul
    /// of the whole backward pass, `dy · Wᵀ` into the input features).
    pub dx: Option<ValueId>,
    /// How the gradient goes back through the op.
    pub rule: GradRule,
    /// What this step reads from the forward pass.
    pub saves: Vec<Saved>,
}

/// Which forward result of an op an activation's derivative is computed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The op's input `x`.
    Input,
    /// The op's output `y`.
    Output,
}

/// The gradient of one op kind. `x` is the op's input, `y` its output, `dy`/`dx` their gradients
/// (each `[n, width]`), `⊙` the element-wise product.
#[derive(Clone, Debug, PartialEq)]
pub enum GradRule {
    /// `y = x · W + b`: `dW = xᵀ · dy`, `db = Σrows dy`, `dx = dy · Wᵀ`. Reads the saved input
    /// `x` (the kernel `W` is a parameter, not a saved value).
    Dense {
        /// The op's input, saved by the forward pass.
        x: ValueId,
        /// The `[width_in, width]` weight matrix; gets `dW`.
        kernel: ParamId,
        /// The bias, if any; gets `db`.
        bias: Option<ParamId>,
    },
    /// `dx = dy ⊙ f'(·)`, element-wise except softmax; `reads` is the saved value the derivative
    /// needs (`None` for linear):
    ///
    /// - linear: `dx = dy`;
    /// - relu: `dx = dy ⊙ [x > 0]`;
    /// - leaky_relu(α): `dx = dy ⊙ (x > 0 ? 1 : α)`;
    /// - elu(α): `dx = dy ⊙ (x > 0 ? 1 : α·exp(x))`;
    /// - selu: `dx = dy ⊙ λ·(x > 0 ? 1 : α·exp(x))`;
    /// - gelu (exact): `dx = dy ⊙ (Φ(x) + x·φ(x))`, `Φ(x) = (1 + erf(x/√2))/2`,
    ///   `φ(x) = exp(-x²/2)/√(2π)`;
    /// - swish: `dx = dy ⊙ s·(1 + x·(1 - s))` with `s = sigmoid(x)`;
    /// - tanh: `dx = dy ⊙ (1 - y²)`; sigmoid: `dx = dy ⊙ y·(1 - y)`;
    /// - softmax (a non-final op; the final one is folded into the head): the row-wise
    ///   Jacobian-vector product `dx = y ⊙ (dy - Σcols(dy ⊙ y))`, the sum taken per row.
    Activation {
        /// Which activation's derivative `f'` to apply.
        activation: Activation,
        /// The saved value `f'` is computed from (`x` or `y`, see `activation_reads`); `None` for
        /// linear.
        reads: Option<ValueId>,
    },
    /// `y = x` if `x > 0`, else `α_j x`: `dx = dy ⊙ (x > 0 ? 1 : α_j)`,
    /// `dα_j = Σrows (x > 0 ? 0 : x) ⊙ dy`. Reads the saved input `x`.
    Prelu {
        /// The op's input, saved by the forward pass.
        x: ValueId,
        /// The `[width]` slopes; get `dα`.
        alpha: ParamId,
    },
    /// `y = conv(x, K) + b` (`OpKind::Conv2d`): `dK[di, dj, c, o] = Σ_{rows, i, j}
    /// x[i·sh + di - ph, j·sw + dj - pw, c] · dy[i, j, o]`, `db[o] = Σ_{rows, i, j} dy[i, j, o]`,
    /// and `dx[p, q, c] = Σ dy[i, j, o] · K[di, dj, c, o]` over the windows `(i, j)` with
    /// `p = i·sh + di - ph`, `q = j·sw + dj - pw`. Reads the saved input `x`.
    Conv2d {
        /// The op's input, saved by the forward pass.
        x: ValueId,
        /// The kernel; gets `dK`.
        kernel: ParamId,
        /// The bias, if any; gets `db`.
        bias: Option<ParamId>,
    },
    /// Max pooling: each window's `dy` goes to the pixel that gave its maximum (the first in
    /// row-major order on ties), summed where windows overlap. Average pooling: each window's
    /// `dy` divided by its pixel count goes to each of its pixels inside the image. Max pooling
    /// reads the saved input `x` (to find the maxima again); average pooling reads nothing.
    Pool {
        /// What the windows kept.
        kind: crate::ir::PoolKind,
        /// The saved input, for max pooling.
        x: Option<ValueId>,
    },
    /// `dx[i, j, c] = dy[c] / (h·w)` for every pixel.
    GlobalAvgPool,
    /// `dx = dy` (the same floats in the same order).
    Flatten,
    /// Batch norm in training, on batch statistics `μ = mean(x)`, biased `σ² = mean((x - μ)²)`,
    /// `inv = 1/sqrt(σ² + ε)`, `x̂ = (x - μ)·inv`, `y = γ x̂ + β` (all per column; for an image,
    /// per channel, the means taken over the rows and the pixels):
    /// `dβ = Σrows dy`, `dγ = Σrows dy ⊙ x̂`, and with `g = dy ⊙ γ`,
    /// `dx = inv · (g - mean(g) - x̂ ⊙ mean(g ⊙ x̂))` (means over rows). Reads the saved
    /// `x̂` and `inv` of this op (`Saved::BatchNormStats`). The moving averages get no gradient.
    BatchNorm {
        /// Learned scale `γ`; gets `dγ`.
        gamma: ParamId,
        /// Learned offset `β`; gets `dβ`.
        beta: ParamId,
    },
    /// Inverted dropout: `dx = dy ⊙ mask / (1 - rate)`, with the forward pass's keep mask.
    Dropout {
        /// The op's drop probability.
        rate: f32,
    },
    /// Alpha dropout, `y = a·(mask ? x : α') + b`: `dx = a · mask ⊙ dy` (the dropped path is
    /// constant), with `a` from `alpha_dropout_affine(rate)`.
    AlphaDropout {
        /// The op's drop probability.
        rate: f32,
        /// Scale `a` of the affine correction, in full precision.
        a: f64,
    },
}

/// A forward-pass result the backward pass reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Saved {
    /// A whole value `[n, width]`.
    Value(ValueId),
    /// Batch norm op `op`'s normalized input `x̂` (`[n, width]`) and `1/sqrt(σ² + ε)`
    /// (`[width]`), from the batch statistics; printed `bnK`.
    BatchNormStats {
        /// Index of the batch norm op in `Program::ops`.
        op: u32,
    },
    /// Dropout op `op`'s keep mask, printed `maskK`. It is a pure function of
    /// `(seed, step, op, element)` (see `rng`), so a backend may redraw it instead of storing it.
    DropoutMask {
        /// Index of the dropout op (either kind) in `Program::ops`.
        op: u32,
    },
}

impl GradProgram {
    /// The backward pass of `program`: the head's gradient, the steps from the last op back to the
    /// first one with trainable parameters, and the forward results they read.
    pub fn new(program: &Program) -> GradProgram {
        let first_trained = program
            .ops
            .iter()
            .position(|op| has_trainable_params(program, op));
        let logits = program.ops.last().map_or(ValueId(0), |op| op.output);
        let head = HeadGrad {
            kind: program.head,
            logits,
        };
        let steps: Vec<GradStep> = match first_trained {
            None => Vec::new(),
            Some(first) => program.ops[first..]
                .iter()
                .rev()
                .map(|op| grad_step(op, op.index as usize > first))
                .collect(),
        };
        let mut saved: Vec<Saved> = head
            .saves()
            .into_iter()
            .chain(steps.iter().flat_map(|s| s.saves.iter().copied()))
            .collect();
        saved.sort();
        saved.dedup();
        GradProgram { head, steps, saved }
    }

    /// Whether the forward pass in training must keep value `v`.
    pub fn keeps_value(&self, v: ValueId) -> bool {
        self.saved.contains(&Saved::Value(v))
    }

    /// The step of op `op`, if it has one.
    pub fn step_of(&self, op: u32) -> Option<&GradStep> {
        self.steps.iter().find(|s| s.op == op)
    }
}

/// True when the op owns a parameter the optimizer updates.
pub fn has_trainable_params(program: &Program, op: &Op) -> bool {
    let trainable = |p: ParamId| program.param(p).trainable;
    match op.kind {
        OpKind::Dense { kernel, bias, .. } => trainable(kernel) || bias.is_some_and(trainable),
        OpKind::Prelu { alpha } => trainable(alpha),
        OpKind::BatchNorm { gamma, beta, .. } => trainable(gamma) || trainable(beta),
        OpKind::Conv2d { kernel, bias, .. } => trainable(kernel) || bias.is_some_and(trainable),
        OpKind::Activation(_)
        | OpKind::Dropout { .. }
        | OpKind::AlphaDropout { .. }
        | OpKind::Pool { .. }
        | OpKind::GlobalAvgPool
        | OpKind::Flatten => false,
    }
}

/// Which value an activation's derivative reads: the input for the piecewise and
/// `x`-dependent ones, the output where the derivative is cheapest in `y`, nothing for linear.
pub fn activation_reads(activation: Activation) -> Option<Side> {
    match activation {
        Activation::Linear => None,
        Activation::Relu
        | Activation::LeakyRelu { .. }
        | Activation::Elu { .. }
        | Activation::Selu
        | Activation::Gelu
        | Activation::Swish => Some(Side::Input),
        Activation::Tanh | Activation::Sigmoid | Activation::Softmax => Some(Side::Output),
    }
}

/// SELU's scale λ in full precision (`ir::SELU_LAMBDA` is its f32 rounding).
pub const SELU_LAMBDA_F64: f64 = 1.050_700_987_355_480_5;
/// SELU's α in full precision (`ir::SELU_ALPHA` is its f32 rounding).
pub const SELU_ALPHA_F64: f64 = 1.673_263_242_354_377_3;

/// Alpha dropout's affine correction `(a, b)` for `rate`, as Keras: with `α' = -λα`,
/// `a = ((1 - rate)(1 + rate·α'²))^(-1/2)` and `b = -a·α'·rate`.
pub fn alpha_dropout_affine(rate: f32) -> (f64, f64) {
    let rate = f64::from(rate);
    let alpha_p = -SELU_LAMBDA_F64 * SELU_ALPHA_F64;
    let a = ((1.0 - rate) * (1.0 + rate * alpha_p * alpha_p)).powf(-0.5);
    (a, -a * alpha_p * rate)
}

fn grad_step(op: &Op, needs_dx: bool) -> GradStep {
    let (rule, saves) = match op.kind {
        OpKind::Dense { kernel, bias, .. } => (
            GradRule::Dense {
                x: op.input,
                kernel,
                bias,
            },
            vec![Saved::Value(op.input)],
        ),
        OpKind::Activation(activation) => {
            let reads = activation_reads(activation).map(|side| match side {
                Side::Input => op.input,
                Side::Output => op.output,
            });
            (
                GradRule::Activation { activation, reads },
                reads.map(Saved::Value).into_iter().collect(),
            )
        }
        OpKind::Prelu { alpha } => (
            GradRule::Prelu { x: op.input, alpha },
            vec![Saved::Value(op.input)],
        ),
        OpKind::BatchNorm { gamma, beta, .. } => (
            GradRule::BatchNorm { gamma, beta },
            vec![Saved::BatchNormStats { op: op.index }],
        ),
        OpKind::Dropout { rate } => (
            GradRule::Dropout { rate },
            vec![Saved::DropoutMask { op: op.index }],
        ),
        OpKind::AlphaDropout { rate } => (
            GradRule::AlphaDropout {
                rate,
                a: alpha_dropout_affine(rate).0,
            },
            vec![Saved::DropoutMask { op: op.index }],
        ),
        OpKind::Conv2d { kernel, bias, .. } => (
            GradRule::Conv2d {
                x: op.input,
                kernel,
                bias,
            },
            vec![Saved::Value(op.input)],
        ),
        OpKind::Pool { kind, .. } => {
            let x = (kind == crate::ir::PoolKind::Max).then_some(op.input);
            (
                GradRule::Pool { kind, x },
                x.map(Saved::Value).into_iter().collect(),
            )
        }
        OpKind::GlobalAvgPool => (GradRule::GlobalAvgPool, Vec::new()),
        OpKind::Flatten => (GradRule::Flatten, Vec::new()),
    };
    GradStep {
        op: op.index,
        layer: op.layer.clone(),
        dy: op.output,
        dx: needs_dx.then_some(op.input),
        rule,
        saves,
    }
}

impl GradRule {
    /// Short mnemonic used in dumps of the backward pass: the op's own (`OpKind::mnemonic`).
    pub fn mnemonic(&self) -> &'static str {
        match self {
            GradRule::Dense { .. } => "dense",
            GradRule::Activation { activation, .. } => activation.name(),
            GradRule::Prelu { .. } => "prelu",
            GradRule::BatchNorm { .. } => "batch_norm",
            GradRule::Dropout { .. } => "dropout",
            GradRule::AlphaDropout { .. } => "alpha_dropout",
            GradRule::Conv2d { .. } => "conv2d",
            GradRule::Pool {
                kind: crate::ir::PoolKind::Max,
                ..
            } => "max_pool",
            GradRule::Pool {
                kind: crate::ir::PoolKind::Average,
                ..
            } => "avg_pool",
            GradRule::GlobalAvgPool => "global_avg_pool",
            GradRule::Flatten => "flatten",
        }
    }
}

impl fmt::Display for Saved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Saved::Value(v) => write!(f, "{v}"),
            Saved::BatchNormStats { op } => write!(f, "bn{op}"),
            Saved::DropoutMask { op } => write!(f, "mask{op}"),
        }
    }
}

impl fmt::Display for GradStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dy = format!("d{}", self.dy);
        let dx = self.dx.map(|v| format!("d{v}"));
        write!(
            f,
            "op{} {} ({}): ",
            self.op,
            self.rule.mnemonic(),
            self.layer
        )?;
        let mut parts: Vec<String> = Vec::new();
        match &self.rule {
            GradRule::Dense { x, kernel, bias } => {
                parts.push(format!("d{kernel} = {x}ᵀ · {dy}"));
                if let Some(bias) = bias {
                    parts.push(format!("d{bias} = Σrows {dy}"));
                }
                if let Some(dx) = &dx {
                    parts.push(format!("{dx} = {dy} · {kernel}ᵀ"));
                }
            }
            GradRule::Activation { activation, reads } => {
                if let Some(dx) = &dx {
                    let v = reads.map(|v| v.to_string()).unwrap_or_default();
                    parts.push(format!(
                        "{dx} = {}",
                        activation_formula(*activation, &dy, &v)
                    ));
                }
            }
            GradRule::Prelu { x, alpha } => {
                parts.push(format!("d{alpha} = Σrows min({x}, 0) ⊙ {dy}"));
                if let Some(dx) = &dx {
                    parts.push(format!("{dx} = {dy} ⊙ ({x} > 0 ? 1 : {alpha})"));
                }
            }
            GradRule::BatchNorm { gamma, beta } => {
                let bn = Saved::BatchNormStats { op: self.op };
                parts.push(format!("d{gamma} = Σrows {dy} ⊙ x̂({bn})"));
                parts.push(format!("d{beta} = Σrows {dy}"));
                if let Some(dx) = &dx {
                    parts.push(format!("{dx} = batch_norm_dx({dy}, {gamma}, {bn})"));
                }
            }
            GradRule::Dropout { rate } => {
                if let Some(dx) = &dx {
                    parts.push(format!("{dx} = {dy} ⊙ mask{} / (1 - {rate})", self.op));
                }
            }
            GradRule::AlphaDropout { a, .. } => {
                if let Some(dx) = &dx {
                    parts.push(format!("{dx} = {a:.6} · mask{} ⊙ {dy}", self.op));
                }
            }
            GradRule::Conv2d { x, kernel, bias } => {
                parts.push(format!("d{kernel} = conv_kernel_grad({x}, {dy})"));
                if let Some(bias) = bias {
                    parts.push(format!("d{bias} = Σrows,pixels {dy}"));
                }
                if let Some(dx) = &dx {
                    parts.push(format!("{dx} = conv_input_grad({dy}, {kernel})"));
                }
            }
            GradRule::Pool { kind, x } => {
                if let Some(dx) = &dx {
                    match (kind, x) {
                        (crate::ir::PoolKind::Max, Some(x)) => {
                            parts.push(format!("{dx} = {dy} at the maxima of {x}"))
                        }
                        _ => parts.push(format!("{dx} = {dy} / window, spread")),
                    }
                }
            }
            GradRule::GlobalAvgPool => {
                if let Some(dx) = &dx {
                    parts.push(format!("{dx} = {dy} / pixels, spread"));
                }
            }
            GradRule::Flatten => {
                if let Some(dx) = &dx {
                    parts.push(format!("{dx} = {dy}"));
                }
            }
        }
        if self.dx.is_none() {
            parts.push("no dx".to_string());
        }
        write!(f, "{}", parts.join("; "))?;
        let saves: Vec<String> = self.saves.iter().map(Saved::to_string).collect();
        write!(f, "  [reads {}]", saves.join(", "))
    }
}

fn activation_formula(activation: Activation, dy: &str, v: &str) -> String {
    match activation {
        Activation::Linear => dy.to_string(),
        Activation::Relu => format!("{dy} ⊙ [{v} > 0]"),
        Activation::LeakyRelu { alpha } => format!("{dy} ⊙ ({v} > 0 ? 1 : {alpha})"),
        Activation::Elu { alpha } => format!("{dy} ⊙ ({v} > 0 ? 1 : {alpha}·exp({v}))"),
        Activation::Selu => format!("{dy} ⊙ λ({v} > 0 ? 1 : α·exp({v}))"),
        Activation::Gelu => format!("{dy} ⊙ (Φ({v}) + {v}·φ({v}))"),
        Activation::Swish => format!("{dy} ⊙ s(1 + {v}(1 - s)), s = sigmoid({v})"),
        Activation::Tanh => format!("{dy} ⊙ (1 - {v}²)"),
        Activation::Sigmoid => format!("{dy} ⊙ {v}(1 - {v})"),
        Activation::Softmax => format!("{v} ⊙ ({dy} - Σcols({dy} ⊙ {v}))"),
    }
}

impl fmt::Display for GradProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let z = self.head.logits;
        match self.head.kind {
            Head::SoftmaxCrossEntropy => writeln!(
                f,
                "head softmax_cross_entropy: d{z} = (softmax({z}) - onehot(labels)) / n  [reads {z}]"
            )?,
        }
        for step in &self.steps {
            writeln!(f, "{step}")?;
        }
        let saved: Vec<String> = self.saved.iter().map(Saved::to_string).collect();
        writeln!(f, "saved: {}", saved.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{program, Layer};

    #[test]
    fn steps_run_backwards_and_stop_at_the_first_trained_op() {
        let p = program(
            6,
            &[
                Layer::Dropout(0.2),
                Layer::Dense(5),
                Layer::Act(Activation::Relu),
                Layer::BatchNorm,
                Layer::Dense(3),
            ],
        );
        let grad = GradProgram::new(&p);
        let ops: Vec<u32> = grad.steps.iter().map(|s| s.op).collect();
        assert_eq!(ops, [4, 3, 2, 1], "the leading dropout gets no step");
        let dx: Vec<bool> = grad.steps.iter().map(|s| s.dx.is_some()).collect();
        assert_eq!(dx, [true, true, true, false], "the first dense needs no dx");
        for pair in grad.steps.windows(2) {
            assert_eq!(pair[0].dx, Some(pair[1].dy), "steps chain dx into dy");
        }
        assert_eq!(grad.steps[0].dy, grad.head.logits);
        assert_eq!(
            grad.saved,
            [
                Saved::Value(ValueId(1)),
                Saved::Value(ValueId(2)),
                Saved::Value(ValueId(4)),
                Saved::Value(ValueId(5)),
                Saved::BatchNormStats { op: 3 },
            ]
        );
        assert!(!grad.keeps_value(ValueId(0)) && !grad.keeps_value(ValueId(3)));
    }

    #[test]
    fn activations_read_the_cheaper_side() {
        let p = program(
            4,
            &[
                Layer::Dense(4),
                Layer::Act(Activation::Tanh),
                Layer::Act(Activation::Gelu),
                Layer::Act(Activation::Linear),
                Layer::Dense(2),
            ],
        );
        let grad = GradProgram::new(&p);
        let reads = |op: u32| match &grad.step_of(op).unwrap().rule {
            GradRule::Activation { reads, .. } => *reads,
            other => panic!("{other:?}"),
        };
        assert_eq!(reads(1), Some(ValueId(2)), "tanh reads its output");
        assert_eq!(reads(2), Some(ValueId(2)), "gelu reads its input");
        assert_eq!(reads(3), None, "linear reads nothing");
        assert!(grad.step_of(3).unwrap().saves.is_empty());
    }

    #[test]
    fn dump_is_stable() {
        let p = program(
            4,
            &[
                Layer::Dense(3),
                Layer::Act(Activation::Relu),
                Layer::Dropout(0.5),
                Layer::Prelu,
                Layer::AlphaDropout(0.1),
                Layer::Dense(2),
            ],
        );
        let want = "\
head softmax_cross_entropy: dv6 = (softmax(v6) - onehot(labels)) / n  [reads v6]
op5 dense (layer5): dp3 = v5ᵀ · dv6; dp4 = Σrows dv6; dv5 = dv6 · p3ᵀ  [reads v5]
op4 alpha_dropout (layer4): dv4 = 0.921285 · mask4 ⊙ dv5  [reads mask4]
op3 prelu (layer3): dp2 = Σrows min(v3, 0) ⊙ dv4; dv3 = dv4 ⊙ (v3 > 0 ? 1 : p2)  [reads v3]
op2 dropout (layer2): dv2 = dv3 ⊙ mask2 / (1 - 0.5)  [reads mask2]
op1 relu (layer1): dv1 = dv2 ⊙ [v1 > 0]  [reads v1]
op0 dense (layer0): dp0 = v0ᵀ · dv1; dp1 = Σrows dv1; no dx  [reads v0]
saved: v0, v1, v3, v5, v6, mask2, mask4
";
        assert_eq!(GradProgram::new(&p).to_string(), want);
    }

    #[test]
    fn alpha_dropout_keeps_zero_mean_and_unit_variance() {
        // For x ~ (0, 1): E[y] = a((1 - r)·0 + r·α') + b = 0 and
        // Var[y] = a²((1 - r)·1 + r(1 - r)α'²) = 1 by the choice of a.
        // A rate exact in f32, so the f64 arithmetic below sees the same rate.
        let rate = 0.25;
        let (a, b) = alpha_dropout_affine(rate as f32);
        let alpha_p = -SELU_LAMBDA_F64 * SELU_ALPHA_F64;
        assert!((a * rate * alpha_p + b).abs() < 1e-12);
        let variance = a * a * ((1.0 - rate) + rate * (1.0 - rate) * alpha_p * alpha_p);
        assert!((variance - 1.0).abs() < 1e-12, "{variance}");
        assert_eq!(alpha_dropout_affine(0.0), (1.0, 0.0));
    }
}
