//! The training loop and evaluation, over any `Backend`.
//!
//! `train` runs epochs of shuffled batches with the scheduled learning rate, validates after each
//! epoch, stops early or on divergence, and returns the history. `train_from` is the same loop
//! made resumable: it can start from a `Resumed` loop state, hands `Snapshot`s to a caller's
//! `save` (every `checkpoint_every` epochs, at the end, and when interrupted), and stops between
//! two steps when asked to. `evaluate` measures a set, optionally with MC Dropout, and stops
//! between two batches when asked to. Buffers whose size comes from the data or the spec are
//! allocated with `try_filled`, so a size the machine cannot provide is an `OutOfMemory` error
//! rather than an abort. Progress goes
//! to stderr (a bar per epoch, then one line), never to stdout, which belongs to `--json`.
//! Nothing here knows which backend it drives or reads or writes files.
//!
//! Exact resumption needs no random-number state: the only randomness in training is the
//! epoch's shuffle, `data::epoch_order(train, seed, epoch)`, the augmentation of each training
//! image, keyed by `(seed, epoch, image)` (`augment::Augmenter`), and the dropout masks, which the
//! backends draw with `rng::dropout_key(seed, Stream::Train, step, op)` from
//! `TrainState::step` (see `interp::exec::dropout_key` and `Jit::train_step`). Initialization
//! and the validation split depend on the seed alone, and Nadam's running `u_product` is
//! recomputed from the step by `set_state`. So `(seed, epoch, step)` plus the `TrainState` and
//! the `LoopState` below determine everything that follows.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use netc_ir::backend::{Backend, Mode, TrainState};
use netc_ir::ir::{Monitor, Program};

use crate::augment::Augmenter;
use crate::data::{batch_count, epoch_order, Batcher, Examples, Split};
use crate::progress::{Report, Task, TaskProgress, Unit};
use crate::report::{DivergenceCause, EpochRecord, History, StopReason};
use crate::schedule::{LrSchedule, PlateauState};

/// Examples per `predict` call when evaluating: bounds the activations a backend allocates.
pub const EVAL_CHUNK: usize = 1_000;

/// Probabilities are clipped to `[PROB_EPSILON, 1 - PROB_EPSILON]` before the log, as Keras'
/// cross-entropy does (its `epsilon()`), so a confident mistake costs about 16, not infinity.
pub const PROB_EPSILON: f64 = 1e-7;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrainOptions {
    /// Run this many epochs instead of the spec's `epochs`.
    pub epochs: Option<usize>,
    /// Where each epoch's progress and results go (nothing by default).
    pub report: Report,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutcome {
    pub history: History,
    /// 1-based epoch with the best monitored metric (the early-stopping monitor, else the
    /// validation accuracy, as `History::best_by_val_accuracy` and the plots mark it); 0 when no
    /// epoch completed. Without validation examples, the last epoch.
    pub best_epoch: usize,
    pub stop: StopReason,
}

/// Everything the loop carries from step to step besides the backend's state: what a
/// checkpoint stores next to the weights, and where a resumed loop starts.
#[derive(Clone, Debug, PartialEq)]
pub struct LoopState {
    /// Epochs trained and validated.
    pub epochs_completed: usize,
    /// The epoch in progress, when training stopped between two of its steps.
    pub partial: Option<PartialEpoch>,
    pub history: History,
    pub tracker: TrackerState,
    pub plateau: PlateauState,
    /// Why training ended, once it has; a loop resumed with a stop set trains no more.
    pub stop: Option<StopReason>,
}

/// The sums of an epoch interrupted after `steps` of its steps (in the epoch's shuffled order).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PartialEpoch {
    pub steps: usize,
    /// Sum of the batch losses, each weighted by its batch size.
    pub loss_sum: f64,
    pub correct: usize,
    pub seen: usize,
    /// The rate of the last step taken (the history's `lr` column).
    pub lr: f32,
    /// Wall-clock seconds spent on the epoch so far.
    pub seconds: f64,
}

/// Early stopping's bookkeeping (see `BestTracker`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TrackerState {
    /// Best value of the monitored metric, `None` before the first validated epoch.
    pub best: Option<f64>,
    pub best_epoch: usize,
    /// Epochs in a row without improvement.
    pub wait: usize,
}

/// Where a resumed loop starts: its loop state and the two backend states it may fall back to.
#[derive(Clone, Debug, PartialEq)]
pub struct Resumed {
    pub loop_state: LoopState,
    /// The state at the end of the last completed epoch (the initial one before the first).
    pub last_good: TrainState,
    /// The best epoch's state, when early stopping restores it.
    pub best: Option<TrainState>,
}

/// What a checkpoint must hold to resume the loop exactly.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    pub loop_state: &'a LoopState,
    /// The backend's state now.
    pub state: &'a TrainState,
    /// See `Resumed::last_good`; the same as `state` at the end of an epoch.
    pub last_good: &'a TrainState,
    pub best: Option<&'a TrainState>,
}

/// How `train_from` checkpoints and when it stops early on request.
pub struct Control<'a, E> {
    /// Set (by a signal handler) to stop after the current step.
    pub interrupt: Option<&'a AtomicBool>,
    /// Save a snapshot after every this many epochs and when training ends; 0 saves only when
    /// interrupted.
    pub checkpoint_every: usize,
    pub save: &'a mut dyn FnMut(&Snapshot<'_>) -> Result<(), E>,
}

/// Why `train_from` returned without finishing.
#[derive(Debug, PartialEq)]
pub enum TrainStop<E> {
    /// The interrupt flag was set; a snapshot was saved. `epoch` is the 1-based epoch in
    /// progress, `steps` the steps of it done.
    Interrupted {
        epoch: usize,
        steps: usize,
        so_far: Box<SoFar>,
    },
    /// `save` failed; the previous checkpoint is whatever `save` left.
    Save(E),
    /// A buffer for validation could not be allocated.
    OutOfMemory(OutOfMemory),
}

/// What an interrupted loop had achieved, for the run's interim results.
#[derive(Clone, Debug, PartialEq)]
pub struct SoFar {
    /// The completed epochs.
    pub history: History,
    /// As `TrainOutcome::best_epoch`.
    pub best_epoch: usize,
    /// The weights a run ending now would keep: the best epoch's when early stopping restores
    /// them, else those of the end of the last completed epoch (the initial ones before it).
    pub kept: TrainState,
}

/// A buffer whose size comes from the data or the spec could not be allocated. The runtime
/// reports it instead of letting the allocator abort the process.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
#[error("cannot allocate {what} ({size}): out of memory")]
#[diagnostic(
    code(netc::run::out_of_memory),
    help(
        "close other programs, or make the spec need less memory: a smaller batch, narrower \
         layers, fewer MC Dropout samples"
    )
)]
pub struct OutOfMemory {
    /// What the buffer was for.
    pub what: &'static str,
    /// Its size in words, e.g. "41 GB".
    pub size: String,
}

