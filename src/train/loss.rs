//! The SAM paper's mask loss: focal + dice on mask logits, plus MSE between the predicted
//! and the actual IoU; with several masks per prompt, only the best one is trained.

use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use super::loss_kernel::focal_and_dice;
use crate::error::{check_setting, check_weights, Result};

/// Loss weights and focal parameters (`[train.loss]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// Weight of the focal term (SAM paper: 20).
    pub focal_weight: f64,
    /// Weight of the dice term (SAM paper: 1).
    pub dice_weight: f64,
    /// Weight of the IoU-prediction MSE (SAM paper: 1).
    pub iou_weight: f64,
    /// Focal alpha: weight of the positive class (0.25 as in RetinaNet/torchvision).
    pub focal_alpha: f64,
    /// Focal gamma (2.0).
    pub focal_gamma: f64,
    /// Compute the mask terms on logits upsampled to the original image size instead of
    /// the decoder's 256x256 output against the downsampled ground truth.
    pub full_size: bool,
    /// `task = "semantic"`: weight of the cross-entropy over the classes (SAMed: 0.2).
    pub class_ce_weight: f64,
    /// `task = "semantic"`: weight of the soft Dice over the classes (SAMed: 0.8).
    pub class_dice_weight: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            focal_weight: 20.0,
            dice_weight: 1.0,
            iou_weight: 1.0,
            focal_alpha: 0.25,
            focal_gamma: 2.0,
            full_size: false,
            class_ce_weight: 0.2,
            class_dice_weight: 0.8,
        }
    }
}

impl LossConfig {
    /// Every setting against its valid range.
    pub fn validate(&self) -> Result<()> {
        check_weights(
            &[
                ("loss.focal_weight", self.focal_weight),
                ("loss.dice_weight", self.dice_weight),
                ("loss.iou_weight", self.iou_weight),
            ],
            "nothing would be learned",
        )?;
        check_setting(
            "loss.focal_alpha",
            self.focal_alpha,
            (0.0..=1.0).contains(&self.focal_alpha),
            "in [0, 1]",
        )?;
        check_setting(
            "loss.focal_gamma",
            self.focal_gamma,
            self.focal_gamma >= 0.0 && self.focal_gamma.is_finite(),
            ">= 0",
        )?;
        check_weights(
            &[
                ("loss.class_ce_weight", self.class_ce_weight),
                ("loss.class_dice_weight", self.class_dice_weight),
            ],
            "a semantic head would learn nothing",
        )?;
        Ok(())
    }
}

/// The loss of a batch and its terms (means over prompts).
#[derive(Debug, Clone)]
pub struct LossTerms {
    /// Scalar `[1]` to differentiate.
    pub total: Tensor<1>,
    pub focal: Tensor<1>,
    pub dice: Tensor<1>,
    pub iou: Tensor<1>,
    /// `[N]` the actual IoU of the trained mask of each prompt (no gradient).
    pub actual_iou: Tensor<1>,
}

/// IoU of the binarised masks (logit > 0) with the targets: `[N, M]`, no gradient.
pub fn mask_iou(logits: Tensor<4>, targets: Tensor<4>) -> Tensor<2> {
    let [n, m, h, w] = logits.dims();
    let pred = logits
        .detach()
        .greater_elem(0.0)
        .float()
        .reshape([n, m, h * w]);
    let t = targets.detach().expand([n, m, h, w]).reshape([n, m, h * w]);
    let intersection = (pred.clone() * t.clone()).sum_dim(2);
    let union = (pred + t).clamp_max(1.0).sum_dim(2);
    // both empty: a perfect prediction
    let empty = union.clone().equal_elem(0.0).float();
    ((intersection + empty.clone()) / (union + empty)).reshape([n, m])
}

