//! The Segment Anything Model, ported from the official PyTorch implementation with the
//! same parameter names (up to the `weights::keymap` renames of `nn.Sequential` indexes).

pub mod architecture;
pub mod common;
pub mod image_encoder;
pub(crate) mod kernels;
pub mod lora;
pub mod mask_decoder;
pub mod precision;
pub mod prompt_encoder;
pub mod sam;
pub mod transformer;

pub use architecture::{Architecture, ArchitectureError};
pub use image_encoder::{ImageEncoderViT, ImageEncoderViTConfig};
pub use mask_decoder::{DecoderOutput, MaskDecoder, MaskDecoderConfig};
pub use precision::{Precision, PrecisionError};
pub use prompt_encoder::{PointPrompts, PromptEncoder, PromptEncoderConfig};
pub use sam::{Prompts, Sam, SamConfig, SamVariant};
pub use transformer::{TwoWayTransformer, TwoWayTransformerConfig};
