//! Generated masks as a COCO instance file: compressed RLE segmentations (what
//! `pycocotools.mask.decode` reads), the official record fields kept beside the COCO
//! ones, and one category. `samtune train` takes the file as a `coco` dataset.

use serde::Serialize;

use super::GeneratedMask;

#[derive(Debug, Serialize)]
pub struct CocoImage {
    pub id: u64,
    /// Relative to the image folder the file is used with.
    pub file_name: String,
    pub height: usize,
    pub width: usize,
}

#[derive(Debug, Serialize)]
struct Segmentation {
    size: [usize; 2],
    counts: String,
}

#[derive(Debug, Serialize)]
struct CocoAnnotation {
    id: u64,
    image_id: u64,
    category_id: u64,
    segmentation: Segmentation,
    area: usize,
    bbox: [usize; 4],
    iscrowd: u8,
    predicted_iou: f32,
    point_coords: [[f64; 2]; 1],
    stability_score: f32,
    crop_box: [usize; 4],
}

#[derive(Debug, Serialize)]
struct Category {
    id: u64,
    name: &'static str,
}

/// Accumulates images and their masks; annotation ids run from 1 in generation order.
#[derive(Debug, Default, Serialize)]
pub struct CocoWriter {
    images: Vec<CocoImage>,
    annotations: Vec<CocoAnnotation>,
    categories: Vec<Category>,
}

impl CocoWriter {
    pub fn new() -> Self {
        Self {
            categories: vec![Category {
                id: 1,
                name: "object",
            }],
            ..Self::default()
        }
    }

    pub fn add(&mut self, image: CocoImage, masks: &[GeneratedMask]) {
        for mask in masks {
            let id = self.annotations.len() as u64 + 1;
            self.annotations.push(CocoAnnotation {
                id,
                image_id: image.id,
                category_id: 1,
                segmentation: Segmentation {
                    size: [mask.rle.height, mask.rle.width],
                    counts: mask.rle.to_compressed(),
                },
                area: mask.area(),
                bbox: mask.bbox,
                iscrowd: 0,
                predicted_iou: mask.predicted_iou,
                point_coords: [mask.point_coords],
                stability_score: mask.stability_score,
                crop_box: mask.crop_box,
            });
        }
        self.images.push(image);
    }

    pub fn annotation_count(&self) -> usize {
        self.annotations.len()
    }

    pub fn to_json(&self) -> serde_json::Result<String> {
        serde_json::to_string(self)
    }
}
