//! Labeled images as an index: per image its path, size and objects in their stored form
//! (label values with their areas, COCO segmentations as spans of the annotation file).
//! Indexing checks that masks fit their images and counts objects; masks are decoded only
//! when a batch or an evaluation needs them, and dropped after it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::coco::{CocoFile, CocoObject};
use super::mask::BinaryMask;
use crate::error::{bail, Context, Error, Result};

/// One decoded object of an image.
#[derive(Debug, Clone)]
pub struct Object {
    pub mask: BinaryMask,
    pub category: Option<String>,
}

/// A label value present in a label image, and how many pixels hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabelArea {
    pub value: u16,
    pub area: usize,
}

/// Where an image's objects are stored.
#[derive(Debug, Clone)]
pub enum Annotations {
    /// An instance-label image: each non-zero value is one object (a binary mask is the
    /// case of a single value).
    LabelImage {
        path: PathBuf,
        labels: Vec<LabelArea>,
    },
    /// A semantic label image (e.g. a slice of a label volume): each non-zero value is one
    /// object whose category is the value's name (`label <value>` when unnamed).
    SemanticLabels {
        path: PathBuf,
        names: Arc<BTreeMap<u16, String>>,
        labels: Vec<LabelArea>,
    },
    /// COCO segmentations of one image, read from `file` when decoded.
    Coco {
        file: Arc<CocoFile>,
        objects: Vec<CocoObject>,
    },
}

/// One labeled image, indexed.
#[derive(Debug, Clone)]
pub struct Sample {
    pub image: PathBuf,
    /// `[height, width]` of the image (from its header, or from the COCO file, which is
    /// checked against the image when it is read).
    pub size: [usize; 2],
    pub annotations: Annotations,
}

