//! Batch norms at full width (AVX-512): the training forward pass with its fused activation,
//! and the backward pass, as whole kernels with the kernel ABI (`emit::kernel_signature`),
//! generated with iced-x86 like the GEMMs (`x86`). They do the f32x4 kernels' arithmetic
//! (`kernels::emit_batch_norm_train`, `kernels::emit_batch_norm_backward`) step for step, on
//! 16 lanes instead of 4: each column's sums run over the rows in the same order, and the
//! element-wise steps are the same IEEE operations, so both tiers give the same bits
//! (`tests::full_width_batch_norm_matches_the_f32x4_tier_bit_for_bit`).
//!
//! Columns go in groups of up to `GROUP` vectors, whose chains of additions over the rows run
//! side by side; the last vector of a row is masked (`k1`) to the row's padded width, so the
//! kernels read and write exactly what the f32x4 kernels do.

use iced_x86::code_asm::*;

use crate::elementwise::update_scalars;
use crate::kernels::{pad4, row_stride, Kernel};
use crate::x86::{
    activation_constants, activation_vector, load_constants, place_constants, EpilogueActivation,
};
use netc_ir::backend::BackendError;
use netc_ir::ir::Activation;

const LANES: usize = 16;
/// Vectors of columns a group handles at once.
const GROUP: usize = 4;

/// The machine code of `kernel` at the AVX-512 tier when it is a batch norm generated here: a
/// training forward pass on converted values with no activation, ELU or SELU after it, or a
/// backward pass. `None` leaves the kernel to Cranelift.
pub fn generated(kernel: &Kernel) -> Option<Result<Vec<u8>, BackendError>> {
    let code = match *kernel {
        Kernel::BatchNorm {
            convert: None,
            width,
            activation,
            training: true,
            momentum,
            epsilon,
            store_normalized,
            by_rows,
        } => {
            let activation = match activation {
                None => EpilogueActivation::None,
                Some(Activation::Elu { alpha }) => EpilogueActivation::Elu {
                    alpha_bits: alpha.to_bits(),
                },
                Some(Activation::Selu) => EpilogueActivation::Selu,
                Some(_) => return None,
            };
            let forward = Forward {
                width,
                activation,
                momentum,
                epsilon,
                store_normalized,
                by_rows,
            };
            forward.code(kernel)
        }
        Kernel::BatchNormBackward {
            width,
            input_grad,
            by_rows,
        } => backward(kernel, width, input_grad, by_rows),
        _ => return None,
    };
    Some(code.map_err(|e| BackendError::Codegen {
        kernel: kernel.name(),
        detail: e.to_string(),
    }))
}

/// The argument table, read through `slot`, which remembers which pointers were read so tests
/// and debug builds can check them against the kernel's signature (`check_slots`).
struct Table {
    read: u64,
}

impl Table {
    /// `dst = table[slot] + r11` (the group's first column).
    fn column(
        &mut self,
        a: &mut CodeAssembler,
        dst: AsmRegister64,
        slot: usize,
    ) -> Result<(), IcedError> {
        self.read |= 1 << slot;
        a.mov(dst, qword_ptr(rdi + 8 * slot as i32))?;
        a.add(dst, r11)
    }

    /// Jumps to `skip` unless the pointers at `mine` and `all` are equal: the share whose rows
    /// start the batch stores what every share computed.
    fn unless_first(
        &mut self,
        a: &mut CodeAssembler,
        (mine, all): (usize, usize),
        skip: CodeLabel,
    ) -> Result<(), IcedError> {
        self.read |= (1 << mine) | (1 << all);
        a.mov(rax, qword_ptr(rdi + 8 * mine as i32))?;
        a.cmp(rax, qword_ptr(rdi + 8 * all as i32))?;
        a.jne(skip)
    }

