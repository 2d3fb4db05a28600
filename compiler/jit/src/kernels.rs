//! The kernel catalogue: one `Kernel` value per distinct generated function (shapes, activations
//! and hyper-parameters baked in) and one `emit_*` function per kind. Two layers with equal
//! specs share one compiled function, since buffers arrive through the argument table.
//!
//! Layout conventions every kernel relies on: a value `[rows, width]` is stored row-major with
//! `row_stride(width)` floats per row, of which the first `pad4(width)` are read; a dense kernel `[in, out]` as `in` rows of `pad4(out)`
//! floats; vectors of `width` floats as `pad4(width)`. Padding lanes of parameters, gradients and
//! optimizer slots stay exactly zero (the kernels keep them so), and padding lanes of activations
//! stay finite and are never read by a reduction over columns. Each `emit_*` documents its argument
//! table; `Kernel::args` says how many pointers it takes.

use cranelift_codegen::ir::condcodes::{FloatCC, IntCC};
use cranelift_codegen::ir::types::{F32, F32X4, I32, I32X4, I64};
use cranelift_codegen::ir::{InstBuilder, Value};
use cranelift_frontend::Variable;

use super::elementwise::{
    act_backward, act_forward, step_scalar_vectors, store_as_columns, update_rule, update_scalars,
};
use super::emit::{bytes, ro, rw, Fx};
use super::math;
use super::matmul::{emit_matmul, Dim, Epilogue, EpilogueUpdate, MatMul, Normalized};
use crate::tier::Tier;
use netc_ir::ir::{Activation, OptimizerKind, Regularizer, SELU_ALPHA, SELU_LAMBDA};

/// Pixels are scaled as `x / 255`, a division like the reference executor's: `x * (1/255)`
/// rounds 126 of the 256 values one ulp differently. The conversion is a sliver of a step.
const PIXEL_MAX: f32 = 255.0;

/// Rounds a width up to whole f32x4 vectors.
pub fn pad4(n: usize) -> usize {
    n.div_ceil(4) * 4
}

/// Floats from one row of a `[rows, width]` value to the next: whole vectors, plus one cache
/// line when the rows would otherwise lie a multiple of 2 KiB apart. Such rows (3,072 input
/// features: 12 KiB) all fall into the same L1 set, and the weight gradient `xᵀ·dy`, which reads
/// down the columns of `x`, then misses on every row; the extra line spreads them over the sets.
pub fn row_stride(width: usize) -> usize {
    let pad = pad4(width);
    if pad.is_multiple_of(512) {
        pad + 16
    } else {
        pad
    }
}

/// The u8 → f32 conversion that the first op's forward kernel performs before its own work.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Convert {
    pub features: usize,
    /// `(x - mean) / std` with per-feature statistics instead of `x * (1/255)`.
    pub standardize: bool,
}

impl Convert {
    /// Pointers it takes from the front of the table: pixels, [mean, std,] v0.
    pub fn args(&self) -> usize {
        if self.standardize {
            4
        } else {
            2
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Kernel {
    Dense {
        convert: Option<Convert>,
        inputs: usize,
        units: usize,
        bias: bool,
        activation: Option<Activation>,
        store_pre_activation: bool,
    },
    Activation {
        convert: Option<Convert>,
        width: usize,
        activation: Activation,
    },
    Prelu {
        convert: Option<Convert>,
        width: usize,
    },
    /// Batch norm over `width` columns, then `activation` when the activation after it is
    /// fused (`fusion::Fusion::forward_activation`).
    BatchNorm {
        convert: Option<Convert>,
        width: usize,
        activation: Option<Activation>,
        training: bool,
        momentum: f32,
        epsilon: f32,
        /// Also store `x̂` (training only), for a weight gradient with `FusedUpdate::normalized`.
        store_normalized: bool,
        /// Training, shared by rows: every share computes the statistics over the whole batch
        /// (the same sums in the same order, from `x_all` and `update_scalars::ROWS` rows) and
        /// normalizes its own rows; the share whose rows start the batch stores the statistics
        /// and the moving averages. No meeting after it, where a division by columns needs one.
        by_rows: bool,
    },
    Dropout {
        convert: Option<Convert>,
        width: usize,
        rate: f32,
        alpha: bool,
    },
    /// The input conversion alone (when the first op is identity in inference).
    Convert(Convert),
    HeadLoss {
        classes: usize,
    },
    HeadProbs {
        classes: usize,
    },
    ActivationBackward {
        width: usize,
        activation: Activation,
    },
    /// `dW = xᵀ·dy` (and `db = Σ dy`) for `inputs` rows of the kernel: all of them, or one
    /// thread's share, whose `x` columns then start inside the rows of `x`.
    WeightGrad {
        inputs: usize,
        /// Floats between rows of `x` (`row_stride` of the layer's whole input width).
        x_ld: usize,
        units: usize,
        /// The batch size, for which the loop over rows is unrolled.
        batch: usize,
        bias: bool,
        /// The optimizer step, applied to the kernel rows of each block row of `dW` as soon as
        /// it is finished (see `FusedUpdate`).
        update: Option<FusedUpdate>,
    },
    /// `dx = dy·Wᵀ` from the transposed kernel copy.
    InputGrad {
        inputs: usize,
        units: usize,
        /// The element-wise activation whose output is this layer's input: the kernel then
        /// writes `dx · act'` (from the value the activation's backward pass reads), the
        /// gradient of the activation's input, and that activation has no backward call.
        activation: Option<Activation>,
    },
    PreluBackward {
        width: usize,
        input_grad: bool,
    },
    /// The batch norm's gradients over the batch, or `by_rows` (the sums over the whole batch
    /// from `x_all` and `dy_all`, `dx` of its own rows, `dγ` and `dβ` stored by the share whose
    /// rows start the batch).
    BatchNormBackward {
        by_rows: bool,
        width: usize,
        input_grad: bool,
    },
    DropoutBackward {
        width: usize,
        rate: f32,
        alpha: bool,
    },
    Transpose {
        rows: usize,
        cols: usize,
    },
    Update(Update),
}

/// One parameter's optimizer step: regularization gradient, clipping, the rule, max-norm.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    /// Padded length of the parameter (a multiple of 4).
    pub len: usize,
    pub kind: OptimizerKind,
    pub regularizer: Regularizer,
    pub clipnorm: Option<f32>,
    /// `(max_value, rows, padded columns)` of a dense kernel with a max-norm constraint.
    pub max_norm: Option<(f32, usize, usize)>,
}

/// The optimizer step of a dense kernel done inside its weight gradient: as soon as a block row
/// of `dW` is complete, `matmul::update_rows` runs `update_rule` (the same code as `Update`)
/// along those kernel rows, writing the new weights, the rule's slots and, for a layer whose
/// input gradient reads the transposed copy, their columns of that copy. The gradient is never
/// written out (beyond one block row of scratch), and neither an update nor a transpose pass
/// walks the kernel again. Only for updates that are element-wise (no regularization penalty,
/// clipping or max-norm): see `jit::fusable`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FusedUpdate {
    pub kind: OptimizerKind,
    /// Refresh the transposed copy `[units, x_ld]` too.
    pub transposed: bool,
    /// The layer's input is `y = γ·x̂ + β`, a batch norm of values whose gradient nobody needs
    /// (the data), and `x` is `x̂`. The kernel then computes `G = x̂ᵀ·dy` and the column sums
    /// `s = Σ dy`, updates the kernel with `dW = γᵢ·Gᵢⱼ + βᵢ·sⱼ`, and writes the batch norm's
    /// gradients `dγᵢ = Σⱼ Wᵢⱼ·Gᵢⱼ` and `dβᵢ = Σⱼ Wᵢⱼ·sⱼ` (with the kernel before the update):
    /// `dγ = Σ dz·x̂` and `dβ = Σ dz` for `dz = dy·Wᵀ`, without computing `dz`, a matrix
    /// multiply as large as the weight gradient, nor keeping `Wᵀ` for it.
    pub normalized: bool,
}

impl Kernel {
    /// A short name for the function symbol and the CLIF dump.
    pub fn name(&self) -> String {
        match self {
            Kernel::Dense {
                inputs,
                units,
                activation,
                ..
            } => format!(
                "dense_{inputs}x{units}{}",
                activation.map_or(String::new(), |a| format!("_{}", a.name()))
            ),
            Kernel::Activation {
                width, activation, ..
            } => format!("{}_{width}", activation.name()),
            Kernel::Prelu { width, .. } => format!("prelu_{width}"),
            Kernel::BatchNorm {
                width,
                activation,
                training,
                by_rows,
                ..
            } => format!(
                "batch_norm_{}_{width}{}{}",
                if *training { "train" } else { "infer" },
                activation.map_or(String::new(), |a| format!("_{}", a.name())),
                if *by_rows { "_by_rows" } else { "" }
            ),
            Kernel::Dropout { width, alpha, .. } => {
                format!(
                    "{}_{width}",
                    if *alpha { "alpha_dropout" } else { "dropout" }
                )
            }
            Kernel::Convert(c) => format!("convert_{}", c.features),
            Kernel::HeadLoss { classes } => format!("head_loss_{classes}"),
            Kernel::HeadProbs { classes } => format!("head_probs_{classes}"),
            Kernel::ActivationBackward { width, activation } => {
                format!("{}_backward_{width}", activation.name())
            }
            Kernel::WeightGrad {
                inputs,
                units,
                update,
                ..
            } => match update {
                Some(u) => format!(
                    "dense_weight_grad_{}{}{}_{inputs}x{units}",
                    u.kind.name(),
                    if u.transposed { "_t" } else { "" },
                    if u.normalized { "_bn" } else { "" }
                ),
                None => format!("dense_weight_grad_{inputs}x{units}"),
            },
            Kernel::InputGrad {
                inputs,
                units,
                activation,
            } => format!(
                "dense_input_grad_{inputs}x{units}{}",
                activation.map_or(String::new(), |a| format!("_{}", a.name()))
            ),
            Kernel::PreluBackward { width, .. } => format!("prelu_backward_{width}"),
            Kernel::BatchNormBackward { width, by_rows, .. } => format!(
                "batch_norm_backward_{width}{}",
                if *by_rows { "_by_rows" } else { "" }
            ),
            Kernel::DropoutBackward { width, alpha, .. } => format!(
                "{}_backward_{width}",
                if *alpha { "alpha_dropout" } else { "dropout" }
            ),
            Kernel::Transpose { rows, cols } => format!("transpose_{rows}x{cols}"),
            Kernel::Update(u) => format!("update_{}_{}", u.kind.name(), u.len),
        }
    }

