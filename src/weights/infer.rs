//! The architecture of a checkpoint, read from its tensor shapes.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::architecture::{DecoderArchitecture, EncoderArchitecture};
use crate::model::{Architecture, ArchitectureError};

/// Official key -> shape.
pub type ShapeMap = BTreeMap<String, Vec<usize>>;

/// Infers the whole [`Architecture`] from official-named tensor shapes: encoder width and
/// patch from `patch_embed`, depth from the block count, heads from the `rel_pos`
/// width (the head dim), global blocks and window from the `rel_pos` lengths, image
/// size from `pos_embed`, and the prompt/decoder sizes likewise.
///
/// The decoder's head count leaves no trace in any shape; it is `decoder_heads`
/// (8 in every official checkpoint, or what the file's samtune metadata says).
pub fn infer_architecture(
    shapes: &ShapeMap,
    decoder_heads: usize,
) -> Result<Architecture, ArchitectureError> {
    let fail = |message: String| ArchitectureError(message);
    let get = |key: &str| -> Result<&[usize], ArchitectureError> {
        shapes
            .get(key)
            .map(|s| s.as_slice())
            .ok_or_else(|| fail(format!("missing tensor '{key}'")))
    };
    let dim = |key: &str, axis: usize| -> Result<usize, ArchitectureError> {
        let shape = get(key)?;
        shape.get(axis).copied().ok_or_else(|| {
            fail(format!(
                "tensor '{key}' has shape {shape:?}, expected rank > {axis}"
            ))
        })
    };

    let patch = get("image_encoder.patch_embed.proj.weight")?;
    let [embed_dim, in_chans, patch_size, _] = patch else {
        return Err(fail(format!(
            "image_encoder.patch_embed.proj.weight has shape {patch:?}, expected [embed, chans, p, p]"
        )));
    };
    let (embed_dim, in_chans, patch_size) = (*embed_dim, *in_chans, *patch_size);
    let depth = count_indexed(shapes, "image_encoder.blocks.");
    if depth == 0 {
        return Err(fail("no image_encoder.blocks.* tensors".into()));
    }
    let use_rel_pos = shapes.contains_key("image_encoder.blocks.0.attn.rel_pos_h");
    if !use_rel_pos {
        return Err(fail(
            "the encoder has no rel_pos tables, so its head count cannot be inferred".into(),
        ));
    }
    let head_dim = dim("image_encoder.blocks.0.attn.rel_pos_h", 1)?;
    if head_dim == 0 || embed_dim % head_dim != 0 {
        return Err(fail(format!(
            "rel_pos width {head_dim} does not divide the embedding width {embed_dim}"
        )));
    }
    let num_heads = embed_dim / head_dim;
    let rel_lengths: Vec<usize> = (0..depth)
        .map(|i| dim(&format!("image_encoder.blocks.{i}.attn.rel_pos_h"), 0))
        .collect::<Result<_, _>>()?;

    let use_abs_pos = shapes.contains_key("image_encoder.pos_embed");
    let grid = if use_abs_pos {
        dim("image_encoder.pos_embed", 1)?
    } else {
        // the longest table belongs to a global block: 2 * grid - 1
        rel_lengths.iter().max().copied().unwrap_or(1).div_ceil(2)
    };
    let global_len = 2 * grid - 1;
    let global_attn_indexes: Vec<usize> = (0..depth)
        .filter(|&i| rel_lengths[i] == global_len)
        .collect();
    let window_lengths: BTreeSet<usize> = rel_lengths
        .iter()
        .copied()
        .filter(|&l| l != global_len)
        .collect();
    let window_size = match window_lengths.len() {
        0 => 0,
        1 => window_lengths.first().copied().unwrap_or(1).div_ceil(2),
        _ => {
            return Err(fail(format!(
                "windowed blocks have different rel_pos lengths {window_lengths:?}"
            )))
        }
    };
    let mlp_dim = dim("image_encoder.blocks.0.mlp.lin1.weight", 0)?;
    let out_chans = dim("image_encoder.neck.0.weight", 0)?;

    let prompt_embed_dim = dim("prompt_encoder.not_a_point_embed.weight", 1)?;
    let mask_in_chans = dim("prompt_encoder.mask_downscaling.3.weight", 0)?;
    let transformer_dim = dim("mask_decoder.iou_token.weight", 1)?;
    if out_chans != prompt_embed_dim || transformer_dim != prompt_embed_dim {
        return Err(fail(format!(
            "encoder output {out_chans}, prompt embedding {prompt_embed_dim} and decoder width \
             {transformer_dim} differ"
        )));
    }
    let decoder_depth = count_indexed(shapes, "mask_decoder.transformer.layers.");
    let decoder_mlp_dim = dim("mask_decoder.transformer.layers.0.mlp.lin1.weight", 0)?;
    let cross_width = dim(
        "mask_decoder.transformer.final_attn_token_to_image.q_proj.weight",
        0,
    )?;
    if cross_width == 0 || transformer_dim % cross_width != 0 {
        return Err(fail(format!(
            "cross-attention width {cross_width} does not divide the decoder width {transformer_dim}"
        )));
    }
    let num_mask_tokens = dim("mask_decoder.mask_tokens.weight", 0)?;
    let iou_head_depth = count_indexed(shapes, "mask_decoder.iou_prediction_head.layers.");
    let iou_head_hidden_dim = dim("mask_decoder.iou_prediction_head.layers.0.weight", 0)?;

    let architecture = Architecture {
        image_encoder: EncoderArchitecture {
            img_size: grid * patch_size,
            patch_size,
            in_chans,
            embed_dim,
            depth,
            num_heads,
            mlp_ratio: mlp_dim as f64 / embed_dim as f64,
            qkv_bias: shapes.contains_key("image_encoder.blocks.0.attn.qkv.bias"),
            use_abs_pos,
            use_rel_pos,
            window_size,
            global_attn_indexes,
        },
        decoder: DecoderArchitecture {
            prompt_embed_dim,
            mask_in_chans,
            depth: decoder_depth,
            num_heads: decoder_heads,
            mlp_dim: decoder_mlp_dim,
            attention_downsample_rate: transformer_dim / cross_width,
            num_multimask_outputs: num_mask_tokens.saturating_sub(1),
            iou_head_depth,
            iou_head_hidden_dim,
            semantic_classes: shapes
                .get("mask_decoder.semantic.tokens.weight")
                .and_then(|s| s.first())
                .map_or(0, |n| n.saturating_sub(1)),
        },
        ..Architecture::default()
    };
    architecture.validate()?;
    Ok(architecture)
}

