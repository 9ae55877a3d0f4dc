//! Checkpoint input/output: official `.pth`, safetensors and burnpack files, the
//! official-key map, architecture inference, the checkpoint catalog and downloads.

pub mod adapters;
pub mod catalog;
pub mod checkpoint;
pub mod download;
pub mod infer;
pub(crate) mod keymap;
pub mod pth;
pub mod resize;
pub mod save;

pub use checkpoint::{
    load_sam, load_sam_at, Checkpoint, CheckpointFormat, VariantChoice, WeightsError,
};
pub use infer::{infer_architecture, ParameterCounts};
pub use pth::write_pth;
pub use save::{pack_to_raw, save_checkpoint, write_safetensors, RawTensor};
