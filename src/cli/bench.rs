//! `samtune bench`: the five speed/memory cases of the benchmark, on random-weight models
//! of the real sizes. Each case runs in a child process so that its peak memory is its own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::{Device, Distribution, Tensor};
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::bench_data::{self, DataBenchArgs};
use super::open_device;
use crate::data::prompts::{Multimask, ObjectPrompt, PromptConfig};
use crate::device::DeviceSpec;
use crate::model::{Architecture, Sam, SamVariant};
use crate::predict::{EncodedImage, Predictor, PromptBatch};
use crate::train::examples::Drawn;
use crate::train::optim::adamw;
use crate::train::run::freeze;
use crate::train::step::Stepper;
use crate::train::TrainConfig;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(long, default_value = "vit_b")]
    pub variant: SamVariant,
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// CPU threads (sets RAYON_NUM_THREADS for the cases).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed repetitions per case (after one warm-up).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
    /// Images, prompts per image and epochs of the fine-tuning case.
    #[arg(long, default_value_t = 2)]
    pub ft_images: usize,
    #[arg(long, default_value_t = 8)]
    pub ft_prompts: usize,
    #[arg(long, default_value_t = 3)]
    pub ft_epochs: usize,
    /// A small architecture instead of the variant (smoke tests).
    #[arg(long)]
    pub tiny: bool,
    /// The encoder input size (the variant's own by default), as `model.img_size`.
    #[arg(long)]
    pub img_size: Option<usize>,
    /// Only these cases (encoder, decoder_step, prompt_latency, finetune, load; `data`,
    /// which is not run by default: the data pipeline at 100 to 10,000 images).
    #[arg(long = "case")]
    pub cases: Vec<String>,
    /// Write the results as JSON too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Internal: run one case in this process and print its JSON.
    #[arg(long, hide = true)]
    pub child: Option<String>,
    #[command(flatten)]
    pub data: DataBenchArgs,
}

pub const CASES: [&str; 5] = [
    "encoder",
    "decoder_step",
    "prompt_latency",
    "finetune",
    "load",
];

/// One case's timings.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseResult {
    pub case: String,
    pub description: String,
    /// Seconds per repetition.
    pub seconds: Vec<f64>,
    pub median_s: f64,
    /// (max - min) / median.
    pub spread: f64,
    pub flops: Option<f64>,
    pub peak_rss_mb: f64,
    /// Extra numbers (e.g. the fine-tune run with and without the cache).
    pub extra: BTreeMap<String, f64>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(case) = &args.child {
        if case.starts_with("data-") {
            return bench_data::run_child(case, &args.data);
        }
        let result = run_case(case, &args)?;
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    let mut cases: Vec<String> = if args.cases.is_empty() {
        CASES.iter().map(|s| s.to_string()).collect()
    } else {
        args.cases.clone()
    };
    let exe = std::env::current_exe().context("locating the samtune binary")?;
    let data = if let Some(at) = cases.iter().position(|c| c == "data") {
        cases.remove(at);
        let results = bench_data::run(&args.data, &exe, args.threads)?;
        bench_data::print_table(&results);
        results
    } else {
        Vec::new()
    };
    let mut results = Vec::new();
    for case in &cases {
        if !CASES.contains(&case.as_str()) && case != "cache_dtype" {
            bail!("unknown case '{case}' (cases: {})", CASES.join(", "));
        }
        eprintln!("running {case} ...");
        let mut cmd = Command::new(&exe);
        cmd.arg("bench")
            .arg("--child")
            .arg(case)
            .args(child_args(&args));
        if let Some(threads) = args.threads {
            cmd.env("RAYON_NUM_THREADS", threads.to_string());
        }
        let output = cmd
            .output()
            .with_context(|| format!("running case {case}"))?;
        if !output.status.success() {
            bail!(
                "case {case} failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let line = String::from_utf8_lossy(&output.stdout);
        let result: CaseResult = serde_json::from_str(line.trim())
            .with_context(|| format!("case {case} printed {line}"))?;
        results.push(result);
    }
    if !results.is_empty() {
        print_table(&results, &args);
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "tool": "samtune",
            "variant": if args.tiny { "tiny".to_string() } else { args.variant.to_string() },
            "device": args.device.to_string(),
            "threads": args.threads,
            "results": results,
            "data": data,
        });
        crate::fsutil::write_bytes_atomic(path, serde_json::to_string_pretty(&doc)?.as_bytes())?;
    }
    Ok(())
}

