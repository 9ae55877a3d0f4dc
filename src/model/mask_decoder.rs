//! Mask decoder: output tokens + prompt tokens through the two-way transformer, then
//! hypernetwork MLPs over an upscaled embedding (`segment_anything/modeling/mask_decoder.py`).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{Embedding, EmbeddingConfig};
use burn::tensor::{Device, Tensor};

use super::common::{LayerNorm2d, LayerNorm2dConfig, Mlp, MlpConfig};
use super::kernels::broadcast_add::broadcast_add;
use super::kernels::gelu::exact_gelu;
use super::kernels::layer_norm::layer_norm;
use super::kernels::matmul::matmul;
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
    /// Classes of the prompt-free multi-class head (0: none, the official decoder).
    #[config(default = 0)]
    pub semantic_classes: usize,
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
            semantic: (self.semantic_classes > 0)
                .then(|| SemanticHeadConfig::new(dim, self.semantic_classes).init(device)),
        }
    }
}

/// samtune's prompt-free multi-class head (not upstream): a mask token per class plus
/// one for the background, each with its own hypernetwork MLP, decoded through the
/// official two-way transformer without prompt tokens (as SAMed does). Its keys are
/// `mask_decoder.semantic.tokens.weight` and `mask_decoder.semantic.hypernetworks.N.*`;
/// the official decoder's own parameters stay as they are.
#[derive(Config, Debug, PartialEq)]
pub struct SemanticHeadConfig {
    pub transformer_dim: usize,
    /// Classes besides the background.
    pub classes: usize,
}

impl SemanticHeadConfig {
    pub fn init(&self, device: &Device) -> SemanticHead {
        let dim = self.transformer_dim;
        SemanticHead {
            tokens: EmbeddingConfig::new(self.classes + 1, dim).init(device),
            hypernetworks: (0..=self.classes)
                .map(|_| MlpConfig::new(dim, dim, dim / 8, 3).init(device))
                .collect(),
        }
    }
}

#[derive(Module, Debug)]
pub struct SemanticHead {
    /// `[classes + 1, C]`: background first.
    pub tokens: Embedding,
    pub hypernetworks: Vec<Mlp>,
}

impl SemanticHead {
    /// A head for `classes` classes that starts from the pretrained decoder's knowledge:
    /// the background token and its hypernetwork are copies of the single-mask output's
    /// (token 0); class `k` copies multimask output `1 + (k - 1) % 3`, the outputs SAM
    /// learned to give whole objects, parts and subparts with. Copies are new parameters.
    pub fn from_pretrained(decoder: &MaskDecoder, classes: usize) -> Self {
        let multimask = decoder.num_mask_tokens() - 1;
        let source = |k: usize| {
            if k == 0 {
                0
            } else {
                1 + (k - 1) % multimask.max(1)
            }
        };
        let weight = decoder.mask_tokens.weight.val();
        let [_, dim] = weight.dims();
        let rows: Vec<Tensor<2>> = (0..=classes)
            .map(|k| weight.clone().slice([source(k)..source(k) + 1, 0..dim]))
            .collect();
        let mut tokens = EmbeddingConfig::new(classes + 1, dim).init(&weight.device());
        tokens.weight = Param::from_tensor(Tensor::cat(rows, 0).detach());
        let hypernetworks = (0..=classes)
            .map(|k| copy_module(decoder.output_hypernetworks_mlps[source(k)].clone()))
            .collect();
        Self {
            tokens,
            hypernetworks,
        }
    }

    pub fn classes(&self) -> usize {
        self.hypernetworks.len() - 1
    }
}

