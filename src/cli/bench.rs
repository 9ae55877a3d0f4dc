//! `samtune bench`: parses the options, runs each benchmark case (`crate::bench`) in a
//! child process of this binary, so that its peak memory is its own, and prints the tables.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::open_device;
use crate::bench::data::{DataResult, DataSettings, DataStep};
use crate::bench::{run_case, Case, CaseResult, CaseSettings};
use crate::device::DeviceSpec;
use crate::model::Precision;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// CPU threads (sets RAYON_NUM_THREADS for the cases).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Only these cases (encoder, decoder_step, prompt_latency, finetune, load; `data`,
    /// which is not run by default: the data pipeline at 100 to 10,000 images;
    /// `cache_dtype`: f16/bf16 cache entries against f32).
    #[arg(long = "case")]
    pub cases: Vec<Selected>,
    /// Write the results as JSON too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Internal: run one case in this process and print its JSON.
    #[arg(long, hide = true)]
    pub child: Option<Child>,
    #[command(flatten)]
    pub settings: CaseSettings,
    #[command(flatten)]
    pub data: DataSettings,
}

/// A `--case` value: a timed case, or the data pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selected {
    Case(Case),
    Data,
}

impl FromStr for Selected {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> crate::error::Result<Self> {
        match s {
            "data" => Ok(Selected::Data),
            case => case.parse().map(Selected::Case),
        }
    }
}

/// What a child process runs.
#[derive(Debug, Clone, Copy)]
pub enum Child {
    Case(Case),
    Data(DataStep),
}

impl FromStr for Child {
    type Err = crate::error::Error;

    fn from_str(s: &str) -> crate::error::Result<Self> {
        if s.starts_with("data-") {
            s.parse().map(Child::Data)
        } else {
            s.parse().map(Child::Case)
        }
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(child) = args.child {
        return run_child(child, &args);
    }
    let selected = if args.cases.is_empty() {
        Case::DEFAULT.map(Selected::Case).to_vec()
    } else {
        args.cases.clone()
    };
    let exe = std::env::current_exe().context("locating the samtune binary")?;
    let data = if selected.contains(&Selected::Data) {
        let results = run_data(&args, &exe)?;
        print_data_table(&results);
        results
    } else {
        Vec::new()
    };
    let mut results = Vec::new();
    for case in selected.iter().filter_map(|s| match s {
        Selected::Case(case) => Some(*case),
        Selected::Data => None,
    }) {
        eprintln!("running {case} ...");
        let mut child_args = args.settings.args();
        child_args.extend(["--device".to_string(), args.device.to_string()]);
        let line = run_in_child(&exe, &case.to_string(), &child_args, args.threads)?;
        let result: CaseResult = serde_json::from_str(line.trim())
            .with_context(|| format!("case {case} printed {line}"))?;
        results.push(result);
    }
    if !results.is_empty() {
        print_table(&results, &args);
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "tool": match args.settings.encoder_precision {
                Precision::F32 => "samtune",
                Precision::Bf16 => "samtune_bf16",
            },
            "encoder_precision": args.settings.encoder_precision,
            "variant": args.settings.model_name(),
            "device": args.device.to_string(),
            "threads": args.threads,
            "results": results,
            "data": data,
        });
        crate::fsutil::write_bytes_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    }
    Ok(())
}

/// One case or data step, in this process; its measurement printed as JSON.
fn run_child(child: Child, args: &BenchArgs) -> Result<()> {
    let result = match child {
        Child::Case(case) => {
            let device = open_device(args.device)?;
            Some(serde_json::to_string(&run_case(
                case,
                &args.settings,
                &device,
            )?)?)
        }
        Child::Data(step) => step
            .run(&args.data)?
            .map(|r| serde_json::to_string(&r))
            .transpose()?,
    };
    if let Some(json) = result {
        println!("{json}");
    }
    Ok(())
}

/// The data case: each step in a child process (the sets are prepared once and kept).
fn run_data(args: &BenchArgs, exe: &Path) -> Result<Vec<DataResult>> {
    std::fs::create_dir_all(&args.data.data_dir)
        .with_context(|| format!("creating {}", args.data.data_dir.display()))?;
    let mut results = Vec::new();
    for step in DataStep::plan(&args.data) {
        eprintln!("{}", step.describe(&args.data));
        let line = run_in_child(exe, &step.to_string(), &args.data.args(), args.threads)?;
        if !line.trim().is_empty() {
            results.push(
                serde_json::from_str(line.trim())
                    .with_context(|| format!("{step} printed {line}"))?,
            );
        }
    }
    Ok(results)
}

/// Runs `samtune bench --child <child> <args>`; its standard output.
fn run_in_child(
    exe: &Path,
    child: &str,
    args: &[String],
    threads: Option<usize>,
) -> Result<String> {
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "--child", child]).args(args);
    if let Some(threads) = threads {
        cmd.env("RAYON_NUM_THREADS", threads.to_string());
    }
    let output = cmd.output().with_context(|| format!("running {child}"))?;
    if !output.status.success() {
        bail!(
            "{child} failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn print_table(results: &[CaseResult], args: &BenchArgs) {
    println!(
        "samtune bench: {} on {}, {} threads",
        args.settings.model_name(),
        args.device,
        args.threads
            .map_or("default".to_string(), |t| t.to_string())
    );
    println!(
        "{:<16} {:>10} {:>8} {:>10} {:>10}  description",
        "case", "median s", "spread", "GFLOP/s", "peak MB"
    );
    for r in results {
        let gflops = r
            .flops
            .map_or("-".to_string(), |f| format!("{:.1}", f / r.median_s / 1e9));
        println!(
            "{:<16} {:>10.4} {:>7.0}% {:>10} {:>10.0}  {}",
            r.case,
            r.median_s,
            r.spread * 100.0,
            gflops,
            r.peak_rss_mb,
            r.description
        );
        for (k, v) in &r.extra {
            println!("{:<16} {:>10.4}  {k}", "", v);
        }
    }
}

/// The data table as printed.
fn print_data_table(results: &[DataResult]) {
    println!(
        "{:<34} {:>7} {:>8} {:>9} {:>8} {:>8} {:>10} {:>8}",
        "data set", "images", "objects", "index s", "peak MB", "step ms", "data wait", "file MB"
    );
    for r in results {
        println!(
            "{:<34} {:>7} {:>8} {:>9.2} {:>8.0} {:>8.1} {:>9.1}% {:>8.1}",
            r.set,
            r.images,
            r.objects,
            r.index_seconds,
            r.peak_rss_mb,
            r.step_ms,
            100.0 * r.data_wait_share,
            r.file_mb
        );
    }
}
