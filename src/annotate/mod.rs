//! Automatic mask generation (auto-annotation): a port of the official
//! `SamAutomaticMaskGenerator`, with COCO output that `samtune train` reads back.

pub mod amg;
pub mod coco_output;
pub mod generator;

pub use generator::{AmgSettings, GeneratedMask, MaskGenerator};
