//! The embedding cache: with a frozen image encoder each image is encoded once, for
//! `train`, `eval` and `embed` alike. Entries are safetensors files keyed by the image's
//! content hash, under a folder keyed by the checkpoint's content hash and the
//! preprocessing, so a change of any of them is a miss.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::image::{load_rgb, IntensityScaling};
use super::{tensor_values, EncodedImage, Predictor};
use crate::error::{bail, Context, Result};
use crate::fsutil::{file_sha256, hex};
use crate::model::{Architecture, Sam};
use crate::weights::{write_safetensors, RawTensor};

/// `[cache]` of a training config.
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

/// Encodes the image at `path` (through the cache when given).
pub fn encode_image(
    model: &Sam,
    path: &Path,
    cache: Option<&EmbeddingCache>,
    intensity: IntensityScaling,
    device: &Device,
) -> Result<EncodedImage> {
    let encode = || -> Result<EncodedImage> {
        let image = load_rgb(path, intensity)?;
        Ok(Predictor::new(model).encode(&image))
    };
    match cache {
        Some(cache) => cache.get_or_encode(path, device, encode),
        None => encode(),
    }
}

/// Bumped whenever preprocessing or the encoder's numerics change.
const CACHE_FORMAT: &str = "samtune-embedding-v1";

pub struct EmbeddingCache {
    dir: PathBuf,
    hits: AtomicUsize,
    misses: AtomicUsize,
}

