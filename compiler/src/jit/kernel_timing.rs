//! Time of single dense kernels at the baseline's shapes, in GFLOP/s, to tune the matrix-multiply
//! loops without the noise of a whole step. Not asserted (timings belong to benchmarks):
//! `cargo test --release -p netc-compiler jit::kernel_timing -- --ignored --nocapture`.

use std::time::Instant;

use super::kernels::{pad4, row_stride, Kernel};
use super::module::KernelModule;
use crate::ir::Activation;

/// Buffers of the given float counts, filled with small deterministic values.
fn buffers(lens: &[usize]) -> Vec<Vec<f32>> {
    lens.iter()
        .enumerate()
        .map(|(b, &n)| {
            (0..n)
                .map(|i| ((i * 7 + b * 13) % 17) as f32 * 0.01 - 0.08)
                .collect()
        })
        .collect()
}

/// Fastest microseconds of one call of `kernel` with `rows` rows over buffers of `lens` floats.
fn time_kernel(kernel: &Kernel, rows: usize, lens: &[usize]) -> f64 {
    let mut module = KernelModule::new().expect("module");
    let id = module.kernel(kernel).expect("compiles");
    module.finalize().expect("finalizes");
    let f = module.get(id);
    let mut bufs = buffers(lens);
    let table: Vec<*mut u8> = bufs.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
    let scalars = [0.0f32; 8];
    let mut samples = Vec::new();
    for _ in 0..15 {
        let started = Instant::now();
        let reps = 50;
        for _ in 0..reps {
            // SAFETY: every buffer has the length the kernel's argument table documents for
            // `rows` rows (see the callers), and the table outlives the call.
            unsafe { f(table.as_ptr(), rows as i64, 0, 0, scalars.as_ptr()) };
        }
        samples.push(started.elapsed().as_secs_f64() * 1e6 / reps as f64);
    }
    // The fastest sample: the machine is shared, and other load only ever adds time.
    samples.into_iter().fold(f64::MAX, f64::min)
}

#[test]
#[ignore = "timing report; run in release with --ignored --nocapture"]
fn dense_kernels() {
    let rows = 32;
    let elu = Some(Activation::Elu { alpha: 1.0 });
    for (inputs, units, activation) in [(3072, 100, None), (100, 100, elu)] {
        let (ip, up) = (row_stride(inputs), pad4(units));
        let flop = 2.0 * (rows * inputs * units) as f64;
        let fwd = Kernel::Dense {
            convert: None,
            inputs,
            units,
            bias: true,
            activation,
            store_pre_activation: false,
        };
        let us = time_kernel(&fwd, rows, &[rows * ip, inputs * up, up, rows * up]);
        println!(
            "{:<28} {us:8.1} us {:6.1} GFLOP/s",
            fwd.name(),
            flop / us / 1e3
        );
        let weight_grad = Kernel::WeightGrad {
            inputs,
            x_ld: ip,
            units,
            batch: rows,
            bias: true,
        };
        let us = time_kernel(&weight_grad, rows, &[rows * ip, rows * up, inputs * up, up]);
        println!(
            "{:<28} {us:8.1} us {:6.1} GFLOP/s",
            weight_grad.name(),
            flop / us / 1e3
        );
        let input_grad = Kernel::InputGrad { inputs, units };
        let wt = units * pad4(inputs);
        let us = time_kernel(&input_grad, rows, &[rows * up, wt, rows * ip]);
        println!(
            "{:<28} {us:8.1} us {:6.1} GFLOP/s",
            input_grad.name(),
            flop / us / 1e3
        );
    }
}

/// `accumulators` independent f32x4 FMA chains, `iters` times: the register-only peak.
fn peak(accumulators: usize, iters: i64) -> f64 {
    use super::emit::Fx;
    use cranelift_codegen::ir::types::F32X4;
    let mut module = KernelModule::new().expect("module");
    let id = module
        .define("peak", true, |fx: &mut Fx| {
            let x = fx.splat(1.0001);
            let y = fx.splat(0.9999);
            let z = fx.zero4();
            let acc: Vec<_> = (0..accumulators).map(|_| fx.var(F32X4, z)).collect();
            fx.loop_const(0, iters, 1, |fx, _| {
                for a in &acc {
                    let c = fx.get(*a);
                    let c = fx.fma(c, x, y);
                    fx.set(*a, c);
                }
            });
            let out = fx.arg(0);
            for (i, a) in acc.iter().enumerate() {
                let c = fx.get(*a);
                fx.store(c, out, 4 * i as i64);
            }
        })
        .expect("compiles");
    module.finalize().expect("finalizes");
    let f = module.get(id);
    let mut out = vec![0f32; 4 * accumulators];
    let table = [out.as_mut_ptr().cast::<u8>()];
    let mut best = f64::MAX;
    for _ in 0..7 {
        let started = Instant::now();
        // SAFETY: the kernel stores `accumulators` vectors to the one buffer of the table.
        unsafe { f(table.as_ptr(), 0, 0, 0, [0f32].as_ptr()) };
        best = best.min(started.elapsed().as_secs_f64());
    }
    (accumulators as f64 * iters as f64 * 8.0) / best / 1e9
}

#[test]
#[ignore = "timing report; run in release with --ignored --nocapture"]
fn fma_peak() {
    for acc in [4, 8, 10, 12] {
        println!("{acc} chains: {:.1} GFLOP/s", peak(acc, 10_000_000));
    }
}
