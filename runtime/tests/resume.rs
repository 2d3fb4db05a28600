//! Checkpoints and `run::resume` end to end, with the real front end and both backends on
//! generated data: a run interrupted anywhere and resumed ends with the same weights (byte for
//! byte) and the same history (but for the `seconds` column) as a run that was never stopped,
//! and runs that cannot be resumed say why.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use netc_ir::backend::TrainState;
use netc_ir::backend::{Backend, BackendError, Batch, InputStats, Mode, StepStats};
use netc_ir::ir::Program;
use netc_runtime::checkpoint::{self, ResumeError, CHECKPOINT_DIR, TRAINER_FILE};
use netc_runtime::data::{self, SyntheticFormat, SyntheticSpec};
use netc_runtime::report::{RunStatus, StopReason};
use netc_runtime::run::{self, ResumeOptions, RunError, RunOptions};

/// Dropout, Nadam, reduce-on-plateau and early stopping with restore_best: every piece of state
/// a resumed run must carry over. 240 training examples in batches of 32: 8 steps per epoch.
const SPEC: &str = "model resumable
input cifar10 { standardize }
dense 24 { init: he_normal, activation: relu }
dropout 0.3
dense 10 { activation: softmax }
train {
  optimizer: nadam { lr: 2e-2 }
  schedule: reduce_on_plateau { factor: 0.5, patience: 1 }
  batch: 32
  epochs: 7
  validation: 60
  early_stopping { patience: 4, restore_best: true }
  seed: 3
}
";

const STEPS_PER_EPOCH: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Interp,
    Jit,
}

struct Fixture {
    dir: tempfile::TempDir,
    data: PathBuf,
    spec: run::SpecSource,
}

fn fixture(spec_text: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let synthetic = SyntheticSpec {
        records_per_file: 60,
        seed: 11,
        format: SyntheticFormat::Folder,
    };
    let data = data::write_synthetic(&dir.path().join("data"), &synthetic).unwrap();
    let spec = dir.path().join("resumable.net");
    fs::write(&spec, spec_text).unwrap();
    let spec = run::SpecSource::read(&spec).unwrap();
    Fixture { dir, data, spec }
}

fn program(text: &str) -> Program {
    netc_front::compile(text).program.expect("the spec checks")
}

/// A backend that raises the interrupt flag after its `after`-th training step (or its
/// `after_predicts`-th `predict` call), as a signal arriving during that call would.
struct Interrupting {
    inner: Box<dyn Backend>,
    flag: Arc<AtomicBool>,
    after: Option<usize>,
    steps: usize,
    after_predicts: Option<usize>,
    predicts: usize,
}

impl Backend for Interrupting {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn train_step(&mut self, batch: Batch<'_>, lr: f32) -> StepStats {
        let stats = self.inner.train_step(batch, lr);
        self.steps += 1;
        if Some(self.steps) == self.after {
            self.flag.store(true, Ordering::SeqCst);
        }
        stats
    }

    fn predict(&mut self, pixels: &[u8], mode: Mode, probs: &mut [f32]) {
        self.inner.predict(pixels, mode, probs);
        self.predicts += 1;
        if Some(self.predicts) == self.after_predicts {
            self.flag.store(true, Ordering::SeqCst);
        }
    }

    fn state(&self) -> TrainState {
        self.inner.state()
    }

    fn set_state(&mut self, state: &TrainState) {
        self.inner.set_state(state);
    }
}

fn build(
    kind: Kind,
    program: &Program,
    stats: Option<InputStats>,
) -> Result<Box<dyn Backend>, BackendError> {
    Ok(match kind {
        Kind::Interp => Box::new(netc_interp::Interp::new(program, stats)),
        Kind::Jit => Box::new(netc_jit::Jit::new(program, stats)?),
    })
}

/// A backend of `kind` that interrupts after `after` steps of this process.
fn interrupting(
    kind: Kind,
    flag: &Arc<AtomicBool>,
    after: Option<usize>,
) -> impl FnOnce(&Program, Option<InputStats>) -> Result<Box<dyn Backend>, BackendError> {
    let flag = flag.clone();
    move |program, stats| {
        Ok(Box::new(Interrupting {
            inner: build(kind, program, stats)?,
            flag,
            after,
            steps: 0,
            after_predicts: None,
            predicts: 0,
        }))
    }
}

fn run_options(f: &Fixture, out: &str, flag: &Arc<AtomicBool>) -> RunOptions {
    RunOptions {
        data: Some(f.data.clone()),
        out: Some(f.dir.path().join(out)),
        report: Default::default(),
        checkpoint_every: 1,
        interrupt: Some(flag.clone()),
        ..RunOptions::default()
    }
}

