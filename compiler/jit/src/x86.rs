//! x86-64 machine code at full vector width, generated with iced-x86's assembler, for what
//! Cranelift cannot emit (it has no 256- or 512-bit vectors), placed in the same JIT module as
//! the Cranelift kernels. Two kinds, both System V and ending with `vzeroupper`:
//!
//! - the FMA peak loop `netc bench` measures each tier's ceiling with (`fma_peak`), called
//!   through the kernel ABI of `emit::kernel_signature` (`KernelModule::define_machine_code`),
//!   touching only caller-saved registers;
//! - the GEMMs the Cranelift kernels call (`gemm`, with its own six-argument ABI), which save
//!   and restore the callee-saved registers they use (`rbx`, `rbp`, `r12`–`r15`), with their
//!   epilogues (`Epilogue`) and the disassembler of `--emit asm` (`disassemble`).

use std::fmt::Write;

use iced_x86::code_asm::*;
use iced_x86::{Decoder, DecoderOptions, Formatter, IntelFormatter};

use crate::tier::Tier;
use netc_ir::backend::BackendError;

/// Independent accumulator chains of the peak loop: enough to cover the FMA latency (4 cycles)
/// on two pipes with room to spare, and within AVX2's 16 registers with the two factors.
pub const PEAK_CHAINS: usize = 12;

/// The factors every chain multiplies, as `acc = x * y + acc`.
pub const PEAK_X: f32 = 1.0001;
pub const PEAK_Y: f32 = 0.9999;

/// A loop of `rsi` iterations of `PEAK_CHAINS` independent fused multiply-adds on `tier`'s
/// registers (`acc = x * y + acc`, every chain from zero), which then stores the accumulators,
/// `PEAK_CHAINS` vectors of `tier.lanes()` floats one after the other, to the first pointer of
/// the table. `rsi` must be at least 1. For `Avx2` and `Avx512` only (Cranelift emits `F32x4`).
pub fn fma_peak(tier: Tier) -> Result<Vec<u8>, BackendError> {
    let fail = |e: IcedError| BackendError::Codegen {
        kernel: format!("fma_peak_{}", tier.name()),
        detail: e.to_string(),
    };
    let mut a = CodeAssembler::new(64).map_err(fail)?;
    let mut top = a.create_label();
    a.mov(eax, PEAK_X.to_bits()).map_err(fail)?;
    a.vmovd(xmm14, eax).map_err(fail)?;
    a.mov(eax, PEAK_Y.to_bits()).map_err(fail)?;
    a.vmovd(xmm15, eax).map_err(fail)?;
    // One body for both widths; iced's registers are typed by width, so a macro writes it.
    macro_rules! peak_loop {
        ($acc:expr, $x:expr, $y:expr, $zero:ident, $ptr:ident, $bytes:expr) => {{
            a.vbroadcastss($x, xmm14).map_err(fail)?;
            a.vbroadcastss($y, xmm15).map_err(fail)?;
            for r in $acc {
                a.$zero(r, r, r).map_err(fail)?;
            }
            a.set_label(&mut top).map_err(fail)?;
            for r in $acc {
                a.vfmadd231ps(r, $x, $y).map_err(fail)?;
            }
            a.dec(rsi).map_err(fail)?;
            a.jnz(top).map_err(fail)?;
            a.mov(rax, qword_ptr(rdi)).map_err(fail)?;
            for (i, r) in $acc.into_iter().enumerate() {
                a.vmovups($ptr(rax + $bytes * i as i32), r).map_err(fail)?;
            }
        }};
    }
    match tier {
        Tier::Avx2 => {
            let acc = [
                ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11,
            ];
            peak_loop!(acc, ymm14, ymm15, vxorps, ymmword_ptr, 32);
        }
        Tier::Avx512 => {
            let acc = [
                zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11,
            ];
            // `vpxord` is AVX-512F; `vxorps zmm` would need AVX-512DQ.
            peak_loop!(acc, zmm14, zmm15, vpxord, zmmword_ptr, 64);
        }
        Tier::F32x4 => {
            return Err(BackendError::Plan(
                "the f32x4 tier's kernels are Cranelift's".to_owned(),
            ))
        }
    }
    // Leaving the upper halves dirty would slow down the SSE code that runs next.
    a.vzeroupper().map_err(fail)?;
    a.ret().map_err(fail)?;
    a.assemble(0).map_err(fail)
}

