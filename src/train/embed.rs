//! Filling a run's embedding cache ahead of training (`samtune embed`): every train,
//! validation and test image of a config encoded once, at the run's input size, in shards
//! that several processes or machines can share.

use std::path::PathBuf;

use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};

use super::config::TrainConfig;
use crate::data::dataset::Sample;
use crate::error::Result;
use crate::fsutil::file_sha256;
use crate::predict::{encode_image, EmbeddingCache};
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
    let bar = if progress {
        ProgressBar::new(mine.len() as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("embed {bar:30} {pos}/{len} images {per_sec} ETA {eta}")
            .expect("a valid template"),
    );
    for sample in &mine {
        encode_image(
            &model,
            &sample.image,
            Some(&cache),
            config.data.sample_intensity(),
            device,
        )?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let (cached, encoded) = cache.stats();
    Ok(EmbedOutcome {
        dir: cache.dir().to_path_buf(),
        encoded,
        cached,
    })
}
