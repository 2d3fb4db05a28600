//! `netc bench`: time a spec's training step and inference on generated data of the real shape,
//! so it needs no data set. Reports compile time, the median step time over several timed
//! repetitions, the implied seconds per epoch, and achieved GFLOP/s counted from the IR.
//!
//! Timings are for people and for benchmarks, never for pass/fail tests: this module measures and
//! returns numbers; it asserts nothing about them.

use std::time::Instant;

use netc_ir::backend::{Backend, BackendError, Batch, CallTime, InputStats, Mode};
use netc_ir::ir::{OpKind, Program};
use netc_ir::rng::SplitMix64;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq)]
pub struct BenchOptions {
    /// Training steps per timed repetition.
    pub steps: usize,
    /// Timed repetitions; the median is reported.
    pub repeats: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            steps: 50,
            repeats: 5,
        }
    }
}

/// One vector tier's fused multiply-add peak on one core.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TierPeak {
    /// `f32x4`, `avx2` or `avx512`.
    pub tier: String,
    pub gflops_per_core: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BenchReport {
    pub spec: String,
    pub backend: String,
    pub batch: usize,
    /// Threads a step runs on.
    pub threads: usize,
    /// Of the timed steps' phases, the fraction one thread ran alone because the threads were
    /// measured to wait for each other (other work on the cores); 0 on a quiet machine.
    pub solo_fraction: f64,
    pub compile_ms: f64,
    /// Median milliseconds per training step (forward, backward, update).
    pub step_ms: f64,
    /// All repetitions' milliseconds per step, in order.
    pub step_ms_runs: Vec<f64>,
    /// `step_ms` times the steps of one epoch of 45,000 training images.
    pub sec_per_epoch: f64,
    /// Floating-point operations of one training step, counted from the IR's matrix multiplies.
    pub flops_per_step: f64,
    pub gflops: f64,
    /// The vector tier of the step's matrix multiplies (`f32x4`, `avx2` or `avx512`).
    pub tier: String,
    /// That tier's FMA peak on one core, measured by a tiny kernel at start.
    pub peak_gflops_per_core: f64,
    /// The FMA peak on one core of every tier this CPU has, the step's first: what each tier
    /// is worth here.
    pub tier_peaks: Vec<TierPeak>,
    /// `gflops` over the peak of the cores the step runs on.
    pub peak_fraction: f64,
    /// Milliseconds to predict 10,000 images with dropout off.
    pub predict_ms_per_10k: f64,
    /// Each call of a step on its own (the JIT only): forward and backward by layer, the
    /// optimizer and the transposes as a whole.
    pub calls: Vec<CallTime>,
}

/// Training images per epoch in the exercise (50,000 minus the 5,000 validation images).
pub const EPOCH_IMAGES: usize = 45_000;

/// Multiply-adds of the dense and convolution layers, times two: forward (`x·W`, or every
/// output float's window of `kh·kw·cin` products), backward the kernel's gradient for every
/// layer, and the input's gradient for every layer after an op with parameters (the first one's
/// input gradient is never needed, and a batch norm of the data right before a dense layer gets
/// its gradients from the weight gradient, `FusedUpdate::normalized` in the JIT). Element-wise
/// work and pooling are small beside it and not counted.
pub fn flops_per_step(program: &Program, batch: usize) -> f64 {
    let mut flops = 0.0;
    for (i, op) in program.ops.iter().enumerate() {
        let mac = match op.kind {
            OpKind::Dense { .. } => (batch * op.width_in * op.width) as f64,
            OpKind::Conv2d { kernel, .. } => {
                let window: usize = match program.param(kernel).shape.as_slice() {
                    [kh, kw, cin, _] => kh * kw * cin,
                    _ => 0,
                };
                (batch * op.width * window) as f64
            }
            _ => continue,
        };
        let needs_dx = program.ops[..i]
            .iter()
            .enumerate()
            .any(|(j, o)| match o.kind {
                OpKind::Dense { .. } | OpKind::Prelu { .. } | OpKind::Conv2d { .. } => true,
                OpKind::BatchNorm { .. } => j + 1 < i || matches!(op.kind, OpKind::Conv2d { .. }),
                _ => false,
            });
        flops += 2.0 * mac * if needs_dx { 3.0 } else { 2.0 };
    }
    flops
}

