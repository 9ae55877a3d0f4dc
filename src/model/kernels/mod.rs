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
        .for_each(|chunk| vectorised::map(chunk, f));
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
        .for_each(|(chunk, b)| vectorised::zip_map(chunk, b, f));
    a
}

/// The element loops, compiled for the widest vector unit of this CPU (AVX2: 8 lanes,
/// against SSE2's 4) and chosen at run time. Every path computes the same bits: Rust
/// never contracts `a * b + c` into a fused multiply-add on its own.
pub(crate) mod vectorised {
    /// The element functions are `#[inline(always)]`, so each loop inlines them.
    macro_rules! dispatch {
        ($generic:ident($($arg:expr),*)) => {{
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                return unsafe { avx2::$generic($($arg),*) };
            }
            generic::$generic($($arg),*)
        }};
    }

    pub fn map(values: &mut [f32], f: impl Fn(f32) -> f32) {
        dispatch!(map(values, f))
    }

    pub fn zip_map(values: &mut [f32], other: &[f32], f: impl Fn(f32, f32) -> f32) {
        dispatch!(zip_map(values, other, f))
    }

    /// [`super::layer_norm::backward_rows`].
    pub fn layer_norm_backward(
        x: &[f32],
        grad: &mut [f32],
        gamma: &[f32],
        epsilon: f32,
        gamma_grad: &mut [f32],
        beta_grad: &mut [f32],
    ) {
        dispatch!(layer_norm_backward(
            x, grad, gamma, epsilon, gamma_grad, beta_grad
        ))
    }

    mod generic {
        #[inline(always)]
        pub fn map(values: &mut [f32], f: impl Fn(f32) -> f32) {
            values.iter_mut().for_each(|v| *v = f(*v));
        }

        #[inline(always)]
        pub fn zip_map(values: &mut [f32], other: &[f32], f: impl Fn(f32, f32) -> f32) {
            values
                .iter_mut()
                .zip(other)
                .for_each(|(a, &b)| *a = f(*a, b));
        }

        pub(crate) use super::super::layer_norm::backward_rows as layer_norm_backward;
    }

    #[cfg(target_arch = "x86_64")]
    mod avx2 {
        #[target_feature(enable = "avx2")]
        pub fn map(values: &mut [f32], f: impl Fn(f32) -> f32) {
            super::generic::map(values, f)
        }

        #[target_feature(enable = "avx2")]
        pub fn zip_map(values: &mut [f32], other: &[f32], f: impl Fn(f32, f32) -> f32) {
            super::generic::zip_map(values, other, f)
        }

        #[target_feature(enable = "avx2")]
        pub fn layer_norm_backward(
            x: &[f32],
            grad: &mut [f32],
            gamma: &[f32],
            epsilon: f32,
            gamma_grad: &mut [f32],
            beta_grad: &mut [f32],
        ) {
            super::generic::layer_norm_backward(x, grad, gamma, epsilon, gamma_grad, beta_grad)
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
