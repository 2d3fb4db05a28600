//! netc's runtime: everything around the kernels. CIFAR-10 data, the training loop, schedules,
//! early stopping, evaluation (MC Dropout, pruning), and what a run leaves behind: history,
//! summary, plots and weights.
//!
//! Architecture invariant: the runtime sees only the IR (`netc_ir::ir`) and the `Backend`
//! trait, never the AST or a backend's internals.

pub mod augment;
#[cfg(test)]
mod augment_tests;
pub mod bench;
pub mod checkpoint;
pub mod compare;
pub mod data;
pub mod fetch;
pub mod lr_find;
pub mod plot;
pub mod progress;
pub mod report;
pub mod run;
pub mod schedule;
pub mod sweep;
pub mod train;
pub mod weights;
