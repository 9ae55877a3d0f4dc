//! samtune: fine-tune Meta's Segment Anything Model on your own labeled images.
//!
//! The crate is layered, each layer importing only those before it:
//! `model` < `weights` < `predict` < `data` < `eval` < `annotate` < `train` < `serve` < `bench`
//! < `cli`,
//! with `error`, `device`, the file helpers and the progress bars beside them all (`tests/layers.rs` checks
//! it). What a Rust user calls is re-exported here:
//!
//! ```no_run
//! use samtune::{load_sam, DeviceSpec, Predictor, PromptBatch, VariantChoice};
//! # fn main() -> samtune::Result<()> {
//! let device = DeviceSpec::Auto.device()?;
//! let (model, architecture) = load_sam("sam_vit_b_01ec64.pth", VariantChoice::Auto, &device)?;
//! let image = samtune::load_rgb("photo.png".as_ref(), Default::default())?;
//! let predictor = Predictor::new(&model);
//! let encoded = predictor.encode(&image);
//! let prompts = PromptBatch::from_boxes_and_points(vec![[40.0, 30.0, 220.0, 170.0]], vec![]);
//! let masks = predictor.predict(&encoded, &prompts, false)?.masks();
//! # let _ = (architecture, masks); Ok(()) }
//! ```
//!
//! Training from a config is [`train()`] with a [`TrainConfig`]; evaluating a labeled
//! set is [`evaluate_set`].

pub(crate) mod alloc;
pub mod annotate;
pub mod bench;
#[doc(hidden)]
pub mod cli;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub(crate) mod fsutil;
#[cfg(llvm_stubs)]
mod llvm_stubs;
pub mod model;
pub mod predict;
pub(crate) mod progress;
pub mod serve;
pub mod train;
pub mod weights;

pub use annotate::{AmgSettings, MaskGenerator};
pub use data::{DataConfig, DataSource};
pub use device::DeviceSpec;
pub use error::{Error, Result};
pub use eval::set::{evaluate_set, SetEvaluation};
pub use model::{Architecture, Sam, SamVariant};
pub use predict::image::{load_rgb, IntensityScaling};
pub use predict::{EncodedImage, Prediction, Predictor, PromptBatch};
pub use train::{train, TrainConfig, TrainOutcome};
pub use weights::{load_sam, Checkpoint, VariantChoice};
