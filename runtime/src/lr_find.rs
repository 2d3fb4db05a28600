//! The learning-rate range test (Smith 2015, as fastai popularized it): train from the spec's
//! initial weights while the learning rate grows exponentially each step, and watch the loss.
//!
//! The loss first barely moves (rate too small), then falls steeply, then bottoms out and
//! explodes. A good rate sits on the steep descent, about a tenth of the rate at the minimum of
//! the smoothed loss. This module only measures and suggests; it writes nothing (the caller plots
//! and reports).

use netc_ir::backend::Backend;

use crate::data::{epoch_order, Batcher, Examples};

#[derive(Clone, Debug, PartialEq)]
pub struct LrFindOptions {
    pub min_lr: f32,
    pub max_lr: f32,
    /// Steps from `min_lr` to `max_lr`, unless the loss explodes first.
    pub steps: usize,
    /// Weight of the past in the exponential moving average of the loss.
    pub smoothing: f32,
    /// Stop when the smoothed loss exceeds this many times its minimum.
    pub explode_factor: f32,
    pub batch: usize,
    pub seed: u64,
}

impl Default for LrFindOptions {
    fn default() -> Self {
        LrFindOptions {
            min_lr: 1e-6,
            max_lr: 1.0,
            steps: 300,
            smoothing: 0.98,
            explode_factor: 4.0,
            batch: 32,
            seed: 42,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct LrFindResult {
    /// The rate of every step taken.
    pub lrs: Vec<f32>,
    /// The batch loss of every step (before that step's update).
    pub losses: Vec<f32>,
    /// Bias-corrected exponential moving average of `losses`.
    pub smoothed: Vec<f32>,
    /// Rate at the minimum of the smoothed loss.
    pub min_loss_lr: f32,
    /// Rate where the smoothed loss falls fastest (per unit of log rate) before its minimum.
    pub steepest_lr: f32,
    /// A tenth of `min_loss_lr`, kept within the swept range.
    pub suggested_lr: f32,
    /// Why the sweep ended.
    pub stop: LrFindStop,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrFindStop {
    /// The last rate was reached.
    Completed,
    /// The smoothed loss exceeded `explode_factor` times its minimum.
    Exploded,
    /// The loss was NaN or infinite.
    Diverged,
}

/// The rate of step `i` of `steps`: exponential from `min` to `max` inclusive.
pub fn rate_at(opts: &LrFindOptions, i: usize) -> f32 {
    let t = if opts.steps <= 1 {
        0.0
    } else {
        i as f64 / (opts.steps - 1) as f64
    };
    let (lo, hi) = (f64::from(opts.min_lr), f64::from(opts.max_lr));
    (lo * (hi / lo).powf(t)) as f32
}

/// Runs the range test on `train` examples of `data` (cycling through shuffled epochs as needed).
pub fn lr_find(
    backend: &mut dyn Backend,
    data: &Examples,
    train: &[u32],
    opts: &LrFindOptions,
) -> LrFindResult {
    let mut lrs = Vec::new();
    let mut losses = Vec::new();
    let mut smoothed = Vec::new();
    let mut average = 0.0f64;
    let mut best = f64::INFINITY;
    let mut stop = LrFindStop::Completed;
    let mut epoch = 0;
    'sweep: while lrs.len() < opts.steps {
        let order = epoch_order(train, opts.seed, epoch);
        let mut batches = Batcher::new(data, &order, opts.batch);
        while let Some(batch) = batches.next_batch() {
            let i = lrs.len();
            if i >= opts.steps {
                break 'sweep;
            }
            let lr = rate_at(opts, i);
            let loss = backend.train_step(batch, lr).loss;
            if !loss.is_finite() {
                stop = LrFindStop::Diverged;
                break 'sweep;
            }
            let beta = f64::from(opts.smoothing);
            average = beta * average + (1.0 - beta) * f64::from(loss);
            let value = average / (1.0 - beta.powi(i as i32 + 1));
            lrs.push(lr);
            losses.push(loss);
            smoothed.push(value as f32);
            best = best.min(value);
            // A few steps in, the average is meaningful enough to call an explosion.
            if i > 10 && value > f64::from(opts.explode_factor) * best {
                stop = LrFindStop::Exploded;
                break 'sweep;
            }
        }
        epoch += 1;
        if train.is_empty() {
            break;
        }
    }
    let (min_loss_lr, steepest_lr) = landmarks(&lrs, &smoothed);
    let suggested_lr = (min_loss_lr / 10.0).max(opts.min_lr);
    LrFindResult {
        lrs,
        losses,
        smoothed,
        min_loss_lr,
        steepest_lr,
        suggested_lr,
        stop,
    }
}

/// The rate at the smoothed loss's minimum, and where it fell fastest before that. The slope is
/// taken over a window of `SLOPE_WINDOW` steps and the first tenth of the sweep is skipped: there
/// the moving average is still settling and step-to-step noise would look like a steep fall.
fn landmarks(lrs: &[f32], smoothed: &[f32]) -> (f32, f32) {
    const SLOPE_WINDOW: usize = 5;
    let Some((min_i, _)) = smoothed
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
    else {
        return (f32::NAN, f32::NAN);
    };
    let start = (lrs.len() / 10).max(SLOPE_WINDOW);
    let mut steepest = (0.0f32, lrs[min_i]);
    for i in start..=min_i {
        let dlog = (lrs[i] / lrs[i - SLOPE_WINDOW]).ln();
        let slope = (smoothed[i] - smoothed[i - SLOPE_WINDOW]) / dlog;
        if slope < steepest.0 {
            steepest = (slope, lrs[i]);
        }
    }
    (lrs[min_i], steepest.1)
}

/// The explanation printed with the suggestion.
pub fn reasoning(r: &LrFindResult) -> String {
    let end = match r.stop {
        LrFindStop::Completed => "the sweep reached its last rate".to_string(),
        LrFindStop::Exploded => format!(
            "the loss exploded at lr {:.2e} and the sweep stopped",
            r.lrs.last().copied().unwrap_or(f32::NAN)
        ),
        LrFindStop::Diverged => format!(
            "the loss became NaN after lr {:.2e} and the sweep stopped",
            r.lrs.last().copied().unwrap_or(f32::NAN)
        ),
    };
    format!(
        "over {} steps, the smoothed loss was lowest at lr {:.2e} and fell fastest at lr {:.2e}; \
         {end}. At the minimum the rate is already about to make training unstable, so the \
         suggestion is a tenth of it, {:.2e}, on the steep descent where the loss falls \
         quickly and safely.",
        r.lrs.len(),
        r.min_loss_lr,
        r.steepest_lr,
        r.suggested_lr
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use netc_ir::backend::{Batch, Mode, StepStats, TrainState};

    /// A backend with the loss curve of a real range test, in log10(lr): flat below 1e-4, falling
    /// steadily to its minimum at 1e-2, then exploding, NaN above 0.3.
    struct Bowl;

    impl Backend for Bowl {
        fn name(&self) -> &'static str {
            "bowl"
        }
        fn train_step(&mut self, _: Batch<'_>, lr: f32) -> StepStats {
            let l = lr.log10();
            let loss = if lr > 0.3 {
                f32::NAN
            } else if l < -4.0 {
                2.3
            } else if l < -2.0 {
                2.3 - (l + 4.0) * 0.65
            } else {
                1.0 + (l + 2.0) * (l + 2.0) * 10.0
            };
            StepStats { loss, correct: 0 }
        }
        fn predict(&mut self, _: &[u8], _: Mode, _: &mut [f32]) {}
        fn state(&self) -> TrainState {
            TrainState {
                params: Vec::new(),
                slots: Vec::new(),
                step: 0,
            }
        }
        fn set_state(&mut self, _: &TrainState) {}
    }

    fn data() -> Examples {
        Examples::from_parts(4, vec![0; 400], vec![0; 100]).expect("shape")
    }

    #[test]
    fn rates_grow_exponentially_between_the_bounds() {
        let opts = LrFindOptions {
            min_lr: 1e-5,
            max_lr: 1e-1,
            steps: 5,
            ..LrFindOptions::default()
        };
        let rates: Vec<f32> = (0..5).map(|i| rate_at(&opts, i)).collect();
        for (got, want) in rates.iter().zip([1e-5f32, 1e-4, 1e-3, 1e-2, 1e-1]) {
            assert!((got / want - 1.0).abs() < 1e-4, "{got} vs {want}");
        }
    }

    #[test]
    fn finds_the_minimum_and_suggests_a_tenth_of_it() {
        let data = data();
        let train: Vec<u32> = (0..100).collect();
        let opts = LrFindOptions {
            steps: 400,
            smoothing: 0.0,
            batch: 10,
            ..LrFindOptions::default()
        };
        let r = lr_find(&mut Bowl, &data, &train, &opts);
        assert!(
            (r.min_loss_lr.log10() + 2.0).abs() < 0.05,
            "{}",
            r.min_loss_lr
        );
        assert!((r.suggested_lr / r.min_loss_lr - 0.1).abs() < 1e-6);
        assert_eq!(r.stop, LrFindStop::Exploded);
        assert!(r.lrs.len() < 400 && r.lrs.len() > 300, "{}", r.lrs.len());
        assert!(reasoning(&r).contains("fell fastest"));
        // The curve falls fastest on its descent, between 1e-4 and its minimum.
        assert!((1e-4..1e-2).contains(&r.steepest_lr), "{}", r.steepest_lr);
    }

    #[test]
    fn same_inputs_same_result() {
        let data = data();
        let train: Vec<u32> = (0..100).collect();
        let opts = LrFindOptions {
            steps: 50,
            batch: 7,
            ..LrFindOptions::default()
        };
        assert_eq!(
            lr_find(&mut Bowl, &data, &train, &opts),
            lr_find(&mut Bowl, &data, &train, &opts)
        );
    }
}