    /// Whether the kernel is compiled without the e-graph pass at `tier`. The f32x4 matrix
    /// multiplies are emitted in the order they should run (see `matmul`); the e-graph would
    /// instead place each pure instruction at its first use, which elaborates every
    /// accumulator's chain at once and merges the per-FMA broadcasts the emitter relies on. At a
    /// full-width tier the products are GEMM calls, whose order is their own, and what remains
    /// (epilogues, updates) gains from the e-graph pass.
    pub fn in_program_order(&self, tier: Tier) -> bool {
        tier == Tier::F32x4
            && matches!(
                self,
                Kernel::Dense { .. } | Kernel::WeightGrad { .. } | Kernel::InputGrad { .. }
            )
    }

    /// Emits the whole function body.
    pub fn emit(&self, fx: &mut Fx) {
        match self {
            Kernel::Dense {
                convert,
                inputs,
                units,
                bias,
                activation,
                store_pre_activation,
            } => emit_dense(
                fx,
                *convert,
                *inputs,
                *units,
                *bias,
                *activation,
                *store_pre_activation,
            ),
            Kernel::Activation {
                convert,
                width,
                activation,
            } => {
                let base = emit_convert_prologue(fx, *convert);
                if *activation == Activation::Softmax {
                    emit_softmax(fx, base, *width);
                } else {
                    emit_activation(fx, base, *width, *activation);
                }
            }
            Kernel::Prelu { convert, width } => {
                let base = emit_convert_prologue(fx, *convert);
                emit_prelu(fx, base, *width);
            }
            Kernel::BatchNorm {
                convert,
                width,
                activation,
                training,
                momentum,
                epsilon,
                store_normalized,
                by_rows,
            } => {
                let base = emit_convert_prologue(fx, *convert);
                if *training {
                    let stored = (*store_normalized, *by_rows);
                    emit_batch_norm_train(
                        fx,
                        base,
                        (*width, *activation),
                        *momentum,
                        *epsilon,
                        stored,
                    );
                } else {
                    emit_batch_norm_infer(fx, base, *width, *activation, *epsilon);
                }
            }
            Kernel::Dropout {
                convert,
                width,
                rate,
                alpha,
            } => {
                let base = emit_convert_prologue(fx, *convert);
                emit_dropout(fx, base, *width, *rate, *alpha);
            }
            Kernel::Convert(c) => {
                emit_convert_prologue(fx, Some(*c));
            }
            Kernel::HeadLoss { classes } => emit_head(fx, *classes, true),
            Kernel::HeadProbs { classes } => emit_head(fx, *classes, false),
            Kernel::ActivationBackward { width, activation } => {
                if *activation == Activation::Softmax {
                    emit_softmax_backward(fx, *width);
                } else {
                    emit_activation_backward(fx, *width, *activation);
                }
            }
            Kernel::WeightGrad {
                inputs,
                x_ld,
                units,
                batch,
                bias,
                update,
            } => emit_weight_grad(fx, *inputs, *x_ld, *units, *batch, *bias, *update),
            Kernel::InputGrad {
                inputs,
                units,
                activation,
            } => emit_input_grad(fx, *inputs, *units, *activation),
            Kernel::PreluBackward { width, input_grad } => {
                emit_prelu_backward(fx, *width, *input_grad)
            }
            Kernel::BatchNormBackward {
                width,
                input_grad,
                by_rows,
            } => emit_batch_norm_backward(fx, *width, *input_grad, *by_rows),
            Kernel::DropoutBackward { width, rate, alpha } => {
                emit_dropout_backward(fx, *width, *rate, *alpha)
            }
            Kernel::Transpose { rows, cols } => emit_transpose(fx, *rows, *cols),
            Kernel::Update(u) => emit_update(fx, u),
        }
    }
}

/// Runs `body(fx, off)` for every f32x4 of a `[rows, width]` value, `off` being the byte offset
/// of the vector (the same in every buffer of that shape), with the row index alongside.
fn for_each_vector(fx: &mut Fx, width: usize, mut body: impl FnMut(&mut Fx, Value, Value, Value)) {
    let pad = pad4(width) as i64;
    let stride = row_stride(width) as i64;
    let zero = fx.iconst(0);
    let rows = fx.rows;
    fx.loop_up(zero, rows, 1, |fx, r| {
        let row_off = fx.b.ins().imul_imm_s(r, stride * 4);
        fx.loop_const(0, pad, 4, |fx, j| {
            let col_off = fx.b.ins().imul_imm_s(j, 4);
            let off = fx.b.ins().iadd(row_off, col_off);
            body(fx, off, r, j);
        });
    });
}

/// For each column block `j` (element index, multiple of 4): `body(fx, j_bytes)`.
fn for_each_column_block(fx: &mut Fx, width: usize, mut body: impl FnMut(&mut Fx, Value)) {
    fx.loop_const(0, pad4(width) as i64, 4, |fx, j| {
        let jb = fx.b.ins().imul_imm_s(j, 4);
        body(fx, jb);
    });
}

/// Column blocks a reduction over rows handles at once: independent sums hide the latency of
/// each one's chain of additions.
const COLUMN_GROUP: usize = 4;

/// For each group of up to `COLUMN_GROUP` column blocks: `body(fx, j_bytes)`, one byte offset
/// per block. Each column's arithmetic is the same as one block at a time.
fn for_each_column_group(fx: &mut Fx, width: usize, mut body: impl FnMut(&mut Fx, &[Value])) {
    let blocks = pad4(width) / 4;
    let full = blocks / COLUMN_GROUP * COLUMN_GROUP;
    if full > 0 {
        fx.loop_const(0, (full * 4) as i64, (COLUMN_GROUP * 4) as i64, |fx, j| {
            let jb = fx.b.ins().imul_imm_s(j, 4);
            let jbs: Vec<Value> = (0..COLUMN_GROUP)
                .map(|g| fx.b.ins().iadd_imm_s(jb, (g * 16) as i64))
                .collect();
            body(fx, &jbs);
        });
    }
    if full < blocks {
        let jbs: Vec<Value> = (full..blocks).map(|b| fx.iconst((b * 16) as i64)).collect();
        body(fx, &jbs);
    }
}

/// Runs `body(fx, row_off_bytes)` for every row; reductions over rows loop inside column blocks.
fn for_each_row(fx: &mut Fx, width: usize, body: impl FnMut(&mut Fx, Value)) {
    let rows = fx.rows;
    for_each_row_of(fx, width, rows, body);
}

/// `for_each_row` over `rows` rows (a runtime count).
fn for_each_row_of(fx: &mut Fx, width: usize, rows: Value, mut body: impl FnMut(&mut Fx, Value)) {
    let stride = row_stride(width) as i64;
    let zero = fx.iconst(0);
    fx.loop_up(zero, rows, 1, |fx, r| {
        let off = fx.b.ins().imul_imm_s(r, stride * 4);
        body(fx, off);
    });
}

/// Converts the pixel batch into v0 when `convert` is set; returns the first table slot left
/// for the op itself, whose input pointer is then the v0 pointer (slot `base - 1`).
///
/// Table: `[pixels, (mean, std,) v0]`. Mean and std are padded f32 vectors.
fn emit_convert_prologue(fx: &mut Fx, convert: Option<Convert>) -> usize {
    let Some(c) = convert else { return 0 };
    let pixels = fx.arg(0);
    let stats = c.standardize.then(|| (fx.arg(1), fx.arg(2)));
    let out = fx.arg(c.args() - 1);
    let stride = row_stride(c.features) as i64;
    let zero = fx.iconst(0);
    let rows = fx.rows;
    let groups = (c.features / 8 * 8) as i64;
    fx.loop_up(zero, rows, 1, |fx, r| {
        let src = fx.offset(pixels, r, c.features as i64);
        let dst = fx.offset(out, r, stride * 4);
        // Eight pixels at a time: zero-extend u8 → i16 → i32, convert, then scale.
        fx.loop_const(0, groups, 8, |fx, k| {
            let p = fx.b.ins().iadd(src, k);
            let wide = fx.b.ins().uload8x8(bytes(), p, 0);
            let kb = fx.b.ins().imul_imm_s(k, 4);
            let d = fx.b.ins().iadd(dst, kb);
            for (half, off) in [(false, 0), (true, 16)] {
                let ints = if half {
                    fx.b.ins().uwiden_high(wide)
                } else {
                    fx.b.ins().uwiden_low(wide)
                };
                let x = fx.b.ins().fcvt_from_sint(F32X4, ints);
                let y = convert_scale(fx, stats, x, kb, off);
                fx.b.ins().store(rw(), y, d, off);
            }
        });
        for k in groups as usize..c.features {
            let v = fx.load_u8(src, k as i64);
            let x = fx.b.ins().fcvt_from_sint(F32, v);
            let y = match stats {
                Some((mean, std)) => {
                    let m = fx.load1(ro(), mean, k as i64);
                    let s = fx.load1(ro(), std, k as i64);
                    let d = fx.b.ins().fsub(x, m);
                    fx.b.ins().fdiv(d, s)
                }
                None => {
                    let k = fx.fconst(PIXEL_MAX);
                    fx.b.ins().fdiv(x, k)
                }
            };
            fx.b.ins().store(rw(), y, dst, (k * 4) as i32);
        }
    });
    c.args()
}

fn convert_scale(
    fx: &mut Fx,
    stats: Option<(Value, Value)>,
    x: Value,
    kb: Value,
    off: i32,
) -> Value {
    match stats {
        Some((mean, std)) => {
            let mp = fx.b.ins().iadd(mean, kb);
            let sp = fx.b.ins().iadd(std, kb);
            let m = fx.b.ins().load(F32X4, ro(), mp, off);
            let s = fx.b.ins().load(F32X4, ro(), sp, off);
            let d = fx.sub(x, m);
            fx.div(d, s)
        }
        None => {
            let k = fx.splat(PIXEL_MAX);
            fx.div(x, k)
        }
    }
}

/// The input pointer of a forward op: v0 when this kernel converted it, else the first slot.
fn forward_input(fx: &mut Fx, base: usize) -> (Value, usize) {
    if base > 0 {
        (fx.arg(base - 1), base)
    } else {
        (fx.arg(0), 1)
    }
}

/// Table: `[x, kernel, (bias,) y, (z,)]` (after the conversion prologue, if any).
fn emit_dense(
    fx: &mut Fx,
    convert: Option<Convert>,
    inputs: usize,
    units: usize,
    bias: bool,
    activation: Option<Activation>,
    store_pre_activation: bool,
) {
    let base = emit_convert_prologue(fx, convert);
    let (x, mut slot) = forward_input(fx, base);
    let mut next = || {
        slot += 1;
        slot - 1
    };
    let w = fx.arg(next());
    let b = bias.then(&mut next).map(|s| fx.arg(s));
    let y = fx.arg(next());
    let z = store_pre_activation.then(next).map(|s| fx.arg(s));
    let n = pad4(units);
    emit_matmul(
        fx,
        &MatMul {
            m: Dim::Rows,
            k: Dim::Static(inputs),
            n,
            a: x,
            a_row: row_stride(inputs),
            a_col: 1,
            // The conversion prologue wrote x in this same function: its loads must stay after
            // those stores, so they cannot be marked movable.
            a_flags: if convert.is_some() { rw() } else { ro() },
            b: w,
            ldb: n,
            c: y,
            ldc: row_stride(units),
            epilogue: Epilogue {
                accumulate: false,
                bias: b,
                pre_activation: z,
                activation,
                derivative: None,
                update: None,
            },
            rows_outer: false,
            k_unroll: None,
        },
    );
}

/// Table: `[x, y]`.
fn emit_activation(fx: &mut Fx, base: usize, width: usize, act: Activation) {
    let (x, slot) = forward_input(fx, base);
    let y = fx.arg(slot);
    let flags = if base > 0 { rw() } else { ro() };
    for_each_vector(fx, width, |fx, off, _, _| {
        let px = fx.b.ins().iadd(x, off);
        let v = fx.b.ins().load(F32X4, flags, px, 0);
        let v = act_forward(fx, act, v);
        let py = fx.b.ins().iadd(y, off);
        fx.store(v, py, 0);
    });
}

/// Mask of the lanes of the last column block that hold real columns (all lanes if whole).
fn real_lanes(fx: &mut Fx, width: usize) -> Value {
    let rem = width % 4;
    let lanes: [i32; 4] = std::array::from_fn(|l| if rem == 0 || l < rem { -1 } else { 0 });
    fx.const_i4(lanes)
}

/// Row-wise softmax of one row at `row` (pointer), written to `out`; returns `(max, sum)` of the
/// row (the sum of `exp(x - max)`, for the loss). Padding lanes of `out` are written as zero.
fn softmax_row(
    fx: &mut Fx,
    flags: cranelift_codegen::ir::MemFlagsData,
    row: Value,
    out: Option<Value>,
    width: usize,
) -> (Value, Value) {
    let blocks = pad4(width) / 4;
    let last_mask = real_lanes(fx, width);
    let neg_inf = fx.splat(f32::NEG_INFINITY);
    let zero = fx.zero4();
    // Max over the row, padding lanes replaced by -inf.
    let mut mx = neg_inf;
    for blk in 0..blocks {
        let mut v = fx.load4(flags, row, (blk * 4) as i64);
        if blk + 1 == blocks {
            v = fx.select(last_mask, v, neg_inf);
        }
        mx = fx.max(v, mx);
    }
    let l: Vec<Value> = (0..4u8).map(|i| fx.b.ins().extractlane(mx, i)).collect();
    let a = fx.b.ins().fmax(l[0], l[1]);
    let c = fx.b.ins().fmax(l[2], l[3]);
    let m = fx.b.ins().fmax(a, c);
    let mv = fx.b.ins().splat(F32X4, m);
    let mut es = Vec::with_capacity(blocks);
    let mut sum = zero;
    for blk in 0..blocks {
        let v = fx.load4(flags, row, (blk * 4) as i64);
        let d = fx.sub(v, mv);
        let mut e = math::exp(fx, d);
        if blk + 1 == blocks {
            e = fx.select(last_mask, e, zero);
        }
        sum = fx.add(sum, e);
        es.push(e);
    }
    let s = fx.hsum(sum);
    if let Some(out) = out {
        let one = fx.fconst(1.0);
        let inv = fx.b.ins().fdiv(one, s);
        let inv = fx.b.ins().splat(F32X4, inv);
        for (blk, e) in es.into_iter().enumerate() {
            let p = fx.mul(e, inv);
            fx.store(p, out, (blk * 4) as i64);
        }
    }
    (m, s)
}

/// Row-wise softmax as a standalone op. Table: `[x, y]`.
fn emit_softmax(fx: &mut Fx, base: usize, width: usize) {
    let (x, slot) = forward_input(fx, base);
    let y = fx.arg(slot);
    let flags = if base > 0 { rw() } else { ro() };
    for_each_row(fx, width, |fx, off| {
        let px = fx.b.ins().iadd(x, off);
        let py = fx.b.ins().iadd(y, off);
        softmax_row(fx, flags, px, Some(py), width);
    });
}

/// `dx = y (dy - Σ dy·y)` per row. Table: `[dy, y, dx]`.
fn emit_softmax_backward(fx: &mut Fx, width: usize) {
    let dy = fx.arg(0);
    let y = fx.arg(1);
    let dx = fx.arg(2);
    let blocks = pad4(width) / 4;
    for_each_row(fx, width, |fx, off| {
        let pdy = fx.b.ins().iadd(dy, off);
        let py = fx.b.ins().iadd(y, off);
        let pdx = fx.b.ins().iadd(dx, off);
        let mut dot = fx.zero4();
        for blk in 0..blocks {
            let g = fx.load4(rw(), pdy, (blk * 4) as i64);
            let v = fx.load4(rw(), py, (blk * 4) as i64);
            dot = fx.fma(g, v, dot);
        }
        let s = fx.hsum(dot);
        let s = fx.b.ins().splat(F32X4, s);
        for blk in 0..blocks {
            let g = fx.load4(rw(), pdy, (blk * 4) as i64);
            let v = fx.load4(rw(), py, (blk * 4) as i64);
            let d = fx.sub(g, s);
            let r = fx.mul(v, d);
            fx.store(r, pdx, (blk * 4) as i64);
        }
    });
}

/// Table: `[dy, saved, dx]` where `saved` is the activation's input or output (see
/// `grad_needs_input`). `dx` may be `dy`.
fn emit_activation_backward(fx: &mut Fx, width: usize, act: Activation) {
    let dy = fx.arg(0);
    let saved = fx.arg(1);
    let dx = fx.arg(2);
    for_each_vector(fx, width, |fx, off, _, _| {
        let pdy = fx.b.ins().iadd(dy, off);
        let ps = fx.b.ins().iadd(saved, off);
        let g = fx.b.ins().load(F32X4, rw(), pdy, 0);
        let s = fx.b.ins().load(F32X4, rw(), ps, 0);
        let d = act_backward(fx, act, g, s);
        let pdx = fx.b.ins().iadd(dx, off);
        fx.store(d, pdx, 0);
    });
}

/// Table: `[x, alpha, y]`.
fn emit_prelu(fx: &mut Fx, base: usize, width: usize) {
    let (x, slot) = forward_input(fx, base);
    let alpha = fx.arg(slot);
    let y = fx.arg(slot + 1);
    let flags = if base > 0 { rw() } else { ro() };
    let zero = fx.zero4();
    for_each_vector(fx, width, |fx, off, _, j| {
        let px = fx.b.ins().iadd(x, off);
        let v = fx.b.ins().load(F32X4, flags, px, 0);
        let pa = fx.offset(alpha, j, 4);
        let a = fx.load4(ro(), pa, 0);
        let av = fx.mul(a, v);
        let pos = fx.cmp(FloatCC::GreaterThanOrEqual, v, zero);
        let r = fx.select(pos, v, av);
        let py = fx.b.ins().iadd(y, off);
        fx.store(r, py, 0);
    });
}

/// Table: `[x, alpha, dy, dalpha, (dx)]`. `dalpha` is overwritten with `Σ_rows dy · min(x, 0)`.
fn emit_prelu_backward(fx: &mut Fx, width: usize, input_grad: bool) {
    let x = fx.arg(0);
    let alpha = fx.arg(1);
    let dy = fx.arg(2);
    let dalpha = fx.arg(3);
    let dx = input_grad.then(|| fx.arg(4));
    let zero = fx.zero4();
    let one = fx.splat(1.0);
    for_each_column_block(fx, width, |fx, jb| {
        let pa = fx.b.ins().iadd(alpha, jb);
        let a = fx.load4(ro(), pa, 0);
        let acc = fx.var(F32X4, zero);
        for_each_row(fx, width, |fx, off| {
            let o = fx.b.ins().iadd(off, jb);
            let px = fx.b.ins().iadd(x, o);
            let pdy = fx.b.ins().iadd(dy, o);
            let v = fx.load4(ro(), px, 0);
            let g = fx.load4(ro(), pdy, 0);
            // At exactly 0 the negative side's slope applies (see `autodiff`).
            let pos = fx.cmp(FloatCC::GreaterThan, v, zero);
            let neg_part = fx.select(pos, zero, v);
            let s = fx.get(acc);
            let s = fx.fma(g, neg_part, s);
            fx.set(acc, s);
            if let Some(dx) = dx {
                let slope = fx.select(pos, one, a);
                let d = fx.mul(g, slope);
                let pdx = fx.b.ins().iadd(dx, o);
                fx.store(d, pdx, 0);
            }
        });
        let s = fx.get(acc);
        let pd = fx.b.ins().iadd(dalpha, jb);
        fx.store(s, pd, 0);
    });
}

/// Training batch norm over `width` columns, then `activation`. Table: `[x, gamma, beta,
/// moving_mean, moving_variance, y, batch_mean, batch_inv_std, (x̂,) (x_all)]`; the batch
/// statistics are scratch vectors kept for the backward pass.
fn emit_batch_norm_train(
    fx: &mut Fx,
    base: usize,
    (width, activation): (usize, Option<Activation>),
    momentum: f32,
    eps: f32,
    (store_normalized, by_rows): (bool, bool),
) {
    let (x, slot) = forward_input(fx, base);
    let p: Vec<Value> = (slot..slot + 7).map(|s| fx.arg(s)).collect();
    let (gamma, beta, mmean, mvar, y, smean, sinv) = (p[0], p[1], p[2], p[3], p[4], p[5], p[6]);
    let xhat = store_normalized.then(|| fx.arg(slot + 7));
    let x_all = by_rows.then(|| fx.arg(slot + 7 + usize::from(store_normalized)));
    let flags = if base > 0 { rw() } else { ro() };
    let zero = fx.zero4();
    // The statistics' rows: this call's, or (by rows) the whole batch's.
    let (stat_x, stat_rows, nf) = match x_all {
        Some(x_all) => {
            let nf = fx.scalar(update_scalars::ROWS);
            let rows = fx.b.ins().fcvt_to_sint(I64, nf);
            (x_all, rows, nf)
        }
        None => (x, fx.rows, fx.rows_f32()),
    };
    let n = fx.b.ins().splat(F32X4, nf);
    // Whether this call stores the statistics: the share whose rows start the batch.
    let first = x_all.map(|x_all| fx.b.ins().icmp(IntCC::Equal, x, x_all));
    for_each_column_group(fx, width, |fx, jbs| {
        let xj: Vec<Value> = jbs.iter().map(|jb| fx.b.ins().iadd(x, *jb)).collect();
        let sj: Vec<Value> = match x_all {
            Some(_) => jbs.iter().map(|jb| fx.b.ins().iadd(stat_x, *jb)).collect(),
            None => xj.clone(),
        };
        let load = |fx: &mut Fx, from: &[Value], off: Value| -> Vec<Value> {
            from.iter()
                .map(|xj| {
                    let pv = fx.b.ins().iadd(*xj, off);
                    fx.b.ins().load(F32X4, flags, pv, 0)
                })
                .collect()
        };
        let load_row = |fx: &mut Fx, off: Value| load(fx, &xj, off);
        let load_stat_row = |fx: &mut Fx, off: Value| load(fx, &sj, off);
        // Two passes (mean, then centred squares) for the variance, as an accurate reference does.
        let acc: Vec<Variable> = jbs.iter().map(|_| fx.var(F32X4, zero)).collect();
        for_each_row_of(fx, width, stat_rows, |fx, off| {
            for (a, v) in acc.iter().zip(load_stat_row(fx, off)) {
                let s = fx.get(*a);
                let s = fx.add(s, v);
                fx.set(*a, s);
            }
        });
        let mean: Vec<Value> = acc
            .iter()
            .map(|a| {
                let s = fx.get(*a);
                fx.div(s, n)
            })
            .collect();
        let acc2: Vec<Variable> = jbs.iter().map(|_| fx.var(F32X4, zero)).collect();
        for_each_row_of(fx, width, stat_rows, |fx, off| {
            for ((a, v), m) in acc2.iter().zip(load_stat_row(fx, off)).zip(&mean) {
                let d = fx.sub(v, *m);
                let s = fx.get(*a);
                let s = fx.fma(d, d, s);
                fx.set(*a, s);
            }
        });
        let mut var = Vec::new();
        let mut inv = Vec::new();
        for a in &acc2 {
            let s2 = fx.get(*a);
            let v = fx.div(s2, n);
            let ve = fx.addc(v, eps);
            let sd = fx.b.ins().sqrt(ve);
            let one = fx.splat(1.0);
            inv.push(fx.div(one, sd));
            var.push(v);
        }
        let g: Vec<Value> = jbs.iter().map(|jb| load_at(fx, gamma, *jb)).collect();
        let bt: Vec<Value> = jbs.iter().map(|jb| load_at(fx, beta, *jb)).collect();
        for_each_row(fx, width, |fx, off| {
            for (i, v) in load_row(fx, off).into_iter().enumerate() {
                let d = fx.sub(v, mean[i]);
                let xh = fx.mul(d, inv[i]);
                let r = fx.fma(g[i], xh, bt[i]);
                let r = activation.map_or(r, |a| act_forward(fx, a, r));
                let at = fx.b.ins().iadd(off, jbs[i]);
                let py = fx.b.ins().iadd(y, at);
                fx.store(r, py, 0);
                if let Some(xhat) = xhat {
                    let p = fx.b.ins().iadd(xhat, at);
                    fx.store(xh, p, 0);
                }
            }
        });
        let store_statistics = |fx: &mut Fx| {
            let mom = fx.splat(momentum);
            let rest = fx.splat(1.0 - momentum);
            for (i, jb) in jbs.iter().enumerate() {
                for (moving, batch) in [(mmean, mean[i]), (mvar, var[i])] {
                    let pm = fx.b.ins().iadd(moving, *jb);
                    let old = fx.load4(rw(), pm, 0);
                    let nb = fx.mul(batch, rest);
                    let new = fx.fma(old, mom, nb);
                    fx.store(new, pm, 0);
                }
                let pm = fx.b.ins().iadd(smean, *jb);
                fx.store(mean[i], pm, 0);
                let pi = fx.b.ins().iadd(sinv, *jb);
                fx.store(inv[i], pi, 0);
            }
        };
        match first {
            Some(first) => fx.if_else(first, store_statistics, |_| {}),
            None => store_statistics(fx),
        }
    });
}

fn load_at(fx: &mut Fx, base: Value, jb: Value) -> Value {
    let p = fx.b.ins().iadd(base, jb);
    fx.load4(ro(), p, 0)
}

/// Inference batch norm on the moving statistics, then `activation`. Table: `[x, gamma, beta,
/// moving_mean, moving_variance, y]`.
fn emit_batch_norm_infer(
    fx: &mut Fx,
    base: usize,
    width: usize,
    activation: Option<Activation>,
    eps: f32,
) {
    let (x, slot) = forward_input(fx, base);
    let p: Vec<Value> = (slot..slot + 5).map(|s| fx.arg(s)).collect();
    let (gamma, beta, mmean, mvar, y) = (p[0], p[1], p[2], p[3], p[4]);
    let flags = if base > 0 { rw() } else { ro() };
    for_each_column_block(fx, width, |fx, jb| {
        let m = load_at(fx, mmean, jb);
        let v = load_at(fx, mvar, jb);
        let g = load_at(fx, gamma, jb);
        let bt = load_at(fx, beta, jb);
        let ve = fx.addc(v, eps);
        let sd = fx.b.ins().sqrt(ve);
        let one = fx.splat(1.0);
        let inv = fx.div(one, sd);
        let xj = fx.b.ins().iadd(x, jb);
        let yj = fx.b.ins().iadd(y, jb);
        for_each_row(fx, width, |fx, off| {
            let pv = fx.b.ins().iadd(xj, off);
            let xv = fx.b.ins().load(F32X4, flags, pv, 0);
            let d = fx.sub(xv, m);
            let xh = fx.mul(d, inv);
            let r = fx.fma(g, xh, bt);
            let r = activation.map_or(r, |a| act_forward(fx, a, r));
            let py = fx.b.ins().iadd(yj, off);
            fx.store(r, py, 0);
        });
    });
}

/// Table: `[x, gamma, batch_mean, batch_inv_std, dy, dgamma, dbeta, (dx)]`.
/// `dx = γ·inv/n · (n·dy - Σdy - x̂·Σ(dy·x̂))`, `dγ = Σ dy·x̂`, `dβ = Σ dy`.
fn emit_batch_norm_backward(fx: &mut Fx, width: usize, input_grad: bool, by_rows: bool) {
    let p: Vec<Value> = (0..7).map(|s| fx.arg(s)).collect();
    let (x, gamma, smean, sinv, dy, dgamma, dbeta) = (p[0], p[1], p[2], p[3], p[4], p[5], p[6]);
    let dx = input_grad.then(|| fx.arg(7));
    let all = by_rows.then(|| {
        let next = 7 + usize::from(input_grad);
        (fx.arg(next), fx.arg(next + 1))
    });
    let zero = fx.zero4();
    // The sums' rows: this call's, or (by rows) the whole batch's.
    let ((sum_x, sum_dy), sum_rows, nf) = match all {
        Some(all) => {
            let nf = fx.scalar(update_scalars::ROWS);
            let rows = fx.b.ins().fcvt_to_sint(I64, nf);
            (all, rows, nf)
        }
        None => ((x, dy), fx.rows, fx.rows_f32()),
    };
    let n = fx.b.ins().splat(F32X4, nf);
    // Whether this call stores dγ and dβ: the share whose rows start the batch.
    let first = all.map(|(x_all, _)| fx.b.ins().icmp(IntCC::Equal, x, x_all));
    for_each_column_group(fx, width, |fx, jbs| {
        let mean: Vec<Value> = jbs.iter().map(|jb| load_at(fx, smean, *jb)).collect();
        let inv: Vec<Value> = jbs.iter().map(|jb| load_at(fx, sinv, *jb)).collect();
        // `(x̂, dy)` of each block in the row at `off` of `(x, dy)`.
        let load = |fx: &mut Fx, (x, dy): (Value, Value), off: Value| -> Vec<(Value, Value)> {
            jbs.iter()
                .enumerate()
                .map(|(i, jb)| {
                    let at = fx.b.ins().iadd(off, *jb);
                    let pv = fx.b.ins().iadd(x, at);
                    let pg = fx.b.ins().iadd(dy, at);
                    let v = fx.load4(ro(), pv, 0);
                    let g = fx.load4(ro(), pg, 0);
                    let d = fx.sub(v, mean[i]);
                    (fx.mul(d, inv[i]), g)
                })
                .collect()
        };
        let load_row = |fx: &mut Fx, off: Value| load(fx, (x, dy), off);
        let sdy: Vec<Variable> = jbs.iter().map(|_| fx.var(F32X4, zero)).collect();
        let sdyx: Vec<Variable> = jbs.iter().map(|_| fx.var(F32X4, zero)).collect();
        for_each_row_of(fx, width, sum_rows, |fx, off| {
            for (i, (xh, g)) in load(fx, (sum_x, sum_dy), off).into_iter().enumerate() {
                let a = fx.get(sdy[i]);
                let a = fx.add(a, g);
                fx.set(sdy[i], a);
                let b = fx.get(sdyx[i]);
                let b = fx.fma(g, xh, b);
                fx.set(sdyx[i], b);
            }
        });
        let a: Vec<Value> = sdy.iter().map(|v| fx.get(*v)).collect();
        let b: Vec<Value> = sdyx.iter().map(|v| fx.get(*v)).collect();
        let store_gradients = |fx: &mut Fx| {
            for (i, jb) in jbs.iter().enumerate() {
                let pgm = fx.b.ins().iadd(dgamma, *jb);
                fx.store(b[i], pgm, 0);
                let pbt = fx.b.ins().iadd(dbeta, *jb);
                fx.store(a[i], pbt, 0);
            }
        };
        match first {
            Some(first) => fx.if_else(first, store_gradients, |_| {}),
            None => store_gradients(fx),
        }
        if let Some(dx) = dx {
            let scale: Vec<Value> = jbs
                .iter()
                .enumerate()
                .map(|(i, jb)| {
                    let g = load_at(fx, gamma, *jb);
                    let gi = fx.mul(g, inv[i]);
                    fx.div(gi, n)
                })
                .collect();
            for_each_row(fx, width, |fx, off| {
                for (i, (xh, gv)) in load_row(fx, off).into_iter().enumerate() {
                    let ng = fx.mul(gv, n);
                    let t = fx.sub(ng, a[i]);
                    let xb = fx.mul(xh, b[i]);
                    let t = fx.sub(t, xb);
                    let r = fx.mul(t, scale[i]);
                    let at = fx.b.ins().iadd(off, jbs[i]);
                    let pd = fx.b.ins().iadd(dx, at);
                    fx.store(r, pd, 0);
                }
            });
        }
    });
}

/// Constants of alpha dropout for a rate: `(α', a, b)` (see `ir::OpKind::AlphaDropout`).
pub fn alpha_dropout_constants(rate: f32) -> (f32, f32, f32) {
    let alpha_p = -f64::from(SELU_LAMBDA) * f64::from(SELU_ALPHA);
    let r = f64::from(rate);
    let a = ((1.0 - r) * (1.0 + r * alpha_p * alpha_p)).powf(-0.5);
    let b = -a * alpha_p * r;
    (alpha_p as f32, a as f32, b as f32)
}

/// The keep mask of the vector at row `r`, column element `j` of a `width`-wide value.
fn dropout_mask(fx: &mut Fx, r: Value, j: Value, width: usize, rate: f32) -> Value {
    let grow = fx.global_row_i32(r);
    let base = fx.b.ins().imul_imm_s(grow, width as i64);
    let j32 = fx.b.ins().ireduce(I32, j);
    let base = fx.b.ins().iadd(base, j32);
    let base = fx.b.ins().splat(I32X4, base);
    let lanes = fx.const_i4([0, 1, 2, 3]);
    let elem = fx.b.ins().iadd(base, lanes);
    let key = fx.b.ins().splat(I32X4, fx.key);
    math::keep_mask(fx, key, elem, rate)
}

/// Table: `[x, y]`; the runtime key selects the masks.
fn emit_dropout(fx: &mut Fx, base: usize, width: usize, rate: f32, alpha: bool) {
    let (x, slot) = forward_input(fx, base);
    let y = fx.arg(slot);
    let flags = if base > 0 { rw() } else { ro() };
    let zero = fx.zero4();
    for_each_vector(fx, width, |fx, off, r, j| {
        let keep = dropout_mask(fx, r, j, width, rate);
        let px = fx.b.ins().iadd(x, off);
        let v = fx.b.ins().load(F32X4, flags, px, 0);
        let out = if alpha {
            let (alpha_p, a, b) = alpha_dropout_constants(rate);
            let dropped = fx.splat(alpha_p);
            let t = fx.select(keep, v, dropped);
            let av = fx.splat(a);
            let bv = fx.splat(b);
            fx.fma(t, av, bv)
        } else {
            let s = fx.mulc(v, 1.0 / (1.0 - rate));
            fx.select(keep, s, zero)
        };
        let py = fx.b.ins().iadd(y, off);
        fx.store(out, py, 0);
    });
}

/// Table: `[dy, dx]` (may alias); same key as the forward call, hence the same masks.
fn emit_dropout_backward(fx: &mut Fx, width: usize, rate: f32, alpha: bool) {
    let dy = fx.arg(0);
    let dx = fx.arg(1);
    let zero = fx.zero4();
    let scale = if alpha {
        alpha_dropout_constants(rate).1
    } else {
        1.0 / (1.0 - rate)
    };
    for_each_vector(fx, width, |fx, off, r, j| {
        let keep = dropout_mask(fx, r, j, width, rate);
        let pg = fx.b.ins().iadd(dy, off);
        let g = fx.b.ins().load(F32X4, rw(), pg, 0);
        let s = fx.mulc(g, scale);
        let out = fx.select(keep, s, zero);
        let pd = fx.b.ins().iadd(dx, off);
        fx.store(out, pd, 0);
    });
}

/// The softmax cross-entropy head.
///
/// With `loss`: table `[logits, labels (u8), dlogits, stats]`; writes `dlogits = (p - onehot)/n`
/// (zero in padding lanes), `stats[0] = mean loss`, `stats[1] = correct count` (as f32).
/// Without: table `[logits, probs]`, probabilities in the padded layout.
fn emit_head(fx: &mut Fx, classes: usize, loss: bool) {
    let logits = fx.arg(0);
    let stride = row_stride(classes);
    let blocks = pad4(classes) / 4;
    if !loss {
        let probs = fx.arg(1);
        for_each_row(fx, classes, |fx, off| {
            let row = fx.b.ins().iadd(logits, off);
            let out = fx.b.ins().iadd(probs, off);
            softmax_row(fx, ro(), row, Some(out), classes);
        });
        return;
    }
    let labels = fx.arg(1);
    let dlogits = fx.arg(2);
    let stats = fx.arg(3);
    let zero_s = fx.fconst(0.0);
    let loss_sum = fx.var(F32, zero_s);
    let correct = fx.var(F32, zero_s);
    let nf = fx.rows_f32();
    let one = fx.fconst(1.0);
    let inv_n = fx.b.ins().fdiv(one, nf);
    let inv_n4 = fx.b.ins().splat(F32X4, inv_n);
    let zero = fx.iconst(0);
    let rows = fx.rows;
    let last_mask = real_lanes(fx, classes);
    fx.loop_up(zero, rows, 1, |fx, r| {
        let off = fx.b.ins().imul_imm_s(r, (stride * 4) as i64);
        let row = fx.b.ins().iadd(logits, off);
        let grad = fx.b.ins().iadd(dlogits, off);
        // Probabilities go to the gradient buffer first, then are turned into the gradient.
        let (m, s) = softmax_row(fx, ro(), row, Some(grad), classes);
        let pl = fx.b.ins().iadd(labels, r);
        let label = fx.b.ins().uload8(I32, bytes(), pl, 0);
        let label_f = fx.b.ins().fcvt_from_sint(F32, label);
        let label4 = fx.b.ins().splat(F32X4, label_f);
        let big = fx.splat(f32::MAX);
        let mv = fx.b.ins().splat(F32X4, m);
        let mut first = big;
        let mut logit_label = fx.zero4();
        let zero4 = fx.zero4();
        let one4 = fx.splat(1.0);
        for blk in 0..blocks {
            let idx = fx.const_f4(std::array::from_fn(|l| (blk * 4 + l) as f32));
            let v = fx.load4(ro(), row, (blk * 4) as i64);
            let is_label = fx.cmp(FloatCC::Equal, idx, label4);
            let picked = fx.select(is_label, v, zero4);
            logit_label = fx.add(logit_label, picked);
            // Lowest index reaching the maximum, ignoring padding lanes.
            let mut at_max = fx.cmp(FloatCC::Equal, v, mv);
            if blk + 1 == blocks {
                at_max = fx.b.ins().band(at_max, last_mask);
            }
            let cand = fx.select(at_max, idx, big);
            first = fx.min(cand, first);
            let p = fx.load4(rw(), grad, (blk * 4) as i64);
            let onehot = fx.select(is_label, one4, zero4);
            let d = fx.sub(p, onehot);
            let d = fx.mul(d, inv_n4);
            fx.store(d, grad, (blk * 4) as i64);
        }
        // -log p_label = ln Σexp(x - max) + max - x_label
        let sv = fx.b.ins().splat(F32X4, s);
        let lnv = math::ln(fx, sv);
        let ln_s = fx.b.ins().extractlane(lnv, 0);
        let xl = fx.hsum(logit_label);
        let t = fx.b.ins().fadd(ln_s, m);
        let row_loss = fx.b.ins().fsub(t, xl);
        let acc = fx.get(loss_sum);
        let acc = fx.b.ins().fadd(acc, row_loss);
        fx.set(loss_sum, acc);
        let l: Vec<Value> = (0..4u8).map(|i| fx.b.ins().extractlane(first, i)).collect();
        let a = fx.b.ins().fmin(l[0], l[1]);
        let c = fx.b.ins().fmin(l[2], l[3]);
        let arg = fx.b.ins().fmin(a, c);
        let hit = fx.b.ins().fcmp(FloatCC::Equal, arg, label_f);
        let one_s = fx.fconst(1.0);
        let zero_s = fx.fconst(0.0);
        let inc = fx.b.ins().select(hit, one_s, zero_s);
        let cur = fx.get(correct);
        let cur = fx.b.ins().fadd(cur, inc);
        fx.set(correct, cur);
    });
    let total = fx.get(loss_sum);
    let mean = fx.b.ins().fmul(total, inv_n);
    fx.b.ins().store(rw(), mean, stats, 0);
    let c = fx.get(correct);
    fx.b.ins().store(rw(), c, stats, 4);
}

/// Table: `[x, dy, dkernel, (kernel, slot.., (kernel_t,)) (dbias,)]`: `dW = xᵀ·dy` for `inputs`
/// rows of the kernel, and `db = Σ dy`. With a fused update, `dkernel` is scratch (its first
/// rows, or all of it for a batch longer than one chunk), and the update writes `kernel`, its
/// slots and the columns `first..first + inputs` of every row of the transposed copy.
fn emit_weight_grad(
    fx: &mut Fx,
    inputs: usize,
    x_ld: usize,
    units: usize,
    batch: usize,
    bias: bool,
    update: Option<FusedUpdate>,
) {
    let x = fx.arg(0);
    let dy = fx.arg(1);
    let dw = fx.arg(2);
    let mut next = 3;
    let mut arg = |fx: &mut Fx| {
        next += 1;
        fx.arg(next - 1)
    };
    let update = update.map(|u| {
        let param = arg(fx);
        let mut slots = [None; 3];
        for slot in slots.iter_mut().take(u.kind.slot_count()) {
            *slot = Some(arg(fx));
        }
        let transposed = u.transposed.then(|| (arg(fx), x_ld));
        let normalized = u.normalized.then(|| Normalized {
            gamma: arg(fx),
            beta: arg(fx),
            dgamma: arg(fx),
            dbeta: arg(fx),
            sums: arg(fx),
        });
        EpilogueUpdate {
            kind: u.kind,
            param,
            slots,
            transposed,
            normalized,
            columns: units,
        }
    });
    let db = bias.then(|| arg(fx));
    if let Some(nz) = update.and_then(|u| u.normalized) {
        emit_column_sums(fx, dy, units, nz.sums);
    }
    let n = pad4(units);
    emit_matmul(
        fx,
        &MatMul {
            m: Dim::Static(inputs),
            k: Dim::Rows,
            n,
            a: x,
            a_row: 1,
            a_col: x_ld,
            a_flags: ro(),
            b: dy,
            ldb: row_stride(units),
            c: dw,
            ldc: n,
            epilogue: Epilogue {
                update,
                ..Epilogue::default()
            },
            rows_outer: true,
            k_unroll: Some(batch),
        },
    );
    if let Some(db) = db {
        emit_column_sums(fx, dy, units, db);
    }
}

/// `out = Σ dy` over the rows, for each of `width` columns.
fn emit_column_sums(fx: &mut Fx, dy: Value, width: usize, out: Value) {
    let zero = fx.zero4();
    for_each_column_block(fx, width, |fx, jb| {
        let acc = fx.var(F32X4, zero);
        let col = fx.b.ins().iadd(dy, jb);
        for_each_row(fx, width, |fx, off| {
            let p = fx.b.ins().iadd(col, off);
            let g = fx.load4(ro(), p, 0);
            let s = fx.get(acc);
            let s = fx.add(s, g);
            fx.set(acc, s);
        });
        let s = fx.get(acc);
        let p = fx.b.ins().iadd(out, jb);
        fx.store(s, p, 0);
    });
}

/// Table: `[dy, kernel_t, dx]`: `dx = dy·Wᵀ` from the transposed copy `kernel_t`
/// (`[units, row_stride(inputs)]`).
fn emit_input_grad(fx: &mut Fx, inputs: usize, units: usize, activation: Option<Activation>) {
    let dy = fx.arg(0);
    let wt = fx.arg(1);
    let derivative = activation.map(|a| (a, fx.arg(2)));
    let dx = fx.arg(if activation.is_some() { 3 } else { 2 });
    let in_pad = pad4(inputs);
    emit_matmul(
        fx,
        &MatMul {
            m: Dim::Rows,
            k: Dim::Static(units),
            n: in_pad,
            a: dy,
            a_row: row_stride(units),
            a_col: 1,
            a_flags: ro(),
            b: wt,
            ldb: row_stride(inputs),
            c: dx,
            ldc: row_stride(inputs),
            epilogue: Epilogue {
                derivative,
                ..Epilogue::default()
            },
            rows_outer: false,
            k_unroll: None,
        },
    );
}

/// `wt[c][r] = w[r][c]` for a `[rows, cols]` kernel. Table: `[w, wt]`. Blocks of 4 rows are
/// read as whole vectors, transposed in registers 4×4 and stored as whole vectors of `wt`; the
/// rows after the last whole block are stored lane by lane. Only real columns are stored (`wt`
/// has `cols` rows), and the padding lanes of `wt`'s rows are never written.
fn emit_transpose(fx: &mut Fx, rows: usize, cols: usize) {
    let w = fx.arg(0);
    let wt = fx.arg(1);
    let ld_w = pad4(cols) as i64;
    // Rows of `wt` are as long as rows of the layer's input, and padded the same way.
    let ld_t = row_stride(rows) as i64;
    let blocks = pad4(cols) / 4;
    let whole_rows = rows / 4 * 4;
    if whole_rows > 0 {
        fx.loop_const(0, whole_rows as i64, 4, |fx, r| {
            let src = fx.offset(w, r, ld_w * 4);
            let dst = fx.offset(wt, r, 4);
            for blk in 0..blocks {
                let c0 = 4 * blk;
                let block: Vec<Value> = (0..4)
                    .map(|q| fx.load4(ro(), src, q as i64 * ld_w + c0 as i64))
                    .collect();
                store_as_columns(fx, &block, dst, ld_t as usize, c0, 4.min(cols - c0));
            }
        });
    }
    for r in whole_rows..rows {
        let dst = fx.add_imm(wt, r as i64 * 4);
        for blk in 0..blocks {
            let c0 = 4 * blk;
            let v = fx.load4(ro(), w, r as i64 * ld_w + c0 as i64);
            store_as_columns(fx, &[v], dst, ld_t as usize, c0, 4.min(cols - c0));
        }
    }
}

/// Table: `[param, grad, stats, slot0, slot1, slot2]` (as many slots as the rule keeps); scalars
/// as `update_scalars`. Adds the regularization penalty of the pre-update weights to `stats[0]`.
fn emit_update(fx: &mut Fx, u: &Update) {
    let w = fx.arg(0);
    let g = fx.arg(1);
    let stats = fx.arg(2);
    let slots: Vec<Value> = (0..u.kind.slot_count()).map(|s| fx.arg(3 + s)).collect();
    let len = u.len as i64;
    let zero = fx.zero4();
    let reg = (!u.regularizer.is_zero()).then_some(u.regularizer);

    // Pass 1: regularization gradient and penalty, and the squared norm for clipping.
    let mut clip_scale = None;
    if reg.is_some() || u.clipnorm.is_some() {
        let pen = fx.var(F32X4, zero);
        let sq = fx.var(F32X4, zero);
        fx.loop_const(0, len, 4, |fx, i| {
            let off = fx.b.ins().imul_imm_s(i, 4);
            let pg = fx.b.ins().iadd(g, off);
            let mut gv = fx.load4(rw(), pg, 0);
            if let Some(reg) = reg {
                let pw = fx.b.ins().iadd(w, off);
                let wv = fx.load4(rw(), pw, 0);
                let aw = fx.b.ins().fabs(wv);
                let l1 = fx.splat(reg.l1);
                let l2 = fx.splat(reg.l2);
                let w2 = fx.mul(wv, wv);
                let p = fx.get(pen);
                let p = fx.fma(l1, aw, p);
                let p = fx.fma(l2, w2, p);
                fx.set(pen, p);
                let z = fx.zero4();
                let one = fx.splat(1.0);
                let mone = fx.splat(-1.0);
                let pos = fx.cmp(FloatCC::GreaterThan, wv, z);
                let neg = fx.cmp(FloatCC::LessThan, wv, z);
                let s = fx.select(neg, mone, z);
                let sign = fx.select(pos, one, s);
                gv = fx.fma(l1, sign, gv);
                let two_l2 = fx.splat(2.0 * reg.l2);
                gv = fx.fma(two_l2, wv, gv);
                fx.store(gv, pg, 0);
            }
            let s = fx.get(sq);
            let s = fx.fma(gv, gv, s);
            fx.set(sq, s);
        });
        if reg.is_some() {
            let p = fx.get(pen);
            let p = fx.hsum(p);
            let old = fx.b.ins().load(F32, rw(), stats, 0);
            let new = fx.b.ins().fadd(old, p);
            fx.b.ins().store(rw(), new, stats, 0);
        }
        if let Some(clip) = u.clipnorm {
            // Keras `clip_by_norm`: g · clip / max(‖g‖, clip).
            let s = fx.get(sq);
            let s = fx.hsum(s);
            let norm = fx.b.ins().sqrt(s);
            let c = fx.fconst(clip);
            let d = fx.b.ins().fmax(norm, c);
            let k = fx.b.ins().fdiv(c, d);
            clip_scale = Some(fx.b.ins().splat(F32X4, k));
        }
    }

    // Pass 2: the update rule.
    let scalars = step_scalar_vectors(fx);
    fx.loop_const(0, len, 4, |fx, i| {
        let off = fx.b.ins().imul_imm_s(i, 4);
        let pg = fx.b.ins().iadd(g, off);
        let pw = fx.b.ins().iadd(w, off);
        let mut gv = fx.load4(rw(), pg, 0);
        if let Some(k) = clip_scale {
            gv = fx.mul(gv, k);
        }
        let wv = fx.load4(rw(), pw, 0);
        let ps: Vec<Value> = slots.iter().map(|s| fx.b.ins().iadd(*s, off)).collect();
        let new_w = update_rule(fx, u.kind, wv, gv, &ps, scalars);
        fx.store(new_w, pw, 0);
    });

    if let Some((max_value, rows, cols)) = u.max_norm {
        emit_max_norm(fx, w, max_value, rows, cols);
    }
}

/// Keras `MaxNorm(axis=0)`: each column scaled by `clip(‖col‖, 0, max) / (1e-7 + ‖col‖)`.
fn emit_max_norm(fx: &mut Fx, w: Value, max_value: f32, rows: usize, cols: usize) {
    let zero = fx.zero4();
    fx.loop_const(0, cols as i64, 4, |fx, j| {
        let col = fx.offset(w, j, 4);
        let acc = fx.var(F32X4, zero);
        fx.loop_const(0, rows as i64, 1, |fx, r| {
            let p = fx.offset(col, r, (cols * 4) as i64);
            let v = fx.load4(rw(), p, 0);
            let s = fx.get(acc);
            let s = fx.fma(v, v, s);
            fx.set(acc, s);
        });
        let s = fx.get(acc);
        let norm = fx.b.ins().sqrt(s);
        let zero = fx.zero4();
        let mx = fx.splat(max_value);
        let desired = fx.min(norm, mx);
        let desired = fx.max(desired, zero);
        let den = fx.addc(norm, 1e-7);
        let k = fx.div(desired, den);
        fx.loop_const(0, rows as i64, 1, |fx, r| {
            let p = fx.offset(col, r, (cols * 4) as i64);
            let v = fx.load4(rw(), p, 0);
            let v = fx.mul(v, k);
            fx.store(v, p, 0);
        });
    });
}
