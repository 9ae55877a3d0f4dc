//! Operations written as burn backend extensions, where burn's generic composition is
//! slow on the CPU backend (flex): one pass over memory each, forward and backward, with
//! the loops compiled for the CPU's vector unit. Other backends run burn's own operations.

pub mod attention;
pub mod bilinear;
pub mod gelu;
pub mod layer_norm;
pub mod matmul;

use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::DType;
use burn::tensor::{Bytes, Shape};
use rayon::prelude::*;

/// Elements per parallel task: large enough to amortise scheduling, small enough to
/// split a 1M-element tensor over the threads.
pub(crate) const CHUNK: usize = 1 << 15;

/// `f` of every element of `x`, in place when `x` solely owns a contiguous buffer (the
/// tensor is not kept for a backward pass): a fresh 64 MB output would be page-faulted in.
pub(crate) fn map_elements(mut x: FlexTensor, f: impl Fn(f32) -> f32 + Sync + Copy) -> FlexTensor {
    values_mut(&mut x)
        .par_chunks_mut(CHUNK)
        .for_each(|chunk| vectorised::run(vectorised::Map(chunk, f)));
    x
}

/// `f(a, b)` of the elements of `a` and the same-sized `b`, written over `a` as
/// [`map_elements`] does.
pub(crate) fn map_elements_with(
    mut a: FlexTensor,
    b: &[f32],
    f: impl Fn(f32, f32) -> f32 + Sync + Copy,
) -> FlexTensor {
    values_mut(&mut a)
        .par_chunks_mut(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .for_each(|(chunk, b)| vectorised::run(vectorised::ZipMap(chunk, b, f)));
    a
}

/// Loops compiled for the widest vector unit of this CPU (AVX2: 8 lanes, against SSE2's
/// 4), chosen at run time. Every path computes the same bits: Rust never contracts
/// `a * b + c` into a fused multiply-add on its own.
pub(crate) mod vectorised {
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

    /// `values[i] = f(values[i])`.
    pub struct Map<'a, F>(pub &'a mut [f32], pub F);

    impl<F: Fn(f32) -> f32> Loop for Map<'_, F> {
        #[inline(always)]
        fn run(self) {
            let Map(values, f) = self;
            for v in values {
                *v = f(*v);
            }
        }
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
#[inline(always)]
pub(crate) fn sums_of<const K: usize>(n: usize, value: impl Fn(usize) -> [f32; K]) -> [f32; K] {
    let mut lanes = [[0.0f32; 8]; K];
    let full = n - n % 8;
    for start in (0..full).step_by(8) {
        for lane in 0..8 {
            let values = value(start + lane);
            for (sums, v) in lanes.iter_mut().zip(values) {
                sums[lane] += v;
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

/// e^x for x in [-87, 88] (clamped outside, where f32 flushes to 0 or overflows anyway):
/// x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor series to r^7 (error < 1e-8).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Adding 1.5 * 2^23 rounds x / ln2 to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split so that n * LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let exponent = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    p * f32::from_bits(((exponent + 127) as u32) << 23)
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
