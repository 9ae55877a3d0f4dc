//! One training step: the loss of each example (with correction-click rounds), forward
//! and backward shared out over the devices, gradients accumulated, clipped globally and
//! applied by AdamW. `samtune bench` times this same code. Nothing in a step reads a
//! value back from the device (a GPU would wait for each read): the loss stays there as a
//! [`PendingLoss`] and the clipping factor is computed there; only correction-click
//! rounds read masks, to place their clicks.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::{GradientsAccumulator, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::config::TrainConfig;
use super::examples::{ClassTarget, Drawn, Example};
use super::loss::{class_loss, sam_loss, LossTerms};
use super::optim::clip_global_norm;
use crate::data::prompts::{correction_click, to_prompt_batch};
use crate::error::{err, Result};
use crate::model::Sam;
use crate::predict::{tensor_values, BinaryMask, MaskPlanes, PromptBatch};

/// A batch's loss, as the log and TensorBoard show it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchLoss {
    /// The batch's loss (mean over its images).
    pub loss: f64,
    /// Focal, dice and IoU terms, each the mean over the batch's images.
    pub parts: [f64; 3],
}

/// A batch's loss still on the model's device: `[4]`, the loss then the focal, dice and
/// IoU terms of [`BatchLoss`].
#[derive(Debug, Clone)]
pub struct PendingLoss(Tensor<1>);

impl PendingLoss {
    /// The losses of `pending` batches, read back from the device in one transfer.
    pub fn read_all(pending: Vec<PendingLoss>) -> Result<Vec<BatchLoss>> {
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let values = tensor_values(Tensor::cat(pending.into_iter().map(|p| p.0).collect(), 0))?;
        Ok(values
            .chunks_exact(4)
            .map(|v| BatchLoss {
                loss: v[0] as f64,
                parts: [v[1] as f64, v[2] as f64, v[3] as f64],
            })
            .collect())
    }
}

/// The optimizer side of training: batches accumulate gradients until
/// `train.grad_accumulation` of them are in, then one clipped AdamW step is taken.
pub struct Stepper {
    /// The devices a batch is shared out to; the first holds the model and the optimizer.
    devices: Vec<Device>,
    /// The model on the other devices, from the first batch on.
    replicas: Option<Replicas>,
    accumulator: GradientsAccumulator<Sam>,
    pending: usize,
}

impl Stepper {
    /// `devices`: autodiff devices, the model's first.
    pub fn new(devices: Vec<Device>) -> Self {
        Self {
            devices,
            replicas: None,
            accumulator: GradientsAccumulator::new(),
            pending: 0,
        }
    }

    /// Whether gradients are waiting for an optimizer step.
    pub fn has_pending(&self) -> bool {
        self.pending > 0
    }

    /// Forward and backward of one batch of drawn examples; the gradients accumulate.
    pub fn batch(
        &mut self,
        model: &Sam,
        examples: Vec<Drawn>,
        config: &TrainConfig,
    ) -> Result<PendingLoss> {
        let images = examples.len();
        let accumulation = config.train.grad_accumulation;
        let scale = (images * accumulation) as f64;
        let mut sums: Option<Tensor<1>> = None;
        let replicas = self
            .replicas
            .get_or_insert_with(|| Replicas::new(model, &self.devices))
            .for_batch(model);
        for share in data_parallel_step(&replicas, &self.devices, examples, config, scale)? {
            let (grads, terms) = if share.device == 0 {
                (share.grads, share.terms)
            } else {
                let main = &self.devices[0];
                (
                    share.grads.to_device(main, model),
                    share.terms.to_device(main),
                )
            };
            self.accumulator.accumulate(model, grads);
            sums = Some(add(sums, terms));
        }
        self.pending += 1;
        let sums = sums.ok_or_else(|| err!("a training batch without examples"))?;
        // the shares' losses were divided by the images of the whole accumulation, their
        // terms summed over the batch's images
        let terms = 1.0 / images as f32;
        let per_batch = Tensor::from_data(
            TensorData::new(vec![accumulation as f32, terms, terms, terms], [4]),
            &sums.device(),
        );
        Ok(PendingLoss(sums * per_batch))
    }

    /// Whether the next [`Self::apply`] should run: the accumulation is complete, or
    /// `last` (the epoch's last batch) says to flush it.
    pub fn due(&self, config: &TrainConfig, last: bool) -> bool {
        self.pending > 0 && (self.pending == config.train.grad_accumulation || last)
    }

    /// The accumulated gradients, clipped to `train.grad_clip_norm` over all parameters,
    /// applied at learning rate `lr`.
    pub fn apply(
        &mut self,
        model: Sam,
        optim: &mut ModuleOptimizer,
        lr: f64,
        config: &TrainConfig,
    ) -> Sam {
        let mut grads = self.accumulator.grads();
        clip_global_norm(&model, &mut grads, config.train.grad_clip_norm);
        self.pending = 0;
        optim.step(lr, model, grads)
    }
}

