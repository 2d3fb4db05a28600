//! The fusion decisions of a program, made once (`Fusion::of`) before any call is planned:
//! which activation each forward kernel applies after its own arithmetic, which dense layer's
//! input gradient applies which activation's derivative, which kernel updates ride in their
//! weight gradients, and which of those take a batch norm's `x̂`. The forward and backward call
//! lists, the buffers allocated for them and the values a step leaves readable all read this
//! table; none of them decides a fusion itself.

use std::collections::{BTreeMap, HashMap};

use netc_ir::autodiff::GradProgram;
use netc_ir::ir::{Activation, OpKind, Program};

use crate::elementwise::grad_needs_input;
use crate::kernels::FusedUpdate;

/// The decisions, indexed by op.
pub struct Fusion {
    /// The activation (op `i + 1`) that op `i`'s forward kernel applies: a dense layer's, in its
    /// matmul epilogue, or a batch norm's, after normalizing. The activation op itself then has
    /// no forward call.
    pub forward_activation: Vec<Option<Activation>>,
    /// Whether op `i`'s kernel with a fused activation also stores the activation's input,
    /// because its derivative needs it (`grad_needs_input`; dense layers only, since a batch
    /// norm does not fuse such activations).
    pub store_pre_activation: Vec<bool>,
    /// The activation op whose derivative dense op `i`'s input gradient applies to its result
    /// (`Kernel::InputGrad::activation`): the activation has no backward call.
    pub derivative_in_input_grad: Vec<Option<(u32, Activation)>>,
    /// The dense ops whose kernel update a training step does inside the weight gradient.
    pub updates: HashMap<u32, FusedUpdate>,
    /// The dense ops whose fused weight gradient takes the `x̂` of the batch norm before them,
    /// with that batch norm's op index (`FusedUpdate::normalized`), in program order.
    pub normalized: BTreeMap<u32, u32>,
}

impl Fusion {
    /// The decisions for `program`; `gradients` when the plain backward pass of
    /// `Jit::loss_and_grads` is planned too (it still reads `Wᵀ` where a training step does not).
    pub fn of(program: &Program, grad: &GradProgram, gradients: bool) -> Fusion {
        let ops = &program.ops;
        let n = ops.len();
        let mut forward_activation = vec![None; n];
        let mut store_pre_activation = vec![false; n];
        for (i, pair) in ops.windows(2).enumerate() {
            let OpKind::Activation(a) = pair[1].kind else {
                continue;
            };
            if a == Activation::Softmax
                || a == Activation::Linear
                || pair[1].input != pair[0].output
            {
                continue;
            }
            match pair[0].kind {
                OpKind::Dense { .. } => {
                    forward_activation[i] = Some(a);
                    store_pre_activation[i] = grad_needs_input(a);
                }
                // The batch norm's own output is not kept: its backward pass recomputes `x̂`
                // from its input and statistics.
                OpKind::BatchNorm { .. } if !grad_needs_input(a) => {
                    forward_activation[i] = Some(a);
                }
                _ => {}
            }
        }

        let mut derivative_in_input_grad = vec![None; n];
        for op in ops {
            if !matches!(op.kind, OpKind::Dense { .. }) {
                continue;
            }
            let Some(step) = grad
                .steps
                .iter()
                .find(|s| ops[s.op as usize].output == op.input)
            else {
                continue;
            };
            if let OpKind::Activation(a) = ops[step.op as usize].kind {
                if a != Activation::Linear && a != Activation::Softmax && step.dx.is_some() {
                    derivative_in_input_grad[op.index as usize] = Some((step.op, a));
                }
            }
        }

        let mut updates = fusable(program, grad);
        let mut normalized = BTreeMap::new();
        for pair in ops.windows(2) {
            let (bn, dense) = (&pair[0], &pair[1]);
            let found = matches!(bn.kind, OpKind::BatchNorm { .. })
                && matches!(dense.kind, OpKind::Dense { .. })
                && dense.input == bn.output
                && grad.step_of(bn.index).is_some_and(|s| s.dx.is_none());
            if let Some(update) = updates.get_mut(&dense.index).filter(|_| found) {
                update.normalized = true;
                // A training step no longer reads `Wᵀ`; only the plain backward pass does.
                update.transposed &= gradients;
                normalized.insert(dense.index, bn.index);
            }
        }
        Fusion {
            forward_activation,
            store_pre_activation,
            derivative_in_input_grad,
            updates,
            normalized,
        }
    }

    /// Which values a training forward pass leaves readable, from where each value's buffer is
    /// after it (`cur`): the input of an activation a kernel applied is not, unless stored.
    pub fn train_written(&self, cur: &[usize]) -> Vec<Option<usize>> {
        let mut out: Vec<Option<usize>> = cur.iter().map(|c| Some(*c)).collect();
        for (i, activation) in self.forward_activation.iter().enumerate() {
            // Value `i + 1` is op `i`'s output, the activation's input.
            if activation.is_some() && !self.store_pre_activation[i] {
                out[i + 1] = None;
            }
        }
        out
    }

    /// Whether the backward pass computes the gradient of value `v`: not for the input of an
    /// activation whose derivative a dense layer's input gradient applies, which writes the
    /// gradient of the activation's input instead.
    pub fn grad_written(&self, program: &Program, grad: &GradProgram, v: usize) -> bool {
        let input_of_dense = |op: u32| {
            let op = &program.ops[op as usize];
            op.input.0 as usize == v && self.derivative_in_input_grad[op.index as usize].is_some()
        };
        grad.head.logits.0 as usize == v
            || grad
                .steps
                .iter()
                .any(|s| s.dx.is_some_and(|x| x.0 as usize == v) && !input_of_dense(s.op))
    }
}

/// Which dense ops' kernel updates a training step does inside the weight gradient: every one
/// whose update is element-wise (no clipping by the norm, penalty or max-norm constraint, which
/// need the whole gradient or add to the shared loss).
fn fusable(program: &Program, grad: &GradProgram) -> HashMap<u32, FusedUpdate> {
    let optimizer = &program.train.optimizer;
    if optimizer.clipnorm.is_some() {
        return HashMap::new();
    }
    program
        .ops
        .iter()
        .filter_map(|op| match op.kind {
            OpKind::Dense {
                kernel,
                regularizer,
                max_norm,
                ..
            } if regularizer.is_zero()
                && max_norm.is_none()
                && program.params[kernel.index()].trainable =>
            {
                let transposed = grad.step_of(op.index).is_some_and(|s| s.dx.is_some());
                Some((
                    op.index,
                    FusedUpdate {
                        kind: optimizer.kind,
                        transposed,
                        normalized: false,
                    },
                ))
            }
            _ => None,
        })
        .collect()
}
