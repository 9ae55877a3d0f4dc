//! `samtune export`: a checkpoint in another format (official key names throughout).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use burn::tensor::Device;
use clap::{Args, ValueEnum};

use crate::weights::{load_sam, pack_to_raw, save_checkpoint, write_pth, Checkpoint};

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
    /// Any checkpoint samtune reads (e.g. runs/NAME/checkpoints/best.safetensors).
    pub checkpoint: PathBuf,
    #[arg(long, value_enum)]
    pub to: ExportFormat,
    /// Output file (default: the input's name with the new extension).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: ExportArgs) -> Result<()> {
    let extension = match args.to {
        ExportFormat::Pth => "pth",
        ExportFormat::Safetensors => "safetensors",
        ExportFormat::Bpk => "bpk",
    };
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.checkpoint.with_extension(extension));
    if out == args.checkpoint {
        anyhow::bail!("{} is the input file: give another --out", out.display());
    }
    match args.to {
        ExportFormat::Pth => {
            let checkpoint = Checkpoint::open(&args.checkpoint)?;
            // a complete, well-formed SAM is checked before anything is written
            checkpoint.check_complete(&checkpoint.architecture()?)?;
            let mut tensors = pack_to_raw(checkpoint.tensors.values().cloned().collect())?;
            for (raw, name) in tensors.iter_mut().zip(checkpoint.tensors.keys()) {
                raw.name = name.clone();
            }
            write_pth(&out, &tensors)?;
        }
        ExportFormat::Safetensors | ExportFormat::Bpk => {
            let (model, config) = load_sam(&args.checkpoint, None, &Device::default())?;
            save_checkpoint(&model, &config, &out, &BTreeMap::new(), &|_| true)?;
        }
    }
    println!("{}", out.display());
    Ok(())
}
