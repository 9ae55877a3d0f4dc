//! `samtune train` configuration: TOML, every field defaulted, unknown keys rejected,
//! `section.key=value` overrides on the command line. Documented in `configs/README.md`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::loss::LossConfig;
use crate::data::volumes::SliceAxis;
use crate::predict::image::IntensityScaling;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Run name: outputs go to `<runs_dir>/<name>/`.
    pub name: String,
    pub runs_dir: PathBuf,
    pub model: ModelConfig,
    pub data: DataConfig,
    pub prompts: PromptConfig,
    pub train: OptimConfig,
    pub loss: LossConfig,
    pub cache: CacheConfig,
    pub report: ReportConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            name: "run".into(),
            runs_dir: "runs".into(),
            model: ModelConfig::default(),
            data: DataConfig::default(),
            prompts: PromptConfig::default(),
            train: OptimConfig::default(),
            loss: LossConfig::default(),
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
    /// `auto`, `vit_b`, `vit_l` or `vit_h`.
    pub variant: String,
    /// `cpu`, `cuda` or `wgpu`; empty: the best compiled in.
    pub device: String,
    /// What is trained: `decoder` (image and prompt encoders frozen), `decoder+prompt`
    /// (prompt encoder too) or `all` (full fine-tuning).
    pub trainable: Trainable,
    /// Data-parallel training: each batch's images are shared out to these devices
    /// (`cuda:0`, `cuda:1`, ...; `cpu`), their gradients summed on the first, which
    /// holds the optimizer. Empty: `device` alone.
    pub devices: Vec<String>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            checkpoint: PathBuf::new(),
            variant: "auto".into(),
            device: String::new(),
            trainable: Trainable::Decoder,
            devices: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trainable {
    #[serde(rename = "decoder")]
    Decoder,
    #[serde(rename = "decoder+prompt")]
    DecoderAndPrompt,
    #[serde(rename = "all")]
    All,
}

impl Trainable {
    /// The name used in config files.
    pub fn name(self) -> &'static str {
        match self {
            Trainable::Decoder => "decoder",
            Trainable::DecoderAndPrompt => "decoder+prompt",
            Trainable::All => "all",
        }
    }

    /// With a frozen image encoder, embeddings can be computed once and cached.
    pub fn encoder_frozen(self) -> bool {
        self != Trainable::All
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// `folder` (images/ + masks/) or `coco`.
    pub format: DataFormat,
    /// Folder datasets: the root holding `images/` and `masks/` (or `train/`, `val/`).
    pub path: PathBuf,
    /// COCO: the annotation file.
    pub annotations: PathBuf,
    /// COCO: the image folder (default: `images/` beside the annotation file).
    pub images: PathBuf,
    /// COCO: a separate validation annotation file (default: a seeded split).
    pub val_annotations: PathBuf,
    /// COCO: keep only these category names (empty: all).
    pub categories: Vec<String>,
    /// Fraction of images held out for validation when there is no explicit split.
    pub val_ratio: f64,
    pub split_seed: u64,
    /// Objects smaller than this many pixels are skipped (and counted in the log).
    pub min_area: usize,
    /// At most this many objects per image and step (randomly chosen each epoch).
    pub max_objects_per_image: usize,
    /// How 16-bit or float images become 8-bit (NIfTI: per volume).
    pub intensity: IntensityScaling,
    /// NIfTI: the axis slices are taken across (`x`, `y` or `z`).
    pub slice_axis: SliceAxis,
    /// NIfTI: fraction of the training slices with foreground that are used (seeded).
    pub slice_fraction: f64,
    /// NIfTI: category names of label values, e.g. `{ 1 = "liver", 2 = "spleen" }`.
    pub label_names: BTreeMap<String, String>,
    /// NIfTI: where the slices are written (reused while volumes and settings agree).
    pub slice_dir: PathBuf,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            format: DataFormat::Folder,
            path: PathBuf::new(),
            annotations: PathBuf::new(),
            images: PathBuf::new(),
            val_annotations: PathBuf::new(),
            categories: Vec::new(),
            val_ratio: 0.2,
            split_seed: 0,
            min_area: 16,
            max_objects_per_image: 8,
            intensity: IntensityScaling::Auto,
            slice_axis: SliceAxis::Z,
            slice_fraction: 1.0,
            label_names: BTreeMap::new(),
            slice_dir: "cache/slices".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    Folder,
    Coco,
    /// NIfTI image and label volumes (`images/`, `labels/`), sliced.
    Nifti,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PromptConfig {
    /// Probability of a box prompt alone.
    pub box_prob: f64,
    /// Probability of point prompts alone.
    pub points_prob: f64,
    /// Probability of a box plus points (the three probabilities are normalised).
    pub box_and_points_prob: f64,
    /// Box jitter: each edge moves by up to this fraction of the box side...
    pub box_jitter: f64,
    /// ... and at most this many pixels.
    pub box_jitter_max_px: f64,
    /// Foreground points sampled inside the object.
    pub positive_points: usize,
    /// Background points sampled outside it.
    pub negative_points: usize,
    /// Extra correction clicks from the error region, each fed back with the previous
    /// low-res mask (the SAM paper's interactive training); 0 disables.
    pub refine_clicks: usize,
    /// When the decoder predicts three masks (and the best one is trained and scored):
    /// `ambiguous` (a lone point, the SAM paper's rule: other prompts use and train the
    /// single-mask output), `always` or `never`; `true`/`false` mean always/never.
    #[serde(deserialize_with = "multimask_or_bool")]
    pub multimask: Multimask,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Multimask {
    #[default]
    Ambiguous,
    Always,
    Never,
}

impl Multimask {
    /// Whether prompts like these get three masks: under `Ambiguous`, when every one is a
    /// single point (padding aside) without a box.
    pub fn for_prompts(self, prompts: &[crate::data::prompts::ObjectPrompt]) -> bool {
        match self {
            Multimask::Always => true,
            Multimask::Never => false,
            Multimask::Ambiguous => prompts.iter().all(|p| {
                p.bbox.is_none() && p.points.iter().filter(|(_, label)| *label >= 0).count() == 1
            }),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Multimask::Ambiguous => "ambiguous",
            Multimask::Always => "always",
            Multimask::Never => "never",
        }
    }
}

impl std::str::FromStr for Multimask {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ambiguous" => Ok(Self::Ambiguous),
            "always" | "true" => Ok(Self::Always),
            "never" | "false" => Ok(Self::Never),
            _ => Err(format!(
                "multimask '{s}': expected ambiguous, always or never"
            )),
        }
    }
}

