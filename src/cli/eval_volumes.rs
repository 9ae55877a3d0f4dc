//! `samtune eval-volumes`: 3D IoU, Dice and NSD of a checkpoint on NIfTI volumes, with the
//! predicted label volumes and a report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::device::{self, DeviceChoice};
use super::eval::EvalPromptArgs;
use super::VariantArg;
use crate::data::nifti::{write_nifti, VoxelType};
use crate::data::volumes::{volume_pairs, volume_stem, SliceAxis};
use crate::eval::evaluate::EvalSettings;
use crate::eval::report::enlarge_for_viewing;
use crate::eval::volumes::{
    evaluate_volume, html, markdown, VolumeReport, VolumeSettings, VolumeSummary,
};
use crate::fsutil::{save_png, write_bytes_atomic};
use crate::predict::image::IntensityScaling;
use crate::weights::{describe, load_sam};

#[derive(Debug, Args)]
pub struct EvalVolumesArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, default_value = "auto")]
    pub variant: VariantArg,
    /// A folder with images/ and labels/ NIfTI volumes (its val/ part when it has one).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_enum, default_value = "z")]
    pub axis: SliceAxis,
    /// Per volume: auto (min-max), window:LOW,HIGH, ct-soft-tissue, ct-lung, ct-bone,
    /// percentile:LOW,HIGH (MR), ...
    #[arg(long, default_value = "auto")]
    pub intensity: IntensityScaling,
    #[command(flatten)]
    pub prompts: EvalPromptArgs,
    /// Surface distance tolerance of the NSD, in mm.
    #[arg(long, default_value_t = 2.0)]
    pub tolerance_mm: f64,
    /// A label's name, `VALUE=NAME` (repeatable), e.g. `--label 1=liver`.
    #[arg(long = "label", value_parser = parse_label)]
    pub labels: Vec<(u16, String)>,
    #[arg(long, value_enum)]
    pub device: Option<DeviceChoice>,
    /// Gets report.{json,md,html}, predictions/*.nii.gz and pictures/.
    #[arg(long)]
    pub out: PathBuf,
}

fn parse_label(s: &str) -> Result<(u16, String), String> {
    let (value, name) = s
        .split_once('=')
        .ok_or_else(|| format!("label '{s}' must be VALUE=NAME"))?;
    let value = value
        .trim()
        .parse::<u16>()
        .map_err(|_| format!("label '{s}': {value} is not a label value (0..65535)"))?;
    Ok((value, name.trim().to_string()))
}

pub fn run(args: EvalVolumesArgs) -> Result<()> {
    if args.tolerance_mm.is_nan() || args.tolerance_mm < 0.0 {
        bail!("--tolerance-mm {} must be >= 0", args.tolerance_mm);
    }
    let root = if args.data.join("val").is_dir() {
        args.data.join("val")
    } else {
        args.data.clone()
    };
    let pairs = volume_pairs(&root)?;
    let device = device::resolve(args.device)?;
    let (model, config) = load_sam(&args.checkpoint, args.variant.0, &device)?;
    let prompts = args.prompts.config();
    let settings = VolumeSettings {
        axis: args.axis,
        intensity: args.intensity,
        tolerance_mm: args.tolerance_mm,
        label_names: Arc::new(args.labels.iter().cloned().collect::<BTreeMap<_, _>>()),
        eval: EvalSettings {
            cache: None,
            intensity: IntensityScaling::Auto,
            prompts: &prompts,
            seed: args.prompts.seed,
            keep_masks: true,
            progress: false,
        },
    };
    for sub in ["predictions", "pictures"] {
        std::fs::create_dir_all(args.out.join(sub))
            .with_context(|| format!("creating {}", args.out.join(sub).display()))?;
    }
    let bar = ProgressBar::new(pairs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("eval {bar:30} {pos}/{len} volumes  {msg}  ETA {eta}")
            .expect("valid template"),
    );
    let mut results = Vec::new();
    let mut pictures = Vec::new();
    for (image, labels) in &pairs {
        let stem = volume_stem(image);
        bar.set_message(stem.clone());
        let eval = evaluate_volume(
            &model,
            image,
            labels,
            &settings,
            &args.out.join(".slices").join(&stem),
        )?;
        write_nifti(
            &args.out.join("predictions").join(format!("{stem}.nii.gz")),
            &eval.predicted,
            VoxelType::U16,
        )?;
        if let Some((slice, picture)) = &eval.picture {
            let file = format!("pictures/{stem}_{}{slice:04}.png", args.axis.name());
            save_png(&args.out.join(&file), &enlarge_for_viewing(picture))?;
            pictures.push((file, stem.clone(), *slice));
        }
        results.extend(eval.results);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let _ = std::fs::remove_dir(args.out.join(".slices"));
    let report = VolumeReport {
        checkpoint: args.checkpoint.display().to_string(),
        model: describe(&config),
        data: root.display().to_string(),
        axis: args.axis.name().to_string(),
        prompts: args.prompts.describe(),
        tolerance_mm: args.tolerance_mm,
        volumes: pairs.len(),
        overall: VolumeSummary::of(&results),
        per_label: VolumeReport::per_label(&results),
        results,
        pictures,
    };
    write_bytes_atomic(
        &args.out.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    write_bytes_atomic(&args.out.join("report.md"), markdown(&report).as_bytes())?;
    write_bytes_atomic(&args.out.join("report.html"), html(&report).as_bytes())?;
    println!(
        "{} labels in {} volumes: Dice {:.4}, IoU {:.4}, NSD@{}mm {:.4}",
        report.overall.count,
        report.volumes,
        report.overall.mean_dice,
        report.overall.mean_iou,
        args.tolerance_mm,
        report.overall.mean_nsd
    );
    println!("report: {}", args.out.join("report.html").display());
    Ok(())
}
