//! Tests of the reference executor: gradients against central finite differences in `f64` for
//! every op kind, activation, the head and the regularizer; the training step's sequencing
//! (moving averages, clipping, update, max-norm, step counter); dropout masks; predictions;
//! learning on separable data; determinism and checkpoint round trips. The image ops have their
//! own tests in `image_tests`, which share the helpers here.

use ndarray::{Array2, Axis};

use super::{Executor, Interp, LossAndGrads, Pass};
use netc_ir::backend::{Backend, Batch, InputStats, Mode, TrainState};
use netc_ir::init::init_params;
use netc_ir::ir::{Activation, OpKind, OptimizerKind, ParamRole, Preprocess, Program, Regularizer};
use netc_ir::rng::{self, purpose, SplitMix64, Stream};
use netc_ir::testing::{program, DenseLayer, Layer};

pub(crate) fn normal_matrix(rows: usize, cols: usize, seed: u64) -> Array2<f64> {
    let mut rng = SplitMix64::new(seed, purpose::SHUFFLE, 99);
    Array2::from_shape_simple_fn((rows, cols), || rng.next_normal())
}

pub(crate) fn labels(rows: usize, classes: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed, purpose::SHUFFLE, 7);
    (0..rows).map(|_| rng.below(classes) as u8).collect()
}

/// An `f64` executor at the program's initial parameters, with every non-kernel trainable
/// parameter moved off its constant initial value (zero biases, unit gammas, zero alphas would
/// hide mistakes that only show with general values).
pub(crate) fn f64_executor(program: &Program) -> Executor<f64> {
    let mut exec = Executor::<f64>::new(program, &init_params(program, 3), None);
    let mut rng = SplitMix64::new(5, purpose::SHUFFLE, 1);
    for (param, value) in program.params.iter().zip(exec.params_mut()) {
        let offset = match param.role {
            ParamRole::Kernel | ParamRole::MovingMean | ParamRole::MovingVariance => continue,
            ParamRole::PreluAlpha => 0.3,
            _ => 0.0,
        };
        value.mapv_inplace(|v| v + offset + 0.3 * rng.next_normal());
    }
    exec
}

/// Compares every trainable parameter's analytic gradient with `(L(w+h) - L(w-h)) / 2h` on a
/// fixed batch and training step, and checks that each gradient is not trivially zero.
pub(crate) fn check_gradients(program: &Program, rows: usize, step: u64) {
    let mut exec = f64_executor(program);
    let x = normal_matrix(rows, program.input.features, 11);
    let y = labels(rows, program.output_width(), 12);
    let analytic = exec.loss_and_grads(x.view(), &y, step);
    let loss = exec.loss(x.view(), &y, step);
    assert!(
        (analytic.loss - loss).abs() < 1e-12,
        "{} vs {loss}",
        analytic.loss
    );
    let h = 1e-6;
    for (index, param) in program.params.iter().enumerate() {
        let grad = analytic.grads[index].clone();
        if !param.trainable {
            assert!(grad.is_none(), "{} is not trainable", param.name);
            continue;
        }
        let grad = grad.unwrap_or_else(|| panic!("no gradient for {}", param.name));
        assert_eq!(grad.shape(), &param.shape[..], "{}", param.name);
        let largest = grad.iter().fold(0f64, |m, g| m.max(g.abs()));
        if cancelled_by_batch_norm(program, index) {
            assert!(largest < 1e-12, "{}: batch norm cancels a bias", param.name);
        } else {
            assert!(largest > 1e-6, "{}'s gradient is all but zero", param.name);
        }
        for (element, &g) in grad.iter().enumerate() {
            let original = exec.params()[index].as_slice().unwrap()[element];
            let at = |w: f64, exec: &mut Executor<f64>| {
                exec.params_mut()[index].as_slice_mut().unwrap()[element] = w;
                exec.loss(x.view(), &y, step)
            };
            let numeric = (at(original + h, &mut exec) - at(original - h, &mut exec)) / (2.0 * h);
            at(original, &mut exec);
            let tolerance = 1e-7 + 1e-5 * g.abs().max(numeric.abs());
            assert!(
                (g - numeric).abs() <= tolerance,
                "{}[{element}]: analytic {g}, numeric {numeric}",
                param.name
            );
        }
    }
}

