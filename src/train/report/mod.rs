//! The report at the end of `samtune train` (and `report/validation.json` at each best epoch): the base checkpoint (zero-shot) and the
//! fine-tuned one on the validation set, side by side with the difference, the training
//! curves as pictures, and the images that changed most drawn both ways.

mod pages;

use std::path::Path;

use crate::error::{Context, Result};
use image::RgbImage;
use serde::Serialize;

use burn::tensor::Device;

use super::checkpoints::{RunDirs, TrainState};
use super::config::TrainConfig;
use super::model_setup::with_task_head;
use super::run_data::RunData;
use crate::data::dataset::Sample;
use crate::eval::evaluate::{evaluate_image, progress_bar, EvalSettings};
use crate::eval::metrics::{Aggregate, ObjectResult};
use crate::eval::report::{
    comparison_overlay, enlarge_for_viewing, semantic_prompts, write_report, Report,
};
use crate::eval::review::ReviewImage;
use crate::fsutil::{save_png, write_bytes_atomic, JsonLines};
use crate::model::Sam;
use crate::predict::image::load_rgb;
use crate::predict::semantic::Classes;
use crate::predict::Predictor;
use crate::weights::{load_sam, load_sam_at};

/// Images drawn in each group (most improved, weakest after fine-tuning).
const PICTURES_PER_GROUP: usize = 4;

/// One validation image drawn with both models.
#[derive(Debug, Clone, Serialize)]
pub struct SideBySide {
    pub file: String,
    pub image: String,
    pub zero_shot_iou: f64,
    pub fine_tuned_iou: f64,
}

/// What a training run is: its name, both checkpoints, the model, what trained and how
/// it was prompted.
#[derive(Debug, Clone, Serialize)]
pub struct RunDescription {
    pub run: String,
    pub base_checkpoint: String,
    pub fine_tuned_checkpoint: String,
    pub model: String,
    pub trainable: String,
    pub prompts: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    #[serde(flatten)]
    pub about: RunDescription,
    pub epochs: usize,
    pub best_epoch: usize,
    pub val_images: usize,
    pub zero_shot: Aggregate,
    pub fine_tuned: Aggregate,
    pub most_improved: Vec<SideBySide>,
    pub weakest: Vec<SideBySide>,
    /// The held-out test set, evaluated once with the best checkpoint; `None` without
    /// `data.test`, when the best epoch was chosen on the validation set reported above.
    pub test: Option<TestReport>,
    /// A semantic run's classes (the pictures' legend).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classes: Option<Classes>,
    /// The curves as SVG (also `loss.svg`, `val_iou.svg`).
    #[serde(skip)]
    pub loss_chart: String,
    #[serde(skip)]
    pub iou_chart: String,
}

/// Both models on the test set.
#[derive(Debug, Clone, Serialize)]
pub struct TestReport {
    pub images: usize,
    pub zero_shot: Aggregate,
    pub fine_tuned: Aggregate,
}

/// What the report says when there is no test set.
pub const NO_TEST_SET: &str = "No test set (data.test): the best epoch was chosen on this \
validation set, so the fine-tuned score above is optimistic for new images. Set data.test to \
a fraction or a held-out dataset to measure it.";

impl Report for TrainReport {
    fn markdown(&self) -> String {
        pages::markdown(self)
    }

    fn html(&self) -> String {
        pages::html(self)
    }
}

impl TrainReport {
    pub fn gain(&self) -> f64 {
        self.fine_tuned.overall.mean_iou - self.zero_shot.overall.mean_iou
    }
}

/// What the report describes besides the two models' evaluations.
pub struct RunInfo<'a> {
    pub about: RunDescription,
    pub state: &'a TrainState,
    pub test: Option<TestReport>,
    pub classes: Option<Classes>,
}