/// `module` with every parameter a new one (new id, same values).
fn copy_module<M: Module>(module: M) -> M {
    struct Fresh;
    impl burn::module::ModuleMapper for Fresh {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            Param::from_tensor(param.val().detach())
        }
    }
    module.map(&mut Fresh)
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
    /// The prompt-free multi-class head, when the model has one.
    pub semantic: Option<SemanticHead>,
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
        let [batch, _, _] = sparse_prompt_embeddings.dims();
        let [image_batch, _, _, _] = image_embeddings.dims();
        assert!(
            image_batch == 1 || image_batch == batch,
            "image embeddings batch ({image_batch}) must be 1 or the prompt batch ({batch})"
        );
        let (masks, iou_token_out) = self.decode_tokens(
            self.mask_tokens.weight.val(),
            &self.output_hypernetworks_mlps,
            image_embeddings,
            image_pe,
            Some(sparse_prompt_embeddings),
            dense_prompt_embeddings,
            batch,
        );
        let iou_predictions = self.iou_prediction_head.forward(iou_token_out);
        DecoderOutput {
            masks,
            iou_predictions,
        }
    }

    /// The multi-class head's logits `[B, classes + 1, 4H, 4W]` (background first) for
    /// `image_embeddings` `[B, C, H, W]`, with no prompt: `dense` is the prompt encoder's
    /// no-mask embedding `[1, C, H, W]`. Panics without a head (a model's architecture
    /// says whether it has one).
    pub fn predict_classes(
        &self,
        image_embeddings: Tensor<4>,
        image_pe: Tensor<4>,
        dense: Tensor<4>,
    ) -> Tensor<4> {
        let head = self
            .semantic
            .as_ref()
            .expect("predict_classes needs a model with a semantic head");
        let [batch, _, _, _] = image_embeddings.dims();
        self.decode_tokens(
            head.tokens.weight.val(),
            &head.hypernetworks,
            image_embeddings,
            image_pe,
            None,
            dense,
            batch,
        )
        .0
    }

    /// The IoU token and `mask_tokens` (one per hypernetwork) through the transformer
    /// with the prompt tokens: the masks `[B, M, 4H, 4W]` and the IoU token's output
    /// `[B, C]`.
    #[allow(clippy::too_many_arguments)]
    fn decode_tokens(
        &self,
        mask_tokens: Tensor<2>,
        hypernetworks: &[Mlp],
        image_embeddings: Tensor<4>,
        image_pe: Tensor<4>,
        sparse_prompt_embeddings: Option<Tensor<3>>,
        dense_prompt_embeddings: Tensor<4>,
        batch: usize,
    ) -> (Tensor<4>, Tensor<2>) {
        let [_, _, h, w] = image_embeddings.dims();
        let [num_mask_tokens, dim] = mask_tokens.dims();
        let output_tokens = Tensor::cat(vec![self.iou_token.weight.val(), mask_tokens], 0)
            .unsqueeze_dim::<3>(0)
            .expand([batch, 1 + num_mask_tokens, dim]);
        let tokens = match sparse_prompt_embeddings {
            Some(sparse) => Tensor::cat(vec![output_tokens, sparse], 1),
            None => output_tokens,
        };

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

        let upscaled = self.output_upscaling.forward(src);
        let hyper_in = Tensor::stack::<3>(
            hypernetworks
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
        let masks = unblock_pixels(matmul(hyper_in, upscaled.swap_dims(1, 2)), [h, w]);
        (masks, iou_token_out)
    }
}

/// Two transposed convolutions (kernel 2, stride 2) with LayerNorm2d and GELU: 4x the
/// resolution, 1/8 of the channels.
#[derive(Module, Debug)]
pub struct OutputUpscaling {
    pub conv1: ConvTranspose2d,
    pub ln1: LayerNorm2d,
    pub conv2: ConvTranspose2d,
}

impl OutputUpscaling {
    /// Image tokens `[B, H*W, C]` (row-major grid) -> upscaled embedding `[B, 16*H*W, C/8]`,
    /// channels last, pixels in block order (see [`unblock_pixels`]).
    ///
    /// With kernel 2 and stride 2 every output pixel comes from exactly one input pixel, so
    /// each transposed convolution is one matrix product over pixels. Keeping each pixel's
    /// 2x2 block together until the masks (4 channels instead of 32) are put in image order
    /// moves no large tensor, and LayerNorm2d normalises the contiguous last axis.
    pub fn forward(&self, tokens: Tensor<3>) -> Tensor<3> {
        let x = per_pixel_transposed_conv(&self.conv1, tokens);
        let x = layer_norm(x, self.ln1.weight.val(), self.ln1.bias.val(), self.ln1.eps);
        let x = per_pixel_transposed_conv(&self.conv2, exact_gelu(x));
        exact_gelu(x)
    }
}

/// `ConvTranspose2d` with kernel 2 and stride 2 on channels-last pixels: `[B, N, Cin]` ->
/// `[B, 4N, Cout]`, where input pixel `p`'s output block `(di, dj)` is row `4p + 2di + dj`.
fn per_pixel_transposed_conv(conv: &ConvTranspose2d, x: Tensor<3>) -> Tensor<3> {
    let [c_in, c_out, kh, kw] = conv.weight.dims();
    assert!(
        conv.kernel_size == [2, 2] && conv.stride == [2, 2] && conv.groups == 1,
        "the mask decoder's upscaling expects kernel 2, stride 2, one group"
    );
    let [batch, pixels, _] = x.dims();
    // [Cin, Cout, di, dj] -> [Cin, (di, dj, Cout)]
    let weight = conv
        .weight
        .val()
        .permute([0, 2, 3, 1])
        .reshape([c_in, kh * kw * c_out]);
    let y =
        matmul(x.reshape([batch * pixels, c_in]), weight).reshape([batch, pixels * kh * kw, c_out]);
    match &conv.bias {
        Some(bias) => broadcast_add(y, bias.val().reshape([1, 1, c_out])),
        None => y,
    }
}

