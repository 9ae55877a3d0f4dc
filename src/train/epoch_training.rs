//! One epoch of a training run before its validation: the loss terms summed over its
//! batches (read back from the device now and then, not at every batch), its learning
//! rate, its time and how much of it went to waiting for data, carried across a resume
//! inside the epoch.

use std::time::{Duration, Instant};

use super::checkpoints::EpochProgress;
use super::step::{BatchLoss, PendingLoss};
use crate::error::Result;

/// How often batch losses are read back from the device. Each read waits for the device
/// to finish all the work queued so far, and a GPU then idles until new work arrives:
/// once a second costs nothing measurable and still moves the progress bar, while the
/// log and TensorBoard get every batch (late by at most this much).
const READ_INTERVAL: Duration = Duration::from_secs(1);

/// A trained batch whose loss is read back.
pub(super) struct TrainedBatch {
    /// Its position in the epoch, from 1.
    pub(super) position: usize,
    /// The optimizer steps taken when it was done.
    pub(super) step: usize,
    pub(super) lr: f64,
    pub(super) loss: BatchLoss,
}

/// A trained batch whose loss is still on the device.
struct UnreadBatch {
    loss: PendingLoss,
    step: usize,
    lr: f64,
    /// After an optimizer step (no gradients pending): the epoch's time and data wait at
    /// that point, where a resume could continue.
    commit: Option<(f64, Duration)>,
}

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
    /// Trained batches whose losses are not read yet, in order (not in `sums`/`batches`).
    unread: Vec<UnreadBatch>,
    last_read: Instant,
    /// Where a resume would continue: after the last optimizer step among the read
    /// batches.
    pub(super) committed: Option<EpochProgress>,
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
            unread: Vec::new(),
            last_read: Instant::now(),
            committed: None,
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
            committed: (progress.batches > 0).then(|| progress.clone()),
            ..Self::new(progress.lr)
        }
    }

    pub(super) fn seconds(&self) -> f64 {
        self.seconds_before + self.started.elapsed().as_secs_f64()
    }

    /// Where the epoch stands, for a resume inside it (its losses all read).
    pub(super) fn progress(&self) -> EpochProgress {
        debug_assert!(self.unread.is_empty(), "progress with unread losses");
        EpochProgress {
            batches: self.batches,
            sums: self.sums,
            lr: self.lr,
            seconds: self.seconds(),
            data_wait_seconds: self.waited.as_secs_f64(),
        }
    }

    /// A trained batch, its loss still on the device; `step` and `lr` after it, and
    /// whether it ended with an optimizer step.
    pub(super) fn push(&mut self, loss: PendingLoss, step: usize, lr: f64, committed: bool) {
        let commit = committed.then(|| (self.seconds(), self.waited));
        self.unread.push(UnreadBatch {
            loss,
            step,
            lr,
            commit,
        });
    }

    /// Whether it is time to read the losses back (see [`READ_INTERVAL`]).
    pub(super) fn read_due(&self) -> bool {
        !self.unread.is_empty() && self.last_read.elapsed() >= READ_INTERVAL
    }

    /// The losses of the batches pushed since the last read, in one transfer, recorded
    /// in the sums.
    pub(super) fn read(&mut self) -> Result<Vec<TrainedBatch>> {
        self.last_read = Instant::now();
        let (meta, losses): (Vec<_>, Vec<_>) = std::mem::take(&mut self.unread)
            .into_iter()
            .map(|b| ((b.step, b.lr, b.commit), b.loss))
            .unzip();
        let losses = PendingLoss::read_all(losses)?;
        let mut read = Vec::with_capacity(losses.len());
        for ((step, lr, commit), loss) in meta.into_iter().zip(losses) {
            self.record(loss);
            if let Some((seconds, waited)) = commit {
                self.committed = Some(EpochProgress {
                    batches: self.batches,
                    sums: self.sums,
                    lr,
                    seconds,
                    data_wait_seconds: waited.as_secs_f64(),
                });
            }
            read.push(TrainedBatch {
                position: self.batches,
                step,
                lr,
                loss,
            });
        }
        Ok(read)
    }

    fn record(&mut self, batch: BatchLoss) {
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
