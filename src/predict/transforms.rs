//! The official pre- and post-processing: `ResizeLongestSide` (PIL bilinear resize,
//! antialiased when shrinking, ported to the byte), pixel normalisation, zero padding,
//! and coordinate transforms.

use burn::tensor::{Device, Tensor, TensorData};
use image::RgbImage;

/// `ResizeLongestSide.get_preprocess_shape`: `[H, W]` with the long side `target`,
/// rounded half up.
pub fn preprocess_shape(size: [usize; 2], target: usize) -> [usize; 2] {
    let [h, w] = size;
    let scale = target as f64 / h.max(w) as f64;
    [
        (h as f64 * scale + 0.5) as usize,
        (w as f64 * scale + 0.5) as usize,
    ]
}

/// `ResizeLongestSide.apply_image`: the image resized so its long side is `target`.
pub fn resize_longest_side(image: &RgbImage, target: usize) -> RgbImage {
    let [h, w] = preprocess_shape([image.height() as usize, image.width() as usize], target);
    resize_bilinear(image, w, h)
}

/// `ResizeLongestSide.apply_coords`: pixel coordinates (x, y) of the original image into
/// the resized frame, computed in float64 and handed to the model as float32.
pub fn apply_coords(coords: &[[f64; 2]], original: [usize; 2], target: usize) -> Vec<[f32; 2]> {
    let [old_h, old_w] = original;
    let [new_h, new_w] = preprocess_shape(original, target);
    coords
        .iter()
        .map(|[x, y]| {
            [
                (x * (new_w as f64 / old_w as f64)) as f32,
                (y * (new_h as f64 / old_h as f64)) as f32,
            ]
        })
        .collect()
}

/// `ResizeLongestSide.apply_boxes` for `[x0, y0, x1, y1]` boxes.
pub fn apply_boxes(boxes: &[[f64; 4]], original: [usize; 2], target: usize) -> Vec<[f32; 4]> {
    boxes
        .iter()
        .map(|b| {
            let c = apply_coords(&[[b[0], b[1]], [b[2], b[3]]], original, target);
            [c[0][0], c[0][1], c[1][0], c[1][1]]
        })
        .collect()
}

/// `Sam.preprocess`: `(x - mean) / std` in float32, zero-padded at the bottom and right
/// to `size x size`. Returns `[1, 3, size, size]`.
pub fn normalize_and_pad(
    image: &RgbImage,
    size: usize,
    mean: [f32; 3],
    std: [f32; 3],
    device: &Device,
) -> Tensor<4> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    assert!(
        w <= size && h <= size,
        "image {w}x{h} is larger than the model input {size}"
    );
    let mut data = vec![0f32; 3 * size * size];
    for (x, y, pixel) in image.enumerate_pixels() {
        let (x, y) = (x as usize, y as usize);
        for c in 0..3 {
            data[c * size * size + y * size + x] = (pixel[c] as f32 - mean[c]) / std[c];
        }
    }
    Tensor::from_data(TensorData::new(data, [1, 3, size, size]), device)
}

/// Fixed-point precision of Pillow's 8-bit resampling (`PRECISION_BITS`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `Image.resize(size, BILINEAR)` for 8-bit RGB, bit for bit: a separable
/// triangle filter whose support grows with the downscale factor (antialiasing),
/// coefficients in 22-bit fixed point, and Pillow's pass order (each pass rounds to
/// 8 bits, so the order changes results).
pub fn resize_bilinear(image: &RgbImage, new_w: usize, new_h: usize) -> RgbImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let pixels = image.as_raw().clone();
    // Pillow (`ImagingResampleInner`) runs the vertical pass first when the height
    // shrinks by more than twice as many pixels as the width does.
    let vertical_first = h > new_h && (h - new_h) as i64 > (w as i64 - new_w as i64) * 2;
    let pixels = if vertical_first {
        let pixels = resample_vertical(&pixels, w, h, new_h);
        resample_horizontal(&pixels, w, new_h, new_w)
    } else {
        let pixels = resample_horizontal(&pixels, w, h, new_w);
        resample_vertical(&pixels, new_w, h, new_h)
    };
    RgbImage::from_raw(new_w as u32, new_h as u32, pixels)
        .expect("buffer size matches the requested dimensions")
}

/// Resamples each row of a `w x h` RGB buffer to `new_w` pixels.
fn resample_horizontal(pixels: &[u8], w: usize, h: usize, new_w: usize) -> Vec<u8> {
    if new_w == w {
        return pixels.to_vec();
    }
    let coeffs = Coefficients::new(w, new_w);
    let mut out = vec![0u8; new_w * h * 3];
    for y in 0..h {
        let row = &pixels[y * w * 3..(y + 1) * w * 3];
        for (xx, (start, weights)) in coeffs.iter().enumerate() {
            for c in 0..3 {
                let acc = weights
                    .iter()
                    .enumerate()
                    .fold(1i64 << (PRECISION_BITS - 1), |acc, (i, k)| {
                        acc + row[(start + i) * 3 + c] as i64 * *k as i64
                    });
                out[(y * new_w + xx) * 3 + c] = clip8(acc);
            }
        }
    }
    out
}

