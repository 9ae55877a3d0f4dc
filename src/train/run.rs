//! A training run in progress: its folders and log, the model and optimizer, the indexed
//! data, the embedding cache and the loop state, with one method per phase of `train()`.

use std::sync::atomic::{AtomicBool, Ordering};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use indicatif::ProgressBar;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::checkpoints::{save_epoch, save_resume, EpochRecord, ResumePoint, RunDirs, TrainState};
use super::config::{Task, TrainConfig};
use super::embed::encode_missing;
use super::epoch_training::EpochTraining;
use super::examples::{example_seed, BatchPlan, BatchStream, ClassTable, ExampleBuilder};
use super::log::RunLog;
use super::model_setup::{autodiff_device, freeze, with_task_head};
use super::optim::adamw;
use super::report::{final_report, write_val_report, TrainReport};
use super::run_data::RunData;
use super::schedule::lr_at;
use super::step::Stepper;
use crate::device::ChosenDevice;
use crate::error::{bail, Context, Result};
use crate::eval::evaluate::{evaluate_each, EvalSettings};
use crate::eval::metrics::{Aggregate, ObjectResult};
use crate::eval::report::comparison_overlay;
use crate::fsutil::{file_sha256, remove_stale_temps, write_bytes_atomic};
use crate::model::lora::merged;
use crate::model::{Architecture, Sam};
use crate::predict::image::load_rgb;
use crate::predict::{EmbeddingCache, Predictor};
use crate::progress::count_bar;
use crate::weights::load_sam_at;

/// How the epoch loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Finished,
    /// Ctrl-C, or `train.stop_after_epochs`: resumable.
    Interrupted,
    /// `train.patience` epochs without a better validation mIoU.
    StoppedEarly,
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
    /// A semantic run's classes.
    classes: Option<ClassTable>,
}

