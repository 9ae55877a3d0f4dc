//! The embedding cache: with a frozen image encoder each image is encoded once, for
//! `train`, `eval` and `embed` alike. Entries are safetensors files keyed by the image's
//! content hash, under a folder keyed by the checkpoint's content hash and the
//! preprocessing, so a change of any of them is a miss.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::image::{load_rgb, IntensityScaling};
use super::{tensor_values, EncodedImage, Predictor};
use crate::error::{bail, err, Context, Result};
use crate::fsutil::{file_sha256, hex, FileStamp};
use crate::model::{Architecture, Precision, Sam};
use crate::weights::{write_safetensors, RawTensor};

/// `[cache]` of a training config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Reuse image embeddings across epochs and runs (frozen encoder only).
    pub enabled: bool,
    /// Shared by runs: entries are keyed by image, checkpoint and preprocessing.
    pub dir: PathBuf,
    /// How entries are stored: `f32` (exact), or `f16` / `bf16` (half the disk and read
    /// bandwidth; embeddings are rounded once, when written).
    pub dtype: CacheDtype,
    /// Images `samtune embed` (and `train`, for the images its cache lacks before its
    /// first step) runs through the encoder together: on a GPU, one batch
    /// launches each kernel once for all of them; on the CPU, whose kernels already keep
    /// every core busy on one image, 1.
    pub encode_batch: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            dir: "cache/embeddings".into(),
            dtype: CacheDtype::F32,
            encode_batch: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheDtype {
    #[default]
    F32,
    F16,
    Bf16,
}

impl CacheDtype {
    fn safetensors(self) -> safetensors::Dtype {
        match self {
            CacheDtype::F32 => safetensors::Dtype::F32,
            CacheDtype::F16 => safetensors::Dtype::F16,
            CacheDtype::Bf16 => safetensors::Dtype::BF16,
        }
    }

    /// `values` as little-endian bytes of this type.
    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            CacheDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            CacheDtype::F16 => values
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            CacheDtype::Bf16 => values
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
        }
    }
}

impl CacheDtype {
    /// `values` as an entry of this type reads them back.
    pub fn round_trip(self, values: &[f32]) -> Result<Vec<f32>> {
        decode_floats(self.safetensors(), &self.encode(values))
    }
}

/// Decodes little-endian `bytes` of a safetensors float type to f32.
fn decode_floats(dtype: safetensors::Dtype, bytes: &[u8]) -> Result<Vec<f32>> {
    Ok(match dtype {
        safetensors::Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        safetensors::Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        safetensors::Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => bail!("unexpected embedding type {other:?}"),
    })
}

/// Encodes the image at `path` (through the cache when given).
pub fn encode_image(
    model: &Sam,
    path: &Path,
    cache: Option<&EmbeddingCache>,
    intensity: IntensityScaling,
    device: &Device,
) -> Result<EncodedImage> {
    let mut encoded = encode_images(model, &[path], cache, intensity, device)?;
    Ok(encoded.pop().expect("one image in, one out"))
}

/// Encodes the images at `paths` in one encoder pass (through the cache when given: only
/// the images it lacks are encoded, and then stored), in the order of `paths`.
pub fn encode_images(
    model: &Sam,
    paths: &[&Path],
    cache: Option<&EmbeddingCache>,
    intensity: IntensityScaling,
    device: &Device,
) -> Result<Vec<EncodedImage>> {
    let mut found: Vec<Option<EncodedImage>> = match cache {
        Some(cache) => paths
            .iter()
            .map(|path| cache.lookup(path, device))
            .collect::<Result<_>>()?,
        None => paths.iter().map(|_| None).collect(),
    };
    let missing: Vec<usize> = (0..paths.len()).filter(|&i| found[i].is_none()).collect();
    if !missing.is_empty() {
        let images: Vec<RgbImage> = missing
            .iter()
            .map(|&i| load_rgb(paths[i], intensity))
            .collect::<Result<_>>()?;
        for (&i, encoded) in missing
            .iter()
            .zip(Predictor::new(model).encode_batch(&images))
        {
            if let Some(cache) = cache {
                cache.store(paths[i], &encoded)?;
            }
            found[i] = Some(encoded);
        }
    }
    Ok(found.into_iter().flatten().collect())
}

/// Bumped whenever preprocessing or the encoder's numerics change.
const CACHE_FORMAT: &str = "samtune-embedding-v1";

