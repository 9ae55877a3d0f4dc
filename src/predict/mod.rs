//! Pre- and post-processing and the interactive predictor.

pub mod image;
pub mod overlay;
pub mod predictor;
pub mod transforms;

pub use predictor::{EncodedImage, Prediction, Predictor, PromptBatch};
