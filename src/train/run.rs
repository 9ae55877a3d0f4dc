//! A training run in progress: its folders and log, the model and optimizer, the data,
//! the embedding cache and the loop state, with one method per phase of `train()`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::checkpoints::{load_resume, save_epoch, save_resume, EpochRecord, RunDirs, TrainState};
use super::config::TrainConfig;
use super::examples::make_example;
use super::log::RunLog;
use super::optim::adamw;
use super::report::{final_report, write_val_report, TrainReport};
use super::schedule::lr_at;
use super::step::{BatchLoss, Stepper};
use crate::data::dataset::{prepare, Prepared};
use crate::device::ChosenDevice;
use crate::error::{bail, Context, Result};
use crate::eval::evaluate::{evaluate, flatten, EvalSettings, ImageEval};
use crate::eval::metrics::{Aggregate, Summary};
use crate::fsutil::{file_sha256, write_bytes_atomic};
use crate::model::{Architecture, Sam};
use crate::predict::EmbeddingCache;
use crate::weights::load_sam;

/// The train and validation images with their objects decoded.
pub struct RunData {
    pub train: Vec<Prepared>,
    pub val: Vec<Prepared>,
}

impl RunData {
    /// Reads the dataset of `config`; images without objects are left out (and said).
    pub fn load(config: &TrainConfig, log: &mut RunLog) -> Result<Self> {
        let d = &config.data;
        let split = d.open()?;
        let (train, skipped_train, dropped_train) = prepare(&split.train, d.min_area)?;
        let (val, skipped_val, dropped_val) = prepare(&split.val, d.min_area)?;
        if train.is_empty() {
            bail!(
                "no training images with objects of at least {} px",
                d.min_area
            );
        }
        if dropped_train + dropped_val > 0 {
            eprintln!(
                "{} image(s) without objects left out",
                dropped_train + dropped_val
            );
        }
        let objects = |s: &[Prepared]| s.iter().map(|p| p.objects.len()).sum::<usize>();
        log.line(&format!(
            "data: {} train images ({} objects), {} val images ({} objects); {} objects below {} px skipped",
            train.len(),
            objects(&train),
            val.len(),
            objects(&val),
            skipped_train + skipped_val,
            d.min_area
        ));
        Ok(Self { train, val })
    }
}

/// How the epoch loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Finished,
    /// Ctrl-C, or `train.stop_after_epochs`: resumable.
    Interrupted,
    /// `train.patience` epochs without a better validation mIoU.
    StoppedEarly,
}

/// One epoch's training, before validation.
struct EpochTraining {
    started: Instant,
    /// Loss, focal, dice and IoU terms summed over batches.
    sums: [f64; 4],
    batches: usize,
    lr: f64,
    interrupted: bool,
}

pub struct Run<'a> {
    pub config: &'a TrainConfig,
    pub dirs: RunDirs,
    pub log: RunLog,
    /// On the main autodiff device.
    model: Sam,
    architecture: Architecture,
    optim: ModuleOptimizer,
    pub state: TrainState,
    pub data: RunData,
    /// The frozen image encoder (the whole model without autodiff), when it is frozen:
    /// its embeddings are constants for the graph.
    frozen: Option<Sam>,
    cache: Option<EmbeddingCache>,
    /// The main device, without autodiff.
    device: Device,
    stepper: Stepper,
}

