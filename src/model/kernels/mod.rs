//! Operations written as burn backend extensions, where burn's generic composition is
//! slow on the CPU backend (flex): one pass over memory each, forward and backward, with
//! the loops compiled for the CPU's vector unit. Other backends run burn's own operations.

pub mod attention;
pub mod bf16;
pub mod bf16_softmax;
pub mod bilinear;
pub mod broadcast_add;
pub mod gelu;
pub mod layer_norm;
pub mod matmul;
pub mod softmax;
mod tile_config;

use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::{DType, TensorMetadata};
use burn::tensor::{Bytes, Shape};
use rayon::prelude::*;
use std::cell::Cell;
use std::mem::MaybeUninit;

use super::Precision;

thread_local! {
    /// The arithmetic of this thread's matrix products (see [`with_product_precision`]).
    static PRODUCTS: Cell<Precision> = const { Cell::new(Precision::F32) };
}

/// The arithmetic of matrix products on this thread now.
pub(crate) fn product_precision() -> Precision {
    PRODUCTS.with(Cell::get)
}

/// Runs `f` with this thread's matrix products (the linear layers' and the attention
/// kernel's, on the CPU backend) in `precision`, restoring the previous one after, also
/// when `f` panics. A setting of the thread, not of the model, because the products are
/// backend operations that only see tensors.
pub(crate) fn with_product_precision<R>(precision: Precision, f: impl FnOnce() -> R) -> R {
    struct Restore(Precision);
    impl Drop for Restore {
        fn drop(&mut self) {
            PRODUCTS.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(PRODUCTS.with(|p| p.replace(precision)));
    f()
}

/// Elements per parallel task: large enough to amortise scheduling, small enough to
/// split a 1M-element tensor over the threads.
pub(crate) const CHUNK: usize = 1 << 15;

/// `f` of every element of `x`: in place when `x` solely owns its buffer, else into a
/// fresh one (no copy of `x` first, as copy-on-write would make).
pub(crate) fn map_elements(x: FlexTensor, f: impl Fn(f32) -> f32 + Sync + Copy) -> FlexTensor {
    map_elements_with(x, None, move |a, _| f(a))
}

/// `f(a, b)` of the elements of `a` and the same-sized `b` (or `f(a, 0)` without `b`),
/// written as [`map_elements`] does.
pub(crate) fn map_elements_with(
    a: FlexTensor,
    b: Option<&[f32]>,
    f: impl Fn(f32, f32) -> f32 + Sync + Copy,
) -> FlexTensor {
    let mut a = if a.is_contiguous() {
        a
    } else {
        a.to_contiguous()
    };
    let zeros = [0.0f32; CHUNK];
    let b_chunk = |i: usize, len: usize| match b {
        Some(b) => &b[i * CHUNK..][..len],
        None => &zeros[..len],
    };
    if a.is_unique() {
        values_mut(&mut a)
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, chunk)| {
                let b = b_chunk(i, chunk.len());
                vectorised::run(vectorised::ZipMap(chunk, b, f))
            });
        return a;
    }
    let values = f32_values(&a);
    // SAFETY: the chunks cover the output, and `ZipMapInto` writes each element.
    unsafe {
        filled_f32(a.shape(), |out| {
            out.par_chunks_mut(CHUNK)
                .zip(values.par_chunks(CHUNK))
                .enumerate()
                .for_each(|(i, (out, a))| {
                    let b = b_chunk(i, out.len());
                    vectorised::run(vectorised::ZipMapInto(out, a, b, f))
                })
        })
    }
}

/// Loops compiled for the widest vector unit of this CPU (AVX2: 8 lanes, against SSE2's
/// 4), chosen at run time. Every path computes the same bits: Rust never contracts
/// `a * b + c` into a fused multiply-add on its own. (An AVX-512 entry point measured
/// slower on an Intel Xeon with AVX-512: ViT-B encoder 4.7 s against 4.5 s.)
pub(crate) mod vectorised {
    use std::mem::MaybeUninit;

    /// A loop over slices. `run` and the element functions it calls are
    /// `#[inline(always)]`, so they are compiled inside the AVX2 entry point.
    pub trait Loop {
        fn run(self);
    }