/// Whether parameter `index` is the bias of a dense or convolution op followed by batch norm,
/// which subtracts the batch mean (per channel) and so makes the loss independent of that bias.
fn cancelled_by_batch_norm(program: &Program, index: usize) -> bool {
    program.ops.windows(2).any(|pair| {
        let bias = match pair[0].kind {
            OpKind::Dense { bias, .. } | OpKind::Conv2d { bias, .. } => bias,
            _ => None,
        };
        bias.is_some_and(|b| b.index() == index) && matches!(pair[1].kind, OpKind::BatchNorm { .. })
    })
}

fn dense_around(layer: Layer) -> Vec<Layer> {
    vec![Layer::Dense(6), layer, Layer::Dense(3)]
}

#[test]
fn gradients_of_every_activation() {
    let activations = [
        Activation::Linear,
        Activation::Relu,
        Activation::LeakyRelu { alpha: 0.2 },
        Activation::Elu { alpha: 1.0 },
        Activation::Elu { alpha: 0.5 },
        Activation::Selu,
        Activation::Gelu,
        Activation::Swish,
        Activation::Tanh,
        Activation::Sigmoid,
        Activation::Softmax,
    ];
    for activation in activations {
        check_gradients(&program(5, &dense_around(Layer::Act(activation))), 7, 0);
    }
}

#[test]
fn gradients_of_dense_head_and_regularizer() {
    // A single dense layer: the head's gradient feeds the kernel and bias directly.
    check_gradients(&program(5, &[Layer::Dense(4)]), 6, 0);
    let regularized = DenseLayer {
        regularizer: Regularizer { l1: 0.01, l2: 0.02 },
        ..DenseLayer::new(6)
    };
    let no_bias = DenseLayer {
        bias: false,
        regularizer: Regularizer { l1: 0.0, l2: 0.05 },
        ..DenseLayer::new(3)
    };
    let layers = [
        Layer::DenseWith(regularized),
        Layer::Act(Activation::Tanh),
        Layer::DenseWith(no_bias),
    ];
    check_gradients(&program(5, &layers), 6, 0);
}

#[test]
fn gradients_of_prelu_and_batch_norm() {
    check_gradients(&program(5, &dense_around(Layer::Prelu)), 8, 0);
    check_gradients(&program(5, &dense_around(Layer::BatchNorm)), 8, 0);
    // Batch norm straight on the input, then an activation that is not piecewise linear.
    let layers = [
        Layer::BatchNorm,
        Layer::Dense(4),
        Layer::Act(Activation::Gelu),
        Layer::BatchNorm,
        Layer::Dense(3),
    ];
    check_gradients(&program(5, &layers), 8, 0);
}

#[test]
fn gradients_of_dropout_and_alpha_dropout_with_fixed_masks() {
    for step in [0, 5] {
        check_gradients(&program(5, &dense_around(Layer::Dropout(0.4))), 8, step);
        let layers = [
            Layer::Dense(6),
            Layer::Act(Activation::Selu),
            Layer::AlphaDropout(0.3),
            Layer::Dense(3),
        ];
        check_gradients(&program(5, &layers), 8, step);
    }
}

fn whole_model() -> Program {
    let regularized = |units| DenseLayer {
        regularizer: Regularizer { l1: 1e-3, l2: 1e-3 },
        ..DenseLayer::new(units)
    };
    program(
        12,
        &[
            Layer::Dropout(0.1),
            Layer::DenseWith(regularized(8)),
            Layer::BatchNorm,
            Layer::Prelu,
            Layer::Dropout(0.25),
            Layer::Dense(8),
            Layer::Act(Activation::Selu),
            Layer::AlphaDropout(0.2),
            Layer::DenseWith(regularized(3)),
        ],
    )
}

#[test]
fn gradients_of_a_whole_model() {
    let p = whole_model();
    check_gradients(&p, 10, 0);
    check_gradients(&p, 10, 17);
}

#[test]
fn f32_and_f64_executors_agree() {
    let p = whole_model();
    let params = init_params(&p, 9);
    let x64 = normal_matrix(10, 12, 1);
    let x32 = x64.mapv(|v| v as f32);
    let y = labels(10, 3, 2);
    let g64 = Executor::<f64>::new(&p, &params, None).loss_and_grads(x64.view(), &y, 4);
    let g32 = Executor::<f32>::new(&p, &params, None).loss_and_grads(x32.view(), &y, 4);
    assert_eq!(g32.correct, g64.correct);
    assert_f32_agrees_with_f64(&g32, &g64);
}

