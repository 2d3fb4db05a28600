//! The machine's fused multiply-add peak per vector tier: a tiny kernel of independent FMA
//! chains on registers only, no memory traffic. For `F32x4` it is Cranelift code, as the
//! kernels are; for `Avx2` and `Avx512` it is machine code from `x86`, placed in the same
//! module. `netc bench` divides achieved GFLOP/s by the peak of the tier its kernels run, and
//! reports the other tiers' peaks beside it: what full width would be worth here.

use std::time::Instant;

use cranelift_codegen::ir::types::F32X4;

use super::emit::Fx;
use super::module::KernelModule;
use crate::tier::Tier;
use netc_ir::backend::BackendError;

/// Independent accumulator chains: enough to cover the FMA latency on two ports (4 cycles × 2)
/// with room to spare, few enough to stay in registers.
const CHAINS: usize = 12;

/// GFLOP/s of one core running f32x4 FMAs: the best of `repeats` runs of `iters` iterations.
pub fn fma_peak_gflops(iters: i64, repeats: usize) -> Result<f64, BackendError> {
    let mut module = KernelModule::new(Tier::F32x4)?;
    let id = module.define("fma_peak", true, |fx: &mut Fx| {
        let x = fx.splat(1.0001);
        let y = fx.splat(0.9999);
        let zero = fx.zero4();
        let acc: Vec<_> = (0..CHAINS).map(|_| fx.var(F32X4, zero)).collect();
        fx.loop_const(0, iters, 1, |fx, _| {
            for a in &acc {
                let c = fx.get(*a);
                let c = fx.fma(c, x, y);
                fx.set(*a, c);
            }
        });
        // Stored, so that the chains are live.
        let out = fx.arg(0);
        for (i, a) in acc.iter().enumerate() {
            let c = fx.get(*a);
            fx.store(c, out, 4 * i as i64);
        }
    })?;
    module.finalize()?;
    let f = module.get(id);
    let mut out = [0f32; 4 * CHAINS];
    let table = [out.as_mut_ptr().cast::<u8>()];
    let mut best = f64::MAX;
    for _ in 0..repeats.max(1) {
        let started = Instant::now();
        // SAFETY: the kernel's table is one pointer to `CHAINS` f32x4 values, which `out` holds;
        // it reads nothing else.
        unsafe { f(table.as_ptr(), 0, 0, 0, [0f32].as_ptr()) };
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok(CHAINS as f64 * iters as f64 * 8.0 / best / 1e9)
}

/// GFLOP/s of one core running `tier`'s FMAs: the best of `repeats` runs of `iters`
/// iterations. `tier` must be supported by this CPU (`Tier::supported`).
pub fn tier_peak_gflops(tier: Tier, iters: i64, repeats: usize) -> Result<f64, BackendError> {
    if tier == Tier::F32x4 {
        return fma_peak_gflops(iters, repeats);
    }
    let (best, _) = run_tier_peak(tier, iters, repeats)?;
    Ok(crate::x86::PEAK_CHAINS as f64 * iters as f64 * tier.lanes() as f64 * 2.0 / best / 1e9)
}

/// Runs the full-width peak loop of `tier`: the best time in seconds, and the accumulators.
#[cfg(target_arch = "x86_64")]
fn run_tier_peak(tier: Tier, iters: i64, repeats: usize) -> Result<(f64, Vec<f32>), BackendError> {
    if !tier.supported() {
        return Err(BackendError::Host {
            what: format!("running {} code", tier.name()),
            detail: "this CPU does not have the instructions".to_owned(),
        });
    }
    let mut module = KernelModule::new(Tier::F32x4)?;
    let id = module.define_machine_code(
        &format!("fma_peak_{}", tier.name()),
        crate::x86::fma_peak(tier)?,
    )?;
    module.finalize()?;
    let f = module.get(id);
    let mut out = vec![0f32; tier.lanes() * crate::x86::PEAK_CHAINS];
    let table = [out.as_mut_ptr().cast::<u8>()];
    let mut best = f64::MAX;
    for _ in 0..repeats.max(1) {
        let started = Instant::now();
        // SAFETY: the CPU has the tier's instructions (checked above); the code stores
        // `PEAK_CHAINS` vectors of `tier.lanes()` floats to the table's one pointer, which `out`
        // holds, reads nothing else, and loops `iters.max(1)` times.
        unsafe { f(table.as_ptr(), iters.max(1), 0, 0, [0f32].as_ptr()) };
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok((best, out))
}

#[cfg(not(target_arch = "x86_64"))]
fn run_tier_peak(tier: Tier, _: i64, _: usize) -> Result<(f64, Vec<f32>), BackendError> {
    Err(BackendError::Host {
        what: format!("running {} code", tier.name()),
        detail: "it exists on x86-64 only".to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_is_positive_and_finite() {
        let g = super::fma_peak_gflops(10_000, 2).expect("compiles");
        assert!(g.is_finite() && g > 0.0, "{g}");
    }

    /// The generated full-width loops compute what they say, bit for bit: every lane of every
    /// chain is `iters` fused multiply-adds `acc = x * y + acc` from zero.
    #[test]
    fn full_width_peak_loops_compute_their_chains_exactly() {
        let iters = 1_000;
        let mut expected = 0f32;
        for _ in 0..iters {
            expected = crate::x86::PEAK_X.mul_add(crate::x86::PEAK_Y, expected);
        }
        for tier in Tier::available().into_iter().filter(|t| *t != Tier::F32x4) {
            let (seconds, out) = run_tier_peak(tier, iters, 1).expect("runs");
            assert!(seconds > 0.0);
            assert_eq!(out.len(), tier.lanes() * crate::x86::PEAK_CHAINS);
            assert!(
                out.iter().all(|&v| v == expected),
                "{tier:?}: {out:?} != {expected}"
            );
            let g = tier_peak_gflops(tier, 10_000, 2).expect("runs");
            assert!(g.is_finite() && g > 0.0, "{g}");
        }
    }
}