fn child_args(args: &BenchArgs) -> Vec<String> {
    let mut v = vec![
        "--variant".into(),
        args.variant.to_string(),
        "--reps".into(),
        args.reps.to_string(),
        "--ft-images".into(),
        args.ft_images.to_string(),
        "--ft-prompts".into(),
        args.ft_prompts.to_string(),
        "--ft-epochs".into(),
        args.ft_epochs.to_string(),
    ];
    v.push("--device".into());
    v.push(args.device.to_string());
    if args.tiny {
        v.push("--tiny".into());
    }
    if let Some(size) = args.img_size {
        v.push("--img-size".into());
        v.push(size.to_string());
    }
    v
}

fn print_table(results: &[CaseResult], args: &BenchArgs) {
    println!(
        "samtune bench: {} on {}, {} threads",
        if args.tiny {
            "tiny".to_string()
        } else {
            args.variant.to_string()
        },
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

fn architecture(args: &BenchArgs) -> Architecture {
    let mut architecture = if args.tiny {
        let mut tiny = Architecture::default();
        let e = &mut tiny.image_encoder;
        (e.img_size, e.embed_dim, e.depth, e.num_heads, e.window_size) = (256, 64, 2, 2, 4);
        e.global_attn_indexes = vec![1];
        tiny
    } else {
        args.variant.architecture()
    };
    if let Some(size) = args.img_size {
        architecture.image_encoder.img_size = size;
    }
    architecture
}

fn stats(
    case: &str,
    description: String,
    seconds: Vec<f64>,
    flops: Option<f64>,
    extra: BTreeMap<String, f64>,
) -> CaseResult {
    let mut sorted = seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let spread = (sorted[sorted.len() - 1] - sorted[0]) / median.max(1e-12);
    CaseResult {
        case: case.into(),
        description,
        seconds,
        median_s: median,
        spread,
        flops,
        peak_rss_mb: peak_rss_mb(),
        extra,
    }
}

/// Times `f` `reps` times after one warm-up.
fn time_reps(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    f()?;
    (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

/// Forces pending work on the device to finish (GPU backends are asynchronous).
fn sync<const D: usize>(t: Tensor<D>) -> Result<()> {
    crate::predict::tensor_values(t)?;
    Ok(())
}

fn random_boxes(n: usize, size: f64) -> Vec<[f64; 4]> {
    (0..n)
        .map(|i| {
            let f = (i as f64 + 1.0) / (n as f64 + 2.0);
            [
                size * f * 0.5,
                size * f * 0.4,
                size * (0.5 + f * 0.4),
                size * (0.45 + f * 0.5),
            ]
        })
        .collect()
}

fn run_case(case: &str, args: &BenchArgs) -> Result<CaseResult> {
    let device = open_device(args.device)?;
    let config = architecture(args);
    let img = config.image_encoder.img_size;
    let grid = img / config.image_encoder.patch_size;
    match case {
        "encoder" => {
            let model = config.init(&device);
            let input =
                Tensor::<4>::random([1, 3, img, img], Distribution::Normal(0.0, 1.0), &device);
            let seconds = time_reps(args.reps, || {
                sync(model.image_encoder.forward(input.clone()))
            })?;
            Ok(stats(
                case,
                format!("image encoder forward {img}x{img}, batch 1"),
                seconds,
                Some(encoder_flops(&config)),
                BTreeMap::new(),
            ))
        }
        "decoder_step" => {
            let mut trainer = BenchTrainer::new(&config, 8, &device);
            let embedding = Tensor::<4>::random(
                [1, 256, grid, grid],
                Distribution::Normal(0.0, 1.0),
                &device,
            );
            let mut step = || trainer.step(embedding.clone());
            let seconds = time_reps(args.reps, &mut step)?;
            Ok(stats(
                case,
                "decoder train step (train's own): 8 box prompts, multimask, fwd+bwd, clipping, AdamW".into(),
                seconds,
                None,
                BTreeMap::new(),
            ))
        }
        "prompt_latency" => {
            let model = config.init(&device);
            let predictor = Predictor::new(&model);
            let encoded = EncodedImage {
                embedding: Tensor::random(
                    [1, 256, grid, grid],
                    Distribution::Normal(0.0, 1.0),
                    &device,
                ),
                original_size: [img * 3 / 4, img],
                input_size: [img * 3 / 4, img],
            };
            let prompts =
                PromptBatch::from_boxes_and_points(random_boxes(1, img as f64 * 0.75), Vec::new());
            let seconds = time_reps(args.reps.max(10), || {
                let p = predictor.predict(&encoded, &prompts, true)?;
                sync(p.logits)
            })?;
            Ok(stats(
                case,
                "1 box -> 3 masks at image size, on an encoded image".into(),
                seconds,
                None,
                BTreeMap::new(),
            ))
        }
        "finetune" => finetune_case(args, &config, &device),
        "cache_dtype" => cache_dtype_case(&config, &device),
        "load" => {
            let dir = tempfile_dir()?;
            let path = dir.join("bench_model.safetensors");
            {
                let model = config.init(&device);
                crate::weights::save_checkpoint(&model, &config, &path, &BTreeMap::new(), &|_| {
                    true
                })?;
            }
            // The peak of loading alone, not of making and saving the file above.
            crate::alloc::release_free_memory();
            reset_peak_rss();
            let seconds = time_reps(args.reps, || {
                let (model, _) = crate::weights::load_sam(&path, None, &device)?;
                sync(model.mask_decoder.iou_token.weight.val())
            })?;
            let size = std::fs::metadata(&path)?.len() as f64 / 1e6;
            let _ = std::fs::remove_dir_all(&dir);
            let mut extra = BTreeMap::new();
            extra.insert("file MB".into(), size);
            Ok(stats(
                case,
                "load a full checkpoint (safetensors, official keys)".into(),
                seconds,
                None,
                extra,
            ))
        }
        other => bail!("unknown case {other}"),
    }
}

/// What storing embeddings as f16 or bf16 (`cache.dtype`) does to the decoder's output: a
/// generated image encoded by the model, 8 box prompts decoded from the f32 embedding and
/// from the same embedding rounded, compared (logits and the masks they threshold to).
fn cache_dtype_case(architecture: &Architecture, device: &Device) -> Result<CaseResult> {
    use crate::predict::cache::CacheDtype;
    let model = architecture.init(device);
    let predictor = Predictor::new(&model);
    let side = architecture.image_encoder.img_size as u32;
    let (image, _) =
        crate::data::synthetic::generate(crate::data::synthetic::Domain::Source, side, 5);
    let t = Instant::now();
    let encoded = predictor.encode(&image);
    let embedding = crate::predict::tensor_values(encoded.embedding.clone())?;
    let seconds = vec![t.elapsed().as_secs_f64()];
    let prompts = PromptBatch::from_boxes_and_points(random_boxes(8, side as f64), Vec::new());
    let decode = |values: Vec<f32>| -> Result<Vec<f32>> {
        let rounded = EncodedImage {
            embedding: Tensor::from_data(
                burn::tensor::TensorData::new(values, encoded.embedding.dims()),
                device,
            ),
            ..encoded.clone()
        };
        Ok(crate::predict::tensor_values(
            predictor.predict(&rounded, &prompts, true)?.logits,
        )?)
    };
    let reference = decode(embedding.clone())?;
    let scale = reference
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(1e-12);
    let mut extra = BTreeMap::new();
    for dtype in [CacheDtype::F16, CacheDtype::Bf16] {
        let logits = decode(dtype.round_trip(&embedding)?)?;
        let worst = reference
            .iter()
            .zip(&logits)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let (mut both, mut either) = (0usize, 0usize);
        for (a, b) in reference.iter().zip(&logits) {
            both += (*a > 0.0 && *b > 0.0) as usize;
            either += (*a > 0.0 || *b > 0.0) as usize;
        }
        let name = format!("{dtype:?}").to_lowercase();
        extra.insert(
            format!("{name}: max logit error / max |logit|"),
            (worst / scale) as f64,
        );
        extra.insert(
            format!("{name}: mask IoU with f32"),
            both as f64 / either.max(1) as f64,
        );
    }
    Ok(stats(
        "cache_dtype",
        format!("f16/bf16 cached embeddings vs f32: 8 boxes x 3 masks, {side}px generated image"),
        seconds,
        None,
        extra,
    ))
}

/// Case 4: a decoder fine-tune over `ft_images` images x `ft_prompts` prompts for
/// `ft_epochs` epochs, with embeddings computed once (the cache) and re-encoded every step.
fn finetune_case(args: &BenchArgs, config: &Architecture, device: &Device) -> Result<CaseResult> {
    let img = config.image_encoder.img_size;
    let mut trainer = BenchTrainer::new(config, args.ft_prompts, device);
    let encoder = trainer.model.valid();
    let images: Vec<Tensor<4>> = (0..args.ft_images)
        .map(|_| Tensor::random([1, 3, img, img], Distribution::Normal(0.0, 1.0), device))
        .collect();
    // warm-up (first-call allocations and kernel selection), untimed
    trainer.step(encoder.image_encoder.forward(images[0].clone()))?;
    // with the cache: encode once, then train
    let t = Instant::now();
    let embeddings: Vec<Tensor<4>> = images
        .iter()
        .map(|x| encoder.image_encoder.forward(x.clone()))
        .collect();
    for e in &embeddings {
        sync(e.clone())?;
    }
    for _ in 0..args.ft_epochs {
        for e in &embeddings {
            trainer.step(e.clone())?;
        }
    }
    let cached = t.elapsed().as_secs_f64();
    // without: the frozen encoder runs for every step
    let t = Instant::now();
    for _ in 0..args.ft_epochs {
        for x in &images {
            let e = encoder.image_encoder.forward(x.clone());
            trainer.step(e)?;
        }
    }
    let uncached = t.elapsed().as_secs_f64();
    let mut extra = BTreeMap::new();
    extra.insert("without cache (re-encode every step), s".into(), uncached);
    extra.insert("speed-up of the cache".into(), uncached / cached);
    Ok(stats(
        "finetune",
        format!(
            "{} epochs x {} images x {} box prompts, embedding cache",
            args.ft_epochs, args.ft_images, args.ft_prompts
        ),
        vec![cached],
        None,
        extra,
    ))
}

/// `samtune train`'s own step (`train::step::Stepper`) on a synthetic example: frozen
/// encoders, `n` box prompts on one image embedding, all three masks trained
/// (`prompts.multimask = "always"`, as the PyTorch side does), global gradient clipping,
/// AdamW.
struct BenchTrainer {
    model: Sam,
    optim: ModuleOptimizer,
    stepper: Stepper,
    config: TrainConfig,
    prompts: Vec<ObjectPrompt>,
    low_res: Vec<f32>,
    img: usize,
}

impl BenchTrainer {
    fn new(architecture: &Architecture, n: usize, device: &Device) -> Self {
        let autodiff = device.clone().autodiff();
        let config = TrainConfig {
            prompts: PromptConfig {
                multimask: Multimask::Always,
                ..PromptConfig::default()
            },
            ..TrainConfig::default()
        };
        let model =
            freeze(architecture.init(&autodiff), &config).expect("decoder training freezes");
        let optim = adamw(&model, &config.train);
        let img = architecture.image_encoder.img_size;
        let low = architecture.grid() * 4;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        Self {
            model,
            optim,
            stepper: Stepper::new(vec![autodiff]),
            config,
            prompts: random_boxes(n, img as f64)
                .into_iter()
                .map(|b| ObjectPrompt {
                    bbox: Some(b),
                    points: Vec::new(),
                })
                .collect(),
            low_res: (0..n * low * low)
                .map(|_| (rng.random::<f64>() < 0.3) as u8 as f32)
                .collect(),
            img,
        }
    }

    /// `embedding`: `[1, 256, H, W]`, on the model's device without autodiff.
    fn step(&mut self, embedding: Tensor<4>) -> Result<()> {
        let example = Drawn::embedded(
            EncodedImage {
                embedding,
                original_size: [self.img, self.img],
                input_size: [self.img, self.img],
            },
            self.prompts.clone(),
            self.low_res.clone(),
        );
        self.stepper
            .batch(&self.model, vec![example], &self.config)?;
        let model = self.model.clone();
        self.model = self
            .stepper
            .apply(model, &mut self.optim, 1e-4, &self.config);
        sync(self.model.mask_decoder.iou_token.weight.val())
    }
}

/// Multiply-adds x2 of the image encoder forward (matmuls and convolutions).
pub fn encoder_flops(architecture: &Architecture) -> f64 {
    let e = &architecture.image_encoder;
    let grid = (e.img_size / e.patch_size) as f64;
    let n = grid * grid;
    let d = e.embed_dim as f64;
    let hidden = d * e.mlp_ratio;
    let mut flops = 2.0 * n * d * (3.0 * (e.patch_size * e.patch_size) as f64); // patch embedding
    for i in 0..e.depth {
        flops += 2.0 * n * d * (3.0 * d + d + 2.0 * hidden); // qkv, proj, mlp
                                                             // QK^T and AV: over all tokens in global blocks, per padded window otherwise
        let (groups, tokens) = if e.global_attn_indexes.contains(&i) {
            (1.0, n)
        } else {
            let w = e.window_size as f64;
            ((grid / w).ceil().powi(2), w * w)
        };
        flops += groups * 2.0 * 2.0 * tokens * tokens * d;
    }
    let out = architecture.decoder.prompt_embed_dim as f64;
    flops + 2.0 * n * d * out + 2.0 * n * out * out * 9.0 // neck
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("samtune-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Restarts the peak resident memory count from the current size (Linux: `5` to
/// `/proc/self/clear_refs`); elsewhere the peak stays the process's.
fn reset_peak_rss() {
    // Best effort: a kernel without it leaves the process-wide peak, which is only larger.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Peak resident memory of this process (Linux `VmHWM`), MB; 0 where unknown.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
