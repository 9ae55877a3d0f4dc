//! `SamAutomaticMaskGenerator` (`segment_anything/automatic_mask_generator.py`): a grid of
//! single-point prompts over the image (and over overlapping crops), masks filtered by
//! predicted IoU and stability, duplicates removed by box NMS, small holes and islands
//! cleaned up. Same settings, same order, same output fields as the official one.

use crate::error::{bail, Result};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::amg::{
    build_all_layer_point_grids, generate_crop_boxes, is_box_near_crop_edge, mask_to_box, nms,
    remove_small_regions, stability_score, CropBox, RegionMode,
};
use crate::data::{BinaryMask, Rle};
use crate::predict::{tensor_values, Predictor, PromptBatch};

/// The generator's settings; defaults are the official ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmgSettings {
    /// Points per side of the grid (`points_per_side^2` prompts); exclusive with
    /// `point_grids`.
    pub points_per_side: Option<usize>,
    /// Explicit grids, normalised to [0, 1], one per crop layer.
    pub point_grids: Option<Vec<Vec<[f64; 2]>>>,
    /// Prompts decoded together (memory: 3 masks at image size per prompt).
    pub points_per_batch: usize,
    pub pred_iou_thresh: f64,
    pub stability_score_thresh: f64,
    pub stability_score_offset: f64,
    pub box_nms_thresh: f64,
    pub crop_n_layers: usize,
    pub crop_nms_thresh: f64,
    pub crop_overlap_ratio: f64,
    pub crop_n_points_downscale_factor: usize,
    /// Holes and islands smaller than this are removed (0: off).
    pub min_mask_region_area: usize,
}

impl Default for AmgSettings {
    fn default() -> Self {
        Self {
            points_per_side: Some(32),
            point_grids: None,
            points_per_batch: 64,
            pred_iou_thresh: 0.88,
            stability_score_thresh: 0.95,
            stability_score_offset: 1.0,
            box_nms_thresh: 0.7,
            crop_n_layers: 0,
            crop_nms_thresh: 0.7,
            crop_overlap_ratio: 512.0 / 1500.0,
            crop_n_points_downscale_factor: 1,
            min_mask_region_area: 0,
        }
    }
}

impl AmgSettings {
    /// The auto-annotation settings of the reference document (32 points per side,
    /// predicted IoU above 0.86, stability at least 0.92).
    pub fn reference_document() -> Self {
        Self {
            pred_iou_thresh: 0.86,
            stability_score_thresh: 0.92,
            ..Self::default()
        }
    }

    /// The point grid of every crop layer, checked against the other settings.
    pub fn point_grids(&self) -> Result<Vec<Vec<[f64; 2]>>> {
        let grids = match (&self.points_per_side, &self.point_grids) {
            (Some(n), None) => {
                if *n == 0 {
                    bail!("points_per_side must be > 0");
                }
                if self.crop_n_points_downscale_factor == 0 {
                    bail!("crop_n_points_downscale_factor must be >= 1");
                }
                build_all_layer_point_grids(
                    *n,
                    self.crop_n_layers,
                    self.crop_n_points_downscale_factor,
                )
            }
            (None, Some(grids)) => grids.clone(),
            _ => bail!("exactly one of points_per_side and point_grids must be given"),
        };
        if grids.len() <= self.crop_n_layers {
            bail!(
                "{} point grid(s) for {} crop layer(s): one grid per layer (layer 0 is the whole image)",
                grids.len(),
                self.crop_n_layers + 1
            );
        }
        if self.points_per_batch == 0 {
            bail!("points_per_batch must be > 0");
        }
        if let Some(p) = grids
            .iter()
            .flatten()
            .find(|p| !(0.0..=1.0).contains(&p[0]) || !(0.0..=1.0).contains(&p[1]))
        {
            bail!("point grid coordinates must lie in [0, 1], found {p:?}");
        }
        Ok(grids)
    }
}

/// One generated mask, with the official record's fields.
#[derive(Debug, Clone)]
pub struct GeneratedMask {
    pub rle: Rle,
    /// `[x, y, w, h]`, where `w = x1 - x0` of the inclusive box (as the official code).
    pub bbox: [usize; 4],
    pub predicted_iou: f32,
    /// The prompt point, in image pixels.
    pub point_coords: [f64; 2],
    pub stability_score: f32,
    /// `[x, y, w, h]` of the crop the mask was found in.
    pub crop_box: [usize; 4],
}

