//! The element-wise generators every kernel shares: activations and their derivatives on one
//! f32x4 (`act_forward`, `act_backward`), the optimizer update rules (`update_rule`, with the
//! per-step scalars of `update_scalars`), and the 4 × 4 transposed store of kernel rows into
//! columns of a transposed copy (`store_as_columns`). The kernel emitters (`kernels`) and the
//! matrix multiplies' epilogues and fused updates (`matmul`) both call them, so an update fused
//! into a weight gradient computes exactly what the update kernel computes; neither of those
//! modules depends on the other through here.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::types::F32X4;
use cranelift_codegen::ir::{InstBuilder, Value};

use super::emit::{rw, Fx};
use super::math;
use netc_ir::ir::{Activation, OptimizerKind, SELU_ALPHA, SELU_LAMBDA};

/// Indices into the per-call scalar array of an update kernel; the host fills them per step.
pub mod update_scalars {
    pub const LR: usize = 0;
    /// Adam/AdamW: `lr · √(1 - β2^t) / (1 - β1^t)`. Nadam: `u_{t+1} / (1 - Π u_{..t+1})`.
    pub const C1: usize = 1;
    /// Nadam: `(1 - u_t) / (1 - Π u_{..t})`.
    pub const C2: usize = 2;
    /// Nadam: `1 / (1 - β2^t)`. A product where Keras divides: each update then takes one
    /// division and one square root, which share one divider unit and bound Nadam's time.
    pub const C3: usize = 3;
    /// The rows of the whole call, for the kernels whose shares of the rows compute statistics
    /// over all of them (`Kernel::BatchNorm::by_rows`); set by the executor for every call.
    pub const ROWS: usize = 4;
    pub const COUNT: usize = 5;
    /// The update rules' scalars: those before `ROWS`.
    pub const RULE: usize = ROWS;
}

/// Whether the derivative of `act` is computed from its input (else from its output).
pub fn grad_needs_input(act: Activation) -> bool {
    matches!(act, Activation::Gelu | Activation::Swish)
}

/// An element-wise activation of one f32x4 (softmax is row-wise and has its own kernel).
pub fn act_forward(fx: &mut Fx, act: Activation, x: Value) -> Value {
    let zero = fx.zero4();
    match act {
        Activation::Linear => x,
        Activation::Relu => fx.max(x, zero),
        Activation::LeakyRelu { alpha } => {
            let ax = fx.mulc(x, alpha);
            let pos = fx.cmp(FloatCC::GreaterThanOrEqual, x, zero);
            fx.select(pos, x, ax)
        }
        Activation::Elu { alpha } => {
            let e = math::expm1(fx, x);
            let neg = fx.mulc(e, alpha);
            let pos = fx.cmp(FloatCC::GreaterThan, x, zero);
            fx.select(pos, x, neg)
        }
        Activation::Selu => {
            let e = math::expm1(fx, x);
            let neg = fx.mulc(e, SELU_ALPHA);
            let pos = fx.cmp(FloatCC::GreaterThan, x, zero);
            let y = fx.select(pos, x, neg);
            fx.mulc(y, SELU_LAMBDA)
        }
        Activation::Gelu => math::gelu(fx, x),
        Activation::Swish => {
            let s = math::sigmoid(fx, x);
            fx.mul(x, s)
        }
        Activation::Tanh => math::tanh(fx, x),
        Activation::Sigmoid => math::sigmoid(fx, x),
        Activation::Softmax => unreachable!("the planner routes softmax to emit_softmax"),
    }
}

