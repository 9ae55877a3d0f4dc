//! `lhs + rhs` where `rhs` repeats over the leading axes of `lhs` (a bias over rows, the
//! positional encoding or image shared by every prompt), forward and backward, split over
//! the threads.
//!
//! burn-flex 0.22 adds a broadcast operand on one thread, through a strided loop nest;
//! when an operand is a transposed view (the decoder's image tokens are the embedding
//! `[C, H*W]` read as `[H*W, C]`) that nest walks memory with a stride of 4096 floats. In
//! the decoder's forward pass such adds took about a fifth of the time, and the bias
//! gradients (the sums over rows of the broadcast operand) as much again in the backward
//! pass. Here the repeating operand is made contiguous once (it is the small one) and the
//! sum is one pass over `lhs`, in place when `lhs` is not shared.

use std::mem::MaybeUninit;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{binary, Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, DType, Dispatch, Flex, TensorMetadata};
use burn::tensor::{Shape, Tensor};
use rayon::prelude::*;

use super::{f32_values, filled_f32, CHUNK};

/// `lhs + rhs`, with `rhs` of `lhs`'s shape or broadcast over leading axes of size 1
/// (`[1, N, C]` over `[B, N, C]`, `[1, C]` over `[R, C]`). Other shapes are burn's add.
pub fn broadcast_add<const D: usize>(lhs: Tensor<D>, rhs: Tensor<D>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as BroadcastAddBackend>::broadcast_add(
        lhs.into_dispatch(),
        rhs.into_dispatch(),
    ))
}

/// The add and the gradient of its repeating operand as backend operations.
#[backend_extension(Flex, Autodiff, Cube: cfg(any(feature = "cuda", feature = "wgpu")))]
pub trait BroadcastAddBackend: Backend {
    /// See [`broadcast_add`].
    fn broadcast_add(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_add(lhs, rhs)
    }

    /// `grad` summed over the axes where `shape` has size 1: the gradient of an operand of
    /// that shape that was broadcast to `grad`'s.
    fn sum_to_shape(grad: FloatTensor<Self>, shape: Shape) -> FloatTensor<Self> {
        composed_sum_to_shape::<Self>(grad, &shape)
    }
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl BroadcastAddBackend for burn::backend::Cube {}

fn composed_sum_to_shape<B: Backend>(grad: FloatTensor<B>, shape: &Shape) -> FloatTensor<B> {
    let grad_shape = grad.shape();
    (0..shape.num_dims())
        .filter(|&axis| shape[axis] == 1 && grad_shape[axis] != 1)
        .fold(grad, |sum, axis| B::float_sum_dim(sum, axis))
}

/// The number of elements after which `rhs` repeats over `lhs`, when `rhs` is `lhs`'s
/// trailing axes behind leading axes of size 1.
fn period(lhs: &[usize], rhs: &[usize]) -> Option<usize> {
    if lhs.len() != rhs.len() {
        return None;
    }
    let leading = rhs.iter().take_while(|&&d| d == 1).count();
    (lhs[leading..] == rhs[leading..]).then(|| rhs.iter().product())
}

/// Splits `len` elements starting at flat index `start` into runs that each meet one
/// contiguous stretch of the repeating `rhs`: `(offset in the run, rhs range)`.
fn periodic_runs(
    len: usize,
    start: usize,
    period: usize,
) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> {
    let mut done = 0;
    std::iter::from_fn(move || {
        (done < len).then(|| {
            let r = (start + done) % period;
            let n = (period - r).min(len - done);
            let run = (done, r..r + n);
            done += n;
            run
        })
    })
}

/// `values[i] += rhs[(start + i) % rhs.len()]`.
fn add_periodic_in_place(values: &mut [f32], rhs: &[f32], start: usize) {
    for (offset, range) in periodic_runs(values.len(), start, rhs.len()) {
        let run = &mut values[offset..offset + range.len()];
        for (v, b) in run.iter_mut().zip(&rhs[range]) {
            *v += b;
        }
    }
}

/// `out[i] = lhs[i] + rhs[(start + i) % rhs.len()]`.
fn add_periodic(out: &mut [MaybeUninit<f32>], lhs: &[f32], rhs: &[f32], start: usize) {
    for (offset, range) in periodic_runs(out.len(), start, rhs.len()) {
        let n = range.len();
        let run = out[offset..offset + n]
            .iter_mut()
            .zip(&lhs[offset..offset + n]);
        for ((o, a), b) in run.zip(&rhs[range]) {
            o.write(a + b);
        }
    }
}

impl BroadcastAddBackend for Flex {
    fn broadcast_add(lhs: FlexTensor, rhs: FlexTensor) -> FlexTensor {
        let f32s = lhs.dtype() == DType::F32 && rhs.dtype() == DType::F32;
        if !f32s || period(&lhs.shape(), &rhs.shape()).is_none_or(|p| p == 0) {
            return Self::float_add(lhs, rhs);
        }
        let rhs = rhs.to_contiguous();
        let rhs = f32_values(&rhs);
        let mut lhs = if lhs.is_contiguous() {
            lhs
        } else {
            lhs.to_contiguous()
        };
        if lhs.is_unique() {
            super::values_mut(&mut lhs)
                .par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(chunk, values)| add_periodic_in_place(values, rhs, chunk * CHUNK));
            return lhs;
        }
        let values = f32_values(&lhs);
        // SAFETY: the chunks cover the output, and `add_periodic` writes each element.
        unsafe {
            filled_f32(lhs.shape(), |out| {
                out.par_chunks_mut(CHUNK)
                    .zip(values.par_chunks(CHUNK))
                    .enumerate()
                    .for_each(|(chunk, (out, lhs))| add_periodic(out, lhs, rhs, chunk * CHUNK))
            })
        }
    }