/// Resamples each column of a `w x h` RGB buffer to `new_h` pixels.
fn resample_vertical(pixels: &[u8], w: usize, h: usize, new_h: usize) -> Vec<u8> {
    if new_h == h {
        return pixels.to_vec();
    }
    let coeffs = Coefficients::new(h, new_h);
    let mut out = vec![0u8; w * new_h * 3];
    for (yy, (start, weights)) in coeffs.iter().enumerate() {
        for x in 0..w {
            for c in 0..3 {
                let acc = weights
                    .iter()
                    .enumerate()
                    .fold(1i64 << (PRECISION_BITS - 1), |acc, (i, k)| {
                        acc + pixels[((start + i) * w + x) * 3 + c] as i64 * *k as i64
                    });
                out[(yy * w + x) * 3 + c] = clip8(acc);
            }
        }
    }
    out
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Per output pixel: the first input index and the fixed-point weights
/// (`precompute_coeffs` + `normalize_coeffs_8bpc`).
struct Coefficients {
    bounds: Vec<usize>,
    weights: Vec<Vec<i32>>,
}

impl Coefficients {
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = filterscale; // the triangle filter's support is 1
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = Vec::with_capacity(out_size);
        for xx in 0..out_size {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C casts truncate toward zero; negative starts are clamped right after
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax)
                .map(|x| triangle((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|&k| {
                    let k = if total != 0.0 { k / total } else { k };
                    let scaled = k * (1i64 << PRECISION_BITS) as f64;
                    if k < 0.0 {
                        (scaled - 0.5) as i32
                    } else {
                        (scaled + 0.5) as i32
                    }
                })
                .collect();
            bounds.push(xmin);
            weights.push(fixed);
        }
        Self { bounds, weights }
    }

    fn iter(&self) -> impl Iterator<Item = (usize, &Vec<i32>)> {
        self.bounds.iter().copied().zip(self.weights.iter())
    }
}

fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocess_shape_rounds_half_up() {
        assert_eq!(preprocess_shape([200, 300], 320), [213, 320]);
        assert_eq!(preprocess_shape([480, 640], 1024), [768, 1024]);
        // 1024 * 3 / 4 = 768 exactly; 1000 / 1500 * 1024 = 682.67 -> 683
        assert_eq!(preprocess_shape([1000, 1500], 1024), [683, 1024]);
        assert_eq!(preprocess_shape([1024, 1024], 1024), [1024, 1024]);
    }

    #[test]
    fn identity_resize_is_a_copy() {
        let img = RgbImage::from_fn(5, 4, |x, y| image::Rgb([x as u8 * 40, y as u8 * 50, 7]));
        assert_eq!(resize_bilinear(&img, 5, 4), img);
    }

    #[test]
    fn constant_image_stays_constant_at_any_scale() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([200, 13, 97]));
        for (w, h) in [(74, 46), (10, 6), (37, 100), (3, 2)] {
            let out = resize_bilinear(&img, w, h);
            assert!(out.pixels().all(|p| p.0 == [200, 13, 97]), "{w}x{h}");
        }
    }

    #[test]
    fn coordinates_scale_with_the_resize() {
        let c = apply_coords(&[[150.0, 100.0]], [200, 300], 320);
        assert!((c[0][0] - 160.0).abs() < 1e-4);
        assert!((c[0][1] - 106.5).abs() < 1e-4);
        let b = apply_boxes(&[[0.0, 0.0, 300.0, 200.0]], [200, 300], 320);
        assert_eq!(b[0], [0.0, 0.0, 320.0, 213.0]);
    }

    #[test]
    fn normalisation_uses_official_constants_and_zero_padding() {
        let device = Device::flex();
        let img = RgbImage::from_pixel(2, 1, image::Rgb([123, 116, 103]));
        let mean = [123.675, 116.28, 103.53];
        let std = [58.395, 57.12, 57.375];
        let t = normalize_and_pad(&img, 3, mean, std, &device);
        let v = t.into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(v.len(), 27);
        assert!((v[0] - (123.0 - 123.675) / 58.395).abs() < 1e-7);
        assert!((v[9] - (116.0 - 116.28) / 57.12).abs() < 1e-7);
        assert_eq!(v[2], 0.0, "padding column");
        assert_eq!(v[3], 0.0, "padding row");
    }
}
