//! Labeled images: where they come from (folders or COCO JSON), how they are split, and
//! their objects as binary masks.

use std::path::{Path, PathBuf};

use crate::error::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::mask::{BinaryMask, Rle};

/// One object of an image.
#[derive(Debug, Clone)]
pub struct Object {
    pub mask: BinaryMask,
    pub category: Option<String>,
}

/// Where an image's objects are read from (decoded on demand, so that large sets do
/// not sit in memory).
#[derive(Debug, Clone)]
pub enum Annotations {
    /// An instance-label image: each non-zero value is one object (a binary mask is the
    /// case of a single value).
    LabelImage(PathBuf),
    /// A semantic label image (e.g. a slice of a label volume): each non-zero value is one
    /// object whose category is the value's name (`label <value>` when unnamed).
    SemanticLabels {
        path: PathBuf,
        names: std::sync::Arc<std::collections::BTreeMap<u16, String>>,
    },
    /// COCO segmentations of one image.
    Coco {
        width: usize,
        height: usize,
        objects: Vec<CocoObject>,
    },
}

#[derive(Debug, Clone)]
pub struct CocoObject {
    pub annotation_id: u64,
    pub category: String,
    pub segmentation: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub image: PathBuf,
    pub annotations: Annotations,
}

impl Sample {
    /// The image's objects of at least `min_area` pixels, and how many were smaller.
    pub fn objects(&self, min_area: usize) -> Result<(Vec<Object>, usize)> {
        let all = match &self.annotations {
            Annotations::LabelImage(path) => label_image_objects(path, None)?,
            Annotations::SemanticLabels { path, names } => label_image_objects(path, Some(names))?,
            Annotations::Coco {
                width,
                height,
                objects,
            } => objects
                .iter()
                .map(|o| {
                    Ok(Object {
                        mask: decode_segmentation(&o.segmentation, *height, *width).with_context(
                            || {
                                format!(
                                    "annotation {} of image {}",
                                    o.annotation_id,
                                    self.image.display()
                                )
                            },
                        )?,
                        category: Some(o.category.clone()),
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        };
        let total = all.len();
        let kept: Vec<Object> = all
            .into_iter()
            .filter(|o| o.mask.area() >= min_area.max(1))
            .collect();
        let skipped = total - kept.len();
        Ok((kept, skipped))
    }

    /// A short name for reports: the image's file name.
    pub fn name(&self) -> String {
        self.image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.image.display().to_string())
    }
}

/// Objects of a label image (8 or 16 bit, any channel count: the first), by increasing
/// value; with `names`, each value is a category.
fn label_image_objects(
    path: &Path,
    names: Option<&std::collections::BTreeMap<u16, String>>,
) -> Result<Vec<Object>> {
    let image = image::open(path).with_context(|| format!("reading mask {}", path.display()))?;
    let labels = image.to_luma16();
    let (w, h) = (labels.width() as usize, labels.height() as usize);
    let mut values: Vec<u16> = labels.pixels().map(|p| p[0]).filter(|&v| v != 0).collect();
    values.sort_unstable();
    values.dedup();
    Ok(values
        .into_iter()
        .map(|value| Object {
            mask: BinaryMask::from_fn(w, h, |x, y| {
                labels.get_pixel(x as u32, y as u32)[0] == value
            }),
            category: names.map(|n| {
                n.get(&value)
                    .cloned()
                    .unwrap_or_else(|| format!("label {value}"))
            }),
        })
        .collect())
}

/// A COCO `segmentation`: a list of polygons, or an RLE with list or string counts.
pub fn decode_segmentation(
    segmentation: &serde_json::Value,
    height: usize,
    width: usize,
) -> Result<BinaryMask> {
    match segmentation {
        serde_json::Value::Array(polygons) => {
            let mut mask = BinaryMask::empty(width, height);
            for polygon in polygons {
                let xy: Vec<f64> = polygon
                    .as_array()
                    .and_then(|p| p.iter().map(|v| v.as_f64()).collect::<Option<Vec<_>>>())
                    .context("a polygon must be a list of numbers [x0, y0, x1, y1, ...]")?;
                if xy.len() < 6 || !xy.len().is_multiple_of(2) {
                    bail!("a polygon needs at least 3 points (an even count of numbers), got {} numbers", xy.len());
                }
                mask.union(&Rle::from_polygon(&xy, height, width).decode()?);
            }
            Ok(mask)
        }
        serde_json::Value::Object(rle) => {
            let size: Vec<usize> = rle
                .get("size")
                .and_then(|s| s.as_array())
                .and_then(|s| {
                    s.iter()
                        .map(|v| v.as_u64().map(|v| v as usize))
                        .collect::<Option<Vec<_>>>()
                })
                .context("an RLE segmentation needs \"size\": [height, width]")?;
            if size != [height, width] {
                bail!("RLE size {size:?} differs from the image size [{height}, {width}]");
            }
            let rle = match rle.get("counts") {
                Some(serde_json::Value::String(s)) => Rle::from_compressed(s, height, width)?,
                Some(serde_json::Value::Array(counts)) => Rle {
                    height,
                    width,
                    counts: counts
                        .iter()
                        .map(|c| c.as_u64().and_then(|c| u32::try_from(c).ok()))
                        .collect::<Option<Vec<_>>>()
                        .context("RLE counts must be non-negative integers")?,
                },
                _ => bail!("an RLE segmentation needs \"counts\" (a string or a list)"),
            };
            rle.decode()
        }
        _ => bail!("a segmentation must be a list of polygons or an RLE object"),
    }
}

/// Train and validation samples.
#[derive(Debug, Clone, Default)]
pub struct Split {
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
}

/// Splits `samples` by `val_ratio` with a seeded shuffle (sorted first, so the split
/// depends only on the file names and the seed). At least one validation sample when
/// there are two or more samples and the ratio is positive.
pub fn seeded_split(mut samples: Vec<Sample>, val_ratio: f64, seed: u64) -> Split {
    samples.sort_by(|a, b| a.image.cmp(&b.image));
    samples.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n = samples.len();
    let mut n_val = (n as f64 * val_ratio).round() as usize;
    if val_ratio > 0.0 && n >= 2 {
        n_val = n_val.clamp(1, n - 1);
    }
    let val = samples.split_off(n - n_val.min(n));
    let mut split = Split {
        train: samples,
        val,
    };
    split.train.sort_by(|a, b| a.image.cmp(&b.image));
    split.val.sort_by(|a, b| a.image.cmp(&b.image));
    split
}

/// Image file extensions samtune reads.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "tif", "tiff"];

pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// A sample with its objects decoded (objects below the minimum area removed).
#[derive(Debug, Clone)]
pub struct Prepared {
    pub sample: Sample,
    pub objects: Vec<Object>,
}

/// Decodes the objects of `samples`; images left without objects are dropped. Returns the
/// prepared samples, the number of objects skipped as too small and of images dropped.
pub fn prepare(samples: &[Sample], min_area: usize) -> Result<(Vec<Prepared>, usize, usize)> {
    let mut prepared = Vec::with_capacity(samples.len());
    let (mut skipped, mut dropped) = (0, 0);
    for sample in samples {
        let (objects, small) = sample.objects(min_area)?;
        skipped += small;
        if objects.is_empty() {
            dropped += 1;
            continue;
        }
        prepared.push(Prepared {
            sample: sample.clone(),
            objects,
        });
    }
    Ok((prepared, skipped, dropped))
}
