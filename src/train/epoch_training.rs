//! One epoch of a training run before its validation: the loss terms summed over its
//! batches, its learning rate, its time and how much of it went to waiting for data,
//! carried across a resume inside the epoch.

use std::time::{Duration, Instant};

use super::checkpoints::EpochProgress;
use super::step::BatchLoss;

/// One epoch's training, before validation.
pub(super) struct EpochTraining {
    started: Instant,
    /// Seconds of this epoch before a resume.
    seconds_before: f64,
    /// Loss, focal, dice and IoU terms summed over batches.
    pub(super) sums: [f64; 4],
    pub(super) batches: usize,
    pub(super) lr: f64,
    /// Time the steps waited for their data (`waited_before` of it before a resume).
    pub(super) waited: Duration,
    pub(super) waited_before: Duration,
    pub(super) interrupted: bool,
}

impl EpochTraining {
    pub(super) fn new(lr: f64) -> Self {
        Self {
            started: Instant::now(),
            seconds_before: 0.0,
            sums: [0.0; 4],
            batches: 0,
            lr,
            waited: Duration::ZERO,
            waited_before: Duration::ZERO,
            interrupted: false,
        }
    }

    pub(super) fn resumed(progress: EpochProgress) -> Self {
        let waited = Duration::from_secs_f64(progress.data_wait_seconds);
        Self {
            seconds_before: progress.seconds,
            sums: progress.sums,
            batches: progress.batches,
            waited,
            waited_before: waited,
            ..Self::new(progress.lr)
        }
    }

    pub(super) fn seconds(&self) -> f64 {
        self.seconds_before + self.started.elapsed().as_secs_f64()
    }

    /// Where the epoch stands, for a resume inside it.
    pub(super) fn progress(&self) -> EpochProgress {
        EpochProgress {
            batches: self.batches,
            sums: self.sums,
            lr: self.lr,
            seconds: self.seconds(),
            data_wait_seconds: self.waited.as_secs_f64(),
        }
    }

    pub(super) fn record(&mut self, batch: BatchLoss) {
        self.sums[0] += batch.loss;
        for k in 0..3 {
            self.sums[k + 1] += batch.parts[k];
        }
        self.batches += 1;
    }

    /// The share of the epoch's training time spent waiting for data.
    pub(super) fn wait_share(&self) -> f64 {
        self.waited.as_secs_f64() / self.seconds().max(1e-9)
    }
}
