//! Reading SAM checkpoints: official PyTorch `.pth`, safetensors and burnpack, all
//! under the official key names, with strict, explained loading.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::store::burn_pack::{self, Tensor as PackTensor};
use burn::store::{
    ChainAdapter, FloatCastAdapter, ModuleSnapshot, ModuleStore, PyTorchToBurnAdapter,
    PytorchStore, SafetensorsStore,
};
use burn::tensor::{DType, Device};

use super::infer::{infer_architecture, ParameterCounts, ShapeMap};
use super::keymap::{module_to_official, official_to_module};
use crate::model::{Architecture, Sam, SamVariant};

/// Metadata key under which samtune stores the model's [`Architecture`] (JSON).
pub const ARCHITECTURE_METADATA_KEY: &str = "samtune.architecture";
/// Where samtune before the [`Architecture`] type kept the module configs (JSON); only
/// the decoder's head count, which no shape shows, is read from it.
const LEGACY_CONFIG_METADATA_KEY: &str = "samtune.config";
/// The decoder head count of every official checkpoint (not visible in any shape).
pub const OFFICIAL_DECODER_HEADS: usize = 8;
const PATCH_EMBED_KEY: &str = "image_encoder.patch_embed.proj.weight";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointFormat {
    Pytorch,
    Safetensors,
    Burnpack,
}

impl fmt::Display for CheckpointFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckpointFormat::Pytorch => "PyTorch",
            CheckpointFormat::Safetensors => "safetensors",
            CheckpointFormat::Burnpack => "burnpack",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    // the cause is in the message, not a `source()`, so that it is said once
    #[error("{}: cannot read: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error(
        "{}: not a checkpoint: unknown file format (expected a PyTorch .pth, a .safetensors or a burnpack .bpk file)",
        path.display()
    )]
    UnknownFormat { path: PathBuf },
    #[error("{}: cannot read this {format} file (truncated or corrupt?): {message}", path.display())]
    Corrupt {
        path: PathBuf,
        format: CheckpointFormat,
        message: String,
    },
    #[error("{}: not a SAM checkpoint: {message}", path.display())]
    NotSam { path: PathBuf, message: String },
    #[error("{}: tensors do not match the model:\n{report}", path.display())]
    Mismatch {
        path: PathBuf,
        report: MismatchReport,
    },
    #[error("{}: checkpoint is {detected}, not the requested {requested}", path.display())]
    VariantMismatch {
        path: PathBuf,
        requested: String,
        detected: String,
    },
}

/// `--variant` / `model.variant`: `auto` reads the architecture from the checkpoint; an
/// official variant is checked against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VariantChoice {
    #[default]
    Auto,
    Preset(SamVariant),
}

impl VariantChoice {
    pub fn preset(self) -> Option<SamVariant> {
        match self {
            VariantChoice::Auto => None,
            VariantChoice::Preset(v) => Some(v),
        }
    }
}

impl From<Option<SamVariant>> for VariantChoice {
    fn from(v: Option<SamVariant>) -> Self {
        v.map_or(VariantChoice::Auto, VariantChoice::Preset)
    }
}

impl From<SamVariant> for VariantChoice {
    fn from(v: SamVariant) -> Self {
        VariantChoice::Preset(v)
    }
}

impl std::str::FromStr for VariantChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            Ok(VariantChoice::Auto)
        } else {
            s.trim().parse().map(VariantChoice::Preset)
        }
    }
}

impl fmt::Display for VariantChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VariantChoice::Auto => f.write_str("auto"),
            VariantChoice::Preset(v) => write!(f, "{v}"),
        }
    }
}

