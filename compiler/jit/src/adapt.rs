//! Choosing, phase by phase, whether the worker pool helps or this thread runs every share
//! itself, from the wall time each choice has been taking. It decides; it never runs anything.
//!
//! Threads meet a few dozen times per training step. On a quiet machine each meeting costs a
//! microsecond; on a machine with other work on every core, a partner the OS has descheduled
//! holds the meeting for a time slice, and a step on two threads took three to five times as
//! long as on one. Because every share of a segment is independent of the others (see
//! `parallel`), one thread can run all of them, in any order, and compute bit for bit what the
//! pool computes: the choice is free to change between any two runs of a phase, so it is made
//! from measurements instead of guessed from the load.
//!
//! The policy, per phase kind: run in the current mode and keep its last few times (per row, as
//! batches differ in length); every `probe_every` runs, run the other mode a few times (one,
//! when that one is clearly slower); switch when its mean beats the current mean by a margin.
//! Means, not medians: on a busy machine a run of the pool now and then waits a whole time
//! slice for a descheduled partner, and those rare stalls are most of what it costs. A probe that loses doubles the
//! interval up to a cap, so a machine that stays quiet (or stays busy) pays well under 1% for
//! the probing, while a change of load is noticed within a few seconds; sooner when it makes
//! the current mode markedly slower, which starts a probe at once.

use std::time::Duration;

/// Who runs the shares of a multi-threaded plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dispatch {
    /// Measured, phase by phase (the default).
    Adaptive,
    /// Always the worker pool, as planned.
    Pool,
    /// Always this thread alone; the workers sleep.
    Solo,
}

/// Who runs one run of a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runner {
    Pool,
    Solo,
}

impl Runner {
    fn other(self) -> Runner {
        match self {
            Runner::Pool => Runner::Solo,
            Runner::Solo => Runner::Pool,
        }
    }
}

/// Runs of the current mode whose times are kept.
const RECENT: usize = 8;
/// Runs of the other mode in one probe.
const PROBE_RUNS: usize = 3;
/// Runs between the start (or a switch) and the first probe.
const FIRST_PROBE: u32 = 16;
/// The longest interval between probes, in runs (about 2 s of training steps).
const MAX_PROBE_EVERY: u32 = 1024;
/// A probe run this many times slower than the current mean ends the probe: on a quiet
/// machine one thread takes about twice as long, and the runs left would only repeat it.
const CLEARLY_SLOWER: f64 = 1.5;
/// The current mode's mean this many times its settled value means the load changed.
const DEGRADED: f64 = 1.3;
/// The other mode must be this much faster to be chosen, so noise does not flip the choice.
const MARGIN: f64 = 0.93;

/// The measurements and the choice for one phase kind.
#[derive(Clone, Debug)]
pub struct Adapt {
    mode: Runner,
    /// Nanoseconds per row of the current mode's last runs (a ring).
    recent: [f64; RECENT],
    recent_len: usize,
    recent_next: usize,
    /// Runs of the current mode left before the next probe.
    until_probe: u32,
    probe_every: u32,
    /// Times of the running probe, when one runs.
    probe: [f64; PROBE_RUNS],
    probe_len: usize,
    probing: bool,
    /// The current mode's mean when it was last chosen (or first measured): runs getting
    /// `DEGRADED` times slower than this start a probe at once.
    settled: f64,
    /// Runs by mode, for reports.
    runs: [u64; 2],
}

impl Default for Adapt {
    fn default() -> Adapt {
        Adapt::new()
    }
}

impl Adapt {
    /// Starts with the pool, which a quiet machine prefers.
    pub fn new() -> Adapt {
        Adapt {
            mode: Runner::Pool,
            recent: [0.0; RECENT],
            recent_len: 0,
            recent_next: 0,
            until_probe: FIRST_PROBE,
            probe_every: FIRST_PROBE,
            probe: [0.0; PROBE_RUNS],
            probe_len: 0,
            probing: false,
            settled: f64::INFINITY,
            runs: [0; 2],
        }
    }

    /// The mode the next run uses.
    pub fn next(&self) -> Runner {
        if self.probing {
            self.mode.other()
        } else {
            self.mode
        }
    }

    /// Records that a run in `mode` (the one `next` gave) of `rows` rows took `elapsed`.
    pub fn record(&mut self, mode: Runner, rows: usize, elapsed: Duration) {
        self.runs[usize::from(mode == Runner::Solo)] += 1;
        let per_row = elapsed.as_secs_f64() * 1e9 / rows.max(1) as f64;
        if self.probing {
            self.probe[self.probe_len] = per_row;
            self.probe_len += 1;
            if self.probe_len == PROBE_RUNS || per_row > self.current() * CLEARLY_SLOWER {
                self.decide();
            }
            return;
        }
        self.recent[self.recent_next] = per_row;
        self.recent_next = (self.recent_next + 1) % RECENT;
        self.recent_len = (self.recent_len + 1).min(RECENT);
        self.until_probe = self.until_probe.saturating_sub(1);
        if self.recent_len == RECENT {
            let current = self.current();
            if self.settled.is_infinite() {
                self.settled = current;
            } else if current > self.settled * DEGRADED {
                // The load changed: look again now, and keep looking often for a while.
                self.until_probe = 0;
                self.probe_every = FIRST_PROBE / 2;
                self.settled = current;
            }
        }
        if self.until_probe == 0 {
            self.probing = true;
            self.probe_len = 0;
        }
    }