impl GeneratedMask {
    /// `area_from_rle`.
    pub fn area(&self) -> usize {
        self.rle
            .counts
            .iter()
            .skip(1)
            .step_by(2)
            .map(|&c| c as usize)
            .sum()
    }
}

/// A candidate before the final filtering: its box in image coordinates is what the NMS
/// passes compare.
struct Candidate {
    mask: GeneratedMask,
    xyxy: [usize; 4],
}

fn as_f32(b: [usize; 4]) -> [f32; 4] {
    b.map(|v| v as f32)
}

/// Runs the generator on images with one model.
pub struct MaskGenerator<'a> {
    predictor: Predictor<'a>,
    settings: AmgSettings,
    grids: Vec<Vec<[f64; 2]>>,
}

impl<'a> MaskGenerator<'a> {
    pub fn new(predictor: Predictor<'a>, settings: AmgSettings) -> Result<Self> {
        let grids = settings.point_grids()?;
        Ok(Self {
            predictor,
            settings,
            grids,
        })
    }

    /// `generate`: every mask found in `image`, in the official order.
    pub fn generate(&self, image: &RgbImage) -> Result<Vec<GeneratedMask>> {
        self.generate_with(image, None, &|_, _| {})
    }

    /// [`Self::generate`] with the whole image's embedding when it is at hand (`encoded`,
    /// e.g. from the embedding cache: the first crop is not encoded again), telling
    /// `progress(done, total)` after each batch of points.
    pub fn generate_with(
        &self,
        image: &RgbImage,
        encoded: Option<&crate::predict::EncodedImage>,
        progress: &dyn Fn(usize, usize),
    ) -> Result<Vec<GeneratedMask>> {
        let (height, width) = (image.height() as usize, image.width() as usize);
        let crops = generate_crop_boxes(
            height,
            width,
            self.settings.crop_n_layers,
            self.settings.crop_overlap_ratio,
        );
        let batches = |crop: &CropBox| {
            self.grids[crop.layer]
                .len()
                .div_ceil(self.settings.points_per_batch)
        };
        let total: usize = crops.iter().map(batches).sum();
        let mut done = 0;
        let mut candidates = Vec::new();
        for crop in &crops {
            let whole = (crop.layer == 0).then_some(encoded).flatten();
            let step = |batch: usize| progress(done + batch, total);
            candidates.extend(self.process_crop(image, crop, whole, &step)?);
            done += batches(crop);
        }
        if crops.len() > 1 {
            // smaller crops win: their masks see the object at a higher resolution
            let scores: Vec<f32> = candidates
                .iter()
                .map(|c| 1.0 / (c.mask.crop_box[2] * c.mask.crop_box[3]) as f32)
                .collect();
            let boxes: Vec<[f32; 4]> = candidates.iter().map(|c| as_f32(c.xyxy)).collect();
            let keep = nms(&boxes, &scores, self.settings.crop_nms_thresh);
            candidates = select(candidates, &keep);
        }
        if self.settings.min_mask_region_area > 0 {
            candidates = self.remove_small_regions(candidates)?;
        }
        Ok(candidates.into_iter().map(|c| c.mask).collect())
    }

