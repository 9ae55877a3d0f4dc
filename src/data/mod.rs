//! Datasets (folders of images and masks, COCO JSON), masks and RLE, training prompts.

pub mod coco;
pub mod dataset;
pub mod folder;
pub mod mask;
pub mod prompts;
pub mod synthetic;

pub use dataset::{Annotations, Object, Sample, Split};
pub use mask::{BinaryMask, Rle};