/// Masks over the upscaled pixels in block order `[B, M, 16*H*W]` -> `[B, M, 4H, 4W]`.
///
/// Row `r = 4i + 2a + c`, column `4j + 2b + d` of the image is block-order index
/// `(i, j, a, b, c, d)`: grid pixel `(i, j)`, then the first and second convolution's
/// 2x2 offsets.
fn unblock_pixels(masks: Tensor<3>, [h, w]: [usize; 2]) -> Tensor<4> {
    let [batch, num_masks, _] = masks.dims();
    masks
        .reshape([batch, num_masks, h, w, 2, 2, 2, 2])
        .permute([0, 1, 2, 4, 6, 3, 5, 7])
        .reshape([batch, num_masks, 4 * h, 4 * w])
}

#[cfg(test)]
mod tests {
    use burn::module::Module;
    use burn::tensor::{Distribution, Tensor};

    use super::*;

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    fn decoder(device: &Device) -> MaskDecoder {
        let transformer = TwoWayTransformerConfig::new()
            .with_depth(1)
            .with_embedding_dim(32)
            .with_num_heads(2)
            .with_mlp_dim(64);
        MaskDecoderConfig::new()
            .with_transformer_dim(32)
            .with_transformer(transformer)
            .with_iou_head_hidden_dim(32)
            .init(device)
    }

    #[test]
    fn a_semantic_head_starts_as_copies_of_the_pretrained_outputs() {
        let device = Device::flex();
        let decoder = decoder(&device);
        let head = SemanticHead::from_pretrained(&decoder, 5);
        assert_eq!(head.classes(), 5);
        assert_eq!(head.tokens.weight.dims(), [6, 32]);
        let tokens = values(decoder.mask_tokens.weight.val());
        let copied = values(head.tokens.weight.val());
        // background <- single-mask token 0; class k <- multimask 1 + (k - 1) % 3
        for (k, source) in [0, 1, 2, 3, 1, 2].into_iter().enumerate() {
            assert_eq!(
                copied[k * 32..(k + 1) * 32],
                tokens[source * 32..(source + 1) * 32]
            );
            let a = values(head.hypernetworks[k].layers[0].weight.val());
            let b = values(
                decoder.output_hypernetworks_mlps[source].layers[0]
                    .weight
                    .val(),
            );
            assert_eq!(a, b, "hypernetwork of class {k}");
        }
        // new parameters: training the head leaves the promptable outputs as they were
        let (mut head_ids, mut decoder_ids) = (Vec::new(), Vec::new());
        head.visit(&mut Collect(&mut head_ids));
        decoder.visit(&mut Collect(&mut decoder_ids));
        assert!(!head_ids.is_empty());
        assert!(head_ids.iter().all(|id| !decoder_ids.contains(id)));
    }

    struct Collect<'a>(&'a mut Vec<burn::module::ParamId>);
    impl burn::module::ModuleVisitor for Collect<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.push(param.id);
        }
    }

    #[test]
    fn predict_classes_gives_one_plane_per_class_and_the_background() {
        let device = Device::flex();
        let mut decoder = decoder(&device);
        decoder.semantic = Some(SemanticHead::from_pretrained(&decoder, 3));
        let embedding = Tensor::<4>::random([2, 32, 4, 4], Distribution::Normal(0.0, 1.0), &device);
        let pe = Tensor::<4>::random([1, 32, 4, 4], Distribution::Normal(0.0, 1.0), &device);
        let dense = Tensor::<4>::zeros([1, 32, 1, 1], &device);
        let logits = decoder.predict_classes(embedding.clone(), pe.clone(), dense.clone());
        assert_eq!(logits.dims(), [2, 4, 16, 16]);
        // each image of the batch on its own gives its own planes
        let first = decoder.predict_classes(embedding.narrow(0, 0, 1), pe, dense);
        let all = values(logits.narrow(0, 0, 1));
        let alone = values(first);
        let worst = all
            .iter()
            .zip(&alone)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "batched and alone differ by {worst}");
    }
}