/// What a generated GEMM computes, `C (+)= A · B`, apart from its extents: `A` is `m × k`, `B`
/// is `k × n`, `C` is `m × n`, f32 with strides in floats: `B` and `C` row-major (`ldb`, `ldc` at
/// least `n`); `A` with rows `lda` apart and elements along `k` `a_k` apart, so that it may be a
/// transposed view. `m` and `k` are arguments of each call (`gemm`), so one code serves
/// every row count and batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmShape {
    pub n: usize,
    pub lda: usize,
    /// Floats from one element of a row of `A` to the next along `k`: 1 when `A` is row-major;
    /// the row stride of `x` when `A` is `xᵀ`, as in a weight gradient `xᵀ·dy`, whose rows are
    /// then 1 float apart (`lda` 1).
    pub a_k: usize,
    pub ldb: usize,
    pub ldc: usize,
    /// Add the product to `C`'s contents instead of overwriting them.
    pub accumulate: bool,
    /// What happens to `C` after the product (AVX-512 only; see `Epilogue`).
    pub epilogue: Option<Epilogue>,
    /// Depth of a block of `k` (0: the whole depth at once). A block of `B` is then read from
    /// cache by all the rows of a column block before the next is loaded, and each tile of `C`
    /// is stored after a block and loaded again for the next: the chain of fused multiply-adds
    /// of each element is the same, in the same order, so the result does not depend on it.
    pub kc: usize,
}

impl GemmShape {
    /// `C = A · B` with every matrix row-major and rows `lda`, `ldb`, `ldc` floats apart.
    pub fn row_major(n: usize, lda: usize, ldb: usize, ldc: usize) -> GemmShape {
        GemmShape {
            n,
            lda,
            a_k: 1,
            ldb,
            ldc,
            accumulate: false,
            epilogue: None,
            kc: 0,
        }
    }
}

/// An epilogue done at full width after the product, over the `m` rows and `n` columns of
/// `C`, with the f32x4 pass's arithmetic step for step (`math::expm1`,
/// `elementwise::act_forward`, `elementwise::act_backward`), so both compute the same bits. Its
/// operand is the GEMM's sixth argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Epilogue {
    /// A dense forward pass: `C += bias` (the operand, one row) when `bias`, then the
    /// activation.
    Forward {
        bias: bool,
        activation: EpilogueActivation,
    },
    /// An input gradient: `C *= act'`, from the activation's output (the operand, laid out as
    /// `C`). ELU and SELU only.
    Derivative { activation: EpilogueActivation },
}

/// The activations the full-width epilogue has.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EpilogueActivation {
    None,
    /// `x > 0 ? x : α·expm1(x)`, α by its bits.
    Elu {
        alpha_bits: u32,
    },
    /// `λ·(x > 0 ? x : α·expm1(x))` with SELU's constants.
    Selu,
}

/// One register tile of `C`: `rows` rows × `vectors` vectors, starting `col` bytes into the
/// row; the last vector is masked when it holds the columns past the last whole vector.
struct Tile {
    rows: usize,
    vectors: usize,
    masked_last: bool,
    col: i32,
    /// Start from `C`'s contents instead of zero.
    accumulate: bool,
}

/// What differs between the tiers' GEMMs: the tile's size and registers, and the three pieces
/// of code `tiled_gemm` places in its loops. Pointers on entry to `step`: `rax` at `A`'s element
/// `k` of the tile's first row, `rbx` at `B`'s row `k`; to `zero` and `store`: `r10` at the
/// tile's first row of `C`.
trait TileCode {
    /// Most rows of a tile, of any width.
    const MR: usize;
    /// The heights of the tiles of a column block `vectors` wide, from the tallest (at most
    /// `MR`) down to 1: as many tiles of each as the rows left hold, so the rows past the last
    /// whole tile go in as few tiles as possible.
    fn heights(vectors: usize) -> &'static [usize];
    /// Most vectors across a tile.
    const NR: usize;
    /// f32 lanes of a vector.
    const LANES: usize;
    /// Sets the tile's accumulators to zero, or loads them from `C` (`Tile::accumulate`);
    /// `ldc` in bytes.
    fn zero(&self, a: &mut CodeAssembler, t: &Tile, ldc: i32) -> Result<(), IcedError>;
    /// One step along `k`: `acc += A[i][k] * B[k][cols]` for the tile; `lda` in bytes.
    fn step(&self, a: &mut CodeAssembler, t: &Tile, lda: i32) -> Result<(), IcedError>;
    /// Stores the accumulators to `C`; `ldc` in bytes.
    fn store(&self, a: &mut CodeAssembler, t: &Tile, ldc: i32) -> Result<(), IcedError>;
}

