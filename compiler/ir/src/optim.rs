//! The optimizer update rules of `ir::OptimizerKind`, gradient clipping, the kernel regularizer
//! and the max-norm constraint, as plain functions over `f32` slices, with Keras 3's formulas.
//!
//! These functions are the definition every backend is held to: the reference executor calls
//! them, and the JIT's tests compare its generated code against them. They know nothing about
//! ops, batches or layers, and they must stay free of any backend state: everything a rule reads
//! besides the parameter, its gradient and its slots is derived from the step counter by the
//! helpers here (`AdamStep`, `NadamStep`), which backends call on the host once per step.
//!
//! Per-step scalars (bias corrections, Nadam's momentum cache) are computed in `f64` and rounded
//! to `f32` once; element-wise arithmetic is `f32`, as in Keras.

use ndarray::ArrayD;

use crate::ir::{OptimizerKind, Program, Regularizer};

/// Keras' `backend.epsilon()`, used by the max-norm constraint.
pub const KERAS_EPSILON: f32 = 1e-7;

/// Nadam's momentum-cache decay base. Keras 3 uses `u_t = β1 (1 - 0.5 · 0.96^t)`; tf.keras 2
/// used `0.96^(0.004 t)`, which is not what Keras 3 computes.
pub const NADAM_DECAY: f64 = 0.96;

/// The optimizer state of every parameter at the start of training, indexed like
/// `Program::params`: `kind.slot_count()` arrays of the parameter's shape for trainable
/// parameters, none for the others. Slot order per rule:
///
/// - SGD with momentum: `[velocity]`;
/// - Adam, AdamW, Nadam: `[m, v]` (first and second moments);
/// - RMSprop: `[velocity]`, then `momentum` if `momentum > 0`, then `average_gradient` if
///   centered;
/// - Adagrad: `[accumulator]`, starting at `initial_accumulator`; every other slot starts at 0.
pub fn initial_slots(program: &Program) -> Vec<Vec<ArrayD<f32>>> {
    let kind = program.train.optimizer.kind;
    let fill = match kind {
        OptimizerKind::Adagrad {
            initial_accumulator,
            ..
        } => initial_accumulator,
        _ => 0.0,
    };
    program
        .params
        .iter()
        .map(|param| {
            if !param.trainable {
                return Vec::new();
            }
            let shape = ndarray::IxDyn(&param.shape);
            (0..kind.slot_count())
                .map(|_| ArrayD::from_elem(shape.clone(), fill))
                .collect()
        })
        .collect()
}

/// Everything a rule needs besides the parameter, its gradient and its slots, for one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepContext {
    /// Steps taken before this one (`TrainState::step`); Keras' `iterations`.
    pub step: u64,
    /// Learning rate of this step, after the schedule.
    pub lr: f32,
    /// Nadam's `u_product` before this step: `nadam_u_product(beta_1, step)`. Ignored by the
    /// other rules.
    pub nadam_u_product: f32,
}

/// One update of parameter `w` by the rule `kind`, with `slots` ordered as `initial_slots`
/// documents. `g` is the gradient after regularization and clipping.
pub fn apply_update(
    kind: &OptimizerKind,
    w: &mut [f32],
    g: &[f32],
    slots: &mut [ArrayD<f32>],
    ctx: &StepContext,
) {
    let mut slices: Vec<&mut [f32]> = slots
        .iter_mut()
        .map(|s| s.as_slice_mut().expect("optimizer slots are contiguous"))
        .collect();
    match *kind {
        OptimizerKind::Sgd { momentum, nesterov } => {
            let velocity = slices.pop();
            sgd_update(w, g, velocity, ctx.lr, momentum, nesterov);
        }
        OptimizerKind::Adam {
            beta_1,
            beta_2,
            epsilon,
        } => {
            let [m, v] = two_slots(&mut slices);
            let step = AdamStep::new(ctx.step, ctx.lr, beta_1, beta_2);
            adam_update(w, g, m, v, &step, epsilon);
        }
        OptimizerKind::AdamW {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
        } => {
            decoupled_weight_decay(w, ctx.lr, weight_decay);
            let [m, v] = two_slots(&mut slices);
            let step = AdamStep::new(ctx.step, ctx.lr, beta_1, beta_2);
            adam_update(w, g, m, v, &step, epsilon);
        }
        OptimizerKind::Nadam {
            beta_1,
            beta_2,
            epsilon,
        } => {
            let [m, v] = two_slots(&mut slices);
            let step = NadamStep::new(ctx.step, ctx.lr, beta_1, beta_2, ctx.nadam_u_product);
            nadam_update(w, g, m, v, &step, epsilon);
        }
        OptimizerKind::RmsProp {
            rho,
            momentum,
            epsilon,
            centered,
        } => {
            let mut rest = slices.into_iter();
            let velocity = rest.next().expect("rmsprop keeps a velocity slot");
            let momentum_slot = if momentum > 0.0 { rest.next() } else { None };
            let average = if centered { rest.next() } else { None };
            let slots = RmsPropSlots {
                velocity,
                momentum: momentum_slot,
                average_gradient: average,
            };
            let hyper = RmsProp {
                rho,
                momentum,
                epsilon,
            };
            rmsprop_update(w, g, slots, ctx.lr, &hyper);
        }
        OptimizerKind::Adagrad { epsilon, .. } => {
            let accumulator = slices.pop().expect("adagrad keeps an accumulator slot");
            adagrad_update(w, g, accumulator, ctx.lr, epsilon);
        }
    }
}

