//! The model a training run trains: the head its task needs, what `model.trainable`
//! freezes, LoRA adapters, and the autodiff device it trains on.

use burn::module::{Module, ParamGroup};
use burn::tensor::Device;

use super::config::{TrainConfig, Trainable};
use crate::error::{bail, Result};
use crate::model::mask_decoder::SemanticHead;
use crate::model::{Architecture, Sam};

/// The model with the head its task needs: for `task = "semantic"`, the checkpoint's
/// head when it has one for as many classes, else a new one started from the pretrained
/// multimask outputs (`SemanticHead::from_pretrained`).
pub fn with_task_head(
    mut model: Sam,
    mut architecture: Architecture,
    config: &TrainConfig,
) -> Result<(Sam, Architecture)> {
    let Some(classes) = config.classes()? else {
        return Ok((model, architecture));
    };
    match &model.mask_decoder.semantic {
        Some(head) if head.classes() != classes.len() => bail!(
            "{} has a semantic head of {} classes, data.classes names {}",
            config.model.checkpoint.display(),
            head.classes(),
            classes.len()
        ),
        Some(_) => {}
        None => {
            model.mask_decoder.semantic = Some(SemanticHead::from_pretrained(
                &model.mask_decoder,
                classes.len(),
            ))
        }
    }
    architecture.decoder.semantic_classes = classes.len();
    Ok((model, architecture))
}

/// The model with what `model.trainable` leaves out frozen, and LoRA adapters attached
/// in the LoRA modes; the prompt encoder's positional-encoding matrix is a buffer upstream
/// and never trains.
pub fn freeze(mut model: Sam, config: &TrainConfig) -> Result<Sam> {
    let trainable = config.model.trainable;
    let places = trainable.lora_places();
    if !places.is_empty() {
        let patterns = config.lora.patterns(places);
        // every base parameter frozen, adapters trainable
        let model = config
            .lora
            .apply(model, &patterns, config.train.seed)
            .map_err(|e| crate::error::Error::config("lora.targets", e))?;
        let model = if trainable.trains_decoder() {
            let decoder = ParamGroup::ids_from_module(model.mask_decoder.clone());
            model.unfreeze_group(decoder)
        } else {
            model
        };
        // a semantic head is new: it trains in full whatever else has adapters
        return Ok(match model.mask_decoder.semantic.clone() {
            Some(head) => model.unfreeze_group(ParamGroup::ids_from_module(head)),
            None => model,
        });
    }
    if trainable.encoder_frozen() {
        model.image_encoder = model.image_encoder.freeze();
    }
    if trainable == Trainable::Decoder {
        model.prompt_encoder = model.prompt_encoder.freeze();
    }
    let pe = &mut model
        .prompt_encoder
        .pe_layer
        .positional_encoding_gaussian_matrix;
    *pe = pe.clone().set_require_grad(false);
    Ok(model)
}

/// `device` with autodiff, recomputing memory-bound operations in the backward pass with
/// `train.checkpoint_activations`.
pub fn autodiff_device(device: &Device, config: &TrainConfig) -> Device {
    let autodiff = device.clone().autodiff();
    if config.train.checkpoint_activations {
        autodiff.gradient_checkpointing()
    } else {
        autodiff
    }
}
