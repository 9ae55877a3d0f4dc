//! Benchmarks of samtune's speed and memory (`samtune bench`, `bench/compare.sh`): the
//! cases timed against PyTorch (encoder forward, `train`'s own decoder step, prompt
//! latency, a cached decoder fine-tune, checkpoint loading), the f16/bf16 embedding-cache
//! check, and the data pipeline at dataset sizes (`data`), on random-weight models of the
//! real sizes. The command line runs each case in a process of its own so that its peak
//! memory is its own.

pub mod data;
mod trainer;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Distribution, Tensor};
use serde::{Deserialize, Serialize};

use self::trainer::BenchTrainer;
use crate::error::{Error, Result};
use crate::model::{Architecture, Precision, SamVariant};
use crate::predict::{EncodedImage, Predictor, PromptBatch};

/// A timed case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// The image encoder forward, batch 1.
    Encoder,
    /// `train`'s own decoder step: 8 box prompts, forward, backward, clipping, AdamW.
    DecoderStep,
    /// One box to three masks at image size, on an encoded image.
    PromptLatency,
    /// A decoder fine-tune on cached embeddings, and re-encoding every step.
    Finetune,
    /// Loading a full checkpoint.
    Load,
    /// What f16/bf16 cache entries do to the decoder's output (not timed against PyTorch).
    CacheDtype,
}

impl Case {
    /// The cases `samtune bench` runs when none is named.
    pub const DEFAULT: [Case; 5] = [
        Case::Encoder,
        Case::DecoderStep,
        Case::PromptLatency,
        Case::Finetune,
        Case::Load,
    ];
    const ALL: [Case; 6] = [
        Case::Encoder,
        Case::DecoderStep,
        Case::PromptLatency,
        Case::Finetune,
        Case::Load,
        Case::CacheDtype,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Case::Encoder => "encoder",
            Case::DecoderStep => "decoder_step",
            Case::PromptLatency => "prompt_latency",
            Case::Finetune => "finetune",
            Case::Load => "load",
            Case::CacheDtype => "cache_dtype",
        }
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Case {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Case::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Case::ALL.iter().map(|c| c.name()).collect();
                Error::msg(format!("unknown case '{s}' (cases: {})", names.join(", ")))
            })
    }
}

/// The model and the repetitions of the timed cases.
#[derive(Debug, Clone, clap::Args)]
pub struct CaseSettings {
    #[arg(long, default_value = "vit_b")]
    pub variant: SamVariant,
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
    /// The image encoder's arithmetic in the encoder and fine-tuning cases (`bf16`: CPUs
    /// with AMX or AVX512-BF16).
    #[arg(long, default_value = "f32")]
    pub encoder_precision: Precision,
}

impl CaseSettings {
    /// What the command line gives a case's child process to measure the same thing.
    pub fn args(&self) -> Vec<String> {
        let mut v = vec![
            "--variant".into(),
            self.variant.to_string(),
            "--reps".into(),
            self.reps.to_string(),
            "--ft-images".into(),
            self.ft_images.to_string(),
            "--ft-prompts".into(),
            self.ft_prompts.to_string(),
            "--ft-epochs".into(),
            self.ft_epochs.to_string(),
        ];
        if self.tiny {
            v.push("--tiny".into());
        }
        if let Some(size) = self.img_size {
            v.push("--img-size".into());
            v.push(size.to_string());
        }
        v.push("--encoder-precision".into());
        v.push(self.encoder_precision.to_string());
        v
    }

    /// The model measured: `tiny`, or the variant, at `img_size` when given.
    pub fn architecture(&self) -> Architecture {
        let mut architecture = if self.tiny {
            let mut tiny = Architecture::default();
            let e = &mut tiny.image_encoder;
            (e.img_size, e.embed_dim, e.depth, e.num_heads, e.window_size) = (256, 64, 2, 2, 4);
            e.global_attn_indexes = vec![1];
            tiny
        } else {
            self.variant.architecture()
        };
        if let Some(size) = self.img_size {
            architecture.image_encoder.img_size = size;
        }
        architecture
    }

    /// The model's name in reports: `tiny` or the variant.
    pub fn model_name(&self) -> String {
        if self.tiny {
            "tiny".to_string()
        } else {
            self.variant.to_string()
        }
    }
}

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

