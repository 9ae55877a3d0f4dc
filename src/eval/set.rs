//! `samtune eval`: a checkpoint on a labeled set, every object's result streamed to
//! `objects.jsonl`, the best and worst images drawn, and the report written.

use std::path::Path;

use image::RgbImage;

use super::evaluate::{evaluate_each, EvalSettings, ImageEval};
use super::metrics::{Aggregate, Confusion, ObjectResult};
use super::report::semantic_prompts;
use super::report::{comparison_overlay, enlarge_for_viewing, write_report, EvalReport};
use super::review::ReviewImage;
use crate::data::dataset::Sample;
use crate::data::prompts::PromptConfig;
use crate::data::DataConfig;
use crate::error::{bail, Context, Result};
use crate::fsutil::{save_png, JsonLines};
use crate::model::{Architecture, Sam};
use crate::predict::image::load_rgb;
use crate::predict::semantic::Classes;
use crate::predict::BinaryMask;

/// What `samtune eval` is asked to do.
pub struct SetEvaluation<'a> {
    /// The checkpoint's path, as the report names it.
    pub checkpoint: &'a Path,
    /// The labeled set: its validation part when it has one, else all of it.
    pub data: &'a DataConfig,
    pub prompts: PromptConfig,
    /// Seeds the prompts, per image.
    pub seed: u64,
    /// Best and worst images drawn (each).
    pub overlays: usize,
    /// A semantic model's classes: each image segmented without prompts, scored per class.
    pub semantic: Option<&'a Classes>,
    /// Images run through the encoder together.
    pub encode_batch: usize,
    /// Gets `report.{json,md,html}`, `objects.jsonl`, `review.jsonl` and `overlays/`.
    pub out: &'a Path,
}

/// Evaluates `model` as `job` says and writes its outputs; memory stays flat with the
/// size of the set (results stream to disk, only the drawn images stay in memory).
pub fn evaluate_set(
    model: &Sam,
    architecture: &Architecture,
    job: &SetEvaluation,
) -> Result<EvalReport> {
    let dataset = job.data.open()?;
    let split = dataset.split;
    let samples = if split.val.is_empty() {
        split.train
    } else {
        split.val
    };
    if samples.is_empty() {
        bail!(
            "{}: no objects of at least {} px to evaluate",
            job.data.location().display(),
            job.data.min_area
        );
    }
    std::fs::create_dir_all(job.out.join("overlays"))
        .with_context(|| format!("creating {}", job.out.display()))?;
    let settings = EvalSettings {
        cache: None,
        intensity: job.data.sample_intensity(),
        prompts: &job.prompts,
        seed: job.seed,
        progress: true,
        semantic: job.semantic,
        encode_batch: job.encode_batch,
    };
    let (results, pictures, confusion) = stream_results(model, &samples, &settings, job)?;
    let overlays = save_pictures(job.out, pictures)?;
    let report = EvalReport {
        checkpoint: job.checkpoint.display().to_string(),
        model: architecture.describe(),
        data: job.data.location().display().to_string(),
        prompts: match job.semantic {
            Some(classes) => semantic_prompts(classes),
            None => job.prompts.describe(),
        },
        images: samples.len(),
        images_without_objects: dataset.filtered.empty_images,
        objects_below_min_area: dataset.filtered.small_objects,
        min_area: job.data.min_area,
        aggregate: Aggregate::of(&results),
        overlays,
        confusion,
    };
    write_report(job.out, &report)?;
    Ok(report)
}

/// The best and the worst images by mean IoU, with their pictures.
#[derive(Default)]
struct Pictures {
    best: Vec<(f64, String, RgbImage)>,
    worst: Vec<(f64, String, RgbImage)>,
}

impl Pictures {
    fn qualifies(&self, score: f64, keep: usize) -> bool {
        self.best.len() < keep
            || self.worst.len() < keep
            || self.best.iter().any(|(s, _, _)| score > *s)
            || self.worst.iter().any(|(s, _, _)| score < *s)
    }

    fn add(&mut self, score: f64, name: String, picture: RgbImage, keep: usize) {
        for (list, better) in [(&mut self.best, true), (&mut self.worst, false)] {
            list.push((score, name.clone(), picture.clone()));
            list.sort_by(|a, b| {
                if better {
                    b.0.total_cmp(&a.0)
                } else {
                    a.0.total_cmp(&b.0)
                }
            });
            list.truncate(keep);
        }
    }
}

/// The name `review.jsonl` gives the evaluated checkpoint.
const MODEL: &str = "checkpoint";

/// Evaluates every image, writing each object's result to `objects.jsonl` and each image's
/// masks to `review.jsonl` (each renamed into place once complete), and keeping the
/// pictures that may be drawn.
fn stream_results(
    model: &Sam,
    samples: &[Sample],
    settings: &EvalSettings,
    job: &SetEvaluation,
) -> Result<(Vec<ObjectResult>, Pictures, Option<Confusion>)> {
    let mut objects = JsonLines::create(&job.out.join("objects.jsonl"))?;
    let mut review = JsonLines::create(&job.out.join("review.jsonl"))?;
    let mut results: Vec<ObjectResult> = Vec::new();
    let mut pictures = Pictures::default();
    let mut confusion = job.semantic.map(Confusion::new);
    let streamed = evaluate_each(model, samples, settings, |index, eval: ImageEval| {
        if let Some(confusion) = &mut confusion {
            let classes: Vec<usize> = (1..=eval.objects.len()).collect();
            let truth: Vec<&BinaryMask> = eval.objects.iter().map(|o| &o.mask).collect();
            let predicted: Vec<&BinaryMask> = eval.predicted.iter().collect();
            confusion.add(&classes, &truth, &predicted);
        }
        for r in &eval.results {
            objects.add(r)?;
        }
        let sample = &samples[index];
        review.add(&ReviewImage::new(sample, &[MODEL], &[&eval])?)?;
        let score =
            eval.results.iter().map(|r| r.iou).sum::<f64>() / eval.results.len().max(1) as f64;
        if job.overlays > 0 && pictures.qualifies(score, job.overlays) {
            let image = load_rgb(&sample.image, settings.intensity)?;
            let picture = comparison_overlay(&image, &eval.objects, &eval.predicted, &eval.prompts);
            pictures.add(score, sample.name(), picture, job.overlays);
        }
        results.extend(eval.results);
        Ok(())
    });
    if let Err(e) = streamed {
        objects.abandon();
        review.abandon();
        return Err(e);
    }
    objects.finish()?;
    review.finish()?;
    Ok((results, pictures, confusion))
}

/// `overlays/{best,worst}_N_<image>.png`; `(file, image, mean IoU)` of each.
fn save_pictures(out: &Path, pictures: Pictures) -> Result<Vec<(String, String, f64)>> {
    let mut overlays = Vec::new();
    for (kind, list) in [("best", &pictures.best), ("worst", &pictures.worst)] {
        for (rank, (score, name, picture)) in list.iter().enumerate() {
            let file = format!(
                "overlays/{kind}_{}_{}.png",
                rank + 1,
                Path::new(name).with_extension("").display()
            );
            save_png(&out.join(&file), &enlarge_for_viewing(picture))?;
            overlays.push((file, name.clone(), *score));
        }
    }
    Ok(overlays)
}
