//! ViT image encoder with windowed attention and decomposed relative positions
//! (`segment_anything/modeling/image_encoder.py`, itself from ViTDet).

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::ops::PadMode;
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::common::{
    linear_rows, Activation, LayerNorm, LayerNorm2d, LayerNorm2dConfig, LayerNormConfig, MlpBlock,
    MlpBlockConfig,
};
use super::kernels::attention::{attention, RelPosBias};
use super::kernels::matmul::matmul;
use super::precision::Precision;

/// Official defaults are those of `build_sam.py` (ViT-B); see [`crate::model::SamVariant`]
/// for the three presets.
#[derive(Config, Debug, PartialEq)]
pub struct ImageEncoderViTConfig {
    #[config(default = 1024)]
    pub img_size: usize,
    #[config(default = 16)]
    pub patch_size: usize,
    #[config(default = 3)]
    pub in_chans: usize,
    #[config(default = 768)]
    pub embed_dim: usize,
    #[config(default = 12)]
    pub depth: usize,
    #[config(default = 12)]
    pub num_heads: usize,
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    #[config(default = 256)]
    pub out_chans: usize,
    #[config(default = true)]
    pub qkv_bias: bool,
    #[config(default = true)]
    pub use_abs_pos: bool,
    #[config(default = true)]
    pub use_rel_pos: bool,
    /// Window size of the non-global blocks (0: every block is global).
    #[config(default = 14)]
    pub window_size: usize,
    #[config(default = "vec![2, 5, 8, 11]")]
    pub global_attn_indexes: Vec<usize>,
    /// LayerNorm epsilon of the blocks and the neck (`partial(nn.LayerNorm, eps=1e-6)`).
    #[config(default = 1e-6)]
    pub norm_eps: f64,
}

impl ImageEncoderViTConfig {
    /// Side of the patch grid (64 for the official 1024 / 16).
    pub fn grid_size(&self) -> usize {
        self.img_size / self.patch_size
    }

    pub fn init(&self, device: &Device) -> ImageEncoderViT {
        let grid = self.grid_size();
        let patch_embed = PatchEmbed {
            proj: Conv2dConfig::new(
                [self.in_chans, self.embed_dim],
                [self.patch_size, self.patch_size],
            )
            .with_stride([self.patch_size, self.patch_size])
            .init(device),
        };
        let pos_embed = self
            .use_abs_pos
            .then(|| Initializer::Zeros.init([1, grid, grid, self.embed_dim], device));
        let blocks = (0..self.depth)
            .map(|i| {
                let window_size = if self.global_attn_indexes.contains(&i) {
                    0
                } else {
                    self.window_size
                };
                let attn_size = if window_size == 0 { grid } else { window_size };
                let head_dim = self.embed_dim / self.num_heads;
                let rel_pos = || Initializer::Zeros.init([2 * attn_size - 1, head_dim], device);
                Block {
                    norm1: LayerNormConfig::new(self.embed_dim)
                        .with_epsilon(self.norm_eps)
                        .init(device),
                    attn: Attention {
                        qkv: LinearConfig::new(self.embed_dim, 3 * self.embed_dim)
                            .with_bias(self.qkv_bias)
                            .init(device),
                        proj: LinearConfig::new(self.embed_dim, self.embed_dim).init(device),
                        rel_pos_h: self.use_rel_pos.then(rel_pos),
                        rel_pos_w: self.use_rel_pos.then(rel_pos),
                        num_heads: self.num_heads,
                    },
                    norm2: LayerNormConfig::new(self.embed_dim)
                        .with_epsilon(self.norm_eps)
                        .init(device),
                    mlp: MlpBlockConfig::new(
                        self.embed_dim,
                        (self.embed_dim as f64 * self.mlp_ratio) as usize,
                    )
                    .with_activation(Activation::Gelu)
                    .init(device),
                    window_size,
                }
            })
            .collect();
        let norm = LayerNorm2dConfig::new(self.out_chans).with_eps(self.norm_eps);
        let neck = Neck {
            conv1: Conv2dConfig::new([self.embed_dim, self.out_chans], [1, 1])
                .with_bias(false)
                .init(device),
            ln1: norm.init(device),
            conv2: Conv2dConfig::new([self.out_chans, self.out_chans], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device),
            ln2: norm.init(device),
        };
        ImageEncoderViT {
            patch_embed,
            pos_embed,
            blocks,
            neck,
            precision: Precision::F32,
        }
    }
}

#[derive(Module, Debug)]
pub struct ImageEncoderViT {
    pub patch_embed: PatchEmbed,
    pub pos_embed: Option<Param<Tensor<4>>>,
    pub blocks: Vec<Block>,
    /// `neck.{0,1,2,3}` in the official state_dict (see `weights::keymap`).
    pub neck: Neck,
    /// The arithmetic of its matrix products: f32 unless chosen (see [`Precision`]); not
    /// part of the checkpoint.
    #[module(skip)]
    pub precision: Precision,
}