    fn sum_to_shape(grad: FlexTensor, shape: Shape) -> FlexTensor {
        if grad.shape() == shape {
            return grad;
        }
        let period = period(&grad.shape(), &shape).filter(|_| grad.dtype() == DType::F32);
        let Some(period) = period.filter(|&p| p > 0) else {
            return composed_sum_to_shape::<Self>(grad, &shape);
        };
        let grad = grad.to_contiguous();
        let grad = f32_values(&grad);
        let rows = grad.len() / period;
        // SAFETY: both branches write every element of `out`.
        unsafe {
            filled_f32(shape, |out| {
                if period >= CHUNK || rows == 1 {
                    // long rows: each task sums a band of columns over every row
                    out.par_chunks_mut(CHUNK)
                        .enumerate()
                        .for_each(|(chunk, out)| {
                            let start = chunk * CHUNK;
                            for (j, out) in out.iter_mut().enumerate() {
                                let column = start + j;
                                out.write((0..rows).map(|r| grad[r * period + column]).sum());
                            }
                        });
                } else {
                    // short rows: each task sums a block of rows, then the partial sums
                    let rows_per_task = (CHUNK / period).max(1);
                    let partials: Vec<Vec<f32>> = grad
                        .par_chunks(rows_per_task * period)
                        .map(|block| {
                            let mut sums = vec![0.0f32; period];
                            for row in block.chunks_exact(period) {
                                for (s, g) in sums.iter_mut().zip(row) {
                                    *s += g;
                                }
                            }
                            sums
                        })
                        .collect();
                    for (j, out) in out.iter_mut().enumerate() {
                        out.write(partials.iter().map(|p| p[j]).sum());
                    }
                }
            })
        }
    }
}

impl<B: BroadcastAddBackend, C: CheckpointStrategy> BroadcastAddBackend for Autodiff<B, C> {
    fn broadcast_add(lhs: FloatTensor<Self>, rhs: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct BroadcastAdd;

        impl<B: BroadcastAddBackend> Backward<B, 2> for BroadcastAdd {
            /// The shapes of `lhs` and `rhs`.
            type State = (Shape, Shape);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let (lhs_shape, rhs_shape) = ops.state;
                binary::<B, _, _>(
                    ops.parents,
                    ops.node,
                    grads,
                    |grad| B::sum_to_shape(grad, lhs_shape),
                    |grad| B::sum_to_shape(grad, rhs_shape),
                );
            }
        }

        let shapes = (lhs.shape(), rhs.shape());
        let (lhs, lhs_node) = lhs.into_parts();
        let (rhs, rhs_node) = rhs.into_parts();
        match BroadcastAdd
            .prepare::<C>([lhs_node, rhs_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(shapes, B::broadcast_add(lhs, rhs)),
            OpsKind::UnTracked(prep) => prep.finish(B::broadcast_add(lhs, rhs)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_binary_matches, random};
    use super::*;
    use burn::tensor::{Device, Tolerance};

    /// Values and both gradients of `broadcast_add(lhs(a), rhs(b))` against burn's add;
    /// `keep_lhs` keeps `lhs(a)` shared (no in-place sum).
    fn assert_matches_burn<const D: usize>(
        a: Tensor<D>,
        b: Tensor<D>,
        lhs: impl Fn(Tensor<D>) -> Tensor<D>,
        rhs: impl Fn(Tensor<D>) -> Tensor<D>,
        keep_lhs: bool,
    ) {
        // sums over hundreds of rows: equal up to their rounding
        let tolerance = Tolerance::rel_abs(1e-5, 1e-5);
        let ops: [fn(Tensor<D>, Tensor<D>) -> Tensor<D>; 2] = [broadcast_add, |l, r| l + r];
        assert_binary_matches(ops, (a, b), lhs, rhs, keep_lhs, tolerance);
    }

    /// A bias over rows, in place and into a fresh tensor; the rows straddle the
    /// parallel chunks, and the bias gradient sums them in several tasks.
    #[test]
    fn a_bias_over_rows_matches_burns_add() {
        let device = Device::flex().autodiff();
        for keep_lhs in [false, true] {
            assert_matches_burn(
                random([700, 70], &device),
                random([1, 70], &device),
                |a| a,
                |b| b,
                keep_lhs,
            );
        }
    }

    /// Transposed views on both sides (the decoder's image tokens and their encoding),
    /// and a repeating operand longer than a chunk (its gradient summed by columns).
    #[test]
    fn transposed_and_long_operands_match_burns_add() {
        let device = Device::flex().autodiff();
        assert_matches_burn(
            random([3, 16, 50], &device),
            random([1, 16, 50], &device),
            |a| a.swap_dims(1, 2),
            |b| b.swap_dims(1, 2),
            true,
        );
        assert_matches_burn(
            random([3, 40000], &device),
            random([1, 40000], &device),
            |a| a,
            |b| b,
            false,
        );
    }

    /// Broadcasting over a middle axis is burn's add, gradients summed the same way.
    #[test]
    fn other_broadcasts_fall_back_to_burns_add() {
        let device = Device::flex().autodiff();
        assert_matches_burn(
            random([3, 5, 16], &device),
            random([3, 1, 16], &device),
            |a| a,
            |b| b,
            false,
        );
    }

    #[test]
    fn the_period_is_the_trailing_block_behind_leading_ones() {
        assert_eq!(period(&[8, 4096, 256], &[1, 4096, 256]), Some(4096 * 256));
        assert_eq!(period(&[32768, 256], &[1, 256]), Some(256));
        assert_eq!(period(&[4, 5], &[4, 5]), Some(20));
        assert_eq!(period(&[3, 5, 16], &[3, 1, 16]), None);
        assert_eq!(period(&[3, 5], &[1, 4]), None);
    }
}