/// The loops every tier's GEMM shares (`gemm`): blocks of `shape.kc` along `k` (or the whole
/// depth), and in each, column blocks of at most `T::NR` vectors, each over all `m` rows, in
/// tiles of `T::heights` rows, each tile a loop along its block of `k`.
/// A tile starts from zero (or `C` when accumulating) in the first block and from `C` in the
/// others, so every element of `C` is one chain of fused multiply-adds in the order of `k`, and
/// the result does not depend on the number of rows, where they start, the blocking, or the
/// tier. Saves and restores `rbx` and `r12`–`r15`.
fn tiled_gemm<T: TileCode>(
    a: &mut CodeAssembler,
    code: &T,
    shape: GemmShape,
) -> Result<(), BackendError> {
    let fail = |e: IcedError| BackendError::Codegen {
        kernel: format!("gemm_{}_{}lanes", shape.n, T::LANES),
        detail: e.to_string(),
    };
    let strides = checked_strides(shape, T::MR)?;
    let (_, a_k, ldb, _) = strides;
    let kc = i32::try_from(shape.kc)
        .ok()
        .filter(|kc| i64::from(*kc) * i64::from(a_k.max(ldb)) < i64::from(i32::MAX / 2))
        .ok_or_else(|| BackendError::Plan(format!("gemm {shape:?}: a k block too deep")))?;
    for r in [rbx, r12, r13, r14, r15] {
        a.push(r).map_err(fail)?;
    }
    // r13: A at the block's first k; r14: B at its row; r15: depth left; rsi: the block's depth.
    a.mov(r13, rdi).map_err(fail)?;
    a.mov(r14, rsi).map_err(fail)?;
    a.mov(r15, r8).map_err(fail)?;
    let mut done = a.create_label();
    let mut next_block = a.create_label();
    for first in [true, false] {
        if !first {
            if kc == 0 {
                break;
            }
            a.set_label(&mut next_block).map_err(fail)?;
        }
        a.mov(rsi, r15).map_err(fail)?;
        if kc > 0 {
            // The block's depth: kc, or what is left.
            a.mov(rax, i64::from(kc)).map_err(fail)?;
            a.cmp(rsi, rax).map_err(fail)?;
            a.cmovg(rsi, rax).map_err(fail)?;
        }
        let load = shape.accumulate || !first;
        block_loops(a, code, shape, strides, load).map_err(fail)?;
        if kc > 0 {
            a.add(r13, kc * a_k).map_err(fail)?;
            a.add(r14, kc * ldb).map_err(fail)?;
            a.sub(r15, kc).map_err(fail)?;
            a.jg(next_block).map_err(fail)?;
            if first {
                a.jmp(done).map_err(fail)?;
            }
        }
    }
    a.set_label(&mut done).map_err(fail)?;
    for r in [r15, r14, r13, r12, rbx] {
        a.pop(r).map_err(fail)?;
    }
    Ok(())
}

/// One block of `k` (`rsi` deep, from `A` at `r13` and `B` at `r14`) over all of `C`: every
/// column block, every tile, each starting from `C` when `load`, else from zero.
fn block_loops<T: TileCode>(
    a: &mut CodeAssembler,
    code: &T,
    shape: GemmShape,
    (lda, a_k, ldb, ldc): (i32, i32, i32, i32),
    load: bool,
) -> Result<(), IcedError> {
    let vectors = shape.n.div_ceil(T::LANES);
    let tail = shape.n % T::LANES;
    let mut v0 = 0;
    while v0 < vectors {
        let nv = (vectors - v0).min(T::NR);
        a.mov(r9, r13)?; // A's row
        a.mov(r10, rdx)?; // C's row
        a.mov(r11, rcx)?; // rows left
        for &mr in T::heights(nv) {
            let tile = Tile {
                rows: mr,
                vectors: nv,
                masked_last: tail != 0 && v0 + nv == vectors,
                col: (4 * T::LANES * v0) as i32,
                accumulate: load,
            };
            let mut rows_top = a.create_label();
            let mut rows_done = a.create_label();
            let mut k_top = a.create_label();
            let mut k_done = a.create_label();
            a.set_label(&mut rows_top)?;
            a.cmp(r11, mr as i32)?;
            a.jl(rows_done)?;
            code.zero(a, &tile, ldc)?;
            a.mov(rax, r9)?; // A, at element k
            a.mov(rbx, r14)?; // B, at row k
            a.mov(r12, rsi)?; // k left in the block
            a.test(r12, r12)?;
            a.jle(k_done)?;
            a.set_label(&mut k_top)?;
            code.step(a, &tile, lda)?;
            a.add(rax, a_k)?;
            a.add(rbx, ldb)?;
            a.dec(r12)?;
            a.jnz(k_top)?;
            a.set_label(&mut k_done)?;
            code.store(a, &tile, ldc)?;
            a.add(r9, lda * mr as i32)?;
            a.add(r10, ldc * mr as i32)?;
            a.sub(r11, mr as i32)?;
            a.jmp(rows_top)?;
            a.set_label(&mut rows_done)?;
            // A label needs an instruction of its own; the next may carry one too.
            a.zero_bytes()?;
        }
        v0 += nv;
    }
    Ok(())
}

/// AVX-512 tiles of up to 24 zmm accumulators (`heights`: 4 rows × 4–6 vectors, 8 × 3, 12 × 1–2),
/// `B`'s row in up to 6 registers, elements of `A` broadcast from memory in each FMA
/// (`{1to16}`), or once per row into a register when a tile is 2 vectors wide or less, the
/// last vector masked with `k1`.
struct Avx512Tile;

