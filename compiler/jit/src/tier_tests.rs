//! Differential tests of the vector tiers: dense programs of odd shapes, on every tier this CPU
//! has, against the interpreter.
//!
//! The widths (1, 3, 17, 33, 100, 3,072 columns) leave every remainder a GEMM can have: a
//! single column, a partial vector at every tier (3), one column past whole vectors at every
//! tier (17, 33), an odd number of f32x4 vectors and a partial vector at the wider tiers (100),
//! and many whole blocks (3,072). The batches (1, 7, 32, 67, 256 rows) are a single row, two
//! batches within the 64 rows for which the f32x4 weight gradient unrolls its loop over the
//! batch, and two beyond, which it runs in chunks of 64 (one and 3 rows; four) and for which
//! every tier does a fused update after the whole product rather than block row by block row.
//! Each width is a program's input (the `k` of the first layer's forward pass, the rows of its
//! weight gradient) and a hidden layer's width (the `n` of its forward pass, of its weight
//! gradient and of the next layer's input gradient; the `k` of the next layer's forward pass
//! and, except in the first layer, of its own input gradient). Each case names its tier, widths
//! and batch, through the program's name.

use super::tests::{check_grads_at, check_training_at};
use super::*;
use netc_ir::ir::{Activation, OptimizerKind, Regularizer};
use netc_ir::testing::{program, DenseLayer, Layer};

const WIDTHS: [usize; 6] = [1, 3, 17, 33, 100, 3072];
const BATCHES: [usize; 5] = [1, 7, 32, 67, 256];

/// Relative tolerance of values and gradients, as for the other programs (`tests::check_grads`).
const GRADS_REL: f32 = 1e-4;
/// Relative tolerance of training runs, as for the other programs (`long_batches_match_interp`).
const TRAINING_REL: f32 = 1e-4;
/// Optimizer steps of a training run; the last is on a partial batch (`check_training_at`).
const STEPS: usize = 3;

/// The epsilon of the adaptive rules, 1e-4 rather than Keras' 1e-7. Their step is
/// `lr · m̂ / (√v̂ + ε)`: for a gradient much smaller than ε, `lr / ε` times the gradient. A
/// wide kernel has gradients that cancel to less than 1e-7, and the backends round those
/// differently: at 33 -> 100 -> 3072, batch 7, one is 1.27e-8 in the interpreter and 1.32e-8
/// in the JIT (on every tier), on a scale of 0.04, and with ε = 1e-7 the first Nadam step
/// moves its weight by 4.5e-6 more in one than in the other, where the tolerance is 3.1e-6.
/// With ε = 1e-4 such noise moves a weight a thousand times less. (`every_kind` also has
/// gradients that are zero in exact arithmetic: the bias of a column PReLU passes whole to
/// batch norm.)
const EPSILON: f32 = 1e-4;

fn nadam() -> OptimizerKind {
    OptimizerKind::Nadam {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: EPSILON,
    }
}

fn adam() -> OptimizerKind {
    OptimizerKind::Adam {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: EPSILON,
    }
}

/// The activations of the hidden layers, in turn: each is another epilogue of the dense
/// forward pass and another derivative in the input gradient (`Kernel::InputGrad`).
const ACTIVATIONS: [Activation; 8] = [
    Activation::Elu { alpha: 1.0 },
    Activation::Relu,
    Activation::Tanh,
    Activation::Swish,
    Activation::LeakyRelu { alpha: 0.2 },
    Activation::Gelu,
    Activation::Sigmoid,
    Activation::Selu,
];

/// `features -> Dense(first) act -> Dense(second) act -> Dense(10)`, trained on batches of
/// `batch` with Adam (the `program` default).
fn two_hidden(
    features: usize,
    first: usize,
    second: usize,
    act: Activation,
    batch: usize,
) -> Program {
    let mut p = program(
        features,
        &[
            Layer::Dense(first),
            Layer::Act(act),
            Layer::Dense(second),
            Layer::Act(act),
            Layer::Dense(10),
        ],
    );
    p.name = format!(
        "{features} -> {first} {act} -> {second} {act} -> 10, batch {batch}",
        act = act.name()
    );
    p.train.batch = batch;
    p
}

