//! Training examples, drawn from the index when a batch needs them: an image's embedding
//! (from the cache or the frozen encoder), the prompts drawn for some of its objects, and
//! the targets they are trained against. Each example's randomness comes from its own
//! seed (run seed, epoch, position in the epoch), so the examples do not depend on how, or
//! how far ahead, they are built: a background thread draws the next batches while the
//! current one trains.

use std::sync::mpsc::{sync_channel, Receiver};
use std::thread::{Scope, ScopedJoinHandle};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::config::TrainConfig;
use crate::data::dataset::Sample;
use crate::data::prompts::{sample_kind, sample_prompt, ObjectPrompt};
use crate::error::{err, Result};
use crate::model::Sam;
use crate::predict::image::load_rgb;
use crate::predict::semantic::Classes;
use crate::predict::transforms::preprocess_shape;
use crate::predict::{encode_image, BinaryMask, EmbeddingCache, EncodedImage, Predictor};

/// One image's training example: its embedding, prompts and targets.
pub struct Example {
    pub encoded: EncodedImage,
    pub prompts: Vec<ObjectPrompt>,
    /// `[N, 1, L, L]` low-res targets, row-major.
    pub low_res: Vec<f32>,
    /// Full-size targets (only with `loss.full_size`).
    pub full: Vec<BinaryMask>,
    /// `task = "semantic"`: the class target (no prompts then).
    pub classes: Option<ClassTarget>,
}

/// A semantic example's target in the decoder's low-resolution frame (`L x L`, row-major):
/// each pixel's class, and whether it is scored (0 in the padding).
#[derive(Debug, Clone)]
pub struct ClassTarget {
    pub classes: Vec<u8>,
    pub valid: Vec<f32>,
}

/// A semantic run's classes and their lookup table (label value -> output index).
pub struct ClassTable {
    pub classes: Classes,
    pub index_of_values: Vec<u8>,
}

impl ClassTable {
    pub fn new(classes: Classes) -> Self {
        let index_of_values = classes.index_of_values();
        Self {
            classes,
            index_of_values,
        }
    }
}

/// What an example's image becomes before the step: an embedding when the encoder is
/// frozen, else the image itself (the step encodes it, in the graph).
pub enum Pixels {
    Embedded(Box<EncodedImage>),
    Image(RgbImage),
}

/// An example as drawn (on any thread), before its image enters the training graph.
pub struct Drawn {
    pixels: Pixels,
    prompts: Vec<ObjectPrompt>,
    low_res: Vec<f32>,
    full: Vec<BinaryMask>,
    classes: Option<ClassTarget>,
    /// Seeds the correction clicks of the step.
    click_seed: u64,
}

impl Drawn {
    /// An example whose embedding is already computed (`[1, 256, H, W]`, no autodiff).
    pub fn embedded(encoded: EncodedImage, prompts: Vec<ObjectPrompt>, low_res: Vec<f32>) -> Self {
        Self {
            pixels: Pixels::Embedded(Box::new(encoded)),
            prompts,
            low_res,
            full: Vec::new(),
            classes: None,
            click_seed: 0,
        }
    }

    /// The example on `replica`, whose (autodiff) device is `device`, and its
    /// correction-click seed. An image is encoded by the replica's own encoder, in its
    /// graph: the encoder's gradients then reach the parameters that replica reports.
    pub fn into_example(self, replica: &Sam, device: &Device) -> (Example, u64) {
        let encoded = match self.pixels {
            Pixels::Embedded(encoded) => EncodedImage {
                embedding: encoded.embedding.autodiff().to_device(device),
                ..*encoded
            },
            Pixels::Image(image) => Predictor::new(replica).encode(&image),
        };
        let example = Example {
            encoded,
            prompts: self.prompts,
            low_res: self.low_res,
            full: self.full,
            classes: self.classes,
        };
        (example, self.click_seed)
    }
}

