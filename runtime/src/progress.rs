//! How the runtime tells the user how a long operation goes, without printing itself.
//!
//! Libraries never print (a workspace lint denies it): training, evaluation and downloads call
//! a `Reporter`, which the CLI implements on stderr (lines, and progress bars on a terminal),
//! and which tests implement to see what a user would have been told. `Report` is what the
//! options structs hold: a reporter, or nothing (the default, and `--quiet`).

use std::fmt;
use std::sync::Arc;

/// What a long task counts, which decides how its progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Training steps of an epoch.
    Steps,
    /// Bytes of a download.
    Bytes,
}

/// A task whose progress is reported as it goes: an epoch's steps, a download's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// What it is: `epoch 3/10`, `cifar-10-binary.tar.gz`.
    pub label: String,
    /// Units in all, when known.
    pub total: Option<u64>,
    /// Units done before the task starts (a resumed epoch or download).
    pub done: u64,
    pub unit: Unit,
}

/// The progress of one task, until `finish`.
pub trait TaskProgress {
    /// `done` units are done.
    fn set(&self, done: u64);
    /// The task's current figures (`loss 1.2345  acc 0.4321 ...`).
    fn message(&self, text: String);
    /// The task ended (or stopped): whatever showed its progress goes away.
    fn finish(&self);
}

/// Where the runtime's messages go. Implementations must tolerate calls from the thread that
/// trains only; nothing calls them concurrently.
pub trait Reporter: Send + Sync {
    /// One line for the log: an epoch's results, an early stop, a divergence, a test result.
    fn line(&self, text: &str);
    /// A task starts; its progress goes to what this returns.
    fn task(&self, task: Task) -> Box<dyn TaskProgress>;
}

/// A reporter, or none: what the options of a run, a training loop or a download hold.
#[derive(Clone, Default)]
pub struct Report(Option<Arc<dyn Reporter>>);

impl Report {
    /// Messages and progress go to `reporter`.
    pub fn to(reporter: Arc<dyn Reporter>) -> Report {
        Report(Some(reporter))
    }

    /// Nothing is reported.
    pub const fn silent() -> Report {
        Report(None)
    }

    pub fn is_silent(&self) -> bool {
        self.0.is_none()
    }

    pub fn line(&self, text: &str) {
        if let Some(r) = &self.0 {
            r.line(text);
        }
    }

    pub fn task(&self, task: Task) -> Box<dyn TaskProgress> {
        match &self.0 {
            Some(r) => r.task(task),
            None => Box::new(NoProgress),
        }
    }
}

impl fmt::Debug for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_silent() {
            "Report(silent)"
        } else {
            "Report(..)"
        })
    }
}

/// Two reports are equal when both are silent or both go to the same reporter.
impl PartialEq for Report {
    fn eq(&self, other: &Report) -> bool {
        match (&self.0, &other.0) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for Report {}

struct NoProgress;

impl TaskProgress for NoProgress {
    fn set(&self, _: u64) {}
    fn message(&self, _: String) {}
    fn finish(&self) {}
}

/// A reporter that keeps what it is told, for tests.
#[cfg(test)]
pub(crate) mod recording {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Recording {
        pub lines: Mutex<Vec<String>>,
        pub tasks: Mutex<Vec<Task>>,
    }

    impl Reporter for Recording {
        fn line(&self, text: &str) {
            self.lines.lock().unwrap().push(text.to_owned());
        }

        fn task(&self, task: Task) -> Box<dyn TaskProgress> {
            self.tasks.lock().unwrap().push(task);
            Box::new(NoProgress)
        }
    }
}