fn resume(
    f: &Fixture,
    dir: &Path,
    kind: Kind,
    after: Option<usize>,
) -> Result<netc_runtime::report::Summary, RunError> {
    resume_with(f, dir, kind, after, None)
}

/// `resume`, training until `epochs` epochs when given.
fn resume_with(
    f: &Fixture,
    dir: &Path,
    kind: Kind,
    after: Option<usize>,
    epochs: Option<usize>,
) -> Result<netc_runtime::report::Summary, RunError> {
    let flag = Arc::new(AtomicBool::new(false));
    let opts = ResumeOptions {
        data: Some(f.data.clone()),
        epochs,
        report: Default::default(),
        checkpoint_every: 1,
        interrupt: Some(flag.clone()),
    };
    let spec = fs::read_to_string(dir.join(run::SPEC_FILE)).unwrap();
    let make = interrupting(kind, &flag, after);
    run::resume(
        &program(&spec),
        &spec,
        dir,
        &opts,
        |p, stats, trained_with| {
            assert_eq!(trained_with, format!("{kind:?}").to_lowercase());
            make(p, stats)
        },
    )
}

/// history.csv without its last column (wall-clock seconds).
fn history_without_seconds(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join(run::HISTORY_FILE))
        .unwrap()
        .lines()
        .map(|l| l.rsplit_once(',').map_or(l, |(rest, _)| rest).to_owned())
        .collect()
}

/// The same history (but for wall-clock seconds) and bit for bit the same weights. The files'
/// bytes are not compared: safetensors writes its metadata map in no fixed order.
fn assert_same_run(expected: &Path, actual: &Path) {
    assert_eq!(
        history_without_seconds(expected),
        history_without_seconds(actual)
    );
    let spec = fs::read_to_string(expected.join(run::SPEC_FILE)).unwrap();
    let weights = |dir: &Path| -> Vec<Vec<u32>> {
        netc_runtime::weights::load_params(&dir.join(run::WEIGHTS_FILE), &program(&spec))
            .unwrap()
            .iter()
            .map(|a| a.iter().map(|v| v.to_bits()).collect())
            .collect()
    };
    assert!(weights(expected) == weights(actual), "the weights differ");
}

fn interrupted(result: Result<netc_runtime::report::Summary, RunError>) -> (usize, usize) {
    match result {
        Err(RunError::Interrupted(stopped)) => (stopped.epochs_completed, stopped.steps),
        other => panic!("expected an interruption, got {other:?}"),
    }
}