    pub fn run(work: impl Loop) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { avx2(work) };
        }
        work.run()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn avx2(work: impl Loop) {
        work.run()
    }

    /// `values[i] = f(values[i], other[i])`.
    pub struct ZipMap<'a, F>(pub &'a mut [f32], pub &'a [f32], pub F);

    impl<F: Fn(f32, f32) -> f32> Loop for ZipMap<'_, F> {
        #[inline(always)]
        fn run(self) {
            let ZipMap(values, other, f) = self;
            for (a, &b) in values.iter_mut().zip(other) {
                *a = f(*a, b);
            }
        }
    }

    /// `out[i] = f(a[i], b[i])`.
    pub struct ZipMapInto<'a, F>(
        pub &'a mut [MaybeUninit<f32>],
        pub &'a [f32],
        pub &'a [f32],
        pub F,
    );

    impl<F: Fn(f32, f32) -> f32> Loop for ZipMapInto<'_, F> {
        #[inline(always)]
        fn run(self) {
            let ZipMapInto(out, a, b, f) = self;
            for ((out, &a), &b) in out.iter_mut().zip(a).zip(b) {
                out.write(f(a, b));
            }
        }
    }
}

/// A contiguous f32 tensor of zeros, allocated once. `FlexTensor::empty` zeroes a byte
/// vector and then copies it into a 16-byte-aligned allocation (burn-flex 0.22 asks that of
/// byte vectors), a second pass over memory; f32 storage needs no more than its own
/// alignment, as in every tensor made from data.
pub(crate) fn zeroed_f32(shape: Shape) -> FlexTensor {
    let values = vec![0.0f32; shape.num_elements()];
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// A contiguous f32 tensor whose values `fill` writes, with no zeroing pass first.
///
/// # Safety
/// `fill` must initialise every element of the slice it is given.
pub(crate) unsafe fn filled_f32(
    shape: Shape,
    fill: impl FnOnce(&mut [MaybeUninit<f32>]),
) -> FlexTensor {
    let n = shape.num_elements();
    let mut values = Vec::<f32>::with_capacity(n);
    fill(&mut values.spare_capacity_mut()[..n]);
    // SAFETY: the caller's `fill` initialised all `n` elements.
    unsafe { values.set_len(n) };
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// The values of a contiguous f32 tensor (made so by the caller).
pub(crate) fn f32_values(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32")
}

/// The values of `x`, to overwrite: made contiguous first, and a shared buffer is copied
/// (burn's copy-on-write), so no other tensor sees the change.
pub(crate) fn values_mut(x: &mut FlexTensor) -> &mut [f32] {
    if !x.is_contiguous() {
        *x = x.to_contiguous();
    }
    let (start, end) = x
        .layout()
        .contiguous_offsets()
        .expect("contiguous after to_contiguous");
    &mut x.storage_mut::<f32>()[start..end]
}

/// `Σ value(i)` for `i < n` in eight interleaved partial sums, which vectorise.
#[inline(always)]
pub(crate) fn sum_of(n: usize, value: impl Fn(usize) -> f32) -> f32 {
    let [total] = sums_of(n, |i| [value(i)]);
    total
}

/// [`sum_of`] for `K` quantities at once: one pass computes every `value(i)`.
///
/// The values are computed a block at a time into a buffer (a plain loop over `i`, which
/// the compiler vectorises however long `value` is), then added into eight lanes.
#[inline(always)]
pub(crate) fn sums_of<const K: usize>(n: usize, value: impl Fn(usize) -> [f32; K]) -> [f32; K] {
    const BLOCK: usize = 64;
    let mut lanes = [[0.0f32; 8]; K];
    let mut block = [[0.0f32; BLOCK]; K];
    let full = n - n % BLOCK;
    for start in (0..full).step_by(BLOCK) {
        for i in 0..BLOCK {
            let values = value(start + i);
            for (column, v) in block.iter_mut().zip(values) {
                column[i] = v;
            }
        }
        for (sums, column) in lanes.iter_mut().zip(&block) {
            for eight in column.chunks_exact(8) {
                for (sum, v) in sums.iter_mut().zip(eight) {
                    *sum += v;
                }
            }
        }
    }
    let mut totals = lanes.map(|sums| sums.iter().sum::<f32>());
    for i in full..n {
        for (total, v) in totals.iter_mut().zip(value(i)) {
            *total += v;
        }
    }
    totals
}

/// The largest of `values`, in eight interleaved partial maxima, which vectorise.
#[inline(always)]
pub(crate) fn max_of(values: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut blocks = values.chunks_exact(8);
    for block in &mut blocks {
        for (lane, &value) in lanes.iter_mut().zip(block) {
            *lane = lane.max(value);
        }
    }
    let tail = blocks.remainder().iter().copied();
    lanes
        .into_iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, f32::max)
}

/// ln 2 split so that `n * LN2_HI` is exact for the `n` of an f32 exponential.
pub(crate) const LN2_HI: f32 = 0.693_359_4;
pub(crate) const LN2_LO: f32 = -2.121_944_4e-4;
/// e^r's Taylor coefficients to r^7, the highest first (Horner's order).
pub(crate) const EXP_TAYLOR: [f32; 8] = [
    1.0 / 5040.0,
    1.0 / 720.0,
    1.0 / 120.0,
    1.0 / 24.0,
    1.0 / 6.0,
    0.5,
    1.0,
    1.0,
];

/// e^x for x in [-87, 88] (clamped outside, where f32 flushes to 0 or overflows anyway):
/// x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor series to r^7 (error < 1e-8).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Adding 1.5 * 2^23 rounds x / ln2 to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = EXP_TAYLOR[1..]
        .iter()
        .fold(EXP_TAYLOR[0], |p, &coefficient| p * r + coefficient);
    let exponent = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    p * f32::from_bits(((exponent + 127) as u32) << 23)
}

