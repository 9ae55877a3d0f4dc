//! IoU and Dice of binary masks, and their aggregation per image, per category and overall.
//!
//! Empty cases: a prediction and a ground truth that are both empty score 1 (nothing to
//! find, nothing found); exactly one of them empty scores 0.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::data::BinaryMask;
use crate::predict::semantic::Classes;

/// `(IoU, Dice)` of a prediction against a ground truth of the same size.
pub fn iou_and_dice(predicted: &BinaryMask, truth: &BinaryMask) -> (f64, f64) {
    assert_eq!(
        (predicted.width, predicted.height),
        (truth.width, truth.height),
        "mask sizes differ"
    );
    overlap_of(
        predicted
            .data
            .iter()
            .zip(&truth.data)
            .map(|(a, b)| (*a != 0, *b != 0)),
    )
}

/// `(IoU, Dice)` of `(predicted, truth)` pixel or voxel pairs: both 1 when both are
/// empty, 0 when exactly one is.
pub fn overlap_of(pairs: impl Iterator<Item = (bool, bool)>) -> (f64, f64) {
    let (mut inter, mut p, mut t) = (0usize, 0usize, 0usize);
    for (a, b) in pairs {
        inter += (a && b) as usize;
        p += a as usize;
        t += b as usize;
    }
    if p + t == 0 {
        return (1.0, 1.0);
    }
    let union = p + t - inter;
    (
        inter as f64 / union as f64,
        2.0 * inter as f64 / (p + t) as f64,
    )
}

/// Pixel counts of a semantic model's outputs: `counts[t][p]` pixels of true class `t`
/// predicted as `p` (0 the background), with the class names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Confusion {
    pub names: Vec<String>,
    pub counts: Vec<Vec<u64>>,
}

impl Confusion {
    pub fn new(classes: &Classes) -> Self {
        let n = classes.len() + 1;
        Self {
            names: (0..n).map(|k| classes.name(k).to_string()).collect(),
            counts: vec![vec![0; n]; n],
        }
    }

    /// Adds one image: its true and predicted masks of the classes `classes` (`objects`
    /// and `predicted` of a semantic evaluation); pixels in none are background.
    pub fn add(&mut self, classes: &[usize], truth: &[&BinaryMask], predicted: &[&BinaryMask]) {
        let Some(pixels) = truth.first().map(|m| m.data.len()) else {
            return;
        };
        let label = |masks: &[&BinaryMask], p: usize| {
            masks
                .iter()
                .zip(classes)
                .find(|(m, _)| m.data[p] != 0)
                .map_or(0, |(_, &k)| k)
        };
        self.add_pairs((0..pixels).map(|p| (label(truth, p), label(predicted, p))));
    }

    /// Adds `(true, predicted)` output-index pairs, a pixel or voxel each.
    pub fn add_pairs(&mut self, pairs: impl Iterator<Item = (usize, usize)>) {
        for (t, p) in pairs {
            self.counts[t][p] += 1;
        }
    }

    /// Adds another evaluation's counts (of the same classes).
    pub fn merge(&mut self, other: &Confusion) {
        for (row, other_row) in self.counts.iter_mut().zip(&other.counts) {
            for (c, o) in row.iter_mut().zip(other_row) {
                *c += o;
            }
        }
    }

    /// Of the pixels of true class `t`, the fraction predicted as each class.
    pub fn row_fractions(&self, t: usize) -> Vec<f64> {
        let total: u64 = self.counts[t].iter().sum();
        self.counts[t]
            .iter()
            .map(|&c| c as f64 / total.max(1) as f64)
            .collect()
    }
}

/// One evaluated object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectResult {
    pub image: String,
    pub object: usize,
    pub category: Option<String>,
    pub area: usize,
    pub iou: f64,
    pub dice: f64,
    pub predicted_iou: f64,
}

/// Means over a set of objects.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub objects: usize,
    pub mean_iou: f64,
    pub mean_dice: f64,
    /// Mean |predicted IoU - actual IoU| over the objects with a predicted IoU (0 when
    /// none has one: a semantic head predicts none).
    pub iou_prediction_error: f64,
}

