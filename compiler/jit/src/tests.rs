//! Tests of the JIT backend: single kernels against scalar f64 computations (matmul tiles of odd
//! shapes, epilogues, batch reductions, the head), the polynomial transcendentals against their
//! scalar twins and f64, the SIMD dropout masks bit for bit against `rng`, and whole programs
//! against the reference executor `interp` (forward values, every gradient, and parameters after
//! 20 optimizer steps).

use cranelift_codegen::ir::Value;

use super::emit::{ro, Fx};
use super::kernels::{alpha_dropout_constants, pad4, Convert, FusedUpdate, Kernel, Update};
use super::math;
use super::module::{KernelFn, KernelId, KernelModule};
use super::*;
use netc_interp::Interp;
use netc_ir::backend::{Backend, Batch, Mode};
use netc_ir::ir::{Activation, OptimizerKind, Regularizer};
use netc_ir::rng::{self, SplitMix64};
use netc_ir::testing::{program, DenseLayer, Layer};
use std::time::Instant;

/// A compiled single kernel with its module kept alive.
struct One {
    module: KernelModule,
    id: KernelId,
}

impl One {
    fn new(kernel: &Kernel) -> One {
        One::at(Tier::F32x4, kernel)
    }

    /// The kernel with its matrix multiplies at `tier`.
    fn at(tier: Tier, kernel: &Kernel) -> One {
        let mut module = KernelModule::new(tier).expect("host ISA");
        let id = module.kernel(kernel).expect("kernel compiles");
        module.finalize().expect("finalize");
        One { module, id }
    }

    fn probe(emit: impl Fn(&mut Fx, Value) -> Value) -> One {
        let mut module = KernelModule::new(crate::tier::Tier::F32x4).expect("host ISA");
        let id = module
            .define("probe", false, |fx| {
                let x = fx.arg(0);
                let y = fx.arg(1);
                let zero = fx.iconst(0);
                let rows = fx.rows;
                fx.loop_up(zero, rows, 1, |fx, i| {
                    let px = fx.offset(x, i, 16);
                    let py = fx.offset(y, i, 16);
                    let v = fx.load4(ro(), px, 0);
                    let r = emit(fx, v);
                    fx.store(r, py, 0);
                });
            })
            .expect("probe compiles");
        module.finalize().expect("finalize");
        One { module, id }
    }

    fn call(&self, ptrs: &[*mut u8], rows: usize, row0: usize, key: u32, scalars: &[f32]) {
        let f: KernelFn = self.module.get(self.id);
        // SAFETY: every test passes buffers sized for `rows` rows in the kernel's layout.
        unsafe {
            f(
                ptrs.as_ptr(),
                rows as i64,
                row0 as i64,
                key as i32,
                scalars.as_ptr(),
            )
        }
    }

    /// Applies a probe element-wise to `xs` (padded to whole vectors).
    fn map(&self, xs: &[f32]) -> Vec<f32> {
        let mut x = xs.to_vec();
        x.resize(pad4(xs.len()), 0.0);
        let mut y = vec![0.0f32; x.len()];
        self.call(&[ptr(&mut x), ptr(&mut y)], x.len() / 4, 0, 0, &[]);
        y.truncate(xs.len());
        y
    }
}

fn ptr(v: &mut [f32]) -> *mut u8 {
    v.as_mut_ptr().cast()
}

/// Random values in `[-scale, scale)`.
fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut rng = SplitMix64::new(seed, 77, 0);
    (0..n)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) as f32) * scale)
        .collect()
}

/// A `[rows, cols]` row-major matrix in the padded layout.
fn padded(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let ld = pad4(cols);
    let mut out = vec![0.0; rows.max(1) * ld + 16];
    for r in 0..rows {
        out[r * ld..r * ld + cols].copy_from_slice(&m[r * cols..(r + 1) * cols]);
    }
    out
}

fn unpadded(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let ld = pad4(cols);
    (0..rows)
        .flat_map(|r| m[r * ld..r * ld + cols].iter().copied())
        .collect()
}

#[track_caller]
fn assert_close(got: &[f32], want: &[f64], rel: f64, abs: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(g) - w).abs();
        assert!(
            err <= abs + rel * w.abs(),
            "{what}[{i}]: got {g}, want {w} (error {err:e})"
        );
    }
}

fn grid(lo: f32, hi: f32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32)
        .collect()
}

/// One transcendental under test: its emitter, scalar twin, f64 reference, sample points and
/// tolerance of the twin against f64.
struct MathCase {
    name: &'static str,
    emit: fn(&mut Fx, Value) -> Value,
    twin: fn(f32) -> f32,
    reference: fn(f64) -> f64,
    xs: Vec<f32>,
    rel: f64,
    abs: f64,
}

fn gelu64(x: f64) -> f64 {
    0.5 * x * (1.0 + netc_interp::erf(x / std::f64::consts::SQRT_2))
}

fn gelu_grad64(x: f64) -> f64 {
    0.5 * (1.0 + netc_interp::erf(x / std::f64::consts::SQRT_2))
        + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
}

/// Each polynomial: generated code against its scalar twin (a few ulps: only FMA contraction
/// may differ), and the twin against f64 within the documented accuracy.
#[test]
fn transcendentals_match_twins_and_f64() {
    let cases = [
        MathCase {
            name: "exp",
            emit: math::exp,
            twin: math::scalar::exp,
            reference: f64::exp,
            xs: grid(-80.0, 80.0, 4001),
            rel: 1e-6,
            abs: 0.0,
        },
        MathCase {
            name: "expm1",
            emit: math::expm1,
            twin: math::scalar::expm1,
            reference: f64::exp_m1,
            xs: [grid(-20.0, 20.0, 4001), grid(-1e-3, 1e-3, 101)].concat(),
            rel: 1e-6,
            abs: 0.0,
        },
        MathCase {
            name: "ln",
            emit: math::ln,
            twin: math::scalar::ln,
            reference: f64::ln,
            xs: [
                grid(1e-3, 10.0, 4001),
                grid(0.9, 1.1, 1001),
                vec![1e-30, 1e30, 3e38],
            ]
            .concat(),
            rel: 1e-6,
            abs: 1e-7,
        },
        MathCase {
            name: "tanh",
            emit: math::tanh,
            twin: math::scalar::tanh,
            reference: f64::tanh,
            xs: [grid(-12.0, 12.0, 4001), grid(-1e-3, 1e-3, 101)].concat(),
            rel: 1e-6,
            abs: 0.0,
        },
        MathCase {
            name: "sigmoid",
            emit: math::sigmoid,
            twin: math::scalar::sigmoid,
            reference: |x| 1.0 / (1.0 + (-x).exp()),
            xs: grid(-80.0, 40.0, 4001),
            rel: 2e-6,
            abs: 0.0,
        },
        MathCase {
            name: "gelu",
            emit: math::gelu,
            twin: math::scalar::gelu,
            reference: gelu64,
            xs: grid(-9.0, 9.0, 4001),
            rel: 2e-6,
            abs: 1e-12,
        },
        MathCase {
            name: "gelu_grad",
            emit: math::gelu_grad,
            twin: math::scalar::gelu_grad,
            reference: gelu_grad64,
            xs: grid(-9.0, 9.0, 4001),
            rel: 2e-6,
            abs: 1e-7,
        },
    ];
    for case in cases {
        let name = case.name;
        let probe = One::probe(case.emit);
        let got = probe.map(&case.xs);
        let twin: Vec<f32> = case.xs.iter().map(|&x| (case.twin)(x)).collect();
        let twin64: Vec<f64> = twin.iter().map(|&v| f64::from(v)).collect();
        assert_close(
            &got,
            &twin64,
            4e-7,
            case.abs,
            &format!("{name} jit vs twin"),
        );
        let want: Vec<f64> = case
            .xs
            .iter()
            .map(|&x| (case.reference)(f64::from(x)))
            .collect();
        assert_close(
            &twin,
            &want,
            case.rel,
            case.abs,
            &format!("{name} twin vs f64"),
        );
    }
}

/// Dropout keep masks drawn in i32x4 lanes equal `rng::keep` for every element, including
/// rows numbered from a non-zero first row, and both dropout kinds scale as documented.
#[test]
fn dropout_masks_match_rng_bit_for_bit() {
    let (rows, width, row0, rate) = (9, 7, 13, 0.3f32);
    let key = rng::dropout_key(5, rng::Stream::Train, 3, 2);
    for alpha in [false, true] {
        let k = One::new(&Kernel::Dropout {
            convert: None,
            width,
            rate,
            alpha,
        });
        let mut x = padded(&vec![1.0; rows * width], rows, width);
        let mut y = vec![0.0; x.len()];
        k.call(&[ptr(&mut x), ptr(&mut y)], rows, row0, key, &[]);
        let (alpha_p, a, b) = alpha_dropout_constants(rate);
        let mut kept = 0;
        for r in 0..rows {
            for c in 0..width {
                let element = ((row0 + r) * width + c) as u32;
                let keep = rng::keep(key, element, rate);
                kept += usize::from(keep);
                let want = match (alpha, keep) {
                    (false, true) => 1.0 / (1.0 - rate),
                    (false, false) => 0.0,
                    (true, true) => a + b,
                    (true, false) => a * alpha_p + b,
                };
                let got = y[r * pad4(width) + c];
                assert!(
                    (got - want).abs() <= 1e-6,
                    "({r}, {c}): got {got}, want {want}"
                );
            }
        }
        assert!(kept > 0 && kept < rows * width, "the mask is not constant");
    }
}

