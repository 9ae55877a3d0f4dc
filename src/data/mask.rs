//! Binary masks and COCO's run-length encodings, ported from pycocotools' `maskApi.c`
//! so that samtune reads and writes exactly the masks `pycocotools` does.

use crate::error::{bail, Result};
pub use crate::predict::mask::BinaryMask;

/// Run lengths over the column-major (Fortran order) pixels, starting with a run of 0s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rle {
    pub height: usize,
    pub width: usize,
    pub counts: Vec<u32>,
}

impl Rle {
    /// `rleEncode`.
    pub fn encode(mask: &BinaryMask) -> Self {
        let mut counts = Vec::new();
        let mut current = 0u8;
        let mut run = 0u32;
        for x in 0..mask.width {
            for y in 0..mask.height {
                let v = mask.data[y * mask.width + x];
                if v != current {
                    counts.push(run);
                    run = 0;
                    current = v;
                }
                run += 1;
            }
        }
        counts.push(run);
        Self {
            height: mask.height,
            width: mask.width,
            counts,
        }
    }

    /// `rleDecode`; counts that do not add up to `h * w` are an error.
    pub fn decode(&self) -> Result<BinaryMask> {
        let total: u64 = self.counts.iter().map(|&c| c as u64).sum();
        if total != (self.height * self.width) as u64 {
            bail!(
                "RLE counts sum to {total}, but a {}x{} mask has {} pixels",
                self.height,
                self.width,
                self.height * self.width
            );
        }
        let mut mask = BinaryMask::empty(self.width, self.height);
        let mut index = 0usize;
        for (i, &count) in self.counts.iter().enumerate() {
            let value = (i % 2) as u8;
            for p in index..index + count as usize {
                let (x, y) = (p / self.height, p % self.height);
                mask.data[y * self.width + x] = value;
            }
            index += count as usize;
        }
        Ok(mask)
    }

    /// `rleToString`: COCO's compressed counts (LEB128-like, 6 bits per char, deltas).
    pub fn to_compressed(&self) -> String {
        let mut s = String::new();
        for i in 0..self.counts.len() {
            let mut x = self.counts[i] as i64;
            if i > 2 {
                x -= self.counts[i - 2] as i64;
            }
            loop {
                let mut c = (x & 0x1f) as u8;
                x >>= 5;
                let more = if c & 0x10 != 0 { x != -1 } else { x != 0 };
                if more {
                    c |= 0x20;
                }
                s.push((c + 48) as char);
                if !more {
                    break;
                }
            }
        }
        s
    }

    /// `rleFrString`.
    pub fn from_compressed(s: &str, height: usize, width: usize) -> Result<Self> {
        let bytes = s.as_bytes();
        let mut counts: Vec<u32> = Vec::new();
        let mut p = 0;
        while p < bytes.len() {
            let mut x: i64 = 0;
            let mut k = 0;
            loop {
                let Some(&byte) = bytes.get(p) else {
                    bail!("compressed RLE ends inside a number");
                };
                if !(48..48 + 64).contains(&byte) {
                    bail!("compressed RLE has an invalid character {:?}", byte as char);
                }
                let c = (byte - 48) as i64;
                x |= (c & 0x1f) << (5 * k);
                p += 1;
                k += 1;
                if c & 0x20 == 0 {
                    if c & 0x10 != 0 {
                        x |= -1i64 << (5 * k);
                    }
                    break;
                }
                if k > 12 {
                    bail!("compressed RLE has a number too long to be a pixel count");
                }
            }
            if counts.len() > 2 {
                x += counts[counts.len() - 2] as i64;
            }
            let count = u32::try_from(x)
                .map_err(|_| crate::error::err!("compressed RLE decodes to a negative count"))?;
            counts.push(count);
        }
        Ok(Self {
            height,
            width,
            counts,
        })
    }

