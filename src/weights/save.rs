//! Writing checkpoints under the official key names (safetensors or burnpack), with the
//! model's [`Architecture`] in the file metadata. Files are written atomically.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::error::{bail, Context, Result};
use burn::store::burn_pack::{self, Tensor as PackTensor};
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot};
use burn::tensor::DType;
use safetensors::Dtype;

use super::checkpoint::ARCHITECTURE_METADATA_KEY;
use super::keymap::module_to_official;
use crate::fsutil::temp_path;
use crate::model::{Architecture, Sam};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveFormat {
    Safetensors,
    Burnpack,
}

impl SaveFormat {
    /// `.bpk` is burnpack; anything else is safetensors.
    pub fn from_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("bpk") => SaveFormat::Burnpack,
            _ => SaveFormat::Safetensors,
        }
    }
}

/// The model's tensors under official names and in PyTorch layout, lazily read;
/// only keys for which `keep` is true.
pub fn official_tensors(model: &Sam, keep: &dyn Fn(&str) -> bool) -> Vec<PackTensor> {
    model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
        .into_iter()
        .filter_map(|mut t| {
            t.name = module_to_official(&t.name);
            keep(&t.name).then_some(t)
        })
        .collect()
}

/// Saves `model` (the tensors `keep` selects) to `path`, format by extension.
pub fn save_checkpoint(
    model: &Sam,
    architecture: &Architecture,
    path: &Path,
    metadata: &BTreeMap<String, String>,
    keep: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let mut metadata = metadata.clone();
    metadata.insert(
        ARCHITECTURE_METADATA_KEY.to_string(),
        serde_json::to_string(architecture).context("serialising the model architecture")?,
    );
    let tensors = official_tensors(model, keep);
    match SaveFormat::from_path(path) {
        SaveFormat::Burnpack => {
            let mut writer = burn_pack::Writer::new(tensors).auto_extension(false);
            for (k, v) in &metadata {
                writer = writer.with_metadata(k, v);
            }
            writer
                .write_to_file(path)
                .with_context(|| format!("writing {}", path.display()))
        }
        SaveFormat::Safetensors => write_safetensors(path, &pack_to_raw(tensors)?, metadata),
    }
}

/// A tensor ready for a safetensors file: name, dtype, shape and little-endian bytes.
pub struct RawTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

impl RawTensor {
    pub fn f32(name: &str, shape: Vec<usize>, values: &[f32]) -> Self {
        Self {
            name: name.to_string(),
            dtype: Dtype::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

impl safetensors::View for &RawTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

pub fn pack_to_raw(tensors: Vec<PackTensor>) -> Result<Vec<RawTensor>> {
    tensors
        .into_iter()
        .map(|t| {
            let dtype = safetensors_dtype(t.dtype)
                .with_context(|| format!("tensor {} has dtype {:?}", t.name, t.dtype))?;
            let shape = t.shape.to_vec();
            let (name, _, _, _, bytes) = t
                .into_parts()
                .map_err(|e| crate::error::err!("reading a tensor to save it: {e}"))?;
            Ok(RawTensor {
                name,
                dtype,
                shape,
                data: bytes.to_vec(),
            })
        })
        .collect()
}

/// Writes a safetensors file atomically (temp file in the same folder, then rename).
pub fn write_safetensors(
    path: &Path,
    tensors: &[RawTensor],
    metadata: BTreeMap<String, String>,
) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating folder {}", parent.display()))?;
    }
    let tmp = temp_path(path);
    let info: HashMap<String, String> = metadata.into_iter().collect();
    let result = safetensors::serialize_to_file(
        tensors.iter().map(|t| (t.name.as_str(), t)),
        Some(info),
        &tmp,
    )
    .with_context(|| format!("writing {}", tmp.display()))
    .and_then(|()| readable_by_all(&tmp))
    .and_then(|()| {
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// safetensors writes through a private (0600) temporary file; checkpoints are shared
/// artefacts, readable like any file the user creates.
fn readable_by_all(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("setting permissions of {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

fn safetensors_dtype(dtype: DType) -> Result<Dtype> {
    Ok(match dtype {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::BF16 => Dtype::BF16,
        DType::F64 => Dtype::F64,
        DType::I64 => Dtype::I64,
        DType::I32 => Dtype::I32,
        DType::U8 => Dtype::U8,
        DType::Bool(_) => Dtype::BOOL,
        other => bail!("no safetensors dtype for {other:?}"),
    })
}
