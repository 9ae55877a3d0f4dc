//! The benchmark's decoder trainer: `samtune train`'s own step on one synthetic example,
//! so that the decoder_step and finetune cases time what training does.

use burn::optim::ModuleOptimizer;
use burn::tensor::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{random_boxes, sync};
use crate::data::prompts::{Multimask, ObjectPrompt, PromptConfig};
use crate::error::Result;
use crate::model::{Architecture, Sam};
use crate::predict::EncodedImage;
use crate::train::examples::Drawn;
use crate::train::model_setup::freeze;
use crate::train::optim::adamw;
use crate::train::step::Stepper;
use crate::train::TrainConfig;

/// `samtune train`'s own step (`train::step::Stepper`) on a synthetic example: frozen
/// encoders, `n` box prompts on one image embedding, all three masks trained
/// (`prompts.multimask = "always"`, as the PyTorch side does), global gradient clipping,
/// AdamW.
pub(super) struct BenchTrainer {
    pub(super) model: Sam,
    optim: ModuleOptimizer,
    stepper: Stepper,
    config: TrainConfig,
    prompts: Vec<ObjectPrompt>,
    low_res: Vec<f32>,
    img: usize,
}

impl BenchTrainer {
    pub(super) fn new(architecture: &Architecture, n: usize, device: &Device) -> Self {
        let autodiff = device.clone().autodiff();
        let config = TrainConfig {
            prompts: PromptConfig {
                multimask: Multimask::Always,
                ..PromptConfig::default()
            },
            ..TrainConfig::default()
        };
        let model =
            freeze(architecture.init(&autodiff), &config).expect("decoder training freezes");
        let optim = adamw(&model, &config.train);
        let img = architecture.image_encoder.img_size;
        let low = architecture.grid() * 4;
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        Self {
            model,
            optim,
            stepper: Stepper::new(vec![autodiff]),
            config,
            prompts: random_boxes(n, img as f64)
                .into_iter()
                .map(|b| ObjectPrompt {
                    bbox: Some(b),
                    points: Vec::new(),
                })
                .collect(),
            low_res: (0..n * low * low)
                .map(|_| (rng.random::<f64>() < 0.3) as u8 as f32)
                .collect(),
            img,
        }
    }

    /// `embedding`: `[1, 256, H, W]`, on the model's device without autodiff.
    pub(super) fn step(&mut self, embedding: Tensor<4>) -> Result<()> {
        let example = Drawn::embedded(
            EncodedImage {
                embedding,
                original_size: [self.img, self.img],
                input_size: [self.img, self.img],
            },
            self.prompts.clone(),
            self.low_res.clone(),
        );
        self.stepper
            .batch(&self.model, vec![example], &self.config)?;
        let model = self.model.clone();
        self.model = self
            .stepper
            .apply(model, &mut self.optim, 1e-4, &self.config);
        sync(self.model.mask_decoder.iou_token.weight.val())
    }
}