/// The end-of-run report: the base and the best checkpoint on the validation set, and
/// on the test set when there is one.
pub fn final_report(
    config: &TrainConfig,
    dirs: &RunDirs,
    state: &TrainState,
    data: &RunData,
    settings: &EvalSettings,
    device: &Device,
) -> Result<TrainReport> {
    let (base, architecture) = load_sam_at(
        &config.model.checkpoint,
        config.model.variant,
        config.model.img_size,
        device,
    )?;
    // zero-shot of a semantic run: the base with its untrained head
    let (base, architecture) = with_task_head(base, architecture, config)?;
    let best = dirs.checkpoints.join("best.safetensors");
    let (fine_tuned, _) = load_sam(&best, None, device)?;
    // the run's cache holds embeddings in the run's precision: both models encode so too
    let precision = config.model.encoder_precision;
    let base = base.with_encoder_precision(precision, device)?;
    let fine_tuned = fine_tuned.with_encoder_precision(precision, device)?;
    let classes = config.classes()?;
    let models = Models {
        base: &base,
        fine_tuned: &fine_tuned,
    };
    let test = (!data.test.is_empty())
        .then(|| -> Result<TestReport> {
            let (zero, tuned) = models.score(&data.test, settings, None)?;
            Ok(TestReport {
                images: data.test.len(),
                zero_shot: Aggregate::of(&zero),
                fine_tuned: Aggregate::of(&tuned),
            })
        })
        .transpose()?;
    write_train_report(
        &dirs.report(),
        &models,
        &data.val,
        settings,
        RunInfo {
            about: RunDescription {
                run: config.name.clone(),
                base_checkpoint: config.model.checkpoint.display().to_string(),
                fine_tuned_checkpoint: best.display().to_string(),
                model: architecture.describe(),
                trainable: config.model.trainable.name().to_string(),
                prompts: match &classes {
                    Some(classes) => semantic_prompts(classes),
                    None => config.prompts.describe(),
                },
            },
            classes,
            state,
            test,
        },
    )
}

/// The models a training run's `report/review.jsonl` compares, in order.
pub const REVIEWED: [&str; 2] = ["zero-shot", "fine-tuned"];

/// The base (zero-shot) and the fine-tuned model.
pub struct Models<'a> {
    pub base: &'a Sam,
    pub fine_tuned: &'a Sam,
}

impl Models<'_> {
    /// Every object's result with each model, image by image; each image's masks both
    /// ways into `review` when given.
    fn score(
        &self,
        samples: &[Sample],
        settings: &EvalSettings,
        mut review: Option<&mut JsonLines>,
    ) -> Result<(Vec<ObjectResult>, Vec<ObjectResult>)> {
        let (base, tuned) = (Predictor::new(self.base), Predictor::new(self.fine_tuned));
        let (mut zero, mut fine) = (Vec::new(), Vec::new());
        let bar = progress_bar(settings, samples.len());
        for (index, sample) in samples.iter().enumerate() {
            let a = evaluate_image(&base, sample, index, settings)?;
            let b = evaluate_image(&tuned, sample, index, settings)?;
            if let Some(review) = review.as_deref_mut() {
                review.add(&ReviewImage::new(sample, &REVIEWED, &[&a, &b])?)?;
            }
            zero.extend(a.results);
            fine.extend(b.results);
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok((zero, fine))
    }

    /// The images at `indices` of `samples` drawn with both models, side by side.
    fn draw(
        &self,
        samples: &[Sample],
        indices: &[usize],
        settings: &EvalSettings,
    ) -> Result<Vec<RgbImage>> {
        let draw = |model: &Sam, index: usize| -> Result<RgbImage> {
            let sample = &samples[index];
            let eval = evaluate_image(&Predictor::new(model), sample, index, settings)?;
            let image = load_rgb(&sample.image, settings.intensity)?;
            Ok(comparison_overlay(
                &image,
                &eval.objects,
                &eval.predicted,
                &eval.prompts,
            ))
        };
        indices
            .iter()
            .map(|&i| Ok(beside(&draw(self.base, i)?, &draw(self.fine_tuned, i)?)))
            .collect()
    }
}

