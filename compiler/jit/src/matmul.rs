//! The register-blocked matrix multiply every dense kernel is built from:
//! `C[m, n] (+)= A(m, k) · B[k, n]`, then an optional epilogue (bias, pre-activation store,
//! activation, or an activation's derivative) on the accumulators before the single store of `C`.
//!
//! `B` and `C` are row-major with rows padded to a multiple of 4 floats, so every column block is
//! whole f32x4 vectors. `A` is read one scalar at a time and broadcast, through two strides, which
//! makes the same loop nest serve `x · W` (A = x), `xᵀ · dy` (A = x read down its columns) and
//! `dy · Wᵀ` (B = the transposed kernel copy). Nothing here knows about layers.
//!
//! The kernels that call this are compiled without the e-graph pass (`Kernel::in_program_order`),
//! so the order written here is the schedule. Blocks are 4 rows × 2 vectors with two values of
//! `t` per k iteration: 8 accumulators, the 2 `B` vectors of the step, and one broadcast per FMA,
//! loaded straight from memory (`vbroadcastss m32`). x64 lowers `fma(a, b, c)` with `a` as the
//! destination, so `a` is the broadcast, which dies there; with one shared broadcast per row, the
//! lowering would copy it for every column and the 4 × 3 blocks tried before spilled. The column
//! remainder (1 vector) and the row remainder (single rows) get their own blocks.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::types::{F32X4, I64};
use cranelift_codegen::ir::InstBuilder;
use cranelift_codegen::ir::{MemFlagsData, Value};
use cranelift_frontend::Variable;

use super::elementwise::{
    act_backward, act_forward, step_scalar_vectors, store_as_columns, update_rule,
};
use super::emit::{ro, rw, Fx};
use netc_ir::ir::{Activation, OptimizerKind};

/// A loop extent: a compile-time constant or the kernel's runtime row count.
#[derive(Clone, Copy, Debug)]
pub enum Dim {
    Static(usize),
    Rows,
    /// A count computed in the kernel (the rows of the last chunk of a batch).
    Dyn(Value),
}

impl Dim {
    fn value(self, fx: &mut Fx) -> Value {
        match self {
            Dim::Static(v) => fx.iconst(v as i64),
            Dim::Rows => fx.rows,
            Dim::Dyn(v) => v,
        }
    }

    fn multiple_of(self, step: usize) -> bool {
        matches!(self, Dim::Static(v) if v % step == 0)
    }
}

/// What happens to an accumulator block before it is stored.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue {
    /// Add the old contents of `C` (accumulate instead of overwrite).
    pub accumulate: bool,
    /// Bias vector of `n` floats added to every row.
    pub bias: Option<Value>,
    /// Where to store the pre-activation values (same layout as `C`), when the backward pass of
    /// the activation needs them.
    pub pre_activation: Option<Value>,
    pub activation: Option<Activation>,
    /// Multiply by the derivative of this activation, from saved values laid out as `C`
    /// (`elementwise::act_backward`; an input gradient only).
    pub derivative: Option<(Activation, Value)>,
    /// Update the kernel rows of each block row once its gradient is complete (`update_rows`;
    /// a weight gradient only, `rows_outer`).
    pub update: Option<EpilogueUpdate>,
}

/// The buffers of an update fused into a weight gradient (`kernels::FusedUpdate`).
#[derive(Clone, Copy, Debug)]
pub struct EpilogueUpdate {
    pub kind: OptimizerKind,
    /// The parameter, laid out as `C`, updated in place.
    pub param: Value,
    /// The rule's slots (`OptimizerKind::slot_count` of them), laid out as `C`.
    pub slots: [Option<Value>; 3],
    /// The transposed copy to refresh, and the floats between its rows.
    pub transposed: Option<(Value, usize)>,
    /// The batch norm before the layer, when `A` is its `x̂` (`kernels::FusedUpdate::normalized`).
    pub normalized: Option<Normalized>,
    /// Real columns of `C`: the transposed copy has a row for each of these only.
    pub columns: usize,
}