/// One device's part of a batch: its gradients and loss terms (on that device).
struct ShareOutput {
    device: usize,
    grads: GradientsParams,
    /// `[4]`, without gradient: its share of the batch loss (already divided by the
    /// images of the whole accumulation), then its focal, dice and IoU terms, each summed
    /// over its images.
    terms: Tensor<1>,
}

/// The model on each device of a batch. On the first device, the model forked (no copy:
/// the same device); on the others, replicas kept from batch to batch: their frozen
/// parameters (most of the model when the image encoder is frozen) are copied to the
/// device once, and only the trainable ones from the model at every batch.
///
/// Every parameter of a replica is a new leaf at every batch, made before any worker
/// runs, and each share's images are encoded by its own replica: no worker then touches
/// the model's autodiff graph, or another batch's. Two workers on one graph deadlock
/// burn-autodiff (a backward takes the graph lock, then the global locator lock; a new
/// node takes the locator lock, then the graph's), and gradients that flow into the
/// model's graph instead of the replica's are lost to that replica's `GradientsParams`.
struct Replicas {
    devices: Vec<Device>,
    /// On `devices[1..]`.
    others: Vec<Sam>,
}

impl Replicas {
    fn new(model: &Sam, devices: &[Device]) -> Self {
        Self {
            devices: devices.to_vec(),
            others: devices[1..].iter().map(|d| model.clone().fork(d)).collect(),
        }
    }

    /// The model on every device, with `model`'s trainable parameters.
    fn for_batch(&mut self, model: &Sam) -> Vec<Sam> {
        if !self.others.is_empty() {
            let mut trainable = TrainableValues::default();
            model.visit(&mut trainable);
            self.others = std::mem::take(&mut self.others)
                .into_iter()
                .zip(&self.devices[1..])
                .map(|(replica, device)| {
                    replica.map(&mut Refresh {
                        trainable: &trainable.0,
                        device,
                    })
                })
                .collect();
        }
        let mut models = vec![model.clone().fork(&self.devices[0])];
        models.extend(self.others.iter().cloned());
        models
    }
}

/// The values of a model's trainable parameters, flattened and detached.
#[derive(Default)]
struct TrainableValues(HashMap<ParamId, Tensor<1>>);

impl ModuleVisitor for TrainableValues {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        // `base`: a LoRA adapter's factors are parameters of their own, visited apart
        let value = param.base();
        if value.is_require_grad() {
            let elements = value.shape().num_elements();
            self.0.insert(param.id, value.detach().reshape([elements]));
        }
    }
}

/// Replaces a replica's trainable parameters by the model's, on the replica's device;
/// every parameter becomes a new leaf.
struct Refresh<'a> {
    trainable: &'a HashMap<ParamId, Tensor<1>>,
    device: &'a Device,
}

impl ModuleMapper for Refresh<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, value, mapper) = param.consume();
        let value = match self.trainable.get(&id) {
            Some(current) => current
                .clone()
                .to_device(self.device)
                .reshape(value.dims())
                .detach()
                .require_grad(),
            None => value.detach(),
        };
        Param::from_mapped_value(id, value, mapper)
    }
}