fn matmul_ref(x: &[f32], w: &[f32], rows: usize, k: usize, n: usize) -> Vec<f64> {
    let mut out = vec![0.0f64; rows * n];
    for r in 0..rows {
        for t in 0..k {
            let xv = f64::from(x[r * k + t]);
            for j in 0..n {
                out[r * n + j] += xv * f64::from(w[t * n + j]);
            }
        }
    }
    out
}

/// Asserts that two results are the same floats bit for bit (`-0.0` and NaN payloads included).
fn assert_same_bits(a: &[f32], b: &[f32], what: &str) {
    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(a), bits(b), "{what}");
}

/// The AVX-512 GEMM's own epilogue (bias, ELU or SELU) computes the f32x4 pass's arithmetic
/// step for step, and the products are the same FMA chains: the dense forward kernel gives the
/// same bits at both tiers, on odd shapes and across ELU's whole range (including the clamped
/// ends of `expm1`).
#[test]
fn full_width_dense_epilogue_matches_the_f32x4_tier_bit_for_bit() {
    if !Tier::Avx512.supported() {
        return;
    }
    let activations = [
        None,
        Some(Activation::Elu { alpha: 1.0 }),
        Some(Activation::Elu { alpha: 0.3 }),
        Some(Activation::Selu),
    ];
    for (i, &(rows, k, n)) in [(1, 1, 1), (7, 13, 17), (33, 100, 100), (5, 3072, 33)]
        .iter()
        .enumerate()
    {
        for activation in activations {
            // Inputs up to ±60, so pre-activations cover expm1's clamp at -87 too.
            let x = random(rows * k, 300 + i as u64, 60.0 / (k as f32).sqrt());
            let w = random(k * n, 400 + i as u64, 1.0);
            let b = random(n, 500 + i as u64, 1.0);
            let out: Vec<Vec<f32>> = [Tier::F32x4, Tier::Avx512]
                .into_iter()
                .map(|tier| {
                    let kernel = One::at(
                        tier,
                        &Kernel::Dense {
                            convert: None,
                            inputs: k,
                            units: n,
                            bias: true,
                            activation,
                            store_pre_activation: false,
                        },
                    );
                    // Rows of x as the JIT lays them out (3,072 inputs have a line more).
                    let ld = kernels::row_stride(k);
                    let mut xp = vec![0.0; rows * ld];
                    for r in 0..rows {
                        xp[r * ld..r * ld + k].copy_from_slice(&x[r * k..(r + 1) * k]);
                    }
                    let mut wp = padded(&w, k, n);
                    let mut bp = padded(&b, 1, n);
                    let mut y = vec![0.0; rows * pad4(n) + 16];
                    let args = [ptr(&mut xp), ptr(&mut wp), ptr(&mut bp), ptr(&mut y)];
                    kernel.call(&args, rows, 0, 0, &[]);
                    unpadded(&y, rows, n)
                })
                .collect();
            let what = format!("dense {rows}x{k}x{n} {activation:?}");
            assert_same_bits(&out[0], &out[1], &what);
        }
    }
}

/// The AVX-512 GEMM's derivative epilogue (ELU, SELU) in the input gradient `dy·Wᵀ · act'`
/// gives the f32x4 tier's bits.
#[test]
fn full_width_derivative_epilogue_matches_the_f32x4_tier_bit_for_bit() {
    if !Tier::Avx512.supported() {
        return;
    }
    for (i, &(rows, inputs, units)) in [(1, 1, 1), (7, 17, 13), (33, 100, 100), (5, 3072, 33)]
        .iter()
        .enumerate()
    {
        for activation in [Activation::Elu { alpha: 1.0 }, Activation::Selu] {
            let ld = kernels::row_stride(inputs);
            let dy = random(rows * units, 600 + i as u64, 1.0);
            let wt = random(units * ld, 700 + i as u64, 1.0);
            // Saved outputs on both sides of 0, as the activation leaves them.
            let saved = random(rows * ld, 800 + i as u64, 2.0);
            let out: Vec<Vec<f32>> = [Tier::F32x4, Tier::Avx512]
                .into_iter()
                .map(|tier| {
                    let kernel = One::at(
                        tier,
                        &Kernel::InputGrad {
                            inputs,
                            units,
                            activation: Some(activation),
                        },
                    );
                    let mut dyp = padded(&dy, rows, units);
                    let mut wtp = wt.clone();
                    let mut sp = saved.clone();
                    let mut dx = vec![0.0; rows * ld];
                    let args = [ptr(&mut dyp), ptr(&mut wtp), ptr(&mut sp), ptr(&mut dx)];
                    kernel.call(&args, rows, 0, 0, &[]);
                    dx
                })
                .collect();
            let what = format!("input grad {rows}x{inputs}x{units} {activation:?}");
            assert_same_bits(&out[0], &out[1], &what);
        }
    }
}

/// Rows of `width` random floats in the JIT's layout (`row_stride`), padding lanes zero, and a
/// margin past the last row.
fn rows_of(rows: usize, width: usize, seed: u64, scale: f32) -> Vec<f32> {
    let ld = kernels::row_stride(width);
    let values = random(rows * width, seed, scale);
    let mut out = vec![0.0; rows * ld + 16];
    for r in 0..rows {
        out[r * ld..r * ld + width].copy_from_slice(&values[r * width..(r + 1) * width]);
    }
    out
}

/// Calls `kernel` on the whole batch, or (`by_rows`) once per share of two, each share's
/// row pointers (`row_args`) moved to its first row and the batch's rows in
/// `update_scalars::ROWS`, as the planner shares a batch norm by rows.
fn call_in_shares(
    kernel: &One,
    bufs: &mut [Vec<f32>],
    row_args: &[usize],
    (rows, ld): (usize, usize),
    by_rows: bool,
) {
    let mut scalars = [0.0f32; update_scalars::COUNT];
    scalars[update_scalars::ROWS] = rows as f32;
    let base: Vec<*mut u8> = bufs.iter_mut().map(|b| ptr(b)).collect();
    let shares = if by_rows {
        let half = rows / 2;
        vec![(0, half), (half, rows - half)]
    } else {
        vec![(0, rows)]
    };
    for (first, n) in shares {
        let args: Vec<*mut u8> = base
            .iter()
            .enumerate()
            .map(|(i, p)| {
                if row_args.contains(&i) {
                    // SAFETY: within the buffer: `first` is at most its rows.
                    unsafe { p.add(4 * first * ld) }
                } else {
                    *p
                }
            })
            .collect();
        kernel.call(&args, n, 0, 0, &scalars);
    }
}

