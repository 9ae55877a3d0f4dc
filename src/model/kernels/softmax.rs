//! Softmax over the last axis as one backend operation, forward and backward.
//!
//! Burn composes softmax from a maximum, a subtraction, exponentials, a sum and a
//! division, each a pass over memory on one thread in burn-flex, and its backward pass
//! computes the exponentials again. The decoder's attention probabilities (`[8, 8, 7,
//! 4096]` and `[8, 4096, 8, 7]` per attention in a training step) went through about a
//! dozen such passes each. Here every row takes one vectorised pass forward, in place over
//! the scores, and one backward, from the probabilities, split over the threads. Other
//! backends compose the same formulas from their own operations.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{unary, Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, DType, Dispatch, Flex, TensorMetadata};
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::{exp, f32_values, max_of, sum_of, values_mut, vectorised, CHUNK};

/// `softmax(x)` over the last axis of `x`.
pub fn softmax<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as SoftmaxBackend>::softmax_last(
        x.into_dispatch(),
    ))
}

/// Softmax over the last axis and its gradient as backend operations.
#[backend_extension(Flex, Autodiff, Cube: cfg(any(feature = "cuda", feature = "wgpu")))]
pub trait SoftmaxBackend: Backend {
    /// See [`softmax`].
    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_softmax::<Self>(x)
    }

    /// The gradient of the scores from the probabilities `y` and their gradient:
    /// `y * (grad - Σ grad y)` per row.
    fn softmax_last_backward(y: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_backward::<Self>(y, grad)
    }
}

fn composed_softmax<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let axis = x.shape().num_dims() - 1;
    let max = B::float_max_dim(x.clone(), axis);
    let exps = B::float_exp(B::float_sub(x, max));
    let sums = B::float_sum_dim(exps.clone(), axis);
    B::float_div(exps, sums)
}

fn composed_backward<B: Backend>(y: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let axis = y.shape().num_dims() - 1;
    let dot = B::float_sum_dim(B::float_mul(grad.clone(), y.clone()), axis);
    B::float_mul(y, B::float_sub(grad, dot))
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl SoftmaxBackend for burn::backend::Cube {}

/// `row` replaced by its softmax.
#[inline(always)]
pub(crate) fn softmax_in_place(row: &mut [f32]) {
    let inverse = 1.0 / exps_in_place(row);
    for probability in row.iter_mut() {
        *probability *= inverse;
    }
}

/// `row` replaced by `e^(x - max)`, the softmax before its normalisation; their sum.
#[inline(always)]
fn exps_in_place(row: &mut [f32]) -> f32 {
    let max = max_of(row);
    for value in row.iter_mut() {
        *value = exp(*value - max);
    }
    sum_of(row.len(), |i| row[i])
}

/// Whole rows of `len` values per parallel task, about [`CHUNK`] values in all.
fn rows_per_task(len: usize) -> usize {
    len * (CHUNK / len).max(1)
}

/// The softmax of each `len`-long row of `values`, in place.
struct SoftmaxRows<'a> {
    values: &'a mut [f32],
    len: usize,
}

impl vectorised::Loop for SoftmaxRows<'_> {
    #[inline(always)]
    fn run(self) {
        for row in self.values.chunks_exact_mut(self.len) {
            softmax_in_place(row);
        }
    }
}

/// `grad` replaced by the scores' gradient, row by row, from the probabilities `y`.
struct SoftmaxGradientRows<'a> {
    grad: &'a mut [f32],
    y: &'a [f32],
    len: usize,
}

impl vectorised::Loop for SoftmaxGradientRows<'_> {
    #[inline(always)]
    fn run(self) {
        let len = self.len;
        for (grad, y) in self
            .grad
            .chunks_exact_mut(len)
            .zip(self.y.chunks_exact(len))
        {
            let dot = sum_of(len, |i| grad[i] * y[i]);
            for (g, &p) in grad.iter_mut().zip(y) {
                *g = p * (*g - dot);
            }
        }
    }
}

/// The length of the last axis, when `t` is f32 and has rows to normalise.
fn row_len(t: &FlexTensor) -> Option<usize> {
    let dims = t.shape();
    let len = *dims.last()?;
    (t.dtype() == DType::F32 && len > 0).then_some(len)
}

impl SoftmaxBackend for Flex {
    fn softmax_last(mut x: FlexTensor) -> FlexTensor {
        let Some(len) = row_len(&x) else {
            return composed_softmax::<Self>(x);
        };
        values_mut(&mut x)
            .par_chunks_mut(rows_per_task(len))
            .for_each(|values| vectorised::run(SoftmaxRows { values, len }));
        x
    }

    fn softmax_last_backward(y: FlexTensor, mut grad: FlexTensor) -> FlexTensor {
        let Some(len) = row_len(&y).filter(|_| grad.dtype() == DType::F32) else {
            return composed_backward::<Self>(y, grad);
        };
        let y = y.to_contiguous();
        let y = f32_values(&y);
        values_mut(&mut grad)
            .par_chunks_mut(rows_per_task(len))
            .zip(y.par_chunks(rows_per_task(len)))
            .for_each(|(grad, y)| vectorised::run(SoftmaxGradientRows { grad, y, len }));
        grad
    }
}

impl<B: SoftmaxBackend, C: CheckpointStrategy> SoftmaxBackend for Autodiff<B, C> {
    fn softmax_last(x: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Softmax;

        impl<B: SoftmaxBackend> Backward<B, 1> for Softmax {
            /// The probabilities, which the gradient is computed from.
            type State = FloatTensor<B>;

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let y = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::softmax_last_backward(y, grad)
                });
            }
        }

        let (x, node) = x.into_parts();
        match Softmax.prepare::<C>([node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let y = B::softmax_last(x);
                prep.finish(y.clone(), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::softmax_last(x)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{activation, Device, Distribution, Tolerance};

    /// Values and the gradient against burn's softmax: short rows, and rows longer
    /// than a parallel chunk; large scores, where the maximum must be taken out first.
    #[test]
    fn matches_burns_softmax_and_its_gradient() {
        let device = Device::flex().autodiff();
        for (shape, scale) in [([4, 6, 7], 1.0), ([2, 3, 33000], 1.0), ([3, 5, 9], 40.0)] {
            let x = Tensor::<3>::random(shape, Distribution::Normal(0.0, scale), &device);
            let weights = Tensor::<3>::random(shape, Distribution::Normal(0.0, 1.0), &device);
            let run = |f: fn(Tensor<3>) -> Tensor<3>| {
                let x = x.clone().detach().require_grad();
                let y = f(x.clone());
                let grads = (y.clone() * weights.clone()).sum().backward();
                (y.into_data(), x.grad(&grads).expect("gradient").into_data())
            };
            let ours = run(softmax);
            let burns = run(|x| activation::softmax(x, 2));
            ours.0
                .assert_approx_eq::<f32>(&burns.0, Tolerance::absolute(1e-6));
            ours.1
                .assert_approx_eq::<f32>(&burns.1, Tolerance::absolute(1e-6));
        }
    }
}
