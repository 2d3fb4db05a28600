//! The machine's f32x4 fused multiply-add peak as Cranelift code reaches it: a tiny kernel of
//! independent FMA chains on registers only, no memory traffic. `netc bench` divides achieved
//! GFLOP/s by it to say how close the generated kernels come to what the instructions allow.

use std::time::Instant;

use cranelift_codegen::ir::types::F32X4;

use super::emit::Fx;
use super::module::KernelModule;
use netc_ir::backend::BackendError;

/// Independent accumulator chains: enough to cover the FMA latency on two ports (4 cycles × 2)
/// with room to spare, few enough to stay in registers.
const CHAINS: usize = 12;

/// GFLOP/s of one core running f32x4 FMAs: the best of `repeats` runs of `iters` iterations.
pub fn fma_peak_gflops(iters: i64, repeats: usize) -> Result<f64, BackendError> {
    let mut module = KernelModule::new()?;
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

#[cfg(test)]
mod tests {
    #[test]
    fn peak_is_positive_and_finite() {
        let g = super::fma_peak_gflops(10_000, 2).expect("compiles");
        assert!(g.is_finite() && g > 0.0, "{g}");
    }
}