/// The f32 executor's loss within 1e-5 of the f64 one's (relative), and every gradient within
/// 1e-4 (relative, plus 1e-4 absolute); the same gradients present.
pub(crate) fn assert_f32_agrees_with_f64(g32: &LossAndGrads<f32>, g64: &LossAndGrads<f64>) {
    assert!((f64::from(g32.loss) - g64.loss).abs() < 1e-5 * g64.loss.abs());
    for (a, b) in g32.grads.iter().zip(&g64.grads) {
        let (Some(a), Some(b)) = (a, b) else {
            assert!(a.is_none() && b.is_none());
            continue;
        };
        for (&a, &b) in a.iter().zip(b) {
            assert!(
                (f64::from(a) - b).abs() < 1e-4 * (1.0 + b.abs()),
                "{a} vs {b}"
            );
        }
    }
}

#[test]
fn loss_and_accuracy_are_computed_from_logits() {
    // One dense layer with hand-set weights: logits = x · W.
    let mut exec = Executor::<f64>::new(
        &program(2, &[Layer::Dense(2)]),
        &init_params(&program(2, &[Layer::Dense(2)]), 1),
        None,
    );
    exec.params_mut()[0] = ndarray::arr2(&[[1.0, 0.0], [0.0, 1.0]]).into_dyn();
    exec.params_mut()[1].fill(0.0);
    let x = ndarray::arr2(&[[2.0, 0.0], [0.0, 1000.0], [1.0, 1.0]]);
    // Row 0: logits (2, 0), label 0: loss ln(1 + e^-2), correct.
    // Row 1: logits (0, 1000), label 0: loss 1000 (log-sum-exp keeps it finite), wrong.
    // Row 2: a tie, label 1: the first maximum (class 0) is the prediction, wrong; loss ln 2.
    let result = exec.loss_and_grads(x.view(), &[0, 0, 1], 0);
    let want = ((1.0 + (-2f64).exp()).ln() + 1000.0 + 2f64.ln()) / 3.0;
    assert!(
        (result.loss - want).abs() < 1e-9,
        "{} vs {want}",
        result.loss
    );
    assert_eq!(result.correct, 1);
}

pub(crate) fn u8_data(
    rows: usize,
    features: usize,
    classes: usize,
    seed: u64,
) -> (Vec<u8>, Vec<u8>) {
    // Each class has its own centre; examples are the centre plus noise, so they are separable.
    let mut rng = SplitMix64::new(seed, purpose::SHUFFLE, 3);
    let centres: Vec<Vec<f64>> = (0..classes)
        .map(|_| {
            (0..features)
                .map(|_| 40.0 + 175.0 * rng.next_f64())
                .collect()
        })
        .collect();
    let labels: Vec<u8> = (0..rows).map(|_| rng.below(classes) as u8).collect();
    let pixels = labels
        .iter()
        .flat_map(|&l| {
            centres[usize::from(l)]
                .iter()
                .map(|c| (c + 20.0 * rng.next_normal()).clamp(0.0, 255.0) as u8)
                .collect::<Vec<_>>()
        })
        .collect();
    (pixels, labels)
}

pub(crate) fn batch<'a>(
    pixels: &'a [u8],
    labels: &'a [u8],
    features: usize,
    range: std::ops::Range<usize>,
) -> Batch<'a> {
    Batch {
        pixels: &pixels[range.start * features..range.end * features],
        labels: &labels[range],
    }
}

pub(crate) fn sgd(p: &mut Program, lr: f32) {
    p.train.optimizer.kind = OptimizerKind::Sgd {
        momentum: 0.0,
        nesterov: false,
    };
    p.train.optimizer.lr = lr;
}

