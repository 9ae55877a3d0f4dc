//! The fine-tuning loop: frozen (cached) image encoder, trained mask decoder, AdamW with
//! warm-up and cosine decay, validation every epoch, best/last checkpoints, resume.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::{Module, ParamGroup};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::store::ModuleRecord;
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::cache::{file_sha256, EmbeddingCache};
use super::config::{DataFormat, TrainConfig, Trainable};
use super::loss::{sam_loss, LossTerms};
use super::optim::{adamw, clip_global_norm};
use super::schedule::lr_at;
use crate::cli::device::DeviceChoice;
use crate::data::dataset::{prepare, seeded_split, Prepared};
use crate::data::prompts::{
    correction_click, sample_kind, sample_prompt, to_prompt_batch, ObjectPrompt,
};
use crate::data::volumes::{load_volumes, SliceSettings};
use crate::data::{coco, folder, BinaryMask, Split};
use crate::eval::evaluate::{encode_image, evaluate, EvalSettings, ImageEval};
use crate::eval::metrics::{Aggregate, ObjectResult, Summary};
use crate::eval::train_report::{write_train_report, RunInfo, TrainReport};
use crate::fsutil::write_bytes_atomic;
use crate::model::{Sam, SamConfig};
use crate::predict::{tensor_values, EncodedImage};
use crate::weights::{load_sam, save_checkpoint};

/// Metrics of one epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_focal: f64,
    pub train_dice: f64,
    pub train_iou_mse: f64,
    pub lr: f64,
    pub val: Summary,
    pub seconds: f64,
}

/// What `--resume` restores besides the weights and the optimizer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: usize,
    pub best_miou: Option<f64>,
    pub best_epoch: Option<usize>,
    pub epochs_without_improvement: usize,
    pub history: Vec<EpochRecord>,
    pub zero_shot: Option<Summary>,
    pub base_checkpoint_sha256: String,
    /// `(optimizer step, batch loss)` of every batch, for the report's loss curve.
    #[serde(default)]
    pub step_losses: Vec<(usize, f32)>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct TrainOutcome {
    pub run_dir: PathBuf,
    pub state: TrainState,
    pub interrupted: bool,
    pub stopped_early: bool,
    /// The end-of-run report (absent when interrupted or without validation images).
    pub report: Option<TrainReport>,
}

/// The trained parts of the model for a [`Trainable`] setting.
fn trainable_group(model: &Sam, trainable: Trainable) -> ParamGroup {
    let group = ParamGroup::ids_from_module(model.mask_decoder.clone());
    match trainable {
        Trainable::Decoder => group,
        Trainable::DecoderAndPrompt => {
            group.fuse(&ParamGroup::ids_from_module(model.prompt_encoder.clone()))
        }
        Trainable::All => ParamGroup::ids_from_module(model.clone()),
    }
}

/// Official key prefixes of the trained parameters (for `decoder.safetensors`).
fn trained_prefixes(trainable: Trainable) -> &'static [&'static str] {
    match trainable {
        Trainable::Decoder => &["mask_decoder."],
        Trainable::DecoderAndPrompt => &["mask_decoder.", "prompt_encoder."],
        Trainable::All => &[""],
    }
}

/// Reads the dataset of `config` and decodes its objects.
pub fn load_split(config: &TrainConfig) -> Result<(Vec<Prepared>, Vec<Prepared>, usize)> {
    let d = &config.data;
    let split = match d.format {
        DataFormat::Folder => folder::load_folder(&d.path, d.val_ratio, d.split_seed)?,
        DataFormat::Nifti => {
            if !(d.slice_fraction > 0.0 && d.slice_fraction <= 1.0) {
                bail!("data.slice_fraction {} must be in (0, 1]", d.slice_fraction);
            }
            let settings = SliceSettings {
                axis: d.slice_axis,
                fraction: d.slice_fraction,
                intensity: d.intensity,
                label_names: std::sync::Arc::new(
                    d.label_names
                        .iter()
                        .map(|(k, v)| {
                            k.parse::<u16>().map(|k| (k, v.clone())).map_err(|_| {
                                anyhow::anyhow!(
                                    "data.label_names: key '{k}' is not a label value (0..65535)"
                                )
                            })
                        })
                        .collect::<Result<_>>()?,
                ),
                seed: d.split_seed,
            };
            load_volumes(&d.path, d.val_ratio, d.split_seed, &settings, &d.slice_dir)?
        }
        DataFormat::Coco => {
            let images = if d.images.as_os_str().is_empty() {
                d.annotations
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("images")
            } else {
                d.images.clone()
            };
            let train = coco::load_coco(&d.annotations, &images, &d.categories)?;
            if d.val_annotations.as_os_str().is_empty() {
                seeded_split(train, d.val_ratio, d.split_seed)
            } else {
                Split {
                    train,
                    val: coco::load_coco(&d.val_annotations, &images, &d.categories)?,
                }
            }
        }
    };
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
    Ok((train, val, skipped_train + skipped_val))
}

