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

#[test]
#[ignore = "timing report; run in release with --ignored --nocapture"]
fn fma_peak() {
    let g = super::calibrate::fma_peak_gflops(10_000_000, 7).expect("compiles");
    println!("f32x4 FMA peak on one core: {g:.1} GFLOP/s");
}