/// `report/validation.json`: the best epoch's per-object validation results and their
/// aggregate next to the zero-shot one (the evaluation report builds on it).
pub fn write_val_report(dir: &Path, state: &TrainState, results: &[ObjectResult]) -> Result<()> {
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

/// Per-image mean IoU, in image order.
fn image_scores(results: &[ObjectResult]) -> Vec<f64> {
    let mut scores: Vec<(String, Vec<f64>)> = Vec::new();
    for r in results {
        match scores.last_mut() {
            Some((name, v)) if *name == r.image => v.push(r.iou),
            _ => scores.push((r.image.clone(), vec![r.iou])),
        }
    }
    scores
        .into_iter()
        .map(|(_, v)| v.iter().sum::<f64>() / v.len() as f64)
        .collect()
}

/// Evaluates both models on `val_set` (embeddings shared through `settings.cache` when the
/// encoder was frozen), draws the most improved and the weakest images both ways, and
/// writes `report.{json,md,html}`, the curves and the pictures into `dir`. Only the drawn
/// images are evaluated a second time, for their masks: memory stays flat with the size
/// of the validation set.
pub fn write_train_report(
    dir: &Path,
    models: &Models,
    val_set: &[Sample],
    settings: &EvalSettings,
    info: RunInfo,
) -> Result<TrainReport> {
    std::fs::create_dir_all(dir.join("compare"))
        .with_context(|| format!("creating {}", dir.join("compare").display()))?;
    let mut review = JsonLines::create(&dir.join("review.jsonl"))?;
    let scored = models.score(val_set, settings, Some(&mut review));
    let (zero_results, tuned_results) = match scored {
        Ok(results) => results,
        Err(e) => {
            review.abandon();
            return Err(e);
        }
    };
    review.finish()?;
    let zero_scores = image_scores(&zero_results);
    let tuned_scores = image_scores(&tuned_results);
    let (most_improved, weakest) = pictured(&zero_scores, &tuned_scores);
    let side_by_side = |indices: &[usize], group: &str| -> Result<Vec<SideBySide>> {
        let pictures = models.draw(val_set, indices, settings)?;
        let mut out = Vec::new();
        for (rank, (&index, picture)) in indices.iter().zip(pictures).enumerate() {
            let name = val_set[index].name();
            let file = format!(
                "compare/{group}_{}_{}.png",
                rank + 1,
                Path::new(&name).with_extension("").display()
            );
            save_png(&dir.join(&file), &picture)?;
            out.push(SideBySide {
                file,
                image: name,
                zero_shot_iou: zero_scores[index],
                fine_tuned_iou: tuned_scores[index],
            });
        }
        Ok(out)
    };
    let zero_shot = Aggregate::of(&zero_results);
    let (loss_chart, iou_chart) = pages::curves(info.state, &zero_shot.overall);
    let report = TrainReport {
        about: info.about,
        epochs: info.state.epoch,
        best_epoch: info.state.best_epoch.unwrap_or(0),
        val_images: val_set.len(),
        zero_shot,
        fine_tuned: Aggregate::of(&tuned_results),
        most_improved: side_by_side(&most_improved, "improved")?,
        weakest: side_by_side(&weakest, "weakest")?,
        test: info.test,
        classes: info.classes,
        loss_chart,
        iou_chart,
    };
    write_bytes_atomic(&dir.join("loss.svg"), report.loss_chart.as_bytes())?;
    write_bytes_atomic(&dir.join("val_iou.svg"), report.iou_chart.as_bytes())?;
    write_report(dir, &report)?;
    Ok(report)
}

/// The images to draw: the most improved, then the weakest of the others.
fn pictured(zero_scores: &[f64], tuned_scores: &[f64]) -> (Vec<usize>, Vec<usize>) {
    let mut by_gain: Vec<usize> = (0..zero_scores.len()).collect();
    by_gain.sort_by(|&a, &b| {
        (tuned_scores[b] - zero_scores[b]).total_cmp(&(tuned_scores[a] - zero_scores[a]))
    });
    let most_improved: Vec<usize> = by_gain.into_iter().take(PICTURES_PER_GROUP).collect();
    let mut by_score: Vec<usize> = (0..zero_scores.len())
        .filter(|i| !most_improved.contains(i))
        .collect();
    by_score.sort_by(|&a, &b| tuned_scores[a].total_cmp(&tuned_scores[b]));
    let weakest = by_score.into_iter().take(PICTURES_PER_GROUP).collect();
    (most_improved, weakest)
}

/// Two pictures next to each other with a white gap, enlarged when small.
fn beside(left: &RgbImage, right: &RgbImage) -> RgbImage {
    let gap = 8;
    let (left, right) = (enlarge_for_viewing(left), enlarge_for_viewing(right));
    let mut out = RgbImage::from_pixel(
        left.width() + gap + right.width(),
        left.height().max(right.height()),
        image::Rgb([255, 255, 255]),
    );
    image::imageops::replace(&mut out, &left, 0, 0);
    image::imageops::replace(&mut out, &right, (left.width() + gap) as i64, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One object's result whose every score is `iou`.
    pub(super) fn result(image: &str, iou: f64) -> ObjectResult {
        ObjectResult {
            image: image.into(),
            object: 0,
            category: None,
            area: 10,
            iou,
            dice: iou,
            predicted_iou: iou,
        }
    }

    #[test]
    fn image_scores_average_each_image_in_order() {
        let results = [result("a", 0.2), result("a", 0.4), result("b", 1.0)];
        let scores = image_scores(&results);
        assert_eq!(scores.len(), 2);
        assert!((scores[0] - 0.3).abs() < 1e-12 && scores[1] == 1.0);
    }
}