/// Forward and backward of a batch, its images shared round-robin over the devices, each
/// share on its replica in its own thread. The summed gradients equal one device's up to
/// floating-point order: every share's loss is divided by the whole batch.
fn data_parallel_step(
    replicas: &[Sam],
    devices: &[Device],
    examples: Vec<Drawn>,
    config: &TrainConfig,
    scale: f64,
) -> Result<Vec<ShareOutput>> {
    let mut shares: Vec<Vec<Drawn>> = (0..devices.len()).map(|_| Vec::new()).collect();
    for (i, example) in examples.into_iter().enumerate() {
        shares[i % devices.len()].push(example);
    }
    let run = |index: usize, share: Vec<Drawn>| -> Result<Option<ShareOutput>> {
        if share.is_empty() {
            return Ok(None);
        }
        share_step(
            &replicas[index],
            index,
            &devices[index],
            share,
            config,
            scale,
        )
        .map(Some)
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
                    h.join()
                        .unwrap_or_else(|_| Err(err!("the training worker of device {i} panicked")))
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

/// Forward and backward of one device's share of a batch on its `replica` of the model.
fn share_step(
    replica: &Sam,
    index: usize,
    device: &Device,
    share: Vec<Drawn>,
    config: &TrainConfig,
    scale: f64,
) -> Result<ShareOutput> {
    // the dense positional encoding depends only on the (always frozen) gaussian matrix
    let dense_pe = replica.prompt_encoder.get_dense_pe();
    let mut parts: Option<Tensor<1>> = None;
    let mut loss: Option<Tensor<1>> = None;
    let mut total: Option<Tensor<1>> = None;
    let mut grads = GradientsAccumulator::<Sam>::new();
    // with the image encoder in the graph, each image's backward runs alone, so that one
    // image's encoder activations are alive at a time; otherwise one backward for all
    let per_image = !config.model.trainable.encoder_frozen();
    for drawn in share {
        let (example, seed) = drawn.into_example(replica, device);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let terms = example_loss(replica, &dense_pe, &example, config, &mut rng)?;
        let example_parts = Tensor::cat(vec![terms.focal, terms.dice, terms.iou], 0).detach();
        parts = Some(add(parts, example_parts));
        if per_image {
            let scaled = terms.total / scale;
            loss = Some(add(loss, scaled.clone().detach()));
            grads.accumulate(
                replica,
                GradientsParams::from_grads(scaled.backward(), replica),
            );
        } else {
            total = Some(add(total, terms.total));
        }
    }
    if let Some(total) = total {
        let scaled = total / scale;
        loss = Some(scaled.clone().detach());
        grads.accumulate(
            replica,
            GradientsParams::from_grads(scaled.backward(), replica),
        );
    }
    let (Some(loss), Some(parts)) = (loss, parts) else {
        return Err(err!("device {index} was given no training examples"));
    };
    Ok(ShareOutput {
        device: index,
        grads: grads.grads(),
        terms: Tensor::cat(vec![loss, parts], 0),
    })
}

/// `sum + term`, or `term` alone when nothing is summed yet.
fn add(sum: Option<Tensor<1>>, term: Tensor<1>) -> Tensor<1> {
    match sum {
        Some(sum) => sum + term,
        None => term,
    }
}

/// The loss of one image's prompts, with `refine_clicks` correction rounds.
pub fn example_loss(
    model: &Sam,
    dense_pe: &Tensor<4>,
    example: &Example,
    config: &TrainConfig,
    rng: &mut ChaCha8Rng,
) -> Result<LossTerms> {
    if let Some(target) = &example.classes {
        return Ok(class_example_loss(model, dense_pe, example, target, config));
    }
    let device = dense_pe.device();
    let n = example.prompts.len();
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
        let prompts = batch.to_prompts(example.encoded.original_size, model.img_size, &device);
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
            let planes = MaskPlanes::read(
                output.masks.clone().detach(),
                output.iou_predictions.clone().detach(),
            )?;
            add_correction_clicks(&mut batch, &planes, example, model.img_size, rng);
            batch.mask_input = Some(Tensor::from_data(
                TensorData::new(best_planes(&planes), [n, 1, planes.dims[2], planes.dims[3]]),
                &device,
            ));
        }
        terms.push(round_terms);
    }
    Ok(mean_over_rounds(terms))
}

/// The loss of a semantic example: the head's classes for the whole image, no prompt.
fn class_example_loss(
    model: &Sam,
    dense_pe: &Tensor<4>,
    example: &Example,
    target: &ClassTarget,
    config: &TrainConfig,
) -> LossTerms {
    let device = dense_pe.device();
    let logits = model.mask_decoder.predict_classes(
        example.encoded.embedding.clone(),
        dense_pe.clone(),
        model.prompt_encoder.no_mask_dense_embedding(),
    );
    let [_, outputs, side, _] = logits.dims();
    let onehot: Vec<f32> = (0..outputs)
        .flat_map(|k| {
            target
                .classes
                .iter()
                .map(move |&c| (c as usize == k) as u8 as f32)
        })
        .collect();
    let onehot = Tensor::from_data(TensorData::new(onehot, [1, outputs, side, side]), &device);
    let valid = Tensor::from_data(
        TensorData::new(target.valid.clone(), [1, 1, side, side]),
        &device,
    );
    class_loss(logits, onehot, valid, &config.loss)
}

/// The best low-res logits of each prompt, the mask input of the next round.
fn best_planes(planes: &MaskPlanes) -> Vec<f32> {
    (0..planes.dims[0])
        .flat_map(|i| planes.plane(i, planes.best(i)).iter().copied())
        .collect()
}

/// Next round: a click from each prompt's error region (its best mask against the
/// low-res target), in original-image pixels.
fn add_correction_clicks(
    batch: &mut PromptBatch,
    planes: &MaskPlanes,
    example: &Example,
    img_size: usize,
    rng: &mut ChaCha8Rng,
) {
    let [n, _, h, w] = planes.dims;
    let scale = [
        example.encoded.original_size[0] as f64 / example.encoded.input_size[0] as f64,
        example.encoded.original_size[1] as f64 / example.encoded.input_size[1] as f64,
    ];
    if batch.points.is_empty() {
        batch.points = vec![Vec::new(); n];
    }
    for i in 0..n {
        let predicted = planes.binary(i, planes.best(i));
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
        batch.points[i].push(click.unwrap_or(([0.0, 0.0], -1)));
    }
}

/// The mean of each term over the rounds; the actual IoU is the last round's.
fn mean_over_rounds(terms: Vec<LossTerms>) -> LossTerms {
    let rounds = terms.len() as f64;
    let mean = |term: fn(&LossTerms) -> &Tensor<1>| {
        terms
            .iter()
            .map(|t| term(t).clone())
            .reduce(|a, b| a + b)
            .expect("at least one round")
            / rounds
    };
    LossTerms {
        total: mean(|t| &t.total),
        focal: mean(|t| &t.focal),
        dice: mean(|t| &t.dice),
        iou: mean(|t| &t.iou),
        actual_iou: terms.last().expect("at least one round").actual_iou.clone(),
    }
}