/// The AVX-512 batch norms (`x86_batch_norm`) do the f32x4 kernels' arithmetic step for step:
/// the training forward pass (with ELU or SELU fused, storing `x̂` or not) and the backward
/// pass (with `dx` or not), on the whole batch and shared by rows, give the same bits at both
/// tiers, on every width remainder of a 16-lane vector.
#[test]
fn full_width_batch_norm_matches_the_f32x4_tier_bit_for_bit() {
    if !Tier::Avx512.supported() {
        return;
    }
    let activations = [
        None,
        Some(Activation::Elu { alpha: 1.0 }),
        Some(Activation::Selu),
    ];
    for (case, &(rows, width)) in [(1, 1), (7, 3), (32, 17), (5, 33), (32, 100), (7, 3072)]
        .iter()
        .enumerate()
    {
        let seed = 900 + 10 * case as u64;
        let ld = kernels::row_stride(width);
        let vector = |seed: u64, scale: f32| {
            let mut v = random(width, seed, scale);
            v.resize(pad4(width), 0.0);
            v
        };
        for by_rows in [false, true] {
            for (activation, store_normalized) in
                activations.iter().flat_map(|a| [(*a, false), (*a, true)])
            {
                let kernel = Kernel::BatchNorm {
                    convert: None,
                    width,
                    activation,
                    training: true,
                    momentum: 0.99,
                    epsilon: 1e-3,
                    store_normalized,
                    by_rows,
                };
                let out: Vec<Vec<Vec<f32>>> = [Tier::F32x4, Tier::Avx512]
                    .into_iter()
                    .map(|tier| {
                        let one = One::at(tier, &kernel);
                        // x (shifted, so the mean matters), γ, β, moving mean and variance, y,
                        // batch mean, 1/σ, (x̂,) (x_all).
                        let mut x = rows_of(rows, width, seed, 3.0);
                        x.iter_mut().step_by(3).for_each(|v| *v += 1.5);
                        let mut bufs = vec![
                            x.clone(),
                            vector(seed + 1, 2.0),
                            vector(seed + 2, 1.0),
                            vector(seed + 3, 1.0),
                            vector(seed + 4, 1.0).iter().map(|v| v.abs()).collect(),
                            vec![7.0; rows * ld + 16],
                            vec![7.0; pad4(width)],
                            vec![7.0; pad4(width)],
                        ];
                        let mut row_args = vec![0, 5];
                        if store_normalized {
                            row_args.push(bufs.len());
                            bufs.push(vec![7.0; rows * ld + 16]);
                        }
                        if by_rows {
                            bufs.push(x);
                        }
                        call_in_shares(&one, &mut bufs, &row_args, (rows, ld), by_rows);
                        bufs
                    })
                    .collect();
                for (i, (a, b)) in out[0].iter().zip(&out[1]).enumerate() {
                    let what = format!(
                        "batch norm {rows}x{width} {activation:?} x̂ {store_normalized} \
                         by rows {by_rows}: pointer {i}"
                    );
                    assert_same_bits(a, b, &what);
                }
            }
            for input_grad in [false, true] {
                let kernel = Kernel::BatchNormBackward {
                    width,
                    input_grad,
                    by_rows,
                };
                let out: Vec<Vec<Vec<f32>>> = [Tier::F32x4, Tier::Avx512]
                    .into_iter()
                    .map(|tier| {
                        let one = One::at(tier, &kernel);
                        // x, γ, batch mean, 1/σ, dy, dγ, dβ, (dx,) (x_all, dy_all).
                        let x = rows_of(rows, width, seed + 5, 3.0);
                        let dy = rows_of(rows, width, seed + 6, 1.0);
                        let mut bufs = vec![
                            x.clone(),
                            vector(seed + 7, 2.0),
                            vector(seed + 8, 0.5),
                            vector(seed + 9, 2.0).iter().map(|v| v.abs()).collect(),
                            dy.clone(),
                            vec![7.0; pad4(width)],
                            vec![7.0; pad4(width)],
                        ];
                        let mut row_args = vec![0, 4];
                        if input_grad {
                            row_args.push(bufs.len());
                            bufs.push(vec![7.0; rows * ld + 16]);
                        }
                        if by_rows {
                            bufs.extend([x, dy]);
                        }
                        call_in_shares(&one, &mut bufs, &row_args, (rows, ld), by_rows);
                        bufs
                    })
                    .collect();
                for (i, (a, b)) in out[0].iter().zip(&out[1]).enumerate() {
                    let what = format!(
                        "batch norm backward {rows}x{width} dx {input_grad} by rows {by_rows}: \
                         pointer {i}"
                    );
                    assert_same_bits(a, b, &what);
                }
            }
        }
    }
}

/// `x · W + b` with a fused activation on shapes that exercise every block kind: full 4×12
/// blocks, 1 and 2 vector column remainders, single-row remainders, k remainders.
#[test]
fn dense_forward_matches_scalar_on_odd_shapes() {
    for tier in Tier::available() {
        let shapes = [
            (1, 1, 1),
            (3, 5, 7),
            (5, 13, 9),
            (7, 3, 13),
            (9, 17, 25),
            (33, 11, 10),
            (4, 8, 24),
        ];
        for (i, &(rows, k, n)) in shapes.iter().enumerate() {
            for activation in [None, Some(Activation::Elu { alpha: 1.0 })] {
                let x = random(rows * k, i as u64, 1.0);
                let w = random(k * n, 100 + i as u64, 1.0);
                let b = random(n, 200 + i as u64, 1.0);
                let kernel = One::at(
                    tier,
                    &Kernel::Dense {
                        convert: None,
                        inputs: k,
                        units: n,
                        bias: true,
                        activation,
                        store_pre_activation: activation.is_some(),
                    },
                );
                let mut xp = padded(&x, rows, k);
                let mut wp = padded(&w, k, n);
                let mut bp = padded(&b, 1, n);
                let mut y = vec![0.0; rows * pad4(n) + 16];
                let mut z = vec![0.0; rows * pad4(n) + 16];
                let mut args = vec![ptr(&mut xp), ptr(&mut wp), ptr(&mut bp), ptr(&mut y)];
                if activation.is_some() {
                    args.push(ptr(&mut z));
                }
                kernel.call(&args, rows, 0, 0, &[]);
                let pre: Vec<f64> = matmul_ref(&x, &w, rows, k, n)
                    .iter()
                    .enumerate()
                    .map(|(e, v)| v + f64::from(b[e % n]))
                    .collect();
                let want: Vec<f64> = match activation {
                    None => pre.clone(),
                    Some(_) => pre
                        .iter()
                        .map(|&v| if v > 0.0 { v } else { v.exp_m1() })
                        .collect(),
                };
                let what = format!("dense {rows}x{k}x{n} {activation:?} ({})", tier.name());
                assert_close(&unpadded(&y, rows, n), &want, 1e-5, 1e-5, &what);
                if activation.is_some() {
                    assert_close(&unpadded(&z, rows, n), &pre, 1e-5, 1e-5, &what);
                }
            }
        }
    }
}

/// The first layer converts u8 pixels itself, scaled or standardized.
#[test]
fn dense_forward_converts_pixels() {
    let (rows, k, n) = (5, 19, 6);
    let pixels: Vec<u8> = (0..rows * k).map(|i| (i * 37 % 256) as u8).collect();
    let w = random(k * n, 1, 1.0);
    let mean: Vec<f32> = (0..k).map(|i| 100.0 + i as f32).collect();
    let std: Vec<f32> = (0..k).map(|i| 50.0 + 2.0 * i as f32).collect();
    for standardize in [false, true] {
        let kernel = One::new(&Kernel::Dense {
            convert: Some(Convert {
                features: k,
                standardize,
            }),
            inputs: k,
            units: n,
            bias: false,
            activation: None,
            store_pre_activation: false,
        });
        let mut px = pixels.clone();
        let mut mp = padded(&mean, 1, k);
        let mut sp = padded(&std, 1, k);
        let mut v0 = vec![0.0; rows * pad4(k) + 16];
        let mut wp = padded(&w, k, n);
        let mut y = vec![0.0; rows * pad4(n) + 16];
        let mut args = vec![px.as_mut_ptr()];
        if standardize {
            args.extend([ptr(&mut mp), ptr(&mut sp)]);
        }
        args.extend([ptr(&mut v0), ptr(&mut wp), ptr(&mut y)]);
        kernel.call(&args, rows, 0, 0, &[]);
        let x: Vec<f32> = pixels
            .iter()
            .enumerate()
            .map(|(e, &p)| {
                let c = e % k;
                if standardize {
                    (f32::from(p) - mean[c]) / std[c]
                } else {
                    f32::from(p) / 255.0
                }
            })
            .collect();
        let x64: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        assert_close(&unpadded(&v0, rows, k), &x64, 0.0, 0.0, "converted input");
        let want = matmul_ref(&x, &w, rows, k, n);
        assert_close(&unpadded(&y, rows, n), &want, 1e-5, 1e-5, "converted dense");
    }
}

