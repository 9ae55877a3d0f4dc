//! Pictures and documents of an evaluation.

use std::path::Path;

use image::{GrayImage, RgbImage};

use crate::data::prompts::ObjectPrompt;
use crate::data::{BinaryMask, Object};
use crate::error::Result;
use crate::fsutil::write_bytes_atomic;
use crate::predict::overlay::{draw_box, draw_point, overlay_masks};
use crate::predict::semantic::Classes;

use super::metrics::Confusion;

/// Predicted masks filled in palette colours, the prompts (yellow boxes, green/red points),
/// and the ground truth outlined in white on top: where fill and outline disagree is where
/// the model is wrong.
pub fn comparison_overlay(
    image: &RgbImage,
    truth: &[Object],
    predicted: &[BinaryMask],
    prompts: &[ObjectPrompt],
) -> RgbImage {
    let predicted: Vec<GrayImage> = predicted.iter().map(BinaryMask::to_gray_image).collect();
    let mut out = overlay_masks(image, &predicted);
    for p in prompts {
        if let Some(b) = p.bbox {
            draw_box(&mut out, b, [255, 210, 0]);
        }
        for (xy, label) in &p.points {
            if *label >= 0 {
                draw_point(&mut out, *xy, *label);
            }
        }
    }
    for object in truth {
        let m = &object.mask;
        for y in 0..m.height.min(out.height() as usize) {
            for x in 0..m.width.min(out.width() as usize) {
                if !m.get(x, y) {
                    continue;
                }
                let edge = x == 0
                    || y == 0
                    || x + 1 == m.width
                    || y + 1 == m.height
                    || !m.get(x - 1, y)
                    || !m.get(x + 1, y)
                    || !m.get(x, y - 1)
                    || !m.get(x, y + 1);
                if edge {
                    out.put_pixel(x as u32, y as u32, image::Rgb([255, 255, 255]));
                }
            }
        }
    }
    out
}

/// A report in its three forms: `report.json` (the data), `report.md` and `report.html`.
pub trait Report: serde::Serialize {
    fn markdown(&self) -> String;
    fn html(&self) -> String;
}

/// Writes `report.json`, `report.md` and `report.html` into `dir` (each atomically).
pub fn write_report(dir: &Path, report: &impl Report) -> Result<()> {
    write_bytes_atomic(
        &dir.join("report.json"),
        serde_json::to_string_pretty(report)?.as_bytes(),
    )?;
    write_bytes_atomic(&dir.join("report.md"), report.markdown().as_bytes())?;
    write_bytes_atomic(&dir.join("report.html"), report.html().as_bytes())
}

/// Everything `samtune eval` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    pub checkpoint: String,
    pub model: String,
    pub data: String,
    pub prompts: String,
    /// Images evaluated: those with at least one object of `min_area` pixels.
    pub images: usize,
    /// Images left out because none of their objects reaches `min_area`.
    pub images_without_objects: usize,
    pub objects_below_min_area: usize,
    pub min_area: usize,
    pub aggregate: super::metrics::Aggregate,
    /// `(file, image, mean IoU)` of the overlay pictures, best first then worst.
    pub overlays: Vec<(String, String, f64)>,
    /// A semantic model's pixel confusion between classes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confusion: Option<super::metrics::Confusion>,
}

/// How empty masks are counted, said in every report.
pub const EMPTY_CASES: &str =
    "IoU and Dice are 1 when the prediction and the ground truth are both empty, \
and 0 when exactly one of them is empty.";

impl Report for EvalReport {
    fn markdown(&self) -> String {
        markdown(self)
    }

    fn html(&self) -> String {
        html(self)
    }
}

impl EvalReport {
    /// What was left out, in words.
    pub fn left_out(&self) -> String {
        format!(
            "{} objects below {} px skipped, {} images without objects left out",
            self.objects_below_min_area, self.min_area, self.images_without_objects
        )
    }
}

/// `report.md`.
fn markdown(report: &EvalReport) -> String {
    let o = &report.aggregate.overall;
    let mut md = format!(
        "# samtune evaluation\n\n- checkpoint: `{}` ({})\n- data: `{}`, {} images, {} objects ({})\n- prompts: {}\n\n\
| | mean IoU | mean Dice | IoU-prediction error |\n|---|---:|---:|---:|\n\
| per object | {:.4} | {:.4} | {:.4} |\n| per image | {:.4} | {:.4} | |\n",
        report.checkpoint, report.model, report.data, report.images, o.objects, report.left_out(), report.prompts,
        o.mean_iou, o.mean_dice, o.iou_prediction_error, report.aggregate.mean_image_iou, report.aggregate.mean_image_dice,
    );
    if !report.aggregate.per_category.is_empty() {
        md.push_str("\n| category | objects | mean IoU | mean Dice |\n|---|---:|---:|---:|\n");
        for (name, s) in &report.aggregate.per_category {
            md.push_str(&format!(
                "| {name} | {} | {:.4} | {:.4} |\n",
                s.objects, s.mean_iou, s.mean_dice
            ));
        }
    }
    if let Some(confusion) = &report.confusion {
        md.push_str(&confusion_markdown(confusion));
    }
    md.push_str(&format!("\n{EMPTY_CASES}\n"));
    if !report.overlays.is_empty() {
        md.push_str("\nOverlays (prediction filled, ground truth outlined in white):\n\n");
        for (file, image, iou) in &report.overlays {
            md.push_str(&format!("- `{file}`: {image}, mean IoU {iou:.3}\n"));
        }
    }
    md
}