impl ImageEncoderViT {
    /// `[B, 3, S, S]` normalised, padded images -> `[B, out_chans, S/16, S/16]` embeddings.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.precision.scope(|| {
            let mut x = self.patch_embed.forward(x);
            if let Some(pos_embed) = &self.pos_embed {
                x = x + pos_embed.val();
            }
            for block in &self.blocks {
                x = block.forward(x);
            }
            self.neck.forward(x.permute([0, 3, 1, 2]))
        })
    }
}

#[derive(Module, Debug)]
pub struct PatchEmbed {
    pub proj: Conv2d,
}

impl PatchEmbed {
    /// `[B, C, H, W] -> [B, H/p, W/p, embed_dim]` (channels last, as the blocks expect).
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.proj.forward(x).permute([0, 2, 3, 1])
    }
}

#[derive(Module, Debug)]
pub struct Neck {
    pub conv1: Conv2d,
    pub ln1: LayerNorm2d,
    pub conv2: Conv2d,
    pub ln2: LayerNorm2d,
}

impl Neck {
    /// `[B, embed_dim, H, W] -> [B, out_chans, H, W]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = self.ln1.forward(self.conv1.forward(x));
        self.ln2.forward(self.conv2.forward(x))
    }
}

/// Pre-norm transformer block; windowed unless `window_size == 0`.
#[derive(Module, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub attn: Attention,
    pub norm2: LayerNorm,
    pub mlp: MlpBlock,
    pub window_size: usize,
}

impl Block {
    /// `[B, H, W, C] -> [B, H, W, C]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let shortcut = x.clone();
        let x = self.norm1.forward(x);
        let x = if self.window_size > 0 {
            let [_, h, w, _] = x.dims();
            let (windows, padded) = window_partition(x, self.window_size);
            window_unpartition(self.attn.forward(windows), self.window_size, padded, [h, w])
        } else {
            self.attn.forward(x)
        };
        let x = shortcut + x;
        x.clone() + self.mlp.forward(self.norm2.forward(x))
    }
}

/// Multi-head self-attention with decomposed relative position embeddings.
#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Linear,
    pub proj: Linear,
    pub rel_pos_h: Option<Param<Tensor<2>>>,
    pub rel_pos_w: Option<Param<Tensor<2>>>,
    pub num_heads: usize,
}

impl Attention {
    /// `[B, H, W, C] -> [B, H, W, C]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, h, w, c] = x.dims();
        let heads = self.num_heads;
        let head_dim = c / heads;
        let qkv = linear_rows(&self.qkv, x)
            .reshape([b, h * w, 3, heads, head_dim])
            .permute([2, 0, 3, 1, 4])
            .reshape([3, b * heads, h * w, head_dim]);
        let [q, k, v] = split_qkv(qkv);

        let scale = (head_dim as f64).powf(-0.5);
        let bias = match (&self.rel_pos_h, &self.rel_pos_w) {
            (Some(rel_pos_h), Some(rel_pos_w)) => Some(decomposed_rel_pos(
                q.clone(),
                rel_pos_h.val(),
                rel_pos_w.val(),
                [h, w],
                [h, w],
            )),
            _ => None,
        };
        let x = attention(q, k, v, scale, bias)
            .reshape([b, heads, h, w, head_dim])
            .permute([0, 2, 3, 1, 4])
            .reshape([b, h, w, c]);
        linear_rows(&self.proj, x)
    }
}

/// `[3, N, L, D]` -> three `[N, L, D]`.
fn split_qkv(qkv: Tensor<4>) -> [Tensor<3>; 3] {
    let mut parts = qkv.chunk(3, 0).into_iter().map(|t| t.squeeze_dim::<3>(0));
    let mut next = || parts.next().expect("chunk(3) yields three parts");
    [next(), next(), next()]
}

/// `[B, H, W, C]` -> (`[B * nW, ws, ws, C]` windows, padded `[Hp, Wp]`); zero padding
/// at the bottom and right, as the official `window_partition`.
pub fn window_partition(x: Tensor<4>, window_size: usize) -> (Tensor<4>, [usize; 2]) {
    let [b, h, w, c] = x.dims();
    let pad_h = (window_size - h % window_size) % window_size;
    let pad_w = (window_size - w % window_size) % window_size;
    let x = if pad_h > 0 || pad_w > 0 {
        x.pad([(0, pad_h), (0, pad_w), (0, 0)], PadMode::Constant(0.0))
    } else {
        x
    };
    let (hp, wp) = (h + pad_h, w + pad_w);
    let windows = x
        .reshape([
            b,
            hp / window_size,
            window_size,
            wp / window_size,
            window_size,
            c,
        ])
        .permute([0, 1, 3, 2, 4, 5])
        .reshape([
            b * (hp / window_size) * (wp / window_size),
            window_size,
            window_size,
            c,
        ]);
    (windows, [hp, wp])
}