impl OutOfMemory {
    /// The error for `count` values of `T`; `None` when the byte count overflows.
    pub fn of<T>(what: &'static str, count: Option<usize>) -> Self {
        let bytes = count.and_then(|n| n.checked_mul(std::mem::size_of::<T>()));
        let size = match bytes {
            Some(b) if b >= 1 << 30 => format!("{:.1} GB", b as f64 / 1e9),
            Some(b) => format!("{:.1} MB", b as f64 / 1e6),
            None => "more bytes than the machine can address".to_owned(),
        };
        OutOfMemory { what, size }
    }
}

/// `len` copies of `value`, or an `OutOfMemory` naming `what` when the memory cannot be had.
/// For buffers whose size comes from the data or the spec.
pub fn try_filled<T: Clone>(
    len: Option<usize>,
    value: T,
    what: &'static str,
) -> Result<Vec<T>, OutOfMemory> {
    let mut buffer = Vec::new();
    let Some(len) = len else {
        return Err(OutOfMemory::of::<T>(what, None));
    };
    buffer
        .try_reserve_exact(len)
        .map_err(|_| OutOfMemory::of::<T>(what, Some(len)))?;
    buffer.resize(len, value);
    Ok(buffer)
}

/// Trains `backend` on `split.train` of `data`, validating on `split.validation` after every
/// epoch. Shuffles use `program.train.seed`.
///
/// With early stopping and `restore_best`, the backend ends holding the state of the best epoch,
/// whatever stopped training (Keras restores only when it stops early; netc's test accuracy
/// should always be that of the weights the run reports as best). When the loss becomes NaN or
/// infinite, training stops and the state from the end of the previous epoch is restored.
pub fn train(
    backend: &mut dyn Backend,
    program: &Program,
    data: &Examples,
    split: &Split,
    opts: &TrainOptions,
) -> Result<TrainOutcome, OutOfMemory> {
    let mut save = |_: &Snapshot<'_>| Ok::<(), std::convert::Infallible>(());
    let mut control = Control {
        interrupt: None,
        checkpoint_every: 0,
        save: &mut save,
    };
    match train_from(backend, program, data, split, opts, None, &mut control) {
        Ok(outcome) => Ok(outcome),
        Err(TrainStop::OutOfMemory(e)) => Err(e),
        Err(TrainStop::Save(never)) => match never {},
        Err(TrainStop::Interrupted { .. }) => unreachable!("no interrupt flag was given"),
    }
}

/// `train`, resumable: starts from `resumed` when given (a loop state `save` received, with its
/// backend state already `set_state`), saves snapshots through `control`, and stops between two
/// steps once `control.interrupt` is set, after saving one.
pub fn train_from<E>(
    backend: &mut dyn Backend,
    program: &Program,
    data: &Examples,
    split: &Split,
    opts: &TrainOptions,
    resumed: Option<Resumed>,
    control: &mut Control<'_, E>,
) -> Result<TrainOutcome, TrainStop<E>> {
    let cfg = &program.train;
    let epochs = opts.epochs.unwrap_or(cfg.epochs);
    let steps_per_epoch = batch_count(split.train.len(), cfg.batch);
    let mut schedule = LrSchedule::new(&cfg.schedule, cfg.optimizer.lr, steps_per_epoch, epochs);
    let classes = program.output_width();
    let progress = Progress {
        report: &opts.report,
        epochs,
    };
    let mut tracker = BestTracker::new(program, !split.validation.is_empty());
    let interrupt = control.interrupt;
    let interrupted = || interrupt.is_some_and(|f| f.load(Ordering::SeqCst));

    let (mut ls, mut last_good) = match resumed {
        Some(r) => {
            schedule.set_plateau(r.loop_state.plateau);
            tracker.restore(r.loop_state.tracker, r.best);
            (r.loop_state, r.last_good)
        }
        None => {
            let fresh = LoopState {
                epochs_completed: 0,
                partial: None,
                history: History::default(),
                tracker: TrackerState::default(),
                plateau: schedule.plateau(),
                stop: None,
            };
            (fresh, backend.state())
        }
    };
    let save = |control: &mut Control<'_, E>,
                ls: &LoopState,
                state: &TrainState,
                last_good: &TrainState,
                best: Option<&TrainState>| {
        let snapshot = Snapshot {
            loop_state: ls,
            state,
            last_good,
            best,
        };
        (control.save)(&snapshot).map_err(TrainStop::Save)
    };

    let training = ls.stop.is_none();
    let mut augmenter = Augmenter::new(program);
    'epochs: for epoch in ls.epochs_completed..epochs {
        if ls.stop.is_some() {
            break;
        }
        let partial = ls.partial.take();
        let done_before = partial.map_or(0, |p| p.steps);
        // A checkpoint's times are checked when it is read; still, no value may panic here.
        let started = Duration::try_from_secs_f64(partial.map_or(0.0, |p| p.seconds))
            .ok()
            .and_then(|spent| Instant::now().checked_sub(spent))
            .unwrap_or_else(Instant::now);
        let order = epoch_order(&split.train, cfg.seed, epoch);
        // Batches are consecutive runs of the order, so skipping the steps already done is
        // starting the batcher that many batches in.
        let skip = (done_before * cfg.batch).min(order.len());
        let mut batcher = Batcher::new(data, &order[skip..], cfg.batch);
        let bar = progress.start_epoch(epoch + 1, steps_per_epoch, done_before);
        let epochs_after = epochs - epoch - 1;
        let mean_epoch = mean_epoch_seconds(&ls.history, None);
        let (mut loss_sum, mut correct, mut seen) = partial.map_or((0.0f64, 0usize, 0usize), |p| {
            (p.loss_sum, p.correct, p.seen)
        });
        let mut done = done_before;
        let epoch_start_step = (epoch * steps_per_epoch) as u64;
        let mut lr = match partial {
            Some(p) => p.lr,
            None => schedule.lr(epoch_start_step),
        };
        // The interrupt is looked at before each step that exists, so an epoch whose steps are
        // all done is validated and ends normally; the next one's first look then stops.
        while let Some(batch) = batcher.next_batch() {
            if interrupted() {
                bar.finish();
                ls.partial = (done > 0).then(|| PartialEpoch {
                    steps: done,
                    loss_sum,
                    correct,
                    seen,
                    lr,
                    seconds: started.elapsed().as_secs_f64(),
                });
                let state = backend.state();
                save(
                    control,
                    &ls,
                    &state,
                    &last_good,
                    tracker.best_state.as_ref(),
                )?;
                let so_far = SoFar {
                    best_epoch: tracker.best_epoch(ls.history.epochs.len()),
                    history: ls.history,
                    kept: tracker.best_state.take().unwrap_or(last_good),
                };
                return Err(TrainStop::Interrupted {
                    epoch: epoch + 1,
                    steps: done,
                    so_far: Box::new(so_far),
                });
            }
            let step = epoch_start_step + done as u64;
            let first = done * cfg.batch;
            let batch = augmenter.apply(batch, &order[first..first + batch.len()], epoch);
            lr = schedule.lr(step);
            let stats = backend.train_step(batch, lr);
            if !stats.loss.is_finite() {
                bar.finish();
                let replay = Replay {
                    data,
                    epoch,
                    order: &order,
                    batch: cfg.batch,
                    first_step: epoch_start_step,
                    steps: done,
                    interrupt,
                };
                let cause = replay.cause(backend, program, &schedule, &last_good);
                backend.set_state(&last_good);
                let kept = match epoch {
                    0 => "the initial weights".to_owned(),
                    e => format!("the weights from the end of epoch {e}"),
                };
                let why = cause
                    .as_ref()
                    .map(|c| format!("; {}", c.describe()))
                    .unwrap_or_default();
                progress.line(&format!(
                    "epoch {}: the loss became {} at step {step}{why}; keeping {kept}",
                    epoch + 1,
                    stats.loss
                ));
                ls.stop = Some(StopReason::Diverged {
                    step,
                    epoch: epoch + 1,
                    cause,
                });
                break 'epochs;
            }
            loss_sum += f64::from(stats.loss) * batch.len() as f64;
            correct += stats.correct;
            seen += batch.len();
            done += 1;
            bar.set(done as u64);
            let elapsed = started.elapsed().as_secs_f64();
            let eta = run_eta(elapsed, done, steps_per_epoch, epochs_after, mean_epoch);
            bar.message(format!(
                "loss {:.4}  acc {:.4}  {:.1} ms/step  run eta {}",
                loss_sum / seen as f64,
                correct as f64 / seen as f64,
                elapsed * 1e3 / done.max(1) as f64,
                duration_text(eta)
            ));
        }
        bar.finish();
        let val = match measure(backend, data, &split.validation, classes, None, None) {
            Ok(val) => val,
            Err(EvalStop::OutOfMemory(e)) => return Err(TrainStop::OutOfMemory(e)),
            Err(EvalStop::Interrupted) => unreachable!("validation is not interruptible"),
        };
        let record = EpochRecord {
            epoch: epoch + 1,
            lr,
            loss: (loss_sum / seen.max(1) as f64) as f32,
            accuracy: (correct as f64 / seen.max(1) as f64) as f32,
            val_loss: val.loss as f32,
            val_accuracy: val.accuracy as f32,
            seconds: started.elapsed().as_secs_f64(),
        };
        let eta = mean_epoch_seconds(&ls.history, Some(record.seconds))
            .filter(|_| epochs_after > 0)
            .map(|per_epoch| per_epoch * epochs_after as f64);
        progress.line(&epoch_line(&record, epochs, eta));
        schedule.end_epoch(val.loss);
        last_good = backend.state();
        let verdict = tracker.observe(&record, &last_good);
        ls.history.epochs.push(record);
        ls.epochs_completed = epoch + 1;
        ls.tracker = tracker.state();
        ls.plateau = schedule.plateau();
        if verdict == Verdict::Stop {
            ls.stop = Some(StopReason::EarlyStopping {
                patience: tracker.patience,
            });
            progress.line(&format!(
                "early stopping: {} has not improved for {} epochs; best epoch {}",
                tracker.monitor.name(),
                tracker.wait,
                tracker.best_epoch
            ));
            break;
        }
        let every = control.checkpoint_every;
        if every > 0 && (epoch + 1) % every == 0 && epoch + 1 < epochs {
            save(
                control,
                &ls,
                &last_good,
                &last_good,
                tracker.best_state.as_ref(),
            )?;
        }
    }
    if ls.stop.is_none() {
        ls.stop = Some(StopReason::Completed);
    }
    if training && control.checkpoint_every > 0 {
        // The end of training is saved too, so a run killed while testing resumes there. The
        // backend holds `last_good` now, also after a divergence.
        save(
            control,
            &ls,
            &last_good,
            &last_good,
            tracker.best_state.as_ref(),
        )?;
    }
    if let Some(best) = &tracker.best_state {
        backend.set_state(best);
    }
    let best_epoch = tracker.best_epoch(ls.history.epochs.len());
    Ok(TrainOutcome {
        history: ls.history,
        best_epoch,
        stop: ls.stop.unwrap_or(StopReason::Completed),
    })
}

