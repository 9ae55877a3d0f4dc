//! Datasets (folders of images and masks, COCO JSON, NIfTI volumes), masks and RLE,
//! training prompts.

pub mod classes;
pub mod coco;
pub mod dataset;
pub mod folder;
pub mod mask;
pub mod nifti;
pub mod prompts;
pub mod source;
pub mod synthetic;
pub mod volumes;

pub use dataset::{Annotations, Object, Sample, Split};
pub use mask::{BinaryMask, Rle};
pub use source::{DataConfig, DataSource};
