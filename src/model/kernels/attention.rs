//! Attention, `softmax(scale q kᵀ + bias) v`, as one pass per block of queries, with the
//! image encoder's decomposed relative-position bias as an additive term.
//!
//! Composed, a ViT-B global-attention layer materialises its logits, `[12, 4096, 4096]`
//! (805 MB), three times (product, bias sum, softmax), each page-faulted in fresh, and
//! flex's softmax calls libm's scalar `expf` per element: together about a fifth of the
//! encoder. Here each block of queries keeps its logits in a buffer that stays in cache:
//! one matrix product, the bias and a softmax with a vectorised exp in one pass, and the
//! product with the values. Inference only: with inputs tracked by autodiff, and on the
//! other backends, burn's composed operations run.

use std::cell::RefCell;

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{
    backend_extension, Autodiff, AutodiffBackend, Backend, DType, Dispatch, Flex, TensorMetadata,
};
use burn::tensor::{Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::bf16_softmax::{biased_softmax_to_bf16, RowBias};
use super::softmax::softmax_in_place;
use super::{bf16, f32_values, product_precision, vectorised, zeroed_f32};
use crate::model::Precision;

/// The decomposed relative-position terms of the logits, for a key grid `kh x kw`:
/// `rows [N, Lq, kh]` is added to every key of a grid row, `columns [N, Lq, kw]` to every
/// key of a grid column.
pub struct RelPosBias {
    pub rows: Tensor<3>,
    pub columns: Tensor<3>,
}

/// `softmax(scale q kᵀ + bias) v`: `q [N, Lq, D]`, `k [N, Lk, D]`, `v [N, Lk, Dv]` ->
/// `[N, Lq, Dv]`. The product is scaled, then the bias added, as SAM's image encoder does.
pub fn attention(
    q: Tensor<3>,
    k: Tensor<3>,
    v: Tensor<3>,
    scale: f64,
    bias: Option<RelPosBias>,
) -> Tensor<3> {
    let (q, k, v) = (q.into_dispatch(), k.into_dispatch(), v.into_dispatch());
    Tensor::from_dispatch(match bias {
        Some(RelPosBias { rows, columns }) => <Dispatch as AttentionBackend>::biased_attention(
            q,
            k,
            v,
            scale,
            rows.into_dispatch(),
            columns.into_dispatch(),
        ),
        None => <Dispatch as AttentionBackend>::scaled_attention(q, k, v, scale),
    })
}

/// Attention, plain or with a decomposed bias, as backend operations.
#[backend_extension(Flex, Autodiff, Cube: cfg(any(feature = "cuda", feature = "wgpu")))]
pub trait AttentionBackend: Backend {
    /// See [`attention`], without a bias.
    fn scaled_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        composed_attention::<Self>(q, k, v, scale, None)
    }

    /// See [`attention`]; `bias_rows [N, Lq, kh]`, `bias_columns [N, Lq, kw]`.
    fn biased_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
        bias_rows: FloatTensor<Self>,
        bias_columns: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed_attention::<Self>(q, k, v, scale, Some([bias_rows, bias_columns]))
    }
}