/// The steps of one epoch from its start, replayed to look at the parameters going into a step
/// whose loss was not finite.
struct Replay<'a> {
    data: &'a Examples,
    /// The 0-based epoch, which keys its batches' augmentation.
    epoch: usize,
    order: &'a [u32],
    batch: usize,
    /// Global step of the epoch's first step.
    first_step: u64,
    /// Steps that went well before the one whose loss was not finite.
    steps: usize,
    interrupt: Option<&'a AtomicBool>,
}

impl Replay<'_> {
    /// Replays the epoch's good steps from `epoch_start` (the same batches, augmented alike, the
    /// same rates and dropout masks, hence the same updates) and names the first parameter, in layer order, that was
    /// not finite going into the failed step. A non-finite loss poisons every gradient, so the
    /// state after the failed step cannot tell; this costs at most one epoch of steps, once,
    /// after a divergence. `None` when interrupted meanwhile. Leaves the backend in any state.
    fn cause(
        &self,
        backend: &mut dyn Backend,
        program: &Program,
        schedule: &LrSchedule,
        epoch_start: &TrainState,
    ) -> Option<DivergenceCause> {
        backend.set_state(epoch_start);
        let mut batcher = Batcher::new(self.data, self.order, self.batch);
        let mut augmenter = Augmenter::new(program);
        for i in 0..self.steps {
            if self.interrupt.is_some_and(|f| f.load(Ordering::SeqCst)) {
                return None;
            }
            let batch = batcher.next_batch()?;
            let first = i * self.batch;
            let images = &self.order[first..first + batch.len()];
            let batch = augmenter.apply(batch, images, self.epoch);
            backend.train_step(batch, schedule.lr(self.first_step + i as u64));
        }
        let state = backend.state();
        Some(match first_non_finite_param(program, &state) {
            Some((param, layer)) => DivergenceCause::NonFiniteParam { param, layer },
            None => DivergenceCause::FiniteParams,
        })
    }
}