impl serde::Serialize for VariantChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for VariantChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <String as serde::Deserialize>::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// What differs between a checkpoint and the model it is loaded into.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MismatchReport {
    pub missing: Vec<(String, Vec<usize>)>,
    pub unexpected: Vec<(String, Vec<usize>)>,
    /// (key, expected shape, shape in the file)
    pub wrong_shape: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl MismatchReport {
    pub fn compare(expected: &ShapeMap, found: &ShapeMap) -> Self {
        let mut report = Self::default();
        for (key, shape) in expected {
            match found.get(key) {
                None => report.missing.push((key.clone(), shape.clone())),
                Some(other) if other != shape => {
                    report
                        .wrong_shape
                        .push((key.clone(), shape.clone(), other.clone()))
                }
                Some(_) => {}
            }
        }
        for (key, shape) in found {
            if !expected.contains_key(key) {
                report.unexpected.push((key.clone(), shape.clone()));
            }
        }
        report
    }

    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.wrong_shape.is_empty()
    }
}

impl fmt::Display for MismatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 12;
        let section = |f: &mut fmt::Formatter<'_>, title: &str, lines: Vec<String>| {
            if lines.is_empty() {
                return Ok(());
            }
            writeln!(f, "  {title} ({}):", lines.len())?;
            for line in lines.iter().take(SHOWN) {
                writeln!(f, "    {line}")?;
            }
            if lines.len() > SHOWN {
                writeln!(f, "    ... and {} more", lines.len() - SHOWN)?;
            }
            Ok(())
        };
        section(
            f,
            "missing from the file",
            self.missing
                .iter()
                .map(|(k, s)| format!("{k} {s:?}"))
                .collect(),
        )?;
        section(
            f,
            "unexpected in the file",
            self.unexpected
                .iter()
                .map(|(k, s)| format!("{k} {s:?}"))
                .collect(),
        )?;
        section(
            f,
            "wrong shape",
            self.wrong_shape
                .iter()
                .map(|(k, e, g)| format!("{k}: model {e:?}, file {g:?}"))
                .collect(),
        )
    }
}

/// An opened checkpoint: its tensors (read lazily) under official key names.
pub struct Checkpoint {
    pub path: PathBuf,
    pub format: CheckpointFormat,
    pub file_size: u64,
    /// Prefix removed from every key (`module.`, `model.` wrappers of training scripts).
    pub prefix: String,
    /// Official key -> lazily-read tensor.
    pub tensors: BTreeMap<String, PackTensor>,
    /// Entries outside the model prefix (optimizer state and the like), ignored.
    pub ignored: Vec<String>,
    /// File-level string metadata (safetensors `__metadata__`, burnpack metadata).
    pub metadata: BTreeMap<String, String>,
}

impl Checkpoint {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, WeightsError> {
        let path = path.as_ref().to_path_buf();
        let io = |cause| WeightsError::Io {
            path: path.clone(),
            cause,
        };
        let file_size = std::fs::metadata(&path).map_err(io)?.len();
        let format = detect_format(&path)?;
        let corrupt = |message: String| WeightsError::Corrupt {
            path: path.clone(),
            format,
            message,
        };
        let (raw, metadata) = match format {
            CheckpointFormat::Pytorch => {
                // keys as written: the official model has index gaps (`mask_downscaling.{0,1,3,4,6}`)
                let mut store = PytorchStore::from_file(&path).map_indices_contiguous(false);
                let tensors = store
                    .get_all_tensors()
                    .map_err(|e| corrupt(e.to_string()))?
                    .clone();
                (tensors, BTreeMap::new())
            }
            CheckpointFormat::Safetensors => {
                let metadata = read_safetensors_metadata(&path).map_err(corrupt)?;
                let mut store = SafetensorsStore::from_file(&path).map_indices_contiguous(false);
                let tensors = store
                    .get_all_tensors()
                    .map_err(|e| corrupt(e.to_string()))?
                    .clone();
                (tensors, metadata)
            }
            CheckpointFormat::Burnpack => {
                let reader = burn_pack::Reader::from_file_exact(&path)
                    .map_err(|e| corrupt(e.to_string()))?;
                let metadata = reader.metadata().clone();
                let tensors = reader
                    .into_tensors()
                    .map_err(|e| corrupt(e.to_string()))?
                    .into_iter()
                    .map(|t| (t.name.clone(), t))
                    .collect();
                (tensors, metadata)
            }
        };
        let Some(prefix) = raw
            .keys()
            .find_map(|k| k.strip_suffix(PATCH_EMBED_KEY))
            .map(str::to_string)
        else {
            let sample: Vec<&str> = raw.keys().take(5).map(String::as_str).collect();
            return Err(WeightsError::NotSam {
                path,
                message: format!(
                    "no '{PATCH_EMBED_KEY}' tensor among its {} entries (first keys: {sample:?})",
                    raw.len()
                ),
            });
        };
        let mut tensors = BTreeMap::new();
        let mut ignored = Vec::new();
        for (key, tensor) in raw {
            match key.strip_prefix(&prefix) {
                Some(official) => {
                    tensors.insert(official.to_string(), tensor);
                }
                None => ignored.push(key),
            }
        }
        Ok(Self {
            path,
            format,
            file_size,
            prefix,
            tensors,
            ignored,
            metadata,
        })
    }