/// Runs `case` on `device` and measures it.
pub fn run_case(case: Case, settings: &CaseSettings, device: &Device) -> Result<CaseResult> {
    let config = settings.architecture();
    let img = config.image_encoder.img_size;
    let grid = img / config.image_encoder.patch_size;
    match case {
        Case::Encoder => {
            let model = config
                .init(device)
                .with_encoder_precision(settings.encoder_precision, device)?;
            let input =
                Tensor::<4>::random([1, 3, img, img], Distribution::Normal(0.0, 1.0), device);
            let seconds = time_reps(settings.reps, || {
                sync(model.image_encoder.forward(input.clone()))
            })?;
            let mut extra = BTreeMap::new();
            if settings.encoder_precision != Precision::F32 {
                let f32_model = model
                    .clone()
                    .with_encoder_precision(Precision::F32, device)?;
                let error = max_relative_error(
                    model.image_encoder.forward(input.clone()),
                    f32_model.image_encoder.forward(input),
                );
                extra.insert(
                    "error vs samtune's fp32 encoder (max abs / max)".into(),
                    error,
                );
            }
            Ok(stats(
                case.name(),
                format!(
                    "image encoder forward {img}x{img}, batch 1, {}",
                    settings.encoder_precision.described()
                ),
                seconds,
                Some(encoder_flops(&config)),
                extra,
            ))
        }
        Case::DecoderStep => {
            let mut trainer = BenchTrainer::new(&config, 8, device);
            let embedding =
                Tensor::<4>::random([1, 256, grid, grid], Distribution::Normal(0.0, 1.0), device);
            let mut step = || trainer.step(embedding.clone());
            let seconds = time_reps(settings.reps, &mut step)?;
            Ok(stats(
                case.name(),
                "decoder train step (train's own): 8 box prompts, multimask, fwd+bwd, clipping, AdamW".into(),
                seconds,
                None,
                BTreeMap::new(),
            ))
        }
        Case::PromptLatency => {
            let model = config.init(device);
            let predictor = Predictor::new(&model);
            let encoded = EncodedImage {
                embedding: Tensor::random(
                    [1, 256, grid, grid],
                    Distribution::Normal(0.0, 1.0),
                    device,
                ),
                original_size: [img * 3 / 4, img],
                input_size: [img * 3 / 4, img],
            };
            let prompts =
                PromptBatch::from_boxes_and_points(random_boxes(1, img as f64 * 0.75), Vec::new());
            let seconds = time_reps(settings.reps.max(10), || {
                let p = predictor.predict(&encoded, &prompts, true)?;
                sync(p.logits)
            })?;
            Ok(stats(
                case.name(),
                "1 box -> 3 masks at image size, on an encoded image".into(),
                seconds,
                None,
                BTreeMap::new(),
            ))
        }
        Case::Finetune => finetune_case(settings, &config, device),
        Case::CacheDtype => cache_dtype_case(&config, device),
        Case::Load => {
            let dir = tempfile_dir()?;
            let path = dir.join("bench_model.safetensors");
            {
                let model = config.init(device);
                crate::weights::save_checkpoint(&model, &config, &path, &BTreeMap::new(), &|_| {
                    true
                })?;
            }
            // The peak of loading alone, not of making and saving the file above.
            crate::alloc::release_free_memory();
            reset_peak_rss();
            let seconds = time_reps(settings.reps, || {
                let (model, _) = crate::weights::load_sam(&path, None, device)?;
                sync(model.mask_decoder.iou_token.weight.val())
            })?;
            let size = std::fs::metadata(&path)?.len() as f64 / 1e6;
            let _ = std::fs::remove_dir_all(&dir);
            let mut extra = BTreeMap::new();
            extra.insert("file MB".into(), size);
            Ok(stats(
                case.name(),
                "load a full checkpoint (safetensors, official keys)".into(),
                seconds,
                None,
                extra,
            ))
        }
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
        crate::predict::tensor_values(predictor.predict(&rounded, &prompts, true)?.logits)
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

/// `max |a - b| / max |b|`, the error measure of the PyTorch peers' encoder case.
fn max_relative_error(a: Tensor<4>, b: Tensor<4>) -> f64 {
    let scale = b.clone().abs().max().into_scalar::<f32>() as f64;
    let difference = (a - b).abs().max().into_scalar::<f32>() as f64;
    difference / scale.max(f64::MIN_POSITIVE)
}

/// Case 4: a decoder fine-tune over `ft_images` images x `ft_prompts` prompts for
/// `ft_epochs` epochs, with embeddings computed once (the cache) and re-encoded every step.
fn finetune_case(
    settings: &CaseSettings,
    config: &Architecture,
    device: &Device,
) -> Result<CaseResult> {
    let img = config.image_encoder.img_size;
    let mut trainer = BenchTrainer::new(config, settings.ft_prompts, device);
    let encoder = trainer
        .model
        .valid()
        .with_encoder_precision(settings.encoder_precision, device)?;
    let images: Vec<Tensor<4>> = (0..settings.ft_images)
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
    for _ in 0..settings.ft_epochs {
        for e in &embeddings {
            trainer.step(e.clone())?;
        }
    }
    let cached = t.elapsed().as_secs_f64();
    // without: the frozen encoder runs for every step
    let t = Instant::now();
    for _ in 0..settings.ft_epochs {
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
            settings.ft_epochs, settings.ft_images, settings.ft_prompts
        ),
        vec![cached],
        None,
        extra,
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_case_reads_back_from_its_name_and_unknown_names_are_listed() {
        for case in Case::ALL {
            assert_eq!(case.name().parse::<Case>().unwrap(), case);
        }
        let message = "encode".parse::<Case>().unwrap_err().to_string();
        assert!(
            message.contains("'encode'") && message.contains("decoder_step, prompt_latency"),
            "{message}"
        );
    }

    #[test]
    fn a_child_gets_the_settings_it_was_started_with() {
        #[derive(clap::Parser)]
        struct Parsed {
            #[command(flatten)]
            settings: CaseSettings,
        }
        let settings = CaseSettings {
            variant: SamVariant::VitL,
            reps: 5,
            ft_images: 1,
            ft_prompts: 4,
            ft_epochs: 10,
            tiny: true,
            img_size: Some(512),
            encoder_precision: Precision::Bf16,
        };
        let args = std::iter::once("bench".to_string()).chain(settings.args());
        let parsed = <Parsed as clap::Parser>::parse_from(args).settings;
        assert_eq!(format!("{parsed:?}"), format!("{settings:?}"));
    }
}
