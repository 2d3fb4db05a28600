//! Time of single dense kernels at the baseline's shapes, in GFLOP/s, to tune the matrix-multiply
//! loops without the noise of a whole step. Not asserted (timings belong to benchmarks):
//! `cargo test --release -p netc-jit kernel_timing -- --ignored --nocapture`.
//! The kernels are built by `KernelBench`, as `benches/kernels.rs` builds them.

use std::time::Instant;

use super::kernel_bench::KernelBench;
use crate::tier::Tier;
use netc_ir::ir::Activation;

/// Fastest microseconds per call of `run` over `samples` samples of 50 calls.
fn fastest_us(samples: usize, mut run: impl FnMut()) -> f64 {
    let reps = 50;
    (0..samples)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..reps {
                run();
            }
            started.elapsed().as_secs_f64() * 1e6 / reps as f64
        })
        // The fastest sample: the machine is shared, and other load only ever adds time.
        .fold(f64::MAX, f64::min)
}

/// Times `bench` and prints its line of the report.
fn report(mut bench: KernelBench) {
    let us = fastest_us(15, || bench.run());
    println!(
        "{:<28} {:3} rows {us:8.1} us {:6.1} GFLOP/s",
        bench.name(),
        bench.rows(),
        bench.flops() / us / 1e3
    );
}

#[test]
#[ignore = "timing report; run in release with --ignored --nocapture"]
fn dense_kernels() {
    let elu = Some(Activation::Elu { alpha: 1.0 });
    // 16 rows: one thread's share of a batch of 32 on two threads.
    for (rows, inputs, units, activation) in [
        (32, 3072, 100, None),
        (16, 3072, 100, None),
        (32, 100, 100, elu),
        (16, 100, 100, elu),
        (32, 100, 100, None),
    ] {
        report(
            KernelBench::dense(Tier::best(), rows, inputs, units, activation).expect("compiles"),
        );
        report(KernelBench::weight_grad(Tier::best(), rows, inputs, units, 1).expect("compiles"));
        report(KernelBench::input_grad(Tier::best(), rows, inputs, units).expect("compiles"));
    }
}

#[test]
#[ignore = "timing report; run in release with --ignored --nocapture"]
fn fma_peak() {
    let g = super::calibrate::fma_peak_gflops(10_000_000, 7).expect("compiles");
    println!("f32x4 FMA peak on one core: {g:.1} GFLOP/s");
}

/// Whether two cores slow each other down: the forward kernel of a 100×100 ELU layer on 16 rows
/// (one thread's share of a batch of 32) alone and on both cores at once, over one shared kernel
/// and private rows, as a step on two threads runs it.
#[test]
#[ignore = "timing report; run in release with --ignored --nocapture"]
fn dense_kernels_on_two_cores() {
    let elu = Some(Activation::Elu { alpha: 1.0 });
    let mut bench = KernelBench::dense(Tier::best(), 32, 100, 100, elu).expect("compiles");
    let name = bench.name().to_string();
    let mut shares = bench.row_shares(2);
    let rows = shares[0].rows();
    let mut time = |threads: usize| -> f64 {
        std::thread::scope(|s| {
            let handles: Vec<_> = shares
                .iter_mut()
                .take(threads)
                .map(|share| s.spawn(move || fastest_us(200, || share.run())))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("joins"))
                .fold(0.0, f64::max)
        })
    };
    println!("{name} on {rows} rows: 1 core {:.1} us per call", time(1));
    println!("{name} on {rows} rows: 2 cores {:.1} us per call", time(2));
}

