//! Generated labeled data for tests and the quickstart: blobs (ellipses and rounded
//! rectangles) on a background, in two domains. `source` is colourful and clean;
//! `target` is a shifted domain like a medical modality: grayscale, low contrast,
//! textured and noisy. And CT-like NIfTI volumes: a body in air with two labelled organs
//! (ellipsoids), in Hounsfield units with noise, at anisotropic spacing.

use std::path::Path;

use crate::error::{Context, Result};
use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::nifti::{write_nifti, Volume, VoxelType};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Domain {
    /// Colourful, clean blobs on a light background (RGB PNG).
    Source,
    /// Grayscale, low-contrast, textured, noisy blobs (8-bit PNG).
    Target,
    /// NIfTI volumes (`images/*.nii.gz`, `labels/*.nii.gz`): labels 1 "liver", 2 "kidney".
    Ct,
    /// Source-style images whose masks are classes, not instances: 1 for every disc
    /// (ellipse, in warm shades), 2 for every rounded square (cool shades): a 2D
    /// multi-class set.
    Shapes,
}

/// One generated image and its instance labels (0 background, 1..=n objects; for
/// [`Domain::Shapes`], class labels: 1 discs, 2 rounded squares).
pub fn generate(domain: Domain, size: u32, seed: u64) -> (RgbImage, GrayImage) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = rng.random_range(2..=4);
    let mut labels = GrayImage::new(size, size);
    let s = size as f64;
    let mut shapes = Vec::new();
    for label in 1..=n {
        let (cx, cy) = (
            rng.random_range(0.15 * s..0.85 * s),
            rng.random_range(0.15 * s..0.85 * s),
        );
        let (rx, ry) = (
            rng.random_range(0.08 * s..0.2 * s),
            rng.random_range(0.08 * s..0.2 * s),
        );
        let ellipse = rng.random_bool(0.6);
        shapes.push((label as u8, cx, cy, rx, ry, ellipse));
    }
    // later shapes are on top
    for &(label, cx, cy, rx, ry, ellipse) in &shapes {
        for y in 0..size {
            for x in 0..size {
                let dx = (x as f64 + 0.5 - cx) / rx;
                let dy = (y as f64 + 0.5 - cy) / ry;
                let inside = if ellipse {
                    dx * dx + dy * dy <= 1.0
                } else {
                    dx.abs() <= 1.0
                        && dy.abs() <= 1.0
                        && (dx.abs() - 0.7).max(0.0).powi(2) + (dy.abs() - 0.7).max(0.0).powi(2)
                            <= 0.09
                };
                if inside {
                    labels.put_pixel(x, y, Luma([label]));
                }
            }
        }
    }
    let mut colours: Vec<[f64; 3]> = (0..=n)
        .map(|_| {
            [
                rng.random_range(40.0..230.0),
                rng.random_range(40.0..230.0),
                rng.random_range(40.0..230.0),
            ]
        })
        .collect();
    if domain == Domain::Shapes {
        // like organs' typical intensities: discs warm, squares cool, each its own shade
        for (colour, shape) in colours[1..].iter_mut().zip(&shapes) {
            let [a, b, c] = *colour;
            *colour = if shape.5 {
                [200.0 + a * 0.2, b * 0.6, c * 0.3]
            } else {
                [a * 0.3, b * 0.6, 200.0 + c * 0.2]
            };
        }
    }
    let target = domain == Domain::Target;
    let background = if target {
        [90.0, 90.0, 90.0]
    } else {
        [235.0, 232.0, 220.0]
    };
    let phase: f64 = rng.random_range(0.0..std::f64::consts::TAU);
    let image = RgbImage::from_fn(size, size, |x, y| {
        let label = labels.get_pixel(x, y)[0] as usize;
        let base = if label == 0 {
            background
        } else {
            colours[label]
        };
        if target {
            // objects only slightly brighter than the background, under texture and noise
            let lum = if label == 0 {
                background[0]
            } else {
                118.0 + (colours[label][0] - 135.0) * 0.12
            };
            let texture =
                14.0 * ((x as f64 * 0.35 + phase).sin() * (y as f64 * 0.27 - phase).cos());
            let g = (lum + texture + rng_noise(x, y, seed) * 18.0).clamp(0.0, 255.0) as u8;
            Rgb([g, g, g])
        } else {
            let v = |c: f64| (c + rng_noise(x, y, seed) * 6.0).clamp(0.0, 255.0) as u8;
            Rgb([v(base[0]), v(base[1]), v(base[2])])
        }
    });
    if domain == Domain::Shapes {
        for pixel in labels.pixels_mut() {
            if pixel[0] != 0 {
                let ellipse = shapes[pixel[0] as usize - 1].5;
                pixel[0] = if ellipse { 1 } else { 2 };
            }
        }
    }
    (image, labels)
}

