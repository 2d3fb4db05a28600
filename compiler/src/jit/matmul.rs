//! The register-blocked matrix multiply every dense kernel is built from:
//! `C[m, n] (+)= A(m, k) · B[k, n]`, then an optional epilogue (bias, pre-activation store,
//! activation) on the accumulators before the single store of `C`.
//!
//! `B` and `C` are row-major with rows padded to a multiple of 4 floats, so every column block is
//! whole f32x4 vectors. `A` is read one scalar at a time and broadcast, through two strides, which
//! makes the same loop nest serve `x · W` (A = x), `xᵀ · dy` (A = x read down its columns) and
//! `dy · Wᵀ` (B = the transposed kernel copy). Blocks are 4 rows × 3 vectors (12 accumulators,
//! leaving 4 of x64's 16 XMM registers for the 3 `B` vectors and one broadcast); the column
//! remainder (1 or 2 vectors) and the row remainder (single rows) get their own blocks. Nothing
//! here knows about layers.

use cranelift_codegen::ir::{MemFlagsData, Value};

use super::emit::{ro, rw, Fx};
use super::kernels::act_forward;
use crate::ir::Activation;

/// A loop extent: a compile-time constant or the kernel's runtime row count.
#[derive(Clone, Copy, Debug)]
pub enum Dim {
    Static(usize),
    Rows,
}

impl Dim {
    fn value(self, fx: &mut Fx) -> Value {
        match self {
            Dim::Static(v) => fx.iconst(v as i64),
            Dim::Rows => fx.rows,
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
}

const MR: usize = 4;
const NR: usize = 3;

pub fn emit_matmul(fx: &mut Fx, mm: &MatMul) {
    debug_assert_eq!(mm.n % 4, 0, "matmul columns are padded to whole vectors");
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

/// One `mr × nr` block of `C` at row `i`, column element `j`.
fn emit_block(fx: &mut Fx, mm: &MatMul, i: Value, j: Value, mr: usize, nr: usize) {
    let a0 = fx.offset(mm.a, i, (mm.a_row * 4) as i64);
    let b0 = fx.offset(mm.b, j, 4);
    let zero = fx.zero4();
    let acc: Vec<Vec<_>> = (0..mr)
        .map(|_| {
            (0..nr)
                .map(|_| fx.var(cranelift_codegen::ir::types::F32X4, zero))
                .collect()
        })
        .collect();
    let ptr_ty = cranelift_codegen::ir::types::I64;
    let ap = fx.var(ptr_ty, a0);
    let bp = fx.var(ptr_ty, b0);

    // One step of the k loop (one value of t), then the pointer bumps.
    let step = |fx: &mut Fx| {
        let pa = fx.get(ap);
        let pb = fx.get(bp);
        let bv: Vec<Value> = (0..nr)
            .map(|q| fx.load4(ro(), pb, (4 * q) as i64))
            .collect();
        for (r, row) in acc.iter().enumerate() {
            let av = fx.bcast(mm.a_flags, pa, (r * mm.a_row) as i64);
            for (q, var) in row.iter().enumerate() {
                let c = fx.get(*var);
                let c = fx.fma(av, bv[q], c);
                fx.set(*var, c);
            }
        }
        let pa = fx.add_imm(pa, (mm.a_col * 4) as i64);
        let pb = fx.add_imm(pb, (mm.ldb * 4) as i64);
        fx.set(ap, pa);
        fx.set(bp, pb);
    };

    // The k loop is not unrolled: with 4 steps per iteration the e-graph elaborates each
    // accumulator's whole chain at once and keeps all 12 `B` vectors of the 4 steps live, which
    // spills the accumulators (measured); one step keeps 12 accumulators, 3 `B` vectors and one
    // broadcast within the 16 XMM registers.
    let zero_i = fx.iconst(0);
    let k_limit = mm.k.value(fx);
    fx.loop_up(zero_i, k_limit, 1, |fx, _| step(fx));

    let c0 = fx.offset(mm.c, i, (mm.ldc * 4) as i64);
    let c0 = fx.offset(c0, j, 4);
    let ep = mm.epilogue;
    let bias = ep.bias.map(|b| fx.offset(b, j, 4));
    let pre = ep.pre_activation.map(|z| {
        let z = fx.offset(z, i, (mm.ldc * 4) as i64);
        fx.offset(z, j, 4)
    });
    for (r, row) in acc.iter().enumerate() {
        for (q, var) in row.iter().enumerate() {
            let off = (r * mm.ldc + 4 * q) as i64;
            let mut v = fx.get(*var);
            if ep.accumulate {
                let old = fx.load4(rw(), c0, off);
                v = fx.add(v, old);
            }
            if let Some(b) = bias {
                let bv = fx.load4(ro(), b, (4 * q) as i64);
                v = fx.add(v, bv);
            }
            if let Some(z) = pre {
                fx.store(v, z, off);
            }
            if let Some(act) = ep.activation {
                v = act_forward(fx, act, v);
            }
            fx.store(v, c0, off);
        }
    }
}
