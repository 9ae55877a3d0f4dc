//! `samtune train` configuration: TOML, every field defaulted, unknown keys rejected,
//! `section.key=value` overrides on the command line. Documented in `configs/README.md`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::loss::LossConfig;
use crate::data::classes::resolve_classes;
use crate::data::prompts::PromptConfig;
use crate::data::source::DataConfig;
use crate::device::{ChosenDevice, DeviceSpec};
use crate::error::{bail, check_setting, Context, Error, Result};
use crate::model::lora::{LoraConfig, LoraPlace};
use crate::model::Precision;
use crate::predict::semantic::Classes;
use crate::predict::CacheConfig;
use crate::weights::VariantChoice;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Run name: outputs go to `<runs_dir>/<name>/`.
    pub name: String,
    pub runs_dir: PathBuf,
    /// `promptable` (SAM's task: a mask per prompt) or `semantic` (a prompt-free
    /// multi-class head, `data.classes`).
    pub task: Task,
    pub model: ModelConfig,
    pub data: DataConfig,
    pub prompts: PromptConfig,
    pub train: OptimConfig,
    pub loss: LossConfig,
    pub lora: LoraConfig,
    pub cache: CacheConfig,
    pub report: ReportConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            name: "run".into(),
            runs_dir: "runs".into(),
            task: Task::Promptable,
            model: ModelConfig::default(),
            data: DataConfig::default(),
            prompts: PromptConfig::default(),
            train: OptimConfig::default(),
            loss: LossConfig::default(),
            lora: LoraConfig::default(),
            cache: CacheConfig::default(),
            report: ReportConfig::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// The pretrained checkpoint (official `.pth`, safetensors or burnpack).
    pub checkpoint: PathBuf,
    /// `auto` (read from the checkpoint), `vit_b`, `vit_l` or `vit_h`.
    pub variant: VariantChoice,
    /// `auto` (a real GPU when one is compiled in and present, else the CPU), `cpu`,
    /// `cuda`, `cuda:N` or `wgpu`.
    pub device: DeviceSpec,
    /// What is trained: `decoder` (image and prompt encoders frozen), `decoder+prompt`
    /// (prompt encoder too), `all` (full fine-tuning), or LoRA adapters (`[lora]`) on the
    /// image encoder with the whole mask decoder (`lora-encoder`), on the mask decoder
    /// alone (`lora-decoder`), or on both (`lora-all`).
    pub trainable: Trainable,
    /// Encoder input size, a multiple of the patch size: the checkpoint's own when absent.
    /// At another size its position embeddings are resized (README, Other input sizes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub img_size: Option<usize>,
    /// Data-parallel training: each batch's images are shared out to these devices
    /// (`cuda:0`, `cuda:1`, ...; `cpu`), their gradients summed on the first, which
    /// holds the optimizer. Empty: `device` alone.
    pub devices: Vec<DeviceSpec>,
    /// The image encoder's arithmetic: `f32` (the official one) or `bf16` (its matrix
    /// products on bf16 operands summed in f32, as PyTorch's bf16 autocast; CPUs with AMX or
    /// AVX512-BF16), for a frozen encoder: filling the embedding cache and encoding batches.
    pub encoder_precision: Precision,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            checkpoint: PathBuf::new(),
            variant: VariantChoice::Auto,
            device: DeviceSpec::Auto,
            trainable: Trainable::Decoder,
            img_size: None,
            devices: Vec::new(),
            encoder_precision: Precision::F32,
        }
    }
}

impl ModelConfig {
    /// Opens the run's devices, the main one (the first of `devices`, else `device`)
    /// first: all of them, before any work, so that a device that is not there fails at
    /// once.
    pub fn open_devices(&self) -> Result<Vec<ChosenDevice>> {
        let specs: &[DeviceSpec] = if self.devices.is_empty() {
            std::slice::from_ref(&self.device)
        } else {
            &self.devices
        };
        specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                spec.open().map_err(|e| {
                    let key = if self.devices.is_empty() {
                        "model.device".to_string()
                    } else {
                        format!("model.devices[{i}]")
                    };
                    Error::config(key, e)
                })
            })
            .collect()
    }
}