impl Avx512Tile {
    const ACC: [AsmRegisterZmm; 24] = [
        zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13,
        zmm14, zmm15, zmm16, zmm17, zmm18, zmm19, zmm20, zmm21, zmm22, zmm23,
    ];
    const B: [AsmRegisterZmm; 6] = [zmm24, zmm25, zmm26, zmm27, zmm28, zmm29];
    /// `A`'s element of a row, broadcast once for the row's vectors (tiles of 2 vectors or
    /// fewer; wider ones broadcast from memory in each FMA).
    const BCAST: AsmRegisterZmm = zmm30;

    /// The accumulator of row `i`, vector `j` of a tile `vectors` wide.
    fn acc(t: &Tile, i: usize, j: usize) -> AsmRegisterZmm {
        Self::ACC[i * t.vectors + j]
    }
}

impl TileCode for Avx512Tile {
    const MR: usize = 12;
    const NR: usize = 6;
    const LANES: usize = 16;

    /// Up to 24 accumulators: 4 rows of 4 to 6 vectors, 8 of 3, 12 of 1 or 2. A block of the
    /// narrow layers of a convolutional network (32 channels: 2 vectors) then keeps 24 chains
    /// where 4 rows kept 8, too few to cover the FMA latency.
    fn heights(vectors: usize) -> &'static [usize] {
        match vectors {
            0..=2 => &[12, 4, 1],
            3 => &[8, 4, 1],
            _ => &[4, 1],
        }
    }

    fn zero(&self, a: &mut CodeAssembler, t: &Tile, ldc: i32) -> Result<(), IcedError> {
        for i in 0..t.rows {
            for j in 0..t.vectors {
                let r = Self::acc(t, i, j);
                if t.accumulate {
                    let at = zmmword_ptr(r10 + ldc * i as i32 + t.col + 64 * j as i32);
                    if t.masked_last && j + 1 == t.vectors {
                        a.vmovups(r.k1().z(), at)?;
                    } else {
                        a.vmovups(r, at)?;
                    }
                } else {
                    // `vpxord` is AVX-512F; `vxorps zmm` would need AVX-512DQ.
                    a.vpxord(r, r, r)?;
                }
            }
        }
        Ok(())
    }

    fn step(&self, a: &mut CodeAssembler, t: &Tile, lda: i32) -> Result<(), IcedError> {
        for (j, &b) in Self::B.iter().enumerate().take(t.vectors) {
            let at = zmmword_ptr(rbx + t.col + 64 * j as i32);
            if t.masked_last && j + 1 == t.vectors {
                a.vmovups(b.k1().z(), at)?;
            } else {
                a.vmovups(b, at)?;
            }
        }
        for i in 0..t.rows {
            let at = rax + lda * i as i32;
            if t.vectors <= 2 {
                a.vbroadcastss(Self::BCAST, dword_ptr(at))?;
                for (j, &b) in Self::B.iter().enumerate().take(t.vectors) {
                    a.vfmadd231ps(Self::acc(t, i, j), b, Self::BCAST)?;
                }
            } else {
                for (j, &b) in Self::B.iter().enumerate().take(t.vectors) {
                    a.vfmadd231ps(Self::acc(t, i, j), b, dword_bcst(at))?;
                }
            }
        }
        Ok(())
    }

    fn store(&self, a: &mut CodeAssembler, t: &Tile, ldc: i32) -> Result<(), IcedError> {
        for i in 0..t.rows {
            for j in 0..t.vectors {
                let at = zmmword_ptr(r10 + ldc * i as i32 + t.col + 64 * j as i32);
                if t.masked_last && j + 1 == t.vectors {
                    a.vmovups(at.k1(), Self::acc(t, i, j))?;
                } else {
                    a.vmovups(at, Self::acc(t, i, j))?;
                }
            }
        }
        Ok(())
    }
}

/// The GEMM of `shape` at a full-width `tier`. Its ABI (System V, `module::GemmFn`):
/// `extern "C" fn(a: *const f32, b: *const f32, c: *mut f32, m: i64, k: i64, operand: *const
/// f32)`, `A` in `rdi`, `B` in `rsi`, `C` in `rdx`, the rows `m` in `rcx` and the depth `k` in
/// `r8`, both at least 0, and the epilogue's operand (a bias, or saved activations) in `r9`,
/// unused without an epilogue. GEMMs are called from Cranelift kernels (`matmul`), not through
/// the kernel ABI.
pub fn gemm(tier: Tier, shape: GemmShape) -> Result<Vec<u8>, BackendError> {
    match tier {
        Tier::Avx512 => gemm_avx512(shape),
        Tier::Avx2 => gemm_avx2(shape),
        Tier::F32x4 => Err(BackendError::Plan(
            "the f32x4 tier's kernels are Cranelift's".to_owned(),
        )),
    }
}

