//! What `samtune serve` holds between requests: the served images, the checkpoints, the
//! images encoded lately, the predictions a page may build on or accept, the running
//! auto-annotation jobs, the annotation store and the runs to review. Requests only
//! read it or change it under its locks; the model work happens outside them.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;

use super::review::ReviewRun;
use super::store::AnnotationStore;
use super::ServeConfig;
use crate::annotate::{AmgSettings, GeneratedMask, MaskGenerator};
use crate::data::dataset::list_images;
use crate::data::Rle;
use crate::error::{bail, err, Result};
use crate::fsutil::file_sha256;
use crate::model::Sam;
use crate::predict::image::{load_rgb, IntensityScaling};
use crate::predict::{encode_image, EmbeddingCache, EncodedImage, Predictor};
use crate::predict::{tensor_values, PromptBatch};
use crate::weights::{load_sam, VariantChoice};

/// Images kept encoded in memory (the embedding cache holds the rest on disk).
const ENCODED_IN_MEMORY: usize = 8;
/// Predictions kept for building on (mask input) or accepting.
const PREDICTIONS_KEPT: usize = 32;
/// Auto-annotation jobs kept with their proposals.
const JOBS_KEPT: usize = 8;
/// Auto-annotation jobs running at once.
pub const JOBS_RUNNING: usize = 2;

/// Why a job was not started.
#[derive(Debug)]
pub struct JobRefused(pub String);

/// One served checkpoint.
pub struct Checkpoint {
    pub name: String,
    pub path: PathBuf,
    pub model: Sam,
    /// Its embeddings on disk, shared with training runs of the same checkpoint.
    cache: Option<EmbeddingCache>,
}

/// A served image.
pub struct ServedImage {
    /// Its file name: the COCO `file_name` its objects are saved under.
    pub name: String,
    pub path: PathBuf,
}

/// One prompt set's result, kept so that the page can refine it or accept a candidate.
pub struct StoredPrediction {
    pub id: u64,
    pub image: usize,
    pub checkpoint: usize,
    /// Each candidate's full-size mask, run-length encoded (a few kB where the mask
    /// itself would be megabytes), and its low-resolution logits (`low_res_side`
    /// squared: the mask input a next prompt builds on).
    pub masks: Vec<Rle>,
    pub low_res: Vec<Vec<f32>>,
    pub low_res_side: usize,
    pub ious: Vec<f32>,
}

/// An auto-annotation run on one image.
pub struct Job {
    pub image: usize,
    pub done: usize,
    pub total: usize,
    pub outcome: Option<std::result::Result<Vec<GeneratedMask>, String>>,
    /// The proposals saved already (each is saved once).
    pub accepted: Vec<usize>,
}

impl Job {
    fn running(&self) -> bool {
        self.outcome.is_none()
    }
}

/// An embedding's `(image, checkpoint)`.
type EncodedKey = (usize, usize);

/// Everything the server holds.
pub struct ServerState {
    pub images: Vec<ServedImage>,
    pub checkpoints: Vec<Checkpoint>,
    pub reviews: Vec<ReviewRun>,
    pub amg: AmgSettings,
    pub intensity: IntensityScaling,
    pub device: Device,
    /// `(image, checkpoint)` -> its embedding, oldest first.
    encoded: Mutex<VecDeque<(EncodedKey, Arc<EncodedImage>)>>,
    predictions: Mutex<VecDeque<Arc<StoredPrediction>>>,
    /// Predictions saved already (each is saved once: a repeated accept is refused).
    accepted: Mutex<VecDeque<u64>>,
    jobs: Mutex<VecDeque<(u64, Arc<Mutex<Job>>)>>,
    /// Saves are serialised by this lock (one writer of the annotation file at a time).
    store: Mutex<AnnotationStore>,
    next_id: AtomicU64,
}