/// The backend's own operations (differentiable under autodiff).
fn composed_attention<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    scale: f64,
    bias: Option<[FloatTensor<B>; 2]>,
) -> FloatTensor<B> {
    let (q_shape, keys) = (q.shape(), k.shape()[1]);
    let (n, queries) = (q_shape[0], q_shape[1]);
    let logits = B::float_matmul(
        B::float_mul_scalar(q, scale.into()),
        B::float_swap_dims(k, 1, 2),
    );
    let logits = match bias {
        Some([rows, columns]) => {
            let grid_rows = rows.shape()[2];
            let grid_columns = keys / grid_rows;
            let grid = |t, [h, w]: [usize; 2]| B::float_reshape(t, Shape::new([n, queries, h, w]));
            let logits = grid(logits, [grid_rows, grid_columns]);
            let logits = B::float_add(logits, grid(rows, [grid_rows, 1]));
            let logits = B::float_add(logits, grid(columns, [1, grid_columns]));
            B::float_reshape(logits, Shape::new([n, queries, keys]))
        }
        None => logits,
    };
    B::float_matmul(B::softmax(logits, 2), v)
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl AttentionBackend for burn::backend::Cube {}

impl<B: AttentionBackend, C: CheckpointStrategy> AttentionBackend for Autodiff<B, C> {
    fn scaled_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
    ) -> FloatTensor<Self> {
        if [&q, &k, &v].iter().any(|t| t.is_tracked()) {
            return composed_attention::<Self>(q, k, v, scale, None);
        }
        let [q, k, v] = [q, k, v].map(Self::inner);
        Self::from_inner(B::scaled_attention(q, k, v, scale))
    }

    fn biased_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f64,
        bias_rows: FloatTensor<Self>,
        bias_columns: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let inputs = [q, k, v, bias_rows, bias_columns];
        if inputs.iter().any(|t| t.is_tracked()) {
            let [q, k, v, rows, columns] = inputs;
            return composed_attention::<Self>(q, k, v, scale, Some([rows, columns]));
        }
        let [q, k, v, rows, columns] = inputs.map(Self::inner);
        Self::from_inner(B::biased_attention(q, k, v, scale, rows, columns))
    }
}

/// Logits kept per block of queries: 1 MB, which stays in a core's cache between the
/// matrix products and the softmax.
const BLOCK_LOGITS: usize = 1 << 18;

thread_local! {
    /// Each thread's logits buffer, reused from block to block.
    static LOGITS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Each thread's bf16 left operand (the queries, then the softmax weights).
    static LEFT: RefCell<bf16::Left> = RefCell::new(bf16::Left::default());
}

impl AttentionBackend for Flex {
    fn scaled_attention(q: FlexTensor, k: FlexTensor, v: FlexTensor, scale: f64) -> FlexTensor {
        flex_attention(q, k, v, scale, None)
    }

    fn biased_attention(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        scale: f64,
        bias_rows: FlexTensor,
        bias_columns: FlexTensor,
    ) -> FlexTensor {
        flex_attention(q, k, v, scale, Some([bias_rows, bias_columns]))
    }
}

/// The kernel, or the composed operations for inputs it does not take.
fn flex_attention(
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    scale: f64,
    bias: Option<[FlexTensor; 2]>,
) -> FlexTensor {
    let Some(shapes) = KernelShapes::of(&q, &k, &v, bias.as_ref()) else {
        return composed_attention::<Flex>(q, k, v, scale, bias);
    };
    let KernelShapes {
        n,
        queries,
        keys,
        dim,
        value_dim,
        grid,
    } = shapes;
    let [q, k, v] = [q, k, v].map(|t| t.to_contiguous());
    let bias = bias.map(|terms| terms.map(|t| t.to_contiguous()));
    let (q, k, v) = (f32_values(&q), f32_values(&k), f32_values(&v));
    let bias = bias
        .as_ref()
        .map(|[rows, columns]| [f32_values(rows), f32_values(columns)]);

    let block = (BLOCK_LOGITS / keys).clamp(1, queries);
    // read here: the heads run on rayon's threads, which do not share this one's setting
    let bf16 = product_precision() == Precision::Bf16 && bf16::available();
    let mut out = zeroed_f32(Shape::new([n, queries, value_dim]));
    out.storage_mut::<f32>()
        .par_chunks_mut(queries * value_dim)
        .enumerate()
        .for_each(|(head, head_out)| {
            let k = &k[head * keys * dim..][..keys * dim];
            let v = &v[head * keys * value_dim..][..keys * value_dim];
            let products = HeadProducts::for_head(k, v, [dim, value_dim], bf16);
            head_out
                .par_chunks_mut(block * value_dim)
                .enumerate()
                .for_each(|(index, out_rows)| {
                    let first = head * queries + index * block;
                    let rows = out_rows.len() / value_dim;
                    let q = &q[first * dim..][..rows * dim];
                    let bias = bias.map(|[bias_rows, bias_columns]| {
                        let [grid_rows, grid_columns] = grid;
                        Bias {
                            rows: &bias_rows[first * grid_rows..][..rows * grid_rows],
                            columns: &bias_columns[first * grid_columns..][..rows * grid_columns],
                            grid_columns,
                        }
                    });
                    attend_block(q, &products, scale as f32, bias, out_rows);
                });
        });
    out
}