impl<'a> Run<'a> {
    /// Creates (or, with `resume`, reopens) the run folder, reads the data, loads the
    /// model and, on resume, the saved weights, optimizer and loop state.
    pub fn start(
        config: &'a TrainConfig,
        resume: bool,
        devices: Vec<ChosenDevice>,
    ) -> Result<Self> {
        let dirs = RunDirs::of(config);
        if !resume && dirs.state_path().exists() {
            bail!(
                "run folder {} already holds a run; pass --resume to continue it, or choose another name (name=...)",
                dirs.run.display()
            );
        }
        std::fs::create_dir_all(&dirs.resume)
            .with_context(|| format!("creating {}", dirs.checkpoints.display()))?;
        write_bytes_atomic(&dirs.run.join("config.toml"), config.to_toml()?.as_bytes())?;
        let mut log = RunLog::open(&dirs.run)?;
        let names: Vec<&str> = devices.iter().map(|d| d.description.as_str()).collect();
        log.line(&format!("device: {}", names.join(", ")));
        let device = devices[0].device.clone();
        let data = RunData::load(config, &mut log)?;

        let autodiff = device.clone().autodiff();
        let (model, architecture) =
            load_sam(&config.model.checkpoint, config.model.variant, &autodiff)?;
        let model = freeze(model, config);
        let base_sha = file_sha256(&config.model.checkpoint)?;
        let (model, optim, state) = if resume {
            let (model, optim, state) = load_resume(&dirs, model, config, &base_sha)?;
            log.line(&format!(
                "resumed after epoch {} (step {})",
                state.epoch, state.step
            ));
            (model, optim, state)
        } else {
            let state = TrainState {
                base_checkpoint_sha256: base_sha,
                ..TrainState::default()
            };
            let optim = adamw(&model, &config.train);
            (model, optim, state)
        };
        let trainable = config.model.trainable;
        let frozen = trainable.encoder_frozen().then(|| model.valid());
        let cache = if config.cache.enabled && trainable.encoder_frozen() {
            Some(EmbeddingCache::open(
                &config.cache.dir,
                &config.model.checkpoint,
                &architecture,
                config.data.intensity,
            )?)
        } else {
            None
        };
        let replicas: Vec<Device> = devices
            .iter()
            .map(|d| d.device.clone().autodiff())
            .collect();
        if replicas.len() > 1 {
            log.line(&format!("data parallel on {} devices", replicas.len()));
        }
        Ok(Self {
            config,
            dirs,
            log,
            model,
            architecture,
            optim,
            state,
            data,
            frozen,
            cache,
            device,
            stepper: Stepper::new(replicas),
        })
    }