/// Deterministic per-pixel noise in [-1, 1] (no RNG state, so pixels are independent of order).
fn rng_noise(x: u32, y: u32, seed: u64) -> f64 {
    let mut h = (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ seed;
    h ^= h >> 31;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 29;
    (h % 20001) as f64 / 10000.0 - 1.0
}

/// A CT-like scan of `size x size x depth` voxels (0.8 x 0.8 x 2.5 mm): air (-1000 HU), an
/// elliptic body (soft tissue, 40 HU), a "liver" (label 1, 65 HU) and a "kidney" (label 2,
/// 150 HU, contrast-enhanced) as ellipsoids, Gaussian-like noise of about 15 HU.
pub fn generate_ct(size: usize, depth: usize, seed: u64) -> (Volume, Volume) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let s = size as f64;
    let d = depth as f64;
    let organ = |rng: &mut ChaCha8Rng, cx: f64, r: f64| {
        (
            [
                cx * s + rng.random_range(-0.04..0.04) * s,
                rng.random_range(0.42..0.58) * s,
                rng.random_range(0.4..0.6) * d,
            ],
            [
                r * s * rng.random_range(0.8..1.2),
                r * s * rng.random_range(0.8..1.2),
                d * rng.random_range(0.25..0.35),
            ],
        )
    };
    let liver = organ(&mut rng, 0.38, 0.14);
    let kidney = organ(&mut rng, 0.68, 0.08);
    let inside = |(c, r): &([f64; 3], [f64; 3]), x: f64, y: f64, z: f64| {
        ((x - c[0]) / r[0]).powi(2) + ((y - c[1]) / r[1]).powi(2) + ((z - c[2]) / r[2]).powi(2)
            <= 1.0
    };
    let dims = [size, size, depth];
    let mut image = Vec::with_capacity(size * size * depth);
    let mut labels = Vec::with_capacity(size * size * depth);
    for z in 0..depth {
        for y in 0..size {
            for x in 0..size {
                let (fx, fy, fz) = (x as f64 + 0.5, y as f64 + 0.5, z as f64 + 0.5);
                let body = ((fx - 0.5 * s) / (0.45 * s)).powi(2)
                    + ((fy - 0.5 * s) / (0.36 * s)).powi(2)
                    <= 1.0;
                let (hu, label) = if inside(&kidney, fx, fy, fz) {
                    (150.0, 2.0)
                } else if inside(&liver, fx, fy, fz) {
                    (65.0, 1.0)
                } else if body {
                    (40.0, 0.0)
                } else {
                    (-1000.0, 0.0)
                };
                let noise = (rng_noise(x as u32 + 7919 * z as u32, y as u32, seed)
                    + rng_noise(y as u32 + 104_729 * z as u32, x as u32, seed ^ 0xABCD))
                    * 15.0;
                image.push((hu + noise) as f32);
                labels.push(label);
            }
        }
    }
    let spacing = [0.8, 0.8, 2.5];
    (
        Volume {
            dims,
            spacing,
            data: image,
        },
        Volume {
            dims,
            spacing,
            data: labels,
        },
    )
}

/// Writes `count` CT-like scans as `dir/images/ct_NNN.nii.gz` and `dir/labels/ct_NNN.nii.gz`.
pub fn write_ct_dataset(dir: &Path, count: usize, size: usize, seed: u64) -> Result<()> {
    let depth = (size / 6).max(8);
    for i in 0..count {
        let (image, labels) =
            generate_ct(size, depth, seed.wrapping_mul(7919).wrapping_add(i as u64));
        let name = format!("ct_{i:03}.nii.gz");
        write_nifti(&dir.join("images").join(&name), &image, VoxelType::F32)?;
        write_nifti(&dir.join("labels").join(&name), &labels, VoxelType::U16)?;
    }
    Ok(())
}

/// Writes `count` images under `dir/{images,masks}` (PNG, instance labels in the masks;
/// target-domain images are 8-bit grayscale), or volumes for [`Domain::Ct`].
pub fn write_dataset(dir: &Path, domain: Domain, count: usize, size: u32, seed: u64) -> Result<()> {
    crate::error::check_setting(
        "--size",
        size,
        (16..=8192).contains(&size),
        "in [16, 8192] px",
    )?;
    crate::error::check_setting("--count", count, count >= 1, ">= 1")?;
    if domain == Domain::Ct {
        return write_ct_dataset(dir, count, size as usize, seed);
    }
    for sub in ["images", "masks"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    for i in 0..count {
        let (image, labels) =
            generate(domain, size, seed.wrapping_mul(7919).wrapping_add(i as u64));
        let name = format!("{i:04}.png");
        let path = dir.join("images").join(&name);
        if domain == Domain::Target {
            // grayscale like the modality it imitates (and a third of the size)
            crate::fsutil::save_png(&path, &image::DynamicImage::from(image).to_luma8())?
        } else {
            crate::fsutil::save_png(&path, &image)?
        }
        crate::fsutil::save_png(&dir.join("masks").join(&name), &labels)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_and_has_objects() {
        let (a, la) = generate(Domain::Target, 64, 3);
        let (b, lb) = generate(Domain::Target, 64, 3);
        assert_eq!(a, b);
        assert_eq!(la, lb);
        assert!(la.pixels().any(|p| p[0] > 0));
        assert!(
            a.pixels().all(|p| p[0] == p[1] && p[1] == p[2]),
            "target domain is grayscale"
        );
    }
}
