//! Matrix products (of matrices, or of batches of them with the same batch shape), forward
//! and backward, into freshly allocated f32 storage.
//!
//! burn-flex 0.22 allocates every product's output with `FlexTensor::empty`, which zeroes
//! a byte vector and then copies it into a 16-byte-aligned allocation: two passes over
//! memory before the product starts, single-threaded. For the decoder's `[32768, 256]`
//! products that was about a fifth of a training step. Here the output is one zeroed f32
//! vector (see [`super::zeroed_f32`]) and each product the same `gemm` call flex makes,
//! strided, so transposed operands in the backward pass are not copied either. Operands
//! whose batch shapes differ (implicit broadcasting), and other backends, take burn's
//! matmul.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, DType, Dispatch, Flex, TensorMetadata};
use burn::tensor::{Shape, Tensor};
use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use std::mem::MaybeUninit;

use super::{bf16, filled_f32, zeroed_f32};
use crate::model::Precision;

/// `lhs [..., M, K] x rhs [..., K, N] -> [..., M, N]`.
pub fn matmul<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as MatmulBackend>::matrix_product(
        lhs.into_dispatch(),
        rhs.into_dispatch(),
    ))
}

/// The matrix product as a backend operation.
#[backend_extension(Flex, Autodiff, Cube: cfg(any(feature = "cuda", feature = "wgpu")))]
pub trait MatmulBackend: Backend {
    /// See [`matmul`].
    fn matrix_product(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }

    /// Whether each matrix of `t` is stored column by column (a transposed view), so that
    /// its gradient is best produced in that layout too.
    fn is_column_major(_t: &FloatTensor<Self>) -> bool {
        false
    }
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl MatmulBackend for burn::backend::Cube {}

/// Products smaller than this many multiply-adds run on one thread (flex's threshold);
/// a batch of them is split over the threads by product instead.
const PARALLEL_WORK: usize = 192 * 192 * 192;

/// Whether `lhs` and `rhs` are matrices, or batches of the same shape.
fn same_batch_shape(lhs: &[usize], rhs: &[usize]) -> bool {
    let rank = lhs.len();
    rank >= 2 && rhs.len() == rank && lhs[..rank - 2] == rhs[..rank - 2]
}

impl MatmulBackend for Flex {
    fn is_column_major(t: &FlexTensor) -> bool {
        let strides = t.layout().strides();
        let rank = strides.len();
        rank >= 2 && strides[rank - 2] == 1 && strides[rank - 1] != 1
    }

