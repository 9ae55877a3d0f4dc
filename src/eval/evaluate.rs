//! Predict every object of a labeled set with fixed, seeded prompts and score it, one
//! image at a time: an image's masks are decoded when it is evaluated and dropped after.

use indicatif::ProgressBar;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::metrics::{iou_and_dice, ObjectResult};
use crate::data::dataset::{Object, Sample};
use crate::data::prompts::{
    sample_kind, sample_prompt, to_prompt_batch, ObjectPrompt, PromptConfig,
};
use crate::error::Result;
use crate::model::Sam;
use crate::predict::image::IntensityScaling;
use crate::predict::semantic::{class_logits, Classes};
use crate::predict::{
    encode_images, tensor_values, BinaryMask, EmbeddingCache, EncodedImage, MaskPlanes, Predictor,
};
use crate::progress::count_bar;

/// One image evaluated: each object's result, and (for pictures) its prompts, its ground
/// truth and the predicted masks; the caller keeps what it needs.
pub struct ImageEval {
    pub results: Vec<ObjectResult>,
    pub prompts: Vec<ObjectPrompt>,
    pub objects: Vec<Object>,
    /// Each object's scored mask: the one of highest predicted IoU (`chosen`) of its
    /// prompt's masks, thresholded.
    pub predicted: Vec<BinaryMask>,
    /// The logits of every mask of every prompt, and which mask each object scored.
    pub planes: MaskPlanes,
    pub chosen: Vec<usize>,
}

impl ImageEval {
    /// The logits of object `i`'s scored mask, `[H, W]` row-major.
    pub fn logits(&self, i: usize) -> &[f32] {
        self.planes.plane(i, self.chosen[i])
    }
}

/// The prompts an image's objects get in evaluation: drawn from `config` with an RNG
/// seeded by `seed` and the image's index, so every epoch and checkpoint sees the same.
pub fn evaluation_prompts(
    objects: &[Object],
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
    objects
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
    pub progress: bool,
    /// A semantic model's classes: each image is predicted without prompts and scored
    /// per class (see [`evaluate_classes`]).
    pub semantic: Option<&'a Classes>,
    /// Images run through the encoder together (`cache.encode_batch`, `--encode-batch`):
    /// on a GPU, each kernel launched once for all of them.
    pub encode_batch: usize,
}

/// Every object's result on `samples` (nothing else is kept).
pub fn evaluate(
    model: &Sam,
    samples: &[Sample],
    settings: &EvalSettings,
) -> Result<Vec<ObjectResult>> {
    let mut out = Vec::new();
    evaluate_each(model, samples, settings, |_, eval| {
        out.extend(eval.results);
        Ok(())
    })?;
    Ok(out)
}