/// What a run trains the model to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// A mask for each prompt (boxes, points), as SAM.
    Promptable,
    /// One mask per class for a whole image, without prompts: a semantic head (its mask
    /// tokens and hypernetworks started from SAM's multimask outputs) through the
    /// official decoder, trained with cross-entropy and Dice over the classes.
    Semantic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trainable {
    #[serde(rename = "decoder")]
    Decoder,
    #[serde(rename = "decoder+prompt")]
    DecoderAndPrompt,
    #[serde(rename = "all")]
    All,
    #[serde(rename = "lora-encoder")]
    LoraEncoder,
    #[serde(rename = "lora-decoder")]
    LoraDecoder,
    #[serde(rename = "lora-all")]
    LoraAll,
}

impl Trainable {
    /// The name used in config files.
    pub fn name(self) -> &'static str {
        match self {
            Trainable::Decoder => "decoder",
            Trainable::DecoderAndPrompt => "decoder+prompt",
            Trainable::All => "all",
            Trainable::LoraEncoder => "lora-encoder",
            Trainable::LoraDecoder => "lora-decoder",
            Trainable::LoraAll => "lora-all",
        }
    }

    /// With a frozen image encoder, embeddings can be computed once and cached.
    pub fn encoder_frozen(self) -> bool {
        !matches!(
            self,
            Trainable::All | Trainable::LoraEncoder | Trainable::LoraAll
        )
    }

    /// Where LoRA adapters go (none outside the LoRA modes).
    pub fn lora_places(self) -> &'static [LoraPlace] {
        match self {
            Trainable::LoraEncoder => &[LoraPlace::ImageEncoder],
            Trainable::LoraDecoder => &[LoraPlace::MaskDecoder],
            Trainable::LoraAll => &[LoraPlace::ImageEncoder, LoraPlace::MaskDecoder],
            _ => &[],
        }
    }

    /// Whether every mask-decoder parameter trains (not only adapters on it).
    pub fn trains_decoder(self) -> bool {
        !matches!(self, Trainable::LoraDecoder | Trainable::LoraAll)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    pub epochs: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    /// Decoupled weight decay, not applied to norms and biases.
    pub weight_decay: f64,
    /// Linear warm-up over this fraction of all steps, then cosine decay.
    pub warmup_fraction: f64,
    /// The cosine ends at `lr * min_lr_ratio`.
    pub min_lr_ratio: f64,
    /// Global gradient-norm clipping (0 disables).
    pub grad_clip_norm: f64,
    /// Optimizer step every this many batches.
    pub grad_accumulation: usize,
    /// Images per batch (each with up to `data.max_objects_per_image` prompts).
    pub images_per_batch: usize,
    /// Stop after this many epochs without a better validation mIoU (0: never).
    pub patience: usize,
    /// Stop (resumably) after this many epochs in one invocation, e.g. to fit a cluster
    /// job's time limit; continue with `--resume` (0: no limit).
    pub stop_after_epochs: usize,
    /// At most this many batches an epoch (a fixed budget between validations on a large
    /// set; 0: the whole training set).
    pub batches_per_epoch: usize,
    /// Recompute memory-bound operations (element-wise ops, activations, reshapes) in the
    /// backward pass instead of keeping their outputs: less activation memory when the
    /// image encoder is in the graph (`all`, `lora-encoder`, `lora-all`), some more time.
    pub checkpoint_activations: bool,
    /// Batches drawn ahead on a background thread (images read, masks decoded, targets
    /// built, cached embeddings read) while the current one trains; 0 draws each batch
    /// when it is needed. The examples are the same either way.
    pub prefetch_batches: usize,
    pub seed: u64,
}