/// The batch norm's vectors, one float per row of `C` (`gamma`, `beta`, and the gradients
/// written), and `sums`, the column sums of `B` (`Σ dy`, one float per column).
#[derive(Clone, Copy, Debug)]
pub struct Normalized {
    pub gamma: Value,
    pub beta: Value,
    pub dgamma: Value,
    pub dbeta: Value,
    pub sums: Value,
}

#[derive(Clone, Copy, Debug)]
pub struct MatMul {
    pub m: Dim,
    pub k: Dim,
    /// Columns of `B` and `C`, a multiple of 4.
    pub n: usize,
    pub a: Value,
    /// Elements between `A(i, t)` and `A(i + 1, t)`.
    pub a_row: usize,
    /// Elements between `A(i, t)` and `A(i, t + 1)`.
    pub a_col: usize,
    /// Flags of the `A` loads: `ro()` unless the same kernel wrote `A` earlier.
    pub a_flags: MemFlagsData,
    pub b: Value,
    pub ldb: usize,
    pub c: Value,
    pub ldc: usize,
    pub epilogue: Epilogue,
    /// Loop over row blocks outside column blocks. Right when `m` is large and `k` small (the
    /// weight gradient `xᵀ·dy`): each block row of `C` is written once, with `B` in L1. Wrong
    /// when `k` is large (`x · W`): every row block would stream all of `B` again.
    pub rows_outer: bool,
    /// When `k` is `Rows`: the usual row count (the batch size). A full batch then runs a k loop
    /// unrolled completely, a smaller last batch the generic loop.
    pub k_unroll: Option<usize>,
}

const MR: usize = 4;
const NR: usize = 2;
/// Values of `t` per iteration of the k loop.
const KU: usize = 4;
/// Longest k loop that is unrolled completely.
const FULL_UNROLL: usize = 64;

pub fn emit_matmul(fx: &mut Fx, mm: &MatMul) {
    debug_assert_eq!(mm.n % 4, 0, "matmul columns are padded to whole vectors");
    debug_assert!(
        mm.epilogue.update.is_none() || mm.rows_outer,
        "a fused update follows the weight gradient's loop order"
    );
    #[cfg(target_arch = "x86_64")]
    if fx.tier() != crate::tier::Tier::F32x4 {
        emit_full_width(fx, mm);
        return;
    }
    if mm.rows_outer {
        match (mm.k, mm.k_unroll) {
            (Dim::Rows, Some(full)) if full > FULL_UNROLL => {
                // The chunks sum the whole gradient into `C` first; the update then streams
                // through it, row block by row block.
                let mut sums = *mm;
                sums.epilogue.update = None;
                emit_k_chunks(fx, &sums);
                if let Some(u) = mm.epilogue.update {
                    emit_row_blocks(fx, mm, |fx, i, mr| update_rows(fx, mm, u, i, mr, false));
                }
            }
            _ => emit_rows_outer(fx, mm),
        }
        return;
    }
    let vectors = mm.n / 4;
    let full = vectors / NR;
    let rem = vectors % NR;
    if full > 0 {
        fx.loop_const(0, (full * NR * 4) as i64, (NR * 4) as i64, |fx, j| {
            emit_rows(fx, mm, j, NR);
        });
    }
    if rem > 0 {
        let j = fx.iconst((full * NR * 4) as i64);
        emit_rows(fx, mm, j, rem);
    }
}