/// The full-width GEMM micro-kernels (`gemm`) at the dense forward's shapes, beside the f32x4
/// dense kernel of the same shape and each tier's FMA peak on one core.
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "timing report; run in release with --ignored --nocapture"]
fn full_width_gemm() {
    use crate::tier::Tier;
    use crate::{FullWidthGemm, GemmShape};
    if !Tier::Avx512.supported() {
        println!("no AVX-512 here");
        return;
    }
    for tier in Tier::available() {
        let g = super::calibrate::tier_peak_gflops(tier, 10_000_000, 7).expect("runs");
        println!("{} FMA peak on one core: {g:.1} GFLOP/s", tier.name());
    }
    for (rows, k, n) in [
        (32, 3072, 100),
        (16, 3072, 100),
        (32, 100, 100),
        (256, 3072, 100),
    ] {
        let shape = GemmShape::row_major(n, k, n, n);
        let a = vec![0.5f32; rows * k];
        let b = vec![0.25f32; k * n];
        let mut c = vec![0f32; rows * n];
        for tier in [Tier::Avx512, Tier::Avx2] {
            let gemm = FullWidthGemm::new(tier, shape, k).expect("compiles");
            let us = fastest_us(15, || gemm.run(&a, &b, &mut c, rows));
            let flops = 2.0 * (rows * k * n) as f64;
            println!(
                "{:<28} {rows:3} rows {us:8.1} us {:6.1} GFLOP/s",
                format!("gemm_{}_{k}x{n}", tier.name()),
                flops / us / 1e3
            );
        }
        report(KernelBench::dense(Tier::best(), rows, k, n, None).expect("compiles"));
    }
    // Weight gradients xᵀ·dy: A is x read transposed, k the batch.
    for (batch, inputs, units) in [(32, 3072, 100), (32, 100, 100), (256, 3072, 100)] {
        let shape = GemmShape {
            n: units,
            lda: 1,
            a_k: inputs,
            ldb: units,
            ldc: units,
            accumulate: false,
            epilogue: None,
            kc: 0,
        };
        let x = vec![0.5f32; batch * inputs];
        let dy = vec![0.25f32; batch * units];
        let mut dw = vec![0f32; inputs * units];
        for tier in [Tier::Avx512, Tier::Avx2] {
            let gemm = FullWidthGemm::new(tier, shape, batch).expect("compiles");
            let us = fastest_us(15, || gemm.run(&x, &dy, &mut dw, inputs));
            let flops = 2.0 * (batch * inputs * units) as f64;
            println!(
                "{:<28} {batch:3} rows {us:8.1} us {:6.1} GFLOP/s",
                format!("gemm_{}_xT_dy_{inputs}x{units}", tier.name()),
                flops / us / 1e3
            );
        }
        report(KernelBench::weight_grad(Tier::best(), batch, inputs, units, 1).expect("compiles"));
    }
    // Input gradients dy·Wᵀ: B is the transposed copy of the kernel the JIT keeps, k the units.
    for (batch, inputs, units) in [(32, 3072, 100), (256, 3072, 100)] {
        let shape = GemmShape::row_major(inputs, units, inputs, inputs);
        let dy = vec![0.5f32; batch * units];
        let wt = vec![0.25f32; units * inputs];
        let mut dx = vec![0f32; batch * inputs];
        for tier in [Tier::Avx512, Tier::Avx2] {
            let gemm = FullWidthGemm::new(tier, shape, units).expect("compiles");
            let us = fastest_us(15, || gemm.run(&dy, &wt, &mut dx, batch));
            let flops = 2.0 * (batch * inputs * units) as f64;
            println!(
                "{:<28} {batch:3} rows {us:8.1} us {:6.1} GFLOP/s",
                format!("gemm_{}_dy_wT_{inputs}x{units}", tier.name()),
                flops / us / 1e3
            );
        }
        report(KernelBench::input_grad(Tier::best(), batch, inputs, units).expect("compiles"));
    }
}

/// The products of `tests/golden/ok/cnn_cifar.net`'s convolutions as GEMMs over im2col patches
/// (one thread's share of a batch of 128: 64 images): forward `patches · K`
/// (`[64·h·w, 9·cin] · [9·cin, cout]`) at each full-width tier, to size the convolution kernels
/// the JIT needs (their `n` is 32 to 128 channels, where the dense layers' was 100).
///
/// On 2026-12-06 (one core, AVX-512 peak 117 GFLOP/s): 112 GFLOP/s for the first layer (k = 27),
/// but 67 for 32 → 32 channels, 88–94 for 64 and 128: the 4 × 6 tile is 4 × 2 at 32 channels,
/// 8 accumulators each fed by an embedded broadcast, which loads more than the two load ports
/// give. Narrow outputs want taller tiles (12 × 2, a broadcast per row into a register).
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore = "timing report; run in release with --ignored --nocapture"]
fn convolution_gemms() {
    use crate::tier::Tier;
    use crate::{FullWidthGemm, GemmShape};
    let images = 64;
    for (side, cin, cout) in [
        (32, 3, 32),
        (32, 32, 32),
        (16, 32, 64),
        (16, 64, 64),
        (8, 64, 128),
        (8, 128, 128),
    ] {
        let (rows, k, n) = (images * side * side, 9 * cin, cout);
        let shape = GemmShape::row_major(n, k, n, n);
        let a = vec![0.5f32; rows * k];
        let b = vec![0.25f32; k * n];
        let mut c = vec![0f32; rows * n];
        for tier in Tier::available().into_iter().filter(|t| *t != Tier::F32x4) {
            let gemm = FullWidthGemm::new(tier, shape, k).expect("compiles");
            let us = fastest_us(3, || gemm.run(&a, &b, &mut c, rows));
            let flops = 2.0 * (rows * k * n) as f64;
            println!(
                "{:<34} {rows:6} rows {us:9.1} us {:6.1} GFLOP/s",
                format!("conv_gemm_{}_{side}x{side}_{cin}to{cout}", tier.name()),
                flops / us / 1e3
            );
        }
    }
}