/// A weight gradient with a fused update leaves the kernel, the optimizer's slots and the
/// transposed copy bit-for-bit as the weight gradient, then the update kernel, then the
/// transpose do: on kernels with a row remainder and padded columns, batches of one chunk
/// (unrolled and looped) and of several (whole chunks, a remainder, a short last batch), and
/// rules with zero to three slots. The copy's padding lanes and rows are never written.
#[test]
fn fused_update_matches_update_and_transpose_kernels() {
    for tier in Tier::available() {
        let rules = [
            OptimizerKind::Nadam {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
            },
            OptimizerKind::Sgd {
                momentum: 0.0,
                nesterov: false,
            },
            OptimizerKind::Sgd {
                momentum: 0.9,
                nesterov: true,
            },
            OptimizerKind::RmsProp {
                rho: 0.9,
                momentum: 0.5,
                epsilon: 1e-7,
                centered: true,
            },
            OptimizerKind::Adam {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
            },
        ];
        // (rows, batch, inputs, units)
        let shapes = [
            (3, 3, 5, 7),
            (7, 8, 13, 9),
            (32, 32, 20, 12),
            (16, 16, 8, 16),
            (67, 67, 6, 10),
            (128, 130, 9, 8),
            (130, 130, 4, 6),
            (40, 130, 7, 5),
        ];
        for (case, &(rows, batch, k, n)) in shapes.iter().enumerate() {
            let kind = rules[case % rules.len()];
            let ld = pad4(n);
            let len = k * ld;
            let seed = 100 + 10 * case as u64;
            let x = padded(&random(rows * k, seed, 1.0), rows, k);
            let dy = padded(&random(rows * n, seed + 1, 1.0), rows, n);
            let w0 = padded(&random(k * n, seed + 2, 0.5), k, n);
            let slots0: Vec<Vec<f32>> = (0..kind.slot_count())
                .map(|s| {
                    // Second moments must be non-negative; the padding lanes stay zero.
                    let m = random(k * n, seed + 3 + s as u64, 0.1);
                    let m: Vec<f32> = m.iter().map(|v| v.abs()).collect();
                    padded(&m, k, n)
                })
                .collect();
            let scalars = step_scalars(kind, 3, 1e-2, 0.7);
            let sentinel = -7.5;
            let t_len = n * pad4(k) + 16;
            let what = format!("{} {rows} rows (batch {batch}) of {k}x{n}", kind.name());

            // Separately: dW, the update kernel, the transpose.
            let weight_grad = One::at(
                tier,
                &Kernel::WeightGrad {
                    inputs: k,
                    x_ld: pad4(k),
                    units: n,
                    batch,
                    bias: true,
                    update: None,
                },
            );
            let update = One::at(
                tier,
                &Kernel::Update(Update {
                    len,
                    kind,
                    regularizer: Regularizer::default(),
                    clipnorm: None,
                    max_norm: None,
                }),
            );
            let transpose = One::at(tier, &Kernel::Transpose { rows: k, cols: n });
            let (mut xa, mut dya) = (x.clone(), dy.clone());
            let mut dw = vec![f32::NAN; len + 16];
            let mut db = vec![f32::NAN; ld + 16];
            weight_grad.call(
                &[ptr(&mut xa), ptr(&mut dya), ptr(&mut dw), ptr(&mut db)],
                rows,
                0,
                0,
                &scalars,
            );
            let mut w = w0.clone();
            let mut slots = slots0.clone();
            let mut stats = vec![0.0f32; 4];
            let mut table = vec![ptr(&mut w), ptr(&mut dw), ptr(&mut stats)];
            table.extend(slots.iter_mut().map(|s| ptr(s)));
            update.call(&table, rows, 0, 0, &scalars);
            let mut wt = vec![sentinel; t_len];
            transpose.call(&[ptr(&mut w), ptr(&mut wt)], 0, 0, 0, &[]);

            // Fused.
            let fused = One::at(
                tier,
                &Kernel::WeightGrad {
                    inputs: k,
                    x_ld: pad4(k),
                    units: n,
                    batch,
                    bias: true,
                    update: Some(FusedUpdate {
                        kind,
                        transposed: true,
                        normalized: false,
                    }),
                },
            );
            let (mut xb, mut dyb) = (x.clone(), dy.clone());
            let mut scratch = vec![f32::NAN; len + 16];
            let mut fw = w0.clone();
            let mut fslots = slots0.clone();
            let mut fwt = vec![sentinel; t_len];
            let mut fdb = vec![f32::NAN; ld + 16];
            let mut table = vec![ptr(&mut xb), ptr(&mut dyb), ptr(&mut scratch), ptr(&mut fw)];
            table.extend(fslots.iter_mut().map(|s| ptr(s)));
            table.extend([ptr(&mut fwt), ptr(&mut fdb)]);
            fused.call(&table, rows, 0, 0, &scalars);

            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fw), bits(&w), "kernel, {what}");
            for (s, (got, want)) in fslots.iter().zip(&slots).enumerate() {
                assert_eq!(bits(got), bits(want), "slot {s}, {what}");
            }
            assert_eq!(bits(&fwt), bits(&wt), "transposed copy, {what}");
            assert_eq!(bits(&fdb[..ld]), bits(&db[..ld]), "bias gradient, {what}");
            assert_ne!(fw[..len], w0[..len], "the kernel moved, {what}");
        }
    }
}

/// A training step updates every kernel with an element-wise update inside its weight gradient
/// (and refreshes its transposed copy there); a penalized kernel, clipping or a max-norm
/// constraint keep the separate update kernel and transpose.
#[test]
fn training_fuses_element_wise_kernel_updates() {
    // Floats updated by the update kernels, and the number of transpose calls.
    let updated = |jit: &Jit, segments: &[Segment]| -> usize {
        segments
            .iter()
            .flat_map(|s| &s.parts)
            .flatten()
            .map(|t| {
                let name = jit.kernels.name(t.call.kernel);
                let len = name.rsplit('_').next().expect("update_<rule>_<len>");
                len.parse::<usize>().expect("a length")
            })
            .sum()
    };
    let calls = |segments: &[Segment]| segments.iter().flat_map(|s| &s.parts).flatten().count();
    let dense = |regularizer: Regularizer, max_norm: Option<f32>| {
        Layer::DenseWith(DenseLayer {
            regularizer,
            max_norm,
            ..DenseLayer::new(16)
        })
    };
    let l2 = Regularizer { l1: 0.0, l2: 1e-3 };
    let layers = [
        Layer::Dense(16),
        dense(l2, None),
        dense(Regularizer::default(), Some(2.0)),
        Layer::Dense(16),
        Layer::Dense(10),
    ];
    let p = program(12, &layers);
    // The penalized and the constrained 16×16 kernels, four biases of 16 and one of 10 (12).
    let unfused = 2 * 256 + 4 * 16 + 12;
    for threads in [1, 2] {
        let jit = Jit::with_threads(&p, None, threads).expect("jit builds");
        assert_eq!(
            updated(&jit, &jit.plan.lists[Calls::Updates.index()]),
            unfused,
            "{threads} threads"
        );
        // Every layer but the first has a transposed copy; two are refreshed on their own.
        assert_eq!(
            calls(&jit.plan.lists[Calls::TrainTransposes.index()]),
            2,
            "{threads} threads"
        );
        assert_eq!(
            calls(&jit.plan.lists[Calls::Transposes.index()]),
            4,
            "{threads} threads"
        );
        assert!(
            jit.plan.lists[Calls::Backward.index()].is_empty(),
            "plain gradients are not planned"
        );
    }
    let mut clipped = p.clone();
    clipped.train.optimizer.clipnorm = Some(1.0);
    let jit = Jit::new(&clipped, None).expect("jit builds");
    let all = 12 * 16 + 3 * 256 + 16 * 12 + unfused - 2 * 256;
    assert_eq!(
        updated(&jit, &jit.plan.lists[Calls::Updates.index()]),
        all,
        "clipping needs every gradient"
    );
    assert_eq!(calls(&jit.plan.lists[Calls::TrainTransposes.index()]), 4);
}

/// A dense layer after a batch norm of the data gives the batch norm its gradients from its
/// weight gradient (`FusedUpdate::normalized`) instead of `dy · Wᵀ` and the batch norm's backward
/// kernel. One plain SGD step at learning rate 1 moves every parameter by its gradient, which
/// matches the interpreter's: on one and two threads (the second with unequal shares) and for
/// a batch of one chunk and one of several (whose update runs after all chunks).
#[test]
fn normalized_input_gradients_match_interp() {
    let layers = [
        Layer::BatchNorm,
        Layer::Dense(9),
        Layer::Act(Activation::Elu { alpha: 1.0 }),
        Layer::Dense(5),
    ];
    let mut p = program(37, &layers);
    p.train.optimizer.kind = OptimizerKind::Sgd {
        momentum: 0.0,
        nesterov: false,
    };
    for (batch, threads) in [(13, 1), (13, 2), (150, 2)] {
        let p = named(p.clone(), "normalized input", batch);
        let mut jit = Jit::with_threads(&p, None, threads).expect("jit builds");
        let names: Vec<&str> = jit.plan.lists[Calls::TrainBackward.index()]
            .iter()
            .flat_map(|s| &s.parts)
            .flatten()
            .map(|t| jit.kernels.name(t.call.kernel))
            .collect();
        assert!(
            names.iter().any(|n| n.contains("weight_grad_sgd_bn_")),
            "{names:?}"
        );
        assert!(
            !names
                .iter()
                .any(|n| n.contains("batch_norm_backward") || n.contains("input_grad_37x")),
            "{names:?}"
        );
        // γ and β away from their initial ones and zeros, so that every term of the rewrite
        // counts.
        let mut state = jit.state();
        for (i, param) in p.params.iter().enumerate() {
            if param.name.ends_with("gamma") || param.name.ends_with("beta") {
                let k = if param.name.ends_with("gamma") {
                    1.0
                } else {
                    0.0
                };
                state.params[i].iter_mut().enumerate().for_each(|(j, v)| {
                    *v = k + 0.5 * ((j as f32 * 0.7).sin());
                });
            }
        }
        jit.set_state(&state);
        let mut interp = Interp::new(&p, None);
        interp.set_state(&state);
        let (pixels, labels) = data(&p, batch, 7);
        let b = Batch {
            pixels: &pixels,
            labels: &labels,
        };
        let want = interp.loss_and_grads(b);
        let before = jit.state();
        jit.train_step(b, 1.0);
        let after = jit.state();
        for (i, g) in want.grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let moved: Vec<f32> = slice(&before.params[i])
                .iter()
                .zip(slice(&after.params[i]))
                .map(|(a, b)| a - b)
                .collect();
            let what = format!("{} on {threads} threads, batch {batch}", p.params[i].name);
            assert_tensor_close(&moved, &slice(g), 1e-3, &what);
        }
    }
}

