//! Pre- and post-processing and the interactive predictor.

pub mod image;
pub mod overlay;
pub mod predictor;
pub mod transforms;

pub use predictor::{EncodedImage, Prediction, Predictor, PromptBatch};

/// A tensor's values as f32, row-major (waits for the device).
pub fn tensor_values<const D: usize>(t: burn::tensor::Tensor<D>) -> anyhow::Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| anyhow::anyhow!("reading tensor values: {e:?}"))
}