fn trainer_json(dir: &Path) -> serde_json::Value {
    let text = fs::read_to_string(dir.join(CHECKPOINT_DIR).join(TRAINER_FILE)).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Interrupts mid-epoch, then again at an epoch boundary, then lets the run finish; compares
/// it with a run that was never interrupted.
fn interrupted_runs_resume_exactly(kind: Kind) {
    let f = fixture(SPEC);
    let p = program(SPEC);
    let flag = Arc::new(AtomicBool::new(false));
    let full = run::run(
        &p,
        &f.spec,
        &run_options(&f, "full", &flag),
        interrupting(kind, &flag, None),
    )
    .unwrap();
    assert!(full.epochs_run >= 3, "{full:?}");

    let flag = Arc::new(AtomicBool::new(false));
    let dir = f.dir.path().join("stopped");
    let mid_epoch = 2 * STEPS_PER_EPOCH + 3;
    let first = run::run(
        &p,
        &f.spec,
        &run_options(&f, "stopped", &flag),
        interrupting(kind, &flag, Some(mid_epoch)),
    );
    assert_eq!(interrupted(first), (2, 3));
    let trainer = trainer_json(&dir);
    assert_eq!(trainer["epochs_completed"], 2);
    assert_eq!(trainer["partial"]["steps"], 3);
    assert_eq!(trainer["state"]["step"], mid_epoch);
    assert_eq!(trainer["last_good"]["step"], 2 * STEPS_PER_EPOCH);
    // The results so far are written too, marked as such, without a test evaluation.
    let interim = netc_runtime::report::read_summary(&dir.join(run::SUMMARY_FILE)).unwrap();
    assert_eq!(interim.status, RunStatus::Interrupted);
    assert!(
        !interim.test_evaluated && interim.test_acc.is_nan(),
        "{interim:?}"
    );
    assert_eq!(interim.epochs_run, 2);
    assert_eq!(interim.stop, StopReason::Interrupted { epoch: 3, steps: 3 });
    assert_eq!(history_without_seconds(&dir).len(), 3);
    assert!(dir.join(run::CURVES_FILE).is_file() && dir.join(run::WEIGHTS_FILE).is_file());

    // The rest of epoch 3 is 5 steps: interrupted after its last one, the epoch is validated
    // and the checkpoint is taken at its end.
    let second = resume(&f, &dir, kind, Some(STEPS_PER_EPOCH - 3));
    assert_eq!(interrupted(second), (3, 0));
    let trainer = trainer_json(&dir);
    assert_eq!(trainer["partial"], serde_json::Value::Null);
    assert_eq!(trainer["state"]["step"], 3 * STEPS_PER_EPOCH);

    let resumed = resume(&f, &dir, kind, None).unwrap();
    assert_same_run(Path::new(&full.run_dir), &dir);
    assert_eq!(resumed.test_acc.to_bits(), full.test_acc.to_bits());
    assert_eq!(
        (resumed.status, resumed.test_evaluated),
        (RunStatus::Finished, true)
    );
    assert_eq!(
        (resumed.best_epoch, resumed.epochs_run, &resumed.stop),
        (full.best_epoch, full.epochs_run, &full.stop)
    );
    assert_eq!(resumed.spec, full.spec);

    // Finished: refused, with the stable code.
    let err = resume(&f, &dir, kind, None).unwrap_err();
    assert!(
        matches!(&err, RunError::Resume(e) if matches!(**e, ResumeError::Finished { .. })),
        "{err:?}"
    );
}

#[test]
fn interpreter_runs_resume_bit_for_bit() {
    interrupted_runs_resume_exactly(Kind::Interp);
}

#[test]
fn jit_runs_resume_bit_for_bit() {
    interrupted_runs_resume_exactly(Kind::Jit);
}

/// Augmentation is keyed by `(seed, epoch, image)`: a run interrupted mid-epoch and resumed
/// crops and flips its images as the uninterrupted run did.
#[test]
fn an_augmented_run_resumed_mid_epoch_ends_as_the_uninterrupted_one() {
    let spec = SPEC.replace(
        "  seed: 3\n",
        "  seed: 3\n  augment { crop: 4, flip: horizontal }\n",
    );
    assert_ne!(spec, SPEC, "the spec is augmented");
    let f = fixture(&spec);
    let p = program(&spec);
    let flag = Arc::new(AtomicBool::new(false));
    let full = run::run(
        &p,
        &f.spec,
        &run_options(&f, "full", &flag),
        interrupting(Kind::Interp, &flag, None),
    )
    .unwrap();

    let flag = Arc::new(AtomicBool::new(false));
    let dir = f.dir.path().join("stopped");
    let first = run::run(
        &p,
        &f.spec,
        &run_options(&f, "stopped", &flag),
        interrupting(Kind::Interp, &flag, Some(STEPS_PER_EPOCH + 2)),
    );
    assert_eq!(interrupted(first), (1, 2));
    resume(&f, &dir, Kind::Interp, None).unwrap();
    assert_same_run(Path::new(&full.run_dir), &dir);
}

#[test]
fn early_stopping_restores_the_best_state_after_a_resume() {
    // A high rate and patience 1 stop early; restore_best must bring back the best epoch's
    // weights from the checkpoint's best state, written before the interruption.
    let text = SPEC
        .replace("lr: 2e-2", "lr: 2e-1")
        .replace("patience: 4", "patience: 1")
        .replace("epochs: 7", "epochs: 12");
    let f = fixture(&text);
    let p = program(&text);
    let flag = Arc::new(AtomicBool::new(false));
    let full = run::run(
        &p,
        &f.spec,
        &run_options(&f, "full", &flag),
        interrupting(Kind::Interp, &flag, None),
    )
    .unwrap();
    assert!(
        matches!(full.stop, StopReason::EarlyStopping { .. }),
        "{full:?}"
    );
    assert!(full.best_epoch < full.epochs_run, "{full:?}");

    // Interrupt one step into the epoch after the best one.
    let flag = Arc::new(AtomicBool::new(false));
    let after = full.best_epoch * STEPS_PER_EPOCH + 1;
    let dir = f.dir.path().join("stopped");
    let first = run::run(
        &p,
        &f.spec,
        &run_options(&f, "stopped", &flag),
        interrupting(Kind::Interp, &flag, Some(after)),
    );
    assert_eq!(interrupted(first), (full.best_epoch, 1));
    let trainer = trainer_json(&dir);
    assert_eq!(
        trainer["best"]["step"],
        full.best_epoch * STEPS_PER_EPOCH,
        "{trainer}"
    );
    let resumed = resume(&f, &dir, Kind::Interp, None).unwrap();
    assert_same_run(Path::new(&full.run_dir), &dir);
    assert_eq!(resumed.best_epoch, full.best_epoch);
}

/// The interrupted run's directory, for the diagnostics tests: one epoch and two steps done.
fn stopped_run(f: &Fixture) -> PathBuf {
    stopped_run_named(f, "stopped")
}

fn stopped_run_named(f: &Fixture, name: &str) -> PathBuf {
    let flag = Arc::new(AtomicBool::new(false));
    let result = run::run(
        &program(SPEC),
        &f.spec,
        &run_options(f, name, &flag),
        interrupting(Kind::Interp, &flag, Some(STEPS_PER_EPOCH + 2)),
    );
    assert_eq!(interrupted(result), (1, 2));
    f.dir.path().join(name)
}

fn resume_error(result: Result<netc_runtime::report::Summary, RunError>) -> ResumeError {
    match result {
        Err(RunError::Resume(e)) => *e,
        other => panic!("expected a resume error, got {other:?}"),
    }
}

fn code(e: &ResumeError) -> String {
    miette::Diagnostic::code(e)
        .map(|c| c.to_string())
        .unwrap_or_default()
}

#[test]
fn runs_that_cannot_resume_say_why() {
    let f = fixture(SPEC);
    let dir = stopped_run(&f);

    // A changed spec.net.
    let edited = SPEC.replace("dropout 0.3", "dropout 0.4");
    fs::write(dir.join(run::SPEC_FILE), &edited).unwrap();
    let opts = ResumeOptions {
        data: Some(f.data.clone()),
        report: Default::default(),
        ..ResumeOptions::default()
    };
    let err = resume_error(run::resume(
        &program(&edited),
        &edited,
        &dir,
        &opts,
        |p, s, _| build(Kind::Interp, p, s),
    ));
    assert_eq!(code(&err), "netc::resume::spec_mismatch", "{err:?}");

    // A spec whose parameters differ: the weights files list the mismatch.
    let wider = SPEC.replace("dense 24", "dense 25");
    fs::write(dir.join(run::SPEC_FILE), SPEC).unwrap();
    let err = resume_error(run::resume(
        &program(&wider),
        SPEC,
        &dir,
        &opts,
        |p, s, _| build(Kind::Interp, p, s),
    ));
    assert_eq!(code(&err), "netc::resume::spec_mismatch", "{err:?}");
    assert!(err.to_string().contains("3 mismatched tensor"), "{err}");

    // Other data.
    let other = data::write_synthetic(
        &f.dir.path().join("other"),
        &SyntheticSpec {
            records_per_file: 61,
            seed: 12,
            format: SyntheticFormat::Folder,
        },
    )
    .unwrap();
    let other_opts = ResumeOptions {
        data: Some(other),
        ..opts.clone()
    };
    let err = resume_error(run::resume(
        &program(SPEC),
        SPEC,
        &dir,
        &other_opts,
        |p, s, _| build(Kind::Interp, p, s),
    ));
    assert_eq!(code(&err), "netc::resume::data_mismatch", "{err:?}");

    // A damaged trainer.json.
    let trainer = dir.join(CHECKPOINT_DIR).join(TRAINER_FILE);
    let good = fs::read(&trainer).unwrap();
    fs::write(&trainer, &good[..good.len() / 2]).unwrap();
    let err = resume_error(run::resume(&program(SPEC), SPEC, &dir, &opts, |p, s, _| {
        build(Kind::Interp, p, s)
    }));
    assert_eq!(code(&err), "netc::resume::bad_checkpoint", "{err:?}");

    // No checkpoint at all, and no run at all.
    fs::remove_dir_all(dir.join(CHECKPOINT_DIR)).unwrap();
    let err = checkpoint::check_resumable(&dir).unwrap_err();
    assert_eq!(code(&err), "netc::resume::no_checkpoint");
    let err = checkpoint::check_resumable(f.dir.path()).unwrap_err();
    assert_eq!(code(&err), "netc::resume::not_a_run");
}

#[test]
fn a_save_killed_half_way_leaves_the_previous_checkpoint() {
    let f = fixture(SPEC);
    let dir = stopped_run(&f);
    let ckpt = dir.join(CHECKPOINT_DIR);
    // What a kill between writing the state files and trainer.json leaves: files of a later
    // step that no trainer.json names, and a temporary file.
    let step = 2 * STEPS_PER_EPOCH;
    fs::copy(
        ckpt.join(format!("params-{}.safetensors", STEPS_PER_EPOCH + 2)),
        ckpt.join(format!("params-{step}.safetensors")),
    )
    .unwrap();
    fs::write(ckpt.join(".netc-abc123.tmp"), b"half a file").unwrap();

    // The resumed run ignores and removes them, and still matches the uninterrupted run.
    let flag = Arc::new(AtomicBool::new(false));
    let full = run::run(
        &program(SPEC),
        &f.spec,
        &run_options(&f, "full", &flag),
        interrupting(Kind::Interp, &flag, None),
    )
    .unwrap();
    resume(&f, &dir, Kind::Interp, Some(1)).unwrap_err();
    assert!(!ckpt.join(".netc-abc123.tmp").exists());
    let mut names: Vec<String> = fs::read_dir(&ckpt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // Now at step 11 (mid-epoch 2); the last good state is the end of epoch 1.
    assert_eq!(
        names,
        [
            "optimizer-11.safetensors",
            "optimizer-8.safetensors",
            "params-11.safetensors",
            "params-8.safetensors",
            "trainer.json"
        ]
    );
    resume(&f, &dir, Kind::Interp, None).unwrap();
    assert_same_run(Path::new(&full.run_dir), &dir);
}

#[test]
fn divergence_names_the_cause_and_checkpoints_the_last_good_state() {
    let text = SPEC
        .replace("nadam { lr: 2e-2 }", "sgd { lr: 10 }")
        .replace("activation: relu", "activation: linear")
        .replace(
            "schedule: reduce_on_plateau { factor: 0.5, patience: 1 }",
            "",
        );
    let f = fixture(&text);
    let flag = Arc::new(AtomicBool::new(false));
    let summary = run::run(
        &program(&text),
        &f.spec,
        &run_options(&f, "diverged", &flag),
        interrupting(Kind::Interp, &flag, None),
    )
    .unwrap();
    let StopReason::Diverged { step, epoch, cause } = &summary.stop else {
        panic!("expected divergence: {summary:?}");
    };
    assert!(cause.is_some(), "{summary:?}");
    let dir = PathBuf::from(&summary.run_dir);
    let trainer = trainer_json(&dir);
    let good = (epoch - 1) * STEPS_PER_EPOCH;
    assert!(*step as usize >= good);
    assert_eq!(trainer["state"]["step"], good, "{trainer}");
    assert_eq!(trainer["stop"]["kind"], "diverged");
    let state = netc_runtime::weights::load_params(
        &dir.join(CHECKPOINT_DIR)
            .join(format!("params-{good}.safetensors")),
        &program(&text),
    )
    .unwrap();
    assert!(state.iter().all(|a| a.iter().all(|v| v.is_finite())));
    let err = resume_error(resume(&f, &dir, Kind::Interp, None));
    assert_eq!(code(&err), "netc::resume::finished");
}

#[test]
fn other_images_under_the_same_labels_are_refused() {
    let f = fixture(SPEC);
    let dir = stopped_run(&f);
    // The run's data with one pixel changed: every label is the same.
    let other = f.dir.path().join("other-pixels");
    fs::create_dir(&other).unwrap();
    for entry in fs::read_dir(&f.data).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), other.join(entry.file_name())).unwrap();
    }
    let batch = other.join("data_batch_3.bin");
    let mut bytes = fs::read(&batch).unwrap();
    bytes[1 + 100] ^= 1;
    fs::write(&batch, &bytes).unwrap();
    let other_opts = ResumeOptions {
        data: Some(other.clone()),
        report: Default::default(),
        ..ResumeOptions::default()
    };
    let resume_with = |opts: &ResumeOptions| {
        run::resume(&program(SPEC), SPEC, &dir, opts, |p, s, _| {
            build(Kind::Interp, p, s)
        })
    };
    let err = resume_error(resume_with(&other_opts));
    assert_eq!(code(&err), "netc::resume::data_mismatch", "{err:?}");
    assert!(
        err.to_string()
            .contains("the same labels over other images"),
        "{err}"
    );

    // A checkpoint of an older netc, whose fingerprint covers the labels only, is checked on
    // them: other labels are refused, the run's own data resume.
    let trainer = dir.join(CHECKPOINT_DIR).join(TRAINER_FILE);
    let mut json = trainer_json(&dir);
    let fingerprint = json["data"].as_str().unwrap().to_owned();
    let (label_only, _) = fingerprint.rsplit_once(':').unwrap();
    json["data"] = label_only.into();
    fs::write(&trainer, serde_json::to_string(&json).unwrap()).unwrap();
    bytes[2 * data::RECORD_BYTES] = (bytes[2 * data::RECORD_BYTES] + 1) % 10;
    fs::write(&batch, &bytes).unwrap();
    let err = resume_error(resume_with(&other_opts));
    assert_eq!(code(&err), "netc::resume::data_mismatch", "{err:?}");
    assert!(
        err.to_string().contains("other examples or labels"),
        "{err}"
    );
    resume(&f, &dir, Kind::Interp, None).expect("a label-only fingerprint resumes");
}