/// The learning rate of timed steps: tiny, so that the weights (and so the arithmetic) stay in a
/// normal range however many steps run.
pub const STEP_LR: f32 = 1e-6;

/// Generated pixels and labels of `rows` examples of the program's shape, the same for every
/// backend: what timed steps train on.
pub fn generated(program: &Program, rows: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = SplitMix64::new(seed, 0xbe7c, 0);
    let pixels = (0..rows * program.input.features)
        .map(|_| (rng.next_u64() >> 56) as u8)
        .collect();
    let labels = (0..rows)
        .map(|_| rng.below(program.input.classes) as u8)
        .collect();
    (pixels, labels)
}

/// Builds the backend with `make` (timed as compile time) and times training and inference.
/// `peaks` measures one core's FMA peak per vector tier, the tier the step's kernels run first,
/// which the report compares the step against; the caller supplies it, as it supplies the
/// backend, so the runtime depends on no backend.
pub fn bench<F>(
    program: &Program,
    spec: &str,
    opts: &BenchOptions,
    make: F,
    peaks: impl FnOnce() -> Result<Vec<TierPeak>, BackendError>,
) -> Result<BenchReport, BackendError>
where
    F: FnOnce(&Program, Option<InputStats>) -> Result<Box<dyn Backend>, BackendError>,
{
    let batch = program.train.batch;
    let stats = InputStats::placeholder(program);
    let started = Instant::now();
    let mut backend = make(program, stats)?;
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let steps = opts.steps.max(1);
    let (pixels, labels) = generated(program, batch * steps, program.train.seed);
    let features = program.input.features;
    let run_steps = |backend: &mut Box<dyn Backend>| {
        for s in 0..steps {
            let batch = Batch {
                pixels: &pixels[s * batch * features..(s + 1) * batch * features],
                labels: &labels[s * batch..(s + 1) * batch],
            };
            backend.train_step(batch, STEP_LR);
        }
    };
    run_steps(&mut backend);
    let runs_before = backend.dispatch_runs();
    let mut step_ms_runs = Vec::new();
    for _ in 0..opts.repeats.max(1) {
        let t = Instant::now();
        run_steps(&mut backend);
        step_ms_runs.push(t.elapsed().as_secs_f64() * 1e3 / steps as f64);
    }
    let step_ms = crate::run::median(step_ms_runs.clone());
    let solo_fraction = {
        let (pool, solo) = backend.dispatch_runs();
        let (pool, solo) = (pool - runs_before.0, solo - runs_before.1);
        if pool + solo == 0 {
            0.0
        } else {
            solo as f64 / (pool + solo) as f64
        }
    };
    let (predict_pixels, _) = generated(program, 10_000, program.train.seed + 1);
    let mut probs = vec![0.0; 10_000 * program.output_width()];
    let t = Instant::now();
    backend.predict(&predict_pixels, Mode::Inference, &mut probs);
    let predict_ms_per_10k = t.elapsed().as_secs_f64() * 1e3;
    let calls = {
        let batch = Batch {
            pixels: &pixels[..batch * features],
            labels: &labels[..batch],
        };
        backend.profile(batch, STEP_LR, opts.repeats.max(1) * 4)
    };
    let flops = flops_per_step(program, batch);
    let gflops = flops / (step_ms * 1e6);
    let threads = backend.threads();
    let tier_peaks = peaks()?;
    let (tier, peak) = tier_peaks.first().map_or((String::new(), f64::NAN), |p| {
        (p.tier.clone(), p.gflops_per_core)
    });
    Ok(BenchReport {
        spec: spec.to_string(),
        backend: backend.name().to_string(),
        batch,
        threads,
        solo_fraction,
        compile_ms,
        step_ms,
        step_ms_runs,
        sec_per_epoch: step_ms * EPOCH_IMAGES.div_ceil(batch) as f64 / 1e3,
        flops_per_step: flops,
        gflops,
        tier,
        peak_gflops_per_core: peak,
        tier_peaks,
        peak_fraction: gflops / (peak * threads as f64),
        predict_ms_per_10k,
        calls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `bench` of a 3,072 → 16 → 10 network with batch 8 (`activation` on the hidden layer),
    /// `steps` steps `repeats` times, on the backend `make` builds.
    fn bench_small<F>(
        activation: &str,
        optimizer: &str,
        steps: usize,
        repeats: usize,
        make: F,
    ) -> BenchReport
    where
        F: FnOnce(&Program, Option<InputStats>) -> Result<Box<dyn Backend>, BackendError>,
    {
        let source = format!(
            "model m\ninput cifar10\ndense 16 {{ activation: {activation}, init: he_normal }}\n\
             dense 10 {{ activation: softmax }}\ntrain {{ optimizer: {optimizer}\n epochs: 1\n batch: 8 }}\n"
        );
        let program = netc_front::compile(&source).program.expect("compiles");
        let opts = BenchOptions { steps, repeats };
        bench(&program, "m.net", &opts, make, || {
            Ok(vec![TierPeak {
                tier: "f32x4".to_owned(),
                gflops_per_core: netc_jit::fma_peak_gflops(100_000, 3)?,
            }])
        })
        .expect("bench")
    }

    #[test]
    fn counts_forward_weight_and_input_gradient_flops() {
        let source = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../specs/baseline.net"
        ))
        .expect("spec");
        let program = netc_front::compile(&source).program.expect("compiles");
        // Forward 2·32·(3072·100 + 19·100·100 + 100·10), weight gradients the same again, input
        // gradients for all but the first layer.
        let fwd = 2.0 * 32.0 * (3072.0 * 100.0 + 19.0 * 100.0 * 100.0 + 100.0 * 10.0);
        let dx = 2.0 * 32.0 * (19.0 * 100.0 * 100.0 + 100.0 * 10.0);
        assert_eq!(flops_per_step(&program, 32), 2.0 * fwd + dx);
        // Batch norm of the inputs, then of every hidden layer: the same multiplies.
        let source = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../specs/batch_norm.net"
        ))
        .expect("spec");
        let program = netc_front::compile(&source).program.expect("compiles");
        assert_eq!(flops_per_step(&program, 32), 2.0 * fwd + dx);
    }

    #[test]
    fn bench_runs_the_interpreter_on_generated_data() {
        let report = bench_small("relu", "adam", 3, 3, |p, s| {
            Ok(Box::new(netc_interp::Interp::new(p, s)))
        });
        assert_eq!(report.backend, "interp");
        assert_eq!(report.step_ms_runs.len(), 3);
        assert_eq!(report.batch, 8);
        assert!(report.step_ms > 0.0 && report.gflops > 0.0);
        assert!(report.peak_fraction > 0.0 && report.peak_gflops_per_core > 0.0);
        assert!(
            report.calls.is_empty(),
            "the interpreter has no per-call times"
        );
    }

    #[test]
    fn bench_profiles_every_call_of_the_jit() {
        let report = bench_small("elu", "nadam", 2, 1, |p, s| {
            Ok(Box::new(netc_jit::Jit::with_threads(p, s, 2)?))
        });
        assert_eq!((report.backend.as_str(), report.threads), ("jit", 2));
        let whole = |c: &&CallTime| c.kernel.starts_with(netc_ir::backend::WHOLE_PHASE);
        let phases: Vec<&str> = report.calls.iter().map(|c| c.phase).collect();
        // convert, dense+elu, dense, loss; weight gradient, input gradient, elu', weight
        // gradient (on two threads: two shares each); the optimizer; the transposes.
        assert_eq!(
            report
                .calls
                .iter()
                .filter(|c| c.phase == "forward" && !whole(c))
                .count(),
            4,
            "{phases:?}"
        );
        assert!(phases.contains(&"backward") && phases.contains(&"optimizer"));
        // On two threads, the forward and backward phases are also timed as a whole.
        let wholes: Vec<&str> = report.calls.iter().filter(whole).map(|c| c.phase).collect();
        assert_eq!(wholes, ["forward", "backward"]);
        assert!(report.calls.iter().all(|c| c.ms >= 0.0));
    }
}
