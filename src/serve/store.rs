//! The annotations `samtune serve` saves: one COCO instance file (compressed RLE
//! segmentations, named categories) that `samtune train` reads as a `coco` dataset with
//! the served image folder as `data.images`. Every change rewrites the whole file
//! atomically (temporary file, then rename), so a killed server or a closed page loses
//! nothing accepted and never leaves a half-written file; fields of an existing file that
//! samtune does not use are kept as they were.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data::coco::decode_segmentation;
use crate::data::mask::Rle;
use crate::error::{bail, Context, Result};
use crate::fsutil::write_bytes_atomic;
use crate::predict::BinaryMask;

type Extra = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Image {
    id: u64,
    file_name: String,
    height: usize,
    width: usize,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Annotation {
    id: u64,
    image_id: u64,
    category_id: u64,
    /// Kept as written (polygons of another tool stay polygons).
    segmentation: serde_json::Value,
    area: f64,
    bbox: [f64; 4],
    #[serde(default)]
    iscrowd: u8,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Category {
    id: u64,
    name: String,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct CocoDocument {
    #[serde(default)]
    images: Vec<Image>,
    #[serde(default)]
    annotations: Vec<Annotation>,
    #[serde(default)]
    categories: Vec<Category>,
    #[serde(flatten)]
    extra: Extra,
}

/// One saved object of an image.
#[derive(Debug, Clone)]
pub struct SavedObject {
    pub id: u64,
    pub category: String,
    pub mask: BinaryMask,
}

/// The annotation file and what it holds.
pub struct AnnotationStore {
    path: PathBuf,
    doc: CocoDocument,
}

impl AnnotationStore {
    /// Opens `path` (a new, empty dataset when it does not exist yet).
    pub fn open(path: &Path) -> Result<Self> {
        let doc = if path.exists() {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{}: not a COCO instance file", path.display()))?
        } else {
            CocoDocument::default()
        };
        Ok(Self {
            path: path.to_path_buf(),
            doc,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Category names, in id order.
    pub fn categories(&self) -> Vec<String> {
        let mut categories: Vec<&Category> = self.doc.categories.iter().collect();
        categories.sort_by_key(|c| c.id);
        categories.iter().map(|c| c.name.clone()).collect()
    }

    /// How many objects each image file has.
    pub fn object_count(&self, file_name: &str) -> usize {
        self.image_id(file_name).map_or(0, |id| {
            self.doc
                .annotations
                .iter()
                .filter(|a| a.image_id == id)
                .count()
        })
    }

    /// The objects of `file_name`, oldest first.
    pub fn objects(&self, file_name: &str) -> Result<Vec<SavedObject>> {
        let Some(image) = self.doc.images.iter().find(|i| i.file_name == file_name) else {
            return Ok(Vec::new());
        };
        self.doc
            .annotations
            .iter()
            .filter(|a| a.image_id == image.id)
            .map(|a| {
                let mask =
                    decode_segmentation(&a.segmentation.to_string(), image.height, image.width)
                        .with_context(|| format!("{}: annotation {}", self.path.display(), a.id))?;
                Ok(SavedObject {
                    id: a.id,
                    category: self.category_name(a.category_id),
                    mask,
                })
            })
            .collect()
    }

    /// Adds `mask` as an object of `category` on `file_name` and saves; its id.
    pub fn add(&mut self, file_name: &str, mask: &BinaryMask, category: &str) -> Result<u64> {
        let category = category.trim();
        if category.is_empty() {
            bail!("an object needs a category name");
        }
        let Some(bbox) = mask.bbox() else {
            bail!("the mask is empty: nothing to save");
        };
        let mut doc = self.doc.clone();
        let image_id = match doc.images.iter().find(|i| i.file_name == file_name) {
            Some(image) => {
                if [image.height, image.width] != [mask.height, mask.width] {
                    bail!(
                        "{}: {file_name} is {}x{} there, the mask {}x{}",
                        self.path.display(),
                        image.width,
                        image.height,
                        mask.width,
                        mask.height
                    );
                }
                image.id
            }
            None => {
                let id = next_id(doc.images.iter().map(|i| i.id));
                doc.images.push(Image {
                    id,
                    file_name: file_name.to_string(),
                    height: mask.height,
                    width: mask.width,
                    extra: Extra::new(),
                });
                id
            }
        };
        let category_id = match doc.categories.iter().find(|c| c.name == category) {
            Some(c) => c.id,
            None => {
                let id = next_id(doc.categories.iter().map(|c| c.id));
                doc.categories.push(Category {
                    id,
                    name: category.to_string(),
                    extra: Extra::new(),
                });
                id
            }
        };
        let id = next_id(doc.annotations.iter().map(|a| a.id));
        let rle = Rle::encode(mask);
        doc.annotations.push(Annotation {
            id,
            image_id,
            category_id,
            segmentation: serde_json::json!({
                "size": [mask.height, mask.width],
                "counts": rle.to_compressed(),
            }),
            area: mask.area() as f64,
            // [x, y, w, h] as pycocotools' toBbox gives it for the mask
            bbox: [
                bbox[0],
                bbox[1],
                bbox[2] - bbox[0] + 1.0,
                bbox[3] - bbox[1] + 1.0,
            ],
            iscrowd: 0,
            extra: Extra::new(),
        });
        self.commit(doc)?;
        Ok(id)
    }

    /// Removes the newest object of `file_name` and saves; its id, `None` when the image
    /// has none.
    pub fn undo(&mut self, file_name: &str) -> Result<Option<u64>> {
        let Some(image_id) = self.image_id(file_name) else {
            return Ok(None);
        };
        let Some(newest) = self
            .doc
            .annotations
            .iter()
            .enumerate()
            .filter(|(_, a)| a.image_id == image_id)
            .max_by_key(|(_, a)| a.id)
            .map(|(i, _)| i)
        else {
            return Ok(None);
        };
        let mut doc = self.doc.clone();
        let removed = doc.annotations.remove(newest).id;
        // an image without objects is dropped, as training would leave it out anyway
        if !doc.annotations.iter().any(|a| a.image_id == image_id) {
            doc.images.retain(|i| i.id != image_id);
        }
        self.commit(doc)?;
        Ok(Some(removed))
    }

    /// Writes `doc` and only then makes it the store's: a failed write changes nothing.
    fn commit(&mut self, doc: CocoDocument) -> Result<()> {
        let text = serde_json::to_string(&doc)?;
        write_bytes_atomic(&self.path, text.as_bytes())?;
        self.doc = doc;
        Ok(())
    }

    fn image_id(&self, file_name: &str) -> Option<u64> {
        self.doc
            .images
            .iter()
            .find(|i| i.file_name == file_name)
            .map(|i| i.id)
    }

    fn category_name(&self, id: u64) -> String {
        self.doc
            .categories
            .iter()
            .find(|c| c.id == id)
            .map_or_else(|| format!("category {id}"), |c| c.name.clone())
    }
}

fn next_id(ids: impl Iterator<Item = u64>) -> u64 {
    ids.max().unwrap_or(0) + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(at: usize) -> BinaryMask {
        BinaryMask::from_fn(16, 12, |x, y| {
            (at..at + 4).contains(&x) && (2..6).contains(&y)
        })
    }

    #[test]
    fn objects_are_saved_read_back_and_undone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("annotations.json");
        let mut store = AnnotationStore::open(&path).unwrap();
        store.add("a.png", &square(1), "cell").unwrap();
        store.add("a.png", &square(8), "nucleus").unwrap();
        store.add("b.png", &square(3), "cell").unwrap();
        // reopened from disk: the same objects
        let mut store = AnnotationStore::open(&path).unwrap();
        assert_eq!(store.categories(), ["cell", "nucleus"]);
        let a = store.objects("a.png").unwrap();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].category, "nucleus");
        assert_eq!(a[1].mask, square(8));
        assert_eq!(store.undo("a.png").unwrap(), Some(a[1].id));
        assert_eq!(store.object_count("a.png"), 1);
        store.undo("b.png").unwrap();
        assert_eq!(store.undo("b.png").unwrap(), None);
        let reopened = AnnotationStore::open(&path).unwrap();
        assert_eq!(reopened.object_count("a.png"), 1);
        assert_eq!(reopened.doc.images.len(), 1, "b.png has no objects left");
    }

    #[test]
    fn fields_of_another_tool_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("annotations.json");
        let text = r#"{"info": {"year": 2026}, "images": [{"id": 7, "file_name": "a.png",
            "height": 12, "width": 16, "license": 3}], "annotations": [{"id": 4, "image_id": 7,
            "category_id": 2, "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]], "area": 16.0,
            "bbox": [1, 1, 4, 4], "iscrowd": 0, "score": 0.5}],
            "categories": [{"id": 2, "name": "cell", "supercategory": "bio"}]}"#;
        std::fs::write(&path, text).unwrap();
        let mut store = AnnotationStore::open(&path).unwrap();
        assert_eq!(store.objects("a.png").unwrap()[0].category, "cell");
        store.add("a.png", &square(8), "cell").unwrap();
        let written: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(written["info"]["year"], 2026);
        assert_eq!(written["images"][0]["license"], 3);
        assert_eq!(written["annotations"][0]["score"], 0.5);
        assert!(written["annotations"][0]["segmentation"].is_array());
        assert_eq!(written["annotations"][1]["category_id"], 2);
        assert_eq!(written["categories"][0]["supercategory"], "bio");
    }

    #[test]
    fn bad_objects_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("annotations.json");
        let mut store = AnnotationStore::open(&path).unwrap();
        let empty = BinaryMask::empty(16, 12);
        assert!(store.add("a.png", &empty, "cell").is_err());
        assert!(store.add("a.png", &square(1), "  ").is_err());
        assert!(!path.exists());
        store.add("a.png", &square(1), "cell").unwrap();
        let other_size = BinaryMask::from_fn(8, 8, |x, _| x < 2);
        let err = store.add("a.png", &other_size, "cell").unwrap_err();
        assert!(err.to_string().contains("a.png"), "{err}");
        std::fs::write(dir.path().join("broken.json"), "{").unwrap();
        let err = AnnotationStore::open(&dir.path().join("broken.json"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("broken.json"), "{err}");
    }
}