impl<'a> Run<'a> {
    /// Creates (or, with `resume`, reopens) the run folder, indexes the data, loads the
    /// model and, on resume, the saved weights, optimizer and loop state. A refused resume
    /// changes nothing on disk: the state is found and checked first.
    pub fn start(
        config: &'a TrainConfig,
        resume: bool,
        devices: Vec<ChosenDevice>,
    ) -> Result<Self> {
        let dirs = RunDirs::of(config);
        let resumed = if resume {
            Some(ResumePoint::find(&dirs)?)
        } else if dirs.has_resume_state() {
            bail!(
                "run folder {} already holds a run; pass --resume to continue it, or choose another name (name=...)",
                dirs.run.display()
            );
        } else {
            None
        };
        let base_sha = file_sha256(&config.model.checkpoint)?;
        if let Some(point) = &resumed {
            point.check_base(&base_sha, &config.model.checkpoint)?;
        }
        std::fs::create_dir_all(&dirs.checkpoints)
            .with_context(|| format!("creating {}", dirs.checkpoints.display()))?;
        for dir in [&dirs.run, &dirs.checkpoints, &dirs.report()] {
            remove_stale_temps(dir);
        }
        write_bytes_atomic(&dirs.run.join("config.toml"), config.to_toml()?.as_bytes())?;
        let mut log = RunLog::open(&dirs.run)?;
        if config.task == Task::Semantic {
            log.first_term = "ce";
        }
        let names: Vec<&str> = devices.iter().map(|d| d.description.as_str()).collect();
        log.line(&format!("device: {}", names.join(", ")));
        let device = devices[0].device.clone();
        let data = RunData::load(config, &mut log)?;

        let autodiff = autodiff_device(&device, config);
        let (model, architecture) = load_sam_at(
            &config.model.checkpoint,
            config.model.variant,
            config.model.img_size,
            &autodiff,
        )?;
        let (model, architecture) = with_task_head(model, architecture, config)?;
        let model = freeze(model, config)?
            .with_encoder_precision(config.model.encoder_precision, &device)?;
        let (model, optim, state) = match resumed {
            Some(point) => {
                let (model, optim, state) = point.restore(model, config)?;
                log.line(&format!(
                    "resumed after epoch {} (step {}{})",
                    state.epoch,
                    state.step,
                    state.progress.as_ref().map_or(String::new(), |p| format!(
                        ", {} batches into epoch {}",
                        p.batches,
                        state.epoch + 1
                    ))
                ));
                (model, optim, state)
            }
            None => {
                let optim = adamw(&model, &config.train);
                let state = TrainState {
                    base_checkpoint_sha256: base_sha.clone(),
                    ..TrainState::default()
                };
                (model, optim, state)
            }
        };
        let trainable = config.model.trainable;
        let frozen = trainable.encoder_frozen().then(|| model.valid());
        let cache = if config.cache.enabled && trainable.encoder_frozen() {
            Some(EmbeddingCache::open(
                &config.cache,
                &config.model.checkpoint,
                &base_sha,
                &architecture,
                config.data.sample_intensity(),
                config.model.encoder_precision,
            )?)
        } else {
            None
        };
        let replicas: Vec<Device> = devices
            .iter()
            .map(|d| autodiff_device(&d.device, config))
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
            classes: config.classes()?.map(ClassTable::new),
        })
    }

    fn eval_settings(&self, progress: bool) -> EvalSettings<'_> {
        EvalSettings {
            cache: self.cache.as_ref(),
            intensity: self.config.data.sample_intensity(),
            prompts: &self.config.prompts,
            seed: self.config.train.seed,
            progress,
            semantic: self.classes.as_ref().map(|t| &t.classes),
            encode_batch: self.config.cache.encode_batch,
        }
    }

    /// With `cache.encode_batch` > 1, encodes every image of the run (train, validation,
    /// test) that the cache lacks before the first step, that many per encoder pass;
    /// the epochs and evaluations then read them back. Otherwise the first epoch encodes
    /// them one at a time, as its batches are drawn.
    pub fn encode_ahead(&mut self) -> Result<()> {
        let batch = self.config.cache.encode_batch;
        let (Some(cache), Some(frozen)) = (&self.cache, &self.frozen) else {
            return Ok(());
        };
        if batch <= 1 {
            return Ok(());
        }
        let d = &self.data;
        let images: Vec<&std::path::Path> = d
            .train
            .iter()
            .chain(&d.val)
            .chain(&d.test)
            .map(|s| s.image.as_path())
            .collect();
        let bar = count_bar("embed", images.len(), "images", true);
        let encoded = encode_missing(
            &Predictor::new(frozen),
            cache,
            &images,
            batch,
            self.config.data.sample_intensity(),
            &bar,
        )?;
        bar.finish_and_clear();
        self.log.line(&format!(
            "embedding cache: {encoded} images encoded ahead ({batch} per pass), {} already held",
            images.len() - encoded
        ));
        Ok(())
    }

    /// The base model on the validation set, once per run (kept across resumes).
    pub fn zero_shot(&mut self) -> Result<()> {
        if !self.config.report.zero_shot
            || self.state.zero_shot.is_some()
            || self.data.val.is_empty()
        {
            return Ok(());
        }
        let results = crate::eval::evaluate::evaluate(
            &self.model.valid(),
            &self.data.val,
            &self.eval_settings(true),
        )?;
        let summary = Aggregate::of(&results).overall;
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

    /// Batches in an epoch: all of the training set, or `train.batches_per_epoch`.
    fn batches_per_epoch(&self) -> usize {
        let all = self
            .data
            .train
            .len()
            .div_ceil(self.config.train.images_per_batch);
        match self.config.train.batches_per_epoch {
            0 => all,
            limit => limit.min(all),
        }
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
                // the epoch is not complete: resume continues at its next batch
                self.state.progress = Some(training.progress());
                self.save_resume()?;
                self.log.line(&format!(
                    "interrupted in epoch {} after {} batches: saved a resumable state ({})",
                    self.state.epoch + 1,
                    training.batches,
                    self.dirs.manifest().display()
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

    /// The epoch's batches: a seeded order of the training images, each example with a
    /// seed of its own.
    fn epoch_plans(&self) -> Vec<BatchPlan> {
        let epoch = self.state.epoch;
        let seed = self.config.train.seed;
        let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(1_000_003 * (epoch as u64 + 1)));
        let mut order: Vec<usize> = (0..self.data.train.len()).collect();
        order.shuffle(&mut rng);
        let images = self.config.train.images_per_batch;
        order
            .iter()
            .enumerate()
            .map(|(position, &index)| (index, example_seed(seed, epoch, position)))
            .collect::<Vec<_>>()
            .chunks(images)
            .take(self.batches_per_epoch())
            .map(<[_]>::to_vec)
            .collect()
    }

    /// The batches of the current epoch, drawn ahead on a background thread, each an
    /// optimizer step (or a share of one with gradient accumulation). Ctrl-C stops after
    /// the next step.
    fn train_epoch(&mut self, interrupt: &AtomicBool) -> Result<EpochTraining> {
        let mut plans = self.epoch_plans();
        let batches = plans.len();
        let bar = epoch_bar(batches, self.state.epoch, self.config.train.epochs);
        // a resumed epoch continues after the batches it had done
        let mut out = match self.state.progress.take() {
            Some(progress) => {
                plans.drain(..progress.batches.min(batches));
                bar.set_position(progress.batches as u64);
                EpochTraining::resumed(progress)
            }
            None => EpochTraining::new(self.lr()),
        };
        let total_steps = self.total_steps();
        let Self {
            config,
            dirs,
            log,
            model,
            optim,
            state,
            data,
            frozen,
            cache,
            device,
            stepper,
            classes,
            ..
        } = self;
        let config: &TrainConfig = config;
        let builder = ExampleBuilder {
            frozen: frozen.as_ref(),
            cache: cache.as_ref(),
            config,
            device,
            img_size: model.img_size,
            low_res_side: model.prompt_encoder.image_embedding_size[0] * 4,
            semantic: classes.as_ref(),
        };
        std::thread::scope(|scope| -> Result<()> {
            let mut stream = BatchStream::start(
                scope,
                &builder,
                &data.train,
                plans,
                config.train.prefetch_batches,
            );
            let mut batch_index = out.batches;
            while let Some(drawn) = stream.next_batch() {
                let drawn = match drawn {
                    Ok(drawn) => drawn,
                    Err(e) => {
                        // bad data mid-epoch: keep what was trained, then say what failed
                        read_losses(&mut out, log, state, &bar, dirs)?;
                        if let Some(progress) = out.committed.take() {
                            let state = TrainState {
                                progress: Some(progress),
                                ..state.clone()
                            };
                            save_resume(model, optim, &state, dirs, config.model.trainable)?;
                        }
                        return Err(e.context(format!(
                            "epoch {}: the run stopped and can be resumed (--resume) once the data is fixed",
                            state.epoch + 1
                        )));
                    }
                };
                let loss = stepper.batch(model, drawn, config)?;
                batch_index += 1;
                if stepper.due(config, batch_index == batches) {
                    let t = &config.train;
                    out.lr = lr_at(
                        state.step,
                        total_steps,
                        t.lr,
                        t.warmup_fraction,
                        t.min_lr_ratio,
                    );
                    *model = stepper.apply(model.clone(), optim, out.lr, config);
                    state.step += 1;
                }
                out.waited = out.waited_before + stream.waited;
                out.push(loss, state.step, out.lr, !stepper.has_pending());
                let stop = interrupt.load(Ordering::SeqCst) && !stepper.has_pending();
                if stop || batch_index == batches || out.read_due() {
                    read_losses(&mut out, log, state, &bar, dirs)?;
                }
                bar.inc(1);
                if stop {
                    out.interrupted = true;
                    break;
                }
            }
            read_losses(&mut out, log, state, &bar, dirs)
        })?;
        bar.finish_and_clear();
        Ok(out)
    }

    /// Validation, the epoch's record, checkpoints and resume state.
    fn end_epoch(&mut self, training: EpochTraining) -> Result<()> {
        let epoch = self.state.epoch;
        let n = training.batches.max(1) as f64;
        let valid = self.model.valid();
        let merged = merged(valid.clone());
        let results = self.validate(&merged, epoch + 1)?;
        let val = Aggregate::of(&results).overall;
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss: training.sums[0] / n,
            train_focal: training.sums[1] / n,
            train_dice: training.sums[2] / n,
            train_iou_mse: training.sums[3] / n,
            lr: training.lr,
            val: val.clone(),
            seconds: training.seconds(),
            data_wait_seconds: training.waited.as_secs_f64(),
        };
        self.log.epoch(&record);
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
            &merged,
            &self.architecture,
            self.config,
            &self.state,
            &self.dirs.checkpoints,
            improved,
        )?;
        if improved {
            write_val_report(&self.dirs.report(), &self.state, &results)?;
        }
        self.save_resume()
    }

    /// The current model on the validation set; the first images are drawn to
    /// TensorBoard.
    fn validate(&mut self, valid: &Sam, epoch: usize) -> Result<Vec<ObjectResult>> {
        if self.data.val.is_empty() {
            return Ok(Vec::new());
        }
        let settings = self.eval_settings(false);
        let overlays = self.config.report.overlays_per_epoch;
        let mut results = Vec::new();
        // the first few images' pictures, drawn to TensorBoard once the pass is done
        let mut pictures = Vec::new();
        evaluate_each(valid, &self.data.val, &settings, |index, eval| {
            if index < overlays {
                let sample = &self.data.val[index];
                let image = load_rgb(&sample.image, settings.intensity)?;
                let picture =
                    comparison_overlay(&image, &eval.objects, &eval.predicted, &eval.prompts);
                pictures.push((sample.name(), picture));
            }
            results.extend(eval.results);
            Ok(())
        })?;
        for (name, picture) in &pictures {
            self.log.overlay(name, picture, epoch);
        }
        self.log.tensorboard.flush();
        Ok(results)
    }

    fn save_resume(&self) -> Result<()> {
        save_resume(
            &self.model,
            &self.optim,
            &self.state,
            &self.dirs,
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
                &self.data,
                &self.eval_settings(true),
                &self.device,
            )?;
            self.log.line(&format!(
                "report: val mIoU zero-shot {:.4} -> fine-tuned {:.4} ({:+.4}): {}",
                report.zero_shot.overall.mean_iou,
                report.fine_tuned.overall.mean_iou,
                report.gain(),
                self.dirs.report().join("report.html").display()
            ));
            if let Some(test) = &report.test {
                self.log.line(&format!(
                    "test ({} images, best checkpoint, evaluated once): mIoU zero-shot {:.4} -> fine-tuned {:.4}",
                    test.images, test.zero_shot.overall.mean_iou, test.fine_tuned.overall.mean_iou
                ));
            }
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

fn epoch_bar(batches: usize, epoch: usize, epochs: usize) -> ProgressBar {
    count_bar(
        &format!("epoch {}/{epochs}", epoch + 1),
        batches,
        "batches",
        true,
    )
}

/// Reads back the losses of the batches trained since the last read: the log and
/// TensorBoard get each batch's, the bar the epoch's mean so far; a loss that is not
/// finite stops the run before anything more is saved.
fn read_losses(
    out: &mut EpochTraining,
    log: &mut RunLog,
    state: &mut TrainState,
    bar: &ProgressBar,
    dirs: &RunDirs,
) -> Result<()> {
    let read = out.read()?;
    for batch in &read {
        if !batch.loss.loss.is_finite() {
            bail!(
                "epoch {} batch {}: the loss is {} (diverged); the last good checkpoint is kept in {}. Lower train.lr or check the data",
                state.epoch + 1,
                batch.position,
                batch.loss.loss,
                dirs.checkpoints.display()
            );
        }
        log.step(batch.step, batch.loss.loss, batch.loss.parts, batch.lr);
        state.step_losses.push((batch.step, batch.loss.loss as f32));
    }
    if !read.is_empty() {
        bar.set_message(format!(
            "loss {:.4}, data wait {:.0}%",
            out.sums[0] / out.batches as f64,
            100.0 * out.wait_share()
        ));
    }
    Ok(())
}
