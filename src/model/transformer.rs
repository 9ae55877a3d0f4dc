//! Two-way transformer of the mask decoder: prompt tokens and image embedding attend
//! to each other (`segment_anything/modeling/transformer.py`).

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor};

use super::common::{
    linear_rows, Activation, LayerNorm, LayerNormConfig, MlpBlock, MlpBlockConfig,
};
use super::kernels::broadcast_add::broadcast_add;
use super::kernels::matmul::matmul;
use super::kernels::softmax::softmax;

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
        let k = broadcast_add(keys.clone(), key_pe);
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
        let k = broadcast_add(keys.clone(), key_pe);
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
        // keys may be the one image shared by every prompt
        let keys = self.norm4.forward(broadcast_add(attn_out, keys));
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
    ///
    /// Where one side has few tokens (the decoder's 7 prompt tokens against 4096 image
    /// tokens), the other side's projections are folded into the few tokens instead of
    /// applied to the many: the same values up to rounding, with fewer multiply-adds
    /// (see [`Route`]).
    pub fn forward(&self, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>) -> Tensor<3> {
        match self.route(q.dims(), k.dims()) {
            Route::Projected { fold_output } => self.forward_projected(q, k, v, fold_output),
            Route::FewQueries => self.forward_few_queries(q, k, v),
            Route::FewKeys => self.forward_few_keys(q, k, v),
        }
    }

    /// The route with the fewest forward multiply-adds for these shapes.
    fn route(&self, [q_batch, nq, c]: [usize; 3], [kv_batch, nk, _]: [usize; 3]) -> Route {
        let (heads, internal) = (self.num_heads, self.internal_dim());
        let head_dim = internal / heads;
        let batch = q_batch.max(kv_batch);
        let q_proj = q_batch * nq * c * internal;
        let kv_proj = 2 * kv_batch * nk * c * internal;
        let scores = batch * heads * nq * nk * head_dim;
        let out_proj = batch * nq * internal * c;
        // the values and output projections folded into `[heads * Nk, C]` per prompt
        let folded_output = batch * heads * nk * head_dim * c + batch * nq * heads * nk * c;
        let fold_output = folded_output < scores + out_proj;
        let projected = q_proj + kv_proj + scores + folded_output.min(scores + out_proj);
        let few_queries = q_proj + 2 * batch * heads * nq * c * (head_dim + nk) + out_proj;
        let few_keys =
            kv_proj + batch * heads * nk * head_dim * c + 2 * batch * nq * c * heads * nk;
        if few_queries < projected.min(few_keys) {
            Route::FewQueries
        } else if few_keys < projected {
            Route::FewKeys
        } else {
            Route::Projected { fold_output }
        }
    }

    fn internal_dim(&self) -> usize {
        self.q_proj.weight.dims()[1]
    }

    /// The official computation: every token projected to `internal` channels.
    fn forward_projected(
        &self,
        q: Tensor<3>,
        k: Tensor<3>,
        v: Tensor<3>,
        fold_output: bool,
    ) -> Tensor<3> {
        let q = self.separate_heads(linear_rows(&self.q_proj, q));
        let k = self.separate_heads(linear_rows(&self.k_proj, k));
        let v = self.separate_heads(linear_rows(&self.v_proj, v));
        let [q_batch, heads, nq, head_dim] = q.dims();
        let [kv_batch, _, nk, _] = k.dims();
        // divided by sqrt(d), as the official code does
        let root = (head_dim as f64).sqrt();
        if fold_output {
            let batch = q_batch.max(kv_batch);
            let q = q.expand([batch, heads, nq, head_dim]);
            let k = k.expand([batch, heads, nk, head_dim]);
            let probs = softmax(matmul(q, k.swap_dims(2, 3)) / root);
            // [B, heads, Nq, Nk] -> [B, Nq, heads * Nk], to meet the folded projection
            let probs = probs.swap_dims(1, 2).reshape([batch, nq, heads * nk]);
            return self.folded_output(probs, v);
        }
        let out = if kv_batch == 1 && q_batch > 1 {
            // Shared keys: all prompts' queries in one product, `[1, heads, B*Nq, c]`.
            let q = q
                .swap_dims(0, 1)
                .reshape([1, heads, q_batch * nq, head_dim]);
            attend(q, k, v, root)
                .reshape([heads, q_batch, nq, head_dim])
                .swap_dims(0, 1)
        } else if q_batch == 1 && kv_batch > 1 {
            attend(q.expand([kv_batch, heads, nq, head_dim]), k, v, root)
        } else {
            attend(q, k, v, root)
        };
        linear_rows(&self.out_proj, recombine_heads(out))
    }

    /// Few queries: the key projection folded into them and the value projection applied
    /// after the weighted sum, so the many keys and values keep their `C` channels.
    ///
    /// `q_h (k W_h + b_h)ᵀ = (q_h W_hᵀ) kᵀ + q_h b_h`: the last term is the same for every
    /// key, so softmax drops it. A row of probabilities sums to one, so
    /// `p (v W_h + b_h) = (p v) W_h + b_h`.
    fn forward_few_queries(&self, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>) -> Tensor<3> {
        let q = self.separate_heads(linear_rows(&self.q_proj, q));
        let [q_batch, heads, nq, head_dim] = q.dims();
        let [kv_batch, nk, c] = k.dims();
        let batch = q_batch.max(kv_batch);
        // 1/sqrt(d) on the folded queries, a small tensor, rather than on the scores
        let scale = 1.0 / (head_dim as f64).sqrt();
        let q = q.expand([batch, heads, nq, head_dim]);
        // [B, heads, Nq, d] x [heads, d, C] -> [B, heads * Nq, C]
        let key_weight = self.head_columns(&self.k_proj).swap_dims(1, 2);
        let folded_q =
            matmul(q, per_batch(key_weight, batch)).reshape([batch, heads * nq, c]) * scale;
        let scores = rows_times(folded_q, k.swap_dims(1, 2));
        let probs = softmax(scores.reshape([batch, heads, nq, nk]));
        let mixed = rows_times(probs.reshape([batch, heads * nq, nk]), v);
        // [B, heads, Nq, C] x [heads, C, d] -> [B, heads, Nq, d]
        let value_weight = per_batch(self.head_columns(&self.v_proj), batch);
        let out = matmul(mixed.reshape([batch, heads, nq, c]), value_weight)
            + self.head_bias(&self.v_proj).unsqueeze_dim::<4>(0);
        linear_rows(&self.out_proj, recombine_heads(out))
    }

    /// Few keys: the query projection folded into the keys and the value and output
    /// projections into the values, so the many queries keep their `C` channels.
    ///
    /// `(q W_h + b_h) k_hᵀ = q (W_h k_hᵀ) + b_h k_hᵀ`.
    fn forward_few_keys(&self, q: Tensor<3>, k: Tensor<3>, v: Tensor<3>) -> Tensor<3> {
        let k = self.separate_heads(linear_rows(&self.k_proj, k));
        let v = self.separate_heads(linear_rows(&self.v_proj, v));
        let [kv_batch, heads, nk, head_dim] = k.dims();
        let [q_batch, nq, c] = q.dims();
        let batch = q_batch.max(kv_batch);
        let scale = 1.0 / (head_dim as f64).sqrt();
        let k = k.expand([batch, heads, nk, head_dim]);
        // [B, heads, Nk, d] x [heads, d, C] -> [B, heads * Nk, C]
        let query_weight = self.head_columns(&self.q_proj).swap_dims(1, 2);
        let folded_k =
            matmul(k.clone(), per_batch(query_weight, batch)).reshape([batch, heads * nk, c])
                * scale;
        // b_h k_hᵀ: [B, heads, Nk] -> [B, 1, heads * Nk]
        let bias_scores = (k * self.head_bias(&self.q_proj).unsqueeze_dim::<4>(0))
            .sum_dim(3)
            .reshape([batch, 1, heads * nk])
            * scale;
        let scores = matmul(q.expand([batch, nq, c]), folded_k.swap_dims(1, 2)) + bias_scores;
        let probs = softmax(scores.reshape([batch, nq, heads, nk]));
        self.folded_output(probs.reshape([batch, nq, heads * nk]), v)
    }

    /// `concat_h(p_h v_h) W_out + b_out` as `p [B, Nq, heads * Nk]` times the values with
    /// the output projection folded in, `[B, heads * Nk, C]`; v `[B or 1, heads, Nk, d]`.
    fn folded_output(&self, probs: Tensor<3>, v: Tensor<4>) -> Tensor<3> {
        let [batch, _, _] = probs.dims();
        let [_, heads, nk, head_dim] = v.dims();
        let c = self.out_proj.weight.dims()[1];
        // out_proj's rows, one `[d, C]` block per head
        let out_weight = self.out_proj.weight.val().reshape([heads, head_dim, c]);
        let folded_v = matmul(
            v.expand([batch, heads, nk, head_dim]),
            per_batch(out_weight, batch),
        )
        .reshape([batch, heads * nk, c]);
        let out = matmul(probs, folded_v);
        match &self.out_proj.bias {
            Some(bias) => broadcast_add(out, bias.val().reshape([1, 1, c])),
            None => out,
        }
    }

    /// A projection's weight `[C, heads * d]` as one `[C, d]` block per head,
    /// `[heads, C, d]`.
    fn head_columns(&self, linear: &Linear) -> Tensor<3> {
        let [c, internal] = linear.weight.dims();
        let heads = self.num_heads;
        linear
            .weight
            .val()
            .reshape([c, heads, internal / heads])
            .swap_dims(0, 1)
    }

    /// A projection's bias per head, `[heads, 1, d]` (zeros without one).
    fn head_bias(&self, linear: &Linear) -> Tensor<3> {
        let [_, internal] = linear.weight.dims();
        let shape = [self.num_heads, 1, internal / self.num_heads];
        match &linear.bias {
            Some(bias) => bias.val().reshape(shape),
            None => Tensor::zeros(shape, &linear.weight.device()),
        }
    }

    /// `[B, N, C] -> [B, heads, N, C / heads]`
    fn separate_heads(&self, x: Tensor<3>) -> Tensor<4> {
        let [b, n, c] = x.dims();
        x.reshape([b, n, self.num_heads, c / self.num_heads])
            .swap_dims(1, 2)
    }
}

