//! COCO instance annotations (`images`, `annotations`, `categories`) as a compact index:
//! per image its file and size, per annotation its category, area, crowd flag and where
//! its segmentation lies in the file. The file is parsed once, its segmentations kept as
//! byte spans (not as JSON trees), and read back one object at a time when decoded.
//! `samtune annotate` writes this format too.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::dataset::{Annotations, Sample};
use super::mask::{BinaryMask, Rle};
use crate::error::{bail, Context, Error, Result};

/// An annotation file the index points into; a change to it after indexing is an error,
/// not a silently different mask.
#[derive(Debug)]
pub struct CocoFile {
    pub path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
}

/// Where a segmentation's JSON lies in its file.
#[derive(Debug, Clone, Copy)]
pub struct Span {
    offset: u64,
    len: u32,
}

/// One annotation, indexed.
#[derive(Debug, Clone)]
pub struct CocoObject {
    pub annotation_id: u64,
    pub category: Arc<str>,
    /// Pixels, from the file's `area` (counted from the mask when the file has none).
    pub area: f64,
    pub iscrowd: bool,
    segmentation: Span,
}

#[derive(Debug, Deserialize)]
struct RawFile<'a> {
    images: Vec<RawImage>,
    #[serde(default, borrow)]
    annotations: Vec<RawAnnotation<'a>>,
    #[serde(default)]
    categories: Vec<RawCategory>,
}

#[derive(Debug, Deserialize)]
struct RawImage {
    id: u64,
    file_name: String,
    height: usize,
    width: usize,
}

#[derive(Debug, Deserialize)]
struct RawAnnotation<'a> {
    id: u64,
    image_id: u64,
    category_id: u64,
    #[serde(borrow)]
    segmentation: &'a RawValue,
    #[serde(default)]
    area: Option<f64>,
    #[serde(default)]
    iscrowd: Option<u8>,
}

#[derive(Debug, Deserialize)]
struct RawCategory {
    id: u64,
    name: String,
}

/// One sample per image that has at least one annotation of the kept categories
/// (all categories when `categories` is empty). Image files are looked up in `images_dir`.
pub fn load_coco(
    annotations: &Path,
    images_dir: &Path,
    categories: &[String],
) -> Result<Vec<Sample>> {
    let text = std::fs::read_to_string(annotations)
        .with_context(|| format!("reading {}", annotations.display()))?;
    let file = Arc::new(CocoFile::stamp(annotations)?);
    let raw: RawFile = serde_json::from_str(&text)
        .map_err(|e| Error::file(annotations, format!("not a COCO annotation file: {e}")))?;
    let names: HashMap<u64, Arc<str>> = raw
        .categories
        .iter()
        .map(|c| (c.id, Arc::from(c.name.as_str())))
        .collect();
    for wanted in categories {
        if !names.values().any(|n| &**n == wanted) {
            let mut known: Vec<&str> = names.values().map(|n| &**n).collect();
            known.sort();
            return Err(Error::file(
                annotations,
                format!("no category '{wanted}' (categories: {known:?})"),
            ));
        }
    }
    if let Some(image) = raw
        .images
        .iter()
        .find(|i| !plausible_size(i.height, i.width))
    {
        return Err(Error::file(
            annotations,
            format!(
                "image {} ({}) is declared {}x{}: each side must be 1..={MAX_SIDE} and the area at most {MAX_PIXELS} px",
                image.id, image.file_name, image.width, image.height
            ),
        ));
    }
    let images: HashMap<u64, &RawImage> = raw.images.iter().map(|i| (i.id, i)).collect();
    let mut per_image: BTreeMap<u64, Vec<CocoObject>> = BTreeMap::new();
    for ann in &raw.annotations {
        let category = names.get(&ann.category_id).with_context(|| {
            format!(
                "{}: annotation {} has unknown category_id {}",
                annotations.display(),
                ann.id,
                ann.category_id
            )
        })?;
        if !categories.is_empty() && !categories.iter().any(|c| **c == **category) {
            continue;
        }
        let Some(image) = images.get(&ann.image_id) else {
            bail!(
                "{}: annotation {} refers to unknown image_id {}",
                annotations.display(),
                ann.id,
                ann.image_id
            );
        };
        let json = ann.segmentation.get();
        let segmentation = Span {
            offset: (json.as_ptr() as usize - text.as_ptr() as usize) as u64,
            len: u32::try_from(json.len()).map_err(|_| {
                Error::file(
                    annotations,
                    format!("annotation {}: segmentation over 4 GB", ann.id),
                )
            })?,
        };
        let area = match ann.area {
            Some(area) if area > 0.0 => area,
            // a file without areas (or with zeros): counted once, here
            _ => decode_segmentation(json, image.height, image.width)
                .with_context(|| format!("{}: annotation {}", annotations.display(), ann.id))?
                .area() as f64,
        };
        per_image.entry(ann.image_id).or_default().push(CocoObject {
            annotation_id: ann.id,
            category: category.clone(),
            area,
            iscrowd: ann.iscrowd.unwrap_or(0) != 0,
            segmentation,
        });
    }
    let samples: Vec<Sample> = per_image
        .into_iter()
        .map(|(id, objects)| {
            let image = images[&id];
            Sample {
                image: images_dir.join(&image.file_name),
                size: [image.height, image.width],
                annotations: Annotations::Coco {
                    file: file.clone(),
                    objects,
                },
            }
        })
        .collect();
    if let Some(missing) = samples.iter().find(|s| !s.image.is_file()) {
        bail!(
            "{}: image file {} does not exist",
            annotations.display(),
            missing.image.display()
        );
    }
    Ok(samples)
}