/// `emit_matmul` at a full-width tier: the product is a call to the tier's GEMM (`x86`), and
/// the epilogue a pass over `C` after it, in f32x4 (`emit_epilogue_pass`). With a fused update
/// and a batch of one chunk (`C` one block row of scratch, `update_rows`), each block row of the
/// gradient is one call followed by its update; otherwise one call computes all of `C` (the
/// whole batch as `k`, so each element is one chain of FMAs in the order of the rows, which the
/// f32x4 loops match for batches up to `FULL_UNROLL`) and the update streams through it.
#[cfg(target_arch = "x86_64")]
fn emit_full_width(fx: &mut Fx, mm: &MatMul) {
    use crate::x86::GemmShape;
    let shape = GemmShape {
        n: mm.n,
        lda: mm.a_row,
        a_k: mm.a_col,
        ldb: mm.ldb,
        ldc: mm.ldc,
        accumulate: mm.epilogue.accumulate,
        epilogue: generated_epilogue(fx.tier(), mm),
        // Deep products (the first layer's 3,072 inputs) in blocks whose rows of `B` (96 KiB
        // for 100 units) stay in L2 for all the rows, where the whole kernel (1.2 MiB) did not.
        kc: match mm.k {
            Dim::Static(k) if k >= 1024 => 256,
            _ => 0,
        },
    };
    let k = mm.k.value(fx);
    // The generated epilogue's operand: the bias, or the saved activation outputs.
    let operand = match (shape.epilogue, mm.epilogue.bias, mm.epilogue.derivative) {
        (Some(_), Some(b), _) => b,
        (Some(_), None, Some((_, saved))) => saved,
        _ => fx.iconst(0),
    };
    let scratch = mm.rows_outer
        && mm.epilogue.update.is_some()
        && !matches!((mm.k, mm.k_unroll), (Dim::Rows, Some(full)) if full > FULL_UNROLL);
    if scratch {
        let u = mm.epilogue.update.expect("checked above");
        emit_row_blocks(fx, mm, |fx, i, mr| {
            let a = fx.offset(mm.a, i, (mm.a_row * 4) as i64);
            let m = fx.iconst(mr as i64);
            fx.call_gemm(shape, [a, mm.b, mm.c, m, k, operand]);
            update_rows(fx, mm, u, i, mr, true);
        });
        return;
    }
    let m = mm.m.value(fx);
    fx.call_gemm(shape, [mm.a, mm.b, mm.c, m, k, operand]);
    if shape.epilogue.is_none() {
        emit_epilogue_pass(fx, mm);
    }
    if let Some(u) = mm.epilogue.update {
        emit_row_blocks(fx, mm, |fx, i, mr| update_rows(fx, mm, u, i, mr, false));
    }
}

/// The epilogue the GEMM does itself, at full width, when it has `mm`'s (AVX-512: a forward
/// pass's bias and ELU, SELU or no activation, or an input gradient's ELU or SELU derivative);
/// `None` leaves it to `emit_epilogue_pass`.
#[cfg(target_arch = "x86_64")]
fn generated_epilogue(tier: crate::tier::Tier, mm: &MatMul) -> Option<crate::x86::Epilogue> {
    use crate::x86::{Epilogue as Generated, EpilogueActivation as Act};
    let ep = mm.epilogue;
    if tier != crate::tier::Tier::Avx512
        || mm.rows_outer
        || ep.accumulate
        || ep.update.is_some()
        || ep.pre_activation.is_some()
    {
        return None;
    }
    let generated = |a: Option<Activation>| match a {
        None | Some(Activation::Linear) => Some(Act::None),
        Some(Activation::Elu { alpha }) => Some(Act::Elu {
            alpha_bits: alpha.to_bits(),
        }),
        Some(Activation::Selu) => Some(Act::Selu),
        Some(_) => None,
    };
    if let Some((activation, _)) = ep.derivative {
        if ep.bias.is_some() || ep.activation.is_some() {
            return None;
        }
        return match generated(Some(activation))? {
            Act::None => None,
            activation => Some(Generated::Derivative { activation }),
        };
    }
    let activation = generated(ep.activation)?;
    if ep.bias.is_none() && activation == Act::None {
        return None;
    }
    Some(Generated::Forward {
        bias: ep.bias.is_some(),
        activation,
    })
}