/// Sizes of a call the kernel takes: f32, 3-D, consistent, and both bias terms or none.
struct KernelShapes {
    n: usize,
    queries: usize,
    keys: usize,
    dim: usize,
    value_dim: usize,
    /// The key grid `[kh, kw]` of the bias (`[1, keys]` without one).
    grid: [usize; 2],
}

impl KernelShapes {
    fn of(
        q: &FlexTensor,
        k: &FlexTensor,
        v: &FlexTensor,
        bias: Option<&[FlexTensor; 2]>,
    ) -> Option<Self> {
        let mut tensors = [q, k, v].into_iter().chain(bias.into_iter().flatten());
        let all_f32_3d = tensors.all(|t| t.dtype() == DType::F32 && t.shape().num_dims() == 3);
        if !all_f32_3d {
            return None;
        }
        let dims = |t: &FlexTensor| {
            let shape = t.shape();
            [shape[0], shape[1], shape[2]]
        };
        let ([n, queries, dim], [kn, keys, kdim], [vn, vkeys, value_dim]) =
            (dims(q), dims(k), dims(v));
        let consistent = kn == n && vn == n && kdim == dim && vkeys == keys && keys > 0;
        let grid = match bias.map(|[rows, columns]| (dims(rows), dims(columns))) {
            None => [1, keys],
            Some(([rn, rq, grid_rows], [cn, cq, grid_columns]))
                if [rn, cn] == [n, n]
                    && [rq, cq] == [queries, queries]
                    && grid_rows * grid_columns == keys =>
            {
                [grid_rows, grid_columns]
            }
            Some(_) => return None,
        };
        (consistent && n * queries * value_dim > 0).then_some(Self {
            n,
            queries,
            keys,
            dim,
            value_dim,
            grid,
        })
    }
}

/// One block of queries' bias terms: `rows [rows, kh]`, `columns [rows, kw]`.
#[derive(Clone, Copy)]
struct Bias<'a> {
    rows: &'a [f32],
    columns: &'a [f32],
    grid_columns: usize,
}

impl<'a> Bias<'a> {
    /// The terms of the block's query `index`, over `keys` keys.
    #[inline(always)]
    fn of_query(self, index: usize, keys: usize) -> RowBias<'a> {
        let grid_rows = keys / self.grid_columns;
        RowBias {
            rows: &self.rows[index * grid_rows..][..grid_rows],
            columns: &self.columns[index * self.grid_columns..][..self.grid_columns],
        }
    }
}

/// One head's keys and values, `k [Lk, D]` and `v [Lk, Dv]`, ready for its two products.
struct HeadProducts<'a> {
    dim: usize,
    keys: usize,
    arithmetic: Arithmetic<'a>,
}

/// f32 on the row-major `k` and `v`, or, in the bf16 precision, on their bf16 tiles,
/// packed once per head.
enum Arithmetic<'a> {
    F32 {
        k: &'a [f32],
        v: &'a [f32],
    },
    Bf16 {
        keys_transposed: bf16::Right,
        values: bf16::Right,
    },
}

impl<'a> HeadProducts<'a> {
    fn for_head(k: &'a [f32], v: &'a [f32], [dim, value_dim]: [usize; 2], bf16: bool) -> Self {
        let keys = k.len() / dim;
        assert!(
            k.len() == keys * dim && v.len() == keys * value_dim,
            "attention head slices disagree with their shapes"
        );
        let arithmetic = if bf16 {
            let (mut keys_transposed, mut values) =
                (bf16::Right::default(), bf16::Right::default());
            // SAFETY: both views lie within `k` and `v` (checked above).
            unsafe {
                keys_transposed.fill(bf16::Strided {
                    start: k.as_ptr(),
                    rows: dim,
                    columns: keys,
                    row_stride: 1,
                    column_stride: dim as isize,
                });
                values.fill(bf16::Strided::rows_of(v, keys, value_dim));
            }
            Arithmetic::Bf16 {
                keys_transposed,
                values,
            }
        } else {
            Arithmetic::F32 { k, v }
        };
        Self {
            dim,
            keys,
            arithmetic,
        }
    }
}

