//! Evaluation on NIfTI volumes: each slice with foreground is predicted (one prompt per
//! label present in it, as in 2D evaluation), the masks are stacked back into a volume per
//! label, and every label of every volume is scored in 3D: IoU, Dice and the normalised
//! surface distance at a tolerance in mm. Slices without any label get no prompt and so
//! no prediction.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use image::RgbImage;
use serde::Serialize;

use super::evaluate::{evaluate_each, EvalSettings, ImageEval};
use super::metrics::Confusion;
use super::report::{comparison_overlay, enlarge_for_viewing, write_report, Report};
use super::report::{confusion_html, confusion_markdown, semantic_prompts};
use super::surface::{normalized_surface_distance, overlap, Mask3};
use crate::data::dataset::Sample;
use crate::data::nifti::{write_nifti, Volume, VoxelType};
use crate::data::prompts::PromptConfig;
use crate::data::volumes::{read_pair, volume_pairs, volume_stem, write_slices, SliceAxis};
use crate::error::{bail, Context, Result};
use crate::fsutil::save_png;
use crate::model::{Architecture, Sam};
use crate::predict::image::{load_rgb, IntensityScaling};
use crate::predict::semantic::Classes;
use crate::progress::count_bar;

/// One label of one volume.
#[derive(Debug, Clone, Serialize)]
pub struct LabelResult {
    pub volume: String,
    pub label: u16,
    pub category: String,
    /// Ground-truth voxels.
    pub voxels: usize,
    pub iou: f64,
    pub dice: f64,
    pub nsd: f64,
}

/// Means over a set of label results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct VolumeSummary {
    pub count: usize,
    pub mean_iou: f64,
    pub mean_dice: f64,
    pub mean_nsd: f64,
}

impl VolumeSummary {
    pub fn of<'a>(results: impl IntoIterator<Item = &'a LabelResult>) -> Self {
        let mut s = Self::default();
        for r in results {
            s.count += 1;
            s.mean_iou += r.iou;
            s.mean_dice += r.dice;
            s.mean_nsd += r.nsd;
        }
        if s.count > 0 {
            let n = s.count as f64;
            s.mean_iou /= n;
            s.mean_dice /= n;
            s.mean_nsd /= n;
        }
        s
    }
}

/// How volumes are evaluated.
pub struct VolumeSettings<'a> {
    pub axis: SliceAxis,
    pub intensity: IntensityScaling,
    pub tolerance_mm: f64,
    pub label_names: Arc<BTreeMap<u16, String>>,
    pub eval: EvalSettings<'a>,
}

/// One evaluated volume: its label results, the predicted label volume, and a picture of
/// the slice with the most foreground.
pub struct VolumeEval {
    pub results: Vec<LabelResult>,
    pub predicted: Volume,
    pub picture: Option<(usize, RgbImage)>,
    /// A semantic model's voxel confusion between classes.
    pub confusion: Option<Confusion>,
}

