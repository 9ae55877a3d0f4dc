//! Bilinear resizing (`F.interpolate(x, size, mode="bilinear", align_corners=False)`) with
//! each output row's and column's source pixels and weights computed once.
//!
//! Flex computes them in f64 for every output value and splits the work by channel only
//! (a prediction's 3 masks: 3 tasks for the threads); upsampling the low-resolution masks
//! to 1024x1024 was a fifth of the prompt-to-mask latency. Each output value is flex's own
//! expression, in the same order, so the results are the same bits.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{InterpolateMode, InterpolateOptions};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, DType, Dispatch, Flex, TensorMetadata};
use burn::tensor::{Shape, Tensor};
use rayon::prelude::*;

use super::zeroed_f32;

/// `[B, C, H, W] -> [B, C, size[0], size[1]]`, half-pixel centres (align_corners false).
pub fn resize_bilinear(x: Tensor<4>, size: [usize; 2]) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as BilinearBackend>::resize_bilinear(
        x.into_dispatch(),
        size,
    ))
}

/// Bilinear resizing as a backend operation.
#[backend_extension(Flex, Autodiff, Cube: cfg(any(feature = "cuda", feature = "wgpu")))]
pub trait BilinearBackend: Backend {
    /// `[B, C, H, W] -> [B, C, size[0], size[1]]`.
    fn resize_bilinear(x: FloatTensor<Self>, size: [usize; 2]) -> FloatTensor<Self> {
        backend_bilinear::<Self>(x, size)
    }
}

/// The backend's own interpolation (differentiable under autodiff).
fn backend_bilinear<B: Backend>(x: FloatTensor<B>, size: [usize; 2]) -> FloatTensor<B> {
    let mut options = InterpolateOptions::new(InterpolateMode::Bilinear);
    options.align_corners = false;
    B::interpolate(x, size, options)
}

#[cfg(any(feature = "cuda", feature = "wgpu"))]
impl BilinearBackend for burn::backend::Cube {}

impl<B: BilinearBackend, C: CheckpointStrategy> BilinearBackend for Autodiff<B, C> {}

impl BilinearBackend for Flex {
    fn resize_bilinear(x: FlexTensor, size: [usize; 2]) -> FlexTensor {
        let shape = x.shape();
        if x.dtype() != DType::F32 || shape.num_dims() != 4 || shape.num_elements() == 0 {
            return backend_bilinear::<Self>(x, size);
        }
        let [batch, channels, in_h, in_w] = [shape[0], shape[1], shape[2], shape[3]];
        let [out_h, out_w] = size;
        let x = x.to_contiguous();
        let input = x.as_slice::<f32>().expect("contiguous after to_contiguous");
        let rows: Vec<Source> = (0..out_h).map(|o| Source::new(o, in_h, out_h)).collect();
        let columns: Vec<Source> = (0..out_w).map(|o| Source::new(o, in_w, out_w)).collect();
        let mut out = zeroed_f32(Shape::new([batch, channels, out_h, out_w]));
        if out_w == 0 {
            return out;
        }
        out.storage_mut::<f32>()
            .par_chunks_mut(out_w)
            .with_min_len(16)
            .enumerate()
            .for_each(|(index, out_row)| {
                let (plane, row) = (index / out_h, index % out_h);
                let y = rows[row];
                let image = &input[plane * in_h * in_w..][..in_h * in_w];
                let top = &image[y.low * in_w..][..in_w];
                let bottom = &image[y.high * in_w..][..in_w];
                for (value, x) in out_row.iter_mut().zip(&columns) {
                    // flex's expression and order (`interpolate_bilinear_impl`)
                    *value = top[x.low] * (1.0 - x.weight) * (1.0 - y.weight)
                        + top[x.high] * x.weight * (1.0 - y.weight)
                        + bottom[x.low] * (1.0 - x.weight) * y.weight
                        + bottom[x.high] * x.weight * y.weight;
                }
            });
        out
    }
}

/// The two source pixels of an output coordinate and the weight of the second.
#[derive(Clone, Copy)]
struct Source {
    low: usize,
    high: usize,
    weight: f32,
}

impl Source {
    /// Half-pixel centres, clamped at the border, computed as flex does (in f64).
    fn new(out_coord: usize, in_size: usize, out_size: usize) -> Self {
        let ratio = in_size as f64 / out_size as f64;
        let position = (out_coord as f64 + 0.5) * ratio - 0.5;
        let low = position.floor().max(0.0) as usize;
        Self {
            low,
            high: (low + 1).min(in_size - 1),
            weight: (position - low as f64).max(0.0) as f32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::module::interpolate;
    use burn::tensor::{Device, Distribution};

    /// The same bits as burn's bilinear interpolation, up and down, at odd ratios.
    #[test]
    fn equals_burns_interpolation_bit_for_bit() {
        let device = Device::flex();
        let x = Tensor::<4>::random([2, 3, 37, 50], Distribution::Normal(0.0, 1.0), &device);
        for size in [[148, 200], [100, 13], [37, 50], [1, 1], [64, 171]] {
            let mut options = InterpolateOptions::new(InterpolateMode::Bilinear);
            options.align_corners = false;
            options.output_size = Some(size);
            let burns = interpolate(x.clone(), options);
            let ours = resize_bilinear(x.clone(), size);
            assert_eq!(ours.dims(), [2, 3, size[0], size[1]]);
            ours.into_data().assert_eq(&burns.into_data(), true);
        }
    }
}
