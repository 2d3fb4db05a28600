//! The training loop with data augmentation and per-channel standardization, through the real
//! front end and both backends on generated data: augmented runs are reproducible, only training
//! batches are changed (validation images reach the backend as they are), and both backends train
//! a per-channel standardized, augmented spec alike. That an augmented run resumes bit for bit is
//! `runtime/tests/resume.rs`'s, through real checkpoints.

use netc_ir::backend::{Backend, Batch, InputStats, Mode, StepStats, TrainState};
use netc_ir::ir::{Augment, Program};
use netc_ir::rng::augment_key;

use crate::augment::{apply_draw, Draw};
use crate::data::{self, epoch_order, Cifar10, Split, SyntheticFormat, SyntheticSpec};
use crate::train::{train, TrainOptions, TrainOutcome};

/// 100 training images of generated data, 20 held out: 5 steps of 16 per epoch.
const SPEC: &str = "model augmented
input cifar10 { standardize { per: channel } }
dense 16 { init: he_normal, activation: relu }
dense 10 { activation: softmax }
train {
  optimizer: adam { lr: 1e-2 }
  batch: 16
  epochs: 3
  validation: 20
  augment { crop: 4, flip: horizontal }
  seed: 5
}
";

#[derive(Clone, Copy, Debug)]
enum Kind {
    Interp,
    Jit,
}

fn program(text: &str) -> Program {
    netc_front::compile(text).program.expect("the spec checks")
}

fn generated() -> (tempfile::TempDir, Cifar10) {
    let dir = tempfile::tempdir().unwrap();
    let spec = SyntheticSpec {
        records_per_file: 20,
        seed: 8,
        format: SyntheticFormat::Folder,
    };
    let path = data::write_synthetic(dir.path(), &spec).unwrap();
    let data = data::load(Some(&path)).unwrap();
    (dir, data)
}

fn split_of(program: &Program, data: &Cifar10) -> Split {
    data::split_validation(
        data.train.len(),
        program.train.validation,
        program.train.seed,
    )
    .unwrap()
}

fn backend(kind: Kind, program: &Program, stats: Option<InputStats>) -> Box<dyn Backend> {
    match kind {
        Kind::Interp => Box::new(netc_interp::Interp::new(program, stats)),
        Kind::Jit => Box::new(netc_jit::Jit::new(program, stats).expect("the JIT compiles")),
    }
}

/// The history's numbers as bits (the seconds left out), to compare runs exactly.
fn history_bits(outcome: &TrainOutcome) -> Vec<[u32; 5]> {
    outcome
        .history
        .epochs
        .iter()
        .map(|e| [e.lr, e.loss, e.accuracy, e.val_loss, e.val_accuracy].map(|x: f32| x.to_bits()))
        .collect()
}

/// Trains a fresh backend of `kind` on `program` and returns the outcome and the final state.
fn trained(kind: Kind, program: &Program, data: &Cifar10) -> (TrainOutcome, TrainState) {
    let split = split_of(program, data);
    let stats = data::standardization(program, &data.train, &split.train);
    let mut backend = backend(kind, program, stats);
    let outcome = train(
        backend.as_mut(),
        program,
        &data.train,
        &split,
        &TrainOptions::default(),
    )
    .unwrap();
    (outcome, backend.state())
}

fn same_seed_same_bits(kind: Kind) {
    let (_dir, data) = generated();
    let program = program(SPEC);
    let (first, first_state) = trained(kind, &program, &data);
    let (second, second_state) = trained(kind, &program, &data);
    assert_eq!(history_bits(&first), history_bits(&second));
    assert_eq!(first_state, second_state);
    assert!(first.history.epochs.iter().all(|e| e.loss.is_finite()));
    // The augmentation did change what was trained on.
    let mut plain = program.clone();
    plain.train.augment = Augment::default();
    let (unaugmented, _) = trained(kind, &plain, &data);
    assert_ne!(history_bits(&first), history_bits(&unaugmented));
}