    /// `rleFrPoly`: a polygon `[x0, y0, x1, y1, ...]` rasterised as pycocotools does
    /// (boundary traced at 5x resolution, then filled).
    pub fn from_polygon(xy: &[f64], height: usize, width: usize) -> Self {
        let k = xy.len() / 2;
        let scale = 5.0;
        let mut x: Vec<i64> = (0..k).map(|j| (scale * xy[2 * j] + 0.5) as i64).collect();
        let mut y: Vec<i64> = (0..k)
            .map(|j| (scale * xy[2 * j + 1] + 0.5) as i64)
            .collect();
        x.push(x[0]);
        y.push(y[0]);
        let (mut u, mut v) = (Vec::new(), Vec::new());
        for j in 0..k {
            let (mut xs, mut xe, mut ys, mut ye) = (x[j], x[j + 1], y[j], y[j + 1]);
            let dx = (xe - xs).abs();
            let dy = (ys - ye).abs();
            let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
            if flip {
                std::mem::swap(&mut xs, &mut xe);
                std::mem::swap(&mut ys, &mut ye);
            }
            let s = if dx >= dy {
                (ye - ys) as f64 / dx as f64
            } else {
                (xe - xs) as f64 / dy as f64
            };
            if dx >= dy {
                for d in 0..=dx {
                    let t = if flip { dx - d } else { d };
                    u.push(t + xs);
                    v.push((ys as f64 + s * t as f64 + 0.5) as i64);
                }
            } else {
                for d in 0..=dy {
                    let t = if flip { dy - d } else { d };
                    v.push(t + ys);
                    u.push((xs as f64 + s * t as f64 + 0.5) as i64);
                }
            }
        }
        let (h, w) = (height as i64, width as i64);
        let mut a: Vec<u32> = Vec::new();
        for j in 1..u.len() {
            if u[j] == u[j - 1] {
                continue;
            }
            let xd = (if u[j] < u[j - 1] { u[j] } else { u[j] - 1 }) as f64;
            let xd = (xd + 0.5) / scale - 0.5;
            if xd.floor() != xd || xd < 0.0 || xd > (w - 1) as f64 {
                continue;
            }
            let yd = (if v[j] < v[j - 1] { v[j] } else { v[j - 1] }) as f64;
            let yd = ((yd + 0.5) / scale - 0.5).clamp(0.0, h as f64).ceil();
            a.push((xd as i64 * h + yd as i64) as u32);
        }
        a.push((h * w) as u32);
        a.sort_unstable();
        let mut previous = 0u32;
        for value in a.iter_mut() {
            let t = *value;
            *value -= previous;
            previous = t;
        }
        let mut counts = vec![a[0]];
        let mut j = 1;
        while j < a.len() {
            if a[j] > 0 {
                counts.push(a[j]);
                j += 1;
            } else {
                j += 1;
                if j < a.len() {
                    *counts.last_mut().expect("counts starts non-empty") += a[j];
                    j += 1;
                }
            }
        }
        Self {
            height,
            width,
            counts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disc() -> BinaryMask {
        BinaryMask::from_fn(13, 9, |x, y| {
            (x as i64 - 6).pow(2) + (y as i64 - 4).pow(2) <= 10
        })
    }

    #[test]
    fn rle_round_trips_through_counts_and_compressed_strings() {
        let mask = disc();
        let rle = Rle::encode(&mask);
        assert_eq!(rle.counts.iter().sum::<u32>() as usize, 13 * 9);
        assert_eq!(rle.decode().unwrap(), mask);
        let text = rle.to_compressed();
        assert_eq!(Rle::from_compressed(&text, 9, 13).unwrap(), rle);
    }

    #[test]
    fn encoding_is_column_major_and_starts_with_background() {
        // column 0 is [1, 0], column 1 is [1, 1]: runs 0, 1 (x0y0), 1 (x0y1), 2
        let mask = BinaryMask {
            width: 2,
            height: 2,
            data: vec![1, 1, 0, 1],
        };
        assert_eq!(Rle::encode(&mask).counts, vec![0, 1, 1, 2]);
    }

    #[test]
    fn bad_rle_input_is_an_error() {
        assert!(Rle {
            height: 2,
            width: 2,
            counts: vec![1, 1]
        }
        .decode()
        .is_err());
        assert!(Rle::from_compressed("a b", 2, 2).is_err());
    }

    #[test]
    fn an_axis_aligned_square_polygon_covers_its_pixels() {
        // pycocotools: the pixels x in 2..5, y in 1..3 (right and bottom edges excluded)
        let rle = Rle::from_polygon(&[2.0, 1.0, 5.0, 1.0, 5.0, 3.0, 2.0, 3.0], 6, 8);
        let mask = rle.decode().unwrap();
        assert_eq!(mask.bbox(), Some([2.0, 1.0, 4.0, 2.0]));
        assert_eq!(mask.area(), 3 * 2);
    }

    #[test]
    fn bbox_is_tight_and_none_for_empty() {
        assert_eq!(disc().bbox(), Some([3.0, 1.0, 9.0, 7.0]));
        assert_eq!(BinaryMask::empty(3, 3).bbox(), None);
    }
}