/// The first parameter holding a NaN or an infinity, in the order of the layers that use it,
/// with its layer's name.
fn first_non_finite_param(program: &Program, state: &TrainState) -> Option<(String, String)> {
    let non_finite = |i: usize| {
        state
            .params
            .get(i)
            .is_some_and(|a| a.iter().any(|v| !v.is_finite()))
    };
    program.ops.iter().find_map(|op| {
        program.params.iter().enumerate().find_map(|(i, p)| {
            let own = p
                .name
                .strip_prefix(op.layer.as_str())
                .is_some_and(|rest| rest.starts_with('.'));
            (own && non_finite(i)).then(|| (p.name.clone(), op.layer.clone()))
        })
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Continue,
    Stop,
}

/// Follows the monitored metric: which epoch was best, and when early stopping gives up (as
/// Keras' `EarlyStopping`: an improvement must beat the best by more than `min_delta`, and
/// training stops once `patience` epochs in a row brought none).
struct BestTracker {
    /// False without validation examples: there is nothing to monitor.
    active: bool,
    monitor: Monitor,
    min_delta: f64,
    /// `Some` when early stopping is on.
    patience_limit: Option<usize>,
    patience: usize,
    keep_state: bool,
    best: Option<f64>,
    best_epoch: usize,
    best_state: Option<TrainState>,
    wait: usize,
}

impl BestTracker {
    fn new(program: &Program, has_validation: bool) -> Self {
        let es = program.train.early_stopping;
        BestTracker {
            active: has_validation,
            monitor: es.map_or(Monitor::ValAccuracy, |e| e.monitor),
            min_delta: es.map_or(0.0, |e| f64::from(e.min_delta.abs())),
            patience_limit: es.map(|e| e.patience),
            patience: es.map_or(0, |e| e.patience),
            keep_state: has_validation && es.is_some_and(|e| e.restore_best),
            best: None,
            best_epoch: 0,
            best_state: None,
            wait: 0,
        }
    }

    /// Continues from a saved `state()` and the best state saved with it.
    fn restore(&mut self, saved: TrackerState, best_state: Option<TrainState>) {
        self.best = saved.best;
        self.best_epoch = saved.best_epoch;
        self.wait = saved.wait;
        self.best_state = best_state.filter(|_| self.keep_state);
    }

    /// The epoch a run reports as best after `completed` epochs: the tracker's, or the last
    /// one when there is nothing to monitor.
    fn best_epoch(&self, completed: usize) -> usize {
        if self.active {
            self.best_epoch
        } else {
            completed
        }
    }

    fn state(&self) -> TrackerState {
        TrackerState {
            best: self.best,
            best_epoch: self.best_epoch,
            wait: self.wait,
        }
    }

    fn observe(&mut self, record: &EpochRecord, state: &TrainState) -> Verdict {
        if !self.active {
            return Verdict::Continue;
        }
        let value = match self.monitor {
            Monitor::ValLoss => f64::from(record.val_loss),
            Monitor::ValAccuracy => f64::from(record.val_accuracy),
        };
        let improved = match (self.best, self.monitor) {
            _ if value.is_nan() => false,
            (None, _) => true,
            (Some(best), Monitor::ValLoss) => value < best - self.min_delta,
            (Some(best), Monitor::ValAccuracy) => value > best + self.min_delta,
        };
        if improved {
            self.best = Some(value);
            self.best_epoch = record.epoch;
            self.wait = 0;
            if self.keep_state {
                self.best_state = Some(state.clone());
            }
            return Verdict::Continue;
        }
        self.wait += 1;
        match self.patience_limit {
            Some(p) if self.wait >= p => Verdict::Stop,
            _ => Verdict::Continue,
        }
    }
}

/// The line printed after an epoch; `eta` is the seconds the run has left, when epochs remain.
fn epoch_line(r: &EpochRecord, epochs: usize, eta: Option<f64>) -> String {
    let width = epochs.to_string().len();
    let mut line = format!(
        "epoch {:>width$}/{epochs}  loss {:.4}  acc {:.4}  val_loss {:.4}  val_acc {:.4}  lr {:.3e}  {:.1}s",
        r.epoch, r.loss, r.accuracy, r.val_loss, r.val_accuracy, r.lr, r.seconds
    );
    if let Some(eta) = eta {
        line.push_str(&format!("  run eta {}", duration_text(eta)));
    }
    line
}

/// The mean length of the epochs done, `current` (an epoch just ended, not yet in `history`)
/// included; `None` before any.
fn mean_epoch_seconds(history: &History, current: Option<f64>) -> Option<f64> {
    let seconds: Vec<f64> = history
        .epochs
        .iter()
        .map(|e| e.seconds)
        .chain(current)
        .collect();
    (!seconds.is_empty()).then(|| seconds.iter().sum::<f64>() / seconds.len() as f64)
}

/// Seconds the run has left, `steps_done` steps into an epoch of `steps` that has taken
/// `elapsed` seconds so far: the rest of this epoch at its pace, then `epochs_after` epochs of
/// the mean length of those done, or before any is done, of this one's projected length.
fn run_eta(
    elapsed: f64,
    steps_done: usize,
    steps: usize,
    epochs_after: usize,
    mean_epoch: Option<f64>,
) -> f64 {
    let per_step = elapsed / steps_done.max(1) as f64;
    let this_epoch_left = per_step * steps.saturating_sub(steps_done) as f64;
    let per_epoch = mean_epoch.unwrap_or(per_step * steps as f64);
    this_epoch_left + per_epoch * epochs_after as f64
}

/// `42s`, `3m05s`, `2h07m`.
fn duration_text(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// An epoch's progress and the loop's lines, through the caller's `Report`.
struct Progress<'a> {
    report: &'a Report,
    epochs: usize,
}

impl Progress<'_> {
    fn start_epoch(&self, epoch: usize, steps: usize, done: usize) -> Box<dyn TaskProgress> {
        self.report.task(Task {
            label: format!("epoch {epoch}/{}", self.epochs),
            total: Some(steps as u64),
            done: done as u64,
            unit: Unit::Steps,
        })
    }

    fn line(&self, text: &str) {
        self.report.line(text);
    }
}

/// Loss, accuracy and the shape of the predicted distributions on one set.
#[derive(Clone, Debug, PartialEq)]
pub struct SetMetrics {
    pub examples: usize,
    /// Mean cross-entropy of the (clipped) probability of the true class.
    pub loss: f64,
    pub accuracy: f64,
    /// Mean probability of the predicted class.
    pub confidence: f64,
    /// Mean entropy of the predicted distribution, in nats.
    pub entropy: f64,
    /// Wall-clock milliseconds per 10,000 images (all samples included for MC Dropout).
    pub ms_per_10k: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct McDropoutMetrics {
    pub samples: usize,
    /// Metrics of the probabilities averaged over the samples.
    pub metrics: SetMetrics,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// Inference mode: dropout off.
    pub standard: SetMetrics,
    pub mc_dropout: Option<McDropoutMetrics>,
}

/// Why `evaluate` returned no metrics.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, miette::Diagnostic)]
pub enum EvalStop {
    /// The interrupt flag was raised; the evaluation stopped between two `predict` calls.
    #[error("the evaluation was interrupted")]
    #[diagnostic(code(netc::eval::interrupted))]
    Interrupted,
    #[error(transparent)]
    #[diagnostic(transparent)]
    OutOfMemory(OutOfMemory),
}

impl From<OutOfMemory> for EvalStop {
    fn from(e: OutOfMemory) -> Self {
        EvalStop::OutOfMemory(e)
    }
}

/// Evaluates `indices` of `examples` in inference mode and, when `mc_samples` is set, with MC
/// Dropout (probabilities averaged over samples `0..n`, which every backend draws identically).
/// Stops between two `predict` calls once `interrupt` is raised.
pub fn evaluate(
    backend: &mut dyn Backend,
    examples: &Examples,
    indices: &[u32],
    classes: usize,
    mc_samples: Option<usize>,
    interrupt: Option<&AtomicBool>,
) -> Result<Evaluation, EvalStop> {
    let standard = measure(backend, examples, indices, classes, None, interrupt)?;
    let mc_dropout = match mc_samples {
        None => None,
        Some(n) => Some(McDropoutMetrics {
            samples: n,
            metrics: measure(backend, examples, indices, classes, Some(n), interrupt)?,
        }),
    };
    Ok(Evaluation {
        standard,
        mc_dropout,
    })
}

/// Predicts `indices` in chunks of `EVAL_CHUNK` and scores the probabilities; with `mc_samples`,
/// averages that many MC Dropout passes per chunk. A mask element is keyed by its position in the
/// `predict` call, so rows at the same offset of different chunks share masks; that does not bias
/// the per-example average, and every backend is handed the same chunks, so they still agree.
/// The probability buffers, whose size comes from the spec, are allocated once, fallibly.
fn measure(
    backend: &mut dyn Backend,
    examples: &Examples,
    indices: &[u32],
    classes: usize,
    mc_samples: Option<usize>,
    interrupt: Option<&AtomicBool>,
) -> Result<SetMetrics, EvalStop> {
    let started = Instant::now();
    let mut score = Score::default();
    let mut batcher = Batcher::new(examples, indices, EVAL_CHUNK);
    let len = EVAL_CHUNK.min(indices.len()).checked_mul(classes);
    let mut probs = try_filled(len, 0.0f32, "the predicted probabilities")?;
    let mut sample_probs = match mc_samples {
        Some(_) => try_filled(len, 0.0f32, "the MC Dropout probabilities")?,
        None => Vec::new(),
    };
    let interrupted = || interrupt.is_some_and(|f| f.load(Ordering::SeqCst));
    while let Some(batch) = batcher.next_batch() {
        let probs = &mut probs[..batch.len() * classes];
        match mc_samples {
            None => {
                if interrupted() {
                    return Err(EvalStop::Interrupted);
                }
                backend.predict(batch.pixels, Mode::Inference, probs);
            }
            Some(n) => {
                probs.fill(0.0);
                let sample_probs = &mut sample_probs[..probs.len()];
                for sample in 0..n {
                    if interrupted() {
                        return Err(EvalStop::Interrupted);
                    }
                    let mode = Mode::McDropout {
                        sample: sample as u32,
                    };
                    backend.predict(batch.pixels, mode, sample_probs);
                    for (p, s) in probs.iter_mut().zip(sample_probs.iter()) {
                        *p += s;
                    }
                }
                let inv = 1.0 / n.max(1) as f32;
                probs.iter_mut().for_each(|p| *p *= inv);
            }
        }
        for (row, &label) in probs.chunks_exact(classes.max(1)).zip(batch.labels) {
            score.add(row, usize::from(label));
        }
    }
    Ok(score.finish(started.elapsed()))
}

/// Running sums over scored examples.
#[derive(Default)]
struct Score {
    n: usize,
    loss: f64,
    correct: usize,
    confidence: f64,
    entropy: f64,
}

impl Score {
    fn add(&mut self, probs: &[f32], label: usize) {
        let p_true = probs.get(label).map_or(0.0, |&p| f64::from(p));
        self.loss -= p_true.clamp(PROB_EPSILON, 1.0 - PROB_EPSILON).ln();
        let (arg, max) =
            probs
                .iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bp), (i, &p)| {
                    if p > bp {
                        (i, p)
                    } else {
                        (bi, bp)
                    }
                });
        self.correct += usize::from(arg == label && max.is_finite());
        self.confidence += f64::from(max);
        self.entropy -= probs
            .iter()
            .map(|&p| f64::from(p))
            .filter(|&p| p > 0.0)
            .map(|p| p * p.ln())
            .sum::<f64>();
        self.n += 1;
    }

    /// Means over the examples; NaN for an empty set, where no mean exists.
    fn finish(self, elapsed: Duration) -> SetMetrics {
        let n = self.n as f64;
        let ms_per_10k = if self.n == 0 {
            0.0
        } else {
            elapsed.as_secs_f64() * 1e3 / n * 1e4
        };
        SetMetrics {
            examples: self.n,
            loss: self.loss / n,
            accuracy: self.correct as f64 / n,
            confidence: self.confidence / n,
            entropy: self.entropy / n,
            ms_per_10k,
        }
    }
}