impl Summary {
    pub fn of<'a>(results: impl IntoIterator<Item = &'a ObjectResult>) -> Self {
        let mut s = Summary::default();
        let mut predicted = 0usize;
        for r in results {
            s.objects += 1;
            s.mean_iou += r.iou;
            s.mean_dice += r.dice;
            if r.predicted_iou.is_finite() {
                predicted += 1;
                s.iou_prediction_error += (r.predicted_iou - r.iou).abs();
            }
        }
        if s.objects > 0 {
            let n = s.objects as f64;
            s.mean_iou /= n;
            s.mean_dice /= n;
        }
        if predicted > 0 {
            s.iou_prediction_error /= predicted as f64;
        }
        s
    }
}

/// Overall, per-image (mean of each image's objects, then over images) and per-category summaries.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Aggregate {
    pub overall: Summary,
    /// Mean over images of each image's mean IoU.
    pub mean_image_iou: f64,
    pub mean_image_dice: f64,
    pub per_image: BTreeMap<String, Summary>,
    pub per_category: BTreeMap<String, Summary>,
}

impl Aggregate {
    pub fn of(results: &[ObjectResult]) -> Self {
        let mut by_image: BTreeMap<String, Vec<&ObjectResult>> = BTreeMap::new();
        let mut by_category: BTreeMap<String, Vec<&ObjectResult>> = BTreeMap::new();
        for r in results {
            by_image.entry(r.image.clone()).or_default().push(r);
            if let Some(c) = &r.category {
                by_category.entry(c.clone()).or_default().push(r);
            }
        }
        let per_image: BTreeMap<String, Summary> = by_image
            .into_iter()
            .map(|(k, v)| (k, Summary::of(v)))
            .collect();
        let n = per_image.len().max(1) as f64;
        Self {
            overall: Summary::of(results),
            mean_image_iou: per_image.values().map(|s| s.mean_iou).sum::<f64>() / n,
            mean_image_dice: per_image.values().map(|s| s.mean_dice).sum::<f64>() / n,
            per_image,
            per_category: by_category
                .into_iter()
                .map(|(k, v)| (k, Summary::of(v)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(bits: &[u8]) -> BinaryMask {
        BinaryMask {
            width: bits.len(),
            height: 1,
            data: bits.to_vec(),
        }
    }

    #[test]
    fn iou_and_dice_by_hand() {
        // |P| = 3, |T| = 2, |P ∩ T| = 1: IoU 1/4, Dice 2/5
        let (iou, dice) = iou_and_dice(&mask(&[1, 1, 1, 0, 0]), &mask(&[0, 0, 1, 1, 0]));
        assert!((iou - 0.25).abs() < 1e-12 && (dice - 0.4).abs() < 1e-12);
        assert_eq!(iou_and_dice(&mask(&[1, 1]), &mask(&[1, 1])), (1.0, 1.0));
    }

    #[test]
    fn empty_cases_are_counted_as_documented() {
        assert_eq!(
            iou_and_dice(&mask(&[0, 0]), &mask(&[0, 0])),
            (1.0, 1.0),
            "both empty"
        );
        assert_eq!(
            iou_and_dice(&mask(&[0, 0]), &mask(&[1, 0])),
            (0.0, 0.0),
            "empty prediction"
        );
        assert_eq!(
            iou_and_dice(&mask(&[0, 1]), &mask(&[0, 0])),
            (0.0, 0.0),
            "empty ground truth"
        );
    }

    #[test]
    fn aggregates_per_image_and_category() {
        let r = |image: &str, category: &str, iou: f64| ObjectResult {
            image: image.into(),
            object: 0,
            category: Some(category.into()),
            area: 1,
            iou,
            dice: iou,
            predicted_iou: 0.5,
        };
        let results = vec![r("a", "x", 1.0), r("a", "y", 0.0), r("b", "x", 0.5)];
        let agg = Aggregate::of(&results);
        assert!((agg.overall.mean_iou - 0.5).abs() < 1e-12);
        assert!((agg.mean_image_iou - 0.5).abs() < 1e-12); // (0.5 + 0.5) / 2
        assert!((agg.per_category["x"].mean_iou - 0.75).abs() < 1e-12);
        assert!((agg.overall.iou_prediction_error - 1.0 / 3.0).abs() < 1e-12);
    }
}