/// Ground truth in the decoder's low-resolution frame: the mask resized like the image
/// (longest side to `img_size`), padded to `img_size`, then `low_res` pixels a side
/// (nearest, at pixel centres).
pub fn low_res_target(
    mask: &BinaryMask,
    input_size: [usize; 2],
    img_size: usize,
    low_res: usize,
) -> Vec<f32> {
    let step = img_size as f64 / low_res as f64;
    let mut out = vec![0f32; low_res * low_res];
    for i in 0..low_res {
        let y_in = (i as f64 + 0.5) * step;
        if y_in >= input_size[0] as f64 {
            continue;
        }
        let y = ((y_in * mask.height as f64 / input_size[0] as f64) as usize).min(mask.height - 1);
        for j in 0..low_res {
            let x_in = (j as f64 + 0.5) * step;
            if x_in >= input_size[1] as f64 {
                continue;
            }
            let x =
                ((x_in * mask.width as f64 / input_size[1] as f64) as usize).min(mask.width - 1);
            out[i * low_res + j] = mask.get(x, y) as u8 as f32;
        }
    }
    out
}

/// One image's training example: its embedding, prompts and targets.
struct Example {
    encoded: EncodedImage,
    prompts: Vec<ObjectPrompt>,
    /// `[N, 1, L, L]` low-res targets, row-major.
    low_res: Vec<f32>,
    /// Full-size targets (only with `loss.full_size`).
    full: Vec<BinaryMask>,
}

impl Example {
    /// The same example with its embedding on `device`.
    fn moved_to(self, device: &Device) -> Self {
        Self {
            encoded: EncodedImage {
                embedding: self.encoded.embedding.to_device(device),
                ..self.encoded
            },
            ..self
        }
    }
}

/// The loss of one image's prompts, with `refine_clicks` correction rounds.
fn example_loss(
    model: &Sam,
    dense_pe: &Tensor<4>,
    example: &Example,
    config: &TrainConfig,
    rng: &mut ChaCha8Rng,
) -> Result<LossTerms> {
    let device = dense_pe.device();
    let n = example.prompts.len();
    let img_size = model.img_size;
    let low_res = dense_pe.dims()[2] * 4;
    let targets_low: Tensor<4> = Tensor::from_data(
        TensorData::new(example.low_res.clone(), [n, 1, low_res, low_res]),
        &device,
    );
    let targets_full = config.loss.full_size.then(|| {
        let [h, w] = example.encoded.original_size;
        let flat: Vec<f32> = example
            .full
            .iter()
            .flat_map(|m| m.data.iter().map(|&v| v as f32))
            .collect();
        Tensor::<4>::from_data(TensorData::new(flat, [n, 1, h, w]), &device)
    });
    let mut batch = to_prompt_batch(&example.prompts);
    let mut terms: Vec<LossTerms> = Vec::new();
    let ambiguous = config.prompts.multimask.for_prompts(&example.prompts);
    for round in 0..=config.prompts.refine_clicks {
        // correction rounds add points and a mask input: never ambiguous
        let multimask = ambiguous && round == 0;
        let prompts = batch.to_prompts(example.encoded.original_size, img_size, &device);
        let output = model
            .decode_with_pe(example.encoded.embedding.clone(), dense_pe.clone(), prompts)
            .select(multimask);
        let round_terms = match &targets_full {
            Some(targets) => {
                let logits = model.postprocess_masks(
                    output.masks.clone(),
                    example.encoded.input_size,
                    example.encoded.original_size,
                );
                sam_loss(
                    logits,
                    output.iou_predictions.clone(),
                    targets.clone(),
                    &config.loss,
                )
            }
            None => sam_loss(
                output.masks.clone(),
                output.iou_predictions.clone(),
                targets_low.clone(),
                &config.loss,
            ),
        };
        if round < config.prompts.refine_clicks {
            // next round: a click from each prompt's error region, the best mask as input
            let [_, m, h, w] = output.masks.dims();
            let logits = tensor_values(output.masks.clone().detach())?;
            let predicted_iou = tensor_values(output.iou_predictions.clone().detach())?;
            let mut mask_inputs = Vec::with_capacity(n * h * w);
            let scale = [
                example.encoded.original_size[0] as f64 / example.encoded.input_size[0] as f64,
                example.encoded.original_size[1] as f64 / example.encoded.input_size[1] as f64,
            ];
            for i in 0..n {
                let best = (0..m)
                    .max_by(|&a, &b| predicted_iou[i * m + a].total_cmp(&predicted_iou[i * m + b]))
                    .unwrap_or(0);
                let plane = &logits[(i * m + best) * h * w..(i * m + best + 1) * h * w];
                mask_inputs.extend_from_slice(plane);
                let predicted = BinaryMask {
                    width: w,
                    height: h,
                    data: plane.iter().map(|&v| (v > 0.0) as u8).collect(),
                };
                let target = BinaryMask {
                    width: w,
                    height: h,
                    data: example.low_res[i * h * w..(i + 1) * h * w]
                        .iter()
                        .map(|&v| v as u8)
                        .collect(),
                };
                let click = correction_click(&target, &predicted, rng).map(|(p, label)| {
                    // low-res pixel -> input frame -> original image
                    let step = img_size as f64 / w as f64;
                    (
                        [
                            (p[0] + 0.5) * step * scale[1],
                            (p[1] + 0.5) * step * scale[0],
                        ],
                        label,
                    )
                });
                let click = click.unwrap_or(([0.0, 0.0], -1));
                if batch.points.is_empty() {
                    batch.points = vec![Vec::new(); n];
                }
                batch.points[i].push(click);
            }
            batch.mask_input = Some(Tensor::from_data(
                TensorData::new(mask_inputs, [n, 1, h, w]),
                &device,
            ));
        }
        terms.push(round_terms);
    }
    // the mean over rounds; the actual IoU is the last round's
    let rounds = terms.len() as f64;
    let mean = |term: fn(&LossTerms) -> &Tensor<1>| {
        terms
            .iter()
            .map(|t| term(t).clone())
            .reduce(|a, b| a + b)
            .expect("at least one round")
            / rounds
    };
    Ok(LossTerms {
        total: mean(|t| &t.total),
        focal: mean(|t| &t.focal),
        dice: mean(|t| &t.dice),
        iou: mean(|t| &t.iou),
        actual_iou: terms.last().expect("at least one round").actual_iou.clone(),
    })
}