/// A linear softmax model trained by plain SGD, implemented on the host: a backend small enough
/// to check by hand, for the tests of the loop and of `run`.
#[cfg(test)]
pub(crate) mod fake {
    use ndarray::{ArrayD, IxDyn};
    use netc_ir::backend::{Backend, Batch, InputStats, Mode, StepStats, TrainState};
    use netc_ir::ir::*;
    use netc_ir::rng::{self, purpose, SplitMix64, Stream};

    /// One dense layer `features → classes` (params `p0` kernel, `p1` bias), SGD, constant rate.
    pub(crate) fn program(features: usize, classes: usize, batch: usize, epochs: usize) -> Program {
        let param = |name: &str, role, shape| Param {
            name: name.to_owned(),
            role,
            shape,
            init: Init::Zeros,
            trainable: true,
        };
        Program {
            name: "linear".to_owned(),
            input: Input {
                dataset: Dataset::Cifar10,
                features,
                shape: Shape::Flat(features),
                classes,
                preprocess: Preprocess::Standardize,
                stats_scope: StatsScope::Feature,
            },
            params: vec![
                param("dense_1.kernel", ParamRole::Kernel, vec![features, classes]),
                param("dense_1.bias", ParamRole::Bias, vec![classes]),
            ],
            ops: vec![Op {
                layer: "dense_1".to_owned(),
                index: 0,
                input: ValueId(0),
                output: ValueId(1),
                width_in: features,
                width: classes,
                shape_in: Shape::Flat(features),
                shape: Shape::Flat(classes),
                kind: OpKind::Dense {
                    kernel: ParamId(0),
                    bias: Some(ParamId(1)),
                    regularizer: Regularizer::default(),
                    max_norm: None,
                },
            }],
            head: Head::SoftmaxCrossEntropy,
            train: TrainConfig {
                optimizer: Optimizer {
                    kind: OptimizerKind::Sgd {
                        momentum: 0.0,
                        nesterov: false,
                    },
                    lr: 1e-3,
                    clipnorm: None,
                },
                schedule: Schedule::Constant,
                batch,
                epochs,
                validation: 0,
                early_stopping: None,
                augment: Augment::default(),
                seed: 1,
            },
            eval: EvalConfig::default(),
        }
    }

    pub(crate) struct LinearSoftmax {
        features: usize,
        classes: usize,
        stats: Option<InputStats>,
        kernel: Vec<f32>,
        bias: Vec<f32>,
        step: u64,
    }