fn two_slots<'a>(slices: &'a mut [&mut [f32]]) -> [&'a mut [f32]; 2] {
    match slices {
        [m, v] => [&mut **m, &mut **v],
        _ => panic!("rule expects 2 slots, got {}", slices.len()),
    }
}

/// Keras 3 SGD. With `velocity` (momentum > 0):
/// `velocity = momentum * velocity - lr * g`, then `w += velocity`, or with Nesterov
/// `w += momentum * velocity - lr * g` (using the new velocity). Without: `w -= lr * g`.
pub fn sgd_update(
    w: &mut [f32],
    g: &[f32],
    velocity: Option<&mut [f32]>,
    lr: f32,
    momentum: f32,
    nesterov: bool,
) {
    match velocity {
        Some(velocity) => {
            for ((w, &g), v) in w.iter_mut().zip(g).zip(velocity.iter_mut()) {
                *v = *v * momentum - g * lr;
                if nesterov {
                    *w += *v * momentum - g * lr;
                } else {
                    *w += *v;
                }
            }
        }
        None => {
            for (w, &g) in w.iter_mut().zip(g) {
                *w -= g * lr;
            }
        }
    }
}

/// The step-dependent scalars of Adam (and AdamW): with `t = step + 1`,
/// `alpha = lr * sqrt(1 - β2^t) / (1 - β1^t)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamStep {
    /// The bias-corrected step size `lr * sqrt(1 - β2^t) / (1 - β1^t)`.
    pub alpha: f32,
    /// Decay of the first moment `m`.
    pub beta_1: f32,
    /// Decay of the second moment `v`.
    pub beta_2: f32,
}

impl AdamStep {
    /// The scalars of 0-based step `step` (so `t = step + 1`) at learning rate `lr`.
    pub fn new(step: u64, lr: f32, beta_1: f32, beta_2: f32) -> AdamStep {
        let t = (step + 1) as f64;
        let (b1, b2) = (f64::from(beta_1), f64::from(beta_2));
        let alpha = f64::from(lr) * (1.0 - b2.powf(t)).sqrt() / (1.0 - b1.powf(t));
        AdamStep {
            alpha: alpha as f32,
            beta_1,
            beta_2,
        }
    }
}

/// Keras 3 Adam: `m += (g - m) * (1 - β1)`; `v += (g² - v) * (1 - β2)`;
/// `w -= alpha * m / (sqrt(v) + epsilon)` with `alpha` from `AdamStep`.
pub fn adam_update(
    w: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    step: &AdamStep,
    epsilon: f32,
) {
    let (one_minus_b1, one_minus_b2) = (1.0 - step.beta_1, 1.0 - step.beta_2);
    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m += (g - *m) * one_minus_b1;
        *v += (g * g - *v) * one_minus_b2;
        *w -= step.alpha * *m / (v.sqrt() + epsilon);
    }
}

/// AdamW's decoupled weight decay, applied before the Adam step (Keras 3 applies it in
/// `_apply_weight_decay`, ahead of `update_step`): `w -= w * weight_decay * lr`.
pub fn decoupled_weight_decay(w: &mut [f32], lr: f32, weight_decay: f32) {
    let factor = weight_decay * lr;
    for w in w {
        *w -= *w * factor;
    }
}

