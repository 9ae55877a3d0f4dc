//! Prompt encoder: points, boxes and low-resolution masks to sparse and dense
//! embeddings (`segment_anything/modeling/prompt_encoder.py`).

use std::f64::consts::PI;

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::common::{Activation, LayerNorm2d, LayerNorm2dConfig};

#[derive(Config, Debug, PartialEq)]
pub struct PromptEncoderConfig {
    #[config(default = 256)]
    pub embed_dim: usize,
    /// `[H, W]` of the image embedding (64x64 for SAM).
    #[config(default = "[64, 64]")]
    pub image_embedding_size: [usize; 2],
    /// `[H, W]` of the padded encoder input (1024x1024 for SAM).
    #[config(default = "[1024, 1024]")]
    pub input_image_size: [usize; 2],
    #[config(default = 16)]
    pub mask_in_chans: usize,
}

impl PromptEncoderConfig {
    pub fn init(&self, device: &Device) -> PromptEncoder {
        let dim = self.embed_dim;
        let embedding = || EmbeddingConfig::new(1, dim).init(device);
        let quarter = self.mask_in_chans / 4;
        PromptEncoder {
            pe_layer: PositionEmbeddingRandom {
                positional_encoding_gaussian_matrix: Initializer::Normal {
                    mean: 0.0,
                    std: 1.0,
                }
                .init([2, dim / 2], device)
                .set_require_grad(false),
            },
            point_embeddings: (0..NUM_POINT_EMBEDDINGS).map(|_| embedding()).collect(),
            not_a_point_embed: embedding(),
            mask_downscaling: MaskDownscaling {
                conv1: Conv2dConfig::new([1, quarter], [2, 2])
                    .with_stride([2, 2])
                    .init(device),
                ln1: LayerNorm2dConfig::new(quarter).init(device),
                conv2: Conv2dConfig::new([quarter, self.mask_in_chans], [2, 2])
                    .with_stride([2, 2])
                    .init(device),
                ln2: LayerNorm2dConfig::new(self.mask_in_chans).init(device),
                conv3: Conv2dConfig::new([self.mask_in_chans, dim], [1, 1]).init(device),
            },
            no_mask_embed: embedding(),
            image_embedding_size: self.image_embedding_size,
            input_image_size: self.input_image_size,
        }
    }
}

/// Positive point, negative point, box top-left corner, box bottom-right corner.
const NUM_POINT_EMBEDDINGS: usize = 4;

#[derive(Module, Debug)]
pub struct PromptEncoder {
    pub pe_layer: PositionEmbeddingRandom,
    pub point_embeddings: Vec<Embedding>,
    pub not_a_point_embed: Embedding,
    /// `mask_downscaling.{0,1,3,4,6}` in the official state_dict.
    pub mask_downscaling: MaskDownscaling,
    pub no_mask_embed: Embedding,
    #[module(skip)]
    pub image_embedding_size: [usize; 2],
    #[module(skip)]
    pub input_image_size: [usize; 2],
}

/// Point prompts in the model's input frame: coordinates `[B, N, 2]` (x, y) and labels
/// `[B, N]` (1 foreground, 0 background, -1 padding).
#[derive(Debug, Clone)]
pub struct PointPrompts {
    pub coords: Tensor<3>,
    pub labels: Tensor<2, Int>,
}

impl PromptEncoder {
    pub fn embed_dim(&self) -> usize {
        self.no_mask_embed.weight.dims()[1]
    }

    /// Dense positional encoding of the embedding grid: `[1, C, H, W]`.
    pub fn get_dense_pe(&self) -> Tensor<4> {
        self.pe_layer
            .forward_grid(self.image_embedding_size)
            .unsqueeze_dim(0)
    }

    /// Embeds prompts; every given prompt kind must have the same batch size `B`.
    ///
    /// Returns sparse `[B, N, C]` (points, then box corners) and dense `[B, C, H, W]`,
    /// the official shapes.
    pub fn forward(
        &self,
        points: Option<PointPrompts>,
        boxes: Option<Tensor<2>>,
        masks: Option<Tensor<4>>,
    ) -> (Tensor<3>, Tensor<4>) {
        let (sparse, dense) = self.embed(points, boxes, masks);
        let [batch, _, _] = sparse.dims();
        let [_, channels, h, w] = dense.dims();
        (sparse, dense.expand([batch, channels, h, w]))
    }

    /// [`Self::forward`], but without mask inputs the dense embedding stays one
    /// `[1, C, H, W]` for every prompt, so the decoder can work on the image once.
    pub fn embed(
        &self,
        points: Option<PointPrompts>,
        boxes: Option<Tensor<2>>,
        masks: Option<Tensor<4>>,
    ) -> (Tensor<3>, Tensor<4>) {
        let batch = points
            .as_ref()
            .map(|p| p.coords.dims()[0])
            .or_else(|| boxes.as_ref().map(|b| b.dims()[0]))
            .or_else(|| masks.as_ref().map(|m| m.dims()[0]))
            .unwrap_or(1);
        let device = self.no_mask_embed.weight.device();
        let mut sparse = Vec::with_capacity(2);
        if let Some(points) = points {
            sparse.push(self.embed_points(points, boxes.is_none()));
        }
        if let Some(boxes) = boxes {
            sparse.push(self.embed_boxes(boxes));
        }
        let sparse = if sparse.is_empty() {
            Tensor::zeros([batch, 0, self.embed_dim()], &device)
        } else {
            Tensor::cat(sparse, 1)
        };
        let dense = match masks {
            Some(masks) => self.mask_downscaling.forward(masks),
            None => {
                let [h, w] = self.image_embedding_size;
                self.no_mask_dense_embedding()
                    .expand([1, self.embed_dim(), h, w])
            }
        };
        (sparse, dense)
    }

