//! Two-way transformer of the mask decoder: prompt tokens and image embedding attend
//! to each other (`segment_anything/modeling/transformer.py`).

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};

use super::common::{
    linear_rows, Activation, LayerNorm, LayerNormConfig, MlpBlock, MlpBlockConfig,
};
use super::kernels::matmul::matmul;

#[derive(Config, Debug, PartialEq)]
pub struct TwoWayTransformerConfig {
    #[config(default = 2)]
    pub depth: usize,
    #[config(default = 256)]
    pub embedding_dim: usize,
    #[config(default = 8)]
    pub num_heads: usize,
    #[config(default = 2048)]
    pub mlp_dim: usize,
    /// Cross-attention projects to `embedding_dim / attention_downsample_rate` channels.
    #[config(default = 2)]
    pub attention_downsample_rate: usize,
}

impl TwoWayTransformerConfig {
    pub fn init(&self, device: &Device) -> TwoWayTransformer {
        let dim = self.embedding_dim;
        let norm = || LayerNormConfig::new(dim).init(device); // PyTorch default eps 1e-5
        let cross = || {
            AttentionConfig::new(dim, self.num_heads)
                .with_downsample_rate(self.attention_downsample_rate)
                .init(device)
        };
        let layers = (0..self.depth)
            .map(|i| TwoWayAttentionBlock {
                self_attn: AttentionConfig::new(dim, self.num_heads).init(device),
                norm1: norm(),
                cross_attn_token_to_image: cross(),
                norm2: norm(),
                mlp: MlpBlockConfig::new(dim, self.mlp_dim)
                    .with_activation(Activation::Relu)
                    .init(device),
                norm3: norm(),
                norm4: norm(),
                cross_attn_image_to_token: cross(),
                skip_first_layer_pe: i == 0,
            })
            .collect();
        TwoWayTransformer {
            layers,
            final_attn_token_to_image: cross(),
            norm_final_attn: norm(),
        }
    }
}

#[derive(Module, Debug)]
pub struct TwoWayTransformer {
    pub layers: Vec<TwoWayAttentionBlock>,
    pub final_attn_token_to_image: Attention,
    pub norm_final_attn: LayerNorm,
}

impl TwoWayTransformer {
    /// image `[B or 1, C, H, W]` (1: shared by every prompt), its positional encoding
    /// `[B or 1, C, H, W]`, point tokens `[B, N, C]` -> (processed tokens `[B, N, C]`,
    /// processed image `[B, H*W, C]`).
    pub fn forward(
        &self,
        image_embedding: Tensor<4>,
        image_pe: Tensor<4>,
        point_embedding: Tensor<3>,
    ) -> (Tensor<3>, Tensor<3>) {
        let keys = image_embedding.flatten::<3>(2, 3).swap_dims(1, 2);
        let key_pe = image_pe.flatten::<3>(2, 3).swap_dims(1, 2);
        let mut queries = point_embedding.clone();
        let mut keys = keys;
        for layer in &self.layers {
            (queries, keys) = layer.forward(queries, keys, point_embedding.clone(), key_pe.clone());
        }
        let q = queries.clone() + point_embedding;
        let k = keys.clone() + key_pe;
        let attn_out = self.final_attn_token_to_image.forward(q, k, keys.clone());
        let queries = self.norm_final_attn.forward(queries + attn_out);
        let [batch, _, _] = queries.dims();
        let [_, tokens, channels] = keys.dims();
        (queries, keys.expand([batch, tokens, channels]))
    }
}

/// Self-attention of the tokens, cross-attention tokens->image, MLP, and
/// cross-attention image->tokens.
#[derive(Module, Debug)]
pub struct TwoWayAttentionBlock {
    pub self_attn: Attention,
    pub norm1: LayerNorm,
    pub cross_attn_token_to_image: Attention,
    pub norm2: LayerNorm,
    pub mlp: MlpBlock,
    pub norm3: LayerNorm,
    pub norm4: LayerNorm,
    pub cross_attn_image_to_token: Attention,
    pub skip_first_layer_pe: bool,
}

impl TwoWayAttentionBlock {
    /// queries `[B, N, C]`, keys `[B or 1, HW, C]` and their encodings -> updated
    /// (queries, keys `[B, HW, C]`).
    pub fn forward(
        &self,
        queries: Tensor<3>,
        keys: Tensor<3>,
        query_pe: Tensor<3>,
        key_pe: Tensor<3>,
    ) -> (Tensor<3>, Tensor<3>) {
        // The first layer's self-attention replaces the queries: no PE, no residual.
        let queries = if self.skip_first_layer_pe {
            self.self_attn
                .forward(queries.clone(), queries.clone(), queries)
        } else {
            let q = queries.clone() + query_pe.clone();
            queries.clone() + self.self_attn.forward(q.clone(), q, queries)
        };
        let queries = self.norm1.forward(queries);

        let q = queries.clone() + query_pe.clone();
        let k = keys.clone() + key_pe;
        let attn_out = self
            .cross_attn_token_to_image
            .forward(q, k.clone(), keys.clone());
        let queries = self.norm2.forward(queries + attn_out);

        let queries = self
            .norm3
            .forward(queries.clone() + self.mlp.forward(queries));

        let q = queries.clone() + query_pe;
        let attn_out = self
            .cross_attn_image_to_token
            .forward(k, q, queries.clone());
        let keys = self.norm4.forward(keys + attn_out);
        (queries, keys)
    }
}

