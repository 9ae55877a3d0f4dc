//! The architecture of a SAM, described once: the official presets, TOML files for
//! custom sizes (e.g. the bundled tiny SAM), what a checkpoint's shapes or metadata say.
//! Every field defaults to `build_sam_vit_b`'s value, so a file names only what differs;
//! unknown keys are errors. The module configs that build the model
//! ([`SamConfig`](super::SamConfig)) are derived from it, as `_build_sam` assembles them.
//!
//! ```toml
//! [image_encoder]
//! img_size = 256
//! patch_size = 8
//! embed_dim = 96
//! depth = 4
//! num_heads = 4
//! window_size = 8
//! global_attn_indexes = [1, 3]
//!
//! [decoder]
//! prompt_embed_dim = 64
//! mlp_dim = 256
//! ```

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::image_encoder::ImageEncoderViTConfig;
use super::mask_decoder::MaskDecoderConfig;
use super::prompt_encoder::PromptEncoderConfig;
use super::sam::{Sam, SamConfig, SamVariant};
use super::transformer::TwoWayTransformerConfig;

/// Sizes that do not fit together, or are out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ArchitectureError(pub String);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Architecture {
    pub image_encoder: EncoderArchitecture,
    /// The prompt encoder's and the mask decoder's sizes.
    pub decoder: DecoderArchitecture,
    /// Pixel normalisation (not in the state_dict: non-persistent buffers upstream).
    pub pixel_mean: [f32; 3],
    pub pixel_std: [f32; 3],
}

/// `ImageEncoderViT` (its output width is the decoder's `prompt_embed_dim`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderArchitecture {
    pub img_size: usize,
    pub patch_size: usize,
    pub in_chans: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub qkv_bias: bool,
    pub use_abs_pos: bool,
    pub use_rel_pos: bool,
    /// 0: every block global.
    pub window_size: usize,
    pub global_attn_indexes: Vec<usize>,
}

/// What `build_sam.py` fixes for every variant: 256-d prompts, 16 mask channels, a
/// 2-layer 8-head transformer with MLP 2048 and cross-attention at half width, 3 + 1
/// masks, an IoU head of 3 x 256.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecoderArchitecture {
    pub prompt_embed_dim: usize,
    pub mask_in_chans: usize,
    /// Two-way transformer depth, heads and MLP width.
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_dim: usize,
    pub attention_downsample_rate: usize,
    pub num_multimask_outputs: usize,
    pub iou_head_depth: usize,
    pub iou_head_hidden_dim: usize,
    /// Classes of samtune's prompt-free multi-class head (`task = "semantic"`); 0: none.
    #[serde(skip_serializing_if = "is_zero")]
    pub semantic_classes: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Default for EncoderArchitecture {
    fn default() -> Self {
        Self {
            img_size: 1024,
            patch_size: 16,
            in_chans: 3,
            embed_dim: 768,
            depth: 12,
            num_heads: 12,
            mlp_ratio: 4.0,
            qkv_bias: true,
            use_abs_pos: true,
            use_rel_pos: true,
            window_size: 14,
            global_attn_indexes: vec![2, 5, 8, 11],
        }
    }
}

impl Default for DecoderArchitecture {
    fn default() -> Self {
        Self {
            prompt_embed_dim: 256,
            mask_in_chans: 16,
            depth: 2,
            num_heads: 8,
            mlp_dim: 2048,
            attention_downsample_rate: 2,
            num_multimask_outputs: 3,
            iou_head_depth: 3,
            iou_head_hidden_dim: 256,
            semantic_classes: 0,
        }
    }
}

impl Default for Architecture {
    fn default() -> Self {
        Self {
            image_encoder: EncoderArchitecture::default(),
            decoder: DecoderArchitecture::default(),
            pixel_mean: [123.675, 116.28, 103.53],
            pixel_std: [58.395, 57.12, 57.375],
        }
    }
}

impl Architecture {
    /// The encoder's patch grid side (the image embedding is `grid x grid`).
    pub fn grid(&self) -> usize {
        self.image_encoder.img_size / self.image_encoder.patch_size.max(1)
    }