fn run_error_code(result: Result<netc_runtime::report::Summary, RunError>) -> (String, String) {
    match result {
        Err(e) => (
            miette::Diagnostic::code(&e)
                .map(|c| c.to_string())
                .unwrap_or_default(),
            e.to_string(),
        ),
        Ok(summary) => panic!("expected an error, got {summary:?}"),
    }
}

/// Every number of trainer.json is checked: an edited or damaged value is refused with a
/// diagnostic naming the field and the file, never a panic, and the checkpoint is left as it is.
#[test]
fn a_tampered_trainer_json_is_refused_naming_the_field() {
    let f = fixture(SPEC);
    let dir = stopped_run(&f);
    let path = dir.join(CHECKPOINT_DIR).join(TRAINER_FILE);
    let good = fs::read_to_string(&path).unwrap();
    let original: serde_json::Value = serde_json::from_str(&good).unwrap();
    assert_eq!(original["partial"]["seen"], 64, "{original}");
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "partial.seconds",
            Box::new(|t| t["partial"]["seconds"] = "-1".into()),
        ),
        (
            "partial.seconds",
            Box::new(|t| t["partial"]["seconds"] = "NaN".into()),
        ),
        (
            "partial.seconds",
            Box::new(|t| t["partial"]["seconds"] = "inf".into()),
        ),
        (
            "partial.seconds",
            Box::new(|t| t["partial"]["seconds"] = "1e30".into()),
        ),
        ("seconds", Box::new(|t| t["seconds"] = "-0.5".into())),
        (
            "partial.loss_sum",
            Box::new(|t| t["partial"]["loss_sum"] = "inf".into()),
        ),
        (
            "partial.correct",
            Box::new(|t| t["partial"]["correct"] = 65.into()),
        ),
        (
            "partial.seen",
            Box::new(|t| t["partial"]["seen"] = 63.into()),
        ),
        (
            "partial.steps",
            Box::new(|t| t["partial"]["steps"] = 0.into()),
        ),
        (
            "partial.lr",
            Box::new(|t| t["partial"]["lr"] = "NaN".into()),
        ),
        (
            "history[0].accuracy",
            Box::new(|t| t["history"][0]["accuracy"] = "1.5".into()),
        ),
        (
            "history[0].val_loss",
            Box::new(|t| t["history"][0]["val_loss"] = "-1".into()),
        ),
        (
            "history[0].seconds",
            Box::new(|t| t["history"][0]["seconds"] = "inf".into()),
        ),
        (
            "history[0].epoch",
            Box::new(|t| t["history"][0]["epoch"] = 2.into()),
        ),
        (
            "epochs_completed",
            Box::new(|t| t["epochs_completed"] = 2.into()),
        ),
        ("epochs", Box::new(|t| t["epochs"] = 0.into())),
        (
            "early_stopping.best",
            Box::new(|t| t["early_stopping"]["best"] = "0.25".into()),
        ),
        (
            "early_stopping.wait",
            Box::new(|t| t["early_stopping"]["wait"] = 5.into()),
        ),
        ("plateau.lr", Box::new(|t| t["plateau"]["lr"] = "-1".into())),
        (
            "plateau.best",
            Box::new(|t| t["plateau"]["best"] = "NaN".into()),
        ),
        (
            "state.step",
            Box::new(|t| {
                t["state"] = serde_json::json!({
                    "step": 11,
                    "params": "params-11.safetensors",
                    "optimizer": "optimizer-11.safetensors"
                })
            }),
        ),
        (
            "state.params",
            Box::new(|t| t["state"]["params"] = "../../weights".into()),
        ),
        (
            "best.step",
            Box::new(|t| {
                t["best"] = serde_json::json!({
                    "step": 10,
                    "params": "params-10.safetensors",
                    "optimizer": "optimizer-10.safetensors"
                })
            }),
        ),
        (
            "partial",
            Box::new(|t| t["stop"] = serde_json::json!({ "kind": "completed" })),
        ),
        (
            "stop",
            Box::new(|t| {
                t["stop"] = serde_json::json!({ "kind": "interrupted", "epoch": 2, "steps": 2 });
                t["partial"] = serde_json::Value::Null;
                t["state"] = t["last_good"].clone();
            }),
        ),
        (
            "data_path",
            Box::new(|t| t["data_path"] = "data/cifar".into()),
        ),
    ];
    let files = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut all: Vec<_> = fs::read_dir(dir.join(CHECKPOINT_DIR))
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name() != TRAINER_FILE)
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        all.sort();
        all
    };
    let before = files(&dir);
    for (field, edit) in &cases {
        let mut tampered = original.clone();
        edit(&mut tampered);
        fs::write(&path, serde_json::to_string_pretty(&tampered).unwrap()).unwrap();
        let (code, message) = run_error_code(resume(&f, &dir, Kind::Interp, None));
        assert_eq!(code, "netc::resume::tampered", "{field}: {message}");
        assert!(
            message.contains(&format!("`{field}`")),
            "{field}: {message}"
        );
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(files(&dir) == before, "{field}: the checkpoint was changed");
    }
    fs::write(&path, good).unwrap();
    resume(&f, &dir, Kind::Interp, None).unwrap();
}