fn multimask_or_bool<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Multimask, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Name(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bool(true) => Ok(Multimask::Always),
        Raw::Bool(false) => Ok(Multimask::Never),
        Raw::Name(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            box_prob: 0.5,
            points_prob: 0.25,
            box_and_points_prob: 0.25,
            box_jitter: 0.1,
            box_jitter_max_px: 20.0,
            positive_points: 1,
            negative_points: 0,
            refine_clicks: 0,
            multimask: Multimask::Ambiguous,
        }
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
    pub seed: u64,
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
            seed: 42,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Reuse image embeddings across epochs and runs (frozen encoder only).
    pub enabled: bool,
    /// Shared by runs: entries are keyed by image, checkpoint and preprocessing.
    pub dir: PathBuf,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: "cache/embeddings".into(),
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

    pub fn validate(&self) -> Result<()> {
        if self.model.checkpoint.as_os_str().is_empty() {
            bail!("model.checkpoint is required");
        }
        let t = &self.train;
        if t.epochs == 0 || t.images_per_batch == 0 || t.grad_accumulation == 0 {
            bail!("train.epochs, train.images_per_batch and train.grad_accumulation must be at least 1");
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            bail!("train.lr must be a positive number, got {}", t.lr);
        }
        if !(0.0..=1.0).contains(&t.warmup_fraction) || !(0.0..=1.0).contains(&t.min_lr_ratio) {
            bail!("train.warmup_fraction and train.min_lr_ratio must be within [0, 1]");
        }
        let p = &self.prompts;
        if [p.box_prob, p.points_prob, p.box_and_points_prob]
            .iter()
            .any(|v| *v < 0.0)
            || p.box_prob + p.points_prob + p.box_and_points_prob <= 0.0
        {
            bail!(
                "prompts.box_prob, points_prob and box_and_points_prob must be >= 0 and not all 0"
            );
        }
        if p.points_prob + p.box_and_points_prob > 0.0 && p.positive_points + p.negative_points == 0
        {
            bail!("point prompts are enabled but prompts.positive_points + negative_points is 0");
        }
        if !(0.0..1.0).contains(&self.data.val_ratio) {
            bail!(
                "data.val_ratio must be within [0, 1), got {}",
                self.data.val_ratio
            );
        }
        match self.data.format {
            DataFormat::Folder if self.data.path.as_os_str().is_empty() => {
                bail!("data.path is required for folder datasets")
            }
            DataFormat::Coco if self.data.annotations.as_os_str().is_empty() => {
                bail!("data.annotations is required for COCO datasets")
            }
            _ => Ok(()),
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
}
