//! Training examples: an image's embedding, the prompts drawn for some of its objects,
//! and the targets they are trained against.

use burn::tensor::Device;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::config::TrainConfig;
use crate::data::dataset::Prepared;
use crate::data::prompts::{sample_kind, sample_prompt, ObjectPrompt};
use crate::error::Result;
use crate::model::Sam;
use crate::predict::image::load_rgb;
use crate::predict::{encode_image, BinaryMask, EmbeddingCache, EncodedImage, Predictor};

/// One image's training example: its embedding, prompts and targets.
pub struct Example {
    pub encoded: EncodedImage,
    pub prompts: Vec<ObjectPrompt>,
    /// `[N, 1, L, L]` low-res targets, row-major.
    pub low_res: Vec<f32>,
    /// Full-size targets (only with `loss.full_size`).
    pub full: Vec<BinaryMask>,
}

impl Example {
    /// The same example with its embedding on `device`.
    pub fn moved_to(self, device: &Device) -> Self {
        Self {
            encoded: EncodedImage {
                embedding: self.encoded.embedding.to_device(device),
                ..self.encoded
            },
            ..self
        }
    }
}

/// Ground truth in the decoder's low-resolution frame: the mask resized like the image
/// (longest side to `img_size`), padded to `img_size`, then `low_res` pixels a side
/// (nearest, at pixel centres).
pub fn low_res_target(
    mask: &BinaryMask,
    input_size: [usize; 2],
    img_size: usize,
    low_res: usize,
) -> Vec<f32> {
    let step = img_size as f64 / low_res as f64;
    let mut out = vec![0f32; low_res * low_res];
    for i in 0..low_res {
        let y_in = (i as f64 + 0.5) * step;
        if y_in >= input_size[0] as f64 {
            continue;
        }
        let y = ((y_in * mask.height as f64 / input_size[0] as f64) as usize).min(mask.height - 1);
        for j in 0..low_res {
            let x_in = (j as f64 + 0.5) * step;
            if x_in >= input_size[1] as f64 {
                continue;
            }
            let x =
                ((x_in * mask.width as f64 / input_size[1] as f64) as usize).min(mask.width - 1);
            out[i * low_res + j] = mask.get(x, y) as u8 as f32;
        }
    }
    out
}

/// Draws an example from `prepared`: up to `data.max_objects_per_image` objects, one
/// prompt kind for all of them. The embedding comes from the frozen encoder (`frozen`,
/// through the cache) or, when the encoder trains, from `model` itself.
pub fn make_example(
    model: &Sam,
    frozen: Option<&Sam>,
    prepared: &Prepared,
    cache: Option<&EmbeddingCache>,
    config: &TrainConfig,
    rng: &mut ChaCha8Rng,
    device: &Device,
) -> Result<Example> {
    let intensity = config.data.intensity;
    let encoded = match frozen {
        Some(frozen) => {
            let encoded = encode_image(frozen, &prepared.sample.image, cache, intensity, device)?;
            EncodedImage {
                embedding: encoded.embedding.autodiff(),
                ..encoded
            }
        }
        None => Predictor::new(model).encode(&load_rgb(&prepared.sample.image, intensity)?),
    };
    let mut chosen: Vec<usize> = (0..prepared.objects.len()).collect();
    chosen.shuffle(rng);
    chosen.truncate(config.data.max_objects_per_image.max(1));
    chosen.sort_unstable();
    let kind = sample_kind(&config.prompts, rng);
    let prompts = chosen
        .iter()
        .map(|&i| sample_prompt(&prepared.objects[i].mask, kind, &config.prompts, rng))
        .collect();
    let low_res_side = model.prompt_encoder.image_embedding_size[0] * 4;
    let low_res = chosen
        .iter()
        .flat_map(|&i| {
            low_res_target(
                &prepared.objects[i].mask,
                encoded.input_size,
                model.img_size,
                low_res_side,
            )
        })
        .collect();
    let full = if config.loss.full_size {
        chosen
            .iter()
            .map(|&i| prepared.objects[i].mask.clone())
            .collect()
    } else {
        Vec::new()
    };
    Ok(Example {
        encoded,
        prompts,
        low_res,
        full,
    })
}