    /// The official preset this architecture equals, if any.
    pub fn variant(&self) -> Option<SamVariant> {
        SamVariant::ALL
            .into_iter()
            .find(|v| v.architecture() == *self)
    }

    /// `vit_b`, or a one-line description of a custom architecture.
    pub fn describe(&self) -> String {
        match self.variant() {
            Some(v) => v.to_string(),
            None => {
                let e = &self.image_encoder;
                format!(
                    "a custom SAM (image {}, embed {}, depth {}, heads {}, global blocks {:?})",
                    e.img_size, e.embed_dim, e.depth, e.num_heads, e.global_attn_indexes
                )
            }
        }
    }

    /// Checks that every size is in range and that the parts fit together.
    pub fn validate(&self) -> Result<(), ArchitectureError> {
        let e = &self.image_encoder;
        let d = &self.decoder;
        let positive = [
            ("image_encoder.img_size", e.img_size),
            ("image_encoder.patch_size", e.patch_size),
            ("image_encoder.in_chans", e.in_chans),
            ("image_encoder.embed_dim", e.embed_dim),
            ("image_encoder.depth", e.depth),
            ("image_encoder.num_heads", e.num_heads),
            ("decoder.prompt_embed_dim", d.prompt_embed_dim),
            ("decoder.mask_in_chans", d.mask_in_chans),
            ("decoder.num_heads", d.num_heads),
            ("decoder.mlp_dim", d.mlp_dim),
            (
                "decoder.attention_downsample_rate",
                d.attention_downsample_rate,
            ),
            ("decoder.iou_head_depth", d.iou_head_depth),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ArchitectureError(format!("{key} must be > 0")));
        }
        let mut problems = Vec::new();
        if e.mlp_ratio.is_nan() || e.mlp_ratio <= 0.0 {
            problems.push(format!(
                "image_encoder.mlp_ratio {} must be > 0",
                e.mlp_ratio
            ));
        }
        if !e.img_size.is_multiple_of(e.patch_size) {
            problems.push(format!(
                "img_size {} is not a multiple of patch_size {}",
                e.img_size, e.patch_size
            ));
        }
        if !e.embed_dim.is_multiple_of(e.num_heads) {
            problems.push(format!(
                "embed_dim {} is not divisible by num_heads {}",
                e.embed_dim, e.num_heads
            ));
        }
        if let Some(&i) = e.global_attn_indexes.iter().find(|&&i| i >= e.depth) {
            problems.push(format!("global attention index {i} >= depth {}", e.depth));
        }
        if !d.prompt_embed_dim.is_multiple_of(8) {
            // the hypernetwork MLPs map to prompt_embed_dim / 8 mask channels
            problems.push(format!(
                "decoder.prompt_embed_dim {} must be a multiple of 8",
                d.prompt_embed_dim
            ));
        }
        let internal = d.prompt_embed_dim / d.attention_downsample_rate;
        if !internal.is_multiple_of(d.num_heads) {
            problems.push(format!(
                "decoder num_heads {} must divide the cross-attention width {internal}",
                d.num_heads
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ArchitectureError(problems.join("; ")))
        }
    }

