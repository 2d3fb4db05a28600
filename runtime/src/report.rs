//! What a run records: per-epoch history, the run summary, and writing them to disk atomically.
//!
//! The types here are the contract between the training loop (which fills them), the CLI (which
//! prints them) and `compare`/`plot` (which read them back from run directories).

use serde::{Deserialize, Serialize};

/// One row of `history.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Learning rate at the end of the epoch.
    pub lr: f32,
    /// Mean training loss over the epoch's steps (weighted by batch size).
    pub loss: f32,
    pub accuracy: f32,
    pub val_loss: f32,
    pub val_accuracy: f32,
    /// Wall-clock seconds of the epoch's training steps and validation.
    pub seconds: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    pub epochs: Vec<EpochRecord>,
}

/// Why training ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StopReason {
    /// All epochs ran.
    Completed,
    /// Early stopping: the monitored metric did not improve for `patience` epochs.
    EarlyStopping { patience: usize },
    /// The loss became NaN or infinite at this (0-based, global) step; the last good weights kept.
    Diverged { step: u64, epoch: usize },
}

/// Sparsity of one dense kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSparsity {
    pub layer: String,
    /// Fraction of weights that are exactly zero.
    pub zero_fraction: f64,
}

/// `summary.json` and the `--json` line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub spec: String,
    pub model: String,
    pub backend: String,
    pub seed: u64,
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub best_val_acc: f64,
    pub best_val_loss: f64,
    pub test_acc: f64,
    pub test_loss: f64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mc_test_acc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mc_samples: Option<usize>,
    /// Share of exactly-zero weights over all dense kernels (after pruning, when pruning ran).
    pub sparsity: f64,
    pub layer_sparsity: Vec<LayerSparsity>,
    /// Test accuracy before pruning, when the spec prunes (`test_acc` is then after pruning).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub unpruned_test_acc: Option<f64>,
    pub param_count: usize,
    pub trainable_params: usize,
    /// Median seconds per epoch.
    pub sec_per_epoch: f64,
    pub total_seconds: f64,
    pub compile_ms: f64,
    pub peak_rss_mb: f64,
    pub stop: StopReason,
    pub run_dir: String,
}