/// Number of distinct `N` in keys `{prefix}{N}.…`.
fn count_indexed(shapes: &ShapeMap, prefix: &str) -> usize {
    shapes
        .keys()
        .filter_map(|k| {
            k.strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .collect::<BTreeSet<_>>()
        .len()
}

/// Parameter counts (buffers excluded, as `model.parameters()` counts them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ParameterCounts {
    pub image_encoder: usize,
    pub prompt_encoder: usize,
    pub mask_decoder: usize,
}

impl ParameterCounts {
    pub fn from_shapes(shapes: &ShapeMap) -> Self {
        let mut counts = Self::default();
        for (key, shape) in shapes {
            if super::keymap::BUFFERS.contains(&key.as_str()) {
                continue;
            }
            let n: usize = shape.iter().product();
            match key.split('.').next() {
                Some("image_encoder") => counts.image_encoder += n,
                Some("prompt_encoder") => counts.prompt_encoder += n,
                Some("mask_decoder") => counts.mask_decoder += n,
                _ => {}
            }
        }
        counts
    }

    /// Counts for an architecture without allocating its weights: burn initialises
    /// parameters lazily and knows their shapes before.
    pub fn from_architecture(architecture: &Architecture) -> Self {
        let model = architecture.init(&burn::tensor::Device::flex());
        let mut counter = LazyShapeCounter::default();
        burn::module::Module::visit(&model, &mut counter);
        counter.counts
    }

    pub fn total(&self) -> usize {
        self.image_encoder + self.prompt_encoder + self.mask_decoder
    }
}

/// Sums parameter sizes per component from `lazy_shape` (no initialisation).
#[derive(Default)]
struct LazyShapeCounter {
    path: Vec<String>,
    counts: ParameterCounts,
}

impl burn::module::ModuleVisitor for LazyShapeCounter {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(
        &mut self,
        param: &burn::module::Param<burn::tensor::Tensor<D>>,
    ) {
        if super::keymap::BUFFERS.contains(&self.path.join(".").as_str()) {
            return;
        }
        let n = param.lazy_shape().num_elements();
        match self.path.first().map(String::as_str) {
            Some("image_encoder") => self.counts.image_encoder += n,
            Some("prompt_encoder") => self.counts.prompt_encoder += n,
            Some("mask_decoder") => self.counts.mask_decoder += n,
            _ => {}
        }
    }
}