#[test]
fn non_finite_parameters_in_a_checkpoint_are_refused() {
    let f = fixture(SPEC);
    let dir = stopped_run(&f);
    let p = program(SPEC);
    let file = dir
        .join(CHECKPOINT_DIR)
        .join(format!("params-{}.safetensors", STEPS_PER_EPOCH + 2));
    let mut params = netc_runtime::weights::load_params(&file, &p).unwrap();
    let index = p
        .params
        .iter()
        .position(|q| q.name == "dense_2.bias")
        .unwrap();
    params[index][[7]] = f32::INFINITY;
    let state = TrainState {
        slots: vec![Vec::new(); params.len()],
        params,
        step: (STEPS_PER_EPOCH + 2) as u64,
    };
    netc_runtime::weights::save_params(&file, &p, &state).unwrap();
    let (code, message) = run_error_code(resume(&f, &dir, Kind::Interp, None));
    assert_eq!(code, "netc::resume::non_finite_params", "{message}");
    assert!(message.contains("`dense_2.bias`"), "{message}");
    assert!(message.contains(&file.display().to_string()), "{message}");
}

/// A backend that, at its first training step, looks whether the run directory is locked.
struct LockProbe {
    inner: Box<dyn Backend>,
    lock_file: PathBuf,
    seen: Arc<std::sync::Mutex<Option<String>>>,
}