    /// The dense embedding used when no mask is given: `[1, C, 1, 1]`, broadcastable.
    pub fn no_mask_dense_embedding(&self) -> Tensor<4> {
        self.no_mask_embed
            .weight
            .val()
            .reshape([1, self.embed_dim(), 1, 1])
    }

    fn embed_points(&self, points: PointPrompts, pad: bool) -> Tensor<3> {
        let PointPrompts { coords, labels } = points;
        let coords = coords + 0.5; // pixel centres
        let (coords, labels) = if pad {
            let [batch, _, _] = coords.dims();
            let device = coords.device();
            let padding_point = Tensor::zeros([batch, 1, 2], &device);
            let padding_label = Tensor::<2, Int>::full([batch, 1], -1, &device);
            (
                Tensor::cat(vec![coords, padding_point], 1),
                Tensor::cat(vec![labels, padding_label], 1),
            )
        } else {
            (coords, labels)
        };
        let pe = self
            .pe_layer
            .forward_with_coords(coords, self.input_image_size);
        let dim = self.embed_dim();
        let where_label = |value: i64| {
            labels
                .clone()
                .equal_elem(value)
                .float()
                .unsqueeze_dim::<3>(2)
        };
        let weight = |embedding: &Embedding| embedding.weight.val().reshape([1, 1, dim]);
        let not_a_point = where_label(-1);
        // Exactly `pe[labels == -1] = 0; pe[labels == -1] += not_a_point; ...` as 0/1 masks.
        pe * (not_a_point.clone().neg() + 1.0)
            + not_a_point * weight(&self.not_a_point_embed)
            + where_label(0) * weight(&self.point_embeddings[0])
            + where_label(1) * weight(&self.point_embeddings[1])
    }

    fn embed_boxes(&self, boxes: Tensor<2>) -> Tensor<3> {
        let [batch, _] = boxes.dims();
        let corners = (boxes + 0.5).reshape([batch, 2, 2]);
        let pe = self
            .pe_layer
            .forward_with_coords(corners, self.input_image_size);
        let dim = self.embed_dim();
        let corner_embeddings = Tensor::cat(
            vec![
                self.point_embeddings[2].weight.val(),
                self.point_embeddings[3].weight.val(),
            ],
            0,
        )
        .reshape([1, 2, dim]);
        pe + corner_embeddings
    }
}

/// Random Fourier features of normalised coordinates.
#[derive(Module, Debug)]
pub struct PositionEmbeddingRandom {
    /// A buffer in the official model (saved in the state_dict, never trained).
    pub positional_encoding_gaussian_matrix: Param<Tensor<2>>,
}

impl PositionEmbeddingRandom {
    /// `[..., 2]` coordinates in `[0, 1]` -> `[..., C]` as `[sin, cos]`.
    fn encode<const D: usize>(&self, coords: Tensor<D>) -> Tensor<D> {
        let coords = coords * 2.0 - 1.0;
        let gaussian = self.positional_encoding_gaussian_matrix.val();
        let projected = matmul_last(coords, gaussian) * (2.0 * PI);
        Tensor::cat(vec![projected.clone().sin(), projected.cos()], D - 1)
    }

    /// Encoding of the cell centres of an `[H, W]` grid: `[C, H, W]`.
    pub fn forward_grid(&self, size: [usize; 2]) -> Tensor<3> {
        let [h, w] = size;
        let mut xy = Vec::with_capacity(h * w * 2);
        for i in 0..h {
            for j in 0..w {
                // `ones.cumsum() - 0.5` is exact in float32: the same cell centres
                xy.push((j as f32 + 0.5) / w as f32);
                xy.push((i as f32 + 0.5) / h as f32);
            }
        }
        let device = self.positional_encoding_gaussian_matrix.device();
        let grid = Tensor::<3>::from_data(TensorData::new(xy, [h, w, 2]), &device);
        self.encode(grid).permute([2, 0, 1])
    }

    /// `[B, N, 2]` pixel coordinates in an image of `[H, W]` -> `[B, N, C]`.
    pub fn forward_with_coords(&self, coords: Tensor<3>, image_size: [usize; 2]) -> Tensor<3> {
        let device = coords.device();
        let size = Tensor::<1>::from_floats([image_size[1] as f32, image_size[0] as f32], &device)
            .reshape([1, 1, 2]);
        self.encode(coords / size)
    }
}

/// `[..., K] @ [K, M] -> [..., M]` for any rank.
fn matmul_last<const D: usize>(x: Tensor<D>, matrix: Tensor<2>) -> Tensor<D> {
    let dims = x.dims();
    let [k, m] = matrix.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let mut out_dims = dims;
    out_dims[D - 1] = m;
    x.reshape([rows, k]).matmul(matrix).reshape(out_dims)
}

/// Two stride-2 convolutions that bring a `4H x 4W` mask to the embedding grid.
#[derive(Module, Debug)]
pub struct MaskDownscaling {
    pub conv1: Conv2d,
    pub ln1: LayerNorm2d,
    pub conv2: Conv2d,
    pub ln2: LayerNorm2d,
    pub conv3: Conv2d,
}

impl MaskDownscaling {
    /// `[B, 1, 4H, 4W]` -> `[B, C, H, W]`
    pub fn forward(&self, masks: Tensor<4>) -> Tensor<4> {
        let act = Activation::Gelu;
        let x = act.apply(self.ln1.forward(self.conv1.forward(masks)));
        let x = act.apply(self.ln2.forward(self.conv2.forward(x)));
        self.conv3.forward(x)
    }
}
