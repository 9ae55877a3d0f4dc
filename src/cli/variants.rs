//! `samtune variants` and `samtune select --memory-gb N`.

use anyhow::{bail, Result};
use clap::Args;

use super::inspect::thousands;
use crate::weights::catalog::{official, select_by_memory, OFFICIAL_CHECKPOINTS};

#[derive(Debug, Args)]
pub struct VariantsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SelectArgs {
    /// GPU memory available, in GB.
    #[arg(long)]
    pub memory_gb: f64,
}

pub fn run_variants(args: VariantsArgs) -> Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(&OFFICIAL_CHECKPOINTS)?);
        return Ok(());
    }
    println!(
        "{:<6} {:>12} {:<22} {:>8} {:>9} {:>8} {:<27} use case",
        "model", "parameters", "file", "size", "inference", "ms/mask", "fine-tune (decoder) GPU"
    );
    for c in &OFFICIAL_CHECKPOINTS {
        println!(
            "{:<6} {:>12} {:<22} {:>8} {:>9} {:>8} {:<27} {}",
            c.variant.name(),
            thousands(c.parameters),
            c.file_name,
            c.download_size,
            c.inference_memory,
            c.speed_per_mask_ms,
            c.fine_tune_memory,
            c.use_case
        );
    }
    println!(
        "\nspeed: A100, from the SAM paper and Roboflow; `samtune download <model>` fetches a file"
    );
    Ok(())
}

pub fn run_select(args: SelectArgs) -> Result<()> {
    if !args.memory_gb.is_finite() || args.memory_gb < 0.0 {
        bail!(
            "--memory-gb {}: give the available GPU memory in GB (a number >= 0)",
            args.memory_gb
        );
    }
    let variant = select_by_memory(args.memory_gb);
    let c = official(variant);
    println!("{variant}");
    eprintln!(
        "{} GB available -> {variant} ({}, {} parameters; needs {} for inference, {} to fine-tune the decoder)",
        args.memory_gb,
        c.file_name,
        thousands(c.parameters),
        c.inference_memory,
        c.fine_tune_memory
    );
    Ok(())
}
