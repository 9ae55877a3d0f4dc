//! `samtune eval`: IoU and Dice of a checkpoint on a labeled set, with a report.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::{open_device, EncodeBatchArgs, EncoderArgs};
use crate::data::prompts::{Multimask, PromptConfig, PromptMode};
use crate::data::DataConfig;
use crate::device::DeviceSpec;
use crate::eval::set::{evaluate_set, SetEvaluation};
use crate::predict::image::IntensityScaling;
use crate::predict::semantic::checkpoint_classes;
use crate::weights::{load_sam_at, VariantChoice};

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
    pub fn config(&self) -> PromptConfig {
        PromptConfig::for_evaluation(
            self.prompts,
            self.positive_points,
            self.negative_points,
            self.multimask,
        )
    }
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long, default_value = "auto")]
    pub variant: VariantChoice,
    /// Run the model at this encoder input size (a multiple of the patch size): the
    /// checkpoint's own by default.
    #[arg(long)]
    pub img_size: Option<usize>,
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
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    #[command(flatten)]
    pub encoder: EncoderArgs,
    #[command(flatten)]
    pub batch: EncodeBatchArgs,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let data = DataConfig {
        min_area: args.min_area,
        intensity: args.intensity,
        ..DataConfig::for_path(&args.data, args.images.clone(), args.categories.clone())
    };
    let prompts = args.prompts.config();
    prompts.validate()?;
    let device = open_device(args.device)?;
    let (model, config) = load_sam_at(&args.checkpoint, args.variant, args.img_size, &device)?;
    let model = args.encoder.apply(model, &device)?;
    let classes = checkpoint_classes(&args.checkpoint, &config)?;
    let report = evaluate_set(
        &model,
        &config,
        &SetEvaluation {
            checkpoint: &args.checkpoint,
            data: &data,
            prompts,
            seed: args.prompts.seed,
            overlays: args.overlays,
            semantic: classes.as_ref(),
            encode_batch: args.batch.images(),
            out: &args.out,
        },
    )?;
    let o = &report.aggregate.overall;
    println!(
        "{} objects in {} images ({}): mIoU {:.4}, Dice {:.4}",
        o.objects,
        report.images,
        report.left_out(),
        o.mean_iou,
        o.mean_dice
    );
    println!("report: {}", args.out.join("report.html").display());
    Ok(())
}
