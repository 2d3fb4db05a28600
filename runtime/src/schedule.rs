//! Learning-rate schedules: turns an `ir::Schedule` into the rate of each optimizer step.
//!
//! Steps are 0-based global step numbers (the number of updates already applied, as Keras passes
//! `optimizer.iterations` to a schedule), so step 0 always gets the initial rate. Only
//! reduce-on-plateau keeps state, fed once per epoch with the validation loss (`PlateauState`,
//! which a checkpoint saves and a resumed run restores); everything else is a pure function of
//! the step. Arithmetic is in f64 and only the result is rounded to f32.

use netc_ir::ir::Schedule;

/// An improvement of the validation loss smaller than this does not reset reduce-on-plateau's
/// patience (Keras' `ReduceLROnPlateau` default `min_delta`).
pub const PLATEAU_MIN_DELTA: f64 = 1e-4;

#[derive(Clone, Debug)]
pub struct LrSchedule {
    schedule: Schedule,
    base_lr: f64,
    steps_per_epoch: u64,
    total_steps: u64,
    plateau: PlateauState,
}

/// Reduce-on-plateau's state, as Keras keeps it. Other schedules carry it unchanged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PlateauState {
    /// The current rate.
    pub lr: f64,
    /// The lowest validation loss so far (infinity before the first epoch).
    pub best: f64,
    /// Epochs since the last improvement or reduction.
    pub wait: usize,
}

impl LrSchedule {
    /// `base_lr` is the optimizer's rate; `epochs` the number of epochs that will run (1cycle
    /// spreads its cycle over all their steps).
    pub fn new(schedule: &Schedule, base_lr: f32, steps_per_epoch: usize, epochs: usize) -> Self {
        let steps_per_epoch = steps_per_epoch.max(1) as u64;
        LrSchedule {
            schedule: schedule.clone(),
            base_lr: f64::from(base_lr),
            steps_per_epoch,
            total_steps: steps_per_epoch * epochs as u64,
            plateau: PlateauState {
                lr: f64::from(base_lr),
                best: f64::INFINITY,
                wait: 0,
            },
        }
    }

    /// Reduce-on-plateau's state after the epochs fed so far.
    pub fn plateau(&self) -> PlateauState {
        self.plateau
    }

    /// Continues from a state `plateau` returned (for the same schedule), as a resumed run does.
    pub fn set_plateau(&mut self, state: PlateauState) {
        self.plateau = state;
    }

    /// The rate for 0-based global `step`.
    pub fn lr(&self, step: u64) -> f32 {
        let lr = match &self.schedule {
            Schedule::Constant => self.base_lr,
            Schedule::ExponentialDecay {
                rate,
                every,
                staircase,
            } => {
                let decay_steps = as_written(*every) * self.steps_per_epoch as f64;
                let mut exponent = step as f64 / decay_steps;
                if *staircase {
                    exponent = exponent.floor();
                }
                self.base_lr * as_written(*rate).powf(exponent)
            }
            Schedule::PiecewiseConstant { boundaries, values } => {
                let epoch = step / self.steps_per_epoch;
                let i = boundaries.iter().filter(|&&b| b as u64 <= epoch).count();
                values
                    .get(i)
                    .or(values.last())
                    .map_or(self.base_lr, |&v| as_written(v))
            }
            Schedule::OneCycle {
                max_lr,
                start_lr,
                end_lr,
                final_fraction,
            } => one_cycle(
                step,
                self.total_steps,
                as_written(*start_lr),
                as_written(*max_lr),
                as_written(*end_lr),
                as_written(*final_fraction),
            ),
            Schedule::ReduceOnPlateau { .. } => self.plateau.lr,
        };
        lr as f32
    }