impl Backend for LockProbe {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn train_step(&mut self, batch: Batch<'_>, lr: f32) -> StepStats {
        let mut seen = self.seen.lock().unwrap();
        if seen.is_none() {
            let outcome = match fs::File::open(&self.lock_file) {
                Err(e) => format!("no lock file: {e}"),
                Ok(file) => match file.try_lock() {
                    Err(fs::TryLockError::WouldBlock) => "locked".to_owned(),
                    other => format!("not locked: {other:?}"),
                },
            };
            *seen = Some(outcome);
        }
        self.inner.train_step(batch, lr)
    }

    fn predict(&mut self, pixels: &[u8], mode: Mode, probs: &mut [f32]) {
        self.inner.predict(pixels, mode, probs);
    }

    fn state(&self) -> TrainState {
        self.inner.state()
    }

    fn set_state(&mut self, state: &TrainState) {
        self.inner.set_state(state);
    }
}

#[test]
fn a_run_locks_its_directory_while_it_trains() {
    let f = fixture(SPEC);
    let seen = Arc::new(std::sync::Mutex::new(None));
    let flag = Arc::new(AtomicBool::new(false));
    let mut opts = run_options(&f, "locked", &flag);
    opts.epochs = Some(1);
    let probe = seen.clone();
    let lock_file = f.dir.path().join("locked").join(run::LOCK_FILE);
    run::run(&program(SPEC), &f.spec, &opts, move |p, stats| {
        Ok(Box::new(LockProbe {
            inner: build(Kind::Interp, p, stats)?,
            lock_file,
            seen: probe,
        }))
    })
    .unwrap();
    assert_eq!(seen.lock().unwrap().as_deref(), Some("locked"));

    // A resumed run holds it too: another process is refused, the checkpoint left alone.
    let dir = stopped_run(&f);
    let lock = fs::File::open(dir.join(run::LOCK_FILE)).unwrap();
    lock.try_lock().unwrap();
    let (code, message) = run_error_code(resume(&f, &dir, Kind::Interp, None));
    assert_eq!(code, "netc::run::locked", "{message}");
    drop(lock);
    resume(&f, &dir, Kind::Interp, None).unwrap();
}