/// The element-wise part of `mm`'s epilogue (bias, activation derivative, pre-activation store,
/// activation) over all of `C`, row by row, in the order `emit_block` applies it to its
/// accumulators; nothing when there is none.
#[cfg(target_arch = "x86_64")]
fn emit_epilogue_pass(fx: &mut Fx, mm: &MatMul) {
    let ep = mm.epilogue;
    if ep.bias.is_none()
        && ep.derivative.is_none()
        && ep.pre_activation.is_none()
        && ep.activation.is_none()
    {
        return;
    }
    let zero = fx.iconst(0);
    let limit = mm.m.value(fx);
    let row_bytes = (mm.ldc * 4) as i64;
    fx.loop_up(zero, limit, 1, |fx, i| {
        let c0 = fx.offset(mm.c, i, row_bytes);
        let pre = ep.pre_activation.map(|z| fx.offset(z, i, row_bytes));
        let derivative = ep
            .derivative
            .map(|(act, s)| (act, fx.offset(s, i, row_bytes)));
        fx.loop_const(0, mm.n as i64, 4, |fx, j| {
            let c = fx.offset(c0, j, 4);
            let v = fx.load4(rw(), c, 0);
            let at = |fx: &mut Fx, p: Value| (fx.offset(p, j, 4), 0);
            let bias = ep.bias.map(|b| at(fx, b));
            let derivative = derivative.map(|(act, s)| (act, at(fx, s)));
            let pre = pre.map(|z| at(fx, z));
            let v = epilogue_vector(fx, ep.activation, v, bias, derivative, pre);
            fx.store(v, c, 0);
        });
    });
}

/// Every block of `C`, row block by row block. With a fused update (a batch of one chunk, `C`
/// then scratch), each block row is updated as soon as its gradient is complete.
fn emit_rows_outer(fx: &mut Fx, mm: &MatMul) {
    emit_row_blocks(fx, mm, |fx, i, mr| {
        emit_columns(fx, mm, i, mr);
        if let Some(u) = mm.epilogue.update {
            update_rows(fx, mm, u, i, mr, true);
        }
    });
}

/// `body(i, mr)` for every block of `mr` rows of `C`: blocks of `MR`, then single rows.
fn emit_row_blocks(fx: &mut Fx, mm: &MatMul, mut body: impl FnMut(&mut Fx, Value, usize)) {
    let zero = fx.iconst(0);
    let limit = mm.m.value(fx);
    let rest = fx.loop_up(zero, limit, MR as i64, |fx, i| body(fx, i, MR));
    if !mm.m.multiple_of(MR) {
        fx.loop_up(rest, limit, 1, |fx, i| body(fx, i, 1));
    }
}

