//! `samtune train`, `samtune embed`, `samtune sample-data`.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;

use crate::data::synthetic::{write_dataset, Domain};
use crate::train::embed::fill_cache;
use crate::train::{train, TrainConfig};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The run's TOML configuration (see configs/README.md).
    #[arg(long)]
    pub config: PathBuf,
    /// Continue the run in runs/<name>/ from its last saved state.
    #[arg(long)]
    pub resume: bool,
    /// Settings over the file's, e.g. `train.lr=3e-4 train.epochs=20 name=exp2`.
    pub overrides: Vec<String>,
}

/// The exit status shells expect after SIGINT: a stopped run is not a finished one, so
/// `samtune train ... && next-step` does not carry on.
const INTERRUPTED: i32 = 130;

pub fn run_train(args: TrainArgs) -> Result<i32> {
    let config = TrainConfig::load(&args.config, &args.overrides)?;
    let interrupt = interrupt_flag()?;
    let outcome = train(&config, args.resume, &interrupt)?;
    let dir = outcome.run_dir.join("checkpoints");
    if outcome.interrupted {
        let overrides: String = args.overrides.iter().map(|o| format!(" {o}")).collect();
        println!(
            "interrupted: resume with `samtune train --config {}{overrides} --resume`",
            args.config.display()
        );
        return Ok(INTERRUPTED);
    }
    if let Some(report) = &outcome.report {
        println!(
            "val mIoU: zero-shot {:.4} -> fine-tuned {:.4} ({:+.4}, best epoch {})",
            report.zero_shot.overall.mean_iou,
            report.fine_tuned.overall.mean_iou,
            report.gain(),
            report.best_epoch
        );
    }
    println!("checkpoints: {}", dir.display());
    if outcome.report.is_some() {
        println!(
            "report: {}",
            outcome.run_dir.join("report").join("report.html").display()
        );
    }
    Ok(0)
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Only this worker's share `i/N` of the images (0-based i), for parallel extraction.
    #[arg(long, value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,
    pub overrides: Vec<String>,
}

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("shard '{s}' must be i/N"))?;
    let (i, n): (usize, usize) = (
        i.parse()
            .map_err(|_| format!("shard '{s}': i is not a number"))?,
        n.parse()
            .map_err(|_| format!("shard '{s}': N is not a number"))?,
    );
    if n == 0 || i >= n {
        return Err(format!("shard '{s}': need 0 <= i < N"));
    }
    Ok((i, n))
}

/// Fills the embedding cache for every train, val and test image of a config.
pub fn run_embed(args: EmbedArgs) -> Result<()> {
    let config = TrainConfig::load(&args.config, &args.overrides)?;
    let device = super::open_device(config.model.device)?;
    let outcome = fill_cache(&config, &device, args.shard.unwrap_or((0, 1)), true)?;
    println!(
        "{}: {} images encoded, {} already cached",
        outcome.dir.display(),
        outcome.encoded,
        outcome.cached
    );
    Ok(())
}

#[derive(Debug, Args)]
pub struct SampleDataArgs {
    /// Output folder (gets images/ and masks/; for `ct`, images/ and labels/ volumes).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "target")]
    pub domain: Domain,
    #[arg(long, default_value_t = 24)]
    pub count: usize,
    /// Image side in pixels (`ct`: the in-plane side; depth is a sixth of it, at least 8).
    #[arg(long, default_value_t = 128)]
    pub size: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run_sample_data(args: SampleDataArgs) -> Result<()> {
    write_dataset(&args.out, args.domain, args.count, args.size, args.seed)?;
    println!(
        "{} {:?} images in {}",
        args.count,
        args.domain,
        args.out.display()
    );
    Ok(())
}

/// A flag set by the first Ctrl-C (the run then saves and stops); a second one exits.
#[cfg(unix)]
fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::SIGINT;
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register_conditional_shutdown(SIGINT, 130, flag.clone())
        .context("installing the Ctrl-C handler")?;
    signal_hook::flag::register(SIGINT, flag.clone()).context("installing the Ctrl-C handler")?;
    Ok(flag)
}

#[cfg(not(unix))]
fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    Ok(Arc::new(AtomicBool::new(false)))
}
