//! Operations written as burn backend extensions, where burn's generic composition is
//! slow on the CPU backend (flex): one pass over memory each, forward and backward, with
//! the loops compiled for the CPU's vector unit. Other backends run burn's own operations.

pub mod bilinear;
pub mod gelu;
pub mod layer_norm;

use burn::backend::flex::FlexTensor;
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