    fn matrix_product(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
        let f32s = lhs.dtype() == DType::F32 && rhs.dtype() == DType::F32;
        let (lhs_dims, rhs_dims) = (lhs.shape().to_vec(), rhs.shape().to_vec());
        if !f32s || !same_batch_shape(&lhs_dims, &rhs_dims) {
            return Self::float_matmul(lhs, rhs);
        }
        let rank = lhs_dims.len();
        let (m, k, n) = (lhs_dims[rank - 2], lhs_dims[rank - 1], rhs_dims[rank - 1]);
        assert_eq!(k, rhs_dims[rank - 2], "matmul: {lhs_dims:?} x {rhs_dims:?}");
        let mut out_dims = lhs_dims.clone();
        out_dims[rank - 1] = n;
        if m * n * k == 0 {
            return zeroed_f32(Shape::from(out_dims));
        }
        let (lhs_matrix, rhs_matrix) = (Matrix::of(&lhs), Matrix::of(&rhs));
        if rank == 2 && super::product_precision() == Precision::Bf16 && bf16::available() {
            return bf16_product(&lhs_matrix, &rhs_matrix, [m, k, n]);
        }
        let product = |batch: usize, dst: &mut [MaybeUninit<f32>], parallelism: Parallelism| {
            // SAFETY: the operands' pointers and strides describe their own layouts (offset
            // included), and `dst` is this batch's `[m, n]` block, which gemm writes
            // without reading (`read_dst` false).
            unsafe {
                gemm(
                    m,
                    n,
                    k,
                    dst.as_mut_ptr().cast::<f32>(),
                    1,
                    n as isize,
                    false,
                    lhs_matrix.first(batch),
                    lhs_matrix.columns,
                    lhs_matrix.rows,
                    rhs_matrix.first(batch),
                    rhs_matrix.columns,
                    rhs_matrix.rows,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
        };
        // SAFETY: the blocks cover the output, and each product writes its whole block.
        unsafe {
            filled_f32(Shape::from(out_dims), |out| {
                let blocks = out.chunks_mut(m * n);
                if m * n * k >= PARALLEL_WORK {
                    blocks
                        .enumerate()
                        .for_each(|(batch, dst)| product(batch, dst, Parallelism::Rayon(0)));
                } else {
                    blocks
                        .collect::<Vec<_>>()
                        .into_par_iter()
                        .enumerate()
                        .for_each(|(batch, dst)| product(batch, dst, Parallelism::None));
                }
            })
        }
    }
}

/// `lhs [m, k] x rhs [k, n]` on bf16 operands ([`bf16`]): the linear layers' products in
/// the image encoder's bf16 precision. (The batched products there, the rel-pos terms,
/// are a thousandth of the arithmetic and stay f32.)
fn bf16_product(lhs: &Matrix, rhs: &Matrix, [m, k, n]: [usize; 3]) -> FlexTensor {
    let strided = |matrix: &Matrix, rows, columns| bf16::Strided {
        start: matrix.first(0),
        rows,
        columns,
        row_stride: matrix.rows,
        column_stride: matrix.columns,
    };
    let (mut left, mut right) = (bf16::Left::default(), bf16::Right::default());
    // SAFETY: the views are the operands' own layouts (offset included).
    unsafe {
        left.fill(strided(lhs, m, k), 1.0);
        right.fill(strided(rhs, k, n));
    }
    // SAFETY: `product_parallel` writes every result.
    unsafe {
        filled_f32(Shape::new([m, n]), |out| {
            bf16::product_parallel(&left, &right, out)
        })
    }
}

/// Where each matrix of a (batch of) matrices starts and how it is laid out, in elements.
struct Matrix<'a> {
    values: &'a [f32],
    /// Shape and strides of the batch axes.
    batch_dims: Vec<usize>,
    batch_strides: Vec<isize>,
    start: usize,
    rows: isize,
    columns: isize,
}

impl<'a> Matrix<'a> {
    fn of(t: &'a FlexTensor) -> Self {
        let (dims, strides) = (t.shape().to_vec(), t.layout().strides());
        let rank = dims.len();
        Self {
            values: t.storage::<f32>(),
            batch_dims: dims[..rank - 2].to_vec(),
            batch_strides: strides[..rank - 2].to_vec(),
            start: t.layout().start_offset(),
            rows: strides[rank - 2],
            columns: strides[rank - 1],
        }
    }

    /// The first element of matrix `batch` (row-major over the batch axes).
    fn first(&self, batch: usize) -> *const f32 {
        let mut rest = batch;
        let mut offset = self.start as isize;
        for (&dim, &stride) in self.batch_dims.iter().zip(&self.batch_strides).rev() {
            offset += (rest % dim) as isize * stride;
            rest /= dim;
        }
        self.values[offset as usize..].as_ptr()
    }
}

/// The transpose of each matrix, as a view.
fn transposed<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    let rank = t.shape().num_dims();
    B::float_swap_dims(t, rank - 2, rank - 1)
}

impl<B: MatmulBackend, C: CheckpointStrategy> MatmulBackend for Autodiff<B, C> {
    fn matrix_product(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct MatrixProduct;

        impl<B: MatmulBackend> Backward<B, 2> for MatrixProduct {
            /// The operands each other's gradient needs, and whether each operand is a
            /// transposed view.
            type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>, [bool; 2]);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [lhs_node, rhs_node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (lhs, rhs, [lhs_transposed, rhs_transposed]) = ops.state;
                // A transposed operand's gradient is computed transposed, so that it comes
                // out in its operand's layout: gradients summed into a source tensor from
                // several uses then all share one layout.
                if let (Some(node), Some(rhs)) = (lhs_node, rhs) {
                    let lhs_grad = if lhs_transposed {
                        transposed::<B>(B::matrix_product(rhs, transposed::<B>(grad.clone())))
                    } else {
                        B::matrix_product(grad.clone(), transposed::<B>(rhs))
                    };
                    grads.register::<B>(node.id, lhs_grad);
                }
                if let (Some(node), Some(lhs)) = (rhs_node, lhs) {
                    let rhs_grad = if rhs_transposed {
                        transposed::<B>(B::matrix_product(transposed::<B>(grad), lhs))
                    } else {
                        B::matrix_product(transposed::<B>(lhs), grad)
                    };
                    grads.register::<B>(node.id, rhs_grad);
                }
            }
        }