    /// Feeds the validation loss at the end of an epoch. Only reduce-on-plateau listens: after
    /// `patience` epochs without an improvement of more than `PLATEAU_MIN_DELTA`, the rate is
    /// multiplied by `factor` (never below `min_lr`) and the count starts again. A NaN loss is
    /// never an improvement.
    pub fn end_epoch(&mut self, val_loss: f64) {
        let Schedule::ReduceOnPlateau {
            factor,
            patience,
            min_lr,
        } = &self.schedule
        else {
            return;
        };
        let p = &mut self.plateau;
        if val_loss < p.best - PLATEAU_MIN_DELTA {
            p.best = val_loss;
            p.wait = 0;
            return;
        }
        p.wait += 1;
        let min_lr = as_written(*min_lr);
        if p.wait >= *patience && p.lr > min_lr {
            p.lr = (p.lr * as_written(*factor)).max(min_lr);
            p.wait = 0;
        }
    }
}

/// The f64 closest to the decimal the spec most likely said. An f32 prints as the shortest
/// decimal that reads back to it, so `0.1f32` becomes exactly `0.1f64` instead of
/// 0.10000000149…; without this, "decay every 0.1 epochs of 10 steps" would floor 0.99999998 to 0.
fn as_written(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(f64::from(x))
}