/// Nadam's momentum cache for (1-based) step `t`: `u_t = β1 (1 - 0.5 · 0.96^t)`.
pub fn nadam_u(beta_1: f32, t: u64) -> f32 {
    (f64::from(beta_1) * (1.0 - 0.5 * NADAM_DECAY.powf(t as f64))) as f32
}

/// Nadam's `u_product` after `steps` steps: `u_1 · u_2 · ... · u_steps` (1 when no step was
/// taken), multiplied in `f32` in step order, exactly as a backend does it incrementally
/// (`u_product = u_product * nadam_u(β1, step + 1)` after each step), so both agree bit for bit.
pub fn nadam_u_product(beta_1: f32, steps: u64) -> f32 {
    (1..=steps).fold(1.0f32, |product, t| product * nadam_u(beta_1, t))
}

/// The step-dependent scalars of Nadam, with `t = step + 1`:
/// `u_t = nadam_u(β1, t)`, `u_t1 = nadam_u(β1, t + 1)`, `u_product_t = u_product_prev * u_t`,
/// `u_product_t1 = u_product_t * u_t1`, and the bias correction `1 - β2^t`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NadamStep {
    /// Learning rate of this step.
    pub lr: f32,
    /// Decay of the first moment `m`.
    pub beta_1: f32,
    /// Decay of the second moment `v`.
    pub beta_2: f32,
    /// Momentum cache of this step, `nadam_u(β1, t)`.
    pub u_t: f32,
    /// Momentum cache of the next step, `nadam_u(β1, t + 1)`.
    pub u_t1: f32,
    /// Product of the momentum caches up to this step, `u_1 · ... · u_t`.
    pub u_product_t: f32,
    /// Product of the momentum caches up to the next step, `u_1 · ... · u_t1`.
    pub u_product_t1: f32,
    /// The second moment's bias correction, `1 - β2^t`.
    pub one_minus_beta_2_power: f32,
}

impl NadamStep {
    /// `u_product_prev` is `nadam_u_product(beta_1, step)`.
    pub fn new(step: u64, lr: f32, beta_1: f32, beta_2: f32, u_product_prev: f32) -> NadamStep {
        let t = step + 1;
        let u_t = nadam_u(beta_1, t);
        let u_t1 = nadam_u(beta_1, t + 1);
        let u_product_t = u_product_prev * u_t;
        NadamStep {
            lr,
            beta_1,
            beta_2,
            u_t,
            u_t1,
            u_product_t,
            u_product_t1: u_product_t * u_t1,
            one_minus_beta_2_power: (1.0 - f64::from(beta_2).powf(t as f64)) as f32,
        }
    }
}

/// Keras 3 Nadam: `m += (g - m) * (1 - β1)`; `v += (g² - v) * (1 - β2)`;
/// `m_hat = u_t1 * m / (1 - u_product_t1) + (1 - u_t) * g / (1 - u_product_t)`;
/// `v_hat = v / (1 - β2^t)`; `w -= lr * m_hat / (sqrt(v_hat) + epsilon)`.
pub fn nadam_update(
    w: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    step: &NadamStep,
    epsilon: f32,
) {
    let (one_minus_b1, one_minus_b2) = (1.0 - step.beta_1, 1.0 - step.beta_2);
    let (m_denominator, g_denominator) = (1.0 - step.u_product_t1, 1.0 - step.u_product_t);
    let one_minus_u_t = 1.0 - step.u_t;
    for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        *m += (g - *m) * one_minus_b1;
        *v += (g * g - *v) * one_minus_b2;
        let m_hat = step.u_t1 * *m / m_denominator + one_minus_u_t * g / g_denominator;
        let v_hat = *v / step.one_minus_beta_2_power;
        *w -= step.lr * m_hat / (v_hat.sqrt() + epsilon);
    }
}

/// RMSprop's hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RmsProp {
    /// Decay of the moving average of `g²`.
    pub rho: f32,
    /// Momentum on the increments; 0 for none.
    pub momentum: f32,
    /// Added to the moving average under the square root, for stability.
    pub epsilon: f32,
}

/// RMSprop's slots: `momentum` is present iff `momentum > 0`, `average_gradient` iff centered.
#[derive(Debug)]
pub struct RmsPropSlots<'a> {
    /// Moving average of `g²`.
    pub velocity: &'a mut [f32],
    /// Momentum of the increments, when `momentum > 0`.
    pub momentum: Option<&'a mut [f32]>,
    /// Moving average of `g`, when centered.
    pub average_gradient: Option<&'a mut [f32]>,
}

