//! Filling a run's embedding cache ahead of training (`samtune embed`): every train,
//! validation and test image of a config encoded once, at the run's input size,
//! `cache.encode_batch` images per encoder pass, in shards that several processes or
//! machines can share.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use indicatif::ProgressBar;

use super::config::TrainConfig;
use crate::data::dataset::Sample;
use crate::error::Result;
use crate::fsutil::file_sha256;
use crate::predict::image::{load_rgb, IntensityScaling};
use crate::predict::{EmbeddingCache, Predictor};
use crate::progress::count_bar;
use crate::weights::load_sam_at;

/// What filling the cache did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedOutcome {
    /// The cache folder.
    pub dir: PathBuf,
    /// Images encoded now, and found already cached.
    pub encoded: usize,
    pub cached: usize,
}

/// Encodes into the cache of `config` every image of its data whose index `i` (train,
/// then val, then test) has `i % shards == shard`, with a progress bar when `progress`.
pub fn fill_cache(
    config: &TrainConfig,
    device: &Device,
    (shard, shards): (usize, usize),
    progress: bool,
) -> Result<EmbedOutcome> {
    // at the run's input size: the cache key holds the architecture, img_size included
    let (model, architecture) = load_sam_at(
        &config.model.checkpoint,
        config.model.variant,
        config.model.img_size,
        device,
    )?;
    let model = model.with_encoder_precision(config.model.encoder_precision, device)?;
    let cache = EmbeddingCache::open(
        &config.cache,
        &config.model.checkpoint,
        &file_sha256(&config.model.checkpoint)?,
        &architecture,
        config.data.sample_intensity(),
        config.model.encoder_precision,
    )?;
    let split = config.data.open()?.split;
    let mine: Vec<&Sample> = split
        .train
        .iter()
        .chain(&split.val)
        .chain(&split.test)
        .enumerate()
        .filter(|(i, _)| i % shards == shard)
        .map(|(_, sample)| sample)
        .collect();
    let images: Vec<&Path> = mine.iter().map(|s| s.image.as_path()).collect();
    let bar = count_bar("embed", images.len(), "images", progress);
    let encoded = encode_missing(
        &Predictor::new(&model),
        &cache,
        &images,
        config.cache.encode_batch,
        config.data.sample_intensity(),
        &bar,
    )?;
    bar.finish_and_clear();
    Ok(EmbedOutcome {
        dir: cache.dir().to_path_buf(),
        encoded,
        cached: images.len() - encoded,
    })
}

/// Encodes into `cache` each of `images` it does not hold, `batch` per encoder pass, and
/// returns how many it encoded; the next batch's files are decoded on a thread of their
/// own meanwhile, so that the device does not wait for them.
pub(super) fn encode_missing(
    predictor: &Predictor,
    cache: &EmbeddingCache,
    images: &[&Path],
    batch: usize,
    intensity: IntensityScaling,
    bar: &ProgressBar,
) -> Result<usize> {
    let mut misses: Vec<&Path> = Vec::new();
    for &image in images {
        if cache.holds(image)? {
            bar.inc(1);
        } else {
            misses.push(image);
        }
    }
    let misses = &misses;
    std::thread::scope(|scope| {
        let (decoded, batches) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            for paths in misses.chunks(batch.max(1)) {
                let pixels: Result<Vec<_>> =
                    paths.iter().map(|path| load_rgb(path, intensity)).collect();
                if decoded.send((paths, pixels)).is_err() {
                    break;
                }
            }
        });
        for (paths, pixels) in batches {
            for (path, encoded) in paths.iter().zip(predictor.encode_batch(&pixels?)) {
                cache.store(path, &encoded)?;
                bar.inc(1);
            }
        }
        Ok(misses.len())
    })
}