/// An interrupt while the test set is evaluated stops the run (it used to be announced and
/// ignored): training is over and checkpointed, the results so far are written, and a resumed
/// run only evaluates, ending as a run never interrupted.
#[test]
fn an_interrupt_during_the_test_evaluation_stops_the_run() {
    let text = format!("{SPEC}evaluate {{ mc_dropout: 3 }}\n");
    let f = fixture(&text);
    let p = program(&text);
    let flag = Arc::new(AtomicBool::new(false));
    let mut opts = run_options(&f, "full", &flag);
    opts.epochs = Some(2);
    let full = run::run(&p, &f.spec, &opts, interrupting(Kind::Interp, &flag, None)).unwrap();
    assert_eq!(full.epochs_run, 2);

    // One `predict` per validation, then the test set's dropout-off pass: the interrupt
    // arrives during it, before the MC Dropout passes.
    let flag = Arc::new(AtomicBool::new(false));
    let mut opts = run_options(&f, "stopped", &flag);
    opts.epochs = Some(2);
    let make = {
        let flag = flag.clone();
        move |program: &Program, stats| -> Result<Box<dyn Backend>, BackendError> {
            Ok(Box::new(Interrupting {
                inner: build(Kind::Interp, program, stats)?,
                flag,
                after: None,
                steps: 0,
                after_predicts: Some(3),
                predicts: 0,
            }))
        }
    };
    let (code, message) = run_error_code(run::run(&p, &f.spec, &opts, make));
    assert_eq!(code, "netc::run::interrupted", "{message}");
    assert!(message.contains("test evaluation"), "{message}");
    let dir = f.dir.path().join("stopped");
    let interim: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join(run::SUMMARY_FILE)).unwrap()).unwrap();
    assert_eq!(interim["status"], "interrupted", "{interim}");
    assert_eq!(interim["test_evaluated"], false, "{interim}");
    assert_eq!(interim["stop"]["kind"], "completed", "{interim}");
    assert_eq!(interim["epochs_run"], 2, "{interim}");
    assert_same_run(Path::new(&full.run_dir), &dir);
    assert_eq!(trainer_json(&dir)["stop"]["kind"], "completed");

    let resumed = resume(&f, &dir, Kind::Interp, None).unwrap();
    assert_eq!(resumed.test_acc.to_bits(), full.test_acc.to_bits());
    assert_eq!(
        resumed.mc_test_acc.map(f64::to_bits),
        full.mc_test_acc.map(f64::to_bits)
    );
    assert_same_run(Path::new(&full.run_dir), &dir);
}