/// The largest image side and area samtune reads (a mask is a byte per pixel).
pub const MAX_SIDE: usize = 1 << 17;
pub const MAX_PIXELS: usize = 1 << 30;

pub fn plausible_size(height: usize, width: usize) -> bool {
    (1..=MAX_SIDE).contains(&height)
        && (1..=MAX_SIDE).contains(&width)
        && height * width <= MAX_PIXELS
}

impl CocoFile {
    fn stamp(path: &Path) -> Result<Self> {
        let meta =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Self {
            path: path.to_path_buf(),
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }

    /// The mask of `object` in an image of `[height, width]`, read from the file.
    pub fn decode(&self, object: &CocoObject, size: [usize; 2]) -> Result<BinaryMask> {
        let now = Self::stamp(&self.path)?;
        if now.len != self.len || now.modified != self.modified {
            return Err(Error::file(
                &self.path,
                "changed since it was indexed; start the run again to read the new annotations",
            ));
        }
        let span = object.segmentation;
        let mut file = std::fs::File::open(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let mut bytes = vec![0u8; span.len as usize];
        file.seek(SeekFrom::Start(span.offset))
            .and_then(|_| file.read_exact(&mut bytes))
            .with_context(|| format!("reading {}", self.path.display()))?;
        let json = std::str::from_utf8(&bytes)
            .map_err(|_| Error::file(&self.path, "a segmentation is not UTF-8 text"))?;
        decode_segmentation(json, size[0], size[1])
    }
}

/// A COCO `segmentation` (its JSON text): a list of polygons, or an RLE with list or
/// string counts.
pub fn decode_segmentation(json: &str, height: usize, width: usize) -> Result<BinaryMask> {
    let segmentation: serde_json::Value =
        serde_json::from_str(json).map_err(|e| crate::error::err!("invalid segmentation: {e}"))?;
    match &segmentation {
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
                // a little outside the image is common; far outside is a broken file (and
                // tracing such an edge would take memory in proportion to its length)
                let reach = 4.0 * height.max(width) as f64 + 16.0;
                if let Some(v) = xy.iter().find(|v| !v.is_finite() || v.abs() > reach) {
                    bail!("a polygon coordinate {v} lies far outside the {width}x{height} image");
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A 20x10 image with a polygon (area from the file), a crowd RLE (area 0: counted)
    /// and a compressed RLE.
    fn file(dir: &Path) -> PathBuf {
        image::RgbImage::new(20, 10)
            .save(dir.join("a.png"))
            .unwrap();
        let square = Rle::encode(&BinaryMask::from_fn(20, 10, |x, y| x < 4 && y < 4));
        let json = serde_json::json!({
            "images": [{"id": 7, "file_name": "a.png", "height": 10, "width": 20}],
            "categories": [{"id": 1, "name": "cell"}, {"id": 2, "name": "crowd"}],
            "annotations": [
                {"id": 1, "image_id": 7, "category_id": 1, "area": 12.5, "iscrowd": 0,
                 "segmentation": [[2.0, 2.0, 8.0, 2.0, 8.0, 6.0, 2.0, 6.0]]},
                {"id": 2, "image_id": 7, "category_id": 2, "area": 0, "iscrowd": 1,
                 "segmentation": {"size": [10, 20], "counts": square.counts}},
                {"id": 3, "image_id": 7, "category_id": 1,
                 "segmentation": {"size": [10, 20], "counts": square.to_compressed()}},
            ],
        });
        let path = dir.join("ann.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
        path
    }

    #[test]
    fn the_index_keeps_spans_areas_and_crowds_and_decodes_each_kind() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path());
        let samples = load_coco(&path, dir.path(), &[]).unwrap();
        assert_eq!(samples.len(), 1);
        let Annotations::Coco { objects, .. } = &samples[0].annotations else {
            panic!("a COCO sample")
        };
        let areas: Vec<f64> = objects.iter().map(|o| o.area).collect();
        assert_eq!(
            areas,
            [12.5, 16.0, 16.0],
            "the file's area, else the mask's"
        );
        let crowds: Vec<bool> = objects.iter().map(|o| o.iscrowd).collect();
        assert_eq!(crowds, [false, true, false]);
        let masks = samples[0].decode_objects().unwrap();
        assert_eq!(masks[0].mask.area(), 6 * 4);
        assert_eq!(masks[1].mask, masks[2].mask, "list and string counts");
        assert_eq!(masks[1].category.as_deref(), Some("crowd"));
    }

    #[test]
    fn an_annotation_file_changed_after_indexing_is_an_error_not_another_mask() {
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path());
        let samples = load_coco(&path, dir.path(), &[]).unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push(' ');
        std::fs::write(&path, text).unwrap();
        let err = samples[0].decode_objects().unwrap_err().to_string();
        assert!(err.contains("changed since it was indexed"), "{err}");
    }

    #[test]
    fn declared_sizes_that_cannot_be_images_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let json = r#"{"images": [{"id": 1, "file_name": "a.png", "height": 4000000000, "width": 4000000000}],
                      "annotations": [], "categories": []}"#;
        let path = dir.path().join("huge.json");
        std::fs::write(&path, json).unwrap();
        let err = load_coco(&path, dir.path(), &[]).unwrap_err().to_string();
        assert!(
            err.contains("huge.json") && err.contains("declared"),
            "{err}"
        );
    }
}
