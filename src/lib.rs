//! samtune: fine-tune Meta's Segment Anything Model on your own labeled images.

pub mod cli;
pub mod fsutil;
pub mod model;
pub mod predict;
pub mod weights;