impl OptimConfig {
    pub fn validate(&self) -> Result<()> {
        let unit = |v: f64| (0.0..=1.0).contains(&v);
        for (key, value) in [
            ("train.epochs", self.epochs),
            ("train.grad_accumulation", self.grad_accumulation),
            ("train.images_per_batch", self.images_per_batch),
        ] {
            check_setting(key, value, value >= 1, ">= 1")?;
        }
        check_setting(
            "train.lr",
            self.lr,
            self.lr > 0.0 && self.lr.is_finite(),
            "> 0",
        )?;
        for (key, value) in [("train.beta1", self.beta1), ("train.beta2", self.beta2)] {
            check_setting(key, value, (0.0..1.0).contains(&value), "in [0, 1)")?;
        }
        check_setting(
            "train.epsilon",
            self.epsilon,
            self.epsilon > 0.0 && self.epsilon.is_finite(),
            "> 0",
        )?;
        check_setting(
            "train.weight_decay",
            self.weight_decay,
            self.weight_decay >= 0.0 && self.weight_decay.is_finite(),
            ">= 0",
        )?;
        for (key, value) in [
            ("train.warmup_fraction", self.warmup_fraction),
            ("train.min_lr_ratio", self.min_lr_ratio),
        ] {
            check_setting(key, value, unit(value), "in [0, 1]")?;
        }
        check_setting(
            "train.prefetch_batches",
            self.prefetch_batches,
            self.prefetch_batches <= 64,
            "in [0, 64]",
        )?;
        check_setting(
            "train.grad_clip_norm",
            self.grad_clip_norm,
            self.grad_clip_norm >= 0.0 && self.grad_clip_norm.is_finite(),
            ">= 0 (0 turns clipping off)",
        )
    }
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            epochs: 10,
            lr: 1e-4,
            beta1: 0.9,
            beta2: 0.999,
            epsilon: 1e-8,
            weight_decay: 0.01,
            warmup_fraction: 0.05,
            min_lr_ratio: 0.01,
            grad_clip_norm: 1.0,
            grad_accumulation: 1,
            images_per_batch: 2,
            patience: 0,
            stop_after_epochs: 0,
            batches_per_epoch: 0,
            checkpoint_activations: false,
            prefetch_batches: 2,
            seed: 42,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportConfig {
    /// Evaluate the base checkpoint on the validation set before training (zero-shot).
    pub zero_shot: bool,
    /// Mask overlays written to TensorBoard each epoch.
    pub overlays_per_epoch: usize,
}

impl Default for ReportConfig {
    fn default() -> Self {
        Self {
            zero_shot: true,
            overlays_per_epoch: 4,
        }
    }
}

impl TrainConfig {
    /// Reads `path`, applies `key=value` overrides, checks the result. Relative paths in
    /// the file are relative to the directory the command runs in.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        let mut value: toml::Value =
            toml::from_str(&text).with_context(|| format!("{}: invalid TOML", path.display()))?;
        for item in overrides {
            apply_override(&mut value, item)?;
        }
        let config: TrainConfig = value
            .try_into()
            .with_context(|| format!("{}: invalid configuration", path.display()))?;
        config
            .validate()
            .with_context(|| format!("{}: invalid configuration", path.display()))?;
        Ok(config)
    }

    /// Every setting against its valid range (configs/README.md states them).
    pub fn validate(&self) -> Result<()> {
        if self.model.checkpoint.as_os_str().is_empty() {
            bail!("model.checkpoint is required");
        }
        if let Some(size) = self.model.img_size {
            check_setting(
                "model.img_size",
                size,
                size >= 16,
                ">= 16 (a multiple of the patch size)",
            )?;
        }
        if self.model.encoder_precision != Precision::F32 && !self.model.trainable.encoder_frozen()
        {
            return Err(Error::config(
                "model.encoder_precision",
                format!(
                    "{} is for a frozen image encoder; trainable = \"{}\" trains it in f32",
                    self.model.encoder_precision,
                    self.model.trainable.name()
                ),
            ));
        }
        let lora = &self.lora;
        check_setting("lora.rank", lora.rank, lora.rank >= 1, ">= 1")?;
        check_setting(
            "lora.alpha",
            lora.alpha,
            lora.alpha > 0.0 && lora.alpha.is_finite(),
            "> 0",
        )?;
        self.data.validate()?;
        if self.task == Task::Semantic {
            // the classes resolve against the data format now, not when the run starts
            resolve_classes(&self.data)?;
        } else if !self.data.classes.is_empty() {
            return Err(Error::config(
                "data.classes",
                "is for task = \"semantic\" (this run's task is \"promptable\")",
            ));
        }
        check_setting(
            "cache.encode_batch",
            self.cache.encode_batch,
            self.cache.encode_batch >= 1,
            ">= 1",
        )?;
        self.prompts.validate()?;
        self.train.validate()?;
        self.loss.validate()
    }