/// The derivative of an element-wise activation times `dy`; `saved` is the activation's input
/// when `grad_needs_input`, else its output.
pub fn act_backward(fx: &mut Fx, act: Activation, dy: Value, saved: Value) -> Value {
    let zero = fx.zero4();
    let one = fx.splat(1.0);
    let d = match act {
        Activation::Linear => return dy,
        Activation::Relu => {
            let pos = fx.cmp(FloatCC::GreaterThan, saved, zero);
            return fx.select(pos, dy, zero);
        }
        Activation::LeakyRelu { alpha } => {
            // `saved` is the output. With the slope `alpha >= 0` (the checker's range) it is
            // positive exactly where the input is; at an input of exactly 0 the gradient rule
            // (and the interpreter) takes the negative side's slope, so `>` and not `>=`.
            let a = fx.splat(alpha);
            let pos = fx.cmp(FloatCC::GreaterThan, saved, zero);
            fx.select(pos, one, a)
        }
        Activation::Elu { alpha } => {
            let neg = fx.addc(saved, alpha);
            let pos = fx.cmp(FloatCC::GreaterThan, saved, zero);
            fx.select(pos, one, neg)
        }
        Activation::Selu => {
            let neg = fx.addc(saved, SELU_LAMBDA * SELU_ALPHA);
            let lambda = fx.splat(SELU_LAMBDA);
            let pos = fx.cmp(FloatCC::GreaterThan, saved, zero);
            fx.select(pos, lambda, neg)
        }
        Activation::Gelu => math::gelu_grad(fx, saved),
        Activation::Swish => {
            // s (1 + x (1 - s))
            let s = math::sigmoid(fx, saved);
            let oms = fx.sub(one, s);
            let t = fx.fma(saved, oms, one);
            fx.mul(s, t)
        }
        Activation::Tanh => {
            let y2 = fx.mul(saved, saved);
            fx.sub(one, y2)
        }
        Activation::Sigmoid => {
            let oms = fx.sub(one, saved);
            fx.mul(saved, oms)
        }
        Activation::Softmax => unreachable!("the planner routes softmax to emit_softmax_backward"),
    };
    fx.mul(dy, d)
}

/// Stores `rows` (4 vectors, transposed in registers, or 1, lane by lane), the columns
/// `first..first + 4` of consecutive rows of a matrix, as rows of its transposed copy: lane
/// `l` of row `r` goes to float `(first + l) · ld + r` after `dst`. Only the first `lanes`
/// columns are stored; the others are padding, which has no row in the copy.
pub fn store_as_columns(
    fx: &mut Fx,
    rows: &[Value],
    dst: Value,
    ld: usize,
    first: usize,
    lanes: usize,
) {
    let at = |l: usize| ((first + l) * ld) as i64;
    match *rows {
        [a, b, c, d] => {
            let columns = fx.transpose4([a, b, c, d]);
            for (l, col) in columns.into_iter().enumerate().take(lanes) {
                fx.store(col, dst, at(l));
            }
        }
        [v] => {
            for l in 0..lanes {
                let e = fx.b.ins().extractlane(v, l as u8);
                fx.store(e, dst, at(l));
            }
        }
        _ => unreachable!("rows of a transposed block are 4 or 1"),
    }
}

/// The per-step scalars (`update_scalars`), each in all four lanes.
pub fn step_scalar_vectors(fx: &mut Fx) -> [Value; update_scalars::RULE] {
    std::array::from_fn(|i| {
        let s = fx.scalar(i);
        fx.b.ins().splat(F32X4, s)
    })
}

