//! The reference executor (the oracle): `Interp` runs a program over ndarray and implements
//! `backend::Backend`, so it can train for real and be compared with the JIT step by step.
//!
//! It favours plain, checkable code over speed (the JIT is the fast path), but it uses `dot` for
//! every matmul and allocates per op, never per element, so a CIFAR-10 epoch takes seconds in
//! release. The math lives in `exec` (generic over the float type), the update rules in `optim`,
//! the gradient structure in `autodiff`; this file only sequences a training step and keeps the
//! training state. It must not hold model-specific code: everything is driven by the IR.

mod exec;
mod image;
#[cfg(test)]
mod image_tests;
mod real;
#[cfg(test)]
mod tests;

pub use exec::{
    activate, softmax_cross_entropy, softmax_rows, BatchMoments, Executor, LossAndGrads, Pass,
};
pub use real::{erf, Real};

use ndarray::{Array2, ArrayD};

use netc_ir::backend::{Backend, Batch, InputStats, Mode, StepStats, TrainState};
use netc_ir::ir::{OpKind, OptimizerKind, Program};
use netc_ir::{init, optim};

/// Rows converted and run at once by `predict`, to bound memory on large predictions.
const PREDICT_CHUNK: usize = 1024;

/// The reference backend: an `f32` executor plus the optimizer state.
#[derive(Clone, Debug)]
pub struct Interp {
    exec: Executor<f32>,
    slots: Vec<Vec<ArrayD<f32>>>,
    step: u64,
    /// Nadam's running `u_product` after `step` steps (1 for other rules); kept incrementally
    /// and recomputed from the step by `set_state`.
    nadam_u_product: f32,
}

impl Interp {
    /// A backend for `program` with freshly initialized parameters (seed `train.seed`).
    /// `stats` must be given when the program standardizes its input.
    pub fn new(program: &Program, stats: Option<InputStats>) -> Interp {
        let params = init::init_params(program, program.train.seed);
        Interp {
            exec: Executor::new(program, &params, stats),
            slots: optim::initial_slots(program),
            step: 0,
            nadam_u_product: 1.0,
        }
    }

    /// The executor, for forward passes and gradients at the current parameters.
    pub fn executor(&self) -> &Executor<f32> {
        &self.exec
    }

    /// Loss, accuracy and gradients on `batch` at the current state and step, with the dropout
    /// masks the next `train_step` would draw; nothing is updated.
    pub fn loss_and_grads(&self, batch: Batch<'_>) -> LossAndGrads<f32> {
        let x = self.exec.input(batch.pixels);
        self.exec.loss_and_grads(x.view(), batch.labels, self.step)
    }

    /// The logits for `pixels` in `mode`.
    pub fn logits(&self, pixels: &[u8], mode: Mode) -> Array2<f32> {
        let x = self.exec.input(pixels);
        self.exec.forward(x.view(), mode.into())
    }

    fn program(&self) -> &Program {
        self.exec.program()
    }

    /// `moving = moving * momentum + batch * (1 - momentum)` for each batch-norm op.
    fn update_moving_averages(&mut self, moments: &[BatchMoments<f32>]) {
        for m in moments {
            let op = &self.exec.program().ops[m.op as usize];
            let OpKind::BatchNorm {
                moving_mean,
                moving_variance,
                momentum,
                ..
            } = op.kind
            else {
                unreachable!("batch moments come from batch-norm ops");
            };
            let params = self.exec.params_mut();
            for (id, batch) in [(moving_mean, &m.mean), (moving_variance, &m.variance)] {
                let moving = &mut params[id.index()];
                ndarray::Zip::from(moving)
                    .and(batch.view().into_dyn())
                    .for_each(|w, &b| *w = *w * momentum + b * (1.0 - momentum));
            }
        }
    }