pub struct EmbeddingCache {
    dir: PathBuf,
    dtype: CacheDtype,
    hits: AtomicUsize,
    misses: AtomicUsize,
    /// Each image's content hash, computed once per run (again only when its size or
    /// modification time changes).
    hashes: Mutex<HashMap<PathBuf, (FileStamp, String)>>,
}

impl EmbeddingCache {
    /// The cache for `checkpoint` (whose content hash the caller has) with
    /// `architecture`'s preprocessing and `scaling`, encoded in `precision`, under
    /// `config.dir`.
    pub fn open(
        config: &CacheConfig,
        checkpoint: &Path,
        checkpoint_sha256: &str,
        architecture: &Architecture,
        scaling: IntensityScaling,
        precision: Precision,
    ) -> Result<Self> {
        let mut preprocessing = format!(
            "{CACHE_FORMAT};img_size={};mean={:?};std={:?};resize=pillow-bilinear;intensity={}",
            architecture.image_encoder.img_size,
            architecture.pixel_mean,
            architecture.pixel_std,
            serde_json::to_string(&scaling)?
        );
        if config.dtype != CacheDtype::F32 {
            preprocessing.push_str(&format!(";dtype={:?}", config.dtype));
        }
        // f32 entries keep the keys they had before the encoder had a precision
        if precision != Precision::F32 {
            preprocessing.push_str(&format!(";encoder={precision}"));
        }
        let key = format!(
            "{}-{}",
            &checkpoint_sha256[..16.min(checkpoint_sha256.len())],
            &hex(&Sha256::digest(preprocessing.as_bytes()))[..8]
        );
        let dir = config.dir.join(key);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating cache folder {}", dir.display()))?;
        let manifest = serde_json::json!({
            "checkpoint": checkpoint.display().to_string(),
            "checkpoint_sha256": checkpoint_sha256,
            "preprocessing": preprocessing,
        });
        crate::fsutil::write_bytes_atomic(
            &dir.join("manifest.json"),
            serde_json::to_string_pretty(&manifest)?.as_bytes(),
        )?;
        Ok(Self {
            dir,
            dtype: config.dtype,
            hits: AtomicUsize::new(0),
            misses: AtomicUsize::new(0),
            hashes: Mutex::new(HashMap::new()),
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
            .join(format!("{}.safetensors", &self.content_hash(image)?[..32])))
    }

    fn content_hash(&self, image: &Path) -> Result<String> {
        let stamp = FileStamp::of(image)?;
        let known = self
            .hashes
            .lock()
            .map_err(|_| err!("the embedding cache's hash table was poisoned"))?
            .get(image)
            .filter(|(s, _)| *s == stamp)
            .map(|(_, hash)| hash.clone());
        if let Some(hash) = known {
            return Ok(hash);
        }
        let hash = file_sha256(image)?;
        if let Ok(mut hashes) = self.hashes.lock() {
            hashes.insert(image.to_path_buf(), (stamp, hash.clone()));
        }
        Ok(hash)
    }

    /// Whether the cache has an entry for `image` (without reading it: a damaged entry
    /// is found, and encoded again, by [`Self::lookup`]). Counts neither hit nor miss.
    pub fn holds(&self, image: &Path) -> Result<bool> {
        Ok(self.entry_path(image)?.is_file())
    }

    /// The cached embedding of `image` (a hit), or `None` (a miss, for [`Self::store`]).
    pub fn lookup(&self, image: &Path, device: &Device) -> Result<Option<EncodedImage>> {
        let entry = self.entry_path(image)?;
        if entry.is_file() {
            match read_entry(&entry, device) {
                Ok(encoded) => {
                    self.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(Some(encoded));
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
        Ok(None)
    }

    /// Writes the embedding of `image`, which [`Self::lookup`] missed.
    pub fn store(&self, image: &Path, encoded: &EncodedImage) -> Result<()> {
        write_entry(&self.entry_path(image)?, encoded, self.dtype)
    }
}

fn write_entry(path: &Path, encoded: &EncodedImage, dtype: CacheDtype) -> Result<()> {
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
    let tensor = RawTensor {
        name: "embedding".into(),
        dtype: dtype.safetensors(),
        shape: vec![c, h, w],
        data: dtype.encode(&values),
    };
    write_safetensors(path, &[tensor], metadata)
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
    if shape.len() != 3 {
        bail!("unexpected embedding shape {shape:?}");
    }
    let values = decode_floats(view.dtype(), view.data())?;
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
                &Device::flex(),
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
        let architecture = crate::model::SamVariant::VitB.architecture();
        let device = Device::flex();
        let encodes = Cell::new(0);
        // what `encode_images` does with each image: a lookup, else an encoding stored
        let get = |cache: &EmbeddingCache, value: f32| {
            cache.lookup(&image, &device).unwrap().unwrap_or_else(|| {
                encodes.set(encodes.get() + 1);
                let fresh = encoded(value);
                cache.store(&image, &fresh).unwrap();
                fresh
            })
        };
        let open_in = |scaling, precision| {
            let sha = file_sha256(&checkpoint).unwrap();
            let config = CacheConfig {
                dir: dir.path().to_path_buf(),
                ..CacheConfig::default()
            };
            EmbeddingCache::open(
                &config,
                &checkpoint,
                &sha,
                &architecture,
                scaling,
                precision,
            )
            .unwrap()
        };
        let open = |scaling| open_in(scaling, Precision::F32);
        let cache = open(IntensityScaling::Auto);
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

        // file times tick at the kernel's coarse clock (a few ms): a rewrite within one
        // tick, at the same size, would look unchanged
        std::thread::sleep(std::time::Duration::from_millis(30));
        std::fs::write(&image, b"pixels v2").unwrap();
        get(&cache, 3.0);
        assert_eq!(encodes.get(), 2, "changed image content is a miss");

        let other = open(IntensityScaling::Full);
        get(&other, 4.0);
        assert_eq!(encodes.get(), 3, "other preprocessing is a miss");
        let bf16 = open_in(IntensityScaling::Full, Precision::Bf16);
        get(&bf16, 4.5);
        assert_eq!(encodes.get(), 4, "another encoder precision is a miss");
        assert_ne!(bf16.dir(), other.dir());

        std::fs::write(&checkpoint, b"weights v2").unwrap();
        let retrained = open(IntensityScaling::Auto);
        assert_ne!(retrained.dir(), cache.dir());
        get(&retrained, 5.0);
        assert_eq!(encodes.get(), 5, "other weights are a miss");

        // a damaged entry is re-computed, not an error
        std::fs::write(retrained.entry_path(&image).unwrap(), b"garbage").unwrap();
        get(&retrained, 6.0);
        assert_eq!(encodes.get(), 6);
    }

    #[test]
    fn half_precision_entries_read_back_rounded_once() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("a.png");
        std::fs::write(&image, b"pixels").unwrap();
        let architecture = crate::model::SamVariant::VitB.architecture();
        let device = Device::flex();
        let values: Vec<f32> = (0..8).map(|i| 0.1 + i as f32 / 3.0).collect();
        for (dtype, round) in [
            (CacheDtype::F32, (|v| v) as fn(f32) -> f32),
            (CacheDtype::F16, |v| half::f16::from_f32(v).to_f32()),
            (CacheDtype::Bf16, |v| half::bf16::from_f32(v).to_f32()),
        ] {
            let config = CacheConfig {
                dir: dir.path().to_path_buf(),
                dtype,
                ..CacheConfig::default()
            };
            let cache = EmbeddingCache::open(
                &config,
                &image,
                "0123456789abcdef0123",
                &architecture,
                IntensityScaling::Auto,
                Precision::F32,
            )
            .unwrap();
            let written = EncodedImage {
                embedding: Tensor::from_data(
                    TensorData::new(values.clone(), [1, 2, 2, 2]),
                    &device,
                ),
                original_size: [3, 4],
                input_size: [6, 8],
            };
            assert!(
                cache.lookup(&image, &device).unwrap().is_none(),
                "{dtype:?}: empty"
            );
            cache.store(&image, &written).unwrap();
            let read = cache.lookup(&image, &device).unwrap().expect("a hit");
            let read = tensor_values(read.embedding).unwrap();
            let expected: Vec<f32> = values.iter().map(|&v| round(v)).collect();
            assert_eq!(read, expected, "{dtype:?}");
            if dtype != CacheDtype::F32 {
                assert_ne!(read, values, "{dtype:?} entries are rounded");
                let entry = std::fs::metadata(cache.entry_path(&image).unwrap()).unwrap();
                assert!(
                    entry.len() < 8 * 4 + 200,
                    "{dtype:?}: {} bytes",
                    entry.len()
                );
            }
        }
    }
}
