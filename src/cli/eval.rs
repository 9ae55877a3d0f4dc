//! `samtune eval`: IoU and Dice of a checkpoint on a labeled set, with a report.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use image::RgbImage;

use super::device::{self, DeviceChoice};
use super::VariantArg;
use crate::data::dataset::prepare;
use crate::data::{coco, folder};
use crate::eval::evaluate::{evaluate_each, EvalSettings};
use crate::eval::metrics::{Aggregate, ObjectResult};
use crate::eval::report::{comparison_overlay, enlarge_for_viewing, html, markdown, EvalReport};
use crate::fsutil::{save_png, write_bytes_atomic};
use crate::predict::image::{load_rgb, IntensityScaling};
use crate::train::config::{Multimask, PromptConfig};
use crate::weights::{describe, load_sam};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PromptMode {
    /// The object's bounding box.
    Box,
    /// Points inside (and outside, see --negative-points) the object.
    Points,
    /// Both.
    BoxPoints,
}

/// The evaluation prompts, shared by `eval` and `eval-volumes`.
#[derive(Debug, Args)]
pub struct EvalPromptArgs {
    #[arg(long, value_enum, default_value = "box")]
    pub prompts: PromptMode,
    #[arg(long, default_value_t = 1)]
    pub positive_points: usize,
    #[arg(long, default_value_t = 0)]
    pub negative_points: usize,
    /// Three masks per prompt (the one with the highest predicted IoU scored): for
    /// `ambiguous` prompts (a lone point, as SAM is trained), `always` (`--multimask`
    /// alone) or `never`.
    #[arg(long, default_value = "ambiguous", num_args = 0..=1, default_missing_value = "always")]
    pub multimask: Multimask,
    /// Seeds the prompts (points, per image).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl EvalPromptArgs {
    /// The evaluation prompts (no box jitter: evaluation is seeded and fixed).
    pub fn config(&self) -> PromptConfig {
        let (box_prob, points_prob, box_and_points_prob) = match self.prompts {
            PromptMode::Box => (1.0, 0.0, 0.0),
            PromptMode::Points => (0.0, 1.0, 0.0),
            PromptMode::BoxPoints => (0.0, 0.0, 1.0),
        };
        PromptConfig {
            box_prob,
            points_prob,
            box_and_points_prob,
            positive_points: self.positive_points,
            negative_points: self.negative_points,
            multimask: self.multimask,
            ..PromptConfig::default()
        }
    }