    impl LinearSoftmax {
        pub(crate) fn new(program: &Program, stats: Option<InputStats>) -> Self {
            let (features, classes) = (program.input.features, program.output_width());
            let mut rng = SplitMix64::new(program.train.seed, purpose::INIT, 0);
            let kernel = (0..features * classes)
                .map(|_| (rng.next_normal() * 0.01) as f32)
                .collect();
            LinearSoftmax {
                features,
                classes,
                stats,
                kernel,
                bias: vec![0.0; classes],
                step: 0,
            }
        }

        fn input(&self, pixels: &[u8]) -> Vec<f32> {
            match &self.stats {
                Some(s) => pixels
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| {
                        let f = i % self.features;
                        (f32::from(x) - s.mean[f]) / s.std[f]
                    })
                    .collect(),
                None => pixels.iter().map(|&x| f32::from(x) / 255.0).collect(),
            }
        }

        fn softmax_rows(&self, x: &[f32]) -> Vec<f32> {
            let mut out = Vec::with_capacity(x.len() / self.features * self.classes);
            for row in x.chunks_exact(self.features) {
                let mut logits = self.bias.clone();
                for (xf, w) in row.iter().zip(self.kernel.chunks_exact(self.classes)) {
                    for (l, wc) in logits.iter_mut().zip(w) {
                        *l += xf * wc;
                    }
                }
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
                let sum: f32 = exp.iter().sum();
                out.extend(exp.iter().map(|e| e / sum));
            }
            out
        }
    }

    impl Backend for LinearSoftmax {
        fn name(&self) -> &'static str {
            "fake"
        }

        fn train_step(&mut self, batch: Batch<'_>, lr: f32) -> StepStats {
            let x = self.input(batch.pixels);
            let probs = self.softmax_rows(&x);
            let n = batch.len() as f32;
            let (mut loss, mut correct) = (0.0f32, 0usize);
            let mut kernel_grad = vec![0.0f32; self.kernel.len()];
            let mut bias_grad = vec![0.0f32; self.classes];
            let rows = x.chunks_exact(self.features);
            for ((row, p), &label) in rows.zip(probs.chunks_exact(self.classes)).zip(batch.labels) {
                let label = usize::from(label);
                loss -= p[label].max(1e-30).ln() / n;
                let arg = (0..self.classes).fold(0, |b, c| if p[c] > p[b] { c } else { b });
                correct += usize::from(arg == label);
                let g: Vec<f32> = (0..self.classes)
                    .map(|c| (p[c] - f32::from(u8::from(c == label))) / n)
                    .collect();
                for (xf, kg) in row.iter().zip(kernel_grad.chunks_exact_mut(self.classes)) {
                    for (k, gc) in kg.iter_mut().zip(&g) {
                        *k += xf * gc;
                    }
                }
                for (b, gc) in bias_grad.iter_mut().zip(&g) {
                    *b += gc;
                }
            }
            for (w, g) in self.kernel.iter_mut().zip(&kernel_grad) {
                *w -= lr * g;
            }
            for (b, g) in self.bias.iter_mut().zip(&bias_grad) {
                *b -= lr * g;
            }
            self.step += 1;
            StepStats { loss, correct }
        }

        fn predict(&mut self, pixels: &[u8], mode: Mode, probs: &mut [f32]) {
            let mut x = self.input(pixels);
            if let Mode::McDropout { sample } = mode {
                // Inverted dropout of rate 0.5 on the inputs, with the shared counter RNG.
                let key = rng::dropout_key(0, Stream::McDropout, u64::from(sample), 0);
                for (e, v) in x.iter_mut().enumerate() {
                    *v = if rng::keep(key, e as u32, 0.5) {
                        *v * 2.0
                    } else {
                        0.0
                    };
                }
            }
            probs.copy_from_slice(&self.softmax_rows(&x));
        }

        fn state(&self) -> TrainState {
            let kernel =
                ArrayD::from_shape_vec(IxDyn(&[self.features, self.classes]), self.kernel.clone())
                    .expect("kernel shape");
            let bias = ArrayD::from_shape_vec(IxDyn(&[self.classes]), self.bias.clone())
                .expect("bias shape");
            TrainState {
                params: vec![kernel, bias],
                slots: vec![vec![], vec![]],
                step: self.step,
            }
        }

        fn set_state(&mut self, state: &TrainState) {
            self.kernel = state.params[0].iter().copied().collect();
            self.bias = state.params[1].iter().copied().collect();
            self.step = state.step;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{self, input_stats, split_validation, SyntheticFormat, SyntheticSpec};
    use ndarray::{ArrayD, IxDyn};
    use netc_ir::backend::{Batch, StepStats};
    use netc_ir::ir::{EarlyStopping, Schedule};

    const QUIET: TrainOptions = TrainOptions {
        epochs: None,
        report: Report::silent(),
    };

    /// A backend whose validation results follow a script, one entry per epoch trained. Each
    /// example's pixels are `[label, difficulty]`; after `e` epochs, with script entry `(p, m)`,
    /// examples of difficulty below `m` get probability `p` on their label, the others `p` on the
    /// next class, and the rest is spread evenly. A training step reports its batch size as its
    /// loss, and the label-0 examples as correct, so the epoch means can be checked exactly.
    struct Scripted {
        classes: usize,
        steps_per_epoch: u64,
        script: Vec<(f32, u8)>,
        nan_at: Option<u64>,
        steps: u64,
        lrs: Vec<f32>,
    }

    impl Scripted {
        fn new(steps_per_epoch: u64, script: Vec<(f32, u8)>) -> Self {
            Scripted {
                classes: 10,
                steps_per_epoch,
                script,
                nan_at: None,
                steps: 0,
                lrs: Vec::new(),
            }
        }
    }

    impl Backend for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }

        fn train_step(&mut self, batch: Batch<'_>, lr: f32) -> StepStats {
            self.lrs.push(lr);
            let diverge = self.nan_at == Some(self.steps);
            self.steps += 1;
            StepStats {
                loss: if diverge {
                    f32::NAN
                } else {
                    batch.len() as f32
                },
                correct: batch.labels.iter().filter(|&&l| l == 0).count(),
            }
        }

        fn predict(&mut self, pixels: &[u8], mode: Mode, probs: &mut [f32]) {
            let epoch = (self.steps / self.steps_per_epoch).max(1) as usize;
            let (p, m) = self.script[(epoch - 1).min(self.script.len() - 1)];
            let q = (1.0 - p) / (self.classes - 1) as f32;
            for (x, row) in pixels
                .chunks_exact(2)
                .zip(probs.chunks_exact_mut(self.classes))
            {
                let mut right = x[1] < m;
                if let Mode::McDropout { sample } = mode {
                    right = sample % 2 == 0;
                }
                let target = if right { x[0] } else { (x[0] + 1) % 10 };
                row.fill(q);
                row[usize::from(target)] = p;
            }
        }

        fn state(&self) -> TrainState {
            TrainState {
                params: vec![ArrayD::from_elem(IxDyn(&[1]), self.steps as f32)],
                slots: vec![vec![]],
                step: self.steps,
            }
        }

        fn set_state(&mut self, state: &TrainState) {
            self.steps = state.step;
        }
    }

    /// Ten training examples (labels alternate 0/1) and ten validation examples of labels 0..9
    /// and difficulties 0..9.
    fn scripted_data() -> (Examples, Split) {
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for i in 0..10u8 {
            pixels.extend([i % 2, 0]);
            labels.push(i % 2);
        }
        for i in 0..10u8 {
            pixels.extend([i, i]);
            labels.push(i);
        }
        let split = Split {
            train: (0..10).collect(),
            validation: (10..20).collect(),
        };
        (Examples::from_parts(2, pixels, labels).unwrap(), split)
    }

    fn scripted_program(epochs: usize) -> Program {
        // Batches of 4 over 10 examples: 3 steps per epoch, the last of 2 examples.
        fake::program(2, 10, 4, epochs)
    }

    /// Validation loss of script entry `(p, m)` on `scripted_data`.
    fn expected_val_loss(p: f32, m: u8) -> f32 {
        let q = (1.0 - p) / 9.0;
        let m = f32::from(m);
        (m * -p.ln() + (10.0 - m) * -q.ln()) / 10.0
    }

    #[test]
    fn epoch_means_are_weighted_by_batch_size() {
        let (data, split) = scripted_data();
        let mut backend = Scripted::new(3, vec![(0.6, 7)]);
        let out = train(&mut backend, &scripted_program(2), &data, &split, &QUIET).unwrap();
        assert_eq!(out.stop, StopReason::Completed);
        assert_eq!(out.history.epochs.len(), 2);
        let r = &out.history.epochs[0];
        // Batch sizes 4, 4, 2: (16 + 16 + 4) / 10, not the unweighted 10 / 3.
        assert!((r.loss - 3.6).abs() < 1e-6, "{}", r.loss);
        assert_eq!(r.accuracy, 0.5);
        assert!((r.val_loss - expected_val_loss(0.6, 7)).abs() < 1e-6);
        assert_eq!(r.val_accuracy, 0.7);
        assert_eq!(r.epoch, 1);
        assert_eq!(backend.lrs.len(), 6);
    }

    #[test]
    fn the_schedule_sets_each_steps_rate_and_epochs_can_be_overridden() {
        let (data, split) = scripted_data();
        let mut program = scripted_program(5);
        program.train.schedule = Schedule::PiecewiseConstant {
            boundaries: vec![1, 2],
            values: vec![0.1, 0.01, 0.001],
        };
        let mut backend = Scripted::new(3, vec![(0.6, 7)]);
        let opts = TrainOptions {
            epochs: Some(3),
            report: Report::silent(),
        };
        let out = train(&mut backend, &program, &data, &split, &opts).unwrap();
        assert_eq!(
            backend.lrs,
            [0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001, 0.001]
        );
        let lrs: Vec<f32> = out.history.epochs.iter().map(|r| r.lr).collect();
        assert_eq!(lrs, [0.1, 0.01, 0.001]);
    }

    fn early_stopping(monitor: Monitor, patience: usize, min_delta: f32, restore: bool) -> Program {
        let mut program = scripted_program(10);
        program.train.early_stopping = Some(EarlyStopping {
            monitor,
            patience,
            min_delta,
            restore_best: restore,
        });
        program
    }

    #[test]
    fn early_stopping_on_val_loss_restores_the_best_state() {
        let (data, split) = scripted_data();
        let script = vec![(0.5, 10), (0.7, 10), (0.6, 10), (0.65, 10), (0.9, 10)];
        let program = early_stopping(Monitor::ValLoss, 2, 0.0, true);
        let mut backend = Scripted::new(3, script.clone());
        let out = train(&mut backend, &program, &data, &split, &QUIET).unwrap();
        assert_eq!(out.stop, StopReason::EarlyStopping { patience: 2 });
        assert_eq!(out.history.epochs.len(), 4);
        assert_eq!(out.best_epoch, 2);
        assert_eq!(backend.state().step, 6, "state of epoch 2 restored");

        let program = early_stopping(Monitor::ValLoss, 2, 0.0, false);
        let mut backend = Scripted::new(3, script);
        let out = train(&mut backend, &program, &data, &split, &QUIET).unwrap();
        assert_eq!((out.best_epoch, backend.state().step), (2, 12));
    }

    #[test]
    fn early_stopping_on_val_accuracy_honours_min_delta() {
        let (data, split) = scripted_data();
        // Accuracies 0.3, 0.4, 0.6, 0.6, 0.7, 0.7: with min_delta 0.15 only epoch 3 improves
        // on epoch 1, and three epochs without improvement follow.
        let script = [3, 4, 6, 6, 7, 7, 9, 9].map(|m| (0.8, m)).to_vec();
        let program = early_stopping(Monitor::ValAccuracy, 3, 0.15, true);
        let mut backend = Scripted::new(3, script);
        let out = train(&mut backend, &program, &data, &split, &QUIET).unwrap();
        assert_eq!(out.stop, StopReason::EarlyStopping { patience: 3 });
        assert_eq!((out.history.epochs.len(), out.best_epoch), (6, 3));
        assert_eq!(backend.state().step, 9);
    }

    #[test]
    fn divergence_stops_and_keeps_the_previous_epochs_state() {
        let (data, split) = scripted_data();
        let mut backend = Scripted::new(3, vec![(0.6, 7)]);
        backend.nan_at = Some(7);
        let out = train(&mut backend, &scripted_program(5), &data, &split, &QUIET).unwrap();
        // Replaying step 6 from the end of epoch 2 shows finite parameters going into step 7.
        let finite = Some(DivergenceCause::FiniteParams);
        assert_eq!(
            out.stop,
            StopReason::Diverged {
                step: 7,
                epoch: 3,
                cause: finite.clone()
            }
        );
        assert_eq!(out.history.epochs.len(), 2);
        assert_eq!(backend.state().step, 6);

        let mut backend = Scripted::new(3, vec![(0.6, 7)]);
        backend.nan_at = Some(0);
        let out = train(&mut backend, &scripted_program(5), &data, &split, &QUIET).unwrap();
        assert_eq!(
            out.stop,
            StopReason::Diverged {
                step: 0,
                epoch: 1,
                cause: finite
            }
        );
        assert!(out.history.epochs.is_empty());
        assert_eq!((out.best_epoch, backend.state().step), (0, 0));
    }

    #[test]
    fn the_first_non_finite_parameter_is_named_in_layer_order() {
        let program = fake::program(4, 3, 2, 1);
        let mut state = TrainState {
            params: vec![ArrayD::zeros(IxDyn(&[4, 3])), ArrayD::zeros(IxDyn(&[3]))],
            slots: vec![vec![], vec![]],
            step: 0,
        };
        assert_eq!(first_non_finite_param(&program, &state), None);
        state.params[1][[2]] = f32::INFINITY;
        let found = first_non_finite_param(&program, &state);
        assert_eq!(
            found,
            Some(("dense_1.bias".to_owned(), "dense_1".to_owned()))
        );
        state.params[0][[3, 1]] = f32::NAN;
        let found = first_non_finite_param(&program, &state).map(|(p, _)| p);
        assert_eq!(found.as_deref(), Some("dense_1.kernel"));
    }

    /// Buffers sized by the spec are allocated fallibly: a size the machine cannot provide is
    /// an error naming the buffer, not an abort of the whole process.
    #[test]
    fn an_evaluation_too_large_for_memory_is_an_error() {
        let (data, split) = scripted_data();
        let mut backend = Scripted::new(3, vec![(0.6, 7)]);
        // 10 examples of 2^40 classes: 44 TB of probabilities.
        let err = evaluate(
            &mut backend,
            &data,
            &split.validation,
            1 << 40,
            Some(2),
            None,
        );
        match err {
            Err(EvalStop::OutOfMemory(e)) => {
                assert_eq!(e.what, "the predicted probabilities");
                assert_eq!(e.size, "43980.5 GB");
            }
            other => panic!("expected an allocation failure, got {other:?}"),
        }
        let err = evaluate(
            &mut backend,
            &data,
            &split.validation,
            usize::MAX,
            None,
            None,
        );
        assert!(
            matches!(&err, Err(EvalStop::OutOfMemory(e)) if e.size.contains("address")),
            "{err:?}"
        );
        assert!(try_filled(Some(usize::MAX / 2), 0u64, "x").is_err());
        assert_eq!(try_filled(Some(3), 1u8, "x").unwrap(), vec![1, 1, 1]);
    }

    #[test]
    fn an_interrupted_evaluation_stops_between_predictions() {
        let (data, split) = scripted_data();
        let mut backend = Scripted::new(3, vec![(0.6, 7)]);
        let flag = AtomicBool::new(true);
        let stopped = evaluate(
            &mut backend,
            &data,
            &split.validation,
            10,
            None,
            Some(&flag),
        );
        assert_eq!(stopped, Err(EvalStop::Interrupted));
        flag.store(false, Ordering::SeqCst);
        assert!(evaluate(
            &mut backend,
            &data,
            &split.validation,
            10,
            None,
            Some(&flag)
        )
        .is_ok());
    }

    #[test]
    fn evaluate_scores_probabilities_and_averages_mc_samples() {
        let (data, split) = scripted_data();
        let mut backend = Scripted::new(3, vec![(0.6, 7)]);
        let ev = evaluate(&mut backend, &data, &split.validation, 10, Some(3), None).unwrap();
        let (p, q) = (0.6f64, 0.4f64 / 9.0);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        let s = &ev.standard;
        assert_eq!((s.examples, s.accuracy), (10, 0.7));
        assert!(close(s.loss, f64::from(expected_val_loss(0.6, 7))));
        assert!(close(s.confidence, p));
        assert!(close(s.entropy, -(p * p.ln() + 9.0 * q * q.ln())));
        // Samples 0 and 2 put p on the label, sample 1 on the next class.
        let mc = ev.mc_dropout.expect("mc metrics");
        assert_eq!((mc.samples, mc.metrics.accuracy), (3, 1.0));
        assert!(close(mc.metrics.loss, -((2.0 * p + q) / 3.0).ln()));
        assert!(close(mc.metrics.confidence, (2.0 * p + q) / 3.0));
        assert!(mc.metrics.ms_per_10k >= 0.0);
        let empty = evaluate(&mut backend, &data, &[], 10, None, None)
            .unwrap()
            .standard;
        assert_eq!(empty.examples, 0);
        assert!(empty.accuracy.is_nan());
    }

    #[test]
    fn linear_model_learns_synthetic_data_above_chance() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = SyntheticSpec {
            records_per_file: 60,
            seed: 3,
            format: SyntheticFormat::Folder,
        };
        let data = data::load(Some(&data::write_synthetic(tmp.path(), &spec).unwrap())).unwrap();
        let split = split_validation(data.train.len(), 60, 1).unwrap();
        let program = fake::program(data::IMAGE_BYTES, 10, 16, 4);
        let stats = input_stats(&data.train, &split.train);
        let mut backend = fake::LinearSoftmax::new(&program, Some(stats));
        // Reported, so the progress path runs too, and says what a user would see.
        let recording = std::sync::Arc::new(crate::progress::recording::Recording::default());
        let opts = TrainOptions {
            epochs: None,
            report: Report::to(recording.clone()),
        };
        let out = train(&mut backend, &program, &data.train, &split, &opts).unwrap();
        let h = &out.history.epochs;
        assert_eq!((h.len(), out.stop.clone()), (4, StopReason::Completed));
        let lines = recording.lines.lock().unwrap().clone();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[0].starts_with("epoch 1/4"), "{lines:?}");
        let tasks = recording.tasks.lock().unwrap().clone();
        let labels: Vec<&str> = tasks.iter().map(|t| t.label.as_str()).collect();
        assert_eq!(labels, ["epoch 1/4", "epoch 2/4", "epoch 3/4", "epoch 4/4"]);
        assert!(tasks.iter().all(|t| t.unit == Unit::Steps && t.done == 0));
        assert!(h[3].loss < h[0].loss, "{h:?}");
        assert!(h[3].val_accuracy > 0.5, "{h:?}");
        let ev = evaluate(
            &mut backend,
            &data.test,
            &data.test.all_indices(),
            10,
            Some(4),
            None,
        )
        .unwrap();
        assert!(ev.standard.accuracy > 0.5, "{ev:?}");
        let mc = ev.mc_dropout.expect("mc metrics").metrics;
        assert!(mc.accuracy > 0.3, "{mc:?}");
        assert_ne!(mc.loss, ev.standard.loss);
        assert!(ev.standard.entropy >= 0.0 && ev.standard.entropy <= 10f64.ln() + 1e-9);
    }

    #[test]
    fn the_run_eta_extrapolates_from_the_epochs_done() {
        // 10 of 40 steps in 5 s: 15 s left in this epoch; before any epoch is done, the next
        // two take this one's projected 20 s each.
        assert_eq!(run_eta(5.0, 10, 40, 2, None), 55.0);
        // Once epochs are done, their mean length counts instead.
        assert_eq!(run_eta(5.0, 10, 40, 2, Some(30.0)), 75.0);
        assert_eq!(run_eta(5.0, 40, 40, 0, Some(30.0)), 0.0);
        let mut history = History::default();
        assert_eq!(mean_epoch_seconds(&history, None), None);
        let record = |seconds| EpochRecord {
            epoch: 1,
            lr: 1e-3,
            loss: 1.0,
            accuracy: 0.5,
            val_loss: 1.0,
            val_accuracy: 0.5,
            seconds,
        };
        history.epochs.push(record(10.0));
        assert_eq!(mean_epoch_seconds(&history, Some(20.0)), Some(15.0));
        assert_eq!(
            [0.4, 59.6, 185.0, 7620.0].map(duration_text),
            ["0s", "1m00s", "3m05s", "2h07m"]
        );
        assert!(epoch_line(&record(10.0), 3, Some(185.0)).ends_with("10.0s  run eta 3m05s"));
        assert!(epoch_line(&record(10.0), 3, None).ends_with("10.0s"));
    }
}