/// The fused update of kernel rows `i..i + mr`, once `C` holds their whole gradient (at its
/// row 0 when `scratch`, one block row's worth, else at row `i`): vector by
/// vector along the rows, `update_rule` on the gradient (from L1), the kernel and the slots,
/// then, 4 × 4 at a time, the new rows stored as columns of the transposed copy. Each array is
/// one sequential stream per row, which the prefetchers follow; updating block by block inside
/// the multiply's epilogue instead touched twelve short runs of lines between FMAs, and was
/// slower than the separate update kernel.
fn update_rows(fx: &mut Fx, mm: &MatMul, u: EpilogueUpdate, i: Value, mr: usize, scratch: bool) {
    let row_bytes = (mm.ldc * 4) as i64;
    let g0 = if scratch {
        mm.c
    } else {
        fx.offset(mm.c, i, row_bytes)
    };
    let w0 = fx.offset(u.param, i, row_bytes);
    let slots: Vec<Value> = u
        .slots
        .iter()
        .flatten()
        .map(|s| fx.offset(*s, i, row_bytes))
        .collect();
    let wt0 = u.transposed.map(|(wt, ld_t)| (fx.offset(wt, i, 4), ld_t));
    let scalars = step_scalar_vectors(fx);
    if let (Some(nz), None) = (u.normalized, wt0) {
        update_normalized_rows(fx, mm, u, nz, (i, mr), (g0, w0, &slots), scalars);
        return;
    }
    let normalized = u.normalized.map(|nz| {
        let zero = fx.zero4();
        let rows: Vec<_> = (0..mr)
            .map(|r| NormalizedRow::new(fx, nz, i, r, zero))
            .collect();
        (nz, rows)
    });
    // Element `e` of each row; `known` when it is the last vector, whose lanes past
    // `columns` are padding without a row in the transposed copy.
    let vector = |fx: &mut Fx, e: Value, known: Option<usize>| {
        let mut new_w = Vec::with_capacity(mr);
        // Written at the start of this kernel: a load that keeps its place.
        let sums = normalized.as_ref().map(|(nz, _)| {
            let p = fx.offset(nz.sums, e, 4);
            fx.load4(rw(), p, 0)
        });
        for r in 0..mr {
            let off = (r * mm.ldc) as i64;
            let (mut g, w, pw, ps) = update_operands(fx, (g0, w0, &slots), e, off);
            if let (Some((_, rows)), Some(s)) = (&normalized, sums) {
                g = rows[r].gradient(fx, w, g, s);
            }
            let w = update_rule(fx, u.kind, w, g, &ps, scalars);
            fx.store(w, pw, 0);
            new_w.push(w);
        }
        let Some((wt, ld_t)) = wt0 else { return };
        let lanes = known.map_or(4, |c| 4.min(u.columns - c));
        let base = fx.offset(wt, e, (ld_t * 4) as i64);
        store_as_columns(fx, &new_w, base, ld_t, 0, lanes);
    };
    let vectors = mm.n / 4;
    let padded_last = u.transposed.is_some() && u.columns < mm.n;
    let looped = if padded_last { vectors - 1 } else { vectors };
    if looped > 0 {
        fx.loop_const(0, (looped * 4) as i64, 4, |fx, e| vector(fx, e, None));
    }
    if padded_last {
        let last = (vectors - 1) * 4;
        let e = fx.iconst(last as i64);
        vector(fx, e, Some(last));
    }
    if let Some((nz, rows)) = normalized {
        for (r, row) in rows.iter().enumerate() {
            row.store_sums(fx, nz, i, r);
        }
    }
}

/// One kernel row's share of a normalized update (`kernels::FusedUpdate::normalized`): its `γᵢ`
/// and `βᵢ` in every lane, and the lane-wise sums for `dγᵢ` and `dβᵢ`.
#[derive(Clone, Copy)]
struct NormalizedRow {
    gamma: Value,
    beta: Value,
    dgamma: Variable,
    dbeta: Variable,
}

impl NormalizedRow {
    /// Row `r` of the block row at kernel row `i`, its sums at `zero`.
    fn new(fx: &mut Fx, nz: Normalized, i: Value, r: usize, zero: Value) -> NormalizedRow {
        let [gamma, beta] = [nz.gamma, nz.beta].map(|p| {
            let p = fx.offset(p, i, 4);
            fx.bcast(ro(), p, r as i64)
        });
        NormalizedRow {
            gamma,
            beta,
            dgamma: fx.var(F32X4, zero),
            dbeta: fx.var(F32X4, zero),
        }
    }

    /// Adds `w·G` and `w·s` to the sums (the kernel `w` before the update) and returns the
    /// kernel's gradient `γᵢ·G + βᵢ·s`, for one vector of `G = x̂ᵀ·dy` and of `s = Σ dy`.
    fn gradient(&self, fx: &mut Fx, w: Value, g: Value, s: Value) -> Value {
        let a = fx.get(self.dgamma);
        let a = fx.fma(w, g, a);
        fx.set(self.dgamma, a);
        let b = fx.get(self.dbeta);
        let b = fx.fma(w, s, b);
        fx.set(self.dbeta, b);
        let bs = fx.mul(self.beta, s);
        fx.fma(self.gamma, g, bs)
    }