#[derive(Config, Debug)]
pub struct AttentionConfig {
    pub embedding_dim: usize,
    pub num_heads: usize,
    #[config(default = 1)]
    pub downsample_rate: usize,
}

impl AttentionConfig {
    pub fn init(&self, device: &Device) -> Attention {
        let internal = self.embedding_dim / self.downsample_rate;
        assert!(
            internal.is_multiple_of(self.num_heads),
            "num_heads ({}) must divide the internal dim ({internal})",
            self.num_heads
        );
        let proj = |d_in, d_out| LinearConfig::new(d_in, d_out).init(device);
        Attention {
            q_proj: proj(self.embedding_dim, internal),
            k_proj: proj(self.embedding_dim, internal),
            v_proj: proj(self.embedding_dim, internal),
            out_proj: proj(internal, self.embedding_dim),
            num_heads: self.num_heads,
        }
    }
}

/// Multi-head attention whose projections may shrink the channel count.
#[derive(Module, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub num_heads: usize,
}

impl Attention {
    /// q `[B, Nq, C]`, k and v `[B, Nk, C]` -> `[B, Nq, C]`.
    ///
    /// Either side may have batch 1 and be shared by all `B` (the image of every prompt):
    /// its projection is then computed once.
    pub fn forward(&self, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>) -> Tensor<3> {
        let q = self.separate_heads(linear_rows(&self.q_proj, q));
        let k = self.separate_heads(linear_rows(&self.k_proj, k));
        let v = self.separate_heads(linear_rows(&self.v_proj, v));
        let [q_batch, heads, nq, head_dim] = q.dims();
        let kv_batch = k.dims()[0];
        let out = if kv_batch == 1 && q_batch > 1 {
            // Shared keys: all prompts' queries in one product, `[1, heads, B*Nq, c]`.
            let q = q
                .swap_dims(0, 1)
                .reshape([1, heads, q_batch * nq, head_dim]);
            attend(q, k, v)
                .reshape([heads, q_batch, nq, head_dim])
                .swap_dims(0, 1)
        } else if q_batch == 1 && kv_batch > 1 {
            attend(q.expand([kv_batch, heads, nq, head_dim]), k, v)
        } else {
            attend(q, k, v)
        };
        linear_rows(&self.out_proj, recombine_heads(out))
    }

    /// `[B, N, C] -> [B, heads, N, C / heads]`
    fn separate_heads(&self, x: Tensor<3>) -> Tensor<4> {
        let [b, n, c] = x.dims();
        x.reshape([b, n, self.num_heads, c / self.num_heads])
            .swap_dims(1, 2)
    }
}

/// softmax(q k^T / sqrt(c)) v: q `[B, heads, Nq, c]`, k and v `[B, heads, Nk, c]`.
fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    let [_, _, _, head_dim] = q.dims();
    let attn = matmul(q, k.swap_dims(2, 3)) / (head_dim as f64).sqrt();
    matmul(softmax(attn, 3), v)
}

/// `[B, heads, N, c] -> [B, N, heads * c]`
fn recombine_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, heads, n, c] = x.dims();
    x.swap_dims(1, 2).reshape([b, n, heads * c])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, Tolerance};

    fn random(shape: [usize; 3], device: &Device) -> Tensor<3> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    /// A batch-1 side shared by every prompt gives what repeating it per prompt gives.
    #[test]
    fn shared_keys_or_queries_match_the_repeated_batch() {
        let device = Device::default();
        let attention = AttentionConfig::new(32, 4)
            .with_downsample_rate(2)
            .init(&device);
        let tokens = random([3, 5, 32], &device);
        let image = random([1, 40, 32], &device);
        let repeated = image.clone().expand([3, 40, 32]);

        let shared = attention.forward(tokens.clone(), image.clone(), image.clone());
        let each = attention.forward(tokens.clone(), repeated.clone(), repeated.clone());
        assert_eq!(shared.dims(), [3, 5, 32]);
        shared
            .into_data()
            .assert_approx_eq::<f32>(&each.into_data(), Tolerance::absolute(1e-5));

        let shared = attention.forward(image, tokens.clone(), tokens.clone());
        let each = attention.forward(repeated, tokens.clone(), tokens);
        assert_eq!(shared.dims(), [3, 40, 32]);
        shared
            .into_data()
            .assert_approx_eq::<f32>(&each.into_data(), Tolerance::absolute(1e-5));
    }
}
