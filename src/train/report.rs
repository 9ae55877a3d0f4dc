//! The report at the end of `samtune train` (and `report/validation.json` at each best epoch): the base checkpoint (zero-shot) and the
//! fine-tuned one on the validation set, side by side with the difference, the training
//! curves as pictures, and the images that changed most drawn both ways.

use std::path::Path;

use crate::error::{Context, Result};
use image::RgbImage;
use serde::Serialize;

use burn::tensor::Device;

use super::checkpoints::{RunDirs, TrainState};
use super::config::TrainConfig;
use super::run::{with_task_head, RunData};
use crate::data::dataset::Sample;
use crate::eval::charts::{Chart, Reference, Series};
use crate::eval::evaluate::{evaluate_image, progress_bar, EvalSettings};
use crate::eval::metrics::{Aggregate, ObjectResult, Summary};
use crate::eval::report::{
    class_legend, comparison_overlay, enlarge_for_viewing, escape, semantic_prompts, write_report,
    Report, EMPTY_CASES, STYLE,
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

#[derive(Debug, Clone, Serialize)]
pub struct TrainReport {
    pub run: String,
    pub base_checkpoint: String,
    pub fine_tuned_checkpoint: String,
    pub model: String,
    pub trainable: String,
    pub prompts: String,
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
        markdown(self)
    }

    fn html(&self) -> String {
        html(self)
    }
}

impl TrainReport {
    pub fn gain(&self) -> f64 {
        self.fine_tuned.overall.mean_iou - self.zero_shot.overall.mean_iou
    }
}

