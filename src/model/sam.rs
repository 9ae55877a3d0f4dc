//! The whole Segment Anything Model and its official presets
//! (`segment_anything/modeling/sam.py`, `segment_anything/build_sam.py`).

use std::fmt;
use std::str::FromStr;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::architecture::Architecture;
use super::image_encoder::{ImageEncoderViT, ImageEncoderViTConfig};
use super::mask_decoder::{DecoderOutput, MaskDecoder, MaskDecoderConfig};
use super::precision::{Precision, PrecisionError};
use super::prompt_encoder::{PointPrompts, PromptEncoder, PromptEncoderConfig};

/// The three released checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamVariant {
    VitB,
    VitL,
    VitH,
}

impl SamVariant {
    pub const ALL: [SamVariant; 3] = [SamVariant::VitB, SamVariant::VitL, SamVariant::VitH];

    pub fn name(self) -> &'static str {
        match self {
            SamVariant::VitB => "vit_b",
            SamVariant::VitL => "vit_l",
            SamVariant::VitH => "vit_h",
        }
    }

    /// `build_sam_vit_{b,l,h}`.
    pub fn architecture(self) -> Architecture {
        let (embed_dim, depth, num_heads, global) = match self {
            SamVariant::VitB => (768, 12, 12, vec![2, 5, 8, 11]),
            SamVariant::VitL => (1024, 24, 16, vec![5, 11, 17, 23]),
            SamVariant::VitH => (1280, 32, 16, vec![7, 15, 23, 31]),
        };
        let mut architecture = Architecture::default();
        let e = &mut architecture.image_encoder;
        e.embed_dim = embed_dim;
        e.depth = depth;
        e.num_heads = num_heads;
        e.global_attn_indexes = global;
        architecture
    }
}

impl fmt::Display for SamVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for SamVariant {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "vit_b" | "b" => Ok(SamVariant::VitB),
            "vit_l" | "l" => Ok(SamVariant::VitL),
            "vit_h" | "h" | "default" => Ok(SamVariant::VitH),
            _ => Err(format!(
                "unknown SAM variant '{s}' (expected vit_b, vit_l or vit_h)"
            )),
        }
    }
}

/// The module configurations of a SAM, made from the [`Architecture`] that describes it.
#[derive(Config, Debug, PartialEq)]
pub struct SamConfig {
    pub image_encoder: ImageEncoderViTConfig,
    pub prompt_encoder: PromptEncoderConfig,
    pub mask_decoder: MaskDecoderConfig,
    #[config(default = "[123.675, 116.28, 103.53]")]
    pub pixel_mean: [f32; 3],
    #[config(default = "[58.395, 57.12, 57.375]")]
    pub pixel_std: [f32; 3],
}

impl SamConfig {
    pub fn init(&self, device: &Device) -> Sam {
        Sam {
            image_encoder: self.image_encoder.init(device),
            prompt_encoder: self.prompt_encoder.init(device),
            mask_decoder: self.mask_decoder.init(device),
            img_size: self.image_encoder.img_size,
            pixel_mean: self.pixel_mean,
            pixel_std: self.pixel_std,
        }
    }
}

#[derive(Module, Debug)]
pub struct Sam {
    pub image_encoder: ImageEncoderViT,
    pub prompt_encoder: PromptEncoder,
    pub mask_decoder: MaskDecoder,
    /// Side of the square encoder input (1024 for the official models).
    pub img_size: usize,
    /// Pixel normalisation (not in the state_dict: non-persistent buffers upstream).
    #[module(skip)]
    pub pixel_mean: [f32; 3],
    #[module(skip)]
    pub pixel_std: [f32; 3],
}

/// Prompts for one image, batched over `B` prompt sets, in the model's input frame.
#[derive(Debug, Clone, Default)]
pub struct Prompts {
    pub points: Option<PointPrompts>,
    /// `[B, 4]` boxes as x0, y0, x1, y1.
    pub boxes: Option<Tensor<2>>,
    /// `[B, 1, 4H, 4W]` low-resolution mask logits.
    pub masks: Option<Tensor<4>>,
}

impl Sam {
    /// Encodes images in `precision` from now on, where `device` (the model's, not an
    /// autodiff wrapper of it) can run it.
    pub fn with_encoder_precision(
        mut self,
        precision: Precision,
        device: &Device,
    ) -> Result<Self, PrecisionError> {
        precision.check(device)?;
        self.image_encoder.precision = precision;
        Ok(self)
    }

    /// Prompt encoder + mask decoder on precomputed image embeddings
    /// (`[1 or B, C, H, W]`); all mask outputs, before multimask selection.
    pub fn decode(&self, image_embeddings: Tensor<4>, prompts: Prompts) -> DecoderOutput {
        self.decode_with_pe(
            image_embeddings,
            self.prompt_encoder.get_dense_pe(),
            prompts,
        )
    }

    /// [`Self::decode`] with the dense positional encoding `[1, C, H, W]` computed once by
    /// the caller (it depends on the weights only).
    pub fn decode_with_pe(
        &self,
        image_embeddings: Tensor<4>,
        dense_pe: Tensor<4>,
        prompts: Prompts,
    ) -> DecoderOutput {
        let (sparse, dense) =
            self.prompt_encoder
                .embed(prompts.points, prompts.boxes, prompts.masks);
        self.mask_decoder
            .predict_masks(image_embeddings, dense_pe, sparse, dense)
    }

    /// Upsamples low-resolution logits `[B, M, h, w]` to the encoder input size, removes
    /// the padding (`input_size` = resized image `[H, W]`) and resizes to `original_size`.
    pub fn postprocess_masks(
        &self,
        masks: Tensor<4>,
        input_size: [usize; 2],
        original_size: [usize; 2],
    ) -> Tensor<4> {
        let masks = bilinear(masks, [self.img_size, self.img_size]);
        let [b, m, _, _] = masks.dims();
        let masks = masks.slice([0..b, 0..m, 0..input_size[0], 0..input_size[1]]);
        bilinear(masks, original_size)
    }
}

/// `F.interpolate(x, size, mode="bilinear", align_corners=False)`.
pub fn bilinear(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    if [h, w] == size {
        return x;
    }
    super::kernels::bilinear::resize_bilinear(x, size)
}
