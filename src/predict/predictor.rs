//! Encode an image once, then answer many prompts (`SamPredictor`).

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use image::RgbImage;

use super::mask::BinaryMask;
use super::tensor_values;
use super::transforms::{apply_boxes, apply_coords, normalize_and_pad, resize_longest_side};
use crate::error::Result;
use crate::model::{PointPrompts, Prompts, Sam};

/// An image's embedding with the sizes needed to map masks back onto it.
#[derive(Debug, Clone)]
pub struct EncodedImage {
    /// `[1, C, H, W]`
    pub embedding: Tensor<4>,
    /// `[H, W]` of the image as given.
    pub original_size: [usize; 2],
    /// `[H, W]` after `ResizeLongestSide`, before padding.
    pub input_size: [usize; 2],
}

/// `B` prompt sets for one image, in original-image pixel coordinates.
#[derive(Debug, Clone, Default)]
pub struct PromptBatch {
    /// Per prompt set: points `(x, y)` with labels (1 foreground, 0 background); every
    /// set has the same number of points.
    pub points: Vec<Vec<([f64; 2], i64)>>,
    /// One `[x0, y0, x1, y1]` box per prompt set, or none.
    pub boxes: Vec<[f64; 4]>,
    /// `[B, 1, 4H, 4W]` low-resolution logits from an earlier prediction.
    pub mask_input: Option<Tensor<4>>,
}

impl PromptBatch {
    /// The prompt sets `samtune predict` builds: one per box (or a single one without
    /// boxes), each with the same points.
    pub fn from_boxes_and_points(boxes: Vec<[f64; 4]>, points: Vec<([f64; 2], i64)>) -> Self {
        let sets = boxes.len().max(1);
        Self {
            points: if points.is_empty() {
                Vec::new()
            } else {
                vec![points; sets]
            },
            boxes,
            mask_input: None,
        }
    }

    pub fn batch_size(&self) -> usize {
        self.points
            .len()
            .max(self.boxes.len())
            .max(self.mask_input.as_ref().map_or(0, |m| m.dims()[0]))
            .max(1)
    }

    /// Checks that the prompt kinds agree on the batch size and the point counts.
    pub fn validate(&self) -> Result<()> {
        let b = self.batch_size();
        if !self.points.is_empty() && self.points.len() != b {
            crate::error::bail!("{} point sets for a batch of {b}", self.points.len());
        }
        if !self.boxes.is_empty() && self.boxes.len() != b {
            crate::error::bail!("{} boxes for a batch of {b}", self.boxes.len());
        }
        if let Some(first) = self.points.first() {
            if self.points.iter().any(|p| p.len() != first.len()) {
                crate::error::bail!("every prompt set must have the same number of points");
            }
        }
        for b in &self.boxes {
            if !(b[2] >= b[0] && b[3] >= b[1]) || b.iter().any(|v| !v.is_finite()) {
                crate::error::bail!("box {b:?} must be x0,y0,x1,y1 with x0<=x1 and y0<=y1");
            }
        }
        Ok(())
    }

    /// The model-frame tensors for an image of `original_size`.
    pub fn to_prompts(
        &self,
        original_size: [usize; 2],
        img_size: usize,
        device: &Device,
    ) -> Prompts {
        let points = (!self.points.is_empty() && !self.points[0].is_empty()).then(|| {
            let b = self.points.len();
            let n = self.points[0].len();
            let mut coords = Vec::with_capacity(b * n * 2);
            let mut labels = Vec::with_capacity(b * n);
            for set in &self.points {
                let xy: Vec<[f64; 2]> = set.iter().map(|(p, _)| *p).collect();
                for [x, y] in apply_coords(&xy, original_size, img_size) {
                    coords.extend([x, y]);
                }
                labels.extend(set.iter().map(|(_, l)| *l));
            }
            PointPrompts {
                coords: Tensor::from_data(TensorData::new(coords, [b, n, 2]), device),
                labels: Tensor::<2, Int>::from_data(TensorData::new(labels, [b, n]), device),
            }
        });
        let boxes = (!self.boxes.is_empty()).then(|| {
            let flat: Vec<f32> = apply_boxes(&self.boxes, original_size, img_size)
                .into_iter()
                .flatten()
                .collect();
            Tensor::from_data(TensorData::new(flat, [self.boxes.len(), 4]), device)
        });
        Prompts {
            points,
            boxes,
            masks: self.mask_input.clone(),
        }
    }
}

/// Masks for `B` prompt sets, `M` masks each.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// `[B, M, 4H, 4W]` logits in the padded input frame (reusable as a mask input).
    pub low_res_logits: Tensor<4>,
    /// `[B, M]`
    pub iou_predictions: Tensor<2>,
    /// `[B, M, H, W]` logits at the original image size.
    pub logits: Tensor<4>,
}

impl Prediction {
    /// Binary masks: logits above the official threshold 0.0.
    pub fn masks(&self) -> Tensor<4, Bool> {
        self.logits.clone().greater_elem(0.0)
    }

    /// The logits at the original image size and the predicted IoUs, read back.
    pub fn planes(&self) -> Result<MaskPlanes> {
        MaskPlanes::read(self.logits.clone(), self.iou_predictions.clone())
    }
}