/// `loss_and_grads` returns the gradient of exactly the values whose gradient the backward pass
/// writes: not the input's, and not an activation's output whose next dense layer applies the
/// activation's derivative in its input gradient (it writes the activation input's gradient).
#[test]
fn value_gradients_are_those_the_backward_pass_writes() {
    let p = named(
        program(
            11,
            &[
                Layer::Dense(6),
                Layer::Act(Activation::Elu { alpha: 1.0 }),
                Layer::Dropout(0.3),
                Layer::Dense(5),
                Layer::Act(Activation::Relu),
                Layer::Dense(3),
            ],
        ),
        "value gradients",
        8,
    );
    let mut jit = Jit::for_gradients(&p, None, 1).expect("jit builds");
    let (pixels, labels) = data(&p, 8, 3);
    let got = jit.loss_and_grads(Batch {
        pixels: &pixels,
        labels: &labels,
    });
    // v0 input, v1 dense, v2 elu, v3 dropout, v4 dense, v5 relu, v6 logits.
    let written: Vec<bool> = got.value_grads.iter().map(Option::is_some).collect();
    assert_eq!(
        written,
        [false, true, true, true, true, false, true],
        "which value gradients are returned"
    );
    for (v, g) in got.value_grads.iter().enumerate() {
        if let Some(g) = g {
            // The arena starts zeroed: a buffer nobody wrote would still be all zeros.
            assert!(g.iter().any(|x| *x != 0.0), "gradient of v{v} is all zeros");
        }
    }
}

/// `dW = xᵀ·dy`, `db = Σ dy`, `dx = dy·Wᵀ` (through the transposed copy) on odd shapes,
/// including a row count that is not a multiple of the 4-row block.
#[test]
fn dense_backward_matches_scalar() {
    for tier in Tier::available() {
        for (i, &(rows, k, n)) in [(1, 1, 1), (3, 5, 7), (7, 13, 9), (10, 6, 14), (32, 20, 12)]
            .iter()
            .enumerate()
        {
            let x = random(rows * k, 10 + i as u64, 1.0);
            let dy = random(rows * n, 20 + i as u64, 1.0);
            let w = random(k * n, 30 + i as u64, 1.0);
            let transpose = One::at(tier, &Kernel::Transpose { rows: k, cols: n });
            // Even cases run the weight gradient's unrolled loop (a full batch), odd ones the loop.
            let batch = if i % 2 == 0 { rows } else { rows + 1 };
            let weight_grad = One::at(
                tier,
                &Kernel::WeightGrad {
                    inputs: k,
                    x_ld: pad4(k),
                    units: n,
                    batch,
                    bias: true,
                    update: None,
                },
            );
            let input_grad = One::at(
                tier,
                &Kernel::InputGrad {
                    inputs: k,
                    units: n,
                    activation: None,
                },
            );
            let mut wp = padded(&w, k, n);
            let mut wt = vec![0.0; n * pad4(k) + 16];
            transpose.call(&[ptr(&mut wp), ptr(&mut wt)], 0, 0, 0, &[]);
            let mut xp = padded(&x, rows, k);
            let mut dyp = padded(&dy, rows, n);
            let mut dw = vec![f32::NAN; k * pad4(n) + 16];
            let mut db = vec![f32::NAN; pad4(n) + 16];
            let mut dx = vec![f32::NAN; rows * pad4(k) + 16];
            weight_grad.call(
                &[ptr(&mut xp), ptr(&mut dyp), ptr(&mut dw), ptr(&mut db)],
                rows,
                0,
                0,
                &[],
            );
            input_grad.call(
                &[ptr(&mut dyp), ptr(&mut wt), ptr(&mut dx)],
                rows,
                0,
                0,
                &[],
            );
            // One thread's share of the weight gradient: kernel rows k0.. from x's columns k0...
            let k0 = k / 2;
            let part = One::at(
                tier,
                &Kernel::WeightGrad {
                    inputs: k - k0,
                    x_ld: pad4(k),
                    units: n,
                    batch,
                    bias: false,
                    update: None,
                },
            );
            let mut dw_part = vec![f32::NAN; (k - k0) * pad4(n) + 16];
            part.call(
                &[
                    xp[k0..].as_mut_ptr().cast(),
                    ptr(&mut dyp),
                    ptr(&mut dw_part),
                ],
                rows,
                0,
                0,
                &[],
            );
            assert_eq!(
                dw_part[..(k - k0) * pad4(n)],
                dw[k0 * pad4(n)..k * pad4(n)],
                "a share of the weight gradient is bit-for-bit the same rows of the whole"
            );
            let mut want_dw = vec![0.0f64; k * n];
            let mut want_db = vec![0.0f64; n];
            let mut want_dx = vec![0.0f64; rows * k];
            for r in 0..rows {
                for j in 0..n {
                    let g = f64::from(dy[r * n + j]);
                    want_db[j] += g;
                    for t in 0..k {
                        want_dw[t * n + j] += f64::from(x[r * k + t]) * g;
                        want_dx[r * k + t] += g * f64::from(w[t * n + j]);
                    }
                }
            }
            let what = format!("dense backward {rows}x{k}x{n} ({})", tier.name());
            assert_close(&unpadded(&dw, k, n), &want_dw, 1e-5, 1e-5, &what);
            assert_close(&db[..n], &want_db, 1e-5, 1e-5, &what);
            assert_close(&unpadded(&dx, rows, k), &want_dx, 1e-5, 1e-5, &what);
            // Padding lanes of the parameter gradient stay zero, which the optimizer relies on.
            for t in 0..k {
                assert!(dw[t * pad4(n) + n..(t + 1) * pad4(n)]
                    .iter()
                    .all(|&v| v == 0.0));
            }
        }
    }
}

/// Softmax cross-entropy: mean loss, `(p - onehot)/n`, and the arg-max count.
#[test]
fn head_matches_scalar() {
    let (rows, classes) = (11, 10);
    let logits = random(rows * classes, 3, 5.0);
    let labels: Vec<u8> = (0..rows).map(|r| (r * 7 % classes) as u8).collect();
    let head = One::new(&Kernel::HeadLoss { classes });
    let mut lp = padded(&logits, rows, classes);
    let mut lab = labels.clone();
    let mut grad = vec![f32::NAN; rows * pad4(classes) + 16];
    let mut stats = vec![0.0f32; 4];
    head.call(
        &[
            ptr(&mut lp),
            lab.as_mut_ptr(),
            ptr(&mut grad),
            ptr(&mut stats),
        ],
        rows,
        0,
        0,
        &[],
    );
    let mut loss = 0.0f64;
    let mut correct = 0;
    let mut want_grad = vec![0.0f64; rows * classes];
    for r in 0..rows {
        let row: Vec<f64> = logits[r * classes..(r + 1) * classes]
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
        let label = usize::from(labels[r]);
        loss += s.ln() + m - row[label];
        let argmax = row.iter().position(|&v| v == m).expect("a maximum");
        correct += usize::from(argmax == label);
        for c in 0..classes {
            let p = (row[c] - m).exp() / s;
            want_grad[r * classes + c] = (p - f64::from(u8::from(c == label))) / rows as f64;
        }
    }
    assert_close(&stats[..1], &[loss / rows as f64], 1e-6, 0.0, "loss");
    assert_eq!(stats[1] as usize, correct);
    assert_close(
        &unpadded(&grad, rows, classes),
        &want_grad,
        1e-5,
        1e-7,
        "dlogits",
    );
}

/// Fixed per-feature statistics for a program that standardizes its input (the runtime computes
/// them from the training split); `None` for one that scales it.
pub(super) fn input_stats(program: &Program) -> Option<InputStats> {
    let features = program.input.features;
    (program.input.preprocess == Preprocess::Standardize).then(|| InputStats {
        mean: (0..features).map(|f| 96.0 + (f % 64) as f32).collect(),
        std: (0..features).map(|f| 40.0 + (f % 23) as f32).collect(),
    })
}

/// Random pixels and labels for `rows` examples of `program`.
pub(super) fn data(program: &Program, rows: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = SplitMix64::new(seed, 99, 1);
    let pixels = (0..rows * program.input.features)
        .map(|_| rng.below(256) as u8)
        .collect();
    let labels = (0..rows)
        .map(|_| rng.below(program.input.classes) as u8)
        .collect();
    (pixels, labels)
}