/// AVX-512 code for `C (+)= A · B` of `shape`, called as `gemm` says (`Avx512Tile`, in
/// the loops of `tiled_gemm`).
pub fn gemm_avx512(shape: GemmShape) -> Result<Vec<u8>, BackendError> {
    let fail = |e: IcedError| BackendError::Codegen {
        kernel: format!("gemm_avx512_{}", shape.n),
        detail: e.to_string(),
    };
    let mut a = CodeAssembler::new(64).map_err(fail)?;
    let tail = shape.n % Avx512Tile::LANES;
    if tail != 0 {
        a.mov(eax, (1u32 << tail) - 1).map_err(fail)?;
        a.kmovw(k1, eax).map_err(fail)?;
    }
    // The bias pointer (sixth argument) outlives the product in rbp.
    a.push(rbp).map_err(fail)?;
    a.mov(rbp, r9).map_err(fail)?;
    tiled_gemm(&mut a, &Avx512Tile, shape)?;
    let constants = match shape.epilogue {
        Some(ep) => Some(avx512_epilogue(&mut a, shape, ep).map_err(fail)?),
        None => None,
    };
    a.pop(rbp).map_err(fail)?;
    a.vzeroupper().map_err(fail)?;
    a.ret().map_err(fail)?;
    if let Some(labels) = constants {
        place_constants(&mut a, labels).map_err(fail)?;
    }
    a.assemble(0).map_err(fail)
}

/// The constants of the full-width epilogue, each a register and the bits it is loaded from.
fn epilogue_constants(ep: Epilogue) -> Vec<(AsmRegisterZmm, u32)> {
    use netc_ir::ir::{SELU_ALPHA, SELU_LAMBDA};
    let activation = match ep {
        Epilogue::Forward { activation, .. } => activation,
        // `saved > 0 ? 1 : saved + α` (SELU: `λ` and `λα`), as `elementwise::act_backward`.
        Epilogue::Derivative { activation } => {
            let (pos, offset) = match activation {
                EpilogueActivation::None => return Vec::new(),
                EpilogueActivation::Elu { alpha_bits } => (1.0f32, f32::from_bits(alpha_bits)),
                EpilogueActivation::Selu => (SELU_LAMBDA, SELU_LAMBDA * SELU_ALPHA),
            };
            return vec![(zmm16, offset.to_bits()), (zmm17, pos.to_bits())];
        }
    };
    activation_constants(activation)
}

/// The constants `activation_vector` reads, each a register (zmm15–zmm30) and its bits.
pub(crate) fn activation_constants(activation: EpilogueActivation) -> Vec<(AsmRegisterZmm, u32)> {
    use crate::math::{EXPM1_POLY, EXP_HI, EXP_LO, LN2_HI, LN2_LO, LOG2E, ROUND_MAGIC};
    let alpha = match activation {
        EpilogueActivation::None => return Vec::new(),
        EpilogueActivation::Elu { alpha_bits } => alpha_bits,
        EpilogueActivation::Selu => netc_ir::ir::SELU_ALPHA.to_bits(),
    };
    let mut c = vec![
        (zmm16, EXP_LO.to_bits()),
        (zmm17, EXP_HI.to_bits()),
        (zmm18, LOG2E.to_bits()),
        (zmm19, ROUND_MAGIC.to_bits()),
        (zmm20, (-LN2_HI).to_bits()),
        (zmm21, (-LN2_LO).to_bits()),
    ];
    let poly = [zmm22, zmm23, zmm24, zmm25, zmm26, zmm27];
    c.extend(poly.into_iter().zip(EXPM1_POLY.map(f32::to_bits)));
    c.push((zmm28, (127 - ROUND_MAGIC.to_bits() as i32) as u32));
    c.push((zmm29, 1.0f32.to_bits()));
    c.push((zmm30, alpha));
    c.push((zmm15, netc_ir::ir::SELU_LAMBDA.to_bits()));
    c
}

/// `epilogue` over `C` after the product (`m` rows in `rcx`, `C` in `rdx`, the operand in
/// `rbp`): row by row, whole vectors then the masked last one (`k1`). Returns the constant
/// table's labels with their bits, for the caller to place after the code.
fn avx512_epilogue(
    a: &mut CodeAssembler,
    shape: GemmShape,
    ep: Epilogue,
) -> Result<Vec<(CodeLabel, u32)>, IcedError> {
    let labels = load_constants(a, &epilogue_constants(ep))?;
    let whole = (shape.n / Avx512Tile::LANES) as u64;
    let masked = !shape.n.is_multiple_of(Avx512Tile::LANES);
    let ldc = (4 * shape.ldc) as i32;
    let mut row_top = a.create_label();
    let mut done = a.create_label();
    a.mov(r10, rdx)?;
    a.mov(r11, rcx)?;
    a.set_label(&mut row_top)?;
    a.test(r11, r11)?;
    a.jle(done)?;
    a.mov(rax, r10)?;
    a.mov(r8, rbp)?;
    if let Epilogue::Derivative { .. } = ep {
        // The saved values' rows are laid out as C's.
        a.add(rbp, ldc)?;
    }
    if whole > 0 {
        let mut vec_top = a.create_label();
        a.mov(rsi, whole)?;
        a.set_label(&mut vec_top)?;
        epilogue_vector(a, ep, false)?;
        a.add(rax, 64)?;
        a.add(r8, 64)?;
        a.dec(rsi)?;
        a.jnz(vec_top)?;
    }
    if masked {
        epilogue_vector(a, ep, true)?;
    }
    a.add(r10, ldc)?;
    a.dec(r11)?;
    a.jmp(row_top)?;
    a.set_label(&mut done)?;
    a.zero_bytes()?;
    Ok(labels)
}