    /// The module configurations, as `_build_sam` assembles them: the prompt dimension
    /// is the encoder's output channels, the grid its patch grid.
    pub fn sam_config(&self) -> SamConfig {
        let e = &self.image_encoder;
        let d = &self.decoder;
        let image_encoder = ImageEncoderViTConfig::new()
            .with_img_size(e.img_size)
            .with_patch_size(e.patch_size)
            .with_in_chans(e.in_chans)
            .with_embed_dim(e.embed_dim)
            .with_depth(e.depth)
            .with_num_heads(e.num_heads)
            .with_mlp_ratio(e.mlp_ratio)
            .with_out_chans(d.prompt_embed_dim)
            .with_qkv_bias(e.qkv_bias)
            .with_use_abs_pos(e.use_abs_pos)
            .with_use_rel_pos(e.use_rel_pos)
            .with_window_size(e.window_size)
            .with_global_attn_indexes(e.global_attn_indexes.clone());
        let grid = self.grid();
        let prompt_encoder = PromptEncoderConfig::new()
            .with_embed_dim(d.prompt_embed_dim)
            .with_image_embedding_size([grid, grid])
            .with_input_image_size([e.img_size, e.img_size])
            .with_mask_in_chans(d.mask_in_chans);
        let mask_decoder = MaskDecoderConfig::new()
            .with_transformer_dim(d.prompt_embed_dim)
            .with_transformer(
                TwoWayTransformerConfig::new()
                    .with_depth(d.depth)
                    .with_embedding_dim(d.prompt_embed_dim)
                    .with_num_heads(d.num_heads)
                    .with_mlp_dim(d.mlp_dim)
                    .with_attention_downsample_rate(d.attention_downsample_rate),
            )
            .with_num_multimask_outputs(d.num_multimask_outputs)
            .with_iou_head_depth(d.iou_head_depth)
            .with_iou_head_hidden_dim(d.iou_head_hidden_dim)
            .with_semantic_classes(d.semantic_classes);
        SamConfig::new(image_encoder, prompt_encoder, mask_decoder)
            .with_pixel_mean(self.pixel_mean)
            .with_pixel_std(self.pixel_std)
    }

    /// A model of this architecture (weights initialised as the official code does).
    pub fn init(&self, device: &Device) -> Sam {
        self.sam_config().init(device)
    }
}

/// `vit_b`, `vit_l`, `vit_h`, or the path of an architecture TOML file.
pub fn resolve_architecture(arch: &str) -> crate::error::Result<Architecture> {
    use crate::error::{Context, Error};
    let path = std::path::Path::new(arch);
    if let Ok(variant) = arch.parse::<SamVariant>() {
        if !path.exists() {
            return Ok(variant.architecture());
        }
    }
    if !path.is_file() {
        crate::error::bail!(
            "--arch {arch}: neither vit_b, vit_l, vit_h nor an architecture TOML file"
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let architecture: Architecture =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    architecture.validate().map_err(|e| Error::file(path, e))?;
    Ok(architecture)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_vit_b() {
        assert_eq!(Architecture::default().variant(), Some(SamVariant::VitB));
    }

    #[test]
    fn a_file_names_only_what_differs_and_unknown_keys_fail() {
        let arch: Architecture = toml::from_str(
            "[image_encoder]\nimg_size = 256\npatch_size = 8\nembed_dim = 96\ndepth = 4\n\
             num_heads = 4\nwindow_size = 8\nglobal_attn_indexes = [1, 3]\n\
             [decoder]\nprompt_embed_dim = 64\nmlp_dim = 256\n",
        )
        .unwrap();
        arch.validate().unwrap();
        let config = arch.sam_config();
        assert_eq!(config.image_encoder.grid_size(), 32);
        assert_eq!(config.prompt_encoder.image_embedding_size, [32, 32]);
        assert_eq!(config.mask_decoder.transformer.mlp_dim, 256);
        assert_eq!(config.mask_decoder.transformer.num_heads, 8);
        assert_eq!(arch.variant(), None);

        let unknown = toml::from_str::<Architecture>("[decoder]\nheads = 4\n");
        assert!(unknown.unwrap_err().to_string().contains("heads"));
    }

    #[test]
    fn sizes_that_do_not_fit_are_named() {
        let mut arch = Architecture::default();
        arch.image_encoder.global_attn_indexes = vec![12];
        assert!(arch
            .validate()
            .unwrap_err()
            .0
            .contains("global attention index 12"));
        let mut arch = Architecture::default();
        arch.decoder.prompt_embed_dim = 60;
        assert!(arch
            .validate()
            .unwrap_err()
            .0
            .contains("prompt_embed_dim 60"));
        let mut arch = Architecture::default();
        arch.image_encoder.patch_size = 0;
        assert!(arch.validate().unwrap_err().0.contains("patch_size"));
    }
}