/// `got` matches `want` within `rel` of each element's magnitude, with a floor of `rel` times
/// 1% of the tensor's largest magnitude (so elements that cancel to nearly zero are compared
/// on the tensor's scale) and an absolute floor of 1e-6.
#[track_caller]
fn assert_tensor_close(got: &[f32], want: &[f32], rel: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        // The absolute floor covers results that are zero in exact arithmetic (the gradient of a
        // bias feeding batch norm) and that both backends round to different tiny noise.
        let tol = rel * (w.abs() + 0.01 * scale) + 1e-6;
        assert!(
            (g - w).abs() <= tol,
            "{what}[{i}]: jit {g}, interp {w} (tolerance {tol:e}, scale {scale})"
        );
    }
}

fn slice(a: &ArrayD<f32>) -> Vec<f32> {
    a.iter().copied().collect()
}

/// One training-mode pass without update: loss, correct count, every forward value the JIT
/// keeps and every parameter gradient agree with the interpreter.
fn check_grads(program: &Program, rows: usize) {
    check_grads_within(program, rows, 1e-4);
}

/// `check_grads` with values and gradients compared within `rel` (the loss within `rel / 10`).
/// On every tier this CPU has.
pub(super) fn check_grads_within(program: &Program, rows: usize, rel: f32) {
    for tier in Tier::available() {
        check_grads_at(program, rows, rel, tier);
    }
}

pub(super) fn check_grads_at(program: &Program, rows: usize, rel: f32, tier: Tier) {
    let options = Options {
        tier,
        gradients: true,
        ..Options::default()
    };
    let mut jit = Jit::with_options(program, input_stats(program), options).expect("jit builds");
    let interp = Interp::new(program, input_stats(program));
    let (pixels, labels) = data(program, rows, 7);
    let batch = Batch {
        pixels: &pixels,
        labels: &labels,
    };
    let got = jit.loss_and_grads(batch);
    let want = interp.loss_and_grads(batch);
    let name = &format!("{} ({})", program.name, tier.name());
    assert_tensor_close(
        &[got.loss],
        &[want.loss],
        rel / 10.0,
        &format!("{name}: loss"),
    );
    assert_eq!(got.correct, want.correct, "{name}: correct");
    let x = interp.executor().input(&pixels);
    let values = interp
        .executor()
        .forward_values(x.view(), netc_interp::Pass::Train { step: 0 });
    let mut compared = 0;
    for (v, (g, w)) in got.values.iter().zip(&values).enumerate() {
        if let Some(g) = g {
            let (g, w): (Vec<f32>, Vec<f32>) =
                (g.iter().copied().collect(), w.iter().copied().collect());
            assert_tensor_close(&g, &w, rel, &format!("{name}: v{v}"));
            compared += 1;
        }
    }
    assert!(
        compared >= 2,
        "{name}: at least the input and the logits are compared"
    );
    for (p, (g, w)) in got.grads.iter().zip(&want.grads).enumerate() {
        match (g, w) {
            (Some(g), Some(w)) => assert_tensor_close(
                &slice(g),
                &slice(w),
                rel,
                &format!("{name}: gradient of {}", program.params[p].name),
            ),
            (None, None) => {}
            _ => panic!("{name}: p{p} has a gradient on one backend only"),
        }
    }
}

/// `steps` training steps on both backends (the last on a partial batch): every step's loss and
/// correct count, then all parameters and optimizer slots, then predictions in inference and
/// MC Dropout mode agree.
/// On every tier this CPU has.
pub(super) fn check_training(program: &Program, steps: usize, rel: f32) {
    for tier in Tier::available() {
        check_training_at(program, steps, rel, tier);
    }
}

pub(super) fn check_training_at(program: &Program, steps: usize, rel: f32, tier: Tier) {
    let options = Options {
        tier,
        ..Options::default()
    };
    let mut jit = Jit::with_options(program, input_stats(program), options).expect("jit builds");
    let mut interp = Interp::new(program, input_stats(program));
    let name = &format!("{} ({})", program.name, tier.name());
    assert_eq!(jit.state(), interp.state(), "{name}: same initial state");
    let batch = program.train.batch;
    for step in 0..steps {
        let rows = if step + 1 == steps {
            batch / 2 + 1
        } else {
            batch
        };
        let (pixels, labels) = data(program, rows, 100 + step as u64);
        let b = Batch {
            pixels: &pixels,
            labels: &labels,
        };
        let lr = program.train.optimizer.lr;
        let got = jit.train_step(b, lr);
        let want = interp.train_step(b, lr);
        assert_tensor_close(
            &[got.loss],
            &[want.loss],
            rel,
            &format!("{name}: loss at step {step}"),
        );
    }
    let (got, want) = (jit.state(), interp.state());
    assert_eq!(got.step, want.step);
    for (p, (g, w)) in got.params.iter().zip(&want.params).enumerate() {
        let what = format!("{name}: {} after {steps} steps", program.params[p].name);
        assert_tensor_close(&slice(g), &slice(w), rel, &what);
        for (s, (gs, ws)) in got.slots[p].iter().zip(&want.slots[p]).enumerate() {
            assert_tensor_close(
                &slice(gs),
                &slice(ws),
                rel * 10.0,
                &format!("{what}, slot {s}"),
            );
        }
    }
    let (pixels, _) = data(program, 2 * batch + 3, 5);
    let classes = program.output_width();
    let n = pixels.len() / program.input.features;
    for mode in [Mode::Inference, Mode::McDropout { sample: 3 }] {
        let mut a = vec![0.0; n * classes];
        let mut b = vec![0.0; n * classes];
        jit.predict(&pixels, mode, &mut a);
        interp.predict(&pixels, mode, &mut b);
        assert_tensor_close(&a, &b, rel, &format!("{name}: predict {mode:?}"));
    }
}

fn named(mut p: Program, name: &str, batch: usize) -> Program {
    p.name = name.into();
    p.train.batch = batch;
    p
}

const ACTIVATIONS: [Activation; 10] = [
    Activation::Linear,
    Activation::Relu,
    Activation::LeakyRelu { alpha: 0.2 },
    Activation::Elu { alpha: 1.0 },
    Activation::Selu,
    Activation::Gelu,
    Activation::Swish,
    Activation::Tanh,
    Activation::Sigmoid,
    Activation::Softmax,
];

/// Every activation, fused into a dense layer and standalone (after batch norm), forward and
/// backward.
#[test]
fn every_activation_matches_interp() {
    for act in ACTIVATIONS {
        let fused = program(13, &[Layer::Dense(9), Layer::Act(act), Layer::Dense(5)]);
        check_grads(&named(fused, &format!("fused {}", act.name()), 8), 7);
        let standalone = program(
            6,
            &[
                Layer::Dense(7),
                Layer::BatchNorm,
                Layer::Act(act),
                Layer::Dense(3),
            ],
        );
        check_grads(
            &named(standalone, &format!("standalone {}", act.name()), 8),
            8,
        );
    }
}

/// PReLU, batch norm, both dropouts, and ops before the first dense layer (which then get no
/// backward step, or convert the input themselves).
#[test]
fn every_op_kind_matches_interp() {
    let cases: Vec<(&str, Vec<Layer>)> = vec![
        (
            "prelu",
            vec![Layer::Dense(6), Layer::Prelu, Layer::Dense(3)],
        ),
        ("prelu first", vec![Layer::Prelu, Layer::Dense(3)]),
        (
            "batch norm",
            vec![
                Layer::Dense(6),
                Layer::BatchNorm,
                Layer::Act(Activation::Relu),
                Layer::Dense(3),
            ],
        ),
        ("batch norm first", vec![Layer::BatchNorm, Layer::Dense(4)]),
        (
            "dropout",
            vec![Layer::Dense(9), Layer::Dropout(0.3), Layer::Dense(3)],
        ),
        (
            "dropout first",
            vec![Layer::Dropout(0.2), Layer::Dense(5), Layer::Dense(3)],
        ),
        (
            "alpha dropout",
            vec![
                Layer::Dense(10),
                Layer::Act(Activation::Selu),
                Layer::AlphaDropout(0.2),
                Layer::Dense(3),
            ],
        ),
        ("linear only", vec![Layer::Dense(4)]),
        (
            "deep",
            vec![
                Layer::Dense(17),
                Layer::Act(Activation::Elu { alpha: 1.0 }),
                Layer::Dense(13),
                Layer::Act(Activation::Elu { alpha: 1.0 }),
                Layer::Dense(10),
            ],
        ),
    ];
    for (name, layers) in cases {
        let p = named(program(11, &layers), name, 8);
        check_grads(&p, 8);
        check_grads(&p, 5);
    }
}

