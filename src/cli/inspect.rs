//! `samtune inspect`: what a checkpoint holds.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::predict::semantic::checkpoint_classes;
use crate::weights::Checkpoint;

#[derive(Debug, Args)]
pub struct InspectArgs {
    pub checkpoint: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InspectArgs) -> Result<()> {
    let checkpoint = Checkpoint::open(&args.checkpoint)?;
    let config = checkpoint.architecture()?;
    // a file the model cannot load is not reported as fine
    checkpoint.check_complete(&config)?;
    let counts = checkpoint.parameter_counts();
    let mut dtypes: Vec<String> = checkpoint
        .dtypes()
        .iter()
        .map(|d| format!("{d:?}"))
        .collect();
    dtypes.sort();
    dtypes.dedup();
    let size = checkpoint.file_size;
    let tensors = checkpoint.shapes().len();
    let classes = checkpoint_classes(&args.checkpoint, &config)?;
    let task = if classes.is_some() {
        "semantic"
    } else {
        "promptable"
    };
    let class_names: Vec<String> = classes
        .iter()
        .flat_map(|c| &c.0)
        .map(|c| format!("{} = {}", c.value, c.name))
        .collect();
    if args.json {
        let value = serde_json::json!({
            "path": args.checkpoint.display().to_string(),
            "format": checkpoint.format.to_string(),
            "variant": config.variant(),
            "description": config.describe(),
            "task": task,
            "classes": classes,
            "config": config,
            "parameters": {
                "image_encoder": counts.image_encoder,
                "prompt_encoder": counts.prompt_encoder,
                "mask_decoder": counts.mask_decoder,
                "total": counts.total(),
            },
            "tensors": tensors,
            "dtypes": dtypes,
            "file_size_bytes": size,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let e = &config.image_encoder;
    println!("{}", args.checkpoint.display());
    println!("  format          {}", checkpoint.format);
    println!("  variant         {}", config.describe());
    match &classes {
        Some(_) => println!(
            "  task            semantic (no prompts), classes: {} (the official loader cannot load mask_decoder.semantic.*)",
            class_names.join(", ")
        ),
        None => println!("  task            promptable"),
    }
    println!(
        "  image encoder   {} px input, patch {}, embed {}, depth {}, heads {}, window {}, global blocks {:?}",
        e.img_size, e.patch_size, e.embed_dim, e.depth, e.num_heads, e.window_size, e.global_attn_indexes
    );
    println!("  parameters      {:>13}", thousands(counts.total()));
    println!("    image_encoder {:>13}", thousands(counts.image_encoder));
    println!("    prompt_encoder{:>13}", thousands(counts.prompt_encoder));
    println!("    mask_decoder  {:>13}", thousands(counts.mask_decoder));
    println!("  tensors         {tensors}");
    println!("  dtype           {}", dtypes.join(", "));
    println!("  file size       {}", human_bytes(size));
    Ok(())
}

/// `93735472` -> `93,735,472`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_counts_and_sizes() {
        assert_eq!(thousands(93_735_472), "93,735,472");
        assert_eq!(thousands(6_220), "6,220");
        assert_eq!(thousands(999), "999");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(375 * 1024 * 1024), "375.0 MiB");
    }
}