    /// Official key -> shape.
    pub fn shapes(&self) -> ShapeMap {
        self.tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.shape.to_vec()))
            .collect()
    }

    /// The element types present, e.g. `["F32"]`.
    pub fn dtypes(&self) -> Vec<DType> {
        let mut dtypes: Vec<DType> = Vec::new();
        for tensor in self.tensors.values() {
            if !dtypes.contains(&tensor.dtype) {
                dtypes.push(tensor.dtype);
            }
        }
        dtypes
    }

    pub fn parameter_counts(&self) -> ParameterCounts {
        ParameterCounts::from_shapes(&self.shapes())
    }

    /// The architecture: from samtune's metadata when present, else inferred from shapes.
    pub fn architecture(&self) -> Result<Architecture, WeightsError> {
        let not_sam = |message: String| WeightsError::NotSam {
            path: self.path.clone(),
            message,
        };
        if let Some(json) = self.metadata.get(ARCHITECTURE_METADATA_KEY) {
            let architecture: Architecture = serde_json::from_str(json).map_err(|e| {
                not_sam(format!(
                    "invalid '{ARCHITECTURE_METADATA_KEY}' metadata: {e}"
                ))
            })?;
            architecture.validate().map_err(|e| not_sam(e.0))?;
            return Ok(architecture);
        }
        infer_architecture(&self.shapes(), self.decoder_heads()?).map_err(|e| not_sam(e.0))
    }

    /// The decoder's head count: the legacy metadata's, else the official 8.
    fn decoder_heads(&self) -> Result<usize, WeightsError> {
        let Some(json) = self.metadata.get(LEGACY_CONFIG_METADATA_KEY) else {
            return Ok(OFFICIAL_DECODER_HEADS);
        };
        serde_json::from_str::<serde_json::Value>(json)
            .ok()
            .and_then(|v| v["mask_decoder"]["transformer"]["num_heads"].as_u64())
            .map(|heads| heads as usize)
            .ok_or_else(|| WeightsError::NotSam {
                path: self.path.clone(),
                message: format!(
                    "invalid '{LEGACY_CONFIG_METADATA_KEY}' metadata: no decoder head count"
                ),
            })
    }

    /// [`Self::architecture`], checked against an explicitly requested variant.
    pub fn architecture_for(&self, requested: VariantChoice) -> Result<Architecture, WeightsError> {
        let architecture = self.architecture()?;
        if let Some(requested) = requested.preset() {
            if architecture != requested.architecture() {
                return Err(WeightsError::VariantMismatch {
                    path: self.path.clone(),
                    requested: requested.to_string(),
                    detected: architecture.describe(),
                });
            }
        }
        Ok(architecture)
    }

    pub(crate) fn not_sam(&self, message: String) -> WeightsError {
        WeightsError::NotSam {
            path: self.path.clone(),
            message,
        }
    }

    pub(crate) fn corrupt(&self, message: String) -> WeightsError {
        WeightsError::Corrupt {
            path: self.path.clone(),
            format: self.format,
            message,
        }
    }

    /// Checks that the file holds every tensor of `architecture`, of the right shape,
    /// and nothing else (a model of it is described, not allocated).
    pub fn check_complete(&self, architecture: &Architecture) -> Result<(), WeightsError> {
        self.check_against(&architecture.init(&Device::flex()))
    }

    fn check_against(&self, model: &Sam) -> Result<(), WeightsError> {
        let report = MismatchReport::compare(&expected_shapes(model), &self.shapes());
        if report.is_empty() {
            Ok(())
        } else {
            Err(WeightsError::Mismatch {
                path: self.path.clone(),
                report,
            })
        }
    }

    /// Loads every tensor into `model`; any missing, unexpected or mis-shaped tensor is
    /// an error that lists them, and nothing is applied.
    pub fn load_into(&self, model: &mut Sam) -> Result<(), WeightsError> {
        self.check_against(model)?;
        let tensors: Vec<PackTensor> = self
            .tensors
            .iter()
            .map(|(key, tensor)| {
                let mut tensor = tensor.clone();
                tensor.name = official_to_module(key);
                tensor
            })
            .collect();
        // Half-precision or f64 files are read as float32, the model's precision.
        let adapter = ChainAdapter::new(PyTorchToBurnAdapter, FloatCastAdapter::to(DType::F32));
        let result = model.apply(tensors, None, Some(Box::new(adapter)), false);
        if !result.errors.is_empty() || !result.missing.is_empty() {
            let mut message: Vec<String> = result.errors.iter().map(|e| e.to_string()).collect();
            message.extend(
                result
                    .missing
                    .iter()
                    .map(|(k, _)| format!("not applied: {k}")),
            );
            return Err(WeightsError::Corrupt {
                path: self.path.clone(),
                format: self.format,
                message: message.join("; "),
            });
        }
        Ok(())
    }
}

