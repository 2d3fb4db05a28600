//! x86-64 machine code at full vector width, generated with iced-x86's assembler, for what
//! Cranelift cannot emit (it has no 256- or 512-bit vectors). The code follows the kernel ABI of
//! `emit::kernel_signature` (System V: the argument table in `rdi`, then `rsi`, `rdx`, `ecx`,
//! `r8`), touches only caller-saved registers, and ends with `vzeroupper`, so it is placed in the
//! same JIT module as the Cranelift kernels and called the same way (`KernelModule::
//! define_machine_code`).
//!
//! This is the first generator of the full-width tiers: the FMA peak loop that `netc bench`
//! measures each tier's ceiling with.

use iced_x86::code_asm::*;

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
    match tier {
        Tier::Avx2 => {
            let acc = [
                ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11,
            ];
            a.vbroadcastss(ymm14, xmm14).map_err(fail)?;
            a.vbroadcastss(ymm15, xmm15).map_err(fail)?;
            for r in acc {
                a.vxorps(r, r, r).map_err(fail)?;
            }
            a.set_label(&mut top).map_err(fail)?;
            for r in acc {
                a.vfmadd231ps(r, ymm14, ymm15).map_err(fail)?;
            }
            a.dec(rsi).map_err(fail)?;
            a.jnz(top).map_err(fail)?;
            a.mov(rax, qword_ptr(rdi)).map_err(fail)?;
            for (i, r) in acc.into_iter().enumerate() {
                a.vmovups(ymmword_ptr(rax + 32 * i as i32), r)
                    .map_err(fail)?;
            }
        }
        Tier::Avx512 => {
            let acc = [
                zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11,
            ];
            a.vbroadcastss(zmm14, xmm14).map_err(fail)?;
            a.vbroadcastss(zmm15, xmm15).map_err(fail)?;
            for r in acc {
                // `vpxord` is AVX-512F; `vxorps zmm` would need AVX-512DQ.
                a.vpxord(r, r, r).map_err(fail)?;
            }
            a.set_label(&mut top).map_err(fail)?;
            for r in acc {
                a.vfmadd231ps(r, zmm14, zmm15).map_err(fail)?;
            }
            a.dec(rsi).map_err(fail)?;
            a.jnz(top).map_err(fail)?;
            a.mov(rax, qword_ptr(rdi)).map_err(fail)?;
            for (i, r) in acc.into_iter().enumerate() {
                a.vmovups(zmmword_ptr(rax + 64 * i as i32), r)
                    .map_err(fail)?;
            }
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
