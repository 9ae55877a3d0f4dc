//! Architectures described in TOML, for models that are not one of the official presets
//! (e.g. the bundled tiny SAM). Every field defaults to `build_sam_vit_b`'s value, so a
//! file names only what differs; unknown keys are errors.
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

use std::path::Path;

use crate::error::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::{DecoderSizes, ImageEncoderViTConfig, SamConfig, SamVariant};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EncoderSpec {
    pub img_size: usize,
    pub patch_size: usize,
    pub embed_dim: usize,
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_ratio: f64,
    pub window_size: usize,
    pub global_attn_indexes: Vec<usize>,
}

impl Default for EncoderSpec {
    fn default() -> Self {
        let vit_b = ImageEncoderViTConfig::new();
        Self {
            img_size: vit_b.img_size,
            patch_size: vit_b.patch_size,
            embed_dim: vit_b.embed_dim,
            depth: vit_b.depth,
            num_heads: vit_b.num_heads,
            mlp_ratio: vit_b.mlp_ratio,
            window_size: vit_b.window_size,
            global_attn_indexes: vit_b.global_attn_indexes,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecoderSpec {
    pub prompt_embed_dim: usize,
    pub mask_in_chans: usize,
    /// Two-way transformer depth, heads and MLP width.
    pub depth: usize,
    pub num_heads: usize,
    pub mlp_dim: usize,
    pub iou_head_depth: usize,
    pub iou_head_hidden_dim: usize,
}

impl Default for DecoderSpec {
    fn default() -> Self {
        let official = DecoderSizes::official();
        Self {
            prompt_embed_dim: official.prompt_embed_dim,
            mask_in_chans: official.mask_in_chans,
            depth: official.depth,
            num_heads: official.num_heads,
            mlp_dim: official.mlp_dim,
            iou_head_depth: official.iou_head_depth,
            iou_head_hidden_dim: official.iou_head_hidden_dim,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchitectureSpec {
    pub image_encoder: EncoderSpec,
    pub decoder: DecoderSpec,
}

impl ArchitectureSpec {
    /// The model configuration, checked for sizes that do not fit together.
    pub fn to_config(&self) -> Result<SamConfig, String> {
        let e = &self.image_encoder;
        let d = &self.decoder;
        let encoder = ImageEncoderViTConfig::new()
            .with_img_size(e.img_size)
            .with_patch_size(e.patch_size)
            .with_embed_dim(e.embed_dim)
            .with_depth(e.depth)
            .with_num_heads(e.num_heads)
            .with_mlp_ratio(e.mlp_ratio)
            .with_window_size(e.window_size)
            .with_global_attn_indexes(e.global_attn_indexes.clone());
        let decoder = DecoderSizes::new()
            .with_prompt_embed_dim(d.prompt_embed_dim)
            .with_mask_in_chans(d.mask_in_chans)
            .with_depth(d.depth)
            .with_num_heads(d.num_heads)
            .with_mlp_dim(d.mlp_dim)
            .with_iou_head_depth(d.iou_head_depth)
            .with_iou_head_hidden_dim(d.iou_head_hidden_dim);
        let zero = [
            ("image_encoder.img_size", e.img_size),
            ("image_encoder.patch_size", e.patch_size),
            ("image_encoder.embed_dim", e.embed_dim),
            ("image_encoder.depth", e.depth),
            ("image_encoder.num_heads", e.num_heads),
            ("decoder.prompt_embed_dim", d.prompt_embed_dim),
            ("decoder.mask_in_chans", d.mask_in_chans),
            ("decoder.num_heads", d.num_heads),
            ("decoder.mlp_dim", d.mlp_dim),
            ("decoder.iou_head_depth", d.iou_head_depth),
        ];
        if let Some((key, _)) = zero.iter().find(|(_, v)| *v == 0) {
            return Err(format!("{key} must be > 0"));
        }
        if e.mlp_ratio.is_nan() || e.mlp_ratio <= 0.0 {
            return Err(format!(
                "image_encoder.mlp_ratio {} must be > 0",
                e.mlp_ratio
            ));
        }
        if !d.prompt_embed_dim.is_multiple_of(8) {
            // the hypernetwork MLPs map to prompt_embed_dim / 8 mask channels
            return Err(format!(
                "decoder.prompt_embed_dim {} must be a multiple of 8",
                d.prompt_embed_dim
            ));
        }
        let config = SamConfig::with_defaults(encoder, decoder);
        config.validate()?;
        Ok(config)
    }
}

/// `vit_b`, `vit_l`, `vit_h`, or the path of an architecture TOML file.
pub fn resolve_architecture(arch: &str) -> Result<SamConfig> {
    if let Ok(variant) = arch.parse::<SamVariant>() {
        if !Path::new(arch).exists() {
            return Ok(variant.config());
        }
    }
    let path = Path::new(arch);
    if !path.is_file() {
        bail!("--arch {arch}: neither vit_b, vit_l, vit_h nor an architecture TOML file");
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let spec: ArchitectureSpec =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    spec.to_config()
        .map_err(|e| crate::error::err!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_vit_b() {
        let config = ArchitectureSpec::default().to_config().unwrap();
        assert_eq!(config.variant(), Some(SamVariant::VitB));
    }

    #[test]
    fn a_file_names_only_what_differs_and_unknown_keys_fail() {
        let spec: ArchitectureSpec = toml::from_str(
            "[image_encoder]\nimg_size = 256\npatch_size = 8\nembed_dim = 96\ndepth = 4\n\
             num_heads = 4\nwindow_size = 8\nglobal_attn_indexes = [1, 3]\n\
             [decoder]\nprompt_embed_dim = 64\nmlp_dim = 256\n",
        )
        .unwrap();
        let config = spec.to_config().unwrap();
        assert_eq!(config.image_encoder.grid_size(), 32);
        assert_eq!(config.prompt_encoder.image_embedding_size, [32, 32]);
        assert_eq!(config.mask_decoder.transformer.mlp_dim, 256);
        assert_eq!(config.mask_decoder.transformer.num_heads, 8);
        assert_eq!(config.variant(), None);

        let unknown = toml::from_str::<ArchitectureSpec>("[decoder]\nheads = 4\n");
        assert!(unknown.unwrap_err().to_string().contains("heads"));
    }

    #[test]
    fn sizes_that_do_not_fit_are_named() {
        let mut spec = ArchitectureSpec::default();
        spec.image_encoder.global_attn_indexes = vec![12];
        assert!(spec
            .to_config()
            .unwrap_err()
            .contains("global attention index 12"));
        let mut spec = ArchitectureSpec::default();
        spec.decoder.prompt_embed_dim = 60;
        assert!(spec
            .to_config()
            .unwrap_err()
            .contains("prompt_embed_dim 60"));
        let mut spec = ArchitectureSpec::default();
        spec.image_encoder.patch_size = 0;
        assert!(spec.to_config().unwrap_err().contains("patch_size"));
    }
}