#[test]
fn a_train_step_applies_the_gradient() {
    let mut p = whole_model();
    sgd(&mut p, 0.1);
    let (pixels, labels) = u8_data(16, 12, 3, 1);
    let mut interp = Interp::new(&p, None);
    let b = batch(&pixels, &labels, 12, 0..16);
    let expected = interp.loss_and_grads(b);
    let before = interp.state();
    let stats = interp.train_step(b, 0.1);
    let after = interp.state();
    assert_eq!(stats.loss, expected.loss);
    assert_eq!(stats.correct, expected.correct);
    assert_eq!(after.step, 1);
    for (index, param) in p.params.iter().enumerate() {
        let Some(grad) = &expected.grads[index] else {
            continue;
        };
        let want = &before.params[index] - &(grad * 0.1f32);
        for (&a, &b) in after.params[index].iter().zip(&want) {
            assert!(
                (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                "{}: {a} vs {b}",
                param.name
            );
        }
    }
    // A second step uses the next step's dropout masks: its gradients differ from a recompute
    // at step 0 with the same parameters.
    let at_step_1 = interp.loss_and_grads(b);
    let mut rewound = interp.clone();
    rewound.set_state(&TrainState {
        step: 0,
        ..interp.state()
    });
    assert_ne!(at_step_1.grads, rewound.loss_and_grads(b).grads);
}

#[test]
fn batch_norm_updates_its_moving_averages_and_uses_them_in_inference() {
    let p = program(3, &[Layer::BatchNorm, Layer::Dense(2)]);
    let (pixels, labels) = u8_data(10, 3, 2, 4);
    let mut interp = Interp::new(&p, None);
    interp.train_step(batch(&pixels, &labels, 3, 0..10), 0.01);
    let x = interp.executor().input(&pixels).mapv(f64::from);
    let mean = x.mean_axis(Axis(0)).unwrap();
    let variance = x.var_axis(Axis(0), 0.0);
    let state = interp.state();
    let (moving_mean, moving_variance) = (&state.params[2], &state.params[3]);
    for j in 0..3 {
        let want_mean = 0.01 * mean[j];
        let want_variance = 0.99 + 0.01 * variance[j];
        assert!((f64::from(moving_mean[[j]]) - want_mean).abs() < 1e-6);
        assert!((f64::from(moving_variance[[j]]) - want_variance).abs() < 1e-6);
    }
    // Inference normalizes with the moving averages: check the batch norm's output directly.
    let values = interp
        .executor()
        .forward_values(x.mapv(|v| v as f32).view(), Pass::Inference);
    let (gamma, beta) = (&state.params[0], &state.params[1]);
    for ((i, j), &y) in values[1].indexed_iter() {
        let normalized = (x[[i, j]] - f64::from(moving_mean[[j]]))
            / (f64::from(moving_variance[[j]]) + 1e-3).sqrt();
        let want = f64::from(gamma[[j]]) * normalized + f64::from(beta[[j]]);
        assert!(
            (f64::from(y) - want).abs() < 1e-5,
            "({i}, {j}): {y} vs {want}"
        );
    }
}

#[test]
fn dropout_masks_follow_the_shared_rng() {
    let p = program(4, &[Layer::Dense(50), Layer::Dropout(0.3), Layer::Dense(2)]);
    let exec = Interp::new(&p, None).executor().clone();
    let x = normal_matrix(20, 4, 3).mapv(|v| v as f32);
    let check = |pass: Pass, stream: Stream, counter: u64| {
        let values = exec.forward_values(x.view(), pass);
        let key = rng::dropout_key(42, stream, counter, 1);
        let mut dropped = 0;
        for ((i, j), &y) in values[2].indexed_iter() {
            let kept = rng::keep(key, (i * 50 + j) as u32, 0.3);
            let want = if kept { values[1][[i, j]] / 0.7 } else { 0.0 };
            assert!((y - want).abs() <= 1e-6 * want.abs().max(1.0));
            dropped += usize::from(!kept);
        }
        assert!((200..400).contains(&dropped), "{dropped} of 1000 dropped");
        values[2].clone()
    };
    let train_3 = check(Pass::Train { step: 3 }, Stream::Train, 3);
    let train_4 = check(Pass::Train { step: 4 }, Stream::Train, 4);
    let mc_3 = check(Pass::McDropout { sample: 3 }, Stream::McDropout, 3);
    assert_ne!(train_3, train_4);
    assert_ne!(train_3, mc_3);
    let inference = exec.forward_values(x.view(), Pass::Inference);
    assert_eq!(inference[2], inference[1]);
}

#[test]
fn predictions_are_probabilities_and_chunking_does_not_change_masks() {
    let p = program(4, &[Layer::Dense(8), Layer::Dropout(0.5), Layer::Dense(3)]);
    let (pixels, _) = u8_data(2500, 4, 3, 5);
    let mut interp = Interp::new(&p, None);
    let mut probs = vec![0f32; 2500 * 3];
    let mode = Mode::McDropout { sample: 1 };
    interp.predict(&pixels, mode, &mut probs);
    for row in probs.chunks(3) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
    }
    // One forward pass over all rows at once draws the same masks as the chunked prediction.
    let logits = interp.logits(&pixels, mode);
    let whole = super::softmax_rows(logits.view());
    for (a, b) in probs.iter().zip(whole.iter()) {
        assert!((a - b).abs() < 1e-6);
    }
    let mut inference = vec![0f32; 2500 * 3];
    interp.predict(&pixels, Mode::Inference, &mut inference);
    assert_ne!(inference, probs);
}