    /// Stores `dγᵢ` and `dβᵢ`, each the sum of its lanes.
    fn store_sums(&self, fx: &mut Fx, nz: Normalized, i: Value, r: usize) {
        for (sum, out) in [(self.dgamma, nz.dgamma), (self.dbeta, nz.dbeta)] {
            let v = fx.get(sum);
            let v = fx.hsum(v);
            let p = fx.offset(out, i, 4);
            fx.store(v, p, r as i64);
        }
    }
}

/// What the update of one vector of a kernel row needs, `off` floats past the block row's first
/// row, at element `e`: the gradient and the weights (loaded), the weights' address, and the
/// rule's slots' addresses.
fn update_operands(
    fx: &mut Fx,
    (g0, w0, slots): (Value, Value, &[Value]),
    e: Value,
    off: i64,
) -> (Value, Value, Value, Vec<Value>) {
    let pg = fx.offset(g0, e, 4);
    let g = fx.load4(rw(), pg, off);
    let pw = fx.offset(w0, e, 4);
    let pw = fx.add_imm(pw, off * 4);
    let ps: Vec<Value> = slots
        .iter()
        .map(|slot| {
            let p = fx.offset(*slot, e, 4);
            fx.add_imm(p, off * 4)
        })
        .collect();
    let w = fx.load4(rw(), pw, 0);
    (g, w, pw, ps)
}

/// `update_rows` for a layer whose input is a batch norm's `x̂` and which has no transposed copy
/// (`kernels::FusedUpdate::normalized`), one kernel row after the other: each row's `γᵢ`,
/// `βᵢ` and the two sums for `dγᵢ` and `dβᵢ` are all that stays in registers besides the rule's
/// own, where the rows side by side held four of each and spilled the update's values to the
/// stack (16 xmm registers). Each row's sums run over its vectors in the same order either way.
fn update_normalized_rows(
    fx: &mut Fx,
    mm: &MatMul,
    u: EpilogueUpdate,
    nz: Normalized,
    (i, mr): (Value, usize),
    (g0, w0, slots): (Value, Value, &[Value]),
    scalars: [Value; crate::elementwise::update_scalars::RULE],
) {
    let zero = fx.zero4();
    for r in 0..mr {
        // Floats from the block row's first row to row `r`.
        let off = (r * mm.ldc) as i64;
        let row = NormalizedRow::new(fx, nz, i, r, zero);
        fx.loop_const(0, mm.n as i64, 4, |fx, e| {
            // Written at the start of this kernel: a load that keeps its place.
            let ps = fx.offset(nz.sums, e, 4);
            let s = fx.load4(rw(), ps, 0);
            let (g, w, pw, ps) = update_operands(fx, (g0, w0, slots), e, off);
            let g = row.gradient(fx, w, g, s);
            let w = update_rule(fx, u.kind, w, g, &ps, scalars);
            fx.store(w, pw, 0);
        });
        row.store_sums(fx, nz, i, r);
    }
}