/// `out [rows, Dv] = softmax(scale q kᵀ + bias) v` for `q [rows, D]`, all row-major.
fn attend_block(q: &[f32], head: &HeadProducts, scale: f32, bias: Option<Bias>, out: &mut [f32]) {
    let (dim, keys) = (head.dim, head.keys);
    let rows = q.len() / dim;
    LOGITS.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        buffer.resize(rows * keys, 0.0);
        let logits = &mut buffer[..];
        match &head.arithmetic {
            Arithmetic::F32 { k, v } => {
                f32_logits(q, k, dim, scale, logits);
                vectorised::run(BiasedSoftmax { logits, keys, bias });
                f32_weighted_values(logits, v, out.len() / rows, out);
            }
            Arithmetic::Bf16 {
                keys_transposed,
                values,
            } => LEFT.with(|left| {
                let mut left = left.borrow_mut();
                left.fill_rows(q, dim, scale);
                bf16::product(&left, keys_transposed, bf16::as_uninit(logits), keys);
                left.fill_rows_with(rows, keys, |i, weights| {
                    let row = &mut logits[i * keys..][..keys];
                    biased_softmax_to_bf16(row, bias.map(|b| b.of_query(i, keys)), weights)
                });
                let value_dim = values.columns();
                bf16::product(&left, values, bf16::as_uninit(out), value_dim);
            }),
        }
    });
}

