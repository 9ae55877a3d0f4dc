//! `samtune export`: a checkpoint in another format (official key names throughout), at
//! another input size, or a LoRA adapters file merged into its base.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Result};
use burn::tensor::Device;
use clap::{Args, ValueEnum};

use crate::weights::adapters::Adapters;
use crate::weights::{load_sam_at, pack_to_raw, save_checkpoint, write_pth, Checkpoint};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// `torch.save(state_dict)` format, for `sam_model_registry[...](checkpoint=...)`.
    Pth,
    Safetensors,
    /// burn's burnpack.
    Bpk,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Any checkpoint samtune reads (e.g. runs/NAME/checkpoints/best.safetensors), or with
    /// `--merge` an `adapters.safetensors`.
    pub checkpoint: PathBuf,
    #[arg(long, value_enum)]
    pub to: ExportFormat,
    /// Output file (default: the input's name with the new extension).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The input is a LoRA adapters file: write its base with the adapters merged in
    /// (`W + alpha/r * B A`), which the official loader reads.
    #[arg(long, requires = "base")]
    pub merge: bool,
    /// The base checkpoint the adapters were trained on (its hash is checked).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Write the model at this encoder input size (position embeddings resized).
    #[arg(long)]
    pub img_size: Option<usize>,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let extension = match args.to {
        ExportFormat::Pth => "pth",
        ExportFormat::Safetensors => "safetensors",
        ExportFormat::Bpk => "bpk",
    };
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = if args.merge { "merged" } else { "" };
        let path = args.checkpoint.with_extension(extension);
        if stem.is_empty() {
            path
        } else {
            path.with_file_name(format!("{stem}.{extension}"))
        }
    });
    if out == args.checkpoint {
        bail!("{} is the input file: give another --out", out.display());
    }
    let device = Device::flex();
    let (model, architecture) = if let (true, Some(base)) = (args.merge, &args.base) {
        Adapters::read(&args.checkpoint)?.merge_into(base, &device)?
    } else if args.to == ExportFormat::Pth && args.img_size.is_none() {
        let checkpoint = Checkpoint::open(&args.checkpoint)?;
        // a complete, well-formed SAM is checked before anything is written
        checkpoint.check_complete(&checkpoint.architecture()?)?;
        let mut tensors = pack_to_raw(checkpoint.tensors.values().cloned().collect())?;
        for (raw, name) in tensors.iter_mut().zip(checkpoint.tensors.keys()) {
            raw.name = name.clone();
        }
        write_pth(&out, &tensors)?;
        println!("{}", out.display());
        return Ok(());
    } else {
        load_sam_at(&args.checkpoint, None, args.img_size, &device)?
    };
    match args.to {
        ExportFormat::Pth => {
            let tensors = crate::weights::save::official_tensors(&model, &|_| true);
            write_pth(&out, &pack_to_raw(tensors)?)?;
        }
        ExportFormat::Safetensors | ExportFormat::Bpk => {
            save_checkpoint(&model, &architecture, &out, &BTreeMap::new(), &|_| true)?;
        }
    }
    println!("{}", out.display());
    Ok(())
}
