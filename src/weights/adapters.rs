//! `adapters.safetensors`: a LoRA fine-tune's factors alone (small, shareable), named and
//! laid out as PEFT does (`<layer>.lora_A.weight` `[r, in]`, `<layer>.lora_B.weight`
//! `[out, r]`), with the base checkpoint's hash and the LoRA settings in the metadata; and
//! the merge of such a file into its base (`W + alpha/r * B A`, the official layout).

use std::collections::BTreeMap;
use std::path::Path;

use burn::store::burn_pack::Tensor as PackTensor;
use burn::store::ModuleSnapshot;
use burn::tensor::{Bytes, DType, Device};
use serde::{Deserialize, Serialize};

use super::checkpoint::load_sam_at;
use super::save::{write_safetensors, RawTensor};
use crate::error::{bail, err, Context, Error, Result};
use crate::fsutil::file_sha256;
use crate::model::lora::{merged, LoraConfig};
use crate::model::{Architecture, Sam};

const SETTINGS_KEY: &str = "samtune.lora";
const BASE_KEY: &str = "samtune.base_checkpoint_sha256";

/// What an adapters file says of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdapterSettings {
    pub rank: usize,
    pub alpha: f64,
    /// The patterns the adapted weights were chosen by.
    pub patterns: Vec<String>,
    /// The encoder input size of the fine-tune.
    pub img_size: usize,
}

/// Writes the adapter factors of `model` (a model without autodiff, adapters attached).
pub fn save_adapters(
    model: &Sam,
    path: &Path,
    settings: &AdapterSettings,
    base_sha256: &str,
) -> Result<()> {
    let mut tensors = Vec::new();
    for tensor in model.collect(None, None, false) {
        let Some((layer, factor)) = tensor
            .name
            .strip_suffix(".lora.a")
            .map(|l| (l, "A"))
            .or_else(|| tensor.name.strip_suffix(".lora.b").map(|l| (l, "B")))
        else {
            continue;
        };
        let layer = layer.strip_suffix(".weight").unwrap_or(layer);
        let [rows, cols] = tensor.shape.to_vec()[..] else {
            bail!("adapter {} is not a matrix", tensor.name);
        };
        let values = f32s(&tensor)?;
        tensors.push(RawTensor::f32(
            &format!("{layer}.lora_{factor}.weight"),
            vec![cols, rows],
            &transpose(&values, rows, cols),
        ));
    }
    if tensors.is_empty() {
        bail!("the model has no LoRA adapters to save");
    }
    let metadata = BTreeMap::from([
        (SETTINGS_KEY.to_string(), serde_json::to_string(settings)?),
        (BASE_KEY.to_string(), base_sha256.to_string()),
    ]);
    write_safetensors(path, &tensors, metadata)
}

/// A matrix as read from the file: `(shape, row-major values)`.
type Matrix = (Vec<usize>, Vec<f32>);

/// An adapters file, read.
pub struct Adapters {
    pub settings: AdapterSettings,
    pub base_sha256: String,
    /// `(layer, A [r, in], B [out, r])` in the file's (PEFT) layout.
    factors: BTreeMap<String, [Matrix; 2]>,
}

