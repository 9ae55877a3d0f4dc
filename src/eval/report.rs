//! Pictures and documents of an evaluation.

use image::{GrayImage, RgbImage};

use crate::data::{BinaryMask, Object};
use crate::predict::overlay::overlay_masks;

/// Ground truth outlined in white over the predicted masks (filled in palette colours):
/// where fill and outline disagree is where the model is wrong.
pub fn comparison_overlay(
    image: &RgbImage,
    truth: &[Object],
    predicted: &[BinaryMask],
) -> RgbImage {
    let predicted: Vec<GrayImage> = predicted.iter().map(BinaryMask::to_gray_image).collect();
    let mut out = overlay_masks(image, &predicted);
    for object in truth {
        let m = &object.mask;
        for y in 0..m.height.min(out.height() as usize) {
            for x in 0..m.width.min(out.width() as usize) {
                if !m.get(x, y) {
                    continue;
                }
                let edge = x == 0
                    || y == 0
                    || x + 1 == m.width
                    || y + 1 == m.height
                    || !m.get(x - 1, y)
                    || !m.get(x + 1, y)
                    || !m.get(x, y - 1)
                    || !m.get(x, y + 1);
                if edge {
                    out.put_pixel(x as u32, y as u32, image::Rgb([255, 255, 255]));
                }
            }
        }
    }
    out
}
