//! The CLI's `Reporter`: the runtime's lines on stderr, and its tasks as indicatif progress bars
//! (drawn only when stderr is a terminal, so logs keep just the lines).

use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use netc_runtime::progress::{Report, Reporter, Task, TaskProgress, Unit};

/// Reports on stderr; `quiet` reports nothing.
pub fn stderr_report(quiet: bool) -> Report {
    if quiet {
        Report::silent()
    } else {
        Report::to(Arc::new(Stderr))
    }
}

struct Stderr;

impl Reporter for Stderr {
    fn line(&self, text: &str) {
        eprintln!("{text}");
    }

    fn task(&self, task: Task) -> Box<dyn TaskProgress> {
        let bar = ProgressBar::with_draw_target(task.total, ProgressDrawTarget::stderr());
        let template = match (task.unit, task.total.is_some()) {
            (Unit::Steps, _) => "{prefix} [{bar:30}] {pos}/{len}  eta {eta}  {msg}",
            (Unit::Bytes, true) => {
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
            }
            (Unit::Bytes, false) => "{prefix} {bytes} {bytes_per_sec}",
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(task.label);
        bar.set_position(task.done);
        Box::new(Bar(bar))
    }
}

struct Bar(ProgressBar);

impl TaskProgress for Bar {
    fn set(&self, done: u64) {
        self.0.set_position(done);
    }

    fn message(&self, text: String) {
        self.0.set_message(text);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