/// Loss of `N` prompts with `M` candidate masks each against their `[N, 1, H, W]` targets
/// (0/1). The mask with the lowest focal+dice loss is the one trained (the SAM paper's
/// rule for ambiguous prompts).
pub fn sam_loss(
    logits: Tensor<4>,
    iou_predictions: Tensor<2>,
    targets: Tensor<4>,
    config: &LossConfig,
) -> LossTerms {
    let [n, m, h, w] = logits.dims();
    let terms = focal_and_dice(
        logits.clone().reshape([n, m, h * w]),
        targets.clone().reshape([n, h * w]),
        config.focal_alpha,
        config.focal_gamma,
    );
    let term = |index: usize| {
        terms
            .clone()
            .slice([0..n, 0..m, index..index + 1])
            .reshape([n, m])
    };
    let (focal, dice) = (term(0), term(1));
    let actual = mask_iou(logits, targets);
    let mask_loss = focal.clone() * config.focal_weight + dice.clone() * config.dice_weight;
    let best: Tensor<2, Int> = if m == 1 {
        Tensor::zeros([n, 1], &mask_loss.device())
    } else {
        mask_loss.clone().detach().argmin(1)
    };
    let pick = |t: Tensor<2>| t.gather(1, best.clone()).reshape([n]);
    let focal = pick(focal);
    let dice = pick(dice);
    let actual_iou = pick(actual);
    let predicted = pick(iou_predictions);
    let iou = (predicted - actual_iou.clone()).square();
    let total = focal.clone() * config.focal_weight
        + dice.clone() * config.dice_weight
        + iou.clone() * config.iou_weight;
    LossTerms {
        total: total.mean(),
        focal: focal.mean(),
        dice: dice.mean(),
        iou: iou.mean(),
        actual_iou,
    }
}

