//! A generated labeled dataset for tests and the quickstart: blobs (ellipses and rounded
//! rectangles) on a background, in two domains. `source` is colourful and clean;
//! `target` is a shifted domain like a medical modality: grayscale, low contrast,
//! textured and noisy.

use std::path::Path;

use anyhow::{Context, Result};
use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Domain {
    Source,
    Target,
}

/// One generated image and its instance labels (0 background, 1..=n objects).
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
    let colours: Vec<[f64; 3]> = (0..=n)
        .map(|_| {
            [
                rng.random_range(40.0..230.0),
                rng.random_range(40.0..230.0),
                rng.random_range(40.0..230.0),
            ]
        })
        .collect();
    let background = match domain {
        Domain::Source => [235.0, 232.0, 220.0],
        Domain::Target => [90.0, 90.0, 90.0],
    };
    let phase: f64 = rng.random_range(0.0..std::f64::consts::TAU);
    let image = RgbImage::from_fn(size, size, |x, y| {
        let label = labels.get_pixel(x, y)[0] as usize;
        let base = if label == 0 {
            background
        } else {
            colours[label]
        };
        match domain {
            Domain::Source => {
                let v = |c: f64| (c + rng_noise(x, y, seed) * 6.0).clamp(0.0, 255.0) as u8;
                Rgb([v(base[0]), v(base[1]), v(base[2])])
            }
            Domain::Target => {
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
            }
        }
    });
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

/// Writes `count` images under `dir/{images,masks}` (PNG, instance labels in the masks;
/// target-domain images are 8-bit grayscale).
pub fn write_dataset(dir: &Path, domain: Domain, count: usize, size: u32, seed: u64) -> Result<()> {
    for sub in ["images", "masks"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    for i in 0..count {
        let (image, labels) =
            generate(domain, size, seed.wrapping_mul(7919).wrapping_add(i as u64));
        let name = format!("{i:04}.png");
        let path = dir.join("images").join(&name);
        match domain {
            // grayscale like the modality it imitates (and a third of the size)
            Domain::Target => {
                crate::fsutil::save_png(&path, &image::DynamicImage::from(image).to_luma8())?
            }
            Domain::Source => crate::fsutil::save_png(&path, &image)?,
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