/// Opens, checks and loads a checkpoint onto `device`.
pub fn load_sam(
    path: impl AsRef<Path>,
    requested: impl Into<VariantChoice>,
    device: &Device,
) -> Result<(Sam, Architecture), WeightsError> {
    load_sam_at(path, requested, None, device)
}

/// [`load_sam`] at encoder input size `img_size` (the checkpoint's own when `None`; see
/// `weights::resize`).
pub fn load_sam_at(
    path: impl AsRef<Path>,
    requested: impl Into<VariantChoice>,
    img_size: Option<usize>,
    device: &Device,
) -> Result<(Sam, Architecture), WeightsError> {
    let mut checkpoint = Checkpoint::open(path)?;
    let requested = requested.into();
    if let Some(size) = img_size {
        // the variant is checked at the checkpoint's own size
        checkpoint.architecture_for(requested)?;
        checkpoint.resize_input(size)?;
    }
    let architecture = match img_size {
        Some(_) => checkpoint.architecture()?,
        None => checkpoint.architecture_for(requested)?,
    };
    let mut model = architecture.init(device);
    checkpoint.load_into(&mut model)?;
    Ok((model, architecture))
}

/// The official state_dict keys and shapes of a model, from the parameters' lazy shapes:
/// a freshly initialised model is not materialised (its random weights are never drawn,
/// which was half of the load time), and the renames follow `BurnToPyTorchAdapter`
/// (Linear weights transposed, LayerNorm `gamma`/`beta` as `weight`/`bias`).
pub fn expected_shapes(model: &Sam) -> ShapeMap {
    let mut visitor = LazyOfficialShapes::default();
    burn::module::Module::visit(model, &mut visitor);
    visitor.shapes
}

#[derive(Default)]
struct LazyOfficialShapes {
    /// `(field name, type of the struct holding it)` down to the parameter.
    path: Vec<(String, String)>,
    shapes: ShapeMap,
}