/// `--epochs` on resume: fewer epochs than are done end the run now, at the end of its last
/// completed epoch, as a run of that many epochs would have; more extend it, as a run started
/// with that many would have gone, and the new count is kept by later resumes.
#[test]
fn a_resumed_run_can_be_shortened_or_extended() {
    let f = fixture(SPEC);
    let p = program(SPEC);
    let full_run = |epochs: usize, name: &str| {
        let flag = Arc::new(AtomicBool::new(false));
        let mut opts = run_options(&f, name, &flag);
        opts.epochs = Some(epochs);
        run::run(&p, &f.spec, &opts, interrupting(Kind::Interp, &flag, None)).unwrap()
    };

    let one = full_run(1, "one");
    let dir = stopped_run_named(&f, "shortened");
    let shortened = resume_with(&f, &dir, Kind::Interp, None, Some(1)).unwrap();
    assert_same_run(Path::new(&one.run_dir), &dir);
    assert_eq!(shortened.test_acc.to_bits(), one.test_acc.to_bits());
    assert_eq!(
        (shortened.epochs_run, &shortened.stop),
        (1, &StopReason::Completed)
    );
    assert_eq!(trainer_json(&dir)["epochs"], 1);

    let three = full_run(3, "three");
    let dir = stopped_run_named(&f, "extended");
    let first = resume_with(&f, &dir, Kind::Interp, Some(7), Some(3));
    assert_eq!(interrupted(first), (2, 1));
    assert_eq!(trainer_json(&dir)["epochs"], 3);
    let extended = resume(&f, &dir, Kind::Interp, None).unwrap();
    assert_same_run(Path::new(&three.run_dir), &dir);
    assert_eq!(extended.test_acc.to_bits(), three.test_acc.to_bits());
    assert_eq!(extended.epochs_run, 3);
}