/// `emit_rows_outer` for a batch (k) longer than `FULL_UNROLL` rows: `C` is cleared, then
/// chunk by chunk of `FULL_UNROLL` rows each pass adds its chunk's products into it. A chunk of
/// `B` (`dy`: 25 KiB of a 100-unit layer) then stays in L1 for all the blocks of a pass, where
/// the whole batch of 256 (100 KiB) came from L2 again for every row block, and every full
/// chunk runs the unrolled k loop, emitted once. The order of the sums is fixed by the row
/// count alone.
fn emit_k_chunks(fx: &mut Fx, mm: &MatMul) {
    debug_assert!(mm.epilogue.update.is_none(), "updates follow the sums");
    let chunk = FULL_UNROLL;
    let pass = |fx: &mut Fx, k0: Value, k: Dim, accumulate: bool| {
        let a = fx.offset(mm.a, k0, (mm.a_col * 4) as i64);
        let b = fx.offset(mm.b, k0, (mm.ldb * 4) as i64);
        let epilogue = Epilogue {
            accumulate: accumulate || mm.epilogue.accumulate,
            ..mm.epilogue
        };
        emit_rows_outer(
            fx,
            &MatMul {
                k,
                a,
                b,
                epilogue,
                k_unroll: None,
                ..*mm
            },
        );
    };
    let rows = fx.rows;
    let zero = fx.iconst(0);
    let long =
        fx.b.ins()
            .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, rows, chunk as i64);
    fx.if_else(
        long,
        |fx| {
            if !mm.epilogue.accumulate {
                let m = mm.m.value(fx);
                let floats = fx.b.ins().imul_imm_s(m, mm.ldc as i64);
                let zero4 = fx.zero4();
                fx.loop_up(zero, floats, 4, |fx, e| {
                    let p = fx.offset(mm.c, e, 4);
                    fx.store(zero4, p, 0);
                });
            }
            let rest = fx.loop_up(zero, rows, chunk as i64, |fx, k0| {
                pass(fx, k0, Dim::Static(chunk), true);
            });
            let left = fx.b.ins().isub(rows, rest);
            let some = fx.b.ins().icmp_imm_s(IntCC::SignedGreaterThan, left, 0);
            fx.if_else(some, |fx| pass(fx, rest, Dim::Dyn(left), true), |_| {});
        },
        |fx| pass(fx, zero, Dim::Rows, false),
    );
}

/// All row blocks of the column block starting at element `j`, `nr` vectors wide.
fn emit_rows(fx: &mut Fx, mm: &MatMul, j: Value, nr: usize) {
    let zero = fx.iconst(0);
    let limit = mm.m.value(fx);
    let rest = fx.loop_up(zero, limit, MR as i64, |fx, i| {
        emit_block(fx, mm, i, j, MR, nr)
    });
    if !mm.m.multiple_of(MR) {
        fx.loop_up(rest, limit, 1, |fx, i| emit_block(fx, mm, i, j, 1, nr));
    }
}

/// All column blocks of the `mr` rows starting at row `i`.
fn emit_columns(fx: &mut Fx, mm: &MatMul, i: Value, mr: usize) {
    let vectors = mm.n / 4;
    let full = vectors / NR;
    let rem = vectors % NR;
    if full > 0 {
        fx.loop_const(0, (full * NR * 4) as i64, (NR * 4) as i64, |fx, j| {
            emit_block(fx, mm, i, j, mr, NR);
        });
    }
    if rem > 0 {
        let j = fx.iconst((full * NR * 4) as i64);
        emit_block(fx, mm, i, j, mr, rem);
    }
}