/// One vector of the update rule; reads and writes the slots at `ps`, returns the new weights.
/// Every update goes through here, so an update fused into a weight gradient computes exactly
/// what the update kernel would.
pub fn update_rule(
    fx: &mut Fx,
    kind: OptimizerKind,
    w: Value,
    g: Value,
    ps: &[Value],
    scalars: [Value; update_scalars::RULE],
) -> Value {
    let lr_times_g = |fx: &mut Fx| fx.mul(scalars[update_scalars::LR], g);
    match kind {
        OptimizerKind::Sgd { momentum, nesterov } => {
            let lrg = lr_times_g(fx);
            if momentum == 0.0 {
                return fx.sub(w, lrg);
            }
            let v = fx.load4(rw(), ps[0], 0);
            let mv = fx.mulc(v, momentum);
            let v = fx.sub(mv, lrg);
            fx.store(v, ps[0], 0);
            if nesterov {
                let mv = fx.mulc(v, momentum);
                let step = fx.sub(mv, lrg);
                fx.add(w, step)
            } else {
                fx.add(w, v)
            }
        }
        OptimizerKind::Adam {
            beta_1,
            beta_2,
            epsilon,
        } => {
            let c1 = scalars[update_scalars::C1];
            adam(fx, w, g, ps, c1, beta_1, beta_2, epsilon)
        }
        OptimizerKind::AdamW {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
        } => {
            let lr = scalars[update_scalars::LR];
            let lrwd = fx.mulc(lr, weight_decay);
            let decay = fx.mul(w, lrwd);
            let w = fx.sub(w, decay);
            let c1 = scalars[update_scalars::C1];
            adam(fx, w, g, ps, c1, beta_1, beta_2, epsilon)
        }
        OptimizerKind::Nadam {
            beta_1,
            beta_2,
            epsilon,
        } => {
            let (m, v) = moments(fx, g, ps, beta_1, beta_2);
            let c1 = scalars[update_scalars::C1];
            let a = fx.mul(c1, m);
            let c2 = scalars[update_scalars::C2];
            let m_hat = fx.fma(c2, g, a);
            let c3 = scalars[update_scalars::C3];
            let v_hat = fx.mul(v, c3);
            let lr = scalars[update_scalars::LR];
            let num = fx.mul(m_hat, lr);
            let sq = fx.b.ins().sqrt(v_hat);
            let den = fx.addc(sq, epsilon);
            let step = fx.div(num, den);
            fx.sub(w, step)
        }
        OptimizerKind::RmsProp {
            rho,
            momentum,
            epsilon,
            centered,
        } => {
            let lrg = lr_times_g(fx);
            let vel = fx.load4(rw(), ps[0], 0);
            let g2 = fx.mul(g, g);
            let a = fx.mulc(vel, rho);
            let k = fx.splat(1.0 - rho);
            let vel = fx.fma(g2, k, a);
            fx.store(vel, ps[0], 0);
            let denom = if centered {
                let slot = ps[if momentum != 0.0 { 2 } else { 1 }];
                let avg = fx.load4(rw(), slot, 0);
                let a = fx.mulc(avg, rho);
                let k = fx.splat(1.0 - rho);
                let avg = fx.fma(g, k, a);
                fx.store(avg, slot, 0);
                let avg2 = fx.mul(avg, avg);
                let d = fx.sub(vel, avg2);
                fx.addc(d, epsilon)
            } else {
                fx.addc(vel, epsilon)
            };
            let sq = fx.b.ins().sqrt(denom);
            let inc = fx.div(lrg, sq);
            if momentum != 0.0 {
                let mo = fx.load4(rw(), ps[1], 0);
                let k = fx.splat(momentum);
                let mo = fx.fma(mo, k, inc);
                fx.store(mo, ps[1], 0);
                fx.sub(w, mo)
            } else {
                fx.sub(w, inc)
            }
        }
        OptimizerKind::Adagrad { epsilon, .. } => {
            let lrg = lr_times_g(fx);
            let acc = fx.load4(rw(), ps[0], 0);
            let acc = fx.fma(g, g, acc);
            fx.store(acc, ps[0], 0);
            let d = fx.addc(acc, epsilon);
            let sq = fx.b.ins().sqrt(d);
            let step = fx.div(lrg, sq);
            fx.sub(w, step)
        }
    }
}

/// `m += (g - m)(1 - β1)`, `v += (g² - v)(1 - β2)`, stored back; returns the new `(m, v)`.
fn moments(fx: &mut Fx, g: Value, ps: &[Value], beta_1: f32, beta_2: f32) -> (Value, Value) {
    let m = fx.load4(rw(), ps[0], 0);
    let v = fx.load4(rw(), ps[1], 0);
    let dm = fx.sub(g, m);
    let k1 = fx.splat(1.0 - beta_1);
    let m = fx.fma(dm, k1, m);
    let g2 = fx.mul(g, g);
    let dv = fx.sub(g2, v);
    let k2 = fx.splat(1.0 - beta_2);
    let v = fx.fma(dv, k2, v);
    fx.store(m, ps[0], 0);
    fx.store(v, ps[1], 0);
    (m, v)
}

#[allow(clippy::too_many_arguments)]
fn adam(
    fx: &mut Fx,
    w: Value,
    g: Value,
    ps: &[Value],
    alpha: Value,
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
) -> Value {
    let (m, v) = moments(fx, g, ps, beta_1, beta_2);
    let num = fx.mul(m, alpha);
    let sq = fx.b.ins().sqrt(v);
    let den = fx.addc(sq, epsilon);
    let step = fx.div(num, den);
    fx.sub(w, step)
}