    /// The mean time per row of the current mode's recent runs.
    fn current(&self) -> f64 {
        mean(&self.recent[..self.recent_len])
    }

    /// Ends a probe: switch if the other mode was clearly faster, else probe less often.
    fn decide(&mut self) {
        self.probing = false;
        let other = mean(&self.probe[..self.probe_len]);
        if self.probe_len == PROBE_RUNS && other < self.current() * MARGIN {
            self.mode = self.mode.other();
            self.recent[..PROBE_RUNS].copy_from_slice(&self.probe);
            self.recent_len = PROBE_RUNS;
            self.recent_next = PROBE_RUNS;
            self.probe_every = FIRST_PROBE;
            self.settled = other;
        } else {
            self.probe_every = (self.probe_every * 2).min(MAX_PROBE_EVERY);
            self.settled = self.current();
        }
        self.until_probe = self.probe_every;
    }

    /// How many runs went to the pool and how many ran solo.
    pub fn runs(&self) -> (u64, u64) {
        (self.runs[0], self.runs[1])
    }
}

/// The mean of `xs`; `f64::INFINITY` for none.
fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::INFINITY;
    }
    xs.iter().sum::<f64>() / xs.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `n` phases, each taking `time(mode)` microseconds per row; returns the modes used.
    fn drive(a: &mut Adapt, n: usize, time: impl Fn(Runner) -> u64) -> Vec<Runner> {
        (0..n)
            .map(|_| {
                let mode = a.next();
                a.record(mode, 1, Duration::from_micros(time(mode)));
                mode
            })
            .collect()
    }

    fn solo_share(modes: &[Runner]) -> f64 {
        modes.iter().filter(|m| **m == Runner::Solo).count() as f64 / modes.len() as f64
    }

    #[test]
    fn a_quiet_machine_keeps_the_pool_and_probes_ever_less() {
        let mut a = Adapt::new();
        let modes = drive(
            &mut a,
            20_000,
            |m| if m == Runner::Pool { 100 } else { 135 },
        );
        assert_eq!(a.next(), Runner::Pool);
        // Probes at 16, 32, 64, ... then every 1024 runs, three runs each.
        assert!(solo_share(&modes) < 0.01, "{}", solo_share(&modes));
        // Once probing is at its slowest, a window of 10,000 runs holds at most one probe per
        // 1,024 pool runs (plus one the window may cut into).
        let late_solo = modes[10_000..]
            .iter()
            .filter(|m| **m == Runner::Solo)
            .count();
        assert!(
            late_solo <= 3 * (10_000 / MAX_PROBE_EVERY as usize + 1),
            "{late_solo}"
        );
    }

    #[test]
    fn a_pool_that_slows_down_is_probed_at_once() {
        let mut a = Adapt::new();
        // Quiet for long enough that probes are 1024 runs apart, then partners stall.
        drive(&mut a, 5_000, |m| if m == Runner::Pool { 100 } else { 180 });
        assert_eq!(a.next(), Runner::Pool);
        let modes = drive(&mut a, 40, |m| if m == Runner::Pool { 400 } else { 180 });
        assert_eq!(a.next(), Runner::Solo, "{modes:?}");
    }

    #[test]
    fn a_probe_clearly_slower_stops_after_one_run() {
        let mut a = Adapt::new();
        let modes = drive(
            &mut a,
            20_000,
            |m| if m == Runner::Pool { 100 } else { 200 },
        );
        let solo = modes.iter().filter(|m| **m == Runner::Solo).count();
        // One run per probe: at 16, 32, ..., 1024, then every 1024 runs.
        assert_eq!(solo, 7 + (20_000 - 2032) / 1025, "{solo}");
        assert!(modes.windows(2).all(|w| w != [Runner::Solo, Runner::Solo]));
    }

    #[test]
    fn a_busy_machine_moves_to_one_thread_after_the_first_probe() {
        let mut a = Adapt::new();
        let modes = drive(&mut a, 5_000, |m| if m == Runner::Pool { 400 } else { 110 });
        assert!(modes[..FIRST_PROBE as usize]
            .iter()
            .all(|m| *m == Runner::Pool));
        assert_eq!(modes[FIRST_PROBE as usize], Runner::Solo);
        assert!(
            modes[FIRST_PROBE as usize..]
                .iter()
                .filter(|m| **m == Runner::Pool)
                .count()
                < 60
        );
        assert_eq!(a.next(), Runner::Solo);
    }

    #[test]
    fn the_choice_follows_a_change_of_load() {
        let mut a = Adapt::new();
        drive(&mut a, 3_000, |m| if m == Runner::Pool { 400 } else { 110 });
        assert_eq!(a.next(), Runner::Solo);
        // The other work ends: the pool wins the next probe, at most 1,024 + 3 runs later.
        let modes = drive(&mut a, 1_100, |m| if m == Runner::Pool { 80 } else { 110 });
        let back = modes
            .iter()
            .rposition(|m| *m == Runner::Solo)
            .expect("solo ran");
        assert!(back < 1_030, "still solo at run {back}");
        assert_eq!(a.next(), Runner::Pool);
    }

    #[test]
    fn noise_within_the_margin_does_not_switch() {
        let mut a = Adapt::new();
        drive(&mut a, 5_000, |m| if m == Runner::Pool { 100 } else { 96 });
        assert_eq!(a.next(), Runner::Pool);
        let (pool, solo) = a.runs();
        assert_eq!(pool + solo, 5_000);
    }
}