/// Broadcasts each constant into its register from a table after the code, and zero into
/// zmm31. Returns the table's labels with their bits, for the caller to place after the code.
pub(crate) fn load_constants(
    a: &mut CodeAssembler,
    constants: &[(AsmRegisterZmm, u32)],
) -> Result<Vec<(CodeLabel, u32)>, IcedError> {
    let mut labels = Vec::with_capacity(constants.len());
    for (reg, bits) in constants {
        let label = a.create_label();
        a.vbroadcastss(*reg, dword_ptr(label))?;
        labels.push((label, *bits));
    }
    // `vpxord`, as `vxorps zmm` would need AVX-512DQ.
    a.vpxord(zmm31, zmm31, zmm31)?;
    Ok(labels)
}

/// Places the constant table of `load_constants` (after the last instruction).
pub(crate) fn place_constants(
    a: &mut CodeAssembler,
    mut labels: Vec<(CodeLabel, u32)>,
) -> Result<(), IcedError> {
    for (label, value) in labels.iter_mut() {
        a.set_label(label)?;
        a.dd(&[*value])?;
    }
    Ok(())
}

/// One vector of the epilogue at `rax` (bias at `r8`), in the steps of the f32x4 pass:
/// `v = c + bias`; for ELU and SELU, `x = min(max(v, lo), hi)`, `t = x·log2e + magic`,
/// `k = t - magic`, `r = x - k·ln2` in two parts, `p` by Horner, `expm1(r) = p·r² + r`,
/// `s = 2^k` from the bits of `t`, `expm1(v) = s·expm1(r) + (s - 1)`, then `v > 0 ? v :
/// α·expm1(v)` (times λ for SELU).
fn epilogue_vector(a: &mut CodeAssembler, ep: Epilogue, masked: bool) -> Result<(), IcedError> {
    if masked {
        a.vmovups(zmm0.k1().z(), zmmword_ptr(rax))?;
    } else {
        a.vmovups(zmm0, zmmword_ptr(rax))?;
    }
    let (bias, activation) = match ep {
        Epilogue::Forward { bias, activation } => (bias, activation),
        Epilogue::Derivative { .. } => {
            // dy · (saved > 0 ? pos : saved + offset)
            if masked {
                a.vmovups(zmm1.k1().z(), zmmword_ptr(r8))?;
            } else {
                a.vmovups(zmm1, zmmword_ptr(r8))?;
            }
            a.vaddps(zmm2, zmm1, zmm16)?;
            a.vcmpgt_oqps(k2, zmm1, zmm31)?;
            a.vblendmps(zmm2.k2(), zmm2, zmm17)?;
            a.vmulps(zmm0, zmm0, zmm2)?;
            return store_vector(a, masked);
        }
    };
    if bias {
        if masked {
            a.vmovups(zmm1.k1().z(), zmmword_ptr(r8))?;
        } else {
            a.vmovups(zmm1, zmmword_ptr(r8))?;
        }
        a.vaddps(zmm0, zmm0, zmm1)?;
    }
    activation_vector(a, activation)?;
    store_vector(a, masked)
}

/// `zmm0 = activation(zmm0)` in the f32x4 pass's steps (`elementwise::act_forward`), with
/// zmm1–zmm6 and `k2` as scratch, the constants of `activation_constants` and zero in zmm31.
pub(crate) fn activation_vector(
    a: &mut CodeAssembler,
    activation: EpilogueActivation,
) -> Result<(), IcedError> {
    if activation != EpilogueActivation::None {
        a.vmaxps(zmm1, zmm0, zmm16)?;
        a.vminps(zmm1, zmm1, zmm17)?;
        a.vmovaps(zmm2, zmm19)?;
        a.vfmadd231ps(zmm2, zmm1, zmm18)?; // t
        a.vsubps(zmm3, zmm2, zmm19)?; // k
        a.vfmadd231ps(zmm1, zmm3, zmm20)?; // r
        a.vfmadd231ps(zmm1, zmm3, zmm21)?;
        a.vmovaps(zmm4, zmm22)?;
        for c in [zmm23, zmm24, zmm25, zmm26, zmm27] {
            a.vfmadd213ps(zmm4, zmm1, c)?; // p = p·r + c
        }
        a.vmulps(zmm5, zmm1, zmm1)?;
        a.vfmadd213ps(zmm4, zmm5, zmm1)?; // expm1(r) = p·r² + r
        a.vpaddd(zmm2, zmm2, zmm28)?;
        a.vpslld(zmm2, zmm2, 23)?; // s = 2^k
        a.vsubps(zmm6, zmm2, zmm29)?;
        a.vfmadd231ps(zmm6, zmm2, zmm4)?; // expm1(v)
        a.vmulps(zmm6, zmm6, zmm30)?;
        a.vcmpgt_oqps(k2, zmm0, zmm31)?;
        a.vblendmps(zmm0.k2(), zmm6, zmm0)?;
        if activation == EpilogueActivation::Selu {
            a.vmulps(zmm0, zmm0, zmm15)?;
        }
    }
    Ok(())
}

