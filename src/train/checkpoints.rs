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
use crate::error::{bail, err, Context, Error, Result};
use crate::eval::metrics::Summary;
use crate::fsutil::{temp_path, write_bytes_atomic};
use crate::model::lora::adapter_group;
use crate::model::{Architecture, Sam};
use crate::weights::adapters::{save_adapters, AdapterSettings};
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
    /// How far the current epoch had gone when the run stopped inside it: `--resume`
    /// continues at the next batch.
    #[serde(default)]
    pub progress: Option<EpochProgress>,
}

/// A part-trained epoch: the batches done and what they added up to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochProgress {
    pub batches: usize,
    /// Loss, focal, dice and IoU terms summed over the batches.
    pub sums: [f64; 4],
    pub lr: f64,
    pub seconds: f64,
    pub data_wait_seconds: f64,
}

/// The folders of a run: `<runs_dir>/<name>/`, its checkpoints and its resume state.
#[derive(Debug, Clone)]
pub struct RunDirs {
    pub run: PathBuf,
    pub checkpoints: PathBuf,
    /// Where runs before `resume.json` kept their resume state.
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

    /// `checkpoints/resume.json`: the committed resume state (see [`save_resume`]).
    pub fn manifest(&self) -> PathBuf {
        self.checkpoints.join("resume.json")
    }

    /// Whether the run has a resume state (this layout, or `resume/` of earlier runs).
    pub fn has_resume_state(&self) -> bool {
        self.manifest().is_file() || self.resume.join("state.json").is_file()
    }

    pub fn report(&self) -> PathBuf {
        self.run.join("report")
    }
}

/// The trained parts of the model for a [`Trainable`] setting (a semantic head always
/// trains in full: it is new).
pub fn trainable_group(model: &Sam, trainable: Trainable) -> ParamGroup {
    let decoder = ParamGroup::ids_from_module(model.mask_decoder.clone());
    let adapters = match model.mask_decoder.semantic.clone() {
        Some(head) => adapter_group().fuse(&ParamGroup::ids_from_module(head)),
        None => adapter_group(),
    };
    match trainable {
        Trainable::Decoder => decoder,
        Trainable::DecoderAndPrompt => {
            decoder.fuse(&ParamGroup::ids_from_module(model.prompt_encoder.clone()))
        }
        Trainable::All => ParamGroup::ids_from_module(model.clone()),
        Trainable::LoraEncoder => adapters.fuse(&decoder),
        Trainable::LoraDecoder | Trainable::LoraAll => adapters,
    }
}

/// Official key prefixes of the parameters trained in full (for `decoder.safetensors`;
/// adapters go to `adapters.safetensors`).
fn trained_prefixes(trainable: Trainable) -> &'static [&'static str] {
    match trainable {
        Trainable::Decoder | Trainable::LoraEncoder => &["mask_decoder."],
        Trainable::DecoderAndPrompt => &["mask_decoder.", "prompt_encoder."],
        Trainable::All => &[""],
        Trainable::LoraDecoder | Trainable::LoraAll => &[],
    }
}

/// `checkpoints/resume.json`: the folder that holds the committed resume state, and the
/// sizes of its files. The state is written to a fresh folder and committed by the atomic
/// replacement of this file, so a kill at any moment leaves the old state or the new one,
/// never a mix of the two.
#[derive(Debug, Serialize, Deserialize)]
struct ResumeManifest {
    folder: String,
    files: BTreeMap<String, u64>,
}

const RESUME_FILES: [&str; 3] = ["model.bpk", "optim.bpk", "state.json"];

/// A run's committed resume state, found and checked, not yet loaded.
pub struct ResumePoint {
    folder: PathBuf,
    pub state: TrainState,
}

impl ResumePoint {
    /// The run's resume state: the folder `resume.json` names (or, for runs written
    /// before it, `resume/`), with every file of the size it was written at.
    pub fn find(dirs: &RunDirs) -> Result<Self> {
        let folder = match read_manifest(dirs)? {
            Some(manifest) => {
                let folder = dirs.checkpoints.join(&manifest.folder);
                for (name, &size) in &manifest.files {
                    let path = folder.join(name);
                    let actual = std::fs::metadata(&path)
                        .with_context(|| format!("the resume state lacks {}", path.display()))?
                        .len();
                    if actual != size {
                        return Err(Error::file(
                            &path,
                            format!("is {actual} bytes, the resume state was written with {size}"),
                        ));
                    }
                }
                folder
            }
            None if dirs.resume.join("state.json").is_file() => dirs.resume.clone(),
            None => bail!(
                "{} holds no run to resume: start it without --resume",
                dirs.run.display()
            ),
        };
        let state_path = folder.join("state.json");
        let state: TrainState = serde_json::from_slice(
            &std::fs::read(&state_path)
                .with_context(|| format!("reading {}", state_path.display()))?,
        )
        .with_context(|| format!("{}: invalid resume state", state_path.display()))?;
        Ok(Self { folder, state })
    }

