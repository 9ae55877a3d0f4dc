//! Predict every object of a labeled set with fixed, seeded prompts and score it.

use crate::error::Result;
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::metrics::{iou_and_dice, ObjectResult};
use crate::data::dataset::Prepared;
use crate::data::prompts::{
    sample_kind, sample_prompt, to_prompt_batch, ObjectPrompt, PromptConfig,
};
use crate::model::Sam;
use crate::predict::image::IntensityScaling;
use crate::predict::{encode_image, BinaryMask, EmbeddingCache, Predictor};

/// One image's results, and its predicted masks when asked for.
pub struct ImageEval {
    pub results: Vec<ObjectResult>,
    pub prompts: Vec<ObjectPrompt>,
    pub predicted: Vec<BinaryMask>,
}

/// The prompts an image's objects get in evaluation: drawn from `config` with an RNG
/// seeded by `seed` and the image's index, so every epoch and checkpoint sees the same.
pub fn evaluation_prompts(
    prepared: &Prepared,
    index: usize,
    config: &PromptConfig,
    seed: u64,
) -> Vec<ObjectPrompt> {
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(index as u64),
    );
    let no_jitter = PromptConfig {
        box_jitter: 0.0,
        ..config.clone()
    };
    let kind = sample_kind(config, &mut rng);
    prepared
        .objects
        .iter()
        .map(|o| sample_prompt(&o.mask, kind, &no_jitter, &mut rng))
        .collect()
}

/// How an evaluation runs.
pub struct EvalSettings<'a> {
    /// Embeddings from (and into) the cache, when given.
    pub cache: Option<&'a EmbeddingCache>,
    pub intensity: IntensityScaling,
    pub prompts: &'a PromptConfig,
    /// Seeds the prompts, per image index.
    pub seed: u64,
    /// Keep the predicted masks (for overlays).
    pub keep_masks: bool,
    pub progress: bool,
}

/// Object results of all images.
pub fn flatten(evals: &[ImageEval]) -> Vec<ObjectResult> {
    evals
        .iter()
        .flat_map(|e| e.results.iter().cloned())
        .collect()
}

/// Evaluates `model` (a non-autodiff copy) on `samples`, collecting every image's results.
pub fn evaluate(
    model: &Sam,
    samples: &[Prepared],
    settings: &EvalSettings,
) -> Result<Vec<ImageEval>> {
    let mut out = Vec::with_capacity(samples.len());
    evaluate_each(model, samples, settings, |_, eval| {
        out.push(eval);
        Ok(())
    })?;
    Ok(out)
}

/// Evaluates `model` (a non-autodiff copy) on `samples`, handing each image's results to
/// `sink` as they come, so memory stays flat however many images there are. With several
/// masks per prompt, the one with the highest predicted IoU is scored, as SAM's users pick it.
pub fn evaluate_each(
    model: &Sam,
    samples: &[Prepared],
    settings: &EvalSettings,
    mut sink: impl FnMut(usize, ImageEval) -> Result<()>,
) -> Result<()> {
    let EvalSettings {
        cache,
        intensity,
        prompts,
        seed,
        keep_masks,
        progress,
    } = *settings;
    let device = model.prompt_encoder.get_dense_pe().device();
    let predictor = Predictor::new(model);
    let bar = if progress {
        ProgressBar::new(samples.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("eval {bar:30} {pos}/{len} images {per_sec} ETA {eta}")
            .expect("valid template"),
    );
    for (index, prepared) in samples.iter().enumerate() {
        let object_prompts = evaluation_prompts(prepared, index, prompts, seed);
        let encoded = encode_image(model, &prepared.sample.image, cache, intensity, &device)?;
        let planes = predictor
            .predict(
                &encoded,
                &to_prompt_batch(&object_prompts),
                prompts.multimask.for_prompts(&object_prompts),
            )?
            .planes()?;
        let mut results = Vec::new();
        let mut predicted: Vec<BinaryMask> = Vec::new();
        for (i, object) in prepared.objects.iter().enumerate() {
            let best = planes.best(i);
            let mask = planes.binary(i, best);
            let (iou, dice) = iou_and_dice(&mask, &object.mask);
            results.push(ObjectResult {
                image: prepared.sample.name(),
                object: i,
                category: object.category.clone(),
                area: object.mask.area(),
                iou,
                dice,
                predicted_iou: planes.predicted_iou(i, best) as f64,
            });
            if keep_masks {
                predicted.push(mask);
            }
        }
        sink(
            index,
            ImageEval {
                results,
                prompts: object_prompts,
                predicted,
            },
        )?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(())
}
