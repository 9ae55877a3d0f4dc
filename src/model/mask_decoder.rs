//! Mask decoder: output tokens + prompt tokens through the two-way transformer, then
//! hypernetwork MLPs over an upscaled embedding (`segment_anything/modeling/mask_decoder.py`).

use burn::config::Config;
use burn::module::Module;
use burn::nn::conv::{ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{Embedding, EmbeddingConfig};
use burn::tensor::{Device, Tensor};

use super::common::{Activation, LayerNorm2d, LayerNorm2dConfig, Mlp, MlpConfig};
use super::transformer::{TwoWayTransformer, TwoWayTransformerConfig};

#[derive(Config, Debug, PartialEq)]
pub struct MaskDecoderConfig {
    #[config(default = 256)]
    pub transformer_dim: usize,
    #[config(default = "TwoWayTransformerConfig::new()")]
    pub transformer: TwoWayTransformerConfig,
    #[config(default = 3)]
    pub num_multimask_outputs: usize,
    #[config(default = 3)]
    pub iou_head_depth: usize,
    #[config(default = 256)]
    pub iou_head_hidden_dim: usize,
}

impl MaskDecoderConfig {
    pub fn init(&self, device: &Device) -> MaskDecoder {
        let dim = self.transformer_dim;
        let num_mask_tokens = self.num_multimask_outputs + 1;
        MaskDecoder {
            transformer: self.transformer.init(device),
            iou_token: EmbeddingConfig::new(1, dim).init(device),
            mask_tokens: EmbeddingConfig::new(num_mask_tokens, dim).init(device),
            output_upscaling: OutputUpscaling {
                conv1: ConvTranspose2dConfig::new([dim, dim / 4], [2, 2])
                    .with_stride([2, 2])
                    .init(device),
                ln1: LayerNorm2dConfig::new(dim / 4).init(device),
                conv2: ConvTranspose2dConfig::new([dim / 4, dim / 8], [2, 2])
                    .with_stride([2, 2])
                    .init(device),
            },
            output_hypernetworks_mlps: (0..num_mask_tokens)
                .map(|_| MlpConfig::new(dim, dim, dim / 8, 3).init(device))
                .collect(),
            iou_prediction_head: MlpConfig::new(
                dim,
                self.iou_head_hidden_dim,
                num_mask_tokens,
                self.iou_head_depth,
            )
            .init(device),
        }
    }
}

#[derive(Module, Debug)]
pub struct MaskDecoder {
    pub transformer: TwoWayTransformer,
    pub iou_token: Embedding,
    pub mask_tokens: Embedding,
    /// `output_upscaling.{0,1,3}` in the official state_dict.
    pub output_upscaling: OutputUpscaling,
    pub output_hypernetworks_mlps: Vec<Mlp>,
    pub iou_prediction_head: Mlp,
}

/// Low-resolution mask logits `[B, M, 4H, 4W]` and predicted IoUs `[B, M]`.
#[derive(Debug, Clone)]
pub struct DecoderOutput {
    pub masks: Tensor<4>,
    pub iou_predictions: Tensor<2>,
}

impl DecoderOutput {
    /// Keeps the multimask outputs (1..) or the single-mask output (0), as the
    /// official `MaskDecoder.forward`.
    pub fn select(self, multimask_output: bool) -> Self {
        let [b, m, h, w] = self.masks.dims();
        let range = if multimask_output { 1..m } else { 0..1 };
        Self {
            masks: self.masks.slice([0..b, range.clone(), 0..h, 0..w]),
            iou_predictions: self.iou_predictions.slice([0..b, range]),
        }
    }
}

impl MaskDecoder {
    pub fn num_mask_tokens(&self) -> usize {
        self.output_hypernetworks_mlps.len()
    }

    /// Predicts masks for `B` prompts.
    ///
    /// - `image_embeddings`: `[1, C, H, W]` (one image for every prompt) or `[B, C, H, W]`
    /// - `image_pe`: `[1, C, H, W]`
    /// - `sparse_prompt_embeddings`: `[B, N, C]`, `dense_prompt_embeddings`: `[B or 1, C, H, W]`
    pub fn forward(
        &self,
        image_embeddings: Tensor<4>,
        image_pe: Tensor<4>,
        sparse_prompt_embeddings: Tensor<3>,
        dense_prompt_embeddings: Tensor<4>,
        multimask_output: bool,
    ) -> DecoderOutput {
        self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
        )
        .select(multimask_output)
    }

    /// All `num_mask_tokens` outputs, before selection.
    pub fn predict_masks(
        &self,
        image_embeddings: Tensor<4>,
        image_pe: Tensor<4>,
        sparse_prompt_embeddings: Tensor<3>,
        dense_prompt_embeddings: Tensor<4>,
    ) -> DecoderOutput {
        let [batch, _, dim] = sparse_prompt_embeddings.dims();
        let [image_batch, channels, h, w] = image_embeddings.dims();
        assert!(
            image_batch == 1 || image_batch == batch,
            "image embeddings batch ({image_batch}) must be 1 or the prompt batch ({batch})"
        );
        let num_mask_tokens = self.num_mask_tokens();
        let output_tokens = Tensor::cat(
            vec![self.iou_token.weight.val(), self.mask_tokens.weight.val()],
            0,
        )
        .unsqueeze_dim::<3>(0)
        .expand([batch, 1 + num_mask_tokens, dim]);
        let tokens = Tensor::cat(vec![output_tokens, sparse_prompt_embeddings], 1);

        // The official code repeats the image embedding per prompt; here it stays one
        // `[1, C, H, W]` while it is the same for every prompt (no mask inputs), and the
        // transformer computes its image-only terms once.
        let src = image_embeddings + dense_prompt_embeddings;
        let (hs, src) = self.transformer.forward(src, image_pe, tokens);
        let iou_token_out = hs
            .clone()
            .slice([0..batch, 0..1, 0..dim])
            .squeeze_dim::<2>(1);
        let mask_tokens_out = hs.slice([0..batch, 1..1 + num_mask_tokens, 0..dim]);

        let src = src.swap_dims(1, 2).reshape([batch, channels, h, w]);
        let upscaled = self.output_upscaling.forward(src);
        let hyper_in = Tensor::stack::<3>(
            self.output_hypernetworks_mlps
                .iter()
                .enumerate()
                .map(|(i, mlp)| {
                    mlp.forward(
                        mask_tokens_out
                            .clone()
                            .slice([0..batch, i..i + 1, 0..dim])
                            .squeeze_dim::<2>(1),
                    )
                })
                .collect(),
            1,
        );
        let [_, up_channels, up_h, up_w] = upscaled.dims();
        let masks = hyper_in
            .matmul(upscaled.reshape([batch, up_channels, up_h * up_w]))
            .reshape([batch, num_mask_tokens, up_h, up_w]);
        let iou_predictions = self.iou_prediction_head.forward(iou_token_out);
        DecoderOutput {
            masks,
            iou_predictions,
        }
    }
}

/// Two transposed convolutions: `[B, C, H, W] -> [B, C/8, 4H, 4W]`.
#[derive(Module, Debug)]
pub struct OutputUpscaling {
    pub conv1: ConvTranspose2d,
    pub ln1: LayerNorm2d,
    pub conv2: ConvTranspose2d,
}

impl OutputUpscaling {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let act = Activation::Gelu;
        let x = act.apply(self.ln1.forward(self.conv1.forward(x)));
        act.apply(self.conv2.forward(x))
    }
}
