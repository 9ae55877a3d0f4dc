//! `samtune eval-volumes`: 3D IoU, Dice and NSD of a checkpoint on NIfTI volumes, with the
//! predicted label volumes and a report.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::eval::EvalPromptArgs;
use super::{open_device, EncodeBatchArgs, EncoderArgs};
use crate::data::volumes::SliceAxis;
use crate::device::DeviceSpec;
use crate::eval::volumes::{evaluate_volumes, VolumesEvaluation};
use crate::predict::image::IntensityScaling;
use crate::predict::semantic::checkpoint_classes;
use crate::weights::{load_sam_at, VariantChoice};

#[derive(Debug, Args)]
pub struct EvalVolumesArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, default_value = "auto")]
    pub variant: VariantChoice,
    /// Run the model at this encoder input size (a multiple of the patch size): the
    /// checkpoint's own by default.
    #[arg(long)]
    pub img_size: Option<usize>,
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
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    #[command(flatten)]
    pub encoder: EncoderArgs,
    #[command(flatten)]
    pub batch: EncodeBatchArgs,
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
    let device = open_device(args.device)?;
    let (model, config) = load_sam_at(&args.checkpoint, args.variant, args.img_size, &device)?;
    let model = args.encoder.apply(model, &device)?;
    let classes = checkpoint_classes(&args.checkpoint, &config)?;
    let report = evaluate_volumes(
        &model,
        &config,
        &VolumesEvaluation {
            checkpoint: &args.checkpoint,
            data: &args.data,
            prompts: args.prompts.config(),
            seed: args.prompts.seed,
            axis: args.axis,
            intensity: args.intensity,
            tolerance_mm: args.tolerance_mm,
            label_names: args.labels.iter().cloned().collect(),
            semantic: classes.as_ref(),
            encode_batch: args.batch.images(),
            out: &args.out,
        },
    )?;
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
