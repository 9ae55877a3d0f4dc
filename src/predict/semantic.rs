//! Prompt-free multi-class prediction with samtune's semantic head (not upstream; the head
//! is `model/mask_decoder.rs`'s `SemanticHead`): the classes a semantic checkpoint carries
//! in its metadata, and an image's label map.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::overlay::PALETTE;
use super::predictor::EncodedImage;
use super::tensor_values;
use crate::error::{Error, Result};
use crate::model::{Architecture, Sam};
use crate::weights::Checkpoint;

/// The checkpoint metadata key holding the classes (JSON).
pub const CLASSES_METADATA_KEY: &str = "samtune.classes";

/// One class of a semantic model: its name and the label value it has in label images
/// (and is written with in predicted label maps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SemanticClass {
    pub name: String,
    pub value: u16,
}

/// The classes of a semantic head, in head order: class `k` is output `k + 1` (output 0 is
/// the background, label value 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classes(pub Vec<SemanticClass>);

impl Classes {
    /// Classes besides the background.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The name of output `index` (0: background).
    pub fn name(&self, index: usize) -> &str {
        match index {
            0 => "background",
            k => &self.0[k - 1].name,
        }
    }

    /// The label value of output `index` (0: background).
    pub fn value(&self, index: usize) -> u16 {
        match index {
            0 => 0,
            k => self.0[k - 1].value,
        }
    }

    /// Output index of each label value (values that are no class: background), as a
    /// table over all 16-bit values.
    pub fn index_of_values(&self) -> Vec<u8> {
        let mut table = vec![0u8; 1 << 16];
        for (k, class) in self.0.iter().enumerate() {
            table[class.value as usize] = (k + 1) as u8;
        }
        table
    }

    /// The colour of output `index` in pictures and legends: the overlay palette's
    /// colour of its mask (the background black).
    pub fn colour(index: usize) -> [u8; 3] {
        match index {
            0 => [0, 0, 0],
            k => PALETTE[(k - 1) % PALETTE.len()],
        }
    }

    /// The classes recorded in a checkpoint's metadata, if it has them.
    pub fn from_metadata(metadata: &BTreeMap<String, String>) -> Result<Option<Self>> {
        metadata
            .get(CLASSES_METADATA_KEY)
            .map(|json| {
                serde_json::from_str(json).map_err(|e| {
                    Error::msg(format!(
                        "checkpoint metadata '{CLASSES_METADATA_KEY}' is not a class list: {e}"
                    ))
                })
            })
            .transpose()
    }

    /// `(key, JSON)` for a checkpoint's metadata.
    pub fn metadata_entry(&self) -> (String, String) {
        (
            CLASSES_METADATA_KEY.to_string(),
            serde_json::to_string(self).expect("classes serialise"),
        )
    }
}

/// The classes of the checkpoint at `path`, whose architecture is `architecture`: `None`
/// for a model without a semantic head; an error when a head's classes are not recorded
/// or do not match it.
pub fn checkpoint_classes(path: &Path, architecture: &Architecture) -> Result<Option<Classes>> {
    let heads = architecture.decoder.semantic_classes;
    if heads == 0 {
        return Ok(None);
    }
    let checkpoint = Checkpoint::open(path)?;
    let classes = Classes::from_metadata(&checkpoint.metadata)
        .map_err(|e| Error::file(path, e))?
        .ok_or_else(|| {
            Error::file(
                path,
                format!("has a semantic head of {heads} classes but no '{CLASSES_METADATA_KEY}' metadata naming them"),
            )
        })?;
    if classes.len() != heads {
        return Err(Error::file(
            path,
            format!(
                "its semantic head has {heads} classes, its '{CLASSES_METADATA_KEY}' metadata names {}",
                classes.len()
            ),
        ));
    }
    Ok(Some(classes))
}

/// A predicted (or true) label map: the output index of each pixel, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelMap {
    pub width: usize,
    pub height: usize,
    pub classes: Vec<u8>,
}

impl LabelMap {
    /// The map in label values (`Classes::value` of each output index).
    pub fn values(&self, classes: &Classes) -> Vec<u16> {
        let table: Vec<u16> = (0..=classes.len()).map(|k| classes.value(k)).collect();
        self.classes.iter().map(|&k| table[k as usize]).collect()
    }
}

/// The semantic head's logits `[1, K + 1, H, W]` at the image's original size, for an
/// encoded image, with no prompt.
pub fn class_logits(model: &Sam, encoded: &EncodedImage) -> Tensor<4> {
    let low_res = model.mask_decoder.predict_classes(
        encoded.embedding.clone(),
        model.prompt_encoder.get_dense_pe(),
        model.prompt_encoder.no_mask_dense_embedding(),
    );
    model.postprocess_masks(low_res, encoded.input_size, encoded.original_size)
}

/// The most likely class of every pixel of an encoded image.
pub fn predict_label_map(model: &Sam, encoded: &EncodedImage) -> Result<LabelMap> {
    let [height, width] = encoded.original_size;
    let classes = tensor_values(class_logits(model, encoded).argmax(1).float())?
        .into_iter()
        .map(|k| k as u8)
        .collect();
    Ok(LabelMap {
        width,
        height,
        classes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Classes {
        Classes(vec![
            SemanticClass {
                name: "liver".into(),
                value: 1,
            },
            SemanticClass {
                name: "kidney".into(),
                value: 7,
            },
        ])
    }

    #[test]
    fn values_and_indexes_map_both_ways() {
        let c = classes();
        let table = c.index_of_values();
        assert_eq!((table[0], table[1], table[7], table[2]), (0, 1, 2, 0));
        let map = LabelMap {
            width: 3,
            height: 1,
            classes: vec![0, 2, 1],
        };
        assert_eq!(map.values(&c), vec![0, 7, 1]);
        assert_eq!(c.name(0), "background");
        assert_eq!(c.name(2), "kidney");
    }

    #[test]
    fn metadata_round_trips_and_a_bad_entry_is_an_error() {
        let c = classes();
        let meta: BTreeMap<String, String> = [c.metadata_entry()].into_iter().collect();
        assert_eq!(Classes::from_metadata(&meta).unwrap(), Some(c));
        assert_eq!(Classes::from_metadata(&BTreeMap::new()).unwrap(), None);
        let bad: BTreeMap<String, String> = [(CLASSES_METADATA_KEY.to_string(), "[1".into())]
            .into_iter()
            .collect();
        let err = Classes::from_metadata(&bad).unwrap_err().to_string();
        assert!(err.contains(CLASSES_METADATA_KEY), "{err}");
    }
}