/// How [`Attention::forward`] computes: the same values through different products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// Every token projected, as the official module does; `fold_output`: the value
    /// and output projections folded together when the keys are few.
    Projected {
        fold_output: bool,
    },
    FewQueries,
    FewKeys,
}

/// The same weight for each of `batch` products (a view, not a copy).
fn per_batch(weight: Tensor<3>, batch: usize) -> Tensor<4> {
    let [a, b, c] = weight.dims();
    weight.unsqueeze_dim::<4>(0).expand([batch, a, b, c])
}

/// `lhs [B, R, K] x rhs [B or 1, K, N] -> [B, R, N]`; a shared `rhs` takes every batch's
/// rows in one product.
fn rows_times(lhs: Tensor<3>, rhs: Tensor<3>) -> Tensor<3> {
    let [batch, rows, inner] = lhs.dims();
    let [rhs_batch, _, cols] = rhs.dims();
    if rhs_batch == 1 && batch > 1 {
        matmul(lhs.reshape([1, batch * rows, inner]), rhs).reshape([batch, rows, cols])
    } else {
        matmul(lhs, rhs)
    }
}

/// softmax(q k^T / root) v: q `[B, heads, Nq, c]`, k and v `[B, heads, Nk, c]`.
fn attend(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, root: f64) -> Tensor<4> {
    let attn = matmul(q, k.swap_dims(2, 3)) / root;
    matmul(softmax(attn), v)
}