#[test]
fn standardized_input_uses_the_statistics() {
    let mut p = program(2, &[Layer::Dense(2)]);
    p.input.preprocess = Preprocess::Standardize;
    let stats = InputStats {
        mean: vec![100.0, 10.0],
        std: vec![50.0, 2.0],
    };
    let interp = Interp::new(&p, Some(stats));
    let x = interp.executor().input(&[200, 10, 0, 16]);
    assert_eq!(x, ndarray::arr2(&[[2.0f32, 0.0], [-2.0, 3.0]]));
    let scaled = Interp::new(&program(2, &[Layer::Dense(2)]), None);
    assert_eq!(
        scaled.executor().input(&[255, 51]),
        ndarray::arr2(&[[1.0f32, 0.2]])
    );
}

#[test]
fn clipnorm_bounds_each_update_and_max_norm_bounds_each_column() {
    let constrained = DenseLayer {
        max_norm: Some(0.5),
        ..DenseLayer::new(6)
    };
    let mut p = program(
        5,
        &[
            Layer::DenseWith(constrained),
            Layer::Act(Activation::Relu),
            Layer::Dense(3),
        ],
    );
    sgd(&mut p, 1.0);
    p.train.optimizer.clipnorm = Some(0.01);
    let (pixels, labels) = u8_data(32, 5, 3, 6);
    let b = batch(&pixels, &labels, 5, 0..32);

    let mut interp = Interp::new(&p, None);
    let grads = interp.loss_and_grads(b).grads;
    let before = interp.state();
    interp.train_step(b, 1.0);
    let after = interp.state();
    for index in [2, 3] {
        // The unconstrained layer moves by exactly the clipped gradient: norm ≤ 0.01, and
        // equal to 0.01 when the raw gradient was longer.
        let delta = &before.params[index] - &after.params[index];
        let norm = delta.iter().map(|d| d * d).sum::<f32>().sqrt();
        let raw = grads[index]
            .as_ref()
            .unwrap()
            .iter()
            .map(|g| g * g)
            .sum::<f32>()
            .sqrt();
        assert!(
            raw > 0.01,
            "the test needs gradients longer than the clip norm"
        );
        assert!((norm - 0.01).abs() < 1e-5, "{norm}");
    }

    // Without clipping, a large step pushes kernel columns past 0.5; the constraint pulls them
    // back.
    p.train.optimizer.clipnorm = None;
    let mut interp = Interp::new(&p, None);
    for _ in 0..5 {
        interp.train_step(b, 1.0);
    }
    let kernel = &interp.state().params[0];
    let norms: Vec<f32> = kernel
        .view()
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap()
        .columns()
        .into_iter()
        .map(|c| c.dot(&c).sqrt())
        .collect();
    assert!(norms.iter().all(|&n| n <= 0.5 * (1.0 + 1e-6)), "{norms:?}");
    assert!(
        norms.iter().any(|&n| n > 0.49),
        "no column reached the limit: {norms:?}"
    );
}

fn optimizers() -> Vec<OptimizerKind> {
    vec![
        OptimizerKind::Sgd {
            momentum: 0.9,
            nesterov: true,
        },
        OptimizerKind::Adam {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
        },
        OptimizerKind::AdamW {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            weight_decay: 0.004,
        },
        OptimizerKind::Nadam {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
        },
        OptimizerKind::RmsProp {
            rho: 0.9,
            momentum: 0.5,
            epsilon: 1e-7,
            centered: true,
        },
        OptimizerKind::Adagrad {
            initial_accumulator: 0.1,
            epsilon: 1e-7,
        },
    ]
}