    /// Refuses a base checkpoint other than the one the run started from.
    pub fn check_base(&self, base_sha256: &str, base_checkpoint: &Path) -> Result<()> {
        if self.state.base_checkpoint_sha256 != base_sha256 {
            bail!(
                "{} changed since the run started (its hash differs): cannot resume",
                base_checkpoint.display()
            );
        }
        Ok(())
    }

    /// The trained weights, the optimizer and the loop state. The optimizer is built after
    /// the weights are restored: they bring back the parameter ids its state is keyed by.
    pub fn restore(
        self,
        model: Sam,
        config: &TrainConfig,
    ) -> Result<(Sam, ModuleOptimizer, TrainState)> {
        let weights = self.folder.join("model.bpk");
        let record = ModuleRecord::load(&weights)
            .with_context(|| format!("reading {}", weights.display()))?;
        let model = model
            .try_load_record(record.allow_partial(true))
            .map_err(|e| err!("restoring the model from {}: {e:?}", weights.display()))?;
        let optimizer = self.folder.join("optim.bpk");
        let optim = adamw(&model, &config.train).load(&optimizer).map_err(|e| {
            err!(
                "restoring the optimizer from {}: {e:?}",
                optimizer.display()
            )
        })?;
        Ok((model, optim, self.state))
    }
}

fn read_manifest(dirs: &RunDirs) -> Result<Option<ResumeManifest>> {
    let path = dirs.manifest();
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
            format!("{}: invalid resume manifest", path.display())
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::file(&path, e)),
    }
}

/// Trained weights (with their parameter ids), optimizer and loop state for `--resume`,
/// written to a fresh folder and committed as one unit (see [`ResumeManifest`]); the
/// folder it replaces, and any left by a killed save, are removed afterwards.
pub fn save_resume(
    model: &Sam,
    optim: &ModuleOptimizer,
    state: &TrainState,
    dirs: &RunDirs,
    trainable: Trainable,
) -> Result<()> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("resume-{:08}-{nanos}", state.step);
    let folder = dirs.checkpoints.join(&name);
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    model
        .clone()
        .into_record_group(trainable_group(model, trainable))
        .save(folder.join("model.bpk"))
        .map_err(|e| err!("writing {}: {e:?}", folder.join("model.bpk").display()))?;
    optim
        .save(folder.join("optim.bpk"))
        .map_err(|e| err!("writing {}: {e:?}", folder.join("optim.bpk").display()))?;
    write_bytes_atomic(
        &folder.join("state.json"),
        serde_json::to_string_pretty(state)?.as_bytes(),
    )?;
    let mut files = BTreeMap::new();
    for file in RESUME_FILES {
        let path = folder.join(file);
        sync_file(&path)?;
        files.insert(file.to_string(), std::fs::metadata(&path)?.len());
    }
    sync_dir(&folder)?;
    let manifest = ResumeManifest {
        folder: name.clone(),
        files,
    };
    write_bytes_atomic(
        &dirs.manifest(),
        serde_json::to_string_pretty(&manifest)?.as_bytes(),
    )?;
    sync_dir(&dirs.checkpoints)?;
    remove_other_resume_folders(dirs, &name);
    Ok(())
}

/// Every resume folder but `keep` (the replaced state, and any a killed save left).
fn remove_other_resume_folders(dirs: &RunDirs, keep: &str) {
    let Ok(entries) = std::fs::read_dir(&dirs.checkpoints) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name != keep
            && (name.starts_with("resume-") || name == "resume")
            && entry.path().is_dir()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn sync_file(path: &Path) -> Result<()> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", path.display()))
}

/// Makes a folder's new entries durable (on Unix; elsewhere a no-op).
fn sync_dir(path: &Path) -> Result<()> {
    #[cfg(unix)]
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", path.display()))?;
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Checkpoints at the end of an epoch: `last` (adapters merged), `best` when improved,
/// `decoder` (what trains in full), `adapters` (LoRA factors alone), metadata. `model`
/// is the model without autodiff (adapters attached), `merged` it with them merged.
pub fn save_epoch(
    model: &Sam,
    merged: &Sam,
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
    if let Some(classes) = config.classes()? {
        meta.extend([classes.metadata_entry()]);
    }
    let last = dir.join("last.safetensors");
    save_checkpoint(merged, architecture, &last, &meta, &|_| true)?;
    if improved {
        let best = dir.join("best.safetensors");
        let tmp = temp_path(&best);
        std::fs::copy(&last, &tmp).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &best).with_context(|| format!("writing {}", best.display()))?;
    }
    let trainable = config.model.trainable;
    let prefixes = trained_prefixes(trainable);
    if !prefixes.is_empty() {
        save_checkpoint(
            merged,
            architecture,
            &dir.join("decoder.safetensors"),
            &meta,
            &|k| prefixes.iter().any(|p| k.starts_with(p)),
        )?;
    }
    if !trainable.lora_places().is_empty() {
        let settings = AdapterSettings {
            rank: config.lora.rank,
            alpha: config.lora.alpha,
            patterns: config.lora.patterns(trainable.lora_places()),
            img_size: architecture.image_encoder.img_size,
        };
        save_adapters(
            model,
            &dir.join("adapters.safetensors"),
            &settings,
            &state.base_checkpoint_sha256,
        )?;
    }
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