/// Stores `zmm0` at `rax`, the last vector of a row masked by `k1`.
fn store_vector(a: &mut CodeAssembler, masked: bool) -> Result<(), IcedError> {
    if masked {
        a.vmovups(zmmword_ptr(rax).k1(), zmm0)?;
    } else {
        a.vmovups(zmmword_ptr(rax), zmm0)?;
    }
    Ok(())
}

/// AVX2 tiles in 16 ymm registers: 6 rows × up to 2 vectors (12 accumulators, enough chains for
/// two FMA pipes of latency 4), `B`'s row in 2 registers, one register for the element of `A`
/// broadcast (AVX2 has no broadcast operand), and one for the last vector's mask
/// (`vmaskmovps`). Six rows read each vector of `B` six times per load, where 3 × 3 tiles read
/// it three times: on the first layer's 3,072-deep products, which stream `B` from L2, that
/// doubled the GEMM's speed (34 → 72 GFLOP/s at 32 rows, 51 → 86 at 256). The rows past the
/// last six go in tiles of 4, 2 and 1 (`heights`).
struct Avx2Tile;

impl Avx2Tile {
    const ACC: [AsmRegisterYmm; 12] = [
        ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11,
    ];
    const B: [AsmRegisterYmm; 2] = [ymm12, ymm13];
    const BCAST: AsmRegisterYmm = ymm14;
    const MASK: AsmRegisterYmm = ymm15;

    fn acc(i: usize, j: usize) -> AsmRegisterYmm {
        Self::ACC[i * Self::NR + j]
    }
}

impl TileCode for Avx2Tile {
    const MR: usize = 6;
    const NR: usize = 2;
    const LANES: usize = 8;

    fn heights(_vectors: usize) -> &'static [usize] {
        &[6, 4, 2, 1]
    }

    fn zero(&self, a: &mut CodeAssembler, t: &Tile, ldc: i32) -> Result<(), IcedError> {
        for i in 0..t.rows {
            for j in 0..t.vectors {
                let r = Self::acc(i, j);
                if t.accumulate {
                    let at = ymmword_ptr(r10 + ldc * i as i32 + t.col + 32 * j as i32);
                    if t.masked_last && j + 1 == t.vectors {
                        a.vmaskmovps(r, Self::MASK, at)?;
                    } else {
                        a.vmovups(r, at)?;
                    }
                } else {
                    a.vxorps(r, r, r)?;
                }
            }
        }
        Ok(())
    }

    fn step(&self, a: &mut CodeAssembler, t: &Tile, lda: i32) -> Result<(), IcedError> {
        for (j, &b) in Self::B.iter().enumerate().take(t.vectors) {
            let at = ymmword_ptr(rbx + t.col + 32 * j as i32);
            if t.masked_last && j + 1 == t.vectors {
                a.vmaskmovps(b, Self::MASK, at)?;
            } else {
                a.vmovups(b, at)?;
            }
        }
        for i in 0..t.rows {
            a.vbroadcastss(Self::BCAST, dword_ptr(rax + lda * i as i32))?;
            for (j, &b) in Self::B.iter().enumerate().take(t.vectors) {
                a.vfmadd231ps(Self::acc(i, j), b, Self::BCAST)?;
            }
        }
        Ok(())
    }

    fn store(&self, a: &mut CodeAssembler, t: &Tile, ldc: i32) -> Result<(), IcedError> {
        for i in 0..t.rows {
            for j in 0..t.vectors {
                let at = ymmword_ptr(r10 + ldc * i as i32 + t.col + 32 * j as i32);
                if t.masked_last && j + 1 == t.vectors {
                    a.vmaskmovps(at, Self::MASK, Self::acc(i, j))?;
                } else {
                    a.vmovups(at, Self::acc(i, j))?;
                }
            }
        }
        Ok(())
    }
}

