//! COCO instance annotations (`images`, `annotations`, `categories`), with category
//! filtering. `samtune annotate` writes this format too.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::error::{bail, Context, Result};
use serde::Deserialize;

use super::dataset::{Annotations, CocoObject, Sample};

#[derive(Debug, Deserialize)]
struct CocoFile {
    images: Vec<CocoImage>,
    #[serde(default)]
    annotations: Vec<CocoAnnotation>,
    #[serde(default)]
    categories: Vec<CocoCategory>,
}

#[derive(Debug, Deserialize)]
struct CocoImage {
    id: u64,
    file_name: String,
    height: usize,
    width: usize,
}

#[derive(Debug, Deserialize)]
struct CocoAnnotation {
    id: u64,
    image_id: u64,
    category_id: u64,
    segmentation: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct CocoCategory {
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
    let file: CocoFile = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a COCO annotation file", annotations.display()))?;
    let names: HashMap<u64, &str> = file
        .categories
        .iter()
        .map(|c| (c.id, c.name.as_str()))
        .collect();
    for wanted in categories {
        if !names.values().any(|n| n == wanted) {
            let known: Vec<&str> = names.values().copied().collect();
            bail!(
                "{}: no category '{wanted}' (categories: {known:?})",
                annotations.display()
            );
        }
    }
    let images: HashMap<u64, &CocoImage> = file.images.iter().map(|i| (i.id, i)).collect();
    let mut per_image: BTreeMap<u64, Vec<CocoObject>> = BTreeMap::new();
    for ann in &file.annotations {
        let category = names.get(&ann.category_id).copied().with_context(|| {
            format!(
                "{}: annotation {} has unknown category_id {}",
                annotations.display(),
                ann.id,
                ann.category_id
            )
        })?;
        if !categories.is_empty() && !categories.iter().any(|c| c == category) {
            continue;
        }
        if !images.contains_key(&ann.image_id) {
            bail!(
                "{}: annotation {} refers to unknown image_id {}",
                annotations.display(),
                ann.id,
                ann.image_id
            );
        }
        per_image.entry(ann.image_id).or_default().push(CocoObject {
            annotation_id: ann.id,
            category: category.to_string(),
            segmentation: ann.segmentation.clone(),
        });
    }
    let samples: Vec<Sample> = per_image
        .into_iter()
        .map(|(id, objects)| {
            let image = images[&id];
            Sample {
                image: images_dir.join(&image.file_name),
                annotations: Annotations::Coco {
                    width: image.width,
                    height: image.height,
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