/// The widths, each one a program's input and followed by the next two as its hidden layers
/// (`1 -> 3 -> 17`, ..., `3072 -> 1 -> 3`): every width is an input once and a hidden width
/// twice, first and second, without a 3,072 × 3,072 kernel.
fn chains() -> impl Iterator<Item = [usize; 3]> {
    (0..WIDTHS.len()).map(|i| [0, 1, 2].map(|j| WIDTHS[(i + j) % WIDTHS.len()]))
}

/// Every width as input and hidden width at every batch, on every tier: one pass's values and
/// gradients.
#[test]
fn odd_widths_at_every_batch_match_interp() {
    for tier in Tier::available() {
        for (i, [features, first, second]) in chains().enumerate() {
            for (j, batch) in BATCHES.into_iter().enumerate() {
                let act = ACTIVATIONS[(i + j) % ACTIVATIONS.len()];
                let p = two_hidden(features, first, second, act, batch);
                check_grads_at(&p, batch, GRADS_REL, tier);
            }
        }
    }
}

/// Every ordered pair of widths as the `k` and `n` of a hidden layer (`13 -> a -> b -> 10`),
/// so each pair is the shape of a forward GEMM, its transpose that of an input gradient, on
/// every tier. Each pair runs at one batch, a different one on each tier; 3,072 × 3,072 (a
/// kernel of 9.4 million weights, a second per case) runs only at batch 256, on every tier.
#[test]
fn every_pair_of_odd_widths_matches_interp() {
    let pairs = WIDTHS.iter().flat_map(|&a| WIDTHS.map(|b| (a, b)));
    let widest = *WIDTHS.last().expect("widths");
    for (t, tier) in Tier::available().into_iter().enumerate() {
        for (i, (first, second)) in pairs.clone().enumerate() {
            let batch = if (first, second) == (widest, widest) {
                256
            } else {
                BATCHES[(i + t) % BATCHES.len()]
            };
            let act = ACTIVATIONS[(i + t) % ACTIVATIONS.len()];
            let p = two_hidden(13, first, second, act, batch);
            check_grads_at(&p, batch, GRADS_REL, tier);
        }
    }
}

/// Nadam on the chains at every batch, on every tier: its update is fused into the weight
/// gradients.
#[test]
fn fused_updates_of_odd_widths_match_interp() {
    for tier in Tier::available() {
        for [features, first, second] in chains() {
            for batch in BATCHES {
                let elu = Activation::Elu { alpha: 1.0 };
                let mut p = two_hidden(features, first, second, elu, batch);
                p.train.optimizer.kind = nadam();
                p.name = format!("nadam: {}", p.name);
                check_training_at(&p, STEPS, TRAINING_REL, tier);
            }
        }
    }
}

/// `two_hidden` with ELU, an L2 penalty on every kernel and a max-norm of 0.5 on the columns
/// of the second, trained with Adam.
fn penalized(features: usize, first: usize, second: usize, batch: usize) -> Program {
    let dense = |units, max_norm| {
        Layer::DenseWith(DenseLayer {
            regularizer: Regularizer { l1: 0.0, l2: 1e-2 },
            max_norm,
            ..DenseLayer::new(units)
        })
    };
    let elu = Layer::Act(Activation::Elu { alpha: 1.0 });
    let mut p = program(
        features,
        &[
            dense(first, None),
            elu.clone(),
            dense(second, Some(0.5)),
            elu,
            dense(10, None),
        ],
    );
    p.name =
        format!("l2, max-norm 0.5: {features} -> {first} elu -> {second} elu -> 10, batch {batch}");
    p.train.batch = batch;
    p.train.optimizer.kind = adam();
    p
}