/// Inverse of [`window_partition`]: `[B * nW, ws, ws, C]` -> `[B, H, W, C]`, padding removed.
pub fn window_unpartition(
    windows: Tensor<4>,
    window_size: usize,
    padded: [usize; 2],
    size: [usize; 2],
) -> Tensor<4> {
    let [hp, wp] = padded;
    let [h, w] = size;
    let [n, _, _, c] = windows.dims();
    let b = n / (hp * wp / window_size / window_size);
    let x = windows
        .reshape([
            b,
            hp / window_size,
            wp / window_size,
            window_size,
            window_size,
            c,
        ])
        .permute([0, 1, 3, 2, 4, 5])
        .reshape([b, hp, wp, c]);
    if hp > h || wp > w {
        x.slice([0..b, 0..h, 0..w, 0..c])
    } else {
        x
    }
}

/// Relative position embeddings for every (query, key) pair: `[L, C] -> [q_size, k_size, C]`.
///
/// When the table length differs from `2 * max(q, k) - 1` it is resized along its
/// length with linear interpolation (`F.interpolate(mode="linear")`, half-pixel centres).
pub fn get_rel_pos(q_size: usize, k_size: usize, rel_pos: Tensor<2>) -> Tensor<3> {
    let max_rel_dist = 2 * q_size.max(k_size) - 1;
    let [len, channels] = rel_pos.dims();
    let device = rel_pos.device();
    let rel_pos = if len != max_rel_dist {
        linear_resize_matrix(len, max_rel_dist, &device).matmul(rel_pos)
    } else {
        rel_pos
    };

    // float32 arithmetic then truncation, as `relative_coords.long()` does
    let q_scale = (k_size as f32 / q_size as f32).max(1.0);
    let k_scale = (q_size as f32 / k_size as f32).max(1.0);
    let offset = (k_size as f32 - 1.0) * k_scale;
    let indices: Vec<i64> = (0..q_size)
        .flat_map(|i| {
            (0..k_size).map(move |j| ((i as f32 * q_scale - j as f32 * k_scale) + offset) as i64)
        })
        .collect();
    let indices = Tensor::<1, Int>::from_data(TensorData::new(indices, [q_size * k_size]), &device);
    rel_pos
        .select(0, indices)
        .reshape([q_size, k_size, channels])
}

/// `[out_len, in_len]` matrix of 1-D linear interpolation weights, computed the way
/// PyTorch's `upsample_linear1d` (align_corners=False) does, in float32.
fn linear_resize_matrix(in_len: usize, out_len: usize, device: &Device) -> Tensor<2> {
    let scale = in_len as f32 / out_len as f32;
    let mut weights = vec![0f32; out_len * in_len];
    for dst in 0..out_len {
        let src = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
        let i0 = src as usize;
        let i1 = if i0 + 1 < in_len { i0 + 1 } else { i0 };
        let lambda1 = (src - i0 as f32).clamp(0.0, 1.0);
        weights[dst * in_len + i0] += 1.0 - lambda1;
        weights[dst * in_len + i1] += lambda1;
    }
    Tensor::from_data(TensorData::new(weights, [out_len, in_len]), device)
}

/// The terms `q·R_h` and `q·R_w` (with the unscaled queries) that
/// `add_decomposed_rel_pos` (from MViTv2) adds to the attention logits.
///
/// `q`: `[N, qh*qw, C]`, tables `[L, C]` -> rows `[N, qh*qw, kh]`, columns `[N, qh*qw, kw]`.
pub fn decomposed_rel_pos(
    q: Tensor<3>,
    rel_pos_h: Tensor<2>,
    rel_pos_w: Tensor<2>,
    q_size: [usize; 2],
    k_size: [usize; 2],
) -> RelPosBias {
    let [qh, qw] = q_size;
    let [kh, kw] = k_size;
    let rh = get_rel_pos(qh, kh, rel_pos_h); // [qh, kh, C]
    let rw = get_rel_pos(qw, kw, rel_pos_w); // [qw, kw, C]
    let [n, _, dim] = q.dims();
    let r_q = q.reshape([n, qh, qw, dim]);
    // each table broadcast over the N heads as a view, so that the products read the
    // queries in place: two permuted copies of them made these terms a tenth of the bf16
    // encoder's time
    let table = |r: Tensor<3>, [size, keys]: [usize; 2]| {
        r.swap_dims(1, 2)
            .unsqueeze_dim::<4>(0)
            .expand([n, size, dim, keys])
    };

    // einsum("bhwc,hkc->bhwk"): products batched over (head, query row)
    let rows = matmul(r_q.clone(), table(rh, [qh, kh])).reshape([n, qh * qw, kh]);
    // einsum("bhwc,wkc->bhwk"): products batched over (head, query column)
    let columns = matmul(r_q.swap_dims(1, 2), table(rw, [qw, kw]))
        .swap_dims(1, 2)
        .reshape([n, qh * qw, kw]);
    RelPosBias { rows, columns }
}