/// Runs (or resumes) the training described by `config`. `interrupt` (set by Ctrl-C) makes
/// it save a resumable checkpoint after the current step and return.
pub fn train(config: &TrainConfig, resume: bool, interrupt: &AtomicBool) -> Result<TrainOutcome> {
    let run_dir = config.run_dir();
    let ckpt_dir = run_dir.join("checkpoints");
    let state_path = ckpt_dir.join("resume").join("state.json");
    if !resume && state_path.exists() {
        bail!(
            "run folder {} already holds a run; pass --resume to continue it, or choose another name (name=...)",
            run_dir.display()
        );
    }
    std::fs::create_dir_all(ckpt_dir.join("resume"))
        .with_context(|| format!("creating {}", ckpt_dir.display()))?;
    write_bytes_atomic(&run_dir.join("config.toml"), config.to_toml()?.as_bytes())?;
    let mut log = RunLog::open(&run_dir.join("train.log"))?;

    // with data parallelism the first listed device is the main one
    let device = device_for(config.model.devices.first().unwrap_or(&config.model.device))?;
    let variant = configured_variant(config)?;
    let (train_set, val_set, skipped) = load_split(config)?;
    let objects = |s: &[Prepared]| s.iter().map(|p| p.objects.len()).sum::<usize>();
    log.line(&format!(
        "data: {} train images ({} objects), {} val images ({} objects); {skipped} objects below {} px skipped",
        train_set.len(),
        objects(&train_set),
        val_set.len(),
        objects(&val_set),
        config.data.min_area
    ));

    let autodiff = device.clone().autodiff();
    let (mut model, sam_config) = load_sam(&config.model.checkpoint, variant, &autodiff)?;
    let base_sha = file_sha256(&config.model.checkpoint)?;
    let trainable = config.model.trainable;
    if trainable.encoder_frozen() {
        model.image_encoder = model.image_encoder.freeze();
    }
    if trainable == Trainable::Decoder {
        model.prompt_encoder = model.prompt_encoder.freeze();
    }
    model
        .prompt_encoder
        .pe_layer
        .positional_encoding_gaussian_matrix = model
        .prompt_encoder
        .pe_layer
        .positional_encoding_gaussian_matrix
        .clone()
        .set_require_grad(false);

    let mut state = TrainState {
        base_checkpoint_sha256: base_sha.clone(),
        ..TrainState::default()
    };
    let resume_dir = ckpt_dir.join("resume");
    if resume {
        state = serde_json::from_slice(
            &std::fs::read(&state_path)
                .with_context(|| format!("reading {}", state_path.display()))?,
        )
        .with_context(|| format!("{}: invalid resume state", state_path.display()))?;
        if state.base_checkpoint_sha256 != base_sha {
            bail!(
                "{} changed since the run started (its hash differs): cannot resume",
                config.model.checkpoint.display()
            );
        }
        let record = ModuleRecord::load(resume_dir.join("model.bpk"))
            .with_context(|| format!("reading {}", resume_dir.join("model.bpk").display()))?;
        model = model
            .try_load_record(record.allow_partial(true))
            .map_err(|e| {
                anyhow::anyhow!("restoring the model from {}: {e:?}", resume_dir.display())
            })?;
        log.line(&format!(
            "resumed after epoch {} (step {})",
            state.epoch, state.step
        ));
    }
    let mut optim = adamw(&model, &config.train);
    if resume {
        optim = optim.load(resume_dir.join("optim.bpk")).map_err(|e| {
            anyhow::anyhow!(
                "restoring the optimizer from {}: {e:?}",
                resume_dir.display()
            )
        })?;
    }

    // the frozen encoder, without autodiff: its embeddings are constants for the graph
    let encoder_model = trainable.encoder_frozen().then(|| model.valid());
    let cache = if config.cache.enabled && trainable.encoder_frozen() {
        Some(EmbeddingCache::open(
            &config.cache.dir,
            &config.model.checkpoint,
            &sam_config,
            config.data.intensity,
        )?)
    } else {
        None
    };
    let mut tensorboard =
        tensorboard_rs::summary_writer::SummaryWriter::new(run_dir.join("tensorboard"));

    let eval_settings = EvalSettings {
        cache: cache.as_ref(),
        intensity: config.data.intensity,
        prompts: &config.prompts,
        seed: config.train.seed,
        keep_masks: false,
        progress: false,
    };
    if config.report.zero_shot && state.zero_shot.is_none() && !val_set.is_empty() {
        let evals = evaluate(
            &model.valid(),
            &val_set,
            &EvalSettings {
                keep_masks: false,
                progress: true,
                ..eval_settings
            },
        )?;
        let summary = Aggregate::of(&flatten(&evals)).overall;
        log.line(&format!(
            "zero-shot val: mIoU {:.4}, Dice {:.4}",
            summary.mean_iou, summary.mean_dice
        ));
        tensorboard.add_scalar("val/miou", summary.mean_iou as f32, 0);
        state.zero_shot = Some(summary);
    }

    // data parallelism: the first device is the main one (optimizer, checkpoints)
    let replicas = replica_devices(config, &autodiff)?;
    if replicas.len() > 1 {
        log.line(&format!(
            "data parallel on {} devices: {}",
            replicas.len(),
            config.model.devices.join(", ")
        ));
    }
    let batches_per_epoch = train_set.len().div_ceil(config.train.images_per_batch);
    let steps_per_epoch = batches_per_epoch.div_ceil(config.train.grad_accumulation);
    let total_steps = steps_per_epoch * config.train.epochs;
    let mut interrupted = false;
    let mut stopped_early = false;

    let first_epoch = state.epoch;
    while state.epoch < config.train.epochs {
        if config.train.stop_after_epochs > 0
            && state.epoch - first_epoch >= config.train.stop_after_epochs
        {
            log.line(&format!(
                "stopping after {} epoch(s) as configured; continue with --resume",
                config.train.stop_after_epochs
            ));
            interrupted = true;
            break;
        }
        let epoch = state.epoch;
        let started = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(
            config
                .train
                .seed
                .wrapping_add(1_000_003 * (epoch as u64 + 1)),
        );
        let mut order: Vec<usize> = (0..train_set.len()).collect();
        order.shuffle(&mut rng);
        let bar = ProgressBar::new(batches_per_epoch as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "epoch {prefix} {bar:30} {pos}/{len} batches  {msg}  {per_sec} ETA {eta}",
            )
            .expect("valid template"),
        );
        bar.set_prefix(format!("{}/{}", epoch + 1, config.train.epochs));
        let mut sums = [0f64; 4];
        let mut batches = 0usize;
        let mut accumulator = GradientsAccumulator::<Sam>::new();
        let mut pending = 0usize;
        let mut lr = lr_at(
            state.step,
            total_steps,
            config.train.lr,
            config.train.warmup_fraction,
            config.train.min_lr_ratio,
        );
        for (batch_index, chunk) in order.chunks(config.train.images_per_batch).enumerate() {
            // examples are drawn here, in image order, so that the data and the random
            // stream do not depend on how many devices share the batch
            let mut examples = Vec::with_capacity(chunk.len());
            for &index in chunk {
                let example = make_example(
                    &model,
                    encoder_model.as_ref(),
                    &train_set[index],
                    cache.as_ref(),
                    config,
                    &mut rng,
                    &device,
                )?;
                examples.push((example, rng.random::<u64>()));
            }
            let scale = (chunk.len() * config.train.grad_accumulation) as f64;
            let mut loss_value = 0.0;
            let mut parts = [0f64; 3];
            for share in data_parallel_step(&model, &replicas, examples, config, scale)? {
                loss_value += share.loss * config.train.grad_accumulation as f64;
                for (total, part) in parts.iter_mut().zip(share.parts) {
                    *total += part;
                }
                let grads = if share.device == 0 {
                    share.grads
                } else {
                    share.grads.to_device(&device, &model)
                };
                accumulator.accumulate(&model, grads);
            }
            if !loss_value.is_finite() {
                bail!(
                    "epoch {} batch {}: the loss is {loss_value} (diverged); the last good checkpoint is kept in {}. Lower train.lr or check the data",
                    epoch + 1,
                    batch_index + 1,
                    ckpt_dir.display()
                );
            }
            pending += 1;
            if pending == config.train.grad_accumulation || batch_index + 1 == batches_per_epoch {
                let mut grads = accumulator.grads();
                clip_global_norm(&model, &mut grads, config.train.grad_clip_norm);
                lr = lr_at(
                    state.step,
                    total_steps,
                    config.train.lr,
                    config.train.warmup_fraction,
                    config.train.min_lr_ratio,
                );
                model = optim.step(lr, model, grads);
                state.step += 1;
                pending = 0;
            }
            sums[0] += loss_value;
            for k in 0..3 {
                sums[k + 1] += parts[k] / chunk.len() as f64;
            }
            batches += 1;
            bar.set_message(format!("loss {:.4}", sums[0] / batches as f64));
            bar.inc(1);
            tensorboard.add_scalar("train/loss", loss_value as f32, state.step);
            state.step_losses.push((state.step, loss_value as f32));
            for (tag, value) in ["train/step_focal", "train/step_dice", "train/step_iou_mse"]
                .iter()
                .zip(parts)
            {
                tensorboard.add_scalar(tag, (value / chunk.len() as f64) as f32, state.step);
            }
            tensorboard.add_scalar("train/lr", lr as f32, state.step);
            if interrupt.load(Ordering::SeqCst) && pending == 0 {
                interrupted = true;
                break;
            }
        }
        bar.finish_and_clear();
        if interrupted {
            // the epoch is not complete: keep the state at its start, with the new weights
            save_resume(&model, &optim, &state, &resume_dir, trainable)?;
            log.line(&format!(
                "interrupted in epoch {}: saved a resumable checkpoint in {}",
                epoch + 1,
                resume_dir.display()
            ));
            break;
        }
        let n = batches.max(1) as f64;
        let valid = model.valid();
        let (val, evals) = if val_set.is_empty() {
            (Summary::default(), Vec::new())
        } else {
            let evals = evaluate(
                &valid,
                &val_set,
                &EvalSettings {
                    keep_masks: true,
                    progress: false,
                    ..eval_settings
                },
            )?;
            (Aggregate::of(&flatten(&evals)).overall, evals)
        };
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss: sums[0] / n,
            train_focal: sums[1] / n,
            train_dice: sums[2] / n,
            train_iou_mse: sums[3] / n,
            lr,
            val: val.clone(),
            seconds: started.elapsed().as_secs_f64(),
        };
        for (tag, value) in [
            ("train/epoch_loss", record.train_loss),
            ("train/focal", record.train_focal),
            ("train/dice", record.train_dice),
            ("train/iou_mse", record.train_iou_mse),
            ("val/miou", val.mean_iou),
            ("val/dice", val.mean_dice),
            ("val/iou_prediction_error", val.iou_prediction_error),
        ] {
            tensorboard.add_scalar(tag, value as f32, epoch + 1);
        }
        write_overlays(&mut tensorboard, &val_set, &evals, config, epoch + 1)?;
        tensorboard.flush();
        log.line(&format!(
            "epoch {}: loss {:.4} (focal {:.4}, dice {:.4}, iou {:.4}), lr {:.2e}, val mIoU {:.4}, Dice {:.4}, {:.1}s",
            epoch + 1,
            record.train_loss,
            record.train_focal,
            record.train_dice,
            record.train_iou_mse,
            lr,
            val.mean_iou,
            val.mean_dice,
            record.seconds
        ));
        state.history.push(record);
        state.epoch += 1;
        let improved = state.best_miou.is_none_or(|b| val.mean_iou > b);
        if improved {
            state.best_miou = Some(val.mean_iou);
            state.best_epoch = Some(epoch + 1);
            state.epochs_without_improvement = 0;
        } else {
            state.epochs_without_improvement += 1;
        }
        save_epoch(&valid, &sam_config, config, &state, &ckpt_dir, improved)?;
        if improved {
            write_val_report(&run_dir.join("report"), &state, &flatten(&evals))?;
        }
        save_resume(&model, &optim, &state, &resume_dir, trainable)?;
        if config.train.patience > 0 && state.epochs_without_improvement >= config.train.patience {
            log.line(&format!(
                "early stop: no better val mIoU for {} epochs",
                config.train.patience
            ));
            stopped_early = true;
            break;
        }
        if interrupt.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
    }
    let report = if interrupted || state.best_epoch.is_none() || val_set.is_empty() {
        None
    } else {
        let report = final_report(config, &run_dir, &state, &val_set, &eval_settings, &device)?;
        log.line(&format!(
            "report: val mIoU zero-shot {:.4} -> fine-tuned {:.4} ({:+.4}): {}",
            report.zero_shot.overall.mean_iou,
            report.fine_tuned.overall.mean_iou,
            report.gain(),
            run_dir.join("report").join("report.html").display()
        ));
        Some(report)
    };
    if let Some(cache) = &cache {
        let (hits, misses) = cache.stats();
        log.line(&format!(
            "embedding cache {}: {hits} hits, {misses} misses",
            cache.dir().display()
        ));
    }
    Ok(TrainOutcome {
        run_dir,
        state,
        interrupted,
        stopped_early,
        report,
    })
}