/// A lock whose holder panicked still guards consistent data here (every change is made
/// whole before it is stored), so it is used as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ServerState {
    /// Lists the images, loads every checkpoint, opens the annotation file and indexes
    /// the review runs: a bad path or file fails here, before anything is served.
    pub fn open(config: &ServeConfig, device: Device) -> Result<Self> {
        let images = list_images(&config.images)?
            .into_iter()
            .map(|path| ServedImage {
                name: file_name(&path),
                path,
            })
            .collect();
        if config.checkpoints.is_empty() {
            bail!("serve needs at least one --checkpoint");
        }
        let mut checkpoints = Vec::new();
        for path in &config.checkpoints {
            let (model, architecture) = load_sam(path, VariantChoice::Auto, &device)?;
            let model = model.with_encoder_precision(config.encoder_precision, &device)?;
            let cache = config
                .cache
                .as_ref()
                .map(|cache| {
                    EmbeddingCache::open(
                        cache,
                        path,
                        &file_sha256(path)?,
                        &architecture,
                        config.intensity,
                        config.encoder_precision,
                    )
                })
                .transpose()?;
            checkpoints.push(Checkpoint {
                name: file_name(path),
                path: path.clone(),
                model,
                cache,
            });
        }
        let reviews = config
            .reviews
            .iter()
            .map(|dir| ReviewRun::open(dir))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            images,
            checkpoints,
            reviews,
            amg: config.amg.clone(),
            intensity: config.intensity,
            device,
            encoded: Mutex::new(VecDeque::new()),
            predictions: Mutex::new(VecDeque::new()),
            accepted: Mutex::new(VecDeque::new()),
            jobs: Mutex::new(VecDeque::new()),
            store: Mutex::new(AnnotationStore::open(&config.annotations)?),
            next_id: AtomicU64::new(1),
        })
    }

    pub fn store(&self) -> MutexGuard<'_, AnnotationStore> {
        lock(&self.store)
    }

    pub fn image(&self, index: usize) -> Result<&ServedImage> {
        self.images
            .get(index)
            .ok_or_else(|| err!("no image {index}: {} images are served", self.images.len()))
    }

    pub fn checkpoint(&self, index: usize) -> Result<&Checkpoint> {
        self.checkpoints.get(index).ok_or_else(|| {
            err!(
                "no checkpoint {index}: {} are served",
                self.checkpoints.len()
            )
        })
    }

    pub fn load_image(&self, index: usize) -> Result<RgbImage> {
        load_rgb(&self.image(index)?.path, self.intensity)
    }

    /// Whether `image` is encoded for `checkpoint` and kept in memory.
    pub fn is_encoded(&self, image: usize, checkpoint: usize) -> bool {
        lock(&self.encoded)
            .iter()
            .any(|(key, _)| *key == (image, checkpoint))
    }

    /// `image` encoded by `checkpoint`: from memory, the embedding cache, or the encoder.
    pub fn encoded(&self, image: usize, checkpoint: usize) -> Result<Arc<EncodedImage>> {
        let key = (image, checkpoint);
        if let Some(found) = lock(&self.encoded).iter().find(|(k, _)| *k == key) {
            return Ok(found.1.clone());
        }
        let served = self.checkpoint(checkpoint)?;
        let encoded = Arc::new(encode_image(
            &served.model,
            &self.image(image)?.path,
            served.cache.as_ref(),
            self.intensity,
            &self.device,
        )?);
        let mut kept = lock(&self.encoded);
        kept.retain(|(k, _)| *k != key);
        kept.push_back((key, encoded.clone()));
        while kept.len() > ENCODED_IN_MEMORY {
            kept.pop_front();
        }
        Ok(encoded)
    }

    /// Predicts `prompts` (one prompt set) on `image`; `previous` is the low-res logits
    /// of the mask to refine (SAM's mask input) and their side, when there is one.
    pub fn predict(
        &self,
        image: usize,
        checkpoint: usize,
        mut prompts: PromptBatch,
        previous: Option<(&[f32], usize)>,
        multimask: bool,
    ) -> Result<Arc<StoredPrediction>> {
        let encoded = self.encoded(image, checkpoint)?;
        let model = &self.checkpoint(checkpoint)?.model;
        if let Some((logits, side)) = previous {
            prompts.mask_input = Some(Tensor::from_data(
                TensorData::new(logits.to_vec(), [1, 1, side, side]),
                &self.device,
            ));
        }
        let prediction = Predictor::new(model).predict(&encoded, &prompts, multimask)?;
        let [_, m, side, _] = prediction.low_res_logits.dims();
        let low_res = tensor_values(prediction.low_res_logits.clone())?;
        let planes = prediction.planes()?;
        let stored = Arc::new(StoredPrediction {
            id: self.new_id(),
            image,
            checkpoint,
            masks: (0..m).map(|k| Rle::encode(&planes.binary(0, k))).collect(),
            low_res: low_res.chunks(side * side).map(<[f32]>::to_vec).collect(),
            low_res_side: side,
            ious: (0..m).map(|k| planes.predicted_iou(0, k)).collect(),
        });
        let mut kept = lock(&self.predictions);
        kept.push_back(stored.clone());
        while kept.len() > PREDICTIONS_KEPT {
            kept.pop_front();
        }
        Ok(stored)
    }

    /// Marks prediction `id` as saved; false when it was already.
    pub fn mark_accepted(&self, id: u64) -> bool {
        let mut accepted = lock(&self.accepted);
        if accepted.contains(&id) {
            return false;
        }
        accepted.push_back(id);
        while accepted.len() > 4 * PREDICTIONS_KEPT {
            accepted.pop_front();
        }
        true
    }

    /// Undoes [`Self::mark_accepted`] (the save failed).
    pub fn unmark_accepted(&self, id: u64) {
        lock(&self.accepted).retain(|&a| a != id);
    }

    /// A kept prediction, `None` when unknown or dropped.
    pub fn prediction(&self, id: u64) -> Option<Arc<StoredPrediction>> {
        lock(&self.predictions).iter().find(|p| p.id == id).cloned()
    }

    /// Starts the automatic mask generator on `image` in a thread of its own; the job's
    /// id (its progress and proposals: [`Self::job`]). Refused while a job runs on the
    /// same image or [`JOBS_RUNNING`] run at all (each keeps the cores busy).
    pub fn start_auto_annotation(
        self: &Arc<Self>,
        image: usize,
        checkpoint: usize,
    ) -> std::result::Result<u64, JobRefused> {
        let job = Arc::new(Mutex::new(Job {
            image,
            done: 0,
            total: 0,
            outcome: None,
            accepted: Vec::new(),
        }));
        let id = self.new_id();
        {
            let mut jobs = lock(&self.jobs);
            if let Some((running, _)) = jobs.iter().find(|(_, j)| {
                let j = lock(j);
                j.running() && j.image == image
            }) {
                return Err(JobRefused(format!(
                    "auto-annotation job {running} is still running on this image"
                )));
            }
            if jobs.iter().filter(|(_, j)| lock(j).running()).count() >= JOBS_RUNNING {
                return Err(JobRefused(format!(
                    "{JOBS_RUNNING} auto-annotation jobs are running: wait for one to finish"
                )));
            }
            jobs.push_back((id, job.clone()));
            // finished jobs make room; running ones are kept until they end
            while jobs.len() > JOBS_KEPT {
                let Some(done) = jobs.iter().position(|(_, j)| !lock(j).running()) else {
                    break;
                };
                jobs.remove(done);
            }
        }
        let state = self.clone();
        std::thread::spawn(move || {
            let run = || {
                state.auto_annotate(image, checkpoint, &|done, total| {
                    let mut job = lock(&job);
                    job.done = done;
                    job.total = total;
                })
            };
            // a job that dies must still say so, or the page would wait for it forever
            let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
                Ok(generated) => generated.map_err(|e| format!("{e:#}")),
                Err(_) => Err("the mask generator stopped unexpectedly".to_string()),
            };
            lock(&job).outcome = Some(outcome);
        });
        Ok(id)
    }

    fn auto_annotate(
        &self,
        image: usize,
        checkpoint: usize,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Vec<GeneratedMask>> {
        let encoded = self.encoded(image, checkpoint)?;
        let picture = self.load_image(image)?;
        let model = &self.checkpoint(checkpoint)?.model;
        let generator = MaskGenerator::new(Predictor::new(model), self.amg.clone())?;
        generator.generate_with(&picture, Some(&encoded), progress)
    }

    /// A job, `None` when unknown or dropped.
    pub fn job(&self, id: u64) -> Option<Arc<Mutex<Job>>> {
        lock(&self.jobs)
            .iter()
            .find(|(k, _)| *k == id)
            .map(|(_, j)| j.clone())
    }

    fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

pub fn lock_job(job: &Mutex<Job>) -> MutexGuard<'_, Job> {
    lock(job)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}