    fn process_crop(
        &self,
        image: &RgbImage,
        crop: &CropBox,
        whole: Option<&crate::predict::EncodedImage>,
        progress: &dyn Fn(usize),
    ) -> Result<Vec<Candidate>> {
        let [x0, y0, _, _] = crop.xyxy;
        let cropped = image::imageops::crop_imm(
            image,
            x0 as u32,
            y0 as u32,
            crop.width() as u32,
            crop.height() as u32,
        )
        .to_image();
        // the first layer's crop is the whole image
        let encoded = match whole {
            Some(encoded) => encoded.clone(),
            None => self.predictor.encode(&cropped),
        };
        let scale = [crop.width() as f64, crop.height() as f64];
        let points: Vec<[f64; 2]> = self.grids[crop.layer]
            .iter()
            .map(|p| [p[0] * scale[0], p[1] * scale[1]])
            .collect();
        let mut candidates = Vec::new();
        for (i, batch) in points.chunks(self.settings.points_per_batch).enumerate() {
            candidates.extend(self.process_batch(&encoded, batch, crop, image)?);
            progress(i + 1);
        }
        let boxes: Vec<[f32; 4]> = candidates.iter().map(|c| as_f32(c.xyxy)).collect();
        let scores: Vec<f32> = candidates.iter().map(|c| c.mask.predicted_iou).collect();
        let keep = nms(&boxes, &scores, self.settings.box_nms_thresh);
        let mut kept = select(candidates, &keep);
        for c in &mut kept {
            // to image coordinates
            c.xyxy = [
                c.xyxy[0] + x0,
                c.xyxy[1] + y0,
                c.xyxy[2] + x0,
                c.xyxy[3] + y0,
            ];
            c.mask.bbox = xywh(c.xyxy);
            c.mask.point_coords = [
                c.mask.point_coords[0] + x0 as f64,
                c.mask.point_coords[1] + y0 as f64,
            ];
        }
        Ok(kept)
    }

    fn process_batch(
        &self,
        encoded: &crate::predict::EncodedImage,
        points: &[[f64; 2]],
        crop: &CropBox,
        image: &RgbImage,
    ) -> Result<Vec<Candidate>> {
        let s = &self.settings;
        let prompts = PromptBatch {
            points: points.iter().map(|&p| vec![(p, 1)]).collect(),
            boxes: Vec::new(),
            mask_input: None,
        };
        let prediction = self
            .predictor
            .predict(encoded, &prompts, true)
            .map_err(crate::error::Error::msg)?;
        let [_, m, h, w] = prediction.logits.dims();
        let logits = tensor_values(prediction.logits)?;
        let ious = tensor_values(prediction.iou_predictions)?;
        let (image_w, image_h) = (image.width() as usize, image.height() as usize);
        let mut out = Vec::new();
        for (b, point) in points.iter().enumerate() {
            for k in 0..m {
                let predicted_iou = ious[b * m + k];
                // thresholds compare in float32, as torch does with a float32 tensor
                let confident = predicted_iou > s.pred_iou_thresh as f32;
                if s.pred_iou_thresh > 0.0 && !confident {
                    continue;
                }
                let plane = &logits[(b * m + k) * h * w..(b * m + k + 1) * h * w];
                let stability = stability_score(plane, 0.0, s.stability_score_offset as f32);
                // NaN (nothing above the low cut-off) fails the filter, as in torch
                let stable = stability >= s.stability_score_thresh as f32;
                if s.stability_score_thresh > 0.0 && !stable {
                    continue;
                }
                let mask = BinaryMask {
                    width: w,
                    height: h,
                    data: plane.iter().map(|&v| (v > 0.0) as u8).collect(),
                };
                let xyxy = mask_to_box(&mask);
                if is_box_near_crop_edge(xyxy, crop, [0, 0, image_w, image_h]) {
                    continue;
                }
                let full = uncrop_mask(&mask, crop, image_w, image_h);
                out.push(Candidate {
                    mask: GeneratedMask {
                        rle: Rle::encode(&full),
                        bbox: xywh(xyxy),
                        predicted_iou,
                        point_coords: *point,
                        stability_score: stability,
                        crop_box: crop.xywh(),
                    },
                    xyxy,
                });
            }
        }
        Ok(out)
    }