    /// How the reports name them.
    pub fn describe(&self) -> String {
        format!("{:?}, multimask: {}", self.prompts, self.multimask.name()).to_lowercase()
    }
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, default_value = "auto")]
    pub variant: VariantArg,
    /// A folder dataset (images/ + masks/; its val/ part when it has one) or a COCO JSON.
    #[arg(long)]
    pub data: PathBuf,
    /// COCO: the image folder (default: images/ beside the JSON).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// COCO: only these categories.
    #[arg(long = "category")]
    pub categories: Vec<String>,
    #[command(flatten)]
    pub prompts: EvalPromptArgs,
    #[arg(long, default_value_t = 16)]
    pub min_area: usize,
    #[arg(long, default_value = "auto")]
    pub intensity: IntensityScaling,
    /// Best and worst images drawn as overlays (each).
    #[arg(long, default_value_t = 4)]
    pub overlays: usize,
    #[arg(long, value_enum)]
    pub device: Option<DeviceChoice>,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let device = device::resolve(args.device)?;
    let (model, config) = load_sam(&args.checkpoint, args.variant.0, &device)?;
    let samples = if args.data.extension().is_some_and(|e| e == "json") {
        let images = args.images.clone().unwrap_or_else(|| {
            args.data
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("images")
        });
        coco::load_coco(&args.data, &images, &args.categories)?
    } else {
        let split = folder::load_folder(&args.data, 0.0, 0)?;
        if split.val.is_empty() {
            split.train
        } else {
            split.val
        }
    };
    let (prepared, skipped, _) = prepare(&samples, args.min_area)?;
    if prepared.is_empty() {
        anyhow::bail!(
            "{}: no objects of at least {} px to evaluate",
            args.data.display(),
            args.min_area
        );
    }
    let prompts = args.prompts.config();
    std::fs::create_dir_all(args.out.join("overlays"))
        .with_context(|| format!("creating {}", args.out.display()))?;
    // per-object results stream to objects.jsonl; only the best and worst overlays stay in memory
    let jsonl_path = args.out.join("objects.jsonl");
    let mut jsonl = std::io::BufWriter::new(
        std::fs::File::create(&jsonl_path)
            .with_context(|| format!("creating {}", jsonl_path.display()))?,
    );
    let mut results: Vec<ObjectResult> = Vec::new();
    let mut best: Vec<(f64, String, RgbImage)> = Vec::new();
    let mut worst: Vec<(f64, String, RgbImage)> = Vec::new();
    let settings = EvalSettings {
        cache: None,
        intensity: args.intensity,
        prompts: &prompts,
        seed: args.prompts.seed,
        keep_masks: args.overlays > 0,
        progress: true,
    };
    evaluate_each(&model, &prepared, &settings, |index, eval| {
        for r in &eval.results {
            writeln!(jsonl, "{}", serde_json::to_string(r)?)?;
        }
        let score =
            eval.results.iter().map(|r| r.iou).sum::<f64>() / eval.results.len().max(1) as f64;
        let name = prepared[index].sample.name();
        let qualifies = |list: &Vec<(f64, String, RgbImage)>, better: bool| {
            list.len() < args.overlays
                || list
                    .iter()
                    .any(|(s, _, _)| if better { score > *s } else { score < *s })
        };
        if args.overlays > 0 && (qualifies(&best, true) || qualifies(&worst, false)) {
            let image = load_rgb(&prepared[index].sample.image, args.intensity)?;
            let picture = comparison_overlay(
                &image,
                &prepared[index].objects,
                &eval.predicted,
                &eval.prompts,
            );
            for (list, better) in [(&mut best, true), (&mut worst, false)] {
                list.push((score, name.clone(), picture.clone()));
                list.sort_by(|a, b| {
                    if better {
                        b.0.total_cmp(&a.0)
                    } else {
                        a.0.total_cmp(&b.0)
                    }
                });
                list.truncate(args.overlays);
            }
        }
        results.extend(eval.results);
        Ok(())
    })?;
    jsonl.flush()?;
    let mut overlays = Vec::new();
    for (kind, list) in [("best", &best), ("worst", &worst)] {
        for (rank, (score, name, picture)) in list.iter().enumerate() {
            let file = format!(
                "overlays/{kind}_{}_{}.png",
                rank + 1,
                std::path::Path::new(name).with_extension("").display()
            );
            save_png(&args.out.join(&file), &enlarge_for_viewing(picture))?;
            overlays.push((file, name.clone(), *score));
        }
    }
    let report = EvalReport {
        checkpoint: args.checkpoint.display().to_string(),
        model: describe(&config),
        data: args.data.display().to_string(),
        prompts: args.prompts.describe(),
        images: prepared.len(),
        aggregate: Aggregate::of(&results),
        overlays,
    };
    write_bytes_atomic(
        &args.out.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    write_bytes_atomic(&args.out.join("report.md"), markdown(&report).as_bytes())?;
    write_bytes_atomic(&args.out.join("report.html"), html(&report).as_bytes())?;
    let o = &report.aggregate.overall;
    println!(
        "{} objects in {} images ({skipped} below {} px skipped): mIoU {:.4}, Dice {:.4}",
        o.objects, report.images, args.min_area, o.mean_iou, o.mean_dice
    );
    println!("report: {}", args.out.join("report.html").display());
    Ok(())
}