/// Updates that are passes of their own after the backward pass (`jit::fusable`), on the
/// chains, on every tier: with a penalty and a max-norm (`penalized`) at every batch, and with
/// clipping by the global norm, whose weight gradients are the same, at one batch, a different
/// one on each tier.
#[test]
fn separate_updates_of_odd_widths_match_interp() {
    for (t, tier) in Tier::available().into_iter().enumerate() {
        for (i, [features, first, second]) in chains().enumerate() {
            for batch in BATCHES {
                let p = penalized(features, first, second, batch);
                check_training_at(&p, STEPS, TRAINING_REL, tier);
            }
            let batch = BATCHES[(i + t) % BATCHES.len()];
            let mut p = two_hidden(
                features,
                first,
                second,
                Activation::Elu { alpha: 1.0 },
                batch,
            );
            p.train.optimizer.kind = adam();
            p.train.optimizer.clipnorm = Some(0.5);
            p.name = format!("adam, clipnorm 0.5: {}", p.name);
            check_training_at(&p, STEPS, TRAINING_REL, tier);
        }
    }
}

/// `features -> batch norm -> a tanh -> dropout -> b -> PReLU -> batch norm -> swish -> alpha
/// dropout -> 10`: every kind of kernel, at odd widths. The first batch norm normalizes the
/// data, so with an element-wise optimizer the weight gradient after it computes the batch
/// norm's gradients too (`FusedUpdate::normalized`).
fn every_kind(features: usize, a: usize, b: usize, batch: usize) -> Program {
    let mut p = program(
        features,
        &[
            Layer::BatchNorm,
            Layer::Dense(a),
            Layer::Act(Activation::Tanh),
            Layer::Dropout(0.2),
            Layer::Dense(b),
            Layer::Prelu,
            Layer::BatchNorm,
            Layer::Act(Activation::Swish),
            Layer::AlphaDropout(0.1),
            Layer::Dense(10),
        ],
    );
    p.name = format!(
        "{features} -> bn -> {a} tanh dropout -> {b} prelu bn swish alpha dropout -> 10, \
         batch {batch}"
    );
    p.train.batch = batch;
    p
}

/// The tolerance of `every_kind(features, a, ..)`. Its second batch norm follows dot products
/// of `features` and then `a` terms, and normalizing divides their rounding errors by the spread
/// of a column, not by its values. A dot product is one chain of FMAs in the JIT (with the same
/// results on every tier) and a blocked sum in `ndarray`: at 3072 -> 1 -> 3, batch 256, such a
/// chain over `layer1`'s 3,072 inputs is off the f64 executor's result by up to 6.8e-6, the
/// interpreter's by 1.4e-6, and after the second batch norm an element of 0.0192 on a scale of
/// 2 differs by 4.94e-6 between the backends (on every tier), where 1e-4 allows 4.89e-6.
fn every_kind_rel(features: usize, a: usize) -> f32 {
    if features.max(a) >= 3072 {
        2.0 * GRADS_REL
    } else {
        GRADS_REL
    }
}

/// The programs of `every_kind` on the chains: values and gradients at every batch, and a
/// training run with Nadam (fused, after the first batch norm too) at one batch, a different
/// one on each tier.
#[test]
fn other_kernel_kinds_of_odd_widths_match_interp() {
    for (t, tier) in Tier::available().into_iter().enumerate() {
        for (i, [features, a, b]) in chains().enumerate() {
            let rel = every_kind_rel(features, a);
            for batch in BATCHES {
                check_grads_at(&every_kind(features, a, b, batch), batch, rel, tier);
            }
            let mut p = every_kind(features, a, b, BATCHES[(i + t) % BATCHES.len()]);
            p.train.optimizer.kind = nadam();
            p.name = format!("nadam: {}", p.name);
            check_training_at(&p, STEPS, TRAINING_REL, tier);
        }
    }
}