/// `[B, heads, N, c] -> [B, N, heads * c]`
fn recombine_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, heads, n, c] = x.dims();
    x.swap_dims(1, 2).reshape([b, n, heads * c])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Distribution, TensorData, Tolerance};

    fn random(shape: [usize; 3], device: &Device) -> Tensor<3> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    /// Each route gives the official computation's values and gradients (every side
    /// projected, batches repeated): inputs, and every weight that gets one.
    #[test]
    fn every_route_matches_the_official_computation() {
        let cases = [
            // prompt tokens -> the image of each prompt, and of one prompt
            ([3, 2, 32], [3, 200, 32], Route::FewQueries),
            ([1, 2, 32], [1, 200, 32], Route::FewQueries),
            // each prompt's image -> its tokens
            ([3, 200, 32], [3, 2, 32], Route::FewKeys),
            // the shared image -> each prompt's tokens
            (
                [1, 200, 32],
                [3, 2, 32],
                Route::Projected { fold_output: true },
            ),
            // tokens -> tokens, and tokens -> the shared image
            (
                [3, 5, 32],
                [3, 5, 32],
                Route::Projected { fold_output: false },
            ),
            (
                [3, 7, 32],
                [1, 200, 32],
                Route::Projected { fold_output: false },
            ),
        ];
        let device = Device::flex().autodiff();
        let attention = AttentionConfig::new(32, 4)
            .with_downsample_rate(2)
            .init(&device);
        for (q_dims, kv_dims, route) in cases {
            assert_eq!(
                attention.route(q_dims, kv_dims),
                route,
                "{q_dims:?} {kv_dims:?}"
            );
            let (q, k, v) = (
                random(q_dims, &device),
                random(kv_dims, &device),
                random(kv_dims, &device),
            );
            let batch = q_dims[0].max(kv_dims[0]);
            let out_dims = [batch, q_dims[1], q_dims[2]];
            let weights = Tensor::<3>::random(out_dims, Distribution::Normal(1.0, 1.0), &device);
            let run = |official: bool| {
                let (q, k, v) = (
                    q.clone().require_grad(),
                    k.clone().require_grad(),
                    v.clone().require_grad(),
                );
                let y = if official {
                    let expand = |x: Tensor<3>| {
                        let [_, n, c] = x.dims();
                        x.expand([batch, n, c])
                    };
                    attention.forward_projected(
                        expand(q.clone()),
                        expand(k.clone()),
                        expand(v.clone()),
                        false,
                    )
                } else {
                    attention.forward(q.clone(), k.clone(), v.clone())
                };
                let grads = (y.clone() * weights.clone()).sum().backward();
                let grad = |x: &Tensor<3>| x.grad(&grads).map(|g| g.into_data());
                let mut params = Vec::new();
                for linear in [
                    &attention.q_proj,
                    &attention.k_proj,
                    &attention.v_proj,
                    &attention.out_proj,
                ] {
                    params.push(linear.weight.val().grad(&grads).map(|g| g.into_data()));
                    let bias = linear.bias.as_ref().expect("biases");
                    params.push(bias.val().grad(&grads).map(|g| g.into_data()));
                }
                (y.into_data(), [grad(&q), grad(&k), grad(&v)], params)
            };
            let (ours, official) = (run(false), run(true));
            assert_close(&ours.0, &official.0, largest(&official.0));
            for (i, (a, b)) in ours
                .1
                .iter()
                .chain(&ours.2)
                .zip(official.1.iter().chain(&official.2))
                .enumerate()
            {
                let b = b
                    .as_ref()
                    .expect("the official computation gives every gradient");
                // The key bias (params[3]) shifts all of a query's scores equally:
                // softmax makes its gradient zero, and the folded route leaves it out.
                // Elsewhere it is rounding noise, at the scale of its weight's gradient.
                let key_bias = i == 3 + 3;
                let scale = if key_bias {
                    largest(official.2[2].as_ref().expect("key weight gradient"))
                } else {
                    largest(b)
                };
                let zeros = TensorData::zeros::<f32, _>(b.shape().clone());
                match a {
                    Some(a) => assert_close(a, b, scale),
                    None if key_bias => assert_close(&zeros, b, scale),
                    None => panic!("gradient {i} is missing"),
                }
            }
        }
    }

    fn floats(t: &TensorData) -> Vec<f32> {
        t.iter::<f32>().collect()
    }

    fn largest(t: &TensorData) -> f32 {
        floats(t).iter().fold(0.0, |m, x| m.max(x.abs()))
    }

    /// Equal up to float rounding at `scale` (gradients summed over many rows cancel to
    /// small entries, whose own relative errors are large).
    fn assert_close(got: &TensorData, want: &TensorData, scale: f32) {
        let (got, want) = (floats(got), floats(want));
        assert_eq!(got.len(), want.len());
        let worst = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= 1e-5 * scale, "off by {worst} at scale {scale}");
    }

    /// A batch-1 side shared by every prompt gives what repeating it per prompt gives.
    #[test]
    fn shared_keys_or_queries_match_the_repeated_batch() {
        let device = Device::flex();
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