impl burn::module::ModuleVisitor for LazyOfficialShapes {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(
        &mut self,
        param: &burn::module::Param<burn::tensor::Tensor<D>>,
    ) {
        let mut shape = param.lazy_shape().dims::<D>().to_vec();
        // each entry carries the type of the struct that holds the field
        let owner = self.path.last().map(|(_, container)| container.as_str());
        let mut names: Vec<&str> = self.path.iter().map(|(n, _)| n.as_str()).collect();
        let field = names.last().copied().unwrap_or_default();
        match (owner, field) {
            (Some("Struct:Linear"), "weight") if shape.len() == 2 => shape.reverse(),
            (Some("Struct:LayerNorm"), "gamma") => *names.last_mut().expect("a field") = "weight",
            (Some("Struct:LayerNorm"), "beta") => *names.last_mut().expect("a field") = "bias",
            _ => {}
        }
        self.shapes
            .insert(module_to_official(&names.join(".")), shape);
    }
}

fn detect_format(path: &Path) -> Result<CheckpointFormat, WeightsError> {
    let mut head = [0u8; 9];
    let io = |cause| WeightsError::Io {
        path: path.to_path_buf(),
        cause,
    };
    let mut file = File::open(path).map_err(io)?;
    let n = read_up_to(&mut file, &mut head).map_err(io)?;
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") || head.first() == Some(&0x80) {
        // torch.save zip archive, or the legacy pickle format
        return Ok(CheckpointFormat::Pytorch);
    }
    if head.len() >= 4 {
        let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if magic == burn_pack::MAGIC_NUMBER || magic.swap_bytes() == burn_pack::MAGIC_NUMBER {
            return Ok(CheckpointFormat::Burnpack);
        }
    }
    if head.len() == 9 && head[8] == b'{' {
        return Ok(CheckpointFormat::Safetensors);
    }
    Err(WeightsError::UnknownFormat {
        path: path.to_path_buf(),
    })
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// The `__metadata__` map of a safetensors header.
fn read_safetensors_metadata(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let file_len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut len = [0u8; 8];
    file.read_exact(&mut len).map_err(|e| e.to_string())?;
    let header_len = u64::from_le_bytes(len);
    if header_len.saturating_add(8) > file_len {
        return Err(format!(
            "header length {header_len} exceeds the file size {file_len}"
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| e.to_string())?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| format!("invalid header: {e}"))?;
    Ok(header
        .get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lazy_expected_shapes_equal_the_exported_ones() {
        // the reference: what a materialised model exports under official names
        let vit_b = crate::model::SamVariant::VitB.architecture();
        let lazy = expected_shapes(&vit_b.init(&Device::flex()));
        let mut tiny = Architecture::default();
        let e = &mut tiny.image_encoder;
        (e.img_size, e.embed_dim, e.depth, e.num_heads, e.window_size) = (64, 32, 2, 2, 2);
        e.global_attn_indexes = vec![1];
        let d = &mut tiny.decoder;
        (d.prompt_embed_dim, d.mlp_dim, d.iou_head_hidden_dim) = (32, 64, 32);
        tiny.validate().unwrap();
        let model = tiny.init(&Device::flex());
        let exported: ShapeMap = model
            .collect(
                None,
                Some(Box::new(burn::store::BurnToPyTorchAdapter)),
                false,
            )
            .into_iter()
            .map(|t| (module_to_official(&t.name), t.shape.to_vec()))
            .collect();
        assert_eq!(expected_shapes(&model), exported);
        // and the full-size model, never materialised: the official parameter count and
        // a transposed Linear
        assert_eq!(
            crate::weights::ParameterCounts::from_shapes(&lazy).total(),
            93_735_472
        );
        assert_eq!(
            lazy["image_encoder.blocks.0.mlp.lin1.weight"],
            vec![3072, 768]
        );
        assert_eq!(lazy["image_encoder.blocks.0.norm1.weight"], vec![768]);
    }
}