#[cfg(test)]
thread_local! {
    /// Object masks built by this thread (tests check that indexing builds none).
    pub(crate) static OBJECT_DECODES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl Sample {
    /// A short name for reports: the image's file name.
    pub fn name(&self) -> String {
        self.image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.image.display().to_string())
    }

    pub fn object_count(&self) -> usize {
        match &self.annotations {
            Annotations::LabelImage { labels, .. } | Annotations::SemanticLabels { labels, .. } => {
                labels.len()
            }
            Annotations::Coco { objects, .. } => objects.len(),
        }
    }

    /// Checks the image as read (`[height, width]`) against the size the index holds.
    pub fn check_image_size(&self, actual: [usize; 2]) -> Result<()> {
        if actual == self.size {
            return Ok(());
        }
        let source = match &self.annotations {
            Annotations::LabelImage { path, .. } | Annotations::SemanticLabels { path, .. } => {
                format!("the mask {}", path.display())
            }
            Annotations::Coco { file, .. } => format!("the COCO file {}", file.path.display()),
        };
        Err(Error::file(
            &self.image,
            format!(
                "the image is {}x{} (width x height), but {source} is for {}x{}",
                actual[1], actual[0], self.size[1], self.size[0]
            ),
        ))
    }

    /// Removes the objects smaller than `min_area` pixels (by their indexed area) and
    /// returns how many there were.
    pub fn retain_min_area(&mut self, min_area: usize) -> usize {
        let before = self.object_count();
        let min_area = min_area.max(1);
        match &mut self.annotations {
            Annotations::LabelImage { labels, .. } | Annotations::SemanticLabels { labels, .. } => {
                labels.retain(|l| l.area >= min_area)
            }
            Annotations::Coco { objects, .. } => objects.retain(|o| o.area >= min_area as f64),
        }
        before - self.object_count()
    }

    /// Every object, decoded in index order.
    pub fn decode_objects(&self) -> Result<Vec<Object>> {
        self.decode_objects_at(&(0..self.object_count()).collect::<Vec<_>>())
    }

    /// The objects at `indices` (in index order), decoded and checked against the image
    /// size.
    pub fn decode_objects_at(&self, indices: &[usize]) -> Result<Vec<Object>> {
        let objects = match &self.annotations {
            Annotations::LabelImage { path, labels } => {
                label_objects(path, labels, indices, self.size, None)?
            }
            Annotations::SemanticLabels {
                path,
                names,
                labels,
            } => label_objects(path, labels, indices, self.size, Some(names))?,
            Annotations::Coco { file, objects } => indices
                .iter()
                .map(|&i| {
                    let object = &objects[i];
                    Ok(Object {
                        mask: file.decode(object, self.size).with_context(|| {
                            format!(
                                "annotation {} of image {}",
                                object.annotation_id,
                                self.image.display()
                            )
                        })?,
                        category: Some(object.category.to_string()),
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        };
        #[cfg(test)]
        OBJECT_DECODES.with(|n| n.set(n.get() + objects.len()));
        Ok(objects)
    }

    /// The image's objects of at least `min_area` pixels, decoded, and how many were
    /// smaller.
    pub fn objects(&self, min_area: usize) -> Result<(Vec<Object>, usize)> {
        let mut kept = self.clone();
        let skipped = kept.retain_min_area(min_area);
        Ok((kept.decode_objects()?, skipped))
    }
}

/// The one check that a mask and its image line up.
pub fn check_same_size(
    mask: &Path,
    mask_size: [usize; 2],
    image: &Path,
    image_size: [usize; 2],
) -> Result<()> {
    if mask_size != image_size {
        return Err(Error::file(
            mask,
            format!(
                "the mask is {}x{} (width x height) but its image {} is {}x{}",
                mask_size[1],
                mask_size[0],
                image.display(),
                image_size[1],
                image_size[0]
            ),
        ));
    }
    Ok(())
}

/// `[height, width]` of an image file, from its header.
pub fn image_size(path: &Path) -> Result<[usize; 2]> {
    let (w, h) =
        image::image_dimensions(path).with_context(|| format!("reading {}", path.display()))?;
    Ok([h as usize, w as usize])
}

/// A label image's values as stored: 8 or 16 bit, any channel count (the first),
/// `[height, width]`. An 8-bit value is itself (label 1 is 1), not rescaled to 16 bits.
pub fn read_labels(path: &Path) -> Result<(Vec<u16>, [usize; 2])> {
    let image = image::open(path).with_context(|| format!("reading mask {}", path.display()))?;
    let size = [image.height() as usize, image.width() as usize];
    let values = match image {
        image::DynamicImage::ImageLuma16(labels) => labels.into_raw(),
        image::DynamicImage::ImageLumaA16(_)
        | image::DynamicImage::ImageRgb16(_)
        | image::DynamicImage::ImageRgba16(_) => image.to_luma16().into_raw(),
        other if other.color().bytes_per_pixel() / other.color().channel_count() == 1 => {
            let channels = other.color().channel_count() as usize;
            other
                .as_bytes()
                .iter()
                .step_by(channels)
                .map(|&v| v as u16)
                .collect()
        }
        other => other.to_luma16().into_raw(),
    };
    Ok((values, size))
}

/// The non-zero values of `labels` and their pixel counts, by increasing value.
pub fn count_labels(labels: &[u16]) -> Vec<LabelArea> {
    let mut counts: BTreeMap<u16, usize> = BTreeMap::new();
    for &v in labels.iter().filter(|&&v| v != 0) {
        *counts.entry(v).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(value, area)| LabelArea { value, area })
        .collect()
}

/// The objects of a label image at `indices` of `labels`; with `names`, each value is a
/// category.
fn label_objects(
    path: &Path,
    labels: &[LabelArea],
    indices: &[usize],
    image_size: [usize; 2],
    names: Option<&Arc<BTreeMap<u16, String>>>,
) -> Result<Vec<Object>> {
    if indices.is_empty() {
        return Ok(Vec::new());
    }
    let (values, size) = read_labels(path)?;
    let [h, w] = size;
    if size != image_size {
        return Err(Error::file(
            path,
            format!(
                "the mask is {w}x{h} (width x height) now, its image {}x{} (was it replaced during the run?)",
                image_size[1], image_size[0]
            ),
        ));
    }
    indices
        .iter()
        .map(|&i| {
            let value = labels[i].value;
            let mask = BinaryMask {
                width: w,
                height: h,
                data: values.iter().map(|&v| (v == value) as u8).collect(),
            };
            if mask.area() != labels[i].area {
                return Err(Error::file(
                    path,
                    format!(
                        "label {value} covers {} px, the index says {} (was the mask changed during the run?)",
                        mask.area(),
                        labels[i].area
                    ),
                ));
            }
            Ok(Object {
                mask,
                category: names.map(|n| {
                    n.get(&value)
                        .cloned()
                        .unwrap_or_else(|| format!("label {value}"))
                }),
            })
        })
        .collect()
}

/// Train, validation and test samples.
#[derive(Debug, Clone, Default)]
pub struct Split {
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub test: Vec<Sample>,
}

/// Splits `samples` by `val_ratio` with a seeded shuffle (sorted first, so the split
/// depends only on the file names and the seed). At least one validation sample when
/// there are two or more samples and the ratio is positive.
pub fn seeded_split(samples: Vec<Sample>, val_ratio: f64, seed: u64) -> Split {
    let (train, val) = split_off(samples, val_ratio, seed);
    Split {
        train,
        val,
        test: Vec::new(),
    }
}

/// `(kept, held out)`: a seeded `ratio` of `samples` held out (see [`seeded_split`]).
pub fn split_off<T: HasPath>(mut samples: Vec<T>, ratio: f64, seed: u64) -> (Vec<T>, Vec<T>) {
    samples.sort_by(|a, b| a.path().cmp(b.path()));
    samples.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let n = samples.len();
    let mut n_out = (n as f64 * ratio).round() as usize;
    if ratio > 0.0 && n >= 2 {
        n_out = n_out.clamp(1, n - 1);
    }
    let mut out = samples.split_off(n - n_out.min(n));
    samples.sort_by(|a, b| a.path().cmp(b.path()));
    out.sort_by(|a, b| a.path().cmp(b.path()));
    (samples, out)
}

/// What a split is ordered by.
pub trait HasPath {
    fn path(&self) -> &Path;
}

impl HasPath for Sample {
    fn path(&self) -> &Path {
        &self.image
    }
}

impl HasPath for (PathBuf, PathBuf) {
    fn path(&self) -> &Path {
        &self.0
    }
}

/// Image file extensions samtune reads.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "tif", "tiff"];

pub fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The image files of folder `dir` (not recursive), sorted; an error when it has none.
pub fn list_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("reading folder {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let file = entry
            .with_context(|| format!("reading folder {}", dir.display()))?
            .path();
        if is_image(&file) {
            files.push(file);
        }
    }
    files.sort();
    if files.is_empty() {
        bail!("{}: no images (png, jpg, tif) found", dir.display());
    }
    Ok(files)
}

/// What filtering an index left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Filtered {
    /// Objects below `min_area` pixels.
    pub small_objects: usize,
    /// Images left without any object.
    pub empty_images: usize,
}

impl std::ops::Add for Filtered {
    type Output = Filtered;

    fn add(self, other: Filtered) -> Filtered {
        Filtered {
            small_objects: self.small_objects + other.small_objects,
            empty_images: self.empty_images + other.empty_images,
        }
    }
}

/// Drops objects below `min_area` pixels and the images left without objects.
pub fn filter_samples(samples: &mut Vec<Sample>, min_area: usize) -> Filtered {
    let mut filtered = Filtered::default();
    for sample in samples.iter_mut() {
        filtered.small_objects += sample.retain_min_area(min_area);
    }
    let before = samples.len();
    samples.retain(|s| s.object_count() > 0);
    filtered.empty_images = before - samples.len();
    filtered
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synthetic::{write_dataset, Domain};

    fn decodes() -> usize {
        OBJECT_DECODES.with(|n| n.get())
    }

    #[test]
    fn indexing_decodes_no_mask_and_batches_decode_only_what_they_use() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), Domain::Source, 4, 48, 3).unwrap();
        let before = decodes();
        let split = crate::data::folder::load_folder(dir.path(), 0.0, 0).unwrap();
        assert_eq!(decodes(), before, "indexing built object masks");
        let sample = &split.train[0];
        let n = sample.object_count();
        assert!(n >= 2, "{n} objects");
        let one = sample.decode_objects_at(&[1]).unwrap();
        assert_eq!(decodes(), before + 1);
        let LabelArea { area, .. } = match &sample.annotations {
            Annotations::LabelImage { labels, .. } => labels[1],
            _ => unreachable!("a folder dataset"),
        };
        assert_eq!(one[0].mask.area(), area, "the indexed area is the mask's");
        // the second index reads the counts back instead of the masks
        let index_file = dir.path().join(".samtune-index.json");
        assert!(index_file.is_file());
        let again = crate::data::folder::load_folder(dir.path(), 0.0, 0).unwrap();
        assert_eq!(again.train[0].object_count(), n);
    }

    #[test]
    fn a_mask_of_another_size_than_its_image_is_an_error_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path(), Domain::Source, 2, 48, 3).unwrap();
        let mask = std::fs::read_dir(dir.path().join("masks"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        image::GrayImage::new(40, 48).save(&mask).unwrap();
        let err = crate::data::folder::load_folder(dir.path(), 0.0, 0)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&mask.display().to_string())
                && err.contains("40x48")
                && err.contains("48x48"),
            "{err}"
        );
    }
}