    /// `postprocess_small_regions`: holes and islands removed, then NMS again in which
    /// unchanged masks win over changed ones.
    fn remove_small_regions(&self, candidates: Vec<Candidate>) -> Result<Vec<Candidate>> {
        if candidates.is_empty() {
            return Ok(candidates);
        }
        let area = self.settings.min_mask_region_area as f64;
        let mut cleaned = Vec::with_capacity(candidates.len());
        for c in &candidates {
            let mask = c.mask.rle.decode()?;
            let (mask, holes_changed) = remove_small_regions(&mask, area, RegionMode::Holes);
            let (mask, islands_changed) = remove_small_regions(&mask, area, RegionMode::Islands);
            let unchanged = !holes_changed && !islands_changed;
            cleaned.push((mask, unchanged));
        }
        let boxes: Vec<[f32; 4]> = cleaned
            .iter()
            .map(|(m, _)| as_f32(mask_to_box(m)))
            .collect();
        let scores: Vec<f32> = cleaned.iter().map(|(_, u)| *u as u8 as f32).collect();
        let threshold = self
            .settings
            .box_nms_thresh
            .max(self.settings.crop_nms_thresh);
        let keep = nms(&boxes, &scores, threshold);
        let mut candidates = candidates;
        for &i in &keep {
            let (mask, unchanged) = &cleaned[i];
            if !unchanged {
                let xyxy = mask_to_box(mask);
                candidates[i].mask.rle = Rle::encode(mask);
                candidates[i].xyxy = xyxy;
                candidates[i].mask.bbox = xywh(xyxy);
            }
        }
        Ok(select(candidates, &keep))
    }
}

/// `box_xyxy_to_xywh`.
fn xywh(b: [usize; 4]) -> [usize; 4] {
    [b[0], b[1], b[2] - b[0], b[3] - b[1]]
}

/// The items at `keep`, in that order.
fn select<T>(items: Vec<T>, keep: &[usize]) -> Vec<T> {
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    keep.iter().filter_map(|&i| slots[i].take()).collect()
}

/// `uncrop_masks`: a crop's mask placed in an image-sized one.
fn uncrop_mask(mask: &BinaryMask, crop: &CropBox, width: usize, height: usize) -> BinaryMask {
    if crop.xyxy == [0, 0, width, height] {
        return mask.clone();
    }
    let mut full = BinaryMask::empty(width, height);
    let [x0, y0, _, _] = crop.xyxy;
    for y in 0..mask.height {
        let row = &mask.data[y * mask.width..(y + 1) * mask.width];
        let start = (y + y0) * width + x0;
        full.data[start..start + mask.width].copy_from_slice(row);
    }
    full
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        assert!(AmgSettings::default().point_grids().is_ok());
        let both = AmgSettings {
            point_grids: Some(vec![vec![[0.5, 0.5]]]),
            ..AmgSettings::default()
        };
        assert!(both
            .point_grids()
            .unwrap_err()
            .to_string()
            .contains("exactly one"));
        let too_few = AmgSettings {
            points_per_side: None,
            point_grids: Some(vec![vec![[0.5, 0.5]]]),
            crop_n_layers: 1,
            ..AmgSettings::default()
        };
        assert!(too_few
            .point_grids()
            .unwrap_err()
            .to_string()
            .contains("one grid per layer"));
        let outside = AmgSettings {
            points_per_side: None,
            point_grids: Some(vec![vec![[1.5, 0.5]]]),
            ..AmgSettings::default()
        };
        assert!(outside
            .point_grids()
            .unwrap_err()
            .to_string()
            .contains("[0, 1]"));
        let reference = AmgSettings::reference_document();
        assert_eq!(
            (
                reference.points_per_side,
                reference.pred_iou_thresh,
                reference.stability_score_thresh
            ),
            (Some(32), 0.86, 0.92)
        );
    }

    #[test]
    fn uncropped_masks_sit_at_the_crop_offset() {
        let crop = CropBox {
            xyxy: [2, 1, 4, 3],
            layer: 1,
        };
        let mask = BinaryMask::from_fn(2, 2, |x, y| x == 1 && y == 0);
        let full = uncrop_mask(&mask, &crop, 5, 4);
        assert_eq!(full.area(), 1);
        assert!(full.get(3, 1));
    }

    #[test]
    fn select_reorders_and_drops() {
        assert_eq!(select(vec!['a', 'b', 'c', 'd'], &[2, 0]), vec!['c', 'a']);
    }

    #[test]
    fn area_counts_the_foreground_runs() {
        let mask = BinaryMask::from_fn(3, 2, |x, _| x > 0);
        let g = GeneratedMask {
            rle: Rle::encode(&mask),
            bbox: [1, 0, 1, 1],
            predicted_iou: 0.9,
            point_coords: [1.0, 1.0],
            stability_score: 1.0,
            crop_box: [0, 0, 3, 2],
        };
        assert_eq!(g.area(), 4);
    }
}