/// Mask logits `[B, M, H, W]` and predicted IoUs `[B, M]` read back from the device: the
/// one place where a prompt set's masks are chosen among and thresholded.
#[derive(Debug, Clone)]
pub struct MaskPlanes {
    /// `[B, M, H, W]`
    pub dims: [usize; 4],
    pub logits: Vec<f32>,
    pub ious: Vec<f32>,
}

impl MaskPlanes {
    pub fn read(logits: Tensor<4>, iou_predictions: Tensor<2>) -> Result<Self> {
        Ok(Self {
            dims: logits.dims(),
            logits: tensor_values(logits)?,
            ious: tensor_values(iou_predictions)?,
        })
    }

    /// Masks per prompt set.
    pub fn masks_per_set(&self) -> usize {
        self.dims[1]
    }

    /// The logits of mask `k` of prompt set `b`, `[H, W]` row-major.
    pub fn plane(&self, b: usize, k: usize) -> &[f32] {
        let [_, m, h, w] = self.dims;
        &self.logits[(b * m + k) * h * w..(b * m + k + 1) * h * w]
    }

    pub fn predicted_iou(&self, b: usize, k: usize) -> f32 {
        self.ious[b * self.dims[1] + k]
    }

    /// The mask of prompt set `b` with the highest predicted IoU, as SAM's users pick
    /// among the multimask outputs.
    pub fn best(&self, b: usize) -> usize {
        (0..self.dims[1])
            .max_by(|&x, &y| {
                self.predicted_iou(b, x)
                    .total_cmp(&self.predicted_iou(b, y))
            })
            .unwrap_or(0)
    }

    /// Mask `k` of prompt set `b` at the official threshold.
    pub fn binary(&self, b: usize, k: usize) -> BinaryMask {
        let [_, _, h, w] = self.dims;
        BinaryMask::from_logits(self.plane(b, k), w, h)
    }
}

/// Runs a loaded [`Sam`] on images and prompts.
pub struct Predictor<'a> {
    model: &'a Sam,
    /// The dense positional encoding depends on nothing but the weights: computed once.
    dense_pe: Tensor<4>,
}

impl<'a> Predictor<'a> {
    pub fn new(model: &'a Sam) -> Self {
        Self {
            model,
            dense_pe: model.prompt_encoder.get_dense_pe(),
        }
    }

    pub fn model(&self) -> &Sam {
        self.model
    }

    /// The device the model is on.
    pub fn device(&self) -> Device {
        self.dense_pe.device()
    }

    /// Resized, normalised and padded encoder input `[1, 3, S, S]`, and the resized size.
    pub fn preprocess(&self, image: &RgbImage) -> (Tensor<4>, [usize; 2]) {
        let resized = resize_longest_side(image, self.model.img_size);
        let input_size = [resized.height() as usize, resized.width() as usize];
        let device = self.dense_pe.device();
        let input = normalize_and_pad(
            &resized,
            self.model.img_size,
            self.model.pixel_mean,
            self.model.pixel_std,
            &device,
        );
        (input, input_size)
    }

    /// `set_image`: runs the image encoder.
    pub fn encode(&self, image: &RgbImage) -> EncodedImage {
        let (input, input_size) = self.preprocess(image);
        EncodedImage {
            embedding: self.model.image_encoder.forward(input),
            original_size: [image.height() as usize, image.width() as usize],
            input_size,
        }
    }

    /// `set_image` for several images at once: one encoder pass over a `[B, 3, S, S]`
    /// batch (on a GPU, each kernel launched once for all of them). Equal to encoding
    /// them one by one, up to the order of floating-point sums.
    pub fn encode_batch(&self, images: &[RgbImage]) -> Vec<EncodedImage> {
        let (inputs, input_sizes): (Vec<_>, Vec<_>) =
            images.iter().map(|image| self.preprocess(image)).unzip();
        if inputs.is_empty() {
            return Vec::new();
        }
        let embeddings = self.model.image_encoder.forward(Tensor::cat(inputs, 0));
        embeddings
            .split(1, 0)
            .into_iter()
            .zip(images.iter().zip(input_sizes))
            .map(|(embedding, (image, input_size))| EncodedImage {
                embedding,
                original_size: [image.height() as usize, image.width() as usize],
                input_size,
            })
            .collect()
    }

    /// `predict_torch`: masks for every prompt set of `prompts`.
    pub fn predict(
        &self,
        image: &EncodedImage,
        prompts: &PromptBatch,
        multimask_output: bool,
    ) -> Result<Prediction> {
        prompts.validate()?;
        let device = self.dense_pe.device();
        let prompts = prompts.to_prompts(image.original_size, self.model.img_size, &device);
        let output = self
            .model
            .decode_with_pe(image.embedding.clone(), self.dense_pe.clone(), prompts)
            .select(multimask_output);
        let logits = self.model.postprocess_masks(
            output.masks.clone(),
            image.input_size,
            image.original_size,
        );
        Ok(Prediction {
            low_res_logits: output.masks,
            iou_predictions: output.iou_predictions,
            logits,
        })
    }
}
