//! The `samtune` command line.

mod annotate;
mod bench;
mod download;
mod eval;
mod eval_volumes;
mod export;
mod init;
mod inspect;
mod predict;
mod serve;
mod train;
mod variants;

use anyhow::Result;
use burn::tensor::Device;
use clap::{Args, Parser, Subcommand};

use crate::device::DeviceSpec;
use crate::model::{Precision, Sam};

#[derive(Debug, Parser)]
#[command(
    name = "samtune",
    version,
    about = "Fine-tune Meta's Segment Anything Model on your own labeled images"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Masks for box and point prompts on one image.
    Predict(predict::PredictArgs),
    /// Architecture, parameter counts, dtype and size of a checkpoint.
    Inspect(inspect::InspectArgs),
    /// The official checkpoints: parameters, size, memory, use cases.
    Variants(variants::VariantsArgs),
    /// The checkpoint to use for the GPU memory available.
    Select(variants::SelectArgs),
    /// Download an official checkpoint (resumable, verified).
    Download(download::DownloadArgs),
    /// Fine-tune a checkpoint on a labeled image set.
    Train(train::TrainArgs),
    /// Fill the embedding cache of a training config ahead of training.
    Embed(train::EmbedArgs),
    /// Write generated sample data: source or target images, or CT-like NIfTI volumes.
    SampleData(train::SampleDataArgs),
    /// IoU and Dice of a checkpoint on a labeled set: report.json, report.md, report.html.
    Eval(eval::EvalArgs),
    /// A randomly initialised SAM of an official or custom architecture (to pre-train).
    Init(init::InitArgs),
    /// 3D IoU, Dice and surface distance on NIfTI volumes, slice by slice.
    EvalVolumes(eval_volumes::EvalVolumesArgs),
    /// Write a checkpoint as .pth (official loader), safetensors or burnpack.
    Export(export::ExportArgs),
    /// Masks for every object in a folder of images (the official automatic mask
    /// generator), as COCO JSON that `train` reads.
    Annotate(annotate::AnnotateArgs),
    /// A local web page to annotate images by clicking (saved as a COCO dataset that
    /// `train` reads), pick auto-annotation proposals, and review eval and train runs.
    Serve(serve::ServeArgs),
    /// Speed and memory of the five benchmark cases (random weights of the real sizes).
    Bench(bench::BenchArgs),
}

/// The `samtune` program: tunes the allocator, parses the command line, runs the command;
/// returns the exit status (1 on an error, which is printed with its causes).
pub fn main() -> i32 {
    crate::alloc::tune_for_tensors();
    let cli = Cli::parse();
    match run(cli) {
        Ok(status) => status,
        Err(err) => {
            eprintln!("error: {err:#}");
            1
        }
    }
}

/// Runs one command; `Ok` holds the exit status (130 for a run stopped by Ctrl-C).
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Train(args) => return train::run_train(args),
        Command::Predict(args) => predict::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Variants(args) => variants::run_variants(args),
        Command::Select(args) => variants::run_select(args),
        Command::Download(args) => download::run(args),
        Command::Embed(args) => train::run_embed(args),
        Command::SampleData(args) => train::run_sample_data(args),
        Command::Bench(args) => bench::run(args),
        Command::Annotate(args) => annotate::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Export(args) => export::run(args),
        Command::Init(args) => init::run(args),
        Command::Eval(args) => eval::run(args),
        Command::EvalVolumes(args) => eval_volumes::run(args),
    }?;
    Ok(0)
}

/// The image encoder's arithmetic, for the commands that encode images.
#[derive(Debug, Args)]
pub struct EncoderArgs {
    /// `f32` (the official arithmetic) or `bf16`: the encoder's matrix products on bf16
    /// operands summed in f32, as PyTorch's bf16 autocast runs them (CPUs with AMX or
    /// AVX512-BF16; README, bf16 encoding).
    #[arg(long = "encoder-precision", default_value = "f32")]
    pub precision: Precision,
}

impl EncoderArgs {
    /// `model`, encoding in the chosen precision on `device`.
    pub fn apply(&self, model: Sam, device: &Device) -> Result<Sam> {
        Ok(model.with_encoder_precision(self.precision, device)?)
    }
}

/// How many images the encoder takes in one pass, for the commands that encode a set.
#[derive(Debug, Args)]
pub struct EncodeBatchArgs {
    /// Images (or slices) run through the encoder together, `[B, 3, S, S]`: on a GPU each
    /// kernel is then launched once for all of them; on the CPU, whose kernels keep every
    /// core busy on one image, keep 1. The results are those of one image at a time.
    #[arg(long = "encode-batch", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    encode_batch: u16,
}

impl EncodeBatchArgs {
    pub fn images(&self) -> usize {
        self.encode_batch.into()
    }
}

/// Opens the device of a `--device` argument and says which one it is.
pub fn open_device(spec: DeviceSpec) -> Result<Device> {
    let chosen = spec.open()?;
    eprintln!("device: {}", chosen.description);
    Ok(chosen.device)
}
