//! Criterion benches of the JIT at the shapes of `specs/baseline.net` (a 3,072 → 100 dense layer,
//! then 100 → 100 ones, all with ELU; batch 32; Nadam) and of `specs/batch_norm.net`'s batch
//! norms: each hot kernel on its own at every vector tier this CPU has (`f32x4`, `avx2`,
//! `avx512`: the parameter names it), on the whole batch and on one thread's share of it when a
//! step runs on two threads, and a whole training step through the `Backend` API on one thread. `cargo bench --bench kernels` runs them all;
//! `-- --quick`, `-- GROUP` or `-- --measurement-time SECS` make a run shorter.
//!
//! A matrix multiply's throughput counts floating-point operations as elements, so criterion's
//! `elem/s` reads as FLOP/s, counted as `netc bench` counts them. An update's counts the bytes it
//! must read and write, being bound by memory; a step's counts the images of its batch.
//!
//! Timings are reported, never asserted.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use netc_ir::backend::{Backend, Batch, InputStats};
use netc_ir::ir::Activation;
use netc_jit::{Jit, KernelBench, Tier};
use netc_runtime::bench::{generated, STEP_LR};

/// The baseline's batch.
const BATCH: usize = 32;
/// One thread's share of the batch's rows on two threads.
const SHARE: usize = BATCH / 2;
/// Input features of CIFAR-10 (32 × 32 × 3).
const INPUTS: usize = 3072;
/// Units of each hidden layer.
const HIDDEN: usize = 100;
const ELU: Option<Activation> = Some(Activation::Elu { alpha: 1.0 });

/// Times one kernel, with the throughput of its group's unit.
fn bench_kernel(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    mut bench: KernelBench,
    parameter: &str,
    throughput: fn(&KernelBench) -> Throughput,
) {
    group.throughput(throughput(&bench));
    let id = BenchmarkId::new(
        bench.name().to_string(),
        format!("{} {parameter}", bench.tier().name()),
    );
    group.bench_function(id, |b| b.iter(|| bench.run()));
}

fn flops(bench: &KernelBench) -> Throughput {
    Throughput::Elements(bench.flops() as u64)
}

fn bytes(bench: &KernelBench) -> Throughput {
    Throughput::Bytes(bench.bytes() as u64)
}

fn rows(rows: usize) -> String {
    format!("{rows} rows")
}

/// `y = elu(x·W + b)` for both layer shapes, on the batch and on one thread's rows.
fn dense_forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("dense_forward");
    for tier in Tier::available() {
        for inputs in [INPUTS, HIDDEN] {
            for n in [BATCH, SHARE] {
                let bench = KernelBench::dense(tier, n, inputs, HIDDEN, ELU).expect("compiles");
                bench_kernel(&mut group, bench, &rows(n), flops);
            }
        }
    }
    group.finish();
}

/// `dW = xᵀ·dy` over the batch for both layer shapes: the whole kernel (one thread) and the
/// first thread's share of its rows (two threads, which divide the kernel's rows, not the
/// batch's).
fn dense_weight_grad(c: &mut Criterion) {
    let mut group = c.benchmark_group("dense_weight_grad");
    for tier in Tier::available() {
        for inputs in [INPUTS, HIDDEN] {
            for threads in [1, 2] {
                let bench = KernelBench::weight_grad(tier, BATCH, inputs, HIDDEN, threads)
                    .expect("compiles");
                bench_kernel(&mut group, bench, &format!("batch {BATCH}"), flops);
            }
        }
    }
    group.finish();
}

/// `dense_weight_grad` with the kernel's Nadam step fused in, as a training step runs it (and
/// the refresh of the transposed copy, which the first layer has none of).
fn dense_weight_grad_nadam(c: &mut Criterion) {
    let mut group = c.benchmark_group("dense_weight_grad_nadam");
    for tier in Tier::available() {
        for inputs in [INPUTS, HIDDEN] {
            for threads in [1, 2] {
                let transposed = inputs == HIDDEN;
                let bench = KernelBench::weight_grad_nadam(
                    tier, BATCH, inputs, HIDDEN, threads, transposed,
                )
                .expect("compiles");
                bench_kernel(&mut group, bench, &format!("batch {BATCH}"), flops);
            }
        }
    }
    group.finish();
}