/// Checks shared by the kernels' tests.
#[cfg(test)]
pub(crate) mod testing {
    use burn::tensor::{Device, Distribution, Tensor, Tolerance};

    pub(crate) fn random<const D: usize>(shape: [usize; D], device: &Device) -> Tensor<D> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), device)
    }

    type BinaryOp<const D: usize> = fn(Tensor<D>, Tensor<D>) -> Tensor<D>;

    /// Values and both input gradients of `op(lhs(a), rhs(b))` (through a random weighted
    /// sum), `ours` against burn's `reference`. `keep_lhs` holds on to `lhs(a)` so that it
    /// is shared while the operation runs (no in-place result).
    pub(crate) fn assert_binary_matches<const D: usize>(
        [ours, reference]: [BinaryOp<D>; 2],
        (a, b): (Tensor<D>, Tensor<D>),
        lhs: impl Fn(Tensor<D>) -> Tensor<D>,
        rhs: impl Fn(Tensor<D>) -> Tensor<D>,
        keep_lhs: bool,
        tolerance: Tolerance<f32>,
    ) {
        let out_dims = reference(lhs(a.clone()), rhs(b.clone())).dims();
        let weights = Tensor::<D>::random(out_dims, Distribution::Normal(1.0, 1.0), &a.device());
        let run = |op: BinaryOp<D>| {
            let (a, b) = (
                a.clone().detach().require_grad(),
                b.clone().detach().require_grad(),
            );
            let left = lhs(a.clone());
            let kept = keep_lhs.then(|| left.clone());
            let y = op(left, rhs(b.clone()));
            drop(kept);
            let grads = (y.clone() * weights.clone()).sum().backward();
            (
                y.into_data(),
                a.grad(&grads).expect("gradient").into_data(),
                b.grad(&grads).expect("gradient").into_data(),
            )
        };
        let (ours, burns) = (run(ours), run(reference));
        ours.0.assert_approx_eq::<f32>(&burns.0, tolerance);
        ours.1.assert_approx_eq::<f32>(&burns.1, tolerance);
        ours.2.assert_approx_eq::<f32>(&burns.2, tolerance);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_its_range() {
        for i in -8_700..=8_800 {
            let x = i as f32 * 0.01;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(
                (got - want).abs() / want < 3e-7,
                "exp({x}) = {got}, exact {want}"
            );
        }
    }

    #[test]
    fn max_of_finds_the_largest_in_any_lane_or_the_tail() {
        for n in [1, 7, 8, 9, 17, 64] {
            for at in 0..n {
                let mut values: Vec<f32> = (0..n).map(|i| -(i as f32) - 1.0).collect();
                values[at] = 3.5;
                assert_eq!(max_of(&values), 3.5, "n {n}, largest at {at}");
            }
        }
    }
}
