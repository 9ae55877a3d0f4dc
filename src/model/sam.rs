//! The whole Segment Anything Model and its official presets
//! (`segment_anything/modeling/sam.py`, `segment_anything/build_sam.py`).

use std::fmt;
use std::str::FromStr;

use burn::config::Config;
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use super::image_encoder::{ImageEncoderViT, ImageEncoderViTConfig};
use super::mask_decoder::{DecoderOutput, MaskDecoder, MaskDecoderConfig};
use super::prompt_encoder::{PointPrompts, PromptEncoder, PromptEncoderConfig};
use super::transformer::TwoWayTransformerConfig;

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
    pub fn config(self) -> SamConfig {
        let (embed_dim, depth, num_heads, global) = match self {
            SamVariant::VitB => (768, 12, 12, vec![2, 5, 8, 11]),
            SamVariant::VitL => (1024, 24, 16, vec![5, 11, 17, 23]),
            SamVariant::VitH => (1280, 32, 16, vec![7, 15, 23, 31]),
        };
        SamConfig::with_defaults(
            ImageEncoderViTConfig::new()
                .with_embed_dim(embed_dim)
                .with_depth(depth)
                .with_num_heads(num_heads)
                .with_global_attn_indexes(global),
            DecoderSizes::official(),
        )
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

/// The prompt-encoder and decoder sizes that `build_sam.py` fixes (256-d prompts,
/// 16 mask channels, a 2-layer 8-head transformer with MLP 2048, IoU head 3 x 256).
#[derive(Config, Debug, PartialEq)]
pub struct DecoderSizes {
    #[config(default = 256)]
    pub prompt_embed_dim: usize,
    #[config(default = 16)]
    pub mask_in_chans: usize,
    #[config(default = 2)]
    pub depth: usize,
    #[config(default = 8)]
    pub num_heads: usize,
    #[config(default = 2048)]
    pub mlp_dim: usize,
    #[config(default = 3)]
    pub num_multimask_outputs: usize,
    #[config(default = 3)]
    pub iou_head_depth: usize,
    #[config(default = 256)]
    pub iou_head_hidden_dim: usize,
}

impl DecoderSizes {
    pub fn official() -> Self {
        Self::new()
    }
}

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
    /// A consistent configuration around an encoder, as `_build_sam` assembles one: the
    /// prompt dimension is the encoder's output channels, the grid its patch grid.
    pub fn with_defaults(image_encoder: ImageEncoderViTConfig, decoder: DecoderSizes) -> Self {
        let image_encoder = image_encoder.with_out_chans(decoder.prompt_embed_dim);
        let grid = image_encoder.grid_size();
        let prompt_encoder = PromptEncoderConfig::new()
            .with_embed_dim(decoder.prompt_embed_dim)
            .with_image_embedding_size([grid, grid])
            .with_input_image_size([image_encoder.img_size, image_encoder.img_size])
            .with_mask_in_chans(decoder.mask_in_chans);
        let mask_decoder = MaskDecoderConfig::new()
            .with_transformer_dim(decoder.prompt_embed_dim)
            .with_transformer(
                TwoWayTransformerConfig::new()
                    .with_depth(decoder.depth)
                    .with_embedding_dim(decoder.prompt_embed_dim)
                    .with_num_heads(decoder.num_heads)
                    .with_mlp_dim(decoder.mlp_dim),
            )
            .with_num_multimask_outputs(decoder.num_multimask_outputs)
            .with_iou_head_depth(decoder.iou_head_depth)
            .with_iou_head_hidden_dim(decoder.iou_head_hidden_dim);
        Self::new(image_encoder, prompt_encoder, mask_decoder)
    }

    /// The official preset this configuration equals, if any.
    pub fn variant(&self) -> Option<SamVariant> {
        SamVariant::ALL.into_iter().find(|v| v.config() == *self)
    }

    /// A short name: `vit_b`, `vit_l`, `vit_h` or `custom`.
    pub fn variant_name(&self) -> String {
        self.variant()
            .map(|v| v.name().to_string())
            .unwrap_or_else(|| "custom".to_string())
    }

    /// Checks the sizes that must agree between the three parts.
    pub fn validate(&self) -> Result<(), String> {
        let enc = &self.image_encoder;
        let dec = &self.mask_decoder;
        let pe = &self.prompt_encoder;
        let mut problems = Vec::new();
        if !enc.img_size.is_multiple_of(enc.patch_size) {
            problems.push(format!(
                "img_size {} is not a multiple of patch_size {}",
                enc.img_size, enc.patch_size
            ));
        }
        if !enc.embed_dim.is_multiple_of(enc.num_heads) {
            problems.push(format!(
                "embed_dim {} is not divisible by num_heads {}",
                enc.embed_dim, enc.num_heads
            ));
        }
        if let Some(&i) = enc.global_attn_indexes.iter().find(|&&i| i >= enc.depth) {
            problems.push(format!("global attention index {i} >= depth {}", enc.depth));
        }
        if pe.embed_dim != enc.out_chans || dec.transformer_dim != enc.out_chans {
            problems.push(format!(
                "encoder out_chans {}, prompt embed_dim {} and decoder transformer_dim {} must be equal",
                enc.out_chans, pe.embed_dim, dec.transformer_dim
            ));
        }
        let grid = enc.grid_size();
        if pe.image_embedding_size != [grid, grid] {
            problems.push(format!(
                "prompt encoder image_embedding_size {:?} != encoder grid [{grid}, {grid}]",
                pe.image_embedding_size
            ));
        }
        if pe.input_image_size != [enc.img_size, enc.img_size] {
            problems.push(format!(
                "prompt encoder input_image_size {:?} != encoder img_size {}",
                pe.input_image_size, enc.img_size
            ));
        }
        let internal = dec.transformer_dim / dec.transformer.attention_downsample_rate.max(1);
        if !internal.is_multiple_of(dec.transformer.num_heads) {
            problems.push(format!(
                "decoder num_heads {} must divide the cross-attention width {internal}",
                dec.transformer.num_heads
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

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