/// `model.variant`: a preset, or `None` for `auto`.
pub fn configured_variant(config: &TrainConfig) -> Result<Option<crate::model::SamVariant>> {
    Ok(config
        .model
        .variant
        .parse::<crate::cli::VariantArg>()
        .map_err(|e| anyhow::anyhow!("model.variant: {e}"))?
        .0)
}

/// The end-of-run report: the base and the best checkpoint on the validation set.
fn final_report(
    config: &TrainConfig,
    run_dir: &Path,
    state: &TrainState,
    val_set: &[Prepared],
    settings: &EvalSettings,
    device: &Device,
) -> Result<TrainReport> {
    let variant = configured_variant(config)?;
    let (base, sam_config) = load_sam(&config.model.checkpoint, variant, device)?;
    let best = run_dir.join("checkpoints").join("best.safetensors");
    let (fine_tuned, _) = load_sam(&best, None, device)?;
    let p = &config.prompts;
    let prompts = format!(
        "box {:.2} / points {:.2} / box+points {:.2} ({} positive, {} negative points), multimask: {}",
        p.box_prob,
        p.points_prob,
        p.box_and_points_prob,
        p.positive_points,
        p.negative_points,
        p.multimask.name()
    );
    write_train_report(
        &run_dir.join("report"),
        &base,
        &fine_tuned,
        val_set,
        settings,
        RunInfo {
            run: config.name.clone(),
            base_checkpoint: config.model.checkpoint.display().to_string(),
            fine_tuned_checkpoint: best.display().to_string(),
            model: crate::weights::describe(&sam_config),
            trainable: config.model.trainable.name().to_string(),
            prompts,
            state,
        },
    )
}