    fn eval_settings(&self, keep_masks: bool, progress: bool) -> EvalSettings<'_> {
        EvalSettings {
            cache: self.cache.as_ref(),
            intensity: self.config.data.intensity,
            prompts: &self.config.prompts,
            seed: self.config.train.seed,
            keep_masks,
            progress,
        }
    }

    /// The base model on the validation set, once per run (kept across resumes).
    pub fn zero_shot(&mut self) -> Result<()> {
        if !self.config.report.zero_shot
            || self.state.zero_shot.is_some()
            || self.data.val.is_empty()
        {
            return Ok(());
        }
        let evals = evaluate(
            &self.model.valid(),
            &self.data.val,
            &self.eval_settings(false, true),
        )?;
        let summary = Aggregate::of(&flatten(&evals)).overall;
        self.log.line(&format!(
            "zero-shot val: mIoU {:.4}, Dice {:.4}",
            summary.mean_iou, summary.mean_dice
        ));
        self.log
            .tensorboard
            .add_scalar("val/miou", summary.mean_iou as f32, 0);
        self.state.zero_shot = Some(summary);
        Ok(())
    }

    fn batches_per_epoch(&self) -> usize {
        self.data
            .train
            .len()
            .div_ceil(self.config.train.images_per_batch)
    }

    fn total_steps(&self) -> usize {
        let steps_per_epoch = self
            .batches_per_epoch()
            .div_ceil(self.config.train.grad_accumulation);
        steps_per_epoch * self.config.train.epochs
    }

    fn lr(&self) -> f64 {
        let t = &self.config.train;
        lr_at(
            self.state.step,
            self.total_steps(),
            t.lr,
            t.warmup_fraction,
            t.min_lr_ratio,
        )
    }

    /// Every remaining epoch: train, validate, save; until the last epoch, an early stop,
    /// `train.stop_after_epochs` or Ctrl-C.
    pub fn epochs(&mut self, interrupt: &AtomicBool) -> Result<Ending> {
        let first_epoch = self.state.epoch;
        while self.state.epoch < self.config.train.epochs {
            let limit = self.config.train.stop_after_epochs;
            if limit > 0 && self.state.epoch - first_epoch >= limit {
                self.log.line(&format!(
                    "stopping after {limit} epoch(s) as configured; continue with --resume"
                ));
                return Ok(Ending::Interrupted);
            }
            let training = self.train_epoch(interrupt)?;
            if training.interrupted {
                // the epoch is not complete: keep the state at its start, with the new weights
                self.save_resume()?;
                self.log.line(&format!(
                    "interrupted in epoch {}: saved a resumable checkpoint in {}",
                    self.state.epoch + 1,
                    self.dirs.resume.display()
                ));
                return Ok(Ending::Interrupted);
            }
            self.end_epoch(training)?;
            let patience = self.config.train.patience;
            if patience > 0 && self.state.epochs_without_improvement >= patience {
                self.log.line(&format!(
                    "early stop: no better val mIoU for {patience} epochs"
                ));
                return Ok(Ending::StoppedEarly);
            }
            if interrupt.load(Ordering::SeqCst) {
                return Ok(Ending::Interrupted);
            }
        }
        Ok(Ending::Finished)
    }

    /// The batches of the current epoch, in a seeded order, each an optimizer step (or a
    /// share of one with gradient accumulation). Ctrl-C stops after the next step.
    fn train_epoch(&mut self, interrupt: &AtomicBool) -> Result<EpochTraining> {
        let config = self.config;
        let epoch = self.state.epoch;
        let started = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(
            config
                .train
                .seed
                .wrapping_add(1_000_003 * (epoch as u64 + 1)),
        );
        let mut order: Vec<usize> = (0..self.data.train.len()).collect();
        order.shuffle(&mut rng);
        let batches_per_epoch = self.batches_per_epoch();
        let bar = epoch_bar(batches_per_epoch, epoch, config.train.epochs);
        let mut out = EpochTraining {
            started,
            sums: [0.0; 4],
            batches: 0,
            lr: self.lr(),
            interrupted: false,
        };
        for (batch_index, chunk) in order.chunks(config.train.images_per_batch).enumerate() {
            // examples are drawn here, in image order, so that the data and the random
            // stream do not depend on how many devices share the batch
            let mut examples = Vec::with_capacity(chunk.len());
            for &index in chunk {
                let example = make_example(
                    &self.model,
                    self.frozen.as_ref(),
                    &self.data.train[index],
                    self.cache.as_ref(),
                    config,
                    &mut rng,
                    &self.device,
                )?;
                examples.push((example, rng.random::<u64>()));
            }
            let batch = self.stepper.batch(&self.model, examples, config)?;
            if !batch.loss.is_finite() {
                bail!(
                    "epoch {} batch {}: the loss is {} (diverged); the last good checkpoint is kept in {}. Lower train.lr or check the data",
                    epoch + 1,
                    batch_index + 1,
                    batch.loss,
                    self.dirs.checkpoints.display()
                );
            }
            if self
                .stepper
                .due(config, batch_index + 1 == batches_per_epoch)
            {
                out.lr = self.lr();
                let model = self.model.clone();
                self.model = self.stepper.apply(model, &mut self.optim, out.lr, config);
                self.state.step += 1;
            }
            self.record_batch(&mut out, batch);
            bar.set_message(format!("loss {:.4}", out.sums[0] / out.batches as f64));
            bar.inc(1);
            if interrupt.load(Ordering::SeqCst) && !self.stepper.has_pending() {
                out.interrupted = true;
                break;
            }
        }
        bar.finish_and_clear();
        Ok(out)
    }

    fn record_batch(&mut self, epoch: &mut EpochTraining, batch: BatchLoss) {
        epoch.sums[0] += batch.loss;
        for k in 0..3 {
            epoch.sums[k + 1] += batch.parts[k];
        }
        epoch.batches += 1;
        self.log
            .step(self.state.step, batch.loss, batch.parts, epoch.lr);
        self.state
            .step_losses
            .push((self.state.step, batch.loss as f32));
    }

    /// Validation, the epoch's record, checkpoints and resume state.
    fn end_epoch(&mut self, training: EpochTraining) -> Result<()> {
        let epoch = self.state.epoch;
        let n = training.batches.max(1) as f64;
        let valid = self.model.valid();
        let (val, evals) = self.validate(&valid)?;
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss: training.sums[0] / n,
            train_focal: training.sums[1] / n,
            train_dice: training.sums[2] / n,
            train_iou_mse: training.sums[3] / n,
            lr: training.lr,
            val: val.clone(),
            seconds: training.started.elapsed().as_secs_f64(),
        };
        self.log.epoch(&record);
        self.log.overlays(
            &self.data.val,
            &evals,
            self.config.report.overlays_per_epoch,
            self.config.data.intensity,
            epoch + 1,
        )?;
        self.state.history.push(record);
        self.state.epoch += 1;
        let improved = self.state.best_miou.is_none_or(|b| val.mean_iou > b);
        if improved {
            self.state.best_miou = Some(val.mean_iou);
            self.state.best_epoch = Some(epoch + 1);
            self.state.epochs_without_improvement = 0;
        } else {
            self.state.epochs_without_improvement += 1;
        }
        save_epoch(
            &valid,
            &self.architecture,
            self.config,
            &self.state,
            &self.dirs.checkpoints,
            improved,
        )?;
        if improved {
            write_val_report(&self.dirs.report(), &self.state, &flatten(&evals))?;
        }
        self.save_resume()
    }

    /// The current model on the validation set (masks kept for the overlays).
    fn validate(&self, valid: &Sam) -> Result<(Summary, Vec<ImageEval>)> {
        if self.data.val.is_empty() {
            return Ok((Summary::default(), Vec::new()));
        }
        let evals = evaluate(valid, &self.data.val, &self.eval_settings(true, false))?;
        Ok((Aggregate::of(&flatten(&evals)).overall, evals))
    }

    fn save_resume(&self) -> Result<()> {
        save_resume(
            &self.model,
            &self.optim,
            &self.state,
            &self.dirs.resume,
            self.config.model.trainable,
        )
    }

    /// The end-of-run report (when the run finished and has validation images) and the
    /// cache statistics.
    pub fn finish(&mut self, ending: Ending) -> Result<Option<TrainReport>> {
        let report = if ending == Ending::Interrupted
            || self.state.best_epoch.is_none()
            || self.data.val.is_empty()
        {
            None
        } else {
            let report = final_report(
                self.config,
                &self.dirs,
                &self.state,
                &self.data.val,
                &self.eval_settings(false, false),
                &self.device,
            )?;
            self.log.line(&format!(
                "report: val mIoU zero-shot {:.4} -> fine-tuned {:.4} ({:+.4}): {}",
                report.zero_shot.overall.mean_iou,
                report.fine_tuned.overall.mean_iou,
                report.gain(),
                self.dirs.report().join("report.html").display()
            ));
            Some(report)
        };
        if let Some(cache) = &self.cache {
            let (hits, misses) = cache.stats();
            self.log.line(&format!(
                "embedding cache {}: {hits} hits, {misses} misses",
                cache.dir().display()
            ));
        }
        Ok(report)
    }
}

/// The model with what `model.trainable` leaves out frozen; the prompt encoder's
/// positional-encoding matrix is a buffer upstream and never trains.
pub fn freeze(mut model: Sam, config: &TrainConfig) -> Sam {
    let trainable = config.model.trainable;
    if trainable.encoder_frozen() {
        model.image_encoder = model.image_encoder.freeze();
    }
    if trainable == super::config::Trainable::Decoder {
        model.prompt_encoder = model.prompt_encoder.freeze();
    }
    let pe = &mut model
        .prompt_encoder
        .pe_layer
        .positional_encoding_gaussian_matrix;
    *pe = pe.clone().set_require_grad(false);
    model
}

fn epoch_bar(batches: usize, epoch: usize, epochs: usize) -> ProgressBar {
    let bar = ProgressBar::new(batches as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "epoch {prefix} {bar:30} {pos}/{len} batches  {msg}  {per_sec} ETA {eta}",
        )
        .expect("a valid template"),
    );
    bar.set_prefix(format!("{}/{epochs}", epoch + 1));
    bar
}