/// Géron's 1cycle: the last `⌊total · final_fraction⌋ + 1` steps (his `iterations // 10 + 1`
/// for a fraction of 0.1) anneal from `start` to `end`; the steps before them split into two equal
/// halves, `start → max` then `max → start`. Past the last step the rate stays at `end`.
fn one_cycle(step: u64, total: u64, start: f64, max: f64, end: f64, final_fraction: f64) -> f64 {
    if total == 0 {
        return start;
    }
    let last = ((total as f64 * final_fraction).floor() as u64 + 1).min(total);
    let half = (total - last) / 2;
    let interpolate = |from: u64, to: u64, a: f64, b: f64| {
        let t = (step.min(to) - from) as f64 / (to - from) as f64;
        a + (b - a) * t
    };
    if step < half {
        interpolate(0, half, start, max)
    } else if step < 2 * half {
        interpolate(half, 2 * half, max, start)
    } else {
        interpolate(2 * half, total, start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(s: Schedule, lr: f32, steps: usize, epochs: usize) -> LrSchedule {
        LrSchedule::new(&s, lr, steps, epochs)
    }

    #[test]
    fn constant_is_the_optimizer_rate() {
        let s = sched(Schedule::Constant, 0.01, 10, 3);
        assert_eq!([s.lr(0), s.lr(29), s.lr(1000)], [0.01; 3]);
    }

    #[test]
    fn exponential_decay_counts_fractional_epochs() {
        let s = sched(
            Schedule::ExponentialDecay {
                rate: 0.1,
                every: 2.0,
                staircase: false,
            },
            1.0,
            10,
            10,
        );
        assert_eq!(s.lr(0), 1.0);
        // Step 10 is epoch 1.0: 0.1^(1/2).
        assert_eq!(s.lr(10), 0.1f64.sqrt() as f32);
        assert_eq!(s.lr(20), 0.1);
        assert_eq!(s.lr(5), 0.1f64.powf(0.25) as f32);
        assert_eq!(s.lr(40), 0.01);
        assert_eq!(s.lr(60), 0.001);
    }

    #[test]
    fn staircase_floors_the_exponent() {
        let s = sched(
            Schedule::ExponentialDecay {
                rate: 0.5,
                every: 0.1,
                staircase: true,
            },
            0.8,
            10,
            10,
        );
        // `every` = 0.1 epochs = 1 step: exact halvings, with no off-by-one from 0.1f32.
        assert_eq!([s.lr(0), s.lr(1), s.lr(2), s.lr(3)], [0.8, 0.4, 0.2, 0.1]);
        let s = sched(
            Schedule::ExponentialDecay {
                rate: 0.5,
                every: 1.0,
                staircase: true,
            },
            0.8,
            4,
            10,
        );
        assert_eq!([s.lr(3), s.lr(4), s.lr(7), s.lr(8)], [0.8, 0.4, 0.4, 0.2]);
    }

    #[test]
    fn piecewise_constant_switches_at_epoch_boundaries() {
        let s = sched(
            Schedule::PiecewiseConstant {
                boundaries: vec![2, 5],
                values: vec![0.1, 0.01, 0.001],
            },
            0.5,
            3,
            8,
        );
        let per_step: Vec<f32> = (0..18).map(|i| s.lr(i)).collect();
        let mut expected = vec![0.1; 6];
        expected.extend([0.01; 9]);
        expected.extend([0.001; 3]);
        assert_eq!(per_step, expected);
    }

    #[test]
    fn one_cycle_follows_gerons_schedule() {
        // 5 epochs of 20 steps: last = 10 + 1 = 11 steps, half = (100 - 11) / 2 = 44.
        let s = sched(
            Schedule::OneCycle {
                max_lr: 1.0,
                start_lr: 0.1,
                end_lr: 0.001,
                final_fraction: 0.1,
            },
            0.5,
            20,
            5,
        );
        let lr = |i| f64::from(s.lr(i));
        let close = |a: f64, b: f64| (a - b).abs() < 1e-7;
        assert!(close(lr(0), 0.1));
        assert!(close(lr(22), 0.1 + 0.9 * 22.0 / 44.0));
        assert!(close(lr(44), 1.0));
        assert!(close(lr(66), 1.0 - 0.9 * 22.0 / 44.0));
        assert!(close(lr(88), 0.1));
        assert!(close(lr(99), 0.1 + (0.001 - 0.1) * 11.0 / 12.0));
        assert!(close(lr(100), 0.001));
        assert!(close(lr(500), 0.001));
    }

    #[test]
    fn plateau_reduces_after_patience_and_respects_min_lr() {
        let mut s = sched(
            Schedule::ReduceOnPlateau {
                factor: 0.5,
                patience: 2,
                min_lr: 0.3,
            },
            1.0,
            10,
            10,
        );
        let mut seen = Vec::new();
        // 1.0 improves, 0.99995 is within min_delta, 1.2 is worse: two waits, so halve.
        for loss in [1.0, 0.999_95, 1.2, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95] {
            s.end_epoch(loss);
            seen.push(s.lr(0));
        }
        assert_eq!(seen, [1.0, 1.0, 0.5, 0.5, 0.5, 0.3, 0.3, 0.3, 0.3]);
        s.end_epoch(f64::NAN);
        assert_eq!(s.lr(0), 0.3);
    }

    #[test]
    fn a_restored_plateau_state_continues_where_it_stopped() {
        let schedule = Schedule::ReduceOnPlateau {
            factor: 0.5,
            patience: 2,
            min_lr: 0.01,
        };
        let losses = [1.0, 1.1, 0.9, 0.95, 0.97, 0.99, 0.5];
        let mut straight = sched(schedule.clone(), 1.0, 10, 10);
        let mut resumed = sched(schedule.clone(), 1.0, 10, 10);
        for &loss in &losses[..4] {
            straight.end_epoch(loss);
            resumed.end_epoch(loss);
        }
        let saved = resumed.plateau();
        let mut resumed = sched(schedule, 1.0, 10, 10);
        assert_ne!(resumed.plateau(), saved);
        resumed.set_plateau(saved);
        for &loss in &losses[4..] {
            straight.end_epoch(loss);
            resumed.end_epoch(loss);
            assert_eq!(resumed.plateau(), straight.plateau());
        }
        assert_eq!(resumed.lr(0), 0.5);
    }

    #[test]
    fn other_schedules_ignore_validation_loss() {
        let mut s = sched(Schedule::Constant, 0.1, 1, 1);
        for _ in 0..5 {
            s.end_epoch(9.0);
        }
        assert_eq!(s.lr(0), 0.1);
    }
}