impl Adapters {
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| Error::file(path, format!("not a safetensors file: {e}")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let settings: AdapterSettings = metadata
            .get(SETTINGS_KEY)
            .ok_or_else(|| {
                Error::file(
                    path,
                    format!("not an adapters file (no '{SETTINGS_KEY}' metadata)"),
                )
            })
            .and_then(|json| {
                serde_json::from_str(json)
                    .map_err(|e| Error::file(path, format!("'{SETTINGS_KEY}': {e}")))
            })?;
        let base_sha256 = metadata
            .get(BASE_KEY)
            .cloned()
            .ok_or_else(|| Error::file(path, format!("no '{BASE_KEY}' metadata")))?;
        let tensors = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::file(path, format!("unreadable: {e}")))?;
        let mut parts: BTreeMap<String, [Option<Matrix>; 2]> = BTreeMap::new();
        for (name, view) in tensors.tensors() {
            let (layer, slot) = match (
                name.strip_suffix(".lora_A.weight"),
                name.strip_suffix(".lora_B.weight"),
            ) {
                (Some(l), _) => (l, 0),
                (_, Some(l)) => (l, 1),
                _ => return Err(Error::file(path, format!("unexpected tensor {name}"))),
            };
            if view.dtype() != safetensors::Dtype::F32 || view.shape().len() != 2 {
                return Err(Error::file(path, format!("{name} is not an f32 matrix")));
            }
            let values = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            parts.entry(layer.to_string()).or_default()[slot] =
                Some((view.shape().to_vec(), values));
        }
        let mut factors = BTreeMap::new();
        for (layer, [a, b]) in parts {
            match (a, b) {
                (Some(a), Some(b)) => {
                    factors.insert(layer, [a, b]);
                }
                _ => {
                    return Err(Error::file(
                        path,
                        format!("{layer} lacks one of its two factors"),
                    ))
                }
            }
        }
        Ok(Self {
            settings,
            base_sha256,
            factors,
        })
    }

    /// The base checkpoint with these adapters merged in: an ordinary SAM at the
    /// fine-tune's size.
    pub fn merge_into(&self, base: &Path, device: &Device) -> Result<(Sam, Architecture)> {
        let (model, architecture) = self.attached(base, device)?;
        Ok((merged(model), architecture))
    }

    /// The base checkpoint with these adapters attached (each adapted weight composed as
    /// `W + alpha/r A B` in every forward).
    pub fn attach_to(&self, base: &Path, device: &Device) -> Result<Sam> {
        Ok(self.attached(base, device)?.0)
    }

    /// A base other than the one the adapters were trained on (its content hash differs)
    /// is refused.
    fn attached(&self, base: &Path, device: &Device) -> Result<(Sam, Architecture)> {
        let sha = file_sha256(base)?;
        if sha != self.base_sha256 {
            bail!(
                "{} is not the checkpoint these adapters were trained on (its SHA-256 {}… differs from {}…)",
                base.display(),
                &sha[..12],
                &self.base_sha256[..12.min(self.base_sha256.len())]
            );
        }
        let (model, architecture) = load_sam_at(base, None, Some(self.settings.img_size), device)?;
        let lora = LoraConfig {
            rank: self.settings.rank,
            alpha: self.settings.alpha,
            ..LoraConfig::default()
        };
        // the factors are replaced by the file's: the seed does not matter
        let model = lora.apply(model, &self.settings.patterns, 0)?;
        Ok((self.load_factors(model)?, architecture))
    }

    /// Sets the factors of `model`'s adapters (attached with the file's settings).
    fn load_factors(&self, model: Sam) -> Result<Sam> {
        let mut tensors = Vec::new();
        for (layer, [(a_shape, a), (b_shape, b)]) in &self.factors {
            // PEFT layout back to burn's: A [r, in] -> [in, r], B [out, r] -> [r, out]
            for (suffix, shape, values) in [("a", a_shape, a), ("b", b_shape, b)] {
                let (rows, cols) = (shape[0], shape[1]);
                tensors.push(PackTensor::new(
                    format!("{layer}.weight.lora.{suffix}"),
                    DType::F32,
                    vec![cols, rows],
                    None,
                    Bytes::from_elems(transpose(values, rows, cols)),
                ));
            }
        }
        let expected = 2 * self.factors.len();
        let mut model = model;
        let result = model.apply(tensors, None, None, false);
        if !result.errors.is_empty() || result.applied.len() != expected {
            return Err(err!(
                "the adapters do not fit the model: {} of {expected} factors applied{}",
                result.applied.len(),
                result
                    .errors
                    .iter()
                    .map(|e| format!("; {e}"))
                    .collect::<String>()
            ));
        }
        Ok(model)
    }
}

fn f32s(tensor: &PackTensor) -> Result<Vec<f32>> {
    let bytes = tensor
        .to_bytes()
        .map_err(|e| err!("reading {}: {e}", tensor.name))?;
    let bytes: &[u8] = &bytes;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// A row-major `[rows, cols]` matrix transposed.
fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}