/// What the report describes besides the two models' evaluations.
pub struct RunInfo<'a> {
    pub run: String,
    pub base_checkpoint: String,
    pub fine_tuned_checkpoint: String,
    pub model: String,
    pub trainable: String,
    pub prompts: String,
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
            run: config.name.clone(),
            base_checkpoint: config.model.checkpoint.display().to_string(),
            fine_tuned_checkpoint: best.display().to_string(),
            model: architecture.describe(),
            trainable: config.model.trainable.name().to_string(),
            prompts: match &classes {
                Some(classes) => semantic_prompts(classes),
                None => config.prompts.describe(),
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
    let (loss_chart, iou_chart) = curves(info.state, &zero_shot.overall);
    let report = TrainReport {
        run: info.run,
        base_checkpoint: info.base_checkpoint,
        fine_tuned_checkpoint: info.fine_tuned_checkpoint,
        model: info.model,
        trainable: info.trainable,
        prompts: info.prompts,
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

/// The training loss (per step, and its epoch means) and the validation mIoU and Dice per
/// epoch against the zero-shot level, as SVG.
pub fn curves(state: &TrainState, zero_shot: &Summary) -> (String, String) {
    let epochs: Vec<_> = state.history.iter().collect();
    let steps_per_epoch = if state.epoch > 0 {
        state.step as f64 / state.epoch as f64
    } else {
        1.0
    };
    let loss = Chart {
        title: "Training loss".into(),
        x_label: "epoch".into(),
        y_label: "loss (focal x 20 + dice + IoU MSE)".into(),
        series: vec![
            Series {
                name: "per step".into(),
                colour: "#1f77b4",
                points: state
                    .step_losses
                    .iter()
                    .map(|&(step, l)| (step as f64 / steps_per_epoch.max(1e-9), l as f64))
                    .collect(),
                faint: true,
            },
            Series {
                name: "epoch mean".into(),
                colour: "#1f77b4",
                points: epochs
                    .iter()
                    .map(|r| (r.epoch as f64, r.train_loss))
                    .collect(),
                faint: false,
            },
        ],
        references: Vec::new(),
        y_range: None,
    };
    let metric = |name: &str, colour: &'static str, value: &dyn Fn(&Summary) -> f64| Series {
        name: name.into(),
        colour,
        points: epochs
            .iter()
            .map(|r| (r.epoch as f64, value(&r.val)))
            .collect(),
        faint: false,
    };
    let iou = Chart {
        title: "Validation".into(),
        x_label: "epoch".into(),
        y_label: "mean over objects".into(),
        series: vec![
            metric("fine-tuned mIoU", "#2ca02c", &|s| s.mean_iou),
            metric("fine-tuned Dice", "#9467bd", &|s| s.mean_dice),
        ],
        references: vec![Reference {
            label: "zero-shot mIoU".into(),
            colour: "#d62728",
            y: zero_shot.mean_iou,
        }],
        y_range: Some((0.0, 1.0)),
    };
    (loss.svg(), iou.svg())
}

fn signed(v: f64) -> String {
    format!("{v:+.4}")
}

/// Rows of the comparison table: (metric, zero-shot, fine-tuned).
fn rows(report: &TrainReport) -> Vec<(String, f64, f64)> {
    let (z, t) = (&report.zero_shot, &report.fine_tuned);
    let mut rows = vec![
        (
            "mean IoU (per object)".to_string(),
            z.overall.mean_iou,
            t.overall.mean_iou,
        ),
        (
            "mean Dice (per object)".to_string(),
            z.overall.mean_dice,
            t.overall.mean_dice,
        ),
        (
            "mean IoU (per image)".to_string(),
            z.mean_image_iou,
            t.mean_image_iou,
        ),
        (
            "IoU-prediction error (lower is better)".to_string(),
            z.overall.iou_prediction_error,
            t.overall.iou_prediction_error,
        ),
    ];
    for (name, tuned) in &t.per_category {
        let zero = z.per_category.get(name).map_or(f64::NAN, |s| s.mean_iou);
        rows.push((format!("mean IoU, category {name}"), zero, tuned.mean_iou));
    }
    rows
}

/// `report.md`.
fn markdown(report: &TrainReport) -> String {
    let mut md = format!(
        "# samtune fine-tuning report: {}\n\n\
         - base checkpoint: `{}` ({})\n- fine-tuned: `{}` (best of {} epochs: epoch {}), trained: {}\n\
         - validation: {} images, {} objects; prompts: {}\n\n\
         **val mIoU {:.4} -> {:.4} ({})**\n\n\
         | metric | zero-shot | fine-tuned | difference |\n|---|---:|---:|---:|\n",
        report.run,
        report.base_checkpoint,
        report.model,
        report.fine_tuned_checkpoint,
        report.epochs,
        report.best_epoch,
        report.trainable,
        report.val_images,
        report.fine_tuned.overall.objects,
        report.prompts,
        report.zero_shot.overall.mean_iou,
        report.fine_tuned.overall.mean_iou,
        signed(report.gain()),
    );
    for (name, zero, tuned) in rows(report) {
        md.push_str(&format!(
            "| {name} | {zero:.4} | {tuned:.4} | {} |\n",
            signed(tuned - zero)
        ));
    }
    md.push_str(&format!("\n{}\n", test_section_text(report)));
    if let Some(test) = &report.test {
        md.push_str(&format!(
            "\n| test set | zero-shot | fine-tuned | difference |\n|---|---:|---:|---:|\n| mean IoU | {:.4} | {:.4} | {} |\n| mean Dice | {:.4} | {:.4} | {} |\n",
            test.zero_shot.overall.mean_iou,
            test.fine_tuned.overall.mean_iou,
            signed(test.fine_tuned.overall.mean_iou - test.zero_shot.overall.mean_iou),
            test.zero_shot.overall.mean_dice,
            test.fine_tuned.overall.mean_dice,
            signed(test.fine_tuned.overall.mean_dice - test.zero_shot.overall.mean_dice),
        ));
    }
    md.push_str(&format!(
        "\n{EMPTY_CASES}\n\nCurves: `loss.svg`, `val_iou.svg`. Pictures (left zero-shot, right \
         fine-tuned; prediction filled, ground truth outlined in white):\n\n"
    ));
    for s in report.most_improved.iter().chain(&report.weakest) {
        md.push_str(&format!(
            "- `{}`: {}, IoU {:.3} -> {:.3}\n",
            s.file, s.image, s.zero_shot_iou, s.fine_tuned_iou
        ));
    }
    md
}

/// What the test set says, or that there is none.
fn test_section_text(report: &TrainReport) -> String {
    match &report.test {
        Some(test) => format!(
            "Test set: {} images ({} objects), never used to choose the epoch: mIoU {:.4} -> {:.4} ({}).",
            test.images,
            test.fine_tuned.overall.objects,
            test.zero_shot.overall.mean_iou,
            test.fine_tuned.overall.mean_iou,
            signed(test.fine_tuned.overall.mean_iou - test.zero_shot.overall.mean_iou)
        ),
        None => NO_TEST_SET.to_string(),
    }
}

fn figures(items: &[SideBySide]) -> String {
    items
        .iter()
        .map(|s| {
            format!(
                "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{} &middot; IoU {:.3} &rarr; <b>{:.3}</b></figcaption></figure>",
                escape(&s.file),
                escape(&s.image),
                escape(&s.image),
                s.zero_shot_iou,
                s.fine_tuned_iou
            )
        })
        .collect()
}

/// `report.html`: headline, comparison table, curves and side-by-side pictures.
fn html(report: &TrainReport) -> String {
    let (loss_chart, iou_chart) = (&report.loss_chart, &report.iou_chart);
    let table: String = rows(report)
        .into_iter()
        .map(|(name, zero, tuned)| {
            let delta = tuned - zero;
            let better = if name.starts_with("IoU-prediction error") {
                delta < 0.0
            } else {
                delta > 0.0
            };
            format!(
                "<tr><td>{}</td><td>{zero:.4}</td><td>{tuned:.4}</td><td class=\"{}\">{}</td></tr>",
                escape(&name),
                if better { "up" } else { "down" },
                signed(delta)
            )
        })
        .collect();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>samtune: {run}</title><style>{STYLE}\
         .up{{color:#1a7f37;font-weight:600}}.down{{color:#c62828;font-weight:600}}svg{{margin:.5em 1em .5em 0;border:1px solid #ddd}}\
         </style></head><body><h1>Fine-tuning report: {run}</h1>\
         <p>base <code>{base}</code> ({model}) &rarr; fine-tuned <code>{tuned}</code>, best of {epochs} epochs (epoch {best}); trained: {trainable}</p>\
         <p>validation: {images} images, {objects} objects &middot; prompts: {prompts}</p>{legend}\
         <p><span class=\"big\">mIoU {zero_iou:.3} &rarr; {tuned_iou:.3}</span> <span class=\"big {cls}\">({gain})</span></p>\
         <table><tr><th>metric</th><th>zero-shot</th><th>fine-tuned</th><th>difference</th></tr>{table}</table>\
         <p><b>{test}</b></p><p>{EMPTY_CASES}</p><h2>Training curves</h2>{loss_chart}{iou_chart}\
         <h2>Zero-shot (left) vs fine-tuned (right)</h2>\
         <p>Prediction filled in colour, ground truth outlined in white, prompts in yellow (boxes) and green/red (points).</p>\
         <h3>Most improved</h3>{improved}<h3>Weakest after fine-tuning</h3>{weakest}</body></html>",
        run = escape(&report.run),
        base = escape(&report.base_checkpoint),
        model = escape(&report.model),
        tuned = escape(&report.fine_tuned_checkpoint),
        epochs = report.epochs,
        best = report.best_epoch,
        trainable = escape(&report.trainable),
        images = report.val_images,
        objects = report.fine_tuned.overall.objects,
        prompts = escape(&report.prompts),
        legend = report.classes.as_ref().map_or(String::new(), class_legend),
        zero_iou = report.zero_shot.overall.mean_iou,
        tuned_iou = report.fine_tuned.overall.mean_iou,
        cls = if report.gain() > 0.0 { "up" } else { "down" },
        gain = signed(report.gain()),
        test = escape(&test_section_text(report)),
        improved = figures(&report.most_improved),
        weakest = figures(&report.weakest),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predict::semantic::SemanticClass;
    use crate::train::checkpoints::EpochRecord;

    fn result(image: &str, iou: f64) -> ObjectResult {
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

    #[test]
    fn documents_show_both_models_and_the_difference() {
        let zero = Aggregate::of(&[result("a", 0.25)]);
        let tuned = Aggregate::of(&[result("a", 0.75)]);
        let report = TrainReport {
            run: "demo".into(),
            base_checkpoint: "base.pth".into(),
            fine_tuned_checkpoint: "best.safetensors".into(),
            model: "tiny".into(),
            trainable: "decoder".into(),
            prompts: "box".into(),
            epochs: 2,
            best_epoch: 2,
            val_images: 1,
            zero_shot: zero,
            fine_tuned: tuned,
            most_improved: vec![SideBySide {
                file: "compare/improved_1_a.png".into(),
                image: "a".into(),
                zero_shot_iou: 0.25,
                fine_tuned_iou: 0.75,
            }],
            weakest: Vec::new(),
            test: None,
            classes: None,
            loss_chart: String::new(),
            iou_chart: String::new(),
        };
        let md = markdown(&report);
        assert!(md.contains("val mIoU 0.2500 -> 0.7500 (+0.5000)"), "{md}");
        assert!(md.contains("| mean IoU (per object) | 0.2500 | 0.7500 | +0.5000 |"));
        let state = TrainState {
            epoch: 2,
            step: 4,
            history: (1..=2)
                .map(|epoch| EpochRecord {
                    epoch,
                    train_loss: 1.0 / epoch as f64,
                    train_focal: 0.0,
                    train_dice: 0.0,
                    train_iou_mse: 0.0,
                    lr: 1e-4,
                    val: Summary {
                        objects: 1,
                        mean_iou: 0.5 * epoch as f64 / 2.0 + 0.25,
                        mean_dice: 0.6,
                        iou_prediction_error: 0.1,
                    },
                    seconds: 1.0,
                    data_wait_seconds: 0.0,
                })
                .collect(),
            step_losses: vec![(1, 1.2), (2, 0.9), (3, 0.6), (4, 0.5)],
            ..TrainState::default()
        };
        let (loss, iou) = curves(&state, &report.zero_shot.overall);
        assert!(loss.contains("per step") && loss.contains("epoch mean"));
        assert!(iou.contains("zero-shot mIoU 0.25"));
        let report = TrainReport {
            loss_chart: loss,
            iou_chart: iou,
            ..report
        };
        let page = html(&report);
        assert!(page.contains("mIoU 0.250 &rarr; 0.750"));
        assert!(page.contains("compare/improved_1_a.png"));
        assert_eq!(page.matches("<svg").count(), 2);
        assert!(!page.contains("classes:"));

        // a semantic run's page names each class beside its colour in the pictures
        let classes = Classes(vec![SemanticClass {
            name: "liver".into(),
            value: 1,
        }]);
        let page = html(&TrainReport {
            classes: Some(classes),
            ..report
        });
        let [r, g, b] = Classes::colour(1);
        assert!(page.contains(&format!("background:rgb({r},{g},{b})")) && page.contains("liver"));
    }
}