/// AVX2 code for `C = A · B` of `shape`, with the same ABI and order of operations as
/// `gemm_avx512` (`Avx2Tile`, in the loops of `tiled_gemm`); the last vector's mask is a table
/// after the code.
pub fn gemm_avx2(shape: GemmShape) -> Result<Vec<u8>, BackendError> {
    let fail = |e: IcedError| BackendError::Codegen {
        kernel: format!("gemm_avx2_{}", shape.n),
        detail: e.to_string(),
    };
    if shape.epilogue.is_some() {
        return Err(BackendError::Plan(
            "the AVX2 GEMM has no generated epilogue".to_owned(),
        ));
    }
    let mut a = CodeAssembler::new(64).map_err(fail)?;
    let tail = shape.n % Avx2Tile::LANES;
    let mut mask_table = a.create_label();
    if tail != 0 {
        a.vmovups(Avx2Tile::MASK, ymmword_ptr(mask_table))
            .map_err(fail)?;
    }
    tiled_gemm(&mut a, &Avx2Tile, shape)?;
    a.vzeroupper().map_err(fail)?;
    a.ret().map_err(fail)?;
    // The last vector's mask: all ones in the lanes of the columns that exist (read unaligned).
    a.set_label(&mut mask_table).map_err(fail)?;
    let lanes: Vec<u8> = (0..Avx2Tile::LANES)
        .flat_map(|i| if i < tail { [0xffu8; 4] } else { [0u8; 4] })
        .collect();
    a.db(&lanes).map_err(fail)?;
    a.assemble(0).map_err(fail)
}

/// The strides of `shape` in bytes (`lda`, `a_k`, `ldb`, `ldc`), after checking that the shape
/// is one the generators take and that `mr` rows of strides fit their 32-bit displacements.
fn checked_strides(shape: GemmShape, mr: usize) -> Result<(i32, i32, i32, i32), BackendError> {
    let bad = |what: &str| Err(BackendError::Plan(format!("gemm {shape:?}: {what}")));
    if shape.n == 0 || shape.lda == 0 || shape.a_k == 0 {
        return bad("an empty dimension or stride");
    }
    if shape.ldb < shape.n || shape.ldc < shape.n {
        return bad("a stride shorter than its row");
    }
    let (lda, a_k, ldb, ldc) = (4 * shape.lda, 4 * shape.a_k, 4 * shape.ldb, 4 * shape.ldc);
    let limit = i32::MAX as usize / 2;
    if mr * lda.max(ldc) > limit || ldb > limit || a_k > limit {
        return bad("strides too long for 32-bit displacements");
    }
    Ok((lda as i32, a_k as i32, ldb as i32, ldc as i32))
}

/// `code` disassembled in Intel syntax, one instruction per line with its offset, and `notes`
/// (by byte offset) after the instruction that holds them. What follows the code is data,
/// listed as bytes: from the first byte an instruction reads RIP-relative (Cranelift's
/// constants, a GEMM's mask table), and the zero padding that aligns it.
pub fn disassemble(code: &[u8], notes: &[(u32, String)]) -> String {
    // Where the data starts: the nearest RIP-relative target, found in a first pass.
    let mut data_start = code.len() as u64;
    let mut decoder = Decoder::with_ip(64, code, 0, DecoderOptions::NONE);
    while decoder.can_decode() && decoder.ip() < data_start {
        let instr = decoder.decode();
        if instr.is_ip_rel_memory_operand() {
            let target = instr.ip_rel_memory_address();
            if target > instr.ip() && target < data_start {
                data_start = target;
            }
        }
    }
    let data_start = data_start as usize;
    let mut out = String::new();
    let mut decoder = Decoder::with_ip(64, &code[..data_start], 0, DecoderOptions::NONE);
    let mut formatter = IntelFormatter::new();
    formatter.options_mut().set_hex_prefix("0x");
    formatter.options_mut().set_hex_suffix("");
    formatter.options_mut().set_first_operand_char_index(10);
    formatter.options_mut().set_branch_leading_zeros(false);
    formatter.options_mut().set_show_branch_size(false);
    let mut text = String::new();
    while decoder.can_decode() {
        let at = decoder.ip() as usize;
        if data_start < code.len() && code[at..data_start].iter().all(|b| *b == 0) {
            break; // the padding before the data
        }
        let instr = decoder.decode();
        text.clear();
        formatter.format(&instr, &mut text);
        let note = notes
            .iter()
            .find(|(at, _)| u64::from(*at) >= instr.ip() && u64::from(*at) < instr.next_ip());
        let _ = match note {
            Some((_, n)) => writeln!(out, "  {:04x}  {text:<48} ; {n}", instr.ip()),
            None => writeln!(out, "  {:04x}  {text}", instr.ip()),
        };
    }
    let data_from = (decoder.ip() as usize).min(code.len());
    for (i, line) in code[data_from..].chunks(16).enumerate() {
        let bytes: Vec<String> = line.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(
            out,
            "  {:04x}  .byte {}",
            data_from + 16 * i,
            bytes.join(" ")
        );
    }
    out
}