/// The loss of a semantic head (SAMed's): `class_ce_weight` x the cross-entropy of the
/// softmax over the classes plus `class_dice_weight` x the soft Dice (`1 - (2 I + s) /
/// (sum p^2 + sum y^2 + s)`, `s = 1e-5`) averaged over all outputs, background included, so
/// that a class absent from the image is trained towards nothing. `logits`
/// `[1, K + 1, L, L]`, `onehot` the target `[1, K + 1, L, L]`, `valid` `[1, 1, L, L]` (0 in
/// the padding, which is not scored). The terms: `focal` holds the cross-entropy, `iou` 0.
pub fn class_loss(
    logits: Tensor<4>,
    onehot: Tensor<4>,
    valid: Tensor<4>,
    config: &LossConfig,
) -> LossTerms {
    const SMOOTH: f64 = 1e-5;
    let [_, outputs, _, _] = logits.dims();
    let device = logits.device();
    let pixels = valid.clone().sum().clamp_min(1.0);
    let log_p = burn::tensor::activation::log_softmax(logits, 1);
    let ce = -(log_p.clone() * onehot.clone() * valid.clone()).sum() / pixels;
    let p = log_p.exp() * valid;
    let sum_classes = |t: Tensor<4>| t.sum_dim(2).sum_dim(3).reshape([outputs]);
    let intersection = sum_classes(p.clone() * onehot.clone());
    let z = sum_classes(p.square());
    let y = sum_classes(onehot.square());
    let dice = (intersection.mul_scalar(-2.0).add_scalar(-SMOOTH) / (z + y).add_scalar(SMOOTH))
        .add_scalar(1.0)
        .mean();
    let total = ce.clone() * config.class_ce_weight + dice.clone() * config.class_dice_weight;
    LossTerms {
        total,
        focal: ce,
        dice,
        iou: Tensor::zeros([1], &device),
        actual_iou: Tensor::zeros([1], &device),
    }
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, TensorData};

    use super::*;

    fn t4(values: Vec<f32>, shape: [usize; 4]) -> Tensor<4> {
        Tensor::from_data(TensorData::new(values, shape), &Device::flex())
    }

    fn scalar<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    /// SAMed's `CrossEntropyLoss` + `DiceLoss(softmax=True)` written out with loops in
    /// f64, over the valid pixels only.
    fn class_loss_by_hand(logits: &[f32], target: &[usize], valid: &[f32], k: usize) -> (f64, f64) {
        let n = target.len();
        let prob = |c: usize, p: usize| {
            let max = (0..k)
                .map(|j| logits[j * n + p] as f64)
                .fold(f64::MIN, f64::max);
            let sum: f64 = (0..k).map(|j| (logits[j * n + p] as f64 - max).exp()).sum();
            (logits[c * n + p] as f64 - max).exp() / sum
        };
        let scored: f64 = valid.iter().map(|&v| v as f64).sum();
        let ce = -(0..n)
            .map(|p| valid[p] as f64 * prob(target[p], p).ln())
            .sum::<f64>()
            / scored;
        let dice = (0..k)
            .map(|c| {
                let (mut i, mut z, mut y) = (0.0, 0.0, 0.0);
                for p in 0..n {
                    let q = prob(c, p) * valid[p] as f64;
                    let t = (target[p] == c) as u8 as f64;
                    i += q * t;
                    z += q * q;
                    y += t * t;
                }
                1.0 - (2.0 * i + 1e-5) / (z + y + 1e-5)
            })
            .sum::<f64>()
            / k as f64;
        (ce, dice)
    }

    #[test]
    fn class_loss_is_cross_entropy_and_dice_over_the_valid_pixels() {
        // 3 outputs on a 2x3 frame; the last column is padding; class 2 is absent
        let logits: Vec<f32> = (0..18).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.4).collect();
        let target = [0usize, 1, 0, 1, 1, 0];
        let valid = [1.0f32, 1.0, 0.0, 1.0, 1.0, 0.0];
        let onehot: Vec<f32> = (0..3)
            .flat_map(|c| target.iter().map(move |&t| (t == c) as u8 as f32))
            .collect();
        let config = LossConfig::default();
        let terms = class_loss(
            t4(logits.clone(), [1, 3, 2, 3]),
            t4(onehot, [1, 3, 2, 3]),
            t4(valid.to_vec(), [1, 1, 2, 3]),
            &config,
        );
        let (ce, dice) = class_loss_by_hand(&logits, &target, &valid, 3);
        let got = |t: Tensor<1>| scalar(t)[0] as f64;
        // float32 against float64: measured 1.3e-7 (cross-entropy), 4e-9 (dice)
        assert!((got(terms.focal) - ce).abs() < 4e-7, "cross-entropy");
        assert!((got(terms.dice) - dice).abs() < 4e-8, "dice");
        let total = config.class_ce_weight * ce + config.class_dice_weight * dice;
        assert!((got(terms.total) - total).abs() < 4e-7, "total");
    }

    #[test]
    fn iou_counts_empty_against_empty_as_perfect() {
        let logits = t4(
            vec![5.0, -5.0, -5.0, -5.0, -1.0, -1.0, -1.0, -1.0],
            [1, 2, 2, 2],
        );
        let targets = t4(vec![1.0, 1.0, 0.0, 0.0], [1, 1, 2, 2]);
        assert_eq!(scalar(mask_iou(logits, targets)), vec![0.5, 0.0]);
        let nothing = t4(vec![-1.0; 4], [1, 1, 2, 2]);
        assert_eq!(
            scalar(mask_iou(nothing, t4(vec![0.0; 4], [1, 1, 2, 2]))),
            vec![1.0]
        );
    }

    #[test]
    fn the_best_of_several_masks_is_the_one_trained() {
        // mask 0 is wrong, mask 1 is right: the loss is mask 1's
        let targets = t4(vec![1.0, 0.0, 1.0, 0.0], [1, 1, 2, 2]);
        let logits = t4(
            vec![-9.0, 9.0, -9.0, 9.0, 9.0, -9.0, 9.0, -9.0],
            [1, 2, 2, 2],
        );
        let iou_pred =
            Tensor::<2>::from_data(TensorData::new(vec![0.0f32, 1.0], [1, 2]), &Device::flex());
        let terms = sam_loss(logits, iou_pred, targets, &LossConfig::default());
        assert_eq!(scalar(terms.actual_iou), vec![1.0]);
        assert!(scalar(terms.total)[0] < 0.01);
    }
}