/// Mean loss and accuracy of each epoch of training on `rows` examples in batches of 32 (the
/// last one partial).
pub(crate) fn train_epochs(
    interp: &mut Interp,
    pixels: &[u8],
    labels: &[u8],
    epochs: usize,
    lr: f32,
) -> Vec<(f32, f32)> {
    let features = pixels.len() / labels.len();
    let rows = labels.len();
    (0..epochs)
        .map(|_| {
            let (mut loss, mut correct) = (0.0, 0);
            for start in (0..rows).step_by(32) {
                let range = start..(start + 32).min(rows);
                let n = range.len();
                let stats = interp.train_step(batch(pixels, labels, features, range), lr);
                loss += stats.loss * n as f32;
                correct += stats.correct;
            }
            (loss / rows as f32, correct as f32 / rows as f32)
        })
        .collect()
}

#[test]
fn every_optimizer_learns_separable_data() {
    let (pixels, labels) = u8_data(300, 8, 3, 8);
    for kind in optimizers() {
        let mut p = program(
            8,
            &[
                Layer::Dense(16),
                Layer::BatchNorm,
                Layer::Act(Activation::Relu),
                Layer::Dropout(0.1),
                Layer::Dense(3),
            ],
        );
        p.train.optimizer.kind = kind;
        let lr = match kind {
            OptimizerKind::Sgd { .. } | OptimizerKind::Adagrad { .. } => 0.05,
            _ => 0.01,
        };
        let mut interp = Interp::new(&p, None);
        let history = train_epochs(&mut interp, &pixels, &labels, 8, lr);
        let (first, last) = (history[0], history[history.len() - 1]);
        assert!(last.0 < 0.5 * first.0, "{}: loss {history:?}", kind.name());
        assert!(last.1 > 0.9, "{}: accuracy {history:?}", kind.name());
        assert_eq!(interp.state().step, 8 * 10);
        let slots = interp.state().slots;
        assert_eq!(slots[0].len(), kind.slot_count(), "{}", kind.name());
    }
}

fn assert_states_equal(a: &TrainState, b: &TrainState) {
    assert_eq!(a.step, b.step);
    assert_eq!(a.params, b.params);
    assert_eq!(a.slots, b.slots);
}

#[test]
fn training_is_deterministic_per_seed() {
    let (pixels, labels) = u8_data(64, 12, 3, 9);
    let mut p = whole_model();
    let run = |p: &Program| {
        let mut interp = Interp::new(p, None);
        for step in 0..3 {
            interp.train_step(batch(&pixels, &labels, 12, step * 16..step * 16 + 16), 0.01);
        }
        interp.state()
    };
    let a = run(&p);
    assert_states_equal(&a, &run(&p));
    p.train.seed = 43;
    assert_ne!(a.params, run(&p).params);
}

#[test]
fn a_restored_state_continues_identically() {
    let (pixels, labels) = u8_data(64, 12, 3, 10);
    for kind in optimizers() {
        let mut p = whole_model();
        p.train.optimizer.kind = kind;
        let step = |interp: &mut Interp, k: usize| {
            interp.train_step(
                batch(&pixels, &labels, 12, (k % 4) * 16..(k % 4) * 16 + 16),
                0.01,
            )
        };
        let mut original = Interp::new(&p, None);
        for k in 0..3 {
            step(&mut original, k);
        }
        // A fresh backend restored from the checkpoint must take the same next steps, including
        // Nadam's momentum product, which is recomputed from the step counter.
        let mut restored = Interp::new(&p, None);
        restored.set_state(&original.state());
        for k in 3..5 {
            let a = step(&mut original, k);
            let b = step(&mut restored, k);
            assert_eq!(a, b, "{}", kind.name());
        }
        assert_states_equal(&original.state(), &restored.state());
    }
}

#[test]
fn grad_program_drops_unsaved_values_in_training() {
    // The first dropout feeds the first dense, whose input is saved; the dropout's own input
    // (the raw batch) is not, and no step reads it.
    let p = whole_model();
    let exec = Executor::<f64>::new(&p, &init_params(&p, 1), None);
    let grad = exec.grad_program();
    assert!(!grad.keeps_value(netc_ir::ir::ValueId(0)));
    assert!(grad.keeps_value(netc_ir::ir::ValueId(1)));
    assert_eq!(grad.steps.last().map(|s| s.op), Some(1));
}