/// `report.html`: the same tables and the overlay pictures.
fn html(report: &EvalReport) -> String {
    let o = &report.aggregate.overall;
    let mut rows = String::new();
    for (name, s) in &report.aggregate.per_category {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td></tr>",
            escape(name),
            s.objects,
            s.mean_iou,
            s.mean_dice
        ));
    }
    let mut images = String::new();
    for (file, image, iou) in &report.overlays {
        images.push_str(&format!(
            "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{} &middot; mean IoU {:.3}</figcaption></figure>",
            escape(file),
            escape(image),
            escape(image),
            iou
        ));
    }
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>samtune evaluation</title><style>\
{}</style></head><body><h1>samtune evaluation</h1>\
<p>checkpoint <code>{}</code> ({}) &middot; data <code>{}</code> &middot; {} images, {} objects ({}) &middot; prompts: {}</p>\
<p><span class=\"big\">mIoU {:.3}</span> &nbsp; Dice {:.3} &nbsp; IoU-prediction error {:.3} &nbsp; (per image: mIoU {:.3})</p>\
{}{}<p>{}</p><h2>Best and worst images</h2><p>Prediction filled in colour, ground truth outlined in white.</p>{}</body></html>",
        STYLE,
        escape(&report.checkpoint),
        escape(&report.model),
        escape(&report.data),
        report.images,
        o.objects,
        escape(&report.left_out()),
        escape(&report.prompts),
        o.mean_iou,
        o.mean_dice,
        o.iou_prediction_error,
        report.aggregate.mean_image_iou,
        if rows.is_empty() {
            String::new()
        } else {
            format!("<table><tr><th>category</th><th>objects</th><th>mean IoU</th><th>mean Dice</th></tr>{rows}</table>")
        },
        report.confusion.as_ref().map_or(String::new(), confusion_html),
        EMPTY_CASES,
        images
    )
}

/// The stylesheet of the HTML reports.
pub const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.3em .8em;text-align:right}\
td:first-child,th:first-child{text-align:left}.big{font-size:2em;font-weight:600}\
figure{display:inline-block;margin:.5em}img{max-width:520px;image-rendering:pixelated;border:1px solid #999}";

/// Small images enlarged (nearest neighbour, whole multiples) to about 256 px, so that a
/// person can see the masks.
pub fn enlarge_for_viewing(picture: &RgbImage) -> RgbImage {
    let scale = (256 / picture.width().max(picture.height()).max(1)).max(1);
    image::imageops::resize(
        picture,
        picture.width() * scale,
        picture.height() * scale,
        image::imageops::FilterType::Nearest,
    )
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// What a report says in place of prompts for a semantic model.
pub fn semantic_prompts(classes: &Classes) -> String {
    let names: Vec<&str> = (1..=classes.len()).map(|k| classes.name(k)).collect();
    format!("none (semantic head: {})", names.join(", "))
}

/// Output `k`'s name beside its colour in the pictures.
pub fn class_swatch(k: usize, name: &str) -> String {
    let [r, g, b] = Classes::colour(k);
    format!(
        "<span style=\"display:inline-block;width:.9em;height:.9em;background:rgb({r},{g},{b});border:1px solid #666;margin-right:.3em\"></span>{}",
        escape(name)
    )
}

/// The classes of a semantic model as a legend of the pictures' colours.
pub fn class_legend(classes: &Classes) -> String {
    let entries: Vec<String> = (1..=classes.len())
        .map(|k| class_swatch(k, classes.name(k)))
        .collect();
    format!("<p>classes: {}</p>", entries.join(" &nbsp; "))
}

/// A semantic evaluation's confusion as a Markdown table: rows the true class, columns
/// the predicted one, each row's fractions of its pixels.
pub fn confusion_markdown(confusion: &Confusion) -> String {
    let mut md = String::from("\nPixel confusion (row: true class, column: predicted; fraction of the row's pixels):\n\n| true \\ predicted |");
    for name in &confusion.names {
        md.push_str(&format!(" {name} |"));
    }
    md.push_str("\n|---|");
    md.push_str(&"---:|".repeat(confusion.names.len()));
    md.push('\n');
    for (t, name) in confusion.names.iter().enumerate() {
        md.push_str(&format!("| {name} |"));
        for f in confusion.row_fractions(t) {
            md.push_str(&format!(" {f:.3} |"));
        }
        md.push('\n');
    }
    md
}

/// The confusion as an HTML table, each class named beside its colour in the pictures
/// (the legend), cells shaded by their fraction.
pub fn confusion_html(confusion: &Confusion) -> String {
    let swatch = |k: usize| class_swatch(k, &confusion.names[k]);
    let mut html = String::from(
        "<h2>Classes</h2><p>Rows: true class; columns: predicted class; each cell the fraction of the row's pixels.</p><table><tr><th>true \\ predicted</th>",
    );
    for k in 0..confusion.names.len() {
        html.push_str(&format!("<th>{}</th>", swatch(k)));
    }
    html.push_str("</tr>");
    for t in 0..confusion.names.len() {
        html.push_str(&format!("<tr><td>{}</td>", swatch(t)));
        for f in confusion.row_fractions(t) {
            let shade = 255 - (f * 120.0) as u8;
            html.push_str(&format!(
                "<td style=\"background:rgb({shade},{shade},255)\">{f:.3}</td>"
            ));
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    html
}
