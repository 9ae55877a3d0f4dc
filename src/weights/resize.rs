//! A checkpoint at another input size (`model.img_size`): the tensors that depend on the
//! patch grid are resized in the file's tensors before they are loaded, so the model is
//! an ordinary one of the new size, and what it saves loads in the official classes built
//! with that `img_size`. The absolute position embedding `[1, g, g, C]` is resized
//! bilinearly on its grid (align_corners=False), as SAMed's `load_from` does; the global
//! blocks' relative-position tables `[2g - 1, C]` linearly along their length
//! (align_corners=False), which is what `get_rel_pos` does at run time when lengths
//! differ, so that resizing them up front changes no output. Windowed blocks' tables
//! depend on the window only and stay as they are.

use burn::store::burn_pack::Tensor as PackTensor;
use burn::tensor::{Bytes, DType};

use super::checkpoint::{Checkpoint, WeightsError, ARCHITECTURE_METADATA_KEY};

const POS_EMBED: &str = "image_encoder.pos_embed";

impl Checkpoint {
    /// Resizes the grid-dependent tensors for an encoder input of `img_size` pixels. A
    /// size that is not a multiple of the patch size is an error naming it.
    pub fn resize_input(&mut self, img_size: usize) -> Result<(), WeightsError> {
        let architecture = self.architecture()?;
        let e = &architecture.image_encoder;
        let (patch, old_grid) = (e.patch_size, architecture.grid());
        if img_size == 0 || !img_size.is_multiple_of(patch) {
            return Err(self.not_sam(format!(
                "model.img_size {img_size} is not a positive multiple of the patch size {patch}"
            )));
        }
        let grid = img_size / patch;
        if grid == old_grid {
            return Ok(());
        }
        let global_len = 2 * old_grid - 1;
        let keys: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| {
                *k == POS_EMBED
                    || (k.starts_with("image_encoder.blocks.")
                        && (k.ends_with(".attn.rel_pos_h") || k.ends_with(".attn.rel_pos_w")))
            })
            .cloned()
            .collect();
        for key in keys {
            let tensor = &self.tensors[&key];
            let shape = tensor.shape.to_vec();
            let values = self.f32_values(&key)?;
            let (values, shape) = if key == POS_EMBED {
                let [_, h, w, c] = shape[..] else {
                    return Err(self.not_sam(format!("{key} has shape {shape:?}")));
                };
                (
                    resize_grid(&values, [h, w], c, [grid, grid]),
                    vec![1, grid, grid, c],
                )
            } else if shape[0] == global_len {
                let c = shape[1];
                (
                    resize_rows(&values, shape[0], c, 2 * grid - 1),
                    vec![2 * grid - 1, c],
                )
            } else {
                continue; // a windowed block's table
            };
            let resized = PackTensor::new(
                key.clone(),
                DType::F32,
                shape,
                None,
                Bytes::from_elems(values),
            );
            self.tensors.insert(key, resized);
        }
        // what samtune's own metadata says of the architecture follows the tensors
        let mut resized = architecture;
        resized.image_encoder.img_size = img_size;
        if self.metadata.contains_key(ARCHITECTURE_METADATA_KEY) {
            let json = serde_json::to_string(&resized)
                .map_err(|e| self.corrupt(format!("the architecture metadata: {e}")))?;
            self.metadata
                .insert(ARCHITECTURE_METADATA_KEY.to_string(), json);
        }
        Ok(())
    }

    /// A tensor's values as f32 (the file may hold half or double precision).
    fn f32_values(&self, key: &str) -> Result<Vec<f32>, WeightsError> {
        let tensor = &self.tensors[key];
        let bytes = tensor
            .to_bytes()
            .map_err(|e| self.corrupt(format!("reading {key}: {e}")))?;
        let bytes: &[u8] = &bytes;
        let values = match tensor.dtype {
            DType::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F64 => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect(),
            DType::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            DType::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => return Err(self.corrupt(format!("{key} is {other:?}, not a float tensor"))),
        };
        Ok(values)
    }
}

/// The weights of 1-D linear interpolation from `n_in` to `n_out` samples, as PyTorch's
/// `upsample_linear1d` (align_corners=False) computes them in float32: per output
/// `(i0, i1, w0, w1)`.
fn linear_weights(n_in: usize, n_out: usize) -> Vec<(usize, usize, f32, f32)> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|dst| {
            let src = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
            let i0 = src as usize;
            let i1 = if i0 + 1 < n_in { i0 + 1 } else { i0 };
            let w1 = (src - i0 as f32).clamp(0.0, 1.0);
            (i0, i1, 1.0 - w1, w1)
        })
        .collect()
}

/// `[n_in, c]` rows resampled to `[n_out, c]` (linear, align_corners=False).
fn resize_rows(values: &[f32], n_in: usize, c: usize, n_out: usize) -> Vec<f32> {
    let mut out = vec![0f32; n_out * c];
    for (dst, (i0, i1, w0, w1)) in linear_weights(n_in, n_out).into_iter().enumerate() {
        for k in 0..c {
            out[dst * c + k] = w0 * values[i0 * c + k] + w1 * values[i1 * c + k];
        }
    }
    out
}

/// A channels-last grid `[h, w, c]` resampled to `[h', w', c]` (bilinear,
/// align_corners=False): rows first, then columns, as PyTorch's separable kernel.
fn resize_grid(values: &[f32], [h, w]: [usize; 2], c: usize, [h2, w2]: [usize; 2]) -> Vec<f32> {
    let rows = linear_weights(h, h2);
    let cols = linear_weights(w, w2);
    let mut out = vec![0f32; h2 * w2 * c];
    for (y, &(y0, y1, wy0, wy1)) in rows.iter().enumerate() {
        for (x, &(x0, x1, wx0, wx1)) in cols.iter().enumerate() {
            for k in 0..c {
                let at = |yy: usize, xx: usize| values[(yy * w + xx) * c + k];
                out[(y * w2 + x) * c + k] = wy0 * (wx0 * at(y0, x0) + wx1 * at(y0, x1))
                    + wy1 * (wx0 * at(y1, x0) + wx1 * at(y1, x1));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_resampling_keeps_constants_and_interpolates_between_neighbours() {
        let rows = resize_rows(&[1.0, 3.0, 5.0, 7.0], 4, 1, 2);
        // align_corners=False halves: sources at 0.5 and 2.5
        assert_eq!(rows, vec![2.0, 6.0]);
        let grid = resize_grid(&[4.0; 16], [4, 4], 1, [2, 2]);
        assert_eq!(grid, vec![4.0; 4]);
        let same = resize_rows(&[1.0, 2.0, 3.0], 3, 1, 3);
        assert_eq!(same, vec![1.0, 2.0, 3.0]);
    }
}
