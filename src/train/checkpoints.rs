//! What a run writes to keep its work: the loop state that `--resume` restores, the
//! best/last/decoder checkpoints under the official keys, and their metadata.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ParamGroup};
use burn::optim::ModuleOptimizer;
use burn::store::ModuleRecord;
use serde::{Deserialize, Serialize};

use super::config::{TrainConfig, Trainable};
use super::optim::adamw;
use crate::error::{bail, err, Context, Result};
use crate::eval::metrics::Summary;
use crate::fsutil::{temp_path, write_bytes_atomic};
use crate::model::{Architecture, Sam};
use crate::weights::save_checkpoint;

/// Metrics of one epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_focal: f64,
    pub train_dice: f64,
    pub train_iou_mse: f64,
    pub lr: f64,
    pub val: Summary,
    pub seconds: f64,
    /// Of `seconds`, the time the steps waited for their data.
    #[serde(default)]
    pub data_wait_seconds: f64,
}

/// What `--resume` restores besides the weights and the optimizer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainState {
    /// Epochs completed.
    pub epoch: usize,
    /// Optimizer steps taken.
    pub step: usize,
    pub best_miou: Option<f64>,
    pub best_epoch: Option<usize>,
    pub epochs_without_improvement: usize,
    pub history: Vec<EpochRecord>,
    pub zero_shot: Option<Summary>,
    pub base_checkpoint_sha256: String,
    /// `(optimizer step, batch loss)` of every batch, for the report's loss curve.
    #[serde(default)]
    pub step_losses: Vec<(usize, f32)>,
}

/// The folders of a run: `<runs_dir>/<name>/`, its checkpoints and its resume state.
#[derive(Debug, Clone)]
pub struct RunDirs {
    pub run: PathBuf,
    pub checkpoints: PathBuf,
    pub resume: PathBuf,
}

impl RunDirs {
    pub fn of(config: &TrainConfig) -> Self {
        let run = config.run_dir();
        let checkpoints = run.join("checkpoints");
        let resume = checkpoints.join("resume");
        Self {
            run,
            checkpoints,
            resume,
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.resume.join("state.json")
    }

    pub fn report(&self) -> PathBuf {
        self.run.join("report")
    }
}

/// The trained parts of the model for a [`Trainable`] setting.
pub fn trainable_group(model: &Sam, trainable: Trainable) -> ParamGroup {
    let group = ParamGroup::ids_from_module(model.mask_decoder.clone());
    match trainable {
        Trainable::Decoder => group,
        Trainable::DecoderAndPrompt => {
            group.fuse(&ParamGroup::ids_from_module(model.prompt_encoder.clone()))
        }
        Trainable::All => ParamGroup::ids_from_module(model.clone()),
    }
}

/// Official key prefixes of the trained parameters (for `decoder.safetensors`).
fn trained_prefixes(trainable: Trainable) -> &'static [&'static str] {
    match trainable {
        Trainable::Decoder => &["mask_decoder."],
        Trainable::DecoderAndPrompt => &["mask_decoder.", "prompt_encoder."],
        Trainable::All => &[""],
    }
}

/// The loop state, trained weights and optimizer of an earlier invocation of this run.
/// The optimizer is built after the weights are restored: they bring back the parameter
/// ids its state is keyed by.
pub fn load_resume(
    dirs: &RunDirs,
    model: Sam,
    config: &TrainConfig,
    base_sha256: &str,
) -> Result<(Sam, ModuleOptimizer, TrainState)> {
    let base_checkpoint = &config.model.checkpoint;
    let state_path = dirs.state_path();
    let state: TrainState = serde_json::from_slice(
        &std::fs::read(&state_path).with_context(|| format!("reading {}", state_path.display()))?,
    )
    .with_context(|| format!("{}: invalid resume state", state_path.display()))?;
    if state.base_checkpoint_sha256 != base_sha256 {
        bail!(
            "{} changed since the run started (its hash differs): cannot resume",
            base_checkpoint.display()
        );
    }
    let weights = dirs.resume.join("model.bpk");
    let record =
        ModuleRecord::load(&weights).with_context(|| format!("reading {}", weights.display()))?;
    let model = model
        .try_load_record(record.allow_partial(true))
        .map_err(|e| err!("restoring the model from {}: {e:?}", dirs.resume.display()))?;
    let optim = adamw(&model, &config.train)
        .load(dirs.resume.join("optim.bpk"))
        .map_err(|e| {
            err!(
                "restoring the optimizer from {}: {e:?}",
                dirs.resume.display()
            )
        })?;
    Ok((model, optim, state))
}

/// Trained weights (with their parameter ids), optimizer and loop state for `--resume`.
pub fn save_resume(
    model: &Sam,
    optim: &ModuleOptimizer,
    state: &TrainState,
    dir: &Path,
    trainable: Trainable,
) -> Result<()> {
    let save = |name: &str, write: &dyn Fn(&Path) -> Result<()>| -> Result<()> {
        let path = dir.join(name);
        let tmp = temp_path(&path);
        write(&tmp)?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    };
    save("model.bpk", &|p| {
        model
            .clone()
            .into_record_group(trainable_group(model, trainable))
            .save(p)
            .map_err(|e| err!("writing {}: {e:?}", p.display()))
    })?;
    save("optim.bpk", &|p| {
        optim
            .save(p)
            .map_err(|e| err!("writing {}: {e:?}", p.display()))
    })?;
    write_bytes_atomic(
        &dir.join("state.json"),
        serde_json::to_string_pretty(state)?.as_bytes(),
    )
}

/// Checkpoints at the end of an epoch: `last`, `best` when improved, `decoder`, metadata.
pub fn save_epoch(
    model: &Sam,
    architecture: &Architecture,
    config: &TrainConfig,
    state: &TrainState,
    dir: &Path,
    improved: bool,
) -> Result<()> {
    let mut meta = BTreeMap::new();
    meta.insert("samtune.epoch".to_string(), state.epoch.to_string());
    meta.insert(
        "samtune.base_checkpoint".to_string(),
        config.model.checkpoint.display().to_string(),
    );
    let last = dir.join("last.safetensors");
    save_checkpoint(model, architecture, &last, &meta, &|_| true)?;
    if improved {
        let best = dir.join("best.safetensors");
        let tmp = temp_path(&best);
        std::fs::copy(&last, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &best).with_context(|| format!("writing {}", best.display()))?;
    }
    let prefixes = trained_prefixes(config.model.trainable);
    save_checkpoint(
        model,
        architecture,
        &dir.join("decoder.safetensors"),
        &meta,
        &|k| prefixes.iter().any(|p| k.starts_with(p)),
    )?;
    let metadata = serde_json::json!({
        "base_checkpoint": config.model.checkpoint.display().to_string(),
        "base_checkpoint_sha256": state.base_checkpoint_sha256,
        "variant": architecture.describe(),
        "model_config": architecture,
        "train_config": config,
        "epoch": state.epoch,
        "best_epoch": state.best_epoch,
        "best_val_miou": state.best_miou,
        "zero_shot_val": state.zero_shot,
        "history": state.history,
    });
    write_bytes_atomic(
        &dir.join("metadata.json"),
        serde_json::to_string_pretty(&metadata)?.as_bytes(),
    )
}
