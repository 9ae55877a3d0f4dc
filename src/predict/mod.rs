//! Pre- and post-processing, the interactive predictor, and the embedding cache.

pub mod cache;
pub mod image;
pub mod mask;
pub mod overlay;
pub mod predictor;
pub mod semantic;
pub mod transforms;

pub use cache::{encode_image, encode_images, CacheConfig, EmbeddingCache};
pub use mask::BinaryMask;
pub use predictor::{EncodedImage, MaskPlanes, Prediction, Predictor, PromptBatch};

/// A tensor's values as f32, row-major (waits for the device).
pub fn tensor_values<const D: usize>(t: burn::tensor::Tensor<D>) -> crate::error::Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| crate::error::err!("reading tensor values: {e:?}"))
}