/// Evaluates `model` (a non-autodiff copy) on `samples`, handing each image's results to
/// `sink` as they come, so memory stays flat however many images there are.
pub fn evaluate_each(
    model: &Sam,
    samples: &[Sample],
    settings: &EvalSettings,
    mut sink: impl FnMut(usize, ImageEval) -> Result<()>,
) -> Result<()> {
    let predictor = Predictor::new(model);
    let bar = progress_bar(settings, samples.len());
    let batch = settings.encode_batch.max(1);
    for (first, chunk) in samples.chunks(batch).enumerate() {
        let encoded = encode_samples(&predictor, chunk, settings)?;
        for (offset, (sample, encoded)) in chunk.iter().zip(&encoded).enumerate() {
            let index = first * batch + offset;
            sink(
                index,
                evaluate_encoded(&predictor, sample, encoded, index, settings)?,
            )?;
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// The bar of an evaluation of `images` images (hidden unless `settings.progress`).
pub fn progress_bar(settings: &EvalSettings, images: usize) -> ProgressBar {
    count_bar("eval", images, "images", settings.progress)
}

/// One image (the `index`-th of its set, which seeds its prompts): every object predicted
/// and scored. With several masks per prompt, the one with the highest predicted IoU is
/// scored, as SAM's users pick it.
pub fn evaluate_image(
    predictor: &Predictor,
    sample: &Sample,
    index: usize,
    settings: &EvalSettings,
) -> Result<ImageEval> {
    let encoded = encode_samples(predictor, std::slice::from_ref(sample), settings)?;
    evaluate_encoded(predictor, sample, &encoded[0], index, settings)
}

/// [`evaluate_image`] with the image already encoded.
fn evaluate_encoded(
    predictor: &Predictor,
    sample: &Sample,
    encoded: &EncodedImage,
    index: usize,
    settings: &EvalSettings,
) -> Result<ImageEval> {
    if let Some(classes) = settings.semantic {
        return evaluate_classes(predictor, sample, encoded, classes);
    }
    let objects = sample.decode_objects()?;
    let prompts = evaluation_prompts(&objects, index, settings.prompts, settings.seed);
    let planes = predictor
        .predict(
            encoded,
            &to_prompt_batch(&prompts),
            settings.prompts.multimask.for_prompts(&prompts),
        )?
        .planes()?;
    let mut results = Vec::with_capacity(objects.len());
    let mut predicted = Vec::with_capacity(objects.len());
    let chosen: Vec<usize> = (0..objects.len()).map(|i| planes.best(i)).collect();
    for (i, object) in objects.iter().enumerate() {
        let best = chosen[i];
        let mask = planes.binary(i, best);
        let (iou, dice) = iou_and_dice(&mask, &object.mask);
        results.push(ObjectResult {
            image: sample.name(),
            object: i,
            category: object.category.clone(),
            area: object.mask.area(),
            iou,
            dice,
            predicted_iou: planes.predicted_iou(i, best) as f64,
        });
        predicted.push(mask);
    }
    Ok(ImageEval {
        results,
        prompts,
        objects,
        predicted,
        planes,
        chosen,
    })
}

/// The samples' images encoded in one encoder pass (through the cache), each checked
/// against its indexed size.
fn encode_samples(
    predictor: &Predictor,
    samples: &[Sample],
    settings: &EvalSettings,
) -> Result<Vec<EncodedImage>> {
    let paths: Vec<&std::path::Path> = samples.iter().map(|s| s.image.as_path()).collect();
    let encoded = encode_images(
        predictor.model(),
        &paths,
        settings.cache,
        settings.intensity,
        &predictor.device(),
    )?;
    for (sample, encoded) in samples.iter().zip(&encoded) {
        sample.check_image_size(encoded.original_size)?;
    }
    Ok(encoded)
}

/// One image with a semantic model: its label map predicted without prompts, and each
/// class scored as one object where it is in the ground truth or the prediction (a class
/// in neither has nothing to score). `objects`, `predicted` and the planes hold every
/// class in head order (entry `i` is class `i + 1`, drawn in its legend colour); a plane
/// holds the class's margin (its logit minus the best other class's: positive where it
/// is predicted).
pub fn evaluate_classes(
    predictor: &Predictor,
    sample: &Sample,
    encoded: &EncodedImage,
    classes: &Classes,
) -> Result<ImageEval> {
    let truth = sample.class_map(classes, &classes.index_of_values())?;
    let logits = tensor_values(class_logits(predictor.model(), encoded))?;
    let [height, width] = encoded.original_size;
    let pixels = height * width;
    let outputs = classes.len() + 1;
    let top = top_two(&logits, outputs, pixels);
    let argmax: Vec<u8> = top.iter().map(|&(k, _, _)| k).collect();
    let mut eval = ImageEval {
        results: Vec::new(),
        prompts: Vec::new(),
        objects: Vec::with_capacity(classes.len()),
        predicted: Vec::with_capacity(classes.len()),
        planes: MaskPlanes {
            dims: [classes.len(), 1, height, width],
            logits: Vec::with_capacity(classes.len() * pixels),
            ious: vec![f32::NAN; classes.len()],
        },
        chosen: vec![0; classes.len()],
    };
    for k in 1..outputs {
        let class_mask = |map: &[u8]| BinaryMask {
            width,
            height,
            data: map.iter().map(|&c| (c as usize == k) as u8).collect(),
        };
        let (true_mask, predicted_mask) = (class_mask(&truth.classes), class_mask(&argmax));
        if true_mask.area() > 0 || predicted_mask.area() > 0 {
            let (iou, dice) = iou_and_dice(&predicted_mask, &true_mask);
            eval.results.push(ObjectResult {
                image: sample.name(),
                object: k,
                category: Some(classes.name(k).to_string()),
                area: true_mask.area(),
                iou,
                dice,
                predicted_iou: f64::NAN,
            });
        }
        // the best other class's logit: the second best where `k` is the best
        eval.planes
            .logits
            .extend(top.iter().enumerate().map(|(p, &(best, first, second))| {
                let other = if best as usize == k { second } else { first };
                logits[k * pixels + p] - other
            }));
        eval.objects.push(Object {
            mask: true_mask,
            category: Some(classes.name(k).to_string()),
        });
        eval.predicted.push(predicted_mask);
    }
    Ok(eval)
}

/// For each pixel of `[outputs, pixels]` logits: the most likely output (the last of
/// equal ones), its logit and the second-best logit, in one pass over the outputs.
fn top_two(logits: &[f32], outputs: usize, pixels: usize) -> Vec<(u8, f32, f32)> {
    (0..pixels)
        .map(|p| {
            let (mut best, mut first, mut second) = (0u8, f32::NEG_INFINITY, f32::NEG_INFINITY);
            for k in 0..outputs {
                let v = logits[k * pixels + p];
                if v >= first {
                    (best, first, second) = (k as u8, v, first);
                } else if v > second {
                    second = v;
                }
            }
            (best, first, second)
        })
        .collect()
}
