//! samtune: fine-tune Meta's Segment Anything Model on your own labeled images.

pub mod alloc;
pub mod annotate;
pub mod cli;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod fsutil;
#[cfg(llvm_stubs)]
mod llvm_stubs;
pub mod model;
pub mod predict;
pub mod train;
pub mod weights;
