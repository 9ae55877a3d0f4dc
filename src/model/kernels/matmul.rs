//! The matrix product of two matrices, forward and backward, into freshly allocated f32
//! storage.
//!
//! burn-flex 0.22 allocates every product's output with `FlexTensor::empty`, which zeroes
//! a byte vector and then copies it into a 16-byte-aligned allocation: two passes over
//! memory before the product starts, single-threaded. For the decoder's `[32768, 256]`
//! products that was about a fifth of a training step. Here the output is one zeroed f32
//! vector (see [`super::zeroed_f32`]) and the product the same `gemm` call flex makes,
//! strided, so transposed operands in the backward pass are not copied either. Other
//! backends run their own matmul.

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

use super::zeroed_f32;

/// `lhs [M, K] x rhs [K, N] -> [M, N]`.
pub fn matmul_2d(lhs: Tensor<2>, rhs: Tensor<2>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as MatmulBackend>::matmul_2d(
        lhs.into_dispatch(),
        rhs.into_dispatch(),
    ))
}

/// The product of two matrices as a backend operation.
#[backend_extension(Flex, Autodiff, Cube: cfg(any(feature = "cuda", feature = "wgpu")))]
pub trait MatmulBackend: Backend {
    /// See [`matmul_2d`].
    fn matmul_2d(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_matmul(lhs, rhs)
    }
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl MatmulBackend for burn::backend::Cube {}

/// Products smaller than this many multiply-adds run on one thread (flex's threshold).
const PARALLEL_WORK: usize = 192 * 192 * 192;

impl MatmulBackend for Flex {
    fn matmul_2d(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
        let f32s = lhs.dtype() == DType::F32 && rhs.dtype() == DType::F32;
        if !f32s || lhs.shape().num_dims() != 2 || rhs.shape().num_dims() != 2 {
            return Self::float_matmul(lhs, rhs);
        }
        let [m, k] = lhs.shape().dims();
        let [k_rhs, n] = rhs.shape().dims();
        assert_eq!(k, k_rhs, "matmul_2d: [{m}, {k}] x [{k_rhs}, {n}]");
        let mut out = zeroed_f32(Shape::new([m, n]));
        let parallelism = if m * n * k >= PARALLEL_WORK {
            Parallelism::Rayon(0)
        } else {
            Parallelism::None
        };
        let [lhs_rows, lhs_columns] = matrix_strides(&lhs);
        let [rhs_rows, rhs_columns] = matrix_strides(&rhs);
        let dst = out.storage_mut::<f32>().as_mut_ptr();
        // SAFETY: the pointers and strides describe the operands' own layouts (offset
        // included) and the contiguous `[m, n]` output, all alive for the call.
        unsafe {
            gemm(
                m,
                n,
                k,
                dst,
                1,
                n as isize,
                false,
                first_element(&lhs),
                lhs_columns,
                lhs_rows,
                first_element(&rhs),
                rhs_columns,
                rhs_rows,
                0.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
        out
    }
}

/// `[row stride, column stride]` of a matrix, in elements.
fn matrix_strides(t: &FlexTensor) -> [isize; 2] {
    let strides = t.layout().strides();
    [strides[0], strides[1]]
}

fn first_element(t: &FlexTensor) -> *const f32 {
    t.storage::<f32>()[t.layout().start_offset()..].as_ptr()
}

/// The transpose of a matrix, as a view.
fn transposed<B: Backend>(t: FloatTensor<B>) -> FloatTensor<B> {
    B::float_swap_dims(t, 0, 1)
}

impl<B: MatmulBackend, C: CheckpointStrategy> MatmulBackend for Autodiff<B, C> {
    fn matmul_2d(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Matmul2d;

        impl<B: MatmulBackend> Backward<B, 2> for Matmul2d {
            /// The operands each other's gradient needs.
            type State = (Option<FloatTensor<B>>, Option<FloatTensor<B>>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let [lhs_node, rhs_node] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (lhs, rhs) = ops.state;
                if let (Some(node), Some(rhs)) = (lhs_node, rhs) {
                    grads.register::<B>(node.id, B::matmul_2d(grad.clone(), transposed::<B>(rhs)));
                }
                if let (Some(node), Some(lhs)) = (rhs_node, lhs) {
                    grads.register::<B>(node.id, B::matmul_2d(transposed::<B>(lhs), grad));
                }
            }
        }

        let (lhs_tracked, rhs_tracked) = (lhs.is_tracked(), rhs.is_tracked());
        let (lhs, lhs_node) = lhs.into_parts();
        let (rhs, rhs_node) = rhs.into_parts();
        match Matmul2d
            .prepare::<C>([lhs_node, rhs_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                // each operand's gradient needs the other one only
                let state = (
                    rhs_tracked.then(|| lhs.clone()),
                    lhs_tracked.then(|| rhs.clone()),
                );
                prep.finish(state, B::matmul_2d(lhs, rhs))
            }
            OpsKind::UnTracked(prep) => prep.finish(B::matmul_2d(lhs, rhs)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution, Tolerance};

    /// Values and both gradients equal burn's matmul, for contiguous, transposed and
    /// sliced operands.
    #[test]
    fn values_and_gradients_match_burns_matmul() {
        let device = Device::default().autodiff();
        let random =
            |shape: [usize; 2]| Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (a, b, weights) = (random([300, 70]), random([300, 90]), random([300, 300]));
        let run = |product: fn(Tensor<2>, Tensor<2>) -> Tensor<2>| {
            let (a, b) = (
                a.clone().detach().require_grad(),
                b.clone().detach().require_grad(),
            );
            // views with offsets: a's columns 5..65, and b's columns 10..70 transposed
            let lhs = a.clone().slice([0..300, 5..65]);
            let rhs = b.clone().slice([0..300, 10..70]).transpose();
            let y = product(lhs, rhs);
            let grads = (y.clone() * weights.clone()).sum().backward();
            (
                y.into_data(),
                a.grad(&grads).expect("gradient").into_data(),
                b.grad(&grads).expect("gradient").into_data(),
            )
        };
        let ours = run(matmul_2d);
        let burns = run(|lhs, rhs| lhs.matmul(rhs));
        let tolerance = Tolerance::absolute(1e-4);
        ours.0.assert_approx_eq::<f32>(&burns.0, tolerance);
        ours.1.assert_approx_eq::<f32>(&burns.1, tolerance);
        ours.2.assert_approx_eq::<f32>(&burns.2, tolerance);
    }

    /// Only the tracked operand gets a gradient (the frozen side keeps none).
    #[test]
    fn a_frozen_operand_gets_no_gradient() {
        let device = Device::default().autodiff();
        let x = Tensor::<2>::random([4, 3], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<2>::random([3, 2], Distribution::Normal(0.0, 1.0), &device).require_grad();
        let grads = matmul_2d(x.clone(), w.clone()).sum().backward();
        assert!(x.grad(&grads).is_none());
        let want = x.transpose().matmul(Tensor::ones([4, 2], &device));
        w.grad(&grads)
            .expect("gradient")
            .into_data()
            .assert_approx_eq::<f32>(&want.into_data(), Tolerance::absolute(1e-5));
    }
}