    /// Clip each gradient on its own, then apply the optimizer rule to its parameter.
    fn apply_gradients(&mut self, grads: Vec<Option<ArrayD<f32>>>, lr: f32) {
        let optimizer = self.program().train.optimizer.clone();
        let ctx = optim::StepContext {
            step: self.step,
            lr,
            nadam_u_product: self.nadam_u_product,
        };
        for (index, grad) in grads.into_iter().enumerate() {
            let Some(grad) = grad else { continue };
            let mut grad = grad.as_standard_layout().into_owned();
            let g = grad.as_slice_mut().expect("standard layout");
            if let Some(clipnorm) = optimizer.clipnorm {
                optim::clip_by_norm(g, clipnorm);
            }
            let w = self.exec.params_mut()[index]
                .as_slice_mut()
                .expect("parameters are kept in standard layout");
            optim::apply_update(&optimizer.kind, w, g, &mut self.slots[index], &ctx);
        }
    }

    /// Keras `MaxNorm` on every constrained kernel, after the update: per column of a dense
    /// kernel, per filter of a convolution's (its last axis is the columns of its floats).
    fn apply_constraints(&mut self) {
        let constrained: Vec<_> = self
            .program()
            .ops
            .iter()
            .filter_map(|op| match op.kind {
                OpKind::Dense {
                    kernel,
                    max_norm: Some(max),
                    ..
                } => Some((kernel, op.width, max)),
                OpKind::Conv2d {
                    kernel,
                    max_norm: Some(max),
                    ..
                } => Some((kernel, op.shape.channels(), max)),
                _ => None,
            })
            .collect();
        for (kernel, cols, max) in constrained {
            let w = self.exec.params_mut()[kernel.index()]
                .as_slice_mut()
                .expect("parameters are kept in standard layout");
            optim::max_norm(w, cols, max);
        }
    }

    fn nadam_beta_1(&self) -> Option<f32> {
        match self.program().train.optimizer.kind {
            OptimizerKind::Nadam { beta_1, .. } => Some(beta_1),
            _ => None,
        }
    }
}

impl Backend for Interp {
    fn name(&self) -> &'static str {
        "interp"
    }

    fn train_step(&mut self, batch: Batch<'_>, lr: f32) -> StepStats {
        let result = self.loss_and_grads(batch);
        self.update_moving_averages(&result.batch_moments);
        self.apply_gradients(result.grads, lr);
        self.apply_constraints();
        self.step += 1;
        if let Some(beta_1) = self.nadam_beta_1() {
            self.nadam_u_product *= optim::nadam_u(beta_1, self.step);
        }
        StepStats {
            loss: result.loss,
            correct: result.correct,
        }
    }

    fn predict(&mut self, pixels: &[u8], mode: Mode, probs: &mut [f32]) {
        let features = self.program().input.features;
        let classes = self.program().output_width();
        let rows = pixels.len() / features;
        assert!(
            probs.len() >= rows * classes,
            "room for {rows} rows of {classes}"
        );
        for first in (0..rows).step_by(PREDICT_CHUNK) {
            let end = (first + PREDICT_CHUNK).min(rows);
            let x = self.exec.input(&pixels[first * features..end * features]);
            let logits = self.exec.forward_from_row(x.view(), mode.into(), first);
            let p = softmax_rows(logits.view());
            let out = &mut probs[first * classes..end * classes];
            out.copy_from_slice(p.as_slice().expect("fresh arrays are standard layout"));
        }
    }

    fn state(&self) -> TrainState {
        TrainState {
            params: self.exec.params().to_vec(),
            slots: self.slots.clone(),
            step: self.step,
        }
    }

    fn set_state(&mut self, state: &TrainState) {
        self.exec.set_params(&state.params);
        assert_eq!(
            state.slots.len(),
            self.slots.len(),
            "one slot list per parameter"
        );
        for (mine, theirs) in self.slots.iter_mut().zip(&state.slots) {
            assert_eq!(mine.len(), theirs.len(), "optimizer slot count");
            for (m, t) in mine.iter_mut().zip(theirs) {
                assert_eq!(m.shape(), t.shape(), "optimizer slot shape");
                *m = t.as_standard_layout().into_owned();
            }
        }
        self.step = state.step;
        self.nadam_u_product = self
            .nadam_beta_1()
            .map_or(1.0, |beta_1| optim::nadam_u_product(beta_1, state.step));
    }
}
