//! `samtune variants` and `samtune select [--memory-gb N | --device D] [--task T]`.

use anyhow::{bail, Result};
use clap::Args;

use super::inspect::thousands;
use crate::device::DeviceSpec;
use crate::weights::catalog::{
    measured_peak, official, select_by_memory, PeakDevice, Workload, OFFICIAL_CHECKPOINTS,
};

#[derive(Debug, Args)]
pub struct VariantsArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SelectArgs {
    /// Memory available, in GB; by default the free memory of `--device`.
    #[arg(long)]
    pub memory_gb: Option<f64>,
    /// The device whose free memory decides: `auto` (GPU 0 when the NVIDIA driver
    /// answers, else the CPU's available RAM), `cpu`, `cuda:N`.
    #[arg(long, default_value = "auto", conflicts_with = "memory_gb")]
    pub device: DeviceSpec,
    /// `inference` or `finetune`: also list, for every variant, samtune's own measured
    /// peak memory for that task (CPU and CUDA) beside the reference document's figure.
    #[arg(long)]
    pub task: Option<Workload>,
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
    let (gb, source) = match args.memory_gb {
        Some(gb) if !gb.is_finite() || gb < 0.0 => {
            bail!("--memory-gb {gb}: give the available memory in GB (a number >= 0)")
        }
        Some(gb) => (gb, "given".to_string()),
        None => {
            let free = args.device.free_memory()?;
            let gb = free.bytes as f64 / 1e9;
            (
                gb,
                format!(
                    "free on {} of {:.1} GB",
                    free.source,
                    free.total as f64 / 1e9
                ),
            )
        }
    };
    let variant = select_by_memory(gb);
    let c = official(variant);
    println!("{variant}");
    eprintln!(
        "{gb:.1} GB ({source}) -> {variant} ({}, {} parameters; needs {} for inference, {} to fine-tune the decoder)",
        c.file_name,
        thousands(c.parameters),
        c.inference_memory,
        c.fine_tune_memory
    );
    if let Some(task) = args.task {
        print_peaks(task);
    }
    Ok(())
}

/// The reference document's memory figure for `task` beside samtune's measured peaks.
fn print_peaks(task: Workload) {
    let peak = |variant, device| {
        measured_peak(variant, task, device).map_or("not measured".to_string(), |p| {
            format!("{:.2} GB ({})", p.megabytes as f64 / 1e3, p.how)
        })
    };
    eprintln!(
        "\n{:<6} {:<27} {:<56} samtune, CUDA (GPU memory of the process)",
        "model", "reference document", "samtune, CPU (peak RSS)"
    );
    for c in &OFFICIAL_CHECKPOINTS {
        let reference = match task {
            Workload::Inference => c.inference_memory,
            Workload::Finetune => c.fine_tune_memory,
        };
        eprintln!(
            "{:<6} {:<27} {:<56} {}",
            c.variant.name(),
            reference,
            peak(c.variant, PeakDevice::Cpu),
            peak(c.variant, PeakDevice::Cuda)
        );
    }
}
