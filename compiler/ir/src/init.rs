//! Parameter initialization: turns each `ir::Init` into the starting values of its parameter,
//! with Keras' semantics, so every backend starts training from the same numbers.
//!
//! Each parameter draws from its own `SplitMix64` stream keyed by `(seed, INIT, param index)`, in
//! row-major element order, so adding a parameter never shifts another one's values. This module
//! only draws numbers: it never reads data, and it must not depend on a backend.

use ndarray::{ArrayD, IxDyn};

use crate::cores::map_on_cores;
use crate::ir::{Distribution, FanMode, Init, Param, Program};
use crate::rng::{purpose, SplitMix64};

/// Keras' correction so that a normal truncated at two standard deviations has the requested
/// standard deviation: the stddev of a standard normal truncated to `[-2, 2]`.
pub const TRUNCATED_NORMAL_STDDEV: f64 = 0.879_625_661_034_239_8;

/// Starting values of every parameter of `program`, indexed like `Program::params`, each of the
/// parameter's shape.
///
/// Parameters are drawn on up to one thread per core, largest first: each has its own stream,
/// so the values do not depend on which thread draws them, or when. (He initialization of the
/// baseline's 500,000 weights took 22 ms on one thread, as long as compiling its kernels.)
pub fn init_params(program: &Program, seed: u64) -> Vec<ArrayD<f32>> {
    let params = &program.params;
    let draw = |index: usize| {
        let mut rng = SplitMix64::new(seed, purpose::INIT, index as u64);
        init_param(&params[index], &mut rng)
    };
    let mut order: Vec<usize> = (0..params.len()).collect();
    order.sort_by_key(|i| std::cmp::Reverse(params[*i].shape.iter().product::<usize>()));
    let drawn = map_on_cores(&order, || (), |_, &index| draw(index));
    let mut values: Vec<Option<ArrayD<f32>>> = params.iter().map(|_| None).collect();
    for (index, v) in order.into_iter().zip(drawn) {
        values[index] = Some(v);
    }
    values
        .into_iter()
        .map(|v| v.expect("every parameter was drawn"))
        .collect()
}

/// Values of one parameter drawn from `rng`.
pub fn init_param(param: &Param, rng: &mut SplitMix64) -> ArrayD<f32> {
    let shape = IxDyn(&param.shape);
    let (fan_in, fan_out) = fans(&param.shape);
    match param.init {
        Init::Zeros => ArrayD::zeros(shape),
        Init::Ones => ArrayD::ones(shape),
        Init::Constant(c) => ArrayD::from_elem(shape, c),
        Init::Normal { mean, stddev } => ArrayD::from_shape_simple_fn(shape, || {
            (f64::from(mean) + f64::from(stddev) * rng.next_normal()) as f32
        }),
        Init::Uniform { min, max } => ArrayD::from_shape_simple_fn(shape, || {
            let (min, max) = (f64::from(min), f64::from(max));
            (min + (max - min) * rng.next_f64()) as f32
        }),
        Init::TruncatedNormal { mean, stddev } => ArrayD::from_shape_simple_fn(shape, || {
            (f64::from(mean) + f64::from(stddev) * truncated_normal(rng)) as f32
        }),
        Init::VarianceScaling {
            scale,
            mode,
            distribution,
        } => {
            let n = match mode {
                FanMode::FanIn => fan_in,
                FanMode::FanOut => fan_out,
                FanMode::FanAvg => (fan_in + fan_out) / 2.0,
            };
            // Keras divides by `max(1, n)` so that empty shapes cannot divide by zero.
            let variance = f64::from(scale) / n.max(1.0);
            match distribution {
                Distribution::TruncatedNormal => {
                    let stddev = variance.sqrt() / TRUNCATED_NORMAL_STDDEV;
                    ArrayD::from_shape_simple_fn(shape, || (stddev * truncated_normal(rng)) as f32)
                }
                Distribution::Uniform => {
                    let limit = (3.0 * variance).sqrt();
                    ArrayD::from_shape_simple_fn(shape, || {
                        (limit * (2.0 * rng.next_f64() - 1.0)) as f32
                    })
                }
            }
        }
    }
}