        if !same_batch_shape(&lhs.shape(), &rhs.shape()) {
            // burn's matmul sums the gradient of a broadcast operand over its batch
            return Self::float_matmul(lhs, rhs);
        }
        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        let (lhs, lhs_node) = lhs.into_parts();
        let (rhs, rhs_node) = rhs.into_parts();
        match MatrixProduct
            .prepare::<C>([lhs_node, rhs_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                // each operand's gradient needs the other one only
                let state = (
                    rhs_tracked.then(|| lhs.clone()),
                    lhs_tracked.then(|| rhs.clone()),
                    [B::is_column_major(&lhs), B::is_column_major(&rhs)],
                );
                prep.finish(state, B::matrix_product(lhs, rhs))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::matrix_product(lhs, rhs)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_binary_matches, random};
    use super::*;
    use burn::tensor::{Device, Tolerance};

    /// Values and both gradients of `matmul(lhs(a), rhs(b))` against burn's matmul.
    fn assert_matches_burn<const D: usize>(
        a: Tensor<D>,
        b: Tensor<D>,
        lhs: impl Fn(Tensor<D>) -> Tensor<D>,
        rhs: impl Fn(Tensor<D>) -> Tensor<D>,
    ) {
        let ops: [fn(Tensor<D>, Tensor<D>) -> Tensor<D>; 2] = [matmul, |l, r| l.matmul(r)];
        assert_binary_matches(ops, (a, b), lhs, rhs, false, Tolerance::absolute(1e-4));
    }

    /// Matrices given as views with offsets and strides: a's columns 5..65, and b's
    /// columns 10..70 transposed.
    #[test]
    fn matrices_match_burns_matmul() {
        let device = Device::flex().autodiff();
        assert_matches_burn(
            random([300, 70], &device),
            random([300, 90], &device),
            |a| a.slice([0..300, 5..65]),
            |b| b.slice([0..300, 10..70]).transpose(),
        );
    }

    /// A transposed left operand (its gradient computed transposed, in its layout).
    #[test]
    fn transposed_left_operand_matches_burns_matmul() {
        let device = Device::flex().autodiff();
        assert_matches_burn(
            random([2, 70, 300], &device),
            random([2, 70, 40], &device),
            |a| a.slice([0..2, 5..65, 0..300]).swap_dims(1, 2),
            |b| b.slice([0..2, 0..60, 0..40]),
        );
    }

    /// Batches of small products (split over threads by product), one operand expanded
    /// from a single matrix (stride 0) and the other transposed, as the decoder's attention
    /// has them.
    #[test]
    fn batches_match_burns_matmul() {
        let device = Device::flex().autodiff();
        assert_matches_burn(
            random([1, 4, 50, 16], &device),
            random([3, 4, 7, 16], &device),
            |q| q.expand([3, 4, 50, 16]),
            |k| k.swap_dims(2, 3),
        );
    }

    /// Different batch shapes (burn's broadcasting) take burn's matmul, gradients summed.
    #[test]
    fn broadcast_batches_fall_back_to_burns_matmul() {
        let device = Device::flex().autodiff();
        assert_matches_burn(
            random([5, 30, 8], &device),
            random([1, 8, 6], &device),
            |a| a,
            |b| b,
        );
    }

    /// Only the tracked operand gets a gradient (the frozen side keeps none).
    #[test]
    fn a_frozen_operand_gets_no_gradient() {
        let device = Device::flex().autodiff();
        let x = random([4, 3], &device);
        let w = random([3, 2], &device).require_grad();
        let grads = matmul(x.clone(), w.clone()).sum().backward();
        assert!(x.grad(&grads).is_none());
        let want = x.transpose().matmul(Tensor::ones([4, 2], &device));
        w.grad(&grads)
            .expect("gradient")
            .into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-5));
    }
}