/// Keras 3 RMSprop: `velocity = ρ velocity + (1 - ρ) g²`; centered:
/// `average = ρ average + (1 - ρ) g` and `denominator = velocity - average² + ε`, otherwise
/// `denominator = velocity + ε`; `increment = lr * g / sqrt(denominator)`; with momentum
/// `mom = momentum * mom + increment; w -= mom`, otherwise `w -= increment`.
pub fn rmsprop_update(w: &mut [f32], g: &[f32], slots: RmsPropSlots<'_>, lr: f32, hyper: &RmsProp) {
    let RmsPropSlots {
        velocity,
        mut momentum,
        mut average_gradient,
    } = slots;
    let rho = hyper.rho;
    for (i, ((w, &g), vel)) in w.iter_mut().zip(g).zip(velocity.iter_mut()).enumerate() {
        *vel = rho * *vel + (1.0 - rho) * (g * g);
        let denominator = match average_gradient.as_deref_mut() {
            Some(average) => {
                average[i] = rho * average[i] + (1.0 - rho) * g;
                *vel - average[i] * average[i] + hyper.epsilon
            }
            None => *vel + hyper.epsilon,
        };
        let increment = lr * g / denominator.sqrt();
        match momentum.as_deref_mut() {
            Some(mom) => {
                mom[i] = hyper.momentum * mom[i] + increment;
                *w -= mom[i];
            }
            None => *w -= increment,
        }
    }
}

/// Keras 3 Adagrad: `accumulator += g²`; `w -= lr * g / sqrt(accumulator + ε)`.
pub fn adagrad_update(w: &mut [f32], g: &[f32], accumulator: &mut [f32], lr: f32, epsilon: f32) {
    for ((w, &g), acc) in w.iter_mut().zip(g).zip(accumulator.iter_mut()) {
        *acc += g * g;
        *w -= lr * g / (*acc + epsilon).sqrt();
    }
}

/// Keras `clipnorm`, applied to one parameter's gradient on its own:
/// `g = g * clipnorm / max(‖g‖₂, clipnorm)`, so gradients already within the norm keep their
/// values (up to rounding) and longer ones are rescaled to norm `clipnorm`.
pub fn clip_by_norm(g: &mut [f32], clipnorm: f32) {
    let norm = g
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt() as f32;
    let denominator = norm.max(clipnorm);
    for x in g {
        *x = *x * clipnorm / denominator;
    }
}

/// The penalty `l1 Σ|w| + l2 Σw²` that a regularized kernel adds to the loss.
pub fn regularizer_penalty(w: &[f32], regularizer: Regularizer) -> f32 {
    let (l1, l2) = (f64::from(regularizer.l1), f64::from(regularizer.l2));
    w.iter()
        .map(|&x| {
            let x = f64::from(x);
            l1 * x.abs() + l2 * x * x
        })
        .sum::<f64>() as f32
}

/// Adds the penalty's gradient `l1 sign(w) + 2 l2 w` (with `sign(0) = 0`) to `g`; it is added
/// before clipping, as Keras differentiates the total loss.
pub fn add_regularizer_grad(g: &mut [f32], w: &[f32], regularizer: Regularizer) {
    let Regularizer { l1, l2 } = regularizer;
    for (g, &w) in g.iter_mut().zip(w) {
        *g += l1 * sign(w) + 2.0 * l2 * w;
    }
}

/// `sign` with `sign(0) = 0`, as TensorFlow's (Rust's `signum` gives ±1 at ±0).
pub fn sign(x: f32) -> f32 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Keras `MaxNorm(max_value, axis=0)` on a row-major `[rows, cols]` kernel, after the update:
/// for every column `j` (the weights into unit `j`), with `n` its L2 norm,
/// `w[:, j] *= clip(n, 0, max_value) / (1e-7 + n)`. Note that Keras applies the factor to every
/// column, so columns under the limit shrink by the tiny factor `n / (n + 1e-7)`.
pub fn max_norm(kernel: &mut [f32], cols: usize, max_value: f32) {
    assert_eq!(
        kernel.len() % cols,
        0,
        "kernel length is a multiple of its columns"
    );
    let mut norms = vec![0f64; cols];
    for row in kernel.chunks_exact(cols) {
        for (n, &w) in norms.iter_mut().zip(row) {
            *n += f64::from(w) * f64::from(w);
        }
    }
    let factors: Vec<f32> = norms
        .iter()
        .map(|&sum| {
            let n = sum.sqrt() as f32;
            n.clamp(0.0, max_value) / (KERAS_EPSILON + n)
        })
        .collect();
    for row in kernel.chunks_exact_mut(cols) {
        for (w, &f) in row.iter_mut().zip(&factors) {
            *w *= f;
        }
    }
}