/// Values 512 wide have rows a cache line longer than their padded width (`row_stride`): every
/// kind of kernel that walks such rows (conversion, dense both ways, batch norm, activation,
/// dropout) agrees with the interpreter, over a whole training run.
#[test]
fn wide_rows_match_interp() {
    // Batch norm comes first: after a 512-term dot product its normalization would magnify the
    // two backends' different summation orders beyond the tolerance.
    let layers = vec![
        Layer::BatchNorm,
        Layer::Dense(512),
        Layer::Act(Activation::Elu { alpha: 1.0 }),
        Layer::Dropout(0.2),
        Layer::Dense(1024),
        Layer::Act(Activation::Relu),
        Layer::Dense(3),
    ];
    assert_eq!(kernels::row_stride(512), 528);
    let mut p = program(512, &layers);
    // Plain SGD: this test is about layouts, and an adaptive rule turns the rounding noise of
    // near-zero gradients into whole steps.
    p.train.optimizer.kind = OptimizerKind::Sgd {
        momentum: 0.0,
        nesterov: false,
    };
    p.train.optimizer.lr = 0.01;
    let p = named(p, "wide rows", 6);
    check_grads(&p, 6);
    check_grads(&p, 5);
    check_training(&p, 3, 1e-4);
}

fn optimizers() -> Vec<(&'static str, OptimizerKind, f32)> {
    vec![
        (
            "sgd",
            OptimizerKind::Sgd {
                momentum: 0.0,
                nesterov: false,
            },
            0.05,
        ),
        (
            "sgd momentum",
            OptimizerKind::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            0.05,
        ),
        (
            "sgd nesterov",
            OptimizerKind::Sgd {
                momentum: 0.9,
                nesterov: true,
            },
            0.05,
        ),
        (
            "adam",
            OptimizerKind::Adam {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
            },
            1e-3,
        ),
        (
            "adamw",
            OptimizerKind::AdamW {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
                weight_decay: 0.004,
            },
            1e-3,
        ),
        (
            "nadam",
            OptimizerKind::Nadam {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
            },
            1e-3,
        ),
        (
            "rmsprop",
            OptimizerKind::RmsProp {
                rho: 0.9,
                momentum: 0.0,
                epsilon: 1e-7,
                centered: false,
            },
            1e-3,
        ),
        (
            "rmsprop momentum centered",
            OptimizerKind::RmsProp {
                rho: 0.9,
                momentum: 0.5,
                epsilon: 1e-7,
                centered: true,
            },
            1e-3,
        ),
        (
            "rmsprop centered",
            OptimizerKind::RmsProp {
                rho: 0.9,
                momentum: 0.0,
                epsilon: 1e-7,
                centered: true,
            },
            1e-3,
        ),
        (
            "adagrad",
            OptimizerKind::Adagrad {
                initial_accumulator: 0.1,
                epsilon: 1e-7,
            },
            0.05,
        ),
    ]
}

/// Every optimizer for 20 steps on a model with batch norm and dropout, with and without
/// clipping.
#[test]
fn every_optimizer_matches_interp_after_20_steps() {
    for (name, kind, lr) in optimizers() {
        for clipnorm in [None, Some(0.05)] {
            // No bias before batch norm: its exact gradient is zero, and Adam-like rules would
            // turn two backends' different rounding noise into full-size steps.
            let mut p = program(
                10,
                &[
                    Layer::DenseWith(DenseLayer {
                        bias: false,
                        ..DenseLayer::new(12)
                    }),
                    Layer::BatchNorm,
                    Layer::Act(Activation::Relu),
                    Layer::Dropout(0.25),
                    Layer::Dense(6),
                    Layer::Act(Activation::Tanh),
                    Layer::Dense(4),
                ],
            );
            p.train.optimizer.kind = kind;
            p.train.optimizer.lr = lr;
            p.train.optimizer.clipnorm = clipnorm;
            check_training(&named(p, &format!("{name} clip {clipnorm:?}"), 8), 20, 1e-4);
        }
    }
}

/// L1/L2 penalties (in the loss and the gradient) and max-norm, with Adam and SGD.
#[test]
fn regularizers_and_max_norm_match_interp() {
    for (kind, lr) in [
        (
            OptimizerKind::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            0.05,
        ),
        (
            OptimizerKind::Adam {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
            },
            1e-3,
        ),
    ] {
        let dense = |units, l1, l2, max_norm| {
            Layer::DenseWith(DenseLayer {
                regularizer: Regularizer { l1, l2 },
                max_norm,
                ..DenseLayer::new(units)
            })
        };
        let mut p = program(
            9,
            &[
                dense(11, 1e-3, 0.0, Some(0.5)),
                Layer::Act(Activation::Selu),
                Layer::AlphaDropout(0.1),
                dense(7, 0.0, 1e-2, None),
                Layer::Prelu,
                dense(5, 1e-3, 1e-3, Some(1.0)),
            ],
        );
        p.train.optimizer.kind = kind;
        p.train.optimizer.lr = lr;
        check_training(
            &named(p, &format!("regularized {}", kind.name()), 8),
            20,
            1e-4,
        );
    }
}

/// Training on 2 or 3 threads is bit-for-bit training on one: every step's loss, the final
/// parameters and optimizer state, and predictions in both modes. Odd batch sizes give threads
/// unequal shares and leave a share empty on the last, partial batch.
#[test]
fn threads_do_not_change_results() {
    let dense = |units, l1, l2, max_norm| {
        Layer::DenseWith(DenseLayer {
            regularizer: Regularizer { l1, l2 },
            max_norm,
            ..DenseLayer::new(units)
        })
    };
    let mut deep = program(
        37,
        &[
            Layer::Dense(40),
            Layer::Act(Activation::Elu { alpha: 1.0 }),
            Layer::Dropout(0.3),
            Layer::Dense(36),
            Layer::BatchNorm,
            Layer::Act(Activation::Relu),
            Layer::Dense(20),
            Layer::Prelu,
            Layer::Dense(10),
        ],
    );
    deep.train.optimizer.kind = OptimizerKind::Nadam {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-7,
    };
    let mut constrained = program(
        24,
        &[
            dense(30, 1e-3, 0.0, Some(0.5)),
            Layer::Act(Activation::Selu),
            Layer::AlphaDropout(0.1),
            dense(17, 0.0, 1e-2, None),
            Layer::Dense(5),
        ],
    );
    constrained.train.optimizer.kind = OptimizerKind::Adam {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-7,
    };
    constrained.train.optimizer.clipnorm = Some(0.5);
    // A batch of 150 runs the weight gradients in chunks (see `long_batches_match_interp`).
    let long = deep.clone();
    // Batch norms shared by rows read every thread's rows for their statistics (37 columns: a
    // last vector inside the row padding); the first one reads pixels converted by all threads,
    // and batches of 11 and 3 rows give the threads unequal shares, or none to the first.
    let normalized = program(
        37,
        &[
            Layer::BatchNorm,
            Layer::Dense(9),
            Layer::BatchNorm,
            Layer::Act(Activation::Elu { alpha: 1.0 }),
            Layer::Dense(10),
        ],
    );
    let cases = [(deep, 13), (constrained, 9), (long, 150), (normalized, 11)];
    for (tier, (p, batch)) in Tier::available()
        .into_iter()
        .flat_map(|t| cases.iter().map(move |c| (t, c.clone())))
    {
        let p = named(p, "threads", batch);
        // `dispatch(step)` says who runs the shares of each step: the pool, this thread alone
        // (what a busy machine gets), or a change between steps.
        let run = |threads: usize, dispatch: &dyn Fn(usize) -> Dispatch| {
            let options = Options {
                threads,
                tier,
                ..Options::default()
            };
            let mut jit = Jit::with_options(&p, None, options).expect("jit builds");
            assert_eq!(Backend::threads(&jit), threads);
            let mut losses = Vec::new();
            for step in 0..12 {
                jit.set_dispatch(dispatch(step));
                let rows = if step == 11 { 3 } else { batch };
                let (pixels, labels) = data(&p, rows, 300 + step as u64);
                let b = Batch {
                    pixels: &pixels,
                    labels: &labels,
                };
                losses.push(jit.train_step(b, 1e-3).loss.to_bits());
            }
            let (pixels, _) = data(&p, 2 * batch + 3, 5);
            let mut predictions = Vec::new();
            for (i, mode) in [Mode::Inference, Mode::McDropout { sample: 2 }]
                .into_iter()
                .enumerate()
            {
                jit.set_dispatch(dispatch(i));
                let mut probs = vec![0.0; (2 * batch + 3) * p.output_width()];
                jit.predict(&pixels, mode, &mut probs);
                predictions.push(probs);
            }
            (losses, jit.state(), predictions)
        };
        let one = run(1, &|_| Dispatch::Pool);
        let alternate = |step: usize| {
            if step.is_multiple_of(2) {
                Dispatch::Pool
            } else {
                Dispatch::Solo
            }
        };
        for threads in [2, 3] {
            for (how, dispatch) in [
                (
                    "the pool",
                    &(|_| Dispatch::Pool) as &dyn Fn(usize) -> Dispatch,
                ),
                ("one thread", &|_| Dispatch::Solo),
                ("the pool and one thread by turns", &alternate),
            ] {
                let many = run(threads, dispatch);
                let on = format!("{threads} threads run by {how} ({})", tier.name());
                assert_eq!(one.0, many.0, "losses on {on}");
                assert!(one.1 == many.1, "state after training on {on}");
                assert_eq!(one.2, many.2, "predictions on {on}");
            }
        }
    }
}