    /// The classes of a semantic run; `None` for a promptable one.
    pub fn classes(&self) -> Result<Option<Classes>> {
        match self.task {
            Task::Promptable => Ok(None),
            Task::Semantic => resolve_classes(&self.data).map(Some),
        }
    }

    pub fn run_dir(&self) -> PathBuf {
        self.runs_dir.join(&self.name)
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string_pretty(self)?)
    }
}

/// `train.lr=3e-4`, `name="x"`, `data.categories=["cell"]`: the value is TOML (bare
/// words are taken as strings).
fn apply_override(root: &mut toml::Value, item: &str) -> Result<()> {
    let (key, raw) = item
        .split_once('=')
        .with_context(|| format!("override '{item}' must be key=value (e.g. train.lr=3e-4)"))?;
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let mut node = root;
    let parts: Vec<&str> = key.trim().split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let table = node.as_table_mut().with_context(|| {
            format!(
                "override '{item}': '{}' is not a section",
                parts[..i].join(".")
            )
        })?;
        if i + 1 == parts.len() {
            table.insert(part.to_string(), value);
            return Ok(());
        }
        node = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    unreachable!("split always yields at least one part")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    const MINIMAL: &str = "[model]\ncheckpoint = \"m.pth\"\n[data]\npath = \"d\"\n";

    #[test]
    fn defaults_fill_everything_and_overrides_apply() {
        let (_d, path) = write(MINIMAL);
        let c = TrainConfig::load(
            &path,
            &[
                "train.lr=3e-4".into(),
                "name=exp1".into(),
                "model.trainable=all".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.train.lr, 3e-4);
        assert_eq!(c.name, "exp1");
        assert_eq!(c.model.trainable, Trainable::All);
        assert_eq!(c.loss.focal_weight, 20.0);
        assert_eq!(c.train.weight_decay, 0.01);
        // the saved config reads back to the same values
        let (_d2, saved) = write(&c.to_toml().unwrap());
        assert_eq!(TrainConfig::load(&saved, &[]).unwrap(), c);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_naming_them() {
        let (_d, path) = write(&format!("{MINIMAL}[train]\nlearning_rate = 1\n"));
        let err = format!("{:#}", TrainConfig::load(&path, &[]).unwrap_err());
        assert!(err.contains("learning_rate"), "{err}");
        let (_d, path) = write(MINIMAL);
        let err = format!(
            "{:#}",
            TrainConfig::load(&path, &["train.lr=-1".into()]).unwrap_err()
        );
        assert!(err.contains("train.lr"), "{err}");
        let err = format!(
            "{:#}",
            TrainConfig::load(&path, &["oops".into()]).unwrap_err()
        );
        assert!(err.contains("key=value"), "{err}");
    }

    #[test]
    fn bf16_encoding_reads_and_is_refused_for_a_trained_encoder() {
        let (_d, path) = write(MINIMAL);
        let c = TrainConfig::load(&path, &["model.encoder_precision=bf16".into()]).unwrap();
        assert_eq!(c.model.encoder_precision, Precision::Bf16);
        let err = format!(
            "{:#}",
            TrainConfig::load(&path, &["model.encoder_precision=fp16".into()]).unwrap_err()
        );
        assert!(err.contains("'fp16'") && err.contains("bf16"), "{err}");
        let err = format!(
            "{:#}",
            TrainConfig::load(
                &path,
                &[
                    "model.encoder_precision=bf16".into(),
                    "model.trainable=lora-encoder".into()
                ]
            )
            .unwrap_err()
        );
        assert!(
            err.contains("model.encoder_precision") && err.contains("lora-encoder"),
            "{err}"
        );
    }
}
