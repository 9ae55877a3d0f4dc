//! The training report's pages: `report.md`, `report.html` and the training curves (SVG),
//! written from a [`TrainReport`].

use super::{SideBySide, TrainReport, NO_TEST_SET};
use crate::eval::charts::{Chart, Reference, Series};
use crate::eval::metrics::Summary;
use crate::eval::report::{class_legend, escape, EMPTY_CASES, STYLE};
use crate::train::checkpoints::TrainState;

/// The training loss (per step, and its epoch means) and the validation mIoU and Dice per
/// epoch against the zero-shot level, as SVG.
pub(super) fn curves(state: &TrainState, zero_shot: &Summary) -> (String, String) {
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
pub(super) fn markdown(report: &TrainReport) -> String {
    let mut md = format!(
        "# samtune fine-tuning report: {}\n\n\
         - base checkpoint: `{}` ({})\n- fine-tuned: `{}` (best of {} epochs: epoch {}), trained: {}\n\
         - validation: {} images, {} objects; prompts: {}\n\n\
         **val mIoU {:.4} -> {:.4} ({})**\n\n\
         | metric | zero-shot | fine-tuned | difference |\n|---|---:|---:|---:|\n",
        report.about.run,
        report.about.base_checkpoint,
        report.about.model,
        report.about.fine_tuned_checkpoint,
        report.epochs,
        report.best_epoch,
        report.about.trainable,
        report.val_images,
        report.fine_tuned.overall.objects,
        report.about.prompts,
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
pub(super) fn html(report: &TrainReport) -> String {
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
        run = escape(&report.about.run),
        base = escape(&report.about.base_checkpoint),
        model = escape(&report.about.model),
        tuned = escape(&report.about.fine_tuned_checkpoint),
        epochs = report.epochs,
        best = report.best_epoch,
        trainable = escape(&report.about.trainable),
        images = report.val_images,
        objects = report.fine_tuned.overall.objects,
        prompts = escape(&report.about.prompts),
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
    use super::super::tests::result;
    use super::super::RunDescription;
    use super::*;
    use crate::eval::metrics::Aggregate;
    use crate::predict::semantic::{Classes, SemanticClass};
    use crate::train::checkpoints::EpochRecord;

    #[test]
    fn documents_show_both_models_and_the_difference() {
        let zero = Aggregate::of(&[result("a", 0.25)]);
        let tuned = Aggregate::of(&[result("a", 0.75)]);
        let report = TrainReport {
            about: RunDescription {
                run: "demo".into(),
                base_checkpoint: "base.pth".into(),
                fine_tuned_checkpoint: "best.safetensors".into(),
                model: "tiny".into(),
                trainable: "decoder".into(),
                prompts: "box".into(),
            },
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