/// Batches longer than the weight gradient's unrolled k loop run it in chunks of 64 rows that
/// add into the gradient: whole chunks and a remainder (200, 130 rows), exactly one chunk (64),
/// and a last batch shorter than a chunk (10) all match the interpreter.
#[test]
fn long_batches_match_interp() {
    let p = named(
        program(
            37,
            &[
                Layer::Dense(40),
                Layer::Act(Activation::Elu { alpha: 1.0 }),
                Layer::Dense(10),
            ],
        ),
        "long batches",
        200,
    );
    for rows in [200, 130, 64, 10] {
        check_grads(&p, rows);
    }
    check_training(&p, 3, 1e-4);
}

/// Predict tiles inputs larger than the batch; set_state round-trips through the padded layout.
#[test]
fn state_round_trips_and_predict_tiles() {
    let p = named(
        program(
            7,
            &[
                Layer::Dense(5),
                Layer::Act(Activation::Relu),
                Layer::Dense(3),
            ],
        ),
        "tiles",
        4,
    );
    let mut jit = Jit::new(&p, None).expect("jit builds");
    let mut state = jit.state();
    state.params[0].mapv_inplace(|v| v * 2.0);
    state.step = 5;
    jit.set_state(&state);
    assert_eq!(jit.state(), state);
    let mut interp = Interp::new(&p, None);
    interp.set_state(&state);
    let (pixels, _) = data(&p, 11, 3);
    let mut a = vec![0.0; 11 * 3];
    let mut b = vec![0.0; 11 * 3];
    jit.predict(&pixels, Mode::Inference, &mut a);
    interp.predict(&pixels, Mode::Inference, &mut b);
    assert_tensor_close(&a, &b, 1e-5, "tiled predict");
}

/// The golden CLIF of a program is produced for the fixed ISA and passes the verifier.
#[test]
fn clif_is_emitted_and_verified() {
    let p = program(
        10,
        &[
            Layer::Dense(8),
            Layer::Act(Activation::Gelu),
            Layer::Dropout(0.5),
            Layer::Dense(3),
        ],
    );
    let clif = emit_clif(&p).expect("clif");
    assert!(
        clif.contains("function u0:0(i64, i64, i64, i32, i64)"),
        "{}",
        &clif[..200]
    );
    assert!(clif.contains(" = fma "), "the fixed ISA has FMA");
    assert!(
        clif.contains("; k0_convert_10"),
        "the first dense layer reads converted pixels"
    );
    assert!(clif.contains("; k1_dense_10x8_gelu"));
    assert_eq!(clif, emit_clif(&p).expect("clif"), "deterministic");
}

/// The baseline shape: 3,072 inputs, 20 dense layers of 100 ELU units, 10 classes, Nadam,
/// batch 32.
fn baseline() -> Program {
    let mut layers = Vec::new();
    for _ in 0..20 {
        layers.push(Layer::Dense(100));
        layers.push(Layer::Act(Activation::Elu { alpha: 1.0 }));
    }
    layers.push(Layer::Dense(10));
    let mut p = program(3072, &layers);
    p.train.optimizer.kind = OptimizerKind::Nadam {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-7,
    };
    p.train.batch = 32;
    named(p, "baseline", 32)
}

/// Compile time of the baseline and one training epoch (50,000 generated examples) on the JIT
/// and the interpreter. Not asserted (timings belong to benchmarks); run with
/// `cargo test --release -p netc-compiler jit::tests::baseline_timing -- --ignored --nocapture`.
#[test]
#[ignore = "timing report; run in release with --ignored --nocapture"]
fn baseline_timing() {
    let p = baseline();
    let builds: Vec<f64> = (0..5)
        .map(|_| Jit::new(&p, None).expect("jit builds").compile_ms())
        .collect();
    let mut jit = Jit::new(&p, None).expect("jit builds");
    println!(
        "baseline: {} kernels, compile {:.1} ms (runs: {builds:.1?})",
        jit.kernel_count(),
        jit.compile_ms()
    );
    let examples = 50_000;
    let (pixels, labels) = data(&p, examples, 1);
    let features = p.input.features;
    let epoch = |backend: &mut dyn Backend| {
        let started = Instant::now();
        let mut loss = 0.0;
        for first in (0..examples).step_by(p.train.batch) {
            let end = (first + p.train.batch).min(examples);
            let batch = Batch {
                pixels: &pixels[first * features..end * features],
                labels: &labels[first..end],
            };
            loss = backend.train_step(batch, 1e-3).loss;
        }
        (started.elapsed().as_secs_f64(), loss)
    };
    let (jit_s, jit_loss) = epoch(&mut jit);
    println!("jit epoch: {jit_s:.2} s (last loss {jit_loss:.4})");
    let mut jit2 = Jit::with_threads(&p, None, 2).expect("jit builds");
    let (jit2_s, jit2_loss) = epoch(&mut jit2);
    println!(
        "jit epoch on 2 threads: {jit2_s:.2} s (last loss {jit2_loss:.4}); {:.2}x one thread",
        jit_s / jit2_s
    );
    let mut interp = Interp::new(&p, None);
    let (interp_s, interp_loss) = epoch(&mut interp);
    println!(
        "interp epoch: {interp_s:.2} s (last loss {interp_loss:.4}); jit speed-up {:.1}x",
        interp_s / jit_s
    );
}

/// Per-phase time of baseline training steps, to see where a step goes.
#[test]
#[ignore = "timing report; run in release with --ignored --nocapture"]
fn baseline_phase_timing() {
    let p = baseline();
    let mut jit = Jit::new(&p, None).expect("jit builds");
    let (pixels, labels) = data(&p, 32, 1);
    let batch = Batch {
        pixels: &pixels,
        labels: &labels,
    };
    let scalars = jit.update_scalars(1e-3);
    let key = |_: u32| 0;
    let steps = 300;
    for (name, phase) in [
        ("forward", Calls::TrainForward),
        ("backward", Calls::TrainBackward),
        ("updates", Calls::Updates),
        ("transposes", Calls::TrainTransposes),
    ] {
        let started = Instant::now();
        for _ in 0..steps {
            jit.run(phase, 32, 0, batch, &key, &scalars);
        }
        let ms = started.elapsed().as_secs_f64() * 1e3 / steps as f64;
        println!("{name}: {ms:.3} ms per step");
    }
}

#[test]
#[ignore = "prints machine code"]
fn print_dense_disassembly() {
    let k = Kernel::Dense {
        convert: None,
        inputs: 3072,
        units: 100,
        bias: true,
        activation: None,
        store_pre_activation: false,
    };
    println!("{}", module::disassemble(&k).expect("compiles"));
}

/// Every spec of the repository (the exercise's in `specs/`, the golden ones that compile in
/// `tests/golden/ok/`), at batch 32: forward values and every gradient agree with the
/// interpreter, then three training steps with plain SGD do. Adam-like rules turn the rounding
/// noise of near-zero gradients into whole steps of `lr` at their first steps, so their own
/// comparison (`every_optimizer_matches_interp_after_20_steps`) runs on small models. Tolerance
/// as for random specs (`random_specs`): 3,072-input sums carry the polynomial exp/tanh/erf's
/// error.
#[test]
fn every_spec_of_the_repository_matches_interp() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files: Vec<_> = ["specs", "tests/golden/ok"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(root.join(dir)).expect("a spec folder"))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "net"))
        .collect();
    files.sort();
    assert!(files.len() >= 30, "{} specs", files.len());
    for path in files {
        let source = std::fs::read_to_string(&path).expect("readable spec");
        let Some(program) = netc_front::compile(&source).program else {
            panic!("{} does not compile", path.display());
        };
        let name = path.display().to_string();
        if program.has_image_ops() {
            // Not compiled yet: refused before planning, as a user's error, not a bug.
            let refused = Jit::with_options(&program, input_stats(&program), Options::default());
            assert!(
                matches!(refused, Err(BackendError::Unsupported { .. })),
                "{name}: image ops are refused"
            );
            continue;
        }
        let mut p = named(program, &name, 32);
        // `Jit::loss_and_grads` leaves the l1/l2 penalty to the update kernels; the updates
        // below compare it.
        check_grads_within(&super::random_specs::without_penalties(&p), 32, 1e-3);
        p.train.optimizer.kind = OptimizerKind::Sgd {
            momentum: 0.0,
            nesterov: false,
        };
        p.train.optimizer.lr = 1e-2;
        p.train.optimizer.clipnorm = None;
        check_training(&p, 3, 1e-3);
    }
}