    /// Stores the `g` vectors of two registers each (`(slot, register of vector i)`) at their
    /// slots' group columns, by the share that starts the batch when `first` names the
    /// pointers to compare (`unless_first`), else always.
    fn store_if_first(
        &mut self,
        a: &mut CodeAssembler,
        first: Option<(usize, usize)>,
        vectors: [(usize, &dyn Fn(usize) -> AsmRegisterZmm); 2],
        g: usize,
        masked: &dyn Fn(usize) -> bool,
    ) -> Result<(), IcedError> {
        let mut skip = a.create_label();
        if let Some(pointers) = first {
            self.unless_first(a, pointers, skip)?;
        }
        let [(slot0, reg0), (slot1, reg1)] = vectors;
        self.column(a, rcx, slot0)?;
        self.column(a, rdx, slot1)?;
        for i in 0..g {
            store(a, rcx, i, reg0(i), masked(i))?;
            store(a, rdx, i, reg1(i), masked(i))?;
        }
        a.set_label(&mut skip)?;
        // A label needs an instruction of its own.
        a.zero_bytes()
    }

    fn check_slots(&self, kernel: &Kernel) {
        #[cfg(any(debug_assertions, test))]
        {
            let n = kernel.signature().len();
            assert_eq!(
                self.read,
                (1u64 << n) - 1,
                "{}: the generated code reads other pointers than the {n} of its signature",
                kernel.name()
            );
        }
        #[cfg(not(any(debug_assertions, test)))]
        let _ = kernel;
    }
}

/// The vectors of a row: `whole` full ones, then a masked one when the padded width is not a
/// multiple of 16.
struct Row {
    whole: usize,
    masked: bool,
    /// Bytes from one row to the next.
    ld: i32,
}

impl Row {
    fn of(width: usize) -> Row {
        let floats = pad4(width);
        Row {
            whole: floats / LANES,
            masked: !floats.is_multiple_of(LANES),
            ld: (4 * row_stride(width)) as i32,
        }
    }

    /// Sets `k1` to the masked vector's lanes.
    fn set_mask(&self, a: &mut CodeAssembler, width: usize) -> Result<(), IcedError> {
        if self.masked {
            let lanes = pad4(width) % LANES;
            a.mov(eax, (1u32 << lanes) - 1)?;
            a.kmovw(k1, eax)?;
        }
        Ok(())
    }

    /// Runs `group(a, vectors, last_masked)` for every group of columns, with `r11` at the
    /// group's first column (bytes): a loop over the groups of `GROUP` whole vectors (counted
    /// in `r15`), then the rest, whose last vector may be masked.
    fn for_each_group(
        &self,
        a: &mut CodeAssembler,
        mut group: impl FnMut(&mut CodeAssembler, usize, bool) -> Result<(), IcedError>,
    ) -> Result<(), IcedError> {
        a.xor(r11, r11)?;
        let full = self.whole / GROUP;
        if full > 0 {
            let mut top = a.create_label();
            a.mov(r15, full as u64)?;
            a.set_label(&mut top)?;
            group(a, GROUP, false)?;
            a.add(r11, (GROUP * 64) as i32)?;
            a.dec(r15)?;
            a.jnz(top)?;
        }
        let rest = self.whole % GROUP + usize::from(self.masked);
        if rest > 0 {
            group(a, rest, self.masked)?;
        }
        Ok(())
    }
}

/// `dst = [base + 64·i]`, zeroing the lanes past the mask when `masked`.
fn load(
    a: &mut CodeAssembler,
    dst: AsmRegisterZmm,
    base: AsmRegister64,
    i: usize,
    masked: bool,
) -> Result<(), IcedError> {
    let at = zmmword_ptr(base + 64 * i as i32);
    if masked {
        a.vmovups(dst.k1().z(), at)
    } else {
        a.vmovups(dst, at)
    }
}

/// `[base + 64·i] = src`, the lanes of the mask only when `masked`.
fn store(
    a: &mut CodeAssembler,
    base: AsmRegister64,
    i: usize,
    src: AsmRegisterZmm,
    masked: bool,
) -> Result<(), IcedError> {
    let at = zmmword_ptr(base + 64 * i as i32);
    if masked {
        a.vmovups(at.k1(), src)
    } else {
        a.vmovups(at, src)
    }
}

const ZMM: [AsmRegisterZmm; 32] = [
    zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13, zmm14,
    zmm15, zmm16, zmm17, zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26, zmm27,
    zmm28, zmm29, zmm30, zmm31,
];

/// Saves the callee-saved registers the kernels use.
fn enter(a: &mut CodeAssembler) -> Result<(), IcedError> {
    for r in [r12, r13, r14, r15] {
        a.push(r)?;
    }
    Ok(())
}