#[cfg(test)]
mod tests {
    //! Expected values are worked out by hand (in the comments) from the formulas above, in
    //! exact arithmetic; the comparisons allow f32 rounding only.

    use super::*;

    fn assert_all_close(got: &[f32], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let tolerance = 2e-6 * w.abs().max(1.0);
            assert!(
                (f64::from(g) - w).abs() <= tolerance,
                "element {i}: got {g}, want {w} (all: {got:?} vs {want:?})"
            );
        }
    }

    #[test]
    fn sgd_without_momentum() {
        // w = [1, -2], g = [0.5, 1], lr = 0.1: w - 0.1 g = [0.95, -2.1]; again: [0.9, -2.2].
        let mut w = [1.0, -2.0];
        sgd_update(&mut w, &[0.5, 1.0], None, 0.1, 0.0, false);
        assert_all_close(&w, &[0.95, -2.1]);
        sgd_update(&mut w, &[0.5, 1.0], None, 0.1, 0.0, false);
        assert_all_close(&w, &[0.9, -2.2]);
    }

    #[test]
    fn sgd_with_momentum_and_nesterov() {
        // momentum 0.9, lr 0.1, g = 1 twice, w = 0.
        // Plain: v1 = -0.1, w1 = -0.1; v2 = -0.09 - 0.1 = -0.19, w2 = -0.29.
        let (mut w, mut v) = ([0.0f32], [0.0f32]);
        sgd_update(&mut w, &[1.0], Some(&mut v), 0.1, 0.9, false);
        assert_all_close(&w, &[-0.1]);
        sgd_update(&mut w, &[1.0], Some(&mut v), 0.1, 0.9, false);
        assert_all_close(&w, &[-0.29]);
        assert_all_close(&v, &[-0.19]);
        // Nesterov: v1 = -0.1, w1 = 0.9·(-0.1) - 0.1 = -0.19;
        // v2 = -0.19, w2 = -0.19 + 0.9·(-0.19) - 0.1 = -0.461.
        let (mut w, mut v) = ([0.0f32], [0.0f32]);
        sgd_update(&mut w, &[1.0], Some(&mut v), 0.1, 0.9, true);
        assert_all_close(&w, &[-0.19]);
        sgd_update(&mut w, &[1.0], Some(&mut v), 0.1, 0.9, true);
        assert_all_close(&w, &[-0.461]);
    }

    fn adam_kind() -> OptimizerKind {
        OptimizerKind::Adam {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
        }
    }

    fn run(kind: OptimizerKind, w: &mut [f32], grads: &[&[f32]], lr: f32) -> Vec<ArrayD<f32>> {
        let mut slots: Vec<ArrayD<f32>> = (0..kind.slot_count())
            .map(|_| ArrayD::zeros(ndarray::IxDyn(&[w.len()])))
            .collect();
        if let OptimizerKind::Adagrad {
            initial_accumulator,
            ..
        } = kind
        {
            slots[0].fill(initial_accumulator);
        }
        let beta_1 = match kind {
            OptimizerKind::Nadam { beta_1, .. } => beta_1,
            _ => 0.0,
        };
        for (step, g) in grads.iter().enumerate() {
            let step = step as u64;
            let ctx = StepContext {
                step,
                lr,
                nadam_u_product: nadam_u_product(beta_1, step),
            };
            apply_update(&kind, w, g, &mut slots, &ctx);
        }
        slots
    }

    #[test]
    fn adam_two_steps() {
        // Step 1, g = [1, -0.5]: m = 0.1 g, v = 0.001 g², alpha = 0.01·sqrt(0.001)/0.1, so
        // w -= alpha·m/(sqrt v + ε) = 0.01·sign(g) up to ε: w = [0.99, 2.01] (ε shifts it by
        // 1e-7·alpha·0.1/(sqrt(0.001)|g|)², negligible at f32 precision here).
        // Step 2, g = [0.5, -0.5]:
        //   m = 0.9·0.1 + 0.1·0.5 = 0.14, -0.045 - 0.05 = -0.095;
        //   v = 0.999·0.001 + 0.001·0.25 = 0.001249, 0.999·0.00025 + 0.00025 = 0.00049975;
        //   alpha = 0.01·sqrt(1 - 0.999²)/(1 - 0.81) = 0.01·0.0447101778/0.19 = 0.00235316725;
        //   Δ = alpha·0.14/sqrt(0.001249) = 0.00235316725·3.96135 = 0.0093217...,
        //       alpha·(-0.095)/sqrt(0.00049975) = -0.0100001... (ε included below).
        let mut w = [1.0f32, 2.0];
        let slots = run(adam_kind(), &mut w, &[&[1.0, -0.5], &[0.5, -0.5]], 0.01);
        let alpha2 = 0.01 * (1.0 - 0.999f64.powi(2)).sqrt() / (1.0 - 0.9f64.powi(2));
        let step1 = |g: f64| {
            let alpha1 = 0.01 * (1.0 - 0.999f64).sqrt() / 0.1;
            alpha1 * 0.1 * g / ((0.001 * g * g).sqrt() + 1e-7)
        };
        let w0 = 1.0 - step1(1.0) - alpha2 * 0.14 / (0.001249f64.sqrt() + 1e-7);
        let w1 = 2.0 - step1(-0.5) + alpha2 * 0.095 / (0.00049975f64.sqrt() + 1e-7);
        assert_all_close(&w, &[w0, w1]);
        assert!((w0 - (0.99 - 0.0093217)).abs() < 1e-6, "{w0}");
        assert_all_close(slots[0].as_slice().unwrap(), &[0.14, -0.095]);
        assert_all_close(slots[1].as_slice().unwrap(), &[0.001249, 0.00049975]);
    }

    #[test]
    fn adamw_decays_before_the_adam_step() {
        // One step, w = 2, g = 0, lr = 0.1, weight_decay = 0.5: decay gives 2 - 2·0.05 = 1.9,
        // and Adam with a zero gradient leaves it there (m = v = 0, 0/(0 + ε) = 0).
        let kind = OptimizerKind::AdamW {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            weight_decay: 0.5,
        };
        let mut w = [2.0f32];
        run(kind, &mut w, &[&[0.0]], 0.1);
        assert_all_close(&w, &[1.9]);
        // With a gradient, Adam's first step is lr·sign(g) = 0.1 (ε negligible), taken from the
        // decayed weight: 1.9 - 0.1 = 1.8.
        let mut w = [2.0f32];
        run(kind, &mut w, &[&[1.0]], 0.1);
        assert_all_close(&w, &[1.8]);
    }

    #[test]
    fn nadam_two_steps() {
        // β1 = 0.9, β2 = 0.999, lr = 0.01, w = 1, g = 1 then 2.
        // u1 = 0.9(1 - 0.5·0.96) = 0.468, u2 = 0.9(1 - 0.5·0.9216) = 0.48528,
        // u3 = 0.9(1 - 0.5·0.884736) = 0.5018688.
        // Step 1: u_product_t = 0.468, u_product_t1 = 0.468·0.48528 = 0.22711104;
        //   m = 0.1, v = 0.001;
        //   m_hat = 0.48528·0.1/(1 - 0.22711104) + (1 - 0.468)·1/(1 - 0.468)
        //         = 0.0627885... + 1 = 1.0627885...;
        //   v_hat = 0.001/0.001 = 1; w = 1 - 0.01·m_hat/(1 + ε) = 0.989372115...
        let b1 = 0.9f64;
        let u = |t: i32| b1 * (1.0 - 0.5 * 0.96f64.powi(t));
        assert!((u(1) - 0.468).abs() < 1e-12 && (u(2) - 0.48528).abs() < 1e-12);
        let kind = OptimizerKind::Nadam {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
        };
        let mut w = [1.0f32];
        run(kind, &mut w, &[&[1.0]], 0.01);
        let m_hat1: f64 = 0.48528 * 0.1 / (1.0 - 0.468 * 0.48528) + 1.0;
        let w1 = 1.0 - 0.01 * m_hat1 / (1.0 + 1e-7);
        assert!((w1 - 0.989_372_115).abs() < 1e-8, "{w1}");
        assert_all_close(&w, &[w1]);
        // Step 2, g = 2: m = 0.09 + 0.2 = 0.29, v = 0.000999 + 0.004 = 0.004999;
        //   u_product_t = 0.22711104, u_product_t1 = 0.22711104·u3;
        //   m_hat = u3·0.29/(1 - u_product_t1) + (1 - u2)·2/(1 - 0.22711104);
        //   v_hat = 0.004999/(1 - 0.999²) = 0.004999/0.001999.
        let mut w = [1.0f32];
        let slots = run(kind, &mut w, &[&[1.0], &[2.0]], 0.01);
        let p2 = 0.468 * 0.48528;
        let m_hat2 = u(3) * 0.29 / (1.0 - p2 * u(3)) + (1.0 - u(2)) * 2.0 / (1.0 - p2);
        let v_hat2: f64 = 0.004999 / 0.001999;
        let w2 = w1 - 0.01 * m_hat2 / (v_hat2.sqrt() + 1e-7);
        assert_all_close(&w, &[w2]);
        assert_all_close(slots[0].as_slice().unwrap(), &[0.29]);
        assert_all_close(slots[1].as_slice().unwrap(), &[0.004999]);
    }

    #[test]
    fn nadam_u_product_is_the_running_product() {
        assert_eq!(nadam_u_product(0.9, 0), 1.0);
        let incremental = (1..=50).fold(1.0f32, |p, t| p * nadam_u(0.9, t));
        assert_eq!(nadam_u_product(0.9, 50), incremental);
        assert!((f64::from(nadam_u_product(0.9, 2)) - 0.468 * 0.48528).abs() < 1e-7);
    }

    #[test]
    fn rmsprop_plain_centered_and_with_momentum() {
        // ρ = 0.9, lr = 0.01, ε = 1e-7, w = 1, g = 1 then 2.
        // Plain: vel1 = 0.1, w1 = 1 - 0.01/sqrt(0.1 + ε);
        //        vel2 = 0.09 + 0.4 = 0.49, w2 = w1 - 0.02/sqrt(0.49 + ε) = w1 - 0.0285714.
        let rmsprop = |momentum: f32, centered: bool| OptimizerKind::RmsProp {
            rho: 0.9,
            momentum,
            epsilon: 1e-7,
            centered,
        };
        let plain = rmsprop(0.0, false);
        let mut w = [1.0f32];
        run(plain, &mut w, &[&[1.0], &[2.0]], 0.01);
        let inc1 = 0.01 / (0.1f64 + 1e-7).sqrt();
        let inc2 = 0.02 / (0.49f64 + 1e-7).sqrt();
        assert_all_close(&w, &[1.0 - inc1 - inc2]);

        // Centered: avg1 = 0.1, denominator1 = 0.1 - 0.01 + ε = 0.09;
        //           avg2 = 0.09 + 0.2 = 0.29, denominator2 = 0.49 - 0.0841 + ε = 0.4059.
        let centered = rmsprop(0.0, true);
        let mut w = [1.0f32];
        let slots = run(centered, &mut w, &[&[1.0], &[2.0]], 0.01);
        let c1 = 0.01 / (0.09f64 + 1e-7).sqrt();
        let c2 = 0.02 / (0.4059f64 + 1e-7).sqrt();
        assert_all_close(&w, &[1.0 - c1 - c2]);
        assert_all_close(slots[0].as_slice().unwrap(), &[0.49]);
        assert_all_close(slots[1].as_slice().unwrap(), &[0.29]);

        // Momentum 0.5: mom1 = inc1, w1 = 1 - inc1; mom2 = 0.5·inc1 + inc2, w2 = w1 - mom2.
        let with_momentum = rmsprop(0.5, false);
        let mut w = [1.0f32];
        run(with_momentum, &mut w, &[&[1.0], &[2.0]], 0.01);
        assert_all_close(&w, &[1.0 - inc1 - (0.5 * inc1 + inc2)]);

        // Momentum and centered together: slots are [velocity, momentum, average].
        let both = rmsprop(0.5, true);
        let mut w = [1.0f32];
        let slots = run(both, &mut w, &[&[1.0], &[2.0]], 0.01);
        assert_all_close(&w, &[1.0 - c1 - (0.5 * c1 + c2)]);
        assert_all_close(slots[1].as_slice().unwrap(), &[0.5 * c1 + c2]);
        assert_all_close(slots[2].as_slice().unwrap(), &[0.29]);
    }

    #[test]
    fn adagrad_two_steps() {
        // initial accumulator 0.1, lr 0.1, ε = 1e-7, g = 1 then 2:
        // acc1 = 1.1, w1 = 1 - 0.1/sqrt(1.1 + ε); acc2 = 5.1, w2 = w1 - 0.2/sqrt(5.1 + ε).
        let kind = OptimizerKind::Adagrad {
            initial_accumulator: 0.1,
            epsilon: 1e-7,
        };
        let mut w = [1.0f32];
        let slots = run(kind, &mut w, &[&[1.0], &[2.0]], 0.1);
        let want = 1.0 - 0.1 / (1.1f64 + 1e-7).sqrt() - 0.2 / (5.1f64 + 1e-7).sqrt();
        assert_all_close(&w, &[want]);
        assert_all_close(slots[0].as_slice().unwrap(), &[5.1]);
    }

    #[test]
    fn clipnorm_rescales_only_long_gradients() {
        // ‖[3, 4]‖ = 5 > 1: rescaled to [0.6, 0.8]. ‖[0.3, 0.4]‖ = 0.5 ≤ 1: unchanged.
        let mut g = [3.0f32, 4.0];
        clip_by_norm(&mut g, 1.0);
        assert_all_close(&g, &[0.6, 0.8]);
        let mut g = [0.3f32, 0.4];
        clip_by_norm(&mut g, 1.0);
        assert_all_close(&g, &[0.3, 0.4]);
        let mut zero = [0.0f32; 3];
        clip_by_norm(&mut zero, 1.0);
        assert_eq!(zero, [0.0; 3]);
    }

    #[test]
    fn max_norm_rescales_columns() {
        // Kernel [2, 2] = [[3, 0.3], [4, 0.4]]: column 0 has norm 5 → scaled by 2/(5 + 1e-7);
        // column 1 has norm 0.5 → factor 0.5/(0.5 + 1e-7), almost 1.
        let mut kernel = [3.0f32, 0.3, 4.0, 0.4];
        max_norm(&mut kernel, 2, 2.0);
        let f0 = 2.0 / (5.0 + 1e-7);
        let f1 = 0.5 / (0.5 + 1e-7);
        assert_all_close(&kernel, &[3.0 * f0, 0.3 * f1, 4.0 * f0, 0.4 * f1]);
        let norm0 = (kernel[0] * kernel[0] + kernel[2] * kernel[2]).sqrt();
        assert!((norm0 - 2.0).abs() < 1e-6);
    }

    #[test]
    fn regularizer_penalty_and_gradient() {
        // l1 = 0.1, l2 = 0.01, w = [2, -1, 0]: penalty 0.1·3 + 0.01·5 = 0.35;
        // gradient 0.1·sign(w) + 0.02·w = [0.14, -0.12, 0].
        let reg = Regularizer { l1: 0.1, l2: 0.01 };
        let w = [2.0f32, -1.0, 0.0];
        assert!((regularizer_penalty(&w, reg) - 0.35).abs() < 1e-6);
        let mut g = [1.0f32, 1.0, 1.0];
        add_regularizer_grad(&mut g, &w, reg);
        assert_all_close(&g, &[1.14, 0.88, 1.0]);
    }

    #[test]
    fn initial_slots_follow_the_rule() {
        let mut program = crate::testing::program(
            3,
            &[
                crate::testing::Layer::BatchNorm,
                crate::testing::Layer::Dense(2),
            ],
        );
        program.train.optimizer.kind = OptimizerKind::Adagrad {
            initial_accumulator: 0.1,
            epsilon: 1e-7,
        };
        let slots = initial_slots(&program);
        for (param, slots) in program.params.iter().zip(&slots) {
            if param.trainable {
                assert_eq!(slots.len(), 1, "{}", param.name);
                assert_eq!(slots[0].shape(), &param.shape[..]);
                assert!(slots[0].iter().all(|&x| x == 0.1));
            } else {
                assert!(slots.is_empty(), "{}", param.name);
            }
        }
        program.train.optimizer.kind = adam_kind();
        assert!(initial_slots(&program)
            .iter()
            .flatten()
            .all(|s| s.iter().all(|&x| x == 0.0)));
    }
}