/// Evaluates `model` on one image/label volume pair; `work_dir` holds the slices while
/// it runs.
pub fn evaluate_volume(
    model: &Sam,
    image: &Path,
    labels: &Path,
    settings: &VolumeSettings,
    work_dir: &Path,
) -> Result<VolumeEval> {
    let (volume, label_volume) = read_pair(image, labels)?;
    let stem = volume_stem(image);
    let axis = settings.axis.index();
    let semantic = settings.eval.semantic;
    // a semantic model segments every slice (a false positive anywhere counts); prompts
    // come from the labels, so a promptable model sees the labelled slices only
    let every_slice: Option<Vec<usize>> = semantic.map(|_| (0..volume.dims[axis]).collect());
    let slices = write_slices(
        &volume,
        &label_volume,
        &stem,
        settings.axis,
        settings.intensity,
        every_slice.as_deref(),
        work_dir,
    )?;
    // every object kept, so a slice's objects are its label values in order
    let samples: Vec<Sample> = slices
        .iter()
        .map(|s| s.sample(&settings.label_names))
        .collect();
    let values: Vec<u16> = if let Some(classes) = semantic {
        (1..=classes.len()).map(|k| classes.value(k)).collect()
    } else {
        let mut v: Vec<u16> = label_volume
            .data
            .iter()
            .map(|&l| l as u16)
            .filter(|&l| l != 0)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    // the predicted label volume: where a voxel's slice predicts several labels, the one
    // of highest logit holds it (the written volume is what is scored)
    let mut label_out = vec![0f32; label_volume.len()];
    let (width, _) = volume.slice_size(axis);
    let densest = slices
        .iter()
        .enumerate()
        .max_by_key(|(_, s)| s.label_areas.iter().map(|l| l.area).sum::<usize>())
        .map(|(i, _)| i);
    let mut picture = None;
    evaluate_each(model, &samples, &settings.eval, |index, eval| {
        let position = slices[index].position;
        let values: Vec<u16> = match semantic {
            // a semantic evaluation's objects are its classes, in head order
            Some(classes) => (1..=classes.len()).map(|k| classes.value(k)).collect(),
            None => slices[index].label_areas.iter().map(|l| l.value).collect(),
        };
        for (pixel, label) in resolve_overlaps(&eval, &values).into_iter().enumerate() {
            if label != 0 {
                let voxel = label_volume.slice_voxel(axis, position, pixel % width, pixel / width);
                label_out[voxel] = label as f32;
            }
        }
        if Some(index) == densest {
            let image = load_rgb(&samples[index].image, IntensityScaling::Auto)?;
            picture = Some((
                position,
                comparison_overlay(&image, &eval.objects, &eval.predicted, &eval.prompts),
            ));
        }
        Ok(())
    })?;
    std::fs::remove_dir_all(work_dir)
        .with_context(|| format!("removing {}", work_dir.display()))?;

    let mut results = Vec::new();
    for &value in &values {
        let of_label = |data: &[f32]| Mask3 {
            dims: label_volume.dims,
            data: data.iter().map(|&l| l as u16 == value).collect(),
        };
        let truth = of_label(&label_volume.data);
        let prediction = of_label(&label_out);
        let (iou, dice) = overlap(&prediction, &truth);
        let nsd = normalized_surface_distance(
            &prediction,
            &truth,
            label_volume.spacing,
            settings.tolerance_mm,
        );
        results.push(LabelResult {
            volume: stem.clone(),
            label: value,
            category: semantic
                .and_then(|c| c.0.iter().find(|c| c.value == value))
                .map(|c| c.name.clone())
                .or_else(|| settings.label_names.get(&value).cloned())
                .unwrap_or_else(|| format!("label {value}")),
            voxels: truth.count(),
            iou,
            dice,
            nsd,
        });
    }
    let confusion = semantic.map(|classes| {
        let index = classes.index_of_values();
        let mut confusion = Confusion::new(classes);
        confusion.add_pairs(label_volume.data.iter().zip(&label_out).map(|(&t, &p)| {
            (
                index[t as u16 as usize] as usize,
                index[p as u16 as usize] as usize,
            )
        }));
        confusion
    });
    Ok(VolumeEval {
        results,
        confusion,
        predicted: Volume {
            dims: label_volume.dims,
            spacing: label_volume.spacing,
            data: label_out,
        },
        picture,
    })
}

/// What `samtune eval-volumes` is asked to do.
pub struct VolumesEvaluation<'a> {
    pub checkpoint: &'a Path,
    /// A folder with `images/` and `labels/` volumes (its `val/` part when it has one).
    pub data: &'a Path,
    pub prompts: PromptConfig,
    pub seed: u64,
    pub axis: SliceAxis,
    pub intensity: IntensityScaling,
    pub tolerance_mm: f64,
    pub label_names: BTreeMap<u16, String>,
    /// A semantic model's classes: every slice segmented without prompts.
    pub semantic: Option<&'a Classes>,
    /// Slices run through the encoder together.
    pub encode_batch: usize,
    /// Gets `report.{json,md,html}`, `predictions/*.nii.gz` and `pictures/`.
    pub out: &'a Path,
}

