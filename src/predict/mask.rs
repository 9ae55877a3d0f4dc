//! Binary masks: what a prediction becomes at the official threshold, and what ground
//! truth is decoded into.

/// A binary mask, row-major, one byte (0 or 1) per pixel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryMask {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl BinaryMask {
    pub fn empty(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: vec![0; width * height],
        }
    }

    pub fn from_fn(width: usize, height: usize, f: impl Fn(usize, usize) -> bool) -> Self {
        let mut data = Vec::with_capacity(width * height);
        for y in 0..height {
            for x in 0..width {
                data.push(f(x, y) as u8);
            }
        }
        Self {
            width,
            height,
            data,
        }
    }

    /// A logits plane `[height, width]` (row-major) at the official threshold, 0.0.
    pub fn from_logits(plane: &[f32], width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            data: plane.iter().map(|&v| (v > 0.0) as u8).collect(),
        }
    }

    pub fn get(&self, x: usize, y: usize) -> bool {
        self.data[y * self.width + x] != 0
    }

    pub fn area(&self) -> usize {
        self.data.iter().filter(|&&v| v != 0).count()
    }

    /// Tight box `[x0, y0, x1, y1]` in pixel coordinates (x1, y1 the last pixel), as
    /// SAM fine-tuning scripts derive box prompts from masks; `None` when empty.
    pub fn bbox(&self) -> Option<[f64; 4]> {
        let (mut x0, mut y0, mut x1, mut y1) = (usize::MAX, usize::MAX, 0, 0);
        for y in 0..self.height {
            for x in 0..self.width {
                if self.get(x, y) {
                    x0 = x0.min(x);
                    y0 = y0.min(y);
                    x1 = x1.max(x);
                    y1 = y1.max(y);
                }
            }
        }
        (x0 != usize::MAX).then_some([x0 as f64, y0 as f64, x1 as f64, y1 as f64])
    }

    /// Pixel-wise OR (several polygons of one COCO object).
    pub fn union(&mut self, other: &BinaryMask) {
        for (a, b) in self.data.iter_mut().zip(&other.data) {
            *a |= *b;
        }
    }

    pub fn to_gray_image(&self) -> image::GrayImage {
        image::GrayImage::from_fn(self.width as u32, self.height as u32, |x, y| {
            image::Luma([if self.get(x as usize, y as usize) {
                255
            } else {
                0
            }])
        })
    }
}