/// Object results of all images.
pub fn flatten(evals: &[ImageEval]) -> Vec<ObjectResult> {
    evals
        .iter()
        .flat_map(|e| e.results.iter().cloned())
        .collect()
}

/// The autodiff devices a batch is shared out to: `main` (the first of `model.devices`,
/// where the model lives), then the others.
fn replica_devices(config: &TrainConfig, main: &Device) -> Result<Vec<Device>> {
    let mut devices = vec![main.clone()];
    for name in config.model.devices.iter().skip(1) {
        devices.push(device_for(name)?.autodiff());
    }
    Ok(devices)
}

/// One device's part of a batch: its gradients (on that device) and loss terms.
struct ShareOutput {
    device: usize,
    grads: GradientsParams,
    /// Its share of the batch loss (already divided by the batch size).
    loss: f64,
    /// Its focal, dice and IoU terms, each summed over its images.
    parts: [f64; 3],
}

/// Forward and backward of a batch, its images shared round-robin over `devices`, each
/// share on a replica of `model` in its own thread. The summed gradients equal one
/// device's up to floating-point order: every share's loss is divided by the whole batch.
fn data_parallel_step(
    model: &Sam,
    devices: &[Device],
    examples: Vec<(Example, u64)>,
    config: &TrainConfig,
    scale: f64,
) -> Result<Vec<ShareOutput>> {
    let mut shares: Vec<Vec<(Example, u64)>> = (0..devices.len()).map(|_| Vec::new()).collect();
    for (i, example) in examples.into_iter().enumerate() {
        shares[i % devices.len()].push(example);
    }
    let run = |index: usize, share: Vec<(Example, u64)>| -> Result<Option<ShareOutput>> {
        if share.is_empty() {
            return Ok(None);
        }
        let device = &devices[index];
        let replica = if index == 0 {
            model.clone()
        } else {
            model.clone().fork(device)
        };
        // the dense positional encoding depends only on the (always frozen) gaussian matrix
        let dense_pe = replica.prompt_encoder.get_dense_pe();
        let mut total: Option<Tensor<1>> = None;
        let mut parts = [0f64; 3];
        for (example, seed) in share {
            let example = if index == 0 {
                example
            } else {
                example.moved_to(device)
            };
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let terms = example_loss(&replica, &dense_pe, &example, config, &mut rng)?;
            parts[0] += terms.focal.into_scalar::<f32>() as f64;
            parts[1] += terms.dice.into_scalar::<f32>() as f64;
            parts[2] += terms.iou.into_scalar::<f32>() as f64;
            total = Some(match total {
                Some(acc) => acc + terms.total,
                None => terms.total,
            });
        }
        let loss = total.expect("the share is not empty") / scale;
        let value = loss.clone().into_scalar::<f32>() as f64;
        let grads = GradientsParams::from_grads(loss.backward(), &replica);
        Ok(Some(ShareOutput {
            device: index,
            grads,
            loss: value,
            parts,
        }))
    };
    let outputs: Vec<Result<Option<ShareOutput>>> = if devices.len() == 1 {
        shares
            .into_iter()
            .enumerate()
            .map(|(i, s)| run(i, s))
            .collect()
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = shares
                .into_iter()
                .enumerate()
                .map(|(i, share)| {
                    let run = &run;
                    scope.spawn(move || run(i, share))
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .map(|(i, h)| {
                    h.join().unwrap_or_else(|_| {
                        Err(anyhow::anyhow!(
                            "the training worker of device {i} panicked"
                        ))
                    })
                })
                .collect()
        })
    };
    let mut out = Vec::new();
    for output in outputs {
        if let Some(share) = output? {
            out.push(share);
        }
    }
    Ok(out)
}