fn leave(a: &mut CodeAssembler) -> Result<(), IcedError> {
    for r in [r15, r14, r13, r12] {
        a.pop(r)?;
    }
    a.vzeroupper()?;
    a.ret()
}

/// `r12` = the rows the statistics run over, and `dst` = their count as f32 in every lane: the
/// whole batch's (`update_scalars::ROWS`) when `by_rows`, else this call's.
fn statistic_rows(
    a: &mut CodeAssembler,
    dst: AsmRegisterZmm,
    by_rows: bool,
) -> Result<(), IcedError> {
    if by_rows {
        let at = r8 + 4 * update_scalars::ROWS as i32;
        a.vbroadcastss(dst, dword_ptr(at))?;
        a.vcvttss2si(r12, dword_ptr(at))?;
    } else {
        a.mov(r12, rsi)?;
        a.vxorps(xmm0, xmm0, xmm0)?;
        a.vcvtsi2ss(xmm0, xmm0, rsi)?;
        a.vbroadcastss(dst, xmm0)?;
    }
    Ok(())
}

/// A counted loop over `count` rows: `body` once per row, then every pointer of `step`
/// advanced by `ld`. `count` is clobbered; nothing runs when it is 0.
fn rows_loop(
    a: &mut CodeAssembler,
    count: AsmRegister64,
    step: &[AsmRegister64],
    ld: i32,
    mut body: impl FnMut(&mut CodeAssembler) -> Result<(), IcedError>,
) -> Result<(), IcedError> {
    let mut top = a.create_label();
    let mut done = a.create_label();
    a.test(count, count)?;
    a.jle(done)?;
    a.set_label(&mut top)?;
    body(a)?;
    for p in step {
        a.add(*p, ld)?;
    }
    a.dec(count)?;
    a.jnz(top)?;
    a.set_label(&mut done)?;
    Ok(())
}

/// The training forward pass (`Kernel::BatchNorm`). Table: `[x, gamma, beta, moving_mean,
/// moving_variance, y, batch_mean, batch_inv_std, (x̂,) (x_all)]`.
///
/// Registers: the activation's constants in zmm15–zmm31 (`activation_constants`), each vector's
/// mean in zmm7 + i and its variance, then `1/σ`, in zmm11 + i; zmm0–zmm6 scratch, holding
/// `1`, `ε`, `1 - momentum`, `momentum` and `n` (zmm2–zmm6) until the group's rows are
/// normalized.
struct Forward {
    width: usize,
    activation: EpilogueActivation,
    momentum: f32,
    epsilon: f32,
    store_normalized: bool,
    by_rows: bool,
}