/// `logits [rows, Lk] = scale * q kᵀ` in f32, `k` read column by column without a
/// transposed copy.
fn f32_logits(q: &[f32], k: &[f32], dim: usize, scale: f32, logits: &mut [f32]) {
    let (rows, keys) = (q.len() / dim, k.len() / dim);
    assert!(
        q.len() == rows * dim && logits.len() == rows * keys,
        "attention block slices disagree with their shapes"
    );
    // SAFETY: every pointer spans its matrix for the sizes and strides given (checked
    // above), and `logits` aliases nothing.
    unsafe {
        gemm(
            rows,
            keys,
            dim,
            logits.as_mut_ptr(),
            1,
            keys as isize,
            false,
            q.as_ptr(),
            1,
            dim as isize,
            k.as_ptr(),
            dim as isize,
            1,
            0.0,
            scale,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `out [rows, Dv] = weights [rows, Lk] v` in f32.
fn f32_weighted_values(weights: &[f32], v: &[f32], value_dim: usize, out: &mut [f32]) {
    let keys = v.len() / value_dim;
    let rows = weights.len() / keys;
    assert!(
        v.len() == keys * value_dim && out.len() == rows * value_dim,
        "attention block slices disagree with their shapes"
    );
    // SAFETY: as in `f32_logits`; `out` aliases nothing.
    unsafe {
        gemm(
            rows,
            value_dim,
            keys,
            out.as_mut_ptr(),
            1,
            value_dim as isize,
            false,
            weights.as_ptr(),
            1,
            keys as isize,
            v.as_ptr(),
            1,
            value_dim as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// Adds the bias to rows of `keys` logits and turns each row into its softmax, in place.
struct BiasedSoftmax<'a> {
    logits: &'a mut [f32],
    keys: usize,
    bias: Option<Bias<'a>>,
}

impl vectorised::Loop for BiasedSoftmax<'_> {
    #[inline(always)]
    fn run(self) {
        let BiasedSoftmax { logits, keys, bias } = self;
        for (index, row) in logits.chunks_exact_mut(keys).enumerate() {
            if let Some(RowBias { rows, columns }) = bias.map(|b| b.of_query(index, keys)) {
                for (segment, &row_term) in row.chunks_exact_mut(columns.len()).zip(rows) {
                    for (logit, &column_term) in segment.iter_mut().zip(columns) {
                        // the official order: (logit + row term) + column term
                        *logit = *logit + row_term + column_term;
                    }
                }
            }
            softmax_in_place(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, TensorData, Tolerance};

    fn random(shape: [usize; 3], device: &Device) -> Tensor<3> {
        Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.5), device)
    }

    fn flex(t: Tensor<3>) -> FlexTensor {
        FlexTensor::from_data(t.into_data())
    }

    /// `softmax(scale q kᵀ + bias) v` in f64, one query at a time.
    fn reference(
        [q, k, v]: [&Tensor<3>; 3],
        scale: f64,
        bias: Option<[&Tensor<3>; 2]>,
    ) -> Vec<f32> {
        let values = |t: &Tensor<3>| -> Vec<f64> {
            let data = t.to_data().convert::<f32>();
            data.as_slice::<f32>()
                .unwrap()
                .iter()
                .map(|&x| x as f64)
                .collect()
        };
        let [n, queries, dim] = q.dims();
        let ([_, keys, _], [_, _, value_dim]) = (k.dims(), v.dims());
        let (q, k, v) = (values(q), values(k), values(v));
        let bias = bias.map(|[rows, columns]| (values(rows), values(columns), rows.dims()[2]));
        let mut out = Vec::new();
        for head in 0..n {
            for i in 0..queries {
                let query = &q[(head * queries + i) * dim..][..dim];
                let logits: Vec<f64> = (0..keys)
                    .map(|j| {
                        let key = &k[(head * keys + j) * dim..][..dim];
                        let dot: f64 = query.iter().zip(key).map(|(a, b)| a * b).sum();
                        let term = bias.as_ref().map_or(0.0, |(rows, columns, grid_rows)| {
                            let grid_columns = keys / grid_rows;
                            let row = (head * queries + i) * grid_rows + j / grid_columns;
                            let column = (head * queries + i) * grid_columns + j % grid_columns;
                            rows[row] + columns[column]
                        });
                        scale * dot + term
                    })
                    .collect();
                let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for c in 0..value_dim {
                    let value: f64 = (0..keys)
                        .map(|j| weights[j] * v[(head * keys + j) * value_dim + c])
                        .sum();
                    out.push((value / total) as f32);
                }
            }
        }
        out
    }

    /// The kernel and the composed operations both equal the f64 result, with and without
    /// a bias, when a head's queries take one block (a window) and several blocks with a
    /// partial last one.
    #[test]
    fn kernel_and_composed_operations_match_f64() {
        let device = Device::flex();
        // (heads, queries, key grid, dim, value dim)
        for (n, queries, [kh, kw], dim, value_dim) in
            [(3, 49, [7, 7], 16, 16), (2, 150, [64, 64], 8, 12)]
        {
            let keys = kh * kw;
            let (q, k, v) = (
                random([n, queries, dim], &device),
                random([n, keys, dim], &device),
                random([n, keys, value_dim], &device),
            );
            let (rows, columns) = (
                random([n, queries, kh], &device),
                random([n, queries, kw], &device),
            );
            for with_bias in [false, true] {
                let bias = with_bias.then_some([&rows, &columns]);
                let want =
                    TensorData::new(reference([&q, &k, &v], 0.3, bias), [n, queries, value_dim]);
                let [fq, fk, fv] = [&q, &k, &v].map(|t| flex(t.clone()));
                let flex_bias = bias.map(|terms| terms.map(|t| flex(t.clone())));
                let kernel = match flex_bias.clone() {
                    Some([rows, columns]) => Flex::biased_attention(
                        fq.clone(),
                        fk.clone(),
                        fv.clone(),
                        0.3,
                        rows,
                        columns,
                    ),
                    None => Flex::scaled_attention(fq.clone(), fk.clone(), fv.clone(), 0.3),
                };
                let composed = composed_attention::<Flex>(fq, fk, fv, 0.3, flex_bias);
                // A few float32 ulps of outputs up to ~5 (seen: kernel 6e-6, flex's own
                // softmax 1e-5 at 4096 keys); a lost or misplaced bias term is off by ~1.
                for (name, got, bound) in [("kernel", kernel, 2e-5), ("composed", composed, 1e-4)] {
                    let got = got.into_data();
                    assert_eq!(got.shape(), want.shape(), "{name}");
                    let worst = got
                        .as_slice::<f32>()
                        .unwrap()
                        .iter()
                        .zip(want.as_slice::<f32>().unwrap())
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0f32, f32::max);
                    assert!(
                        worst < bound,
                        "{name}, bias {with_bias}, {keys} keys: {worst:e}"
                    );
                }
            }
        }
    }

    /// `reference` with the kernel's bf16 roundings: the scaled queries, keys, softmax
    /// weights and values rounded to bf16, everything else in f64.
    fn bf16_reference(
        [q, k, v]: [&Tensor<3>; 3],
        scale: f64,
        [rows, columns]: [&Tensor<3>; 2],
    ) -> Vec<f32> {
        let round = |t: Tensor<3>| {
            let rounded: Vec<f32> = t
                .to_data()
                .convert::<f32>()
                .as_slice::<f32>()
                .unwrap()
                .iter()
                .map(|&x| f32::from_bits((bf16::to_bf16(x) as u32) << 16))
                .collect();
            Tensor::<3>::from_data(TensorData::new(rounded, t.dims()), &t.device())
        };
        // softmax weights are rounded after the softmax: emulated by rounding each weight
        // of the f64 result's rows, one query at a time
        let [n, queries, _] = q.dims();
        let (keys, value_dim) = (k.dims()[1], v.dims()[2]);
        let (q, k, v) = (round(q.clone() * scale), round(k.clone()), round(v.clone()));
        let identity = Tensor::<3>::from_data(
            TensorData::new(
                (0..n * keys * keys)
                    .map(|i| ((i % (keys * keys)) % (keys + 1) == 0) as u8 as f32)
                    .collect::<Vec<f32>>(),
                [n, keys, keys],
            ),
            &q.device(),
        );
        // the weights themselves: attention with the identity as values
        let weights = reference([&q, &k, &identity], 1.0, Some([rows, columns]));
        let weights = round(Tensor::<3>::from_data(
            TensorData::new(weights, [n, queries, keys]),
            &q.device(),
        ));
        let (weights, v) = (
            weights
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap(),
            v.into_data().convert::<f32>().try_to_vec::<f32>().unwrap(),
        );
        let mut out = Vec::with_capacity(n * queries * value_dim);
        for head in 0..n {
            for i in 0..queries {
                let row = &weights[(head * queries + i) * keys..][..keys];
                for c in 0..value_dim {
                    let value: f64 = (0..keys)
                        .map(|j| row[j] as f64 * v[(head * keys + j) * value_dim + c] as f64)
                        .sum();
                    out.push(value as f32);
                }
            }
        }
        out
    }

    fn median_difference(a: &[f32], b: &[f32]) -> f64 {
        let mut differences: Vec<f64> =
            a.iter().zip(b).map(|(a, b)| (a - b).abs() as f64).collect();
        differences.sort_by(f64::total_cmp);
        differences[differences.len() / 2]
    }

    /// In the bf16 precision, the kernel's two products round their operands to bf16 and
    /// sum in f32: the result is the f64 result with those roundings, up to the f32 sums
    /// and the rounding of a few softmax weights that f32 puts on the other side of a bf16
    /// step; and it is as far from the f32 result as bf16 makes it. For a window (one
    /// block per head, ragged tiles) and a grid of several blocks, on every engine here.
    #[test]
    fn bf16_kernel_rounds_as_bf16_does() {
        if !bf16::available() {
            eprintln!("skipped: this CPU has no bf16 matrix hardware");
            return;
        }
        let device = Device::flex();
        for (n, queries, [kh, kw], dim) in [(3, 49, [7, 7], 16), (2, 300, [32, 32], 64)] {
            let keys = kh * kw;
            let (q, k, v) = (
                random([n, queries, dim], &device),
                random([n, keys, dim], &device),
                random([n, keys, dim], &device),
            );
            let (rows, columns) = (
                random([n, queries, kh], &device),
                random([n, queries, kw], &device),
            );
            let scale = 1.0 / (dim as f64).sqrt();
            let exact = reference([&q, &k, &v], scale, Some([&rows, &columns]));
            let rounded = bf16_reference([&q, &k, &v], scale, [&rows, &columns]);
            let [q, k, v, rows, columns] = [q, k, v, rows, columns].map(flex);
            let got = Precision::Bf16
                .scope(|| Flex::biased_attention(q, k, v, scale, rows, columns))
                .into_data();
            let got = got.as_slice::<f32>().unwrap();
            // medians: a softmax weight that f32 and f64 round to neighbouring bf16
            // values moves its row's outputs by up to a bf16 step of weight x value;
            // rarely, but the largest difference, and in about one run in fifteen the
            // mean, are set by that one weight
            let (from_rounded, from_exact) = (
                median_difference(got, &rounded),
                median_difference(got, &exact),
            );
            println!(
                "bf16 attention, {keys} keys: median difference {from_rounded:e} from the \
                 rounded f64 result, {from_exact:e} from the exact one"
            );
            // measured over 30 runs: at most 1.5e-8 (49 keys) and 3.0e-8 (1024 keys)
            // from the rounded result, 1.1e-3 to 1.7e-3 from the exact one
            assert!(
                from_rounded < 1e-4 * from_exact,
                "{keys} keys: {from_rounded:e}"
            );
            assert!(
                from_exact > 5e-4,
                "{keys} keys: {from_exact:e} is not bf16 rounding"
            );
        }
    }

    /// The bias moves the result: a test that ignored it would fail here.
    #[test]
    fn bias_changes_the_result() {
        let device = Device::flex();
        let (q, k, v) = (
            random([1, 16, 8], &device),
            random([1, 16, 8], &device),
            random([1, 16, 8], &device),
        );
        let plain = attention(q.clone(), k.clone(), v.clone(), 0.5, None);
        let bias = RelPosBias {
            rows: random([1, 16, 4], &device) * 3.0,
            columns: random([1, 16, 4], &device) * 3.0,
        };
        let biased = attention(q, k, v, 0.5, Some(bias));
        let difference = (plain - biased).abs().max().into_scalar::<f32>();
        assert!(difference > 1e-2, "largest difference {difference}");
    }

    /// Under autodiff, untracked inputs take the kernel and tracked ones the composed,
    /// differentiable operations: same values, and gradients reach every input.
    #[test]
    fn autodiff_takes_the_kernel_untracked_and_differentiates_tracked() {
        let device = Device::flex().autodiff();
        let shapes = ([2, 12, 8], [2, 12, 8], [2, 12, 5], [2, 12, 3], [2, 12, 4]);
        let (q, k, v, rows, columns) = (
            random(shapes.0, &device),
            random(shapes.1, &device),
            random(shapes.2, &device),
            random(shapes.3, &device),
            random(shapes.4, &device),
        );
        let run = |track: bool| {
            let leaf = |t: &Tensor<3>| {
                let t = t.clone().detach();
                if track {
                    t.require_grad()
                } else {
                    t
                }
            };
            let inputs = [leaf(&q), leaf(&k), leaf(&v), leaf(&rows), leaf(&columns)];
            let [q, k, v, rows, columns] = inputs.clone();
            let out = attention(q, k, v, 0.7, Some(RelPosBias { rows, columns }));
            (out, inputs)
        };
        let (untracked, _) = run(false);
        let (tracked, inputs) = run(true);
        untracked
            .clone()
            .into_data()
            .assert_approx_eq::<f32>(&tracked.clone().into_data(), Tolerance::absolute(1e-5));
        let grads = (tracked * untracked.detach()).sum().backward();
        for input in inputs {
            let grad = input.grad(&grads).expect("a gradient for every input");
            assert!(grad.abs().sum().into_scalar::<f32>() > 0.0);
        }
    }
}