impl EmbeddingCache {
    /// The cache for `checkpoint` (hashed) with `config` and `scaling` under `root`.
    pub fn open(
        root: &Path,
        checkpoint: &Path,
        architecture: &Architecture,
        scaling: IntensityScaling,
    ) -> Result<Self> {
        let weights = file_sha256(checkpoint)?;
        let preprocessing = format!(
            "{CACHE_FORMAT};img_size={};mean={:?};std={:?};resize=pillow-bilinear;intensity={}",
            architecture.image_encoder.img_size,
            architecture.pixel_mean,
            architecture.pixel_std,
            serde_json::to_string(&scaling)?
        );
        let key = format!(
            "{}-{}",
            &weights[..16],
            &hex(&Sha256::digest(preprocessing.as_bytes()))[..8]
        );
        let dir = root.join(key);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating cache folder {}", dir.display()))?;
        let manifest = serde_json::json!({
            "checkpoint": checkpoint.display().to_string(),
            "checkpoint_sha256": weights,
            "preprocessing": preprocessing,
        });
        crate::fsutil::write_bytes_atomic(
            &dir.join("manifest.json"),
            serde_json::to_string_pretty(&manifest)?.as_bytes(),
        )?;
        Ok(Self {
            dir,
            hits: AtomicUsize::new(0),
            misses: AtomicUsize::new(0),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `(hits, misses)` so far.
    pub fn stats(&self) -> (usize, usize) {
        (
            self.hits.load(Ordering::Relaxed),
            self.misses.load(Ordering::Relaxed),
        )
    }

    /// The entry path of an image (by content).
    pub fn entry_path(&self, image: &Path) -> Result<PathBuf> {
        Ok(self
            .dir
            .join(format!("{}.safetensors", &file_sha256(image)?[..32])))
    }

    /// The cached embedding of `image`, or `encode()`'s result, stored for next time.
    pub fn get_or_encode(
        &self,
        image: &Path,
        device: &Device,
        encode: impl FnOnce() -> Result<EncodedImage>,
    ) -> Result<EncodedImage> {
        let entry = self.entry_path(image)?;
        if entry.is_file() {
            match read_entry(&entry, device) {
                Ok(encoded) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(encoded);
                }
                // a damaged entry is re-computed, not fatal
                Err(err) => eprintln!(
                    "warning: re-encoding {}: cache entry {}: {err:#}",
                    image.display(),
                    entry.display()
                ),
            }
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let encoded = encode()?;
        write_entry(&entry, &encoded)?;
        Ok(encoded)
    }
}

fn write_entry(path: &Path, encoded: &EncodedImage) -> Result<()> {
    let [_, c, h, w] = encoded.embedding.dims();
    let values = tensor_values(encoded.embedding.clone())?;
    let mut metadata = BTreeMap::new();
    metadata.insert(
        "original_size".into(),
        serde_json::to_string(&encoded.original_size)?,
    );
    metadata.insert(
        "input_size".into(),
        serde_json::to_string(&encoded.input_size)?,
    );
    write_safetensors(
        path,
        &[RawTensor::f32("embedding", vec![c, h, w], &values)],
        metadata,
    )
}

fn read_entry(path: &Path, device: &Device) -> Result<EncodedImage> {
    let bytes = std::fs::read(path)?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)?;
    let meta = header.metadata().clone().unwrap_or_default();
    let size = |key: &str| -> Result<[usize; 2]> {
        let text = meta.get(key).with_context(|| format!("missing {key}"))?;
        Ok(serde_json::from_str(text)?)
    };
    let tensors = safetensors::SafeTensors::deserialize(&bytes)?;
    let view = tensors.tensor("embedding")?;
    let shape = view.shape().to_vec();
    if shape.len() != 3 || view.dtype() != safetensors::Dtype::F32 {
        bail!("unexpected embedding {:?} {:?}", view.dtype(), shape);
    }
    let values: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(EncodedImage {
        embedding: Tensor::from_data(
            TensorData::new(values, [1, shape[0], shape[1], shape[2]]),
            device,
        ),
        original_size: size("original_size")?,
        input_size: size("input_size")?,
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    fn encoded(value: f32) -> EncodedImage {
        EncodedImage {
            embedding: Tensor::from_data(
                TensorData::new(vec![value; 8], [1, 2, 2, 2]),
                &Device::default(),
            ),
            original_size: [30, 40],
            input_size: [48, 64],
        }
    }

    #[test]
    fn hits_misses_and_invalidation() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = dir.path().join("model.pth");
        std::fs::write(&checkpoint, b"weights v1").unwrap();
        let image = dir.path().join("a.png");
        std::fs::write(&image, b"pixels v1").unwrap();
        let config = crate::model::SamVariant::VitB.architecture();
        let device = Device::default();
        let encodes = Cell::new(0);
        let get = |cache: &EmbeddingCache, value: f32| {
            cache
                .get_or_encode(&image, &device, || {
                    encodes.set(encodes.get() + 1);
                    Ok(encoded(value))
                })
                .unwrap()
        };
        let cache =
            EmbeddingCache::open(dir.path(), &checkpoint, &config, IntensityScaling::Auto).unwrap();
        get(&cache, 1.0);
        let again = get(&cache, 2.0);
        assert_eq!(
            (encodes.get(), cache.stats()),
            (1, (1, 1)),
            "second lookup is a hit"
        );
        assert_eq!(again.original_size, [30, 40]);
        assert_eq!(again.input_size, [48, 64]);
        assert_eq!(
            again
                .embedding
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap(),
            vec![1.0; 8]
        );

        std::fs::write(&image, b"pixels v2").unwrap();
        get(&cache, 3.0);
        assert_eq!(encodes.get(), 2, "changed image content is a miss");

        let other =
            EmbeddingCache::open(dir.path(), &checkpoint, &config, IntensityScaling::Full).unwrap();
        get(&other, 4.0);
        assert_eq!(encodes.get(), 3, "other preprocessing is a miss");

        std::fs::write(&checkpoint, b"weights v2").unwrap();
        let retrained =
            EmbeddingCache::open(dir.path(), &checkpoint, &config, IntensityScaling::Auto).unwrap();
        assert_ne!(retrained.dir(), cache.dir());
        get(&retrained, 5.0);
        assert_eq!(encodes.get(), 4, "other weights are a miss");

        // a damaged entry is re-computed, not an error
        std::fs::write(retrained.entry_path(&image).unwrap(), b"garbage").unwrap();
        get(&retrained, 6.0);
        assert_eq!(encodes.get(), 5);
    }
}