/// The seed of the example at `position` of epoch `epoch` (SplitMix64 of the three).
pub fn example_seed(seed: u64, epoch: usize, position: usize) -> u64 {
    let mut z = seed
        .wrapping_add((epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add((position as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Everything drawing an example needs; shared by the threads that draw.
pub struct ExampleBuilder<'a> {
    /// The frozen encoder (the model without autodiff), when the encoder does not train.
    pub frozen: Option<&'a Sam>,
    pub cache: Option<&'a EmbeddingCache>,
    pub config: &'a TrainConfig,
    /// The main device, without autodiff.
    pub device: &'a Device,
    pub img_size: usize,
    /// Side of the decoder's low-resolution masks (4x the embedding grid).
    pub low_res_side: usize,
    /// A semantic run's classes: examples are class targets, not prompts.
    pub semantic: Option<&'a ClassTable>,
}

impl ExampleBuilder<'_> {
    /// Draws an example from `sample`: up to `data.max_objects_per_image` of its objects
    /// (only those are decoded), one prompt kind for all of them.
    pub fn draw(&self, sample: &Sample, seed: u64) -> Result<Drawn> {
        if let Some(table) = self.semantic {
            return self.draw_classes(sample, table);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut chosen: Vec<usize> = (0..sample.object_count()).collect();
        chosen.shuffle(&mut rng);
        chosen.truncate(self.config.data.max_objects_per_image.max(1));
        chosen.sort_unstable();
        let objects = sample.decode_objects_at(&chosen)?;
        let pixels = self.pixels(sample)?;
        let input_size = preprocess_shape(sample.size, self.img_size);
        let kind = sample_kind(&self.config.prompts, &mut rng);
        let prompts = objects
            .iter()
            .map(|o| sample_prompt(&o.mask, kind, &self.config.prompts, &mut rng))
            .collect();
        let low_res = objects
            .iter()
            .flat_map(|o| low_res_target(&o.mask, input_size, self.img_size, self.low_res_side))
            .collect();
        let full = if self.config.loss.full_size {
            objects.into_iter().map(|o| o.mask).collect()
        } else {
            Vec::new()
        };
        Ok(Drawn {
            pixels,
            prompts,
            low_res,
            full,
            classes: None,
            click_seed: rng.random(),
        })
    }

    /// A semantic example: the image's class map in the low-resolution frame.
    fn draw_classes(&self, sample: &Sample, table: &ClassTable) -> Result<Drawn> {
        let map = sample.class_map(&table.classes, &table.index_of_values)?;
        let pixels = self.pixels(sample)?;
        let input_size = preprocess_shape(sample.size, self.img_size);
        let sources = low_res_sources(
            [map.height, map.width],
            input_size,
            self.img_size,
            self.low_res_side,
        );
        let classes = sources
            .iter()
            .map(|s| s.map_or(0, |i| map.classes[i]))
            .collect();
        let valid = sources.iter().map(|s| s.is_some() as u8 as f32).collect();
        Ok(Drawn {
            pixels,
            prompts: Vec::new(),
            low_res: Vec::new(),
            full: Vec::new(),
            classes: Some(ClassTarget { classes, valid }),
            click_seed: 0,
        })
    }

    /// The embedding (through the cache) or the image, checked against the indexed size.
    fn pixels(&self, sample: &Sample) -> Result<Pixels> {
        let intensity = self.config.data.sample_intensity();
        let (pixels, size) = match self.frozen {
            Some(frozen) => {
                let encoded =
                    encode_image(frozen, &sample.image, self.cache, intensity, self.device)?;
                let size = encoded.original_size;
                (Pixels::Embedded(Box::new(encoded)), size)
            }
            None => {
                let image = load_rgb(&sample.image, intensity)?;
                let size = [image.height() as usize, image.width() as usize];
                (Pixels::Image(image), size)
            }
        };
        sample.check_image_size(size)?;
        Ok(pixels)
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
    low_res_sources([mask.height, mask.width], input_size, img_size, low_res)
        .into_iter()
        .map(|s| s.map_or(0.0, |i| (mask.data[i] != 0) as u8 as f32))
        .collect()
}

/// For each pixel of the `low_res x low_res` frame (row-major), the pixel (row-major
/// index) of an image of `size` `[height, width]` it samples once the image is resized
/// to `input_size` and padded to `img_size`; `None` in the padding.
fn low_res_sources(
    [height, width]: [usize; 2],
    input_size: [usize; 2],
    img_size: usize,
    low_res: usize,
) -> Vec<Option<usize>> {
    let step = img_size as f64 / low_res as f64;
    let source = |i: usize, input: usize, side: usize| {
        let at = (i as f64 + 0.5) * step;
        (at < input as f64).then(|| ((at * side as f64 / input as f64) as usize).min(side - 1))
    };
    let mut out = Vec::with_capacity(low_res * low_res);
    for i in 0..low_res {
        let y = source(i, input_size[0], height);
        for j in 0..low_res {
            let x = source(j, input_size[1], width);
            out.push(y.zip(x).map(|(y, x)| y * width + x));
        }
    }
    out
}

/// One batch to draw: `(sample index, example seed)` of each image.
pub type BatchPlan = Vec<(usize, u64)>;

/// The batches of an epoch, drawn `depth` batches ahead on a background thread (or, with
/// depth 0, in the caller's thread when asked for: the serial path, with the same
/// examples).
pub struct BatchStream<'scope> {
    source: Source<'scope>,
    /// Time the caller spent waiting for a batch.
    pub waited: Duration,
}

enum Source<'scope> {
    Inline {
        plans: std::vec::IntoIter<BatchPlan>,
        draw: Box<dyn Fn(BatchPlan) -> Result<Vec<Drawn>> + 'scope>,
    },
    Ahead {
        batches: Receiver<Result<Vec<Drawn>>>,
        worker: Option<ScopedJoinHandle<'scope, ()>>,
    },
}

impl<'scope> BatchStream<'scope> {
    pub fn start<'env>(
        scope: &'scope Scope<'scope, 'env>,
        builder: &'scope ExampleBuilder<'env>,
        samples: &'scope [Sample],
        plans: Vec<BatchPlan>,
        depth: usize,
    ) -> Self {
        // a batch's images are drawn in parallel (each from its own seed: the same
        // examples in any order)
        let draw = move |plan: BatchPlan| -> Result<Vec<Drawn>> {
            plan.par_iter()
                .map(|&(index, seed)| builder.draw(&samples[index], seed))
                .collect()
        };
        let source = if depth == 0 {
            Source::Inline {
                plans: plans.into_iter(),
                draw: Box::new(draw),
            }
        } else {
            let (send, batches) = sync_channel(depth);
            let worker = scope.spawn(move || {
                for plan in plans {
                    let batch = draw(plan);
                    let failed = batch.is_err();
                    // the receiver is gone when the epoch stopped early
                    if send.send(batch).is_err() || failed {
                        break;
                    }
                }
            });
            Source::Ahead {
                batches,
                worker: Some(worker),
            }
        };
        Self {
            source,
            waited: Duration::ZERO,
        }
    }

    /// The next batch; `None` after the last.
    pub fn next_batch(&mut self) -> Option<Result<Vec<Drawn>>> {
        let started = Instant::now();
        let batch = match &mut self.source {
            Source::Inline { plans, draw } => plans.next().map(draw),
            Source::Ahead { batches, worker } => match batches.recv() {
                Ok(batch) => Some(batch),
                // every batch sent: the worker has ended, normally or not
                Err(_) => match worker.take().map(|w| w.join()) {
                    Some(Err(_)) => Some(Err(err!("the example drawing thread panicked"))),
                    _ => None,
                },
            },
        };
        self.waited += started.elapsed();
        batch
    }
}