/// Evaluates `model` on every volume of `job.data`, one volume in memory at a time, and
/// writes the predicted label volumes, a picture per volume and the report.
pub fn evaluate_volumes(
    model: &Sam,
    architecture: &Architecture,
    job: &VolumesEvaluation,
) -> Result<VolumeReport> {
    if job.tolerance_mm.is_nan() || job.tolerance_mm < 0.0 {
        bail!("--tolerance-mm {} must be >= 0", job.tolerance_mm);
    }
    let root = if job.data.join("val").is_dir() {
        job.data.join("val")
    } else {
        job.data.to_path_buf()
    };
    let pairs = volume_pairs(&root)?;
    let settings = VolumeSettings {
        axis: job.axis,
        intensity: job.intensity,
        tolerance_mm: job.tolerance_mm,
        label_names: Arc::new(job.label_names.clone()),
        eval: EvalSettings {
            cache: None,
            intensity: IntensityScaling::Auto,
            prompts: &job.prompts,
            seed: job.seed,
            progress: false,
            semantic: job.semantic,
            encode_batch: job.encode_batch,
        },
    };
    for sub in ["predictions", "pictures"] {
        std::fs::create_dir_all(job.out.join(sub))
            .with_context(|| format!("creating {}", job.out.join(sub).display()))?;
    }
    let bar = count_bar("eval", pairs.len(), "volumes", true);
    let mut results = Vec::new();
    let mut pictures = Vec::new();
    let mut confusion: Option<Confusion> = None;
    for (image, labels) in &pairs {
        let stem = volume_stem(image);
        bar.set_message(stem.clone());
        let eval = evaluate_volume(
            model,
            image,
            labels,
            &settings,
            &job.out.join(".slices").join(&stem),
        )?;
        write_nifti(
            &job.out.join("predictions").join(format!("{stem}.nii.gz")),
            &eval.predicted,
            VoxelType::U16,
        )?;
        if let Some((slice, picture)) = &eval.picture {
            let file = format!("pictures/{stem}_{}{slice:04}.png", job.axis.name());
            save_png(&job.out.join(&file), &enlarge_for_viewing(picture))?;
            pictures.push((file, stem.clone(), *slice));
        }
        results.extend(eval.results);
        if let Some(volume) = eval.confusion {
            confusion = Some(match confusion {
                Some(mut all) => {
                    all.merge(&volume);
                    all
                }
                None => volume,
            });
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let _ = std::fs::remove_dir(job.out.join(".slices"));
    let report = VolumeReport {
        checkpoint: job.checkpoint.display().to_string(),
        model: architecture.describe(),
        data: root.display().to_string(),
        axis: job.axis.name().to_string(),
        prompts: match job.semantic {
            Some(classes) => semantic_prompts(classes),
            None => job.prompts.describe(),
        },
        tolerance_mm: job.tolerance_mm,
        volumes: pairs.len(),
        overall: VolumeSummary::of(&results),
        per_label: VolumeReport::per_label(&results),
        results,
        pictures,
        confusion,
    };
    write_report(job.out, &report)?;
    Ok(report)
}

/// A slice's label map: each pixel the label whose scored mask holds it, the one of
/// highest logit where several do, 0 where none.
fn resolve_overlaps(eval: &ImageEval, values: &[u16]) -> Vec<u16> {
    let pixels = eval.predicted.first().map_or(0, |m| m.data.len());
    let mut best = vec![(0u16, 0f32); pixels];
    for (i, &value) in values.iter().enumerate() {
        for (slot, &logit) in best.iter_mut().zip(eval.logits(i)) {
            if logit > 0.0 && (slot.0 == 0 || logit > slot.1) {
                *slot = (value, logit);
            }
        }
    }
    best.into_iter().map(|(label, _)| label).collect()
}

/// Everything `samtune eval-volumes` reports.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeReport {
    pub checkpoint: String,
    pub model: String,
    pub data: String,
    pub axis: String,
    pub prompts: String,
    pub tolerance_mm: f64,
    pub volumes: usize,
    pub overall: VolumeSummary,
    pub per_label: BTreeMap<String, VolumeSummary>,
    pub results: Vec<LabelResult>,
    /// `(file, volume, slice)` of the pictures.
    pub pictures: Vec<(String, String, usize)>,
    /// A semantic model's voxel confusion between classes, over all volumes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub confusion: Option<Confusion>,
}

impl VolumeReport {
    pub fn per_label(results: &[LabelResult]) -> BTreeMap<String, VolumeSummary> {
        let mut groups: BTreeMap<String, Vec<&LabelResult>> = BTreeMap::new();
        for r in results {
            groups.entry(r.category.clone()).or_default().push(r);
        }
        groups
            .into_iter()
            .map(|(k, v)| (k, VolumeSummary::of(v)))
            .collect()
    }
}

const EMPTY_3D: &str = "IoU, Dice and NSD are 1 for a label absent from both the prediction \
and the ground truth of a volume, and 0 when it is in exactly one of them. NSD: the fraction \
of both surfaces (foreground voxels with a background 6-neighbour) within the tolerance of \
the other surface. Where one slice predicts several labels for a voxel, the label of highest \
logit holds it: the scores are those of the written predictions/*.nii.gz.";

impl Report for VolumeReport {
    fn markdown(&self) -> String {
        markdown(self)
    }

    fn html(&self) -> String {
        html(self)
    }
}

/// `report.md`.
fn markdown(r: &VolumeReport) -> String {
    let mut md = format!(
        "# samtune evaluation on volumes\n\n- checkpoint: `{}` ({})\n- data: `{}`, {} volumes, slices across {}\n- prompts: {}\n- NSD tolerance: {} mm\n\n\
         | | labels | mean IoU | mean Dice | mean NSD |\n|---|---:|---:|---:|---:|\n| all | {} | {:.4} | {:.4} | {:.4} |\n",
        r.checkpoint, r.model, r.data, r.volumes, r.axis, r.prompts, r.tolerance_mm,
        r.overall.count, r.overall.mean_iou, r.overall.mean_dice, r.overall.mean_nsd
    );
    for (name, s) in &r.per_label {
        md.push_str(&format!(
            "| {name} | {} | {:.4} | {:.4} | {:.4} |\n",
            s.count, s.mean_iou, s.mean_dice, s.mean_nsd
        ));
    }
    md.push_str(
        "\n| volume | label | voxels | IoU | Dice | NSD |\n|---|---|---:|---:|---:|---:|\n",
    );
    for x in &r.results {
        md.push_str(&format!(
            "| {} | {} | {} | {:.4} | {:.4} | {:.4} |\n",
            x.volume, x.category, x.voxels, x.iou, x.dice, x.nsd
        ));
    }
    if let Some(confusion) = &r.confusion {
        md.push_str(&confusion_markdown(confusion));
    }
    md.push_str(&format!("\n{EMPTY_3D}\n"));
    md
}

/// `report.html`.
fn html(r: &VolumeReport) -> String {
    use super::report::{escape, STYLE};
    let row = |cells: Vec<String>| format!("<tr><td>{}</td></tr>", cells.join("</td><td>"));
    let mut labels = String::new();
    for (name, s) in &r.per_label {
        labels.push_str(&row(vec![
            escape(name),
            s.count.to_string(),
            format!("{:.4}", s.mean_iou),
            format!("{:.4}", s.mean_dice),
            format!("{:.4}", s.mean_nsd),
        ]));
    }
    let mut volumes = String::new();
    for x in &r.results {
        volumes.push_str(&row(vec![
            escape(&x.volume),
            escape(&x.category),
            x.voxels.to_string(),
            format!("{:.4}", x.iou),
            format!("{:.4}", x.dice),
            format!("{:.4}", x.nsd),
        ]));
    }
    let pictures: String = r
        .pictures
        .iter()
        .map(|(file, volume, slice)| {
            format!(
                "<figure><img src=\"{}\" alt=\"{}\"><figcaption>{} &middot; slice {} {}</figcaption></figure>",
                escape(file),
                escape(volume),
                escape(volume),
                escape(&r.axis),
                slice
            )
        })
        .collect();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>samtune evaluation on volumes</title><style>{STYLE}</style></head><body>\
         <h1>samtune evaluation on volumes</h1>\
         <p>checkpoint <code>{}</code> ({}) &middot; data <code>{}</code> &middot; {} volumes, slices across {} &middot; prompts: {} &middot; NSD tolerance {} mm</p>\
         <p><span class=\"big\">Dice {:.3}</span> &nbsp; IoU {:.3} &nbsp; NSD {:.3}</p>\
         <table><tr><th>label</th><th>volumes</th><th>mean IoU</th><th>mean Dice</th><th>mean NSD</th></tr>{labels}</table>\
         <table><tr><th>volume</th><th>label</th><th>voxels</th><th>IoU</th><th>Dice</th><th>NSD</th></tr>{volumes}</table>{}\
         <p>{EMPTY_3D}</p><h2>The slice with the most foreground of each volume</h2>\
         <p>Prediction filled in colour, ground truth outlined in white, prompts in yellow.</p>{pictures}</body></html>",
        escape(&r.checkpoint),
        escape(&r.model),
        escape(&r.data),
        r.volumes,
        escape(&r.axis),
        escape(&r.prompts),
        r.tolerance_mm,
        r.overall.mean_dice,
        r.overall.mean_iou,
        r.overall.mean_nsd,
        r.confusion.as_ref().map_or(String::new(), confusion_html),
    )
}
