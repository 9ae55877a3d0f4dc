//! What a run tells as it goes: `train.log` (every line also on stderr) and TensorBoard
//! scalars and overlay pictures.

use std::path::Path;

use tensorboard_rs::summary_writer::SummaryWriter;

use image::RgbImage;

use super::checkpoints::EpochRecord;
use crate::error::{Context, Result};

/// `train.log` and the run's TensorBoard event file.
pub struct RunLog {
    file: std::fs::File,
    pub tensorboard: SummaryWriter,
    /// The name of the first loss term: `focal` (promptable), `ce` (semantic).
    pub first_term: &'static str,
}

impl RunLog {
    /// Appends to `<run>/train.log`; TensorBoard events go to `<run>/tensorboard`.
    pub fn open(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join("train.log");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self {
            file,
            tensorboard: SummaryWriter::new(run_dir.join("tensorboard")),
            first_term: "focal",
        })
    }

    pub fn line(&mut self, text: &str) {
        use std::io::Write;
        eprintln!("{text}");
        let _ = writeln!(self.file, "{text}");
    }

    /// The per-step scalars of a batch.
    pub fn step(&mut self, step: usize, loss: f64, parts: [f64; 3], lr: f64) {
        let tb = &mut self.tensorboard;
        tb.add_scalar("train/loss", loss as f32, step);
        for (tag, value) in ["train/step_focal", "train/step_dice", "train/step_iou_mse"]
            .iter()
            .zip(parts)
        {
            tb.add_scalar(tag, value as f32, step);
        }
        tb.add_scalar("train/lr", lr as f32, step);
    }

    /// The per-epoch scalars, and the epoch's line in `train.log`.
    pub fn epoch(&mut self, record: &EpochRecord) {
        let val = &record.val;
        for (tag, value) in [
            ("train/epoch_loss", record.train_loss),
            ("train/focal", record.train_focal),
            ("train/dice", record.train_dice),
            ("train/iou_mse", record.train_iou_mse),
            ("val/miou", val.mean_iou),
            ("val/dice", val.mean_dice),
            ("val/iou_prediction_error", val.iou_prediction_error),
            ("train/data_wait_seconds", record.data_wait_seconds),
        ] {
            self.tensorboard.add_scalar(tag, value as f32, record.epoch);
        }
        self.line(&format!(
            "epoch {}: loss {:.4} ({} {:.4}, dice {:.4}, iou {:.4}), lr {:.2e}, val mIoU {:.4}, Dice {:.4}, {:.1}s (data wait {:.2}s)",
            record.epoch,
            record.train_loss,
            self.first_term,
            record.train_focal,
            record.train_dice,
            record.train_iou_mse,
            record.lr,
            val.mean_iou,
            val.mean_dice,
            record.seconds,
            record.data_wait_seconds
        ));
    }

    /// A validation image drawn with this epoch's predictions.
    pub fn overlay(&mut self, name: &str, picture: &RgbImage, epoch: usize) {
        let (w, h) = (picture.width() as usize, picture.height() as usize);
        // TensorBoard images are [C, H, W]; tensorboard-rs wants the raw bytes channel-first
        let mut chw = vec![0u8; 3 * w * h];
        for (i, p) in picture.pixels().enumerate() {
            for c in 0..3 {
                chw[c * w * h + i] = p[c];
            }
        }
        self.tensorboard
            .add_image(&format!("val/{name}"), &chw, &[3, h, w], epoch);
    }
}