/// One `mr × nr` block of `C` at row `i`, column element `j`.
fn emit_block(fx: &mut Fx, mm: &MatMul, i: Value, j: Value, mr: usize, nr: usize) {
    let a0 = fx.offset(mm.a, i, (mm.a_row * 4) as i64);
    let b0 = fx.offset(mm.b, j, 4);
    let zero = fx.zero4();
    let acc: Vec<Variable> = (0..mr * nr).map(|_| fx.var(F32X4, zero)).collect();
    let ap = fx.var(I64, a0);
    let bp = fx.var(I64, b0);

    // `steps` values of t per iteration, then the pointer bumps.
    let iteration = |fx: &mut Fx, steps: usize| {
        let mut c: Vec<Value> = acc.iter().map(|v| fx.get(*v)).collect();
        let pa = fx.get(ap);
        let pb = fx.get(bp);
        for u in 0..steps {
            let bv: Vec<Value> = (0..nr)
                .map(|q| fx.load4(ro(), pb, (u * mm.ldb + 4 * q) as i64))
                .collect();
            for r in 0..mr {
                let a_off = (r * mm.a_row + u * mm.a_col) as i64;
                for q in 0..nr {
                    // A fresh broadcast per FMA: x64 lowers `fma` with its first operand as
                    // the destination, so that operand must die there (no copy), and a
                    // broadcast used once is loaded straight from memory.
                    let av = fx.bcast(mm.a_flags, pa, a_off);
                    c[r * nr + q] = fx.fma(av, bv[q], c[r * nr + q]);
                }
            }
        }
        for (var, v) in acc.iter().zip(c) {
            fx.set(*var, v);
        }
        let pa = fx.add_imm(pa, (steps * mm.a_col * 4) as i64);
        let pb = fx.add_imm(pb, (steps * mm.ldb * 4) as i64);
        fx.set(ap, pa);
        fx.set(bp, pb);
    };

    let k_loop = |fx: &mut Fx| {
        let zero_i = fx.iconst(0);
        let k_limit = mm.k.value(fx);
        let rest = fx.loop_up(zero_i, k_limit, KU as i64, |fx, _| iteration(fx, KU));
        if !mm.k.multiple_of(KU) {
            fx.loop_up(rest, k_limit, 1, |fx, _| iteration(fx, 1));
        }
    };
    match (mm.k, mm.k_unroll) {
        // Straight-line code: no loop-carried accumulators, so no register shuffles at a back
        // edge, and no mispredicted loop exit per block.
        (Dim::Static(k), _) if k <= FULL_UNROLL => iteration(fx, k),
        (Dim::Rows, Some(full)) if full <= FULL_UNROLL => {
            let is_full = fx.b.ins().icmp_imm_s(IntCC::Equal, fx.rows, full as i64);
            fx.if_else(is_full, |fx| iteration(fx, full), k_loop);
        }
        _ => k_loop(fx),
    }

    let ep = mm.epilogue;
    // With a fused update (one chunk), `C` is one block row of scratch (`update_rows`).
    let c_row = if ep.update.is_some() { fx.iconst(0) } else { i };
    let c0 = fx.offset(mm.c, c_row, (mm.ldc * 4) as i64);
    let c0 = fx.offset(c0, j, 4);
    let bias = ep.bias.map(|b| fx.offset(b, j, 4));
    let pre = ep.pre_activation.map(|z| {
        let z = fx.offset(z, i, (mm.ldc * 4) as i64);
        fx.offset(z, j, 4)
    });
    let derivative = ep.derivative.map(|(act, s)| {
        let s = fx.offset(s, i, (mm.ldc * 4) as i64);
        (act, fx.offset(s, j, 4))
    });
    for r in 0..mr {
        for q in 0..nr {
            let off = (r * mm.ldc + 4 * q) as i64;
            let mut v = fx.get(acc[r * nr + q]);
            if ep.accumulate {
                let old = fx.load4(rw(), c0, off);
                v = fx.add(v, old);
            }
            let bias = bias.map(|b| (b, (4 * q) as i64));
            let derivative = derivative.map(|(act, s)| (act, (s, off)));
            let pre = pre.map(|z| (z, off));
            let v = epilogue_vector(fx, ep.activation, v, bias, derivative, pre);
            fx.store(v, c0, off);
        }
    }
}

/// The element-wise epilogue of one vector `v` of `C`, in the one order both the register
/// blocks and the full-width pass apply it: add the bias, multiply by the activation's
/// derivative from the saved values, store the pre-activation, apply the activation. Each
/// pointer is given with the byte offset of this vector from it. Returns the vector to store.
fn epilogue_vector(
    fx: &mut Fx,
    activation: Option<Activation>,
    mut v: Value,
    bias: Option<(Value, i64)>,
    derivative: Option<(Activation, (Value, i64))>,
    pre: Option<(Value, i64)>,
) -> Value {
    if let Some((b, off)) = bias {
        let bv = fx.load4(ro(), b, off);
        v = fx.add(v, bv);
    }
    if let Some((act, (s, off))) = derivative {
        let saved = fx.load4(ro(), s, off);
        v = act_backward(fx, act, v, saved);
    }
    if let Some((z, off)) = pre {
        fx.store(v, z, off);
    }
    if let Some(act) = activation {
        v = act_forward(fx, act, v);
    }
    v
}