/// `(fan_in, fan_out)` as Keras' `compute_fans`: a kernel `[in, out]` gives `(in, out)`, a vector
/// `[n]` gives `(n, n)`, a scalar `(1, 1)`.
pub fn fans(shape: &[usize]) -> (f64, f64) {
    match shape {
        [] => (1.0, 1.0),
        [n] => (*n as f64, *n as f64),
        [rows, cols] => (*rows as f64, *cols as f64),
        // Higher ranks are convolution kernels in Keras: the receptive field multiplies both fans.
        [.., rows, cols] => {
            let field: usize = shape[..shape.len() - 2].iter().product();
            ((field * rows) as f64, (field * cols) as f64)
        }
    }
}

/// A standard normal draw re-drawn until it lies within two standard deviations, as TensorFlow's
/// `truncated_normal` does.
fn truncated_normal(rng: &mut SplitMix64) -> f64 {
    loop {
        let z = rng.next_normal();
        if z.abs() <= 2.0 {
            return z;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::ParamRole;

    fn param(shape: &[usize], init: Init) -> Param {
        Param {
            name: "test.kernel".into(),
            role: ParamRole::Kernel,
            shape: shape.to_vec(),
            init,
            trainable: true,
        }
    }

    fn draw(shape: &[usize], init: Init, seed: u64) -> ArrayD<f32> {
        init_param(
            &param(shape, init),
            &mut SplitMix64::new(seed, purpose::INIT, 0),
        )
    }

    fn mean_std(a: &ArrayD<f32>) -> (f64, f64) {
        let n = a.len() as f64;
        let mean = a.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = a
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / n;
        (mean, var.sqrt())
    }

    fn variance_scaling(scale: f32, mode: FanMode, distribution: Distribution) -> Init {
        Init::VarianceScaling {
            scale,
            mode,
            distribution,
        }
    }

    fn assert_close(what: &str, got: f64, want: f64, tolerance: f64) {
        assert!(
            (got - want).abs() <= tolerance,
            "{what}: got {got}, want {want} ± {tolerance}"
        );
    }

    #[test]
    fn constants_fill_the_shape() {
        assert!(draw(&[3, 4], Init::Zeros, 1).iter().all(|&x| x == 0.0));
        assert!(draw(&[5], Init::Ones, 1).iter().all(|&x| x == 1.0));
        let c = draw(&[2, 2], Init::Constant(0.25), 1);
        assert_eq!(c.shape(), &[2, 2]);
        assert!(c.iter().all(|&x| x == 0.25));
    }

    #[test]
    fn normal_and_uniform_have_the_requested_moments() {
        let normal = draw(
            &[200, 300],
            Init::Normal {
                mean: 0.5,
                stddev: 0.1,
            },
            3,
        );
        let (mean, std) = mean_std(&normal);
        assert_close("normal mean", mean, 0.5, 0.002);
        assert_close("normal std", std, 0.1, 0.002);

        let uniform = draw(
            &[200, 300],
            Init::Uniform {
                min: -1.0,
                max: 3.0,
            },
            3,
        );
        let (mean, std) = mean_std(&uniform);
        assert_close("uniform mean", mean, 1.0, 0.01);
        assert_close("uniform std", std, 4.0 / 12f64.sqrt(), 0.01);
        assert!(uniform.iter().all(|&x| (-1.0..3.0).contains(&x)));
    }

    #[test]
    fn truncated_normal_stays_within_two_stddevs() {
        let init = Init::TruncatedNormal {
            mean: 1.0,
            stddev: 0.5,
        };
        let a = draw(&[200, 300], init, 5);
        let (mean, std) = mean_std(&a);
        assert_close("mean", mean, 1.0, 0.005);
        assert_close("std", std, 0.5 * TRUNCATED_NORMAL_STDDEV, 0.005);
        assert!(a.iter().all(|&x| (0.0..=2.0).contains(&x)));
        // A plain normal would put 4.6% of the values beyond two standard deviations.
        assert!(a.iter().any(|&x| x > 1.9) && a.iter().any(|&x| x < 0.1));
    }

    #[test]
    fn variance_scaling_matches_keras_per_mode_and_distribution() {
        let shape = [400, 100];
        let cases = [
            // Glorot uniform: scale 1, fan_avg = 250.
            (1.0, FanMode::FanAvg, Distribution::Uniform, 1.0 / 250.0),
            // Glorot normal.
            (
                1.0,
                FanMode::FanAvg,
                Distribution::TruncatedNormal,
                1.0 / 250.0,
            ),
            // He normal: scale 2, fan_in = 400.
            (
                2.0,
                FanMode::FanIn,
                Distribution::TruncatedNormal,
                2.0 / 400.0,
            ),
            // He uniform.
            (2.0, FanMode::FanIn, Distribution::Uniform, 2.0 / 400.0),
            // LeCun normal.
            (
                1.0,
                FanMode::FanIn,
                Distribution::TruncatedNormal,
                1.0 / 400.0,
            ),
            // Fan-out mode reads the kernel's second dimension.
            (1.0, FanMode::FanOut, Distribution::Uniform, 1.0 / 100.0),
        ];
        for (scale, mode, distribution, variance) in cases {
            let a = draw(&shape, variance_scaling(scale, mode, distribution), 11);
            let (mean, std) = mean_std(&a);
            let want = f64::sqrt(variance);
            let what = format!("{scale} {mode:?} {distribution:?}");
            assert_close(&format!("{what} mean"), mean, 0.0, 0.02 * want);
            assert_close(&format!("{what} std"), std, want, 0.02 * want);
            let bound = match distribution {
                Distribution::Uniform => (3.0 * variance).sqrt(),
                Distribution::TruncatedNormal => 2.0 * want / TRUNCATED_NORMAL_STDDEV,
            };
            let max = a.iter().fold(0f64, |m, &x| m.max(f64::from(x).abs()));
            assert!(max <= bound * (1.0 + 1e-6), "{what}: {max} > {bound}");
            assert!(max >= 0.95 * bound, "{what}: {max} never nears {bound}");
        }
    }

    #[test]
    fn fans_follow_keras() {
        assert_eq!(fans(&[3072, 100]), (3072.0, 100.0));
        assert_eq!(fans(&[7]), (7.0, 7.0));
        assert_eq!(fans(&[]), (1.0, 1.0));
        assert_eq!(fans(&[3, 3, 4, 5]), (36.0, 45.0));
    }

    fn two_param_program() -> Program {
        let glorot = variance_scaling(1.0, FanMode::FanAvg, Distribution::Uniform);
        let mut program = crate::testing::program(4, &[crate::testing::Layer::Dense(3)]);
        program.params = vec![param(&[4, 3], glorot), param(&[4, 3], glorot)];
        program
    }

    #[test]
    fn draws_are_deterministic_per_seed_and_independent_per_param() {
        let program = two_param_program();
        let a = init_params(&program, 42);
        assert_eq!(a, init_params(&program, 42));
        assert_ne!(a, init_params(&program, 43));
        // Same initializer and shape, different parameter index: a different stream.
        assert_ne!(a[0], a[1]);
        assert_eq!(a[0].shape(), &[4, 3]);
    }

    /// Parameters drawn on several threads, largest first, land at their own index with the
    /// values of their own stream.
    #[test]
    fn each_parameter_gets_its_own_stream_whoever_draws_it() {
        let mut program = two_param_program();
        let he = variance_scaling(2.0, FanMode::FanIn, Distribution::TruncatedNormal);
        program.params = [&[4, 3][..], &[300, 20], &[3], &[50, 9], &[1]]
            .iter()
            .map(|shape| param(shape, he))
            .collect();
        let drawn = init_params(&program, 7);
        for (index, p) in program.params.iter().enumerate() {
            let own = init_param(p, &mut SplitMix64::new(7, purpose::INIT, index as u64));
            assert_eq!(drawn[index], own, "parameter {index}");
        }
    }
}