#[test]
fn augmented_interpreter_runs_with_the_same_seed_are_bit_identical() {
    same_seed_same_bits(Kind::Interp);
}

#[test]
fn augmented_jit_runs_with_the_same_seed_are_bit_identical() {
    same_seed_same_bits(Kind::Jit);
}

/// A backend that only records the pixels it is handed, predicting uniform probabilities.
#[derive(Default)]
struct Recording {
    trained: Vec<u8>,
    predicted: Vec<u8>,
    steps: u64,
}

impl Backend for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }

    fn train_step(&mut self, batch: Batch<'_>, _lr: f32) -> StepStats {
        self.trained.extend_from_slice(batch.pixels);
        self.steps += 1;
        StepStats {
            loss: 1.0,
            correct: 0,
        }
    }

    fn predict(&mut self, pixels: &[u8], _mode: Mode, probs: &mut [f32]) {
        self.predicted.extend_from_slice(pixels);
        probs.fill(0.1);
    }

    fn state(&self) -> TrainState {
        TrainState {
            params: Vec::new(),
            slots: Vec::new(),
            step: self.steps,
        }
    }

    fn set_state(&mut self, state: &TrainState) {
        self.steps = state.step;
    }
}

#[test]
fn training_batches_are_augmented_per_image_and_validation_images_never() {
    let (_dir, data) = generated();
    let program = program(SPEC);
    let split = split_of(&program, &data);
    let mut recording = Recording::default();
    let opts = TrainOptions::default();
    train(&mut recording, &program, &data.train, &split, &opts).unwrap();

    let planes = program.input.dataset.planes();
    let (seed, augment) = (program.train.seed, program.train.augment);
    let mut expected = Vec::new();
    let mut unchanged = 0;
    for epoch in 0..program.train.epochs {
        for &i in &epoch_order(&split.train, seed, epoch) {
            let mut image = data.train.image(i as usize).to_vec();
            let draw = Draw::of(augment, augment_key(seed, epoch as u64, i));
            unchanged += usize::from(draw == Draw::IDENTITY);
            apply_draw(&mut image, planes, draw, &mut Vec::new());
            expected.extend(image);
        }
    }
    assert!(recording.trained == expected, "the training pixels differ");
    assert!(unchanged < 10, "{unchanged} of 240 draws changed nothing");
    let validation: Vec<u8> = split
        .validation
        .iter()
        .flat_map(|&i| data.train.image(i as usize).iter().copied())
        .collect();
    assert!(recording.predicted == validation.repeat(program.train.epochs));
}

#[test]
fn both_backends_train_a_channel_standardized_augmented_spec_alike() {
    let (_dir, data) = generated();
    let program = program(SPEC);
    let (interp, _) = trained(Kind::Interp, &program, &data);
    let (jit, _) = trained(Kind::Jit, &program, &data);
    let (a, b) = (&interp.history.epochs, &jit.history.epochs);
    assert_eq!(a.len(), 3);
    assert_eq!(b.len(), 3);
    for (x, y) in a.iter().zip(b) {
        assert!(
            (x.loss - y.loss).abs() <= 1e-3 * x.loss.abs().max(1.0),
            "{x:?} {y:?}"
        );
        assert!((x.val_loss - y.val_loss).abs() <= 1e-3 * x.val_loss.abs().max(1.0));
    }
    assert!(a[2].loss < a[0].loss, "{a:?}");
}

#[test]
fn a_convolutional_spec_trains_on_augmented_batches() {
    let (_dir, data) = generated();
    let text = SPEC.replace(
        "dense 16 { init: he_normal, activation: relu }",
        "conv2d 4 { size: 3, strides: 2, activation: relu, init: he_normal }\nglobal_avg_pool",
    );
    let program = program(&text);
    assert!(program.has_image_ops());
    let (first, state) = trained(Kind::Interp, &program, &data);
    let (second, again) = trained(Kind::Interp, &program, &data);
    assert!(first.history.epochs.iter().all(|e| e.loss.is_finite()));
    assert_eq!(history_bits(&first), history_bits(&second));
    assert_eq!(state, again);
}