impl Forward {
    fn code(&self, kernel: &Kernel) -> Result<Vec<u8>, IcedError> {
        const X: usize = 0;
        const GAMMA: usize = 1;
        const BETA: usize = 2;
        const MOVING_MEAN: usize = 3;
        const MOVING_VAR: usize = 4;
        const Y: usize = 5;
        const MEAN: usize = 6;
        const INV: usize = 7;
        let xhat = self.store_normalized.then_some(8);
        let x_all = self
            .by_rows
            .then_some(8 + usize::from(self.store_normalized));
        let stat_x = x_all.unwrap_or(X);

        let mut a = CodeAssembler::new(64)?;
        let mut table = Table { read: 0 };
        let row = Row::of(self.width);
        enter(&mut a)?;
        row.set_mask(&mut a, self.width)?;
        let mut labels = load_constants(&mut a, &activation_constants(self.activation))?;
        let mut scalar = |a: &mut CodeAssembler, reg: AsmRegisterZmm, value: f32| {
            let label = a.create_label();
            labels.push((label, value.to_bits()));
            a.vbroadcastss(reg, dword_ptr(label))
        };
        let (one, eps, rest, mom, n) = (zmm2, zmm3, zmm4, zmm5, zmm6);
        let mean = |i: usize| ZMM[7 + i];
        let var = |i: usize| ZMM[11 + i];
        let ld = row.ld;
        row.for_each_group(&mut a, |a, g, last_masked| {
            let masked = |i: usize| last_masked && i + 1 == g;
            scalar(a, one, 1.0)?;
            scalar(a, eps, self.epsilon)?;
            scalar(a, rest, 1.0 - self.momentum)?;
            scalar(a, mom, self.momentum)?;
            statistic_rows(a, n, self.by_rows)?;

            // The mean, then the mean of the centred squares, over the statistics' rows.
            for (acc, centred) in [(mean as fn(usize) -> AsmRegisterZmm, false), (var, true)] {
                table.column(a, rax, stat_x)?;
                for i in 0..g {
                    a.vpxord(acc(i), acc(i), acc(i))?;
                }
                a.mov(rcx, r12)?;
                rows_loop(a, rcx, &[rax], ld, |a| {
                    for i in 0..g {
                        load(a, zmm0, rax, i, masked(i))?;
                        if centred {
                            a.vsubps(zmm0, zmm0, mean(i))?;
                            a.vfmadd231ps(acc(i), zmm0, zmm0)?;
                        } else {
                            a.vaddps(acc(i), acc(i), zmm0)?;
                        }
                    }
                    Ok(())
                })?;
                for i in 0..g {
                    a.vdivps(acc(i), acc(i), n)?;
                }
            }

            // The moving averages, `old·momentum + batch·(1 - momentum)`, by the first share.
            let mut skip = a.create_label();
            if let Some(all) = x_all {
                table.unless_first(a, (X, all), skip)?;
            }
            table.column(a, rcx, MOVING_MEAN)?;
            table.column(a, rdx, MOVING_VAR)?;
            for i in 0..g {
                for (moving, batch) in [(rcx, mean(i)), (rdx, var(i))] {
                    a.vmulps(zmm0, batch, rest)?;
                    load(a, zmm1, moving, i, masked(i))?;
                    a.vfmadd213ps(zmm1, mom, zmm0)?;
                    store(a, moving, i, zmm1, masked(i))?;
                }
            }
            a.set_label(&mut skip)?;

            // `1/√(σ² + ε)` in place of the variance.
            for i in 0..g {
                a.vaddps(var(i), var(i), eps)?;
                a.vsqrtps(var(i), var(i))?;
                a.vdivps(var(i), one, var(i))?;
            }
            let first = x_all.map(|all| (X, all));
            table.store_if_first(a, first, [(MEAN, &mean), (INV, &var)], g, &masked)?;

            // This call's rows: `γ·x̂ + β`, then the activation.
            table.column(a, rax, X)?;
            table.column(a, rdx, Y)?;
            table.column(a, r13, GAMMA)?;
            table.column(a, r14, BETA)?;
            let mut step = vec![rax, rdx];
            if let Some(slot) = xhat {
                table.column(a, r9, slot)?;
                step.push(r9);
            }
            a.mov(rcx, rsi)?;
            rows_loop(a, rcx, &step, ld, |a| {
                for i in 0..g {
                    load(a, zmm0, rax, i, masked(i))?;
                    a.vsubps(zmm0, zmm0, mean(i))?;
                    a.vmulps(zmm0, zmm0, var(i))?;
                    if xhat.is_some() {
                        store(a, r9, i, zmm0, masked(i))?;
                    }
                    load(a, zmm1, r13, i, masked(i))?;
                    load(a, zmm2, r14, i, masked(i))?;
                    a.vfmadd213ps(zmm0, zmm1, zmm2)?;
                    activation_vector(a, self.activation)?;
                    store(a, rdx, i, zmm0, masked(i))?;
                }
                Ok(())
            })
        })?;
        leave(&mut a)?;
        place_constants(&mut a, labels)?;
        table.check_slots(kernel);
        a.assemble(0)
    }
}

