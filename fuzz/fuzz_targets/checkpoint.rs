//! Fuzz target `checkpoint`: arbitrary bytes as a run's `checkpoint/trainer.json`, read back the
//! way `netc run --resume` reads it (`checkpoint::parse_trainer_json`). A tampered or damaged
//! file must be an error naming what is wrong, never a panic (`partial.seconds: -1` once
//! panicked in `Duration::from_secs_f64` on resume); a file it accepts must hold numbers a
//! resume can use, which the assertions below restate. The corpus is seeded with real
//! trainer.json files (`fuzz/seeds/checkpoint/`).

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use netc_runtime::checkpoint::{parse_trainer_json, MAX_SECONDS};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(state) = parse_trainer_json(text) else {
        return;
    };
    // What a resume does with the times: clock arithmetic on durations.
    assert!(
        (0.0..=MAX_SECONDS).contains(&state.seconds),
        "{}",
        state.seconds
    );
    let total = Duration::from_secs_f64(state.seconds);
    let loop_state = &state.loop_state;
    if let Some(p) = &loop_state.partial {
        assert!((0.0..=MAX_SECONDS).contains(&p.seconds), "{}", p.seconds);
        let _ = total + Duration::from_secs_f64(p.seconds);
        assert!(p.correct <= p.seen && p.loss_sum.is_finite() && p.lr.is_finite());
    }
    // One history row per completed epoch, as the loop appends them.
    assert_eq!(loop_state.history.epochs.len(), loop_state.epochs_completed);
    // The current state is the last good one plus the steps of the epoch in progress.
    let partial_steps = loop_state.partial.map_or(0, |p| p.steps as u64);
    assert_eq!(state.state_step, state.last_good_step + partial_steps);
});