fn make_example(
    model: &Sam,
    encoder_model: Option<&Sam>,
    prepared: &Prepared,
    cache: Option<&EmbeddingCache>,
    config: &TrainConfig,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Result<Example> {
    let encoded = match encoder_model {
        Some(frozen) => {
            let encoded = encode_image(frozen, prepared, cache, config.data.intensity, device)?;
            EncodedImage {
                embedding: encoded.embedding.autodiff(),
                ..encoded
            }
        }
        None => {
            let image =
                crate::predict::image::load_rgb(&prepared.sample.image, config.data.intensity)?;
            crate::predict::Predictor::new(model).encode(&image)
        }
    };
    let mut chosen: Vec<usize> = (0..prepared.objects.len()).collect();
    chosen.shuffle(rng);
    chosen.truncate(config.data.max_objects_per_image.max(1));
    chosen.sort_unstable();
    let kind = sample_kind(&config.prompts, rng);
    let prompts = chosen
        .iter()
        .map(|&i| sample_prompt(&prepared.objects[i].mask, kind, &config.prompts, rng))
        .collect();
    let low_res_side = model.prompt_encoder.image_embedding_size[0] * 4;
    let low_res = chosen
        .iter()
        .flat_map(|&i| {
            low_res_target(
                &prepared.objects[i].mask,
                encoded.input_size,
                model.img_size,
                low_res_side,
            )
        })
        .collect();
    let full = if config.loss.full_size {
        chosen
            .iter()
            .map(|&i| prepared.objects[i].mask.clone())
            .collect()
    } else {
        Vec::new()
    };
    Ok(Example {
        encoded,
        prompts,
        low_res,
        full,
    })
}

/// Checkpoints at the end of an epoch: `last`, `best` when improved, `decoder`, metadata.
fn save_epoch(
    model: &Sam,
    sam_config: &SamConfig,
    config: &TrainConfig,
    state: &TrainState,
    dir: &Path,
    improved: bool,
) -> Result<()> {
    let mut meta = BTreeMap::new();
    meta.insert("samtune.epoch".to_string(), state.epoch.to_string());
    meta.insert(
        "samtune.base_checkpoint".to_string(),
        config.model.checkpoint.display().to_string(),
    );
    let last = dir.join("last.safetensors");
    save_checkpoint(model, sam_config, &last, &meta, &|_| true)?;
    if improved {
        let best = dir.join("best.safetensors");
        let tmp = crate::fsutil::temp_path(&best);
        std::fs::copy(&last, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &best).with_context(|| format!("writing {}", best.display()))?;
    }
    let prefixes = trained_prefixes(config.model.trainable);
    save_checkpoint(
        model,
        sam_config,
        &dir.join("decoder.safetensors"),
        &meta,
        &|k| prefixes.iter().any(|p| k.starts_with(p)),
    )?;
    let metadata = serde_json::json!({
        "base_checkpoint": config.model.checkpoint.display().to_string(),
        "base_checkpoint_sha256": state.base_checkpoint_sha256,
        "variant": crate::weights::describe(sam_config),
        "model_config": sam_config,
        "train_config": config,
        "epoch": state.epoch,
        "best_epoch": state.best_epoch,
        "best_val_miou": state.best_miou,
        "zero_shot_val": state.zero_shot,
        "history": state.history,
    });
    write_bytes_atomic(
        &dir.join("metadata.json"),
        serde_json::to_string_pretty(&metadata)?.as_bytes(),
    )
}

/// `report/validation.json`: the best epoch's per-object validation results and their
/// aggregate next to the zero-shot one (the evaluation report builds on it).
fn write_val_report(dir: &Path, state: &TrainState, results: &[ObjectResult]) -> Result<()> {
    let best = Aggregate::of(results);
    let delta = state.zero_shot.as_ref().map(|z| {
        serde_json::json!({
            "mean_iou": best.overall.mean_iou - z.mean_iou,
            "mean_dice": best.overall.mean_dice - z.mean_dice,
        })
    });
    let report = serde_json::json!({
        "best_epoch": state.best_epoch,
        "zero_shot": state.zero_shot,
        "fine_tuned": best,
        "difference": delta,
        "objects": results,
        "empty_masks": "IoU and Dice are 1 when prediction and ground truth are both empty, 0 when only one is",
    });
    write_bytes_atomic(
        &dir.join("validation.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )
}

/// Trained weights (with their parameter ids), optimizer and loop state for `--resume`.
fn save_resume(
    model: &Sam,
    optim: &burn::optim::ModuleOptimizer,
    state: &TrainState,
    dir: &Path,
    trainable: Trainable,
) -> Result<()> {
    let save = |name: &str, write: &dyn Fn(&Path) -> Result<()>| -> Result<()> {
        let path = dir.join(name);
        let tmp = crate::fsutil::temp_path(&path);
        write(&tmp)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    };
    save("model.bpk", &|p| {
        model
            .clone()
            .into_record_group(trainable_group(model, trainable))
            .save(p)
            .map_err(|e| anyhow::anyhow!("writing {}: {e:?}", p.display()))
    })?;
    save("optim.bpk", &|p| {
        optim
            .save(p)
            .map_err(|e| anyhow::anyhow!("writing {}: {e:?}", p.display()))
    })?;
    write_bytes_atomic(
        &dir.join("state.json"),
        serde_json::to_string_pretty(state)?.as_bytes(),
    )
}

fn write_overlays(
    writer: &mut tensorboard_rs::summary_writer::SummaryWriter,
    samples: &[Prepared],
    evals: &[ImageEval],
    config: &TrainConfig,
    epoch: usize,
) -> Result<()> {
    for (prepared, eval) in samples
        .iter()
        .zip(evals)
        .take(config.report.overlays_per_epoch)
    {
        let image = crate::predict::image::load_rgb(&prepared.sample.image, config.data.intensity)?;
        let overlay = crate::eval::report::comparison_overlay(
            &image,
            &prepared.objects,
            &eval.predicted,
            &eval.prompts,
        );
        let (w, h) = (overlay.width() as usize, overlay.height() as usize);
        // TensorBoard images are [C, H, W]; tensorboard-rs wants the raw bytes channel-first
        let mut chw = vec![0u8; 3 * w * h];
        for (i, p) in overlay.pixels().enumerate() {
            for c in 0..3 {
                chw[c * w * h + i] = p[c];
            }
        }
        writer.add_image(
            &format!("val/{}", prepared.sample.name()),
            &chw,
            &[3, h, w],
            epoch,
        );
    }
    Ok(())
}

/// The device named in the config (`cpu`, `cuda`, `wgpu`; empty: the best compiled in).
pub fn device_for(name: &str) -> Result<Device> {
    let (kind, index) = match name.split_once(':') {
        Some((kind, index)) => (
            kind,
            index
                .parse::<usize>()
                .map_err(|_| anyhow::anyhow!("device '{name}': '{index}' is not a device index"))?,
        ),
        None => (name, 0),
    };
    let choice = match kind {
        "" => DeviceChoice::best_available(),
        other => <DeviceChoice as clap::ValueEnum>::from_str(other, true)
            .map_err(|_| anyhow::anyhow!("device '{name}': expected cpu, cuda, cuda:N or wgpu"))?,
    };
    choice.device_at(index)
}

/// `train.log`: every line also goes to stderr.
struct RunLog(std::fs::File);

impl RunLog {
    fn open(path: &Path) -> Result<Self> {
        Ok(Self(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        ))
    }

    fn line(&mut self, text: &str) {
        use std::io::Write;
        eprintln!("{text}");
        let _ = writeln!(self.0, "{text}");
    }
}