/// `dx = dy·Wᵀ` of a hidden layer, on the batch and on one thread's rows. The first layer's
/// input gradient is never computed.
fn dense_input_grad(c: &mut Criterion) {
    let mut group = c.benchmark_group("dense_input_grad");
    for tier in Tier::available() {
        for n in [BATCH, SHARE] {
            let bench = KernelBench::input_grad(tier, n, HIDDEN, HIDDEN).expect("compiles");
            bench_kernel(&mut group, bench, &rows(n), flops);
        }
    }
    group.finish();
}

/// `specs/batch_norm.net`'s batch norms: the data's 3,072 columns, and 100 columns with the
/// ELU after them fused, forward in training and backward, over the batch. Counted in the
/// bytes they must move (they do a few operations per float).
fn batch_norm(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch_norm");
    for tier in Tier::available() {
        for (width, activation) in [(INPUTS, None), (HIDDEN, ELU)] {
            let bench = KernelBench::batch_norm(tier, BATCH, width, activation).expect("compiles");
            bench_kernel(&mut group, bench, &rows(BATCH), bytes);
        }
        let bench = KernelBench::batch_norm_backward(tier, BATCH, HIDDEN).expect("compiles");
        bench_kernel(&mut group, bench, &rows(BATCH), bytes);
    }
    group.finish();
}

/// Nadam on its own (a training step fuses it into the weight gradient when nothing but the
/// rule acts on the kernel; the update kernel serves the others) on each layer's kernel: whole,
/// and the first of two threads' share, which is the rows
/// of its weight gradient share (the first half, rounded down to a multiple of 4 rows).
fn nadam(c: &mut Criterion) {
    let mut group = c.benchmark_group("nadam");
    for tier in Tier::available() {
        for inputs in [INPUTS, HIDDEN] {
            for len in [inputs * HIDDEN, inputs / 2 / 4 * 4 * HIDDEN] {
                let bench = KernelBench::nadam(tier, len).expect("compiles");
                bench_kernel(&mut group, bench, &format!("{len} floats"), bytes);
            }
        }
    }
    group.finish();
}

/// One training step of `specs/baseline.net` on one thread, on generated data as `netc bench`
/// trains (`netc_runtime::bench`), cycling through a few batches.
fn train_step(c: &mut Criterion) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/specs/baseline.net");
    let source = std::fs::read_to_string(path).expect("specs/baseline.net is readable");
    let program = netc_front::compile(&source)
        .program
        .expect("specs/baseline.net compiles");
    let stats = InputStats::placeholder(&program);
    let mut jit = Jit::with_threads(&program, stats, 1).expect("compiles");
    let (n, features) = (program.train.batch, program.input.features);
    let batches = 16;
    let (pixels, labels) = generated(&program, n * batches, program.train.seed);
    let mut group = c.benchmark_group("train_step");
    group.throughput(Throughput::Elements(n as u64));
    let mut step = 0;
    group.bench_function(BenchmarkId::new("baseline", "1 thread"), |b| {
        b.iter(|| {
            let s = step % batches;
            step += 1;
            let batch = Batch {
                pixels: &pixels[s * n * features..(s + 1) * n * features],
                labels: &labels[s * n..(s + 1) * n],
            };
            jit.train_step(batch, STEP_LR)
        })
    });
    group.finish();
}

criterion_group!(
    kernels,
    dense_forward,
    dense_weight_grad,
    dense_weight_grad_nadam,
    dense_input_grad,
    batch_norm,
    nadam,
    train_step
);
criterion_main!(kernels);