/// The backward pass (`Kernel::BatchNormBackward`). Table: `[x, gamma, batch_mean,
/// batch_inv_std, dy, dgamma, dbeta, (dx,) (x_all, dy_all)]`.
///
/// Registers: per vector `i` of a group, the mean in zmm8 + i, `1/σ` in zmm12 + i, `Σ dy` in
/// zmm16 + i, `Σ dy·x̂` in zmm20 + i and `γ/(σ·n)` in zmm24 + i; `n` in zmm28, zmm0–zmm1
/// scratch.
fn backward(
    kernel: &Kernel,
    width: usize,
    input_grad: bool,
    by_rows: bool,
) -> Result<Vec<u8>, IcedError> {
    const X: usize = 0;
    const GAMMA: usize = 1;
    const MEAN: usize = 2;
    const INV: usize = 3;
    const DY: usize = 4;
    const DGAMMA: usize = 5;
    const DBETA: usize = 6;
    let dx_slot = input_grad.then_some(7);
    let all = by_rows.then(|| {
        let next = 7 + usize::from(input_grad);
        (next, next + 1)
    });
    let (sum_x, sum_dy) = all.unwrap_or((X, DY));

    let mut a = CodeAssembler::new(64)?;
    let mut table = Table { read: 0 };
    let row = Row::of(width);
    enter(&mut a)?;
    row.set_mask(&mut a, width)?;
    let n = zmm28;
    let mean = |i: usize| ZMM[8 + i];
    let inv = |i: usize| ZMM[12 + i];
    let sum_g = |i: usize| ZMM[16 + i];
    let sum_gx = |i: usize| ZMM[20 + i];
    let scale = |i: usize| ZMM[24 + i];
    let ld = row.ld;
    row.for_each_group(&mut a, |a, g, last_masked| {
        let masked = |i: usize| last_masked && i + 1 == g;
        statistic_rows(a, n, by_rows)?;
        table.column(a, rax, MEAN)?;
        table.column(a, rdx, INV)?;
        for i in 0..g {
            load(a, mean(i), rax, i, masked(i))?;
            load(a, inv(i), rdx, i, masked(i))?;
            a.vpxord(sum_g(i), sum_g(i), sum_g(i))?;
            a.vpxord(sum_gx(i), sum_gx(i), sum_gx(i))?;
        }
        // `Σ dy` and `Σ dy·x̂` over the sums' rows.
        table.column(a, rax, sum_x)?;
        table.column(a, rdx, sum_dy)?;
        a.mov(rcx, r12)?;
        rows_loop(a, rcx, &[rax, rdx], ld, |a| {
            for i in 0..g {
                load(a, zmm0, rax, i, masked(i))?;
                a.vsubps(zmm0, zmm0, mean(i))?;
                a.vmulps(zmm0, zmm0, inv(i))?;
                load(a, zmm1, rdx, i, masked(i))?;
                a.vaddps(sum_g(i), sum_g(i), zmm1)?;
                a.vfmadd231ps(sum_gx(i), zmm1, zmm0)?;
            }
            Ok(())
        })?;
        let first = all.map(|(x_all, _)| (X, x_all));
        table.store_if_first(a, first, [(DGAMMA, &sum_gx), (DBETA, &sum_g)], g, &masked)?;

        // `dx = γ/(σ·n) · (n·dy - Σdy - x̂·Σ(dy·x̂))` for this call's rows.
        let Some(dx_slot) = dx_slot else {
            // γ and this call's `dy` are in the table either way; only `dx` needs them.
            table.read |= (1 << GAMMA) | (1 << DY);
            return Ok(());
        };
        table.column(a, rax, GAMMA)?;
        for i in 0..g {
            load(a, zmm0, rax, i, masked(i))?;
            a.vmulps(zmm0, zmm0, inv(i))?;
            a.vdivps(scale(i), zmm0, n)?;
        }
        table.column(a, rax, X)?;
        table.column(a, rdx, DY)?;
        table.column(a, r9, dx_slot)?;
        a.mov(rcx, rsi)?;
        rows_loop(a, rcx, &[rax, rdx, r9], ld, |a| {
            for i in 0..g {
                load(a, zmm0, rax, i, masked(i))?;
                a.vsubps(zmm0, zmm0, mean(i))?;
                a.vmulps(zmm0, zmm0, inv(i))?;
                load(a, zmm1, rdx, i, masked(i))?;
                a.vmulps(zmm1, zmm1, n)?;
                a.vsubps(zmm1, zmm1, sum_g(i))?;
                a.vmulps(zmm0, zmm0, sum_gx(i))?;
                a.vsubps(zmm1, zmm1, zmm0)?;
                a.vmulps(zmm1, zmm1, scale(i))?;
                store(a, r9, i, zmm1, masked(i))?;
            }
            Ok(())
        })
    })?;
    leave(&mut a)?;
    table.check_slots(kernel);
    a.assemble(0)
}
