//! Masks drawn over their image: translucent fill, solid outline, prompts on top.

use image::{GrayImage, Rgb, RgbImage};

/// Distinct, colour-blind-friendly mask colours (Okabe-Ito), reused in order.
pub const PALETTE: [[u8; 3]; 7] = [
    [0, 114, 178],
    [230, 159, 0],
    [0, 158, 115],
    [204, 121, 167],
    [86, 180, 233],
    [213, 94, 0],
    [240, 228, 66],
];

const FILL_ALPHA: f32 = 0.45;

/// `image` with each mask (0 = background) filled and outlined in its palette colour.
pub fn overlay_masks(image: &RgbImage, masks: &[GrayImage]) -> RgbImage {
    let mut out = image.clone();
    for (i, mask) in masks.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let (w, h) = mask.dimensions();
        let inside = |x: i64, y: i64| {
            x >= 0
                && y >= 0
                && x < w as i64
                && y < h as i64
                && mask.get_pixel(x as u32, y as u32)[0] > 0
        };
        for y in 0..h.min(out.height()) {
            for x in 0..w.min(out.width()) {
                if !inside(x as i64, y as i64) {
                    continue;
                }
                let (xi, yi) = (x as i64, y as i64);
                let edge = !(inside(xi - 1, yi)
                    && inside(xi + 1, yi)
                    && inside(xi, yi - 1)
                    && inside(xi, yi + 1));
                let pixel = out.get_pixel_mut(x, y);
                for c in 0..3 {
                    pixel[c] = if edge {
                        color[c]
                    } else {
                        (pixel[c] as f32 * (1.0 - FILL_ALPHA) + color[c] as f32 * FILL_ALPHA)
                            .round() as u8
                    };
                }
            }
        }
    }
    out
}

/// Draws a box outline `[x0, y0, x1, y1]` (pixels, clipped to the image).
pub fn draw_box(image: &mut RgbImage, b: [f64; 4], color: [u8; 3]) {
    let (w, h) = (image.width() as i64, image.height() as i64);
    let clamp = |v: f64, max: i64| (v.round() as i64).clamp(0, max - 1);
    let (x0, y0, x1, y1) = (
        clamp(b[0], w),
        clamp(b[1], h),
        clamp(b[2], w),
        clamp(b[3], h),
    );
    for t in 0..2 {
        for x in x0..=x1 {
            for y in [(y0 + t).min(h - 1), (y1 - t).max(0)] {
                image.put_pixel(x as u32, y as u32, Rgb(color));
            }
        }
        for y in y0..=y1 {
            for x in [(x0 + t).min(w - 1), (x1 - t).max(0)] {
                image.put_pixel(x as u32, y as u32, Rgb(color));
            }
        }
    }
}

/// Draws a point prompt: a filled disc, green for foreground (label 1), red otherwise,
/// with a white ring so it shows on any background.
pub fn draw_point(image: &mut RgbImage, p: [f64; 2], label: i64) {
    let color = if label == 1 {
        [40, 200, 60]
    } else {
        [220, 40, 40]
    };
    let radius = (image.width().max(image.height()) as f64 / 150.0).max(3.0);
    let (cx, cy) = (p[0], p[1]);
    let r = radius.ceil() as i64 + 1;
    for dy in -r..=r {
        for dx in -r..=r {
            let (x, y) = (cx.round() as i64 + dx, cy.round() as i64 + dy);
            if x < 0 || y < 0 || x >= image.width() as i64 || y >= image.height() as i64 {
                continue;
            }
            let d = ((dx * dx + dy * dy) as f64).sqrt();
            if d <= radius {
                image.put_pixel(x as u32, y as u32, Rgb(color));
            } else if d <= radius + 1.0 {
                image.put_pixel(x as u32, y as u32, Rgb([255, 255, 255]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_interior_is_blended_edges_are_solid_background_untouched() {
        let image = RgbImage::from_pixel(10, 10, Rgb([100, 100, 100]));
        let mut mask = GrayImage::new(10, 10);
        for y in 2..8 {
            for x in 2..8 {
                mask.put_pixel(x, y, image::Luma([255]));
            }
        }
        let out = overlay_masks(&image, &[mask]);
        assert_eq!(out.get_pixel(0, 0), &Rgb([100, 100, 100]));
        assert_eq!(out.get_pixel(2, 2), &Rgb(PALETTE[0]));
        let inner = out.get_pixel(4, 4);
        let expected =
            (100.0 * (1.0 - FILL_ALPHA) + PALETTE[0][2] as f32 * FILL_ALPHA).round() as u8;
        assert_eq!(inner[2], expected);
    }

    #[test]
    fn boxes_and_points_outside_the_image_do_not_panic() {
        let mut image = RgbImage::new(8, 8);
        draw_box(&mut image, [-5.0, -5.0, 50.0, 50.0], [255, 0, 0]);
        draw_point(&mut image, [100.0, 100.0], 1);
        draw_point(&mut image, [0.0, 0.0], 0);
        assert_eq!(image.get_pixel(0, 0), &Rgb([220, 40, 40]));
        assert_eq!(image.get_pixel(7, 3), &Rgb([255, 0, 0]));
    }
}
